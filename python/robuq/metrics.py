"""Distribution metrics of generated images (numpy, float64; no scipy, no torch).

* ``frechet_distance`` / ``fd_between``: the Frechet distance between Gaussians fitted to two feature sets,
  |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2).
* ``pixel_features``: images in [-1, 1] -> their 8-bit values (what a PNG holds) scaled to [0, 1], one row
  per image. For the 16x16 digits this 256-d "pixel FD" is robuq-eval's headline distance: it sees noise,
  blur and wrong shapes alike, where a classifier's feature space rewarded pixel noise (docs/quality.md).
* ``kid``: kernel inception distance on any features: the unbiased estimate of the squared maximum mean
  discrepancy with the cubic polynomial kernel k(a, b) = (a.b / d + 1)^3, averaged over random subsets
  (mean and standard deviation). Unlike FD it has an unbiased estimator, so values at different n compare.
* ``balanced_subsets``: k disjoint class-balanced subsets of a labelled set (a row's spread over them is
  the noise level below which differences between rows mean nothing).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "balanced_subsets",
    "fd_between",
    "feature_stats",
    "frechet_distance",
    "kid",
    "pixel_features",
    "sqrtm_psd",
    "to_uint8",
]


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Images in [-1, 1] (any shape) -> uint8 round((clamp(x, -1, 1) + 1) * 127.5), half to even: the
    engine's and the samplers' rounding."""
    x = np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0)
    return np.rint((x + np.float32(1.0)) * np.float32(127.5)).astype(np.uint8)


def pixel_features(images: np.ndarray) -> np.ndarray:
    """[N, ...] images in [-1, 1] -> float64 [N, prod(...)] of their 8-bit values / 255."""
    a = np.asarray(images)
    if a.ndim < 2 or a.shape[0] < 1:
        raise ValueError(f"need images [N, ...], got shape {a.shape}")
    return to_uint8(a).reshape(a.shape[0], -1).astype(np.float64) / 255.0


def sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix by eigendecomposition (float64); the
    matrix is symmetrised first and negative round-off eigenvalues are set to 0."""
    a = np.asarray(a, dtype=np.float64)
    a = 0.5 * (a + a.T)
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean [F], covariance [F, F]) in float64; the covariance is unbiased (divides by N - 1)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors [N, F], got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2), float64.

    S1^1/2 S2 S1^1/2 is symmetric PSD (unlike S1 S2, which has the same eigenvalues), so both square
    roots are eigendecompositions of symmetric matrices; the trace of the outer one is the sum of the
    square roots of its (clipped) eigenvalues. The result is clipped at 0 (round-off on equal inputs)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / {s2.shape}")
    r1 = sqrtm_psd(s1)
    m = r1 @ s2 @ r1
    ev = np.linalg.eigvalsh(0.5 * (m + m.T))
    tr_covmean = float(np.sqrt(np.clip(ev, 0.0, None)).sum())
    diff = mu1 - mu2
    fd = float(diff @ diff) + float(np.trace(s1)) + float(np.trace(s2)) - 2.0 * tr_covmean
    return max(fd, 0.0)


def fd_between(f1: np.ndarray, f2: np.ndarray) -> float:
    return frechet_distance(*feature_stats(f1), *feature_stats(f2))


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    m, n = len(x), len(y)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2.0 * kxy.mean()
    )


def kid(
    f1: np.ndarray, f2: np.ndarray, subsets: int = 20, subset_size: int = 100, seed: int = 0
) -> tuple[float, float]:
    """(mean, standard deviation) over ``subsets`` random subsets (without replacement within a subset,
    size min(subset_size, len(f1), len(f2))) of the unbiased MMD^2 with kernel (a.b / d + 1)^3. Can be
    slightly negative for two samples of one distribution (unbiased)."""
    a, b = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need feature sets [N, F] of one width, got {a.shape} and {b.shape}")
    m = min(subset_size, len(a), len(b))
    if m < 2 or subsets < 1:
        raise ValueError(f"need at least 2 samples per set and 1 subset, got {m} and {subsets}")
    rng = np.random.default_rng(seed)
    vals = [
        _mmd2_unbiased(a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)])
        for _ in range(subsets)
    ]
    return float(np.mean(vals)), float(np.std(vals, ddof=1) if subsets > 1 else 0.0)


def balanced_subsets(labels: np.ndarray, k: int, seed: int = 0) -> list[np.ndarray]:
    """k disjoint index sets, each holding floor(count_c / k) shuffled samples of every class c (the
    remainder is left out, so the subsets have equal class counts)."""
    y = np.asarray(labels)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(k)]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        per = len(idx) // k
        for i in range(k):
            parts[i].append(idx[i * per : (i + 1) * per])
    return [np.sort(np.concatenate(p)) for p in parts]


#: pixel KID: random subsets and their size (the unbiased estimate compares across set sizes)
KID_SUBSETS, KID_SUBSET_SIZE = 20, 100
#: disjoint class-balanced subsets of a set of samples for the spread of its pixel FD
SPREAD_SUBSETS = 5


def pixel_scores(x: np.ndarray, y: np.ndarray, ref_pixels: np.ndarray, ref_stats: tuple) -> dict:
    """A sample set's scores against a reference (``pixel_features`` of it and their ``feature_stats``):
    pixel FD, its mean and sd over SPREAD_SUBSETS disjoint class-balanced subsets (when each holds at least
    2 images; with their size), and pixel KID x 1e3 as [mean, sd]."""
    f = pixel_features(x)
    out: dict = {"pixel_fd": frechet_distance(*feature_stats(f), *ref_stats)}
    parts = balanced_subsets(y, SPREAD_SUBSETS)
    if min(len(p) for p in parts) >= 2:
        vals = [frechet_distance(*feature_stats(f[p]), *ref_stats) for p in parts]
        out["pixel_fd_subsets"] = [float(np.mean(vals)), float(np.std(vals, ddof=1))]
        out["subset_n"] = len(parts[0])
    kid_mean, kid_sd = kid(f, ref_pixels, subsets=KID_SUBSETS, subset_size=KID_SUBSET_SIZE)
    out["pixel_kid"] = [1e3 * kid_mean, 1e3 * kid_sd]
    return out

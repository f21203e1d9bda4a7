"""Hadamard transforms: dense reference matrices and the fast transform that equals them.

Conventions (docs/quantization.md): transforms act on row vectors, ``y = x @ H``, and are orthonormal.
A width ``n`` factorises as ``n = K * 2^m`` with the smallest K for which a Hadamard matrix of order K
is known here (K = 1 for powers of two; otherwise a Paley construction).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

FORMS = ("full", "block", "none")


def _is_pow2(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


def _is_prime(q: int) -> bool:
    if q < 2:
        return False
    return all(q % d for d in range(2, math.isqrt(q) + 1))


def sylvester(n: int) -> np.ndarray:
    """Sylvester Hadamard matrix of order n (a power of two), entries +-1, int8 [n, n]."""
    if not _is_pow2(n):
        raise ValueError(f"Sylvester Hadamard order must be a power of two, got {n}")
    h = np.ones((1, 1), dtype=np.int8)
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def _jacobsthal(q: int) -> np.ndarray:
    """Q[i, j] = chi(j - i) over GF(q), q prime; chi is the quadratic character (Legendre symbol)."""
    chi = np.zeros(q, dtype=np.int64)
    for a in range(1, q):
        chi[a] = 1 if pow(a, (q - 1) // 2, q) == 1 else -1
    idx = (np.arange(q)[None, :] - np.arange(q)[:, None]) % q
    return chi[idx]


def _paley1(k: int) -> np.ndarray:
    q = k - 1
    s = np.zeros((k, k), dtype=np.int64)
    s[0, 1:] = 1
    s[1:, 0] = -1
    s[1:, 1:] = _jacobsthal(q)
    return np.eye(k, dtype=np.int64) + s


def _paley2(k: int) -> np.ndarray:
    q = k // 2 - 1
    c = np.zeros((q + 1, q + 1), dtype=np.int64)
    c[0, 1:] = 1
    c[1:, 0] = 1
    c[1:, 1:] = _jacobsthal(q)
    a = np.array([[1, 1], [1, -1]], dtype=np.int64)
    b = np.array([[1, -1], [-1, -1]], dtype=np.int64)
    return np.kron(c, a) + np.kron(np.eye(q + 1, dtype=np.int64), b)


def base_construction(k: int) -> str | None:
    """How a Hadamard matrix of order k is built here: 'sylvester', 'paley1', 'paley2' or None."""
    if _is_pow2(k):
        return "sylvester"
    if k % 4 == 0 and _is_prime(k - 1) and (k - 1) % 4 == 3:
        return "paley1"
    if k % 4 == 0 and _is_prime(k // 2 - 1) and (k // 2 - 1) % 4 == 1:
        return "paley2"
    return None


@functools.cache
def _base_cached(k: int) -> np.ndarray:
    kind = base_construction(k)
    if kind == "sylvester":
        h = sylvester(k)
    elif kind == "paley1":
        h = _paley1(k)
    elif kind == "paley2":
        h = _paley2(k)
    else:
        raise ValueError(f"no Hadamard matrix of order {k} is known here (Sylvester or Paley I/II)")
    h = h.astype(np.int8)
    h.setflags(write=False)
    return h


def hadamard_base(k: int) -> np.ndarray:
    """Hadamard matrix of order k with entries +-1 (int8 [k, k], H H^T = k I). Read-only."""
    return _base_cached(int(k))


def factorize(n: int) -> tuple[int, int]:
    """Split a width n into (K, M) with n = K * M, M a power of two and K the smallest order with a
    known Hadamard matrix (1 when n is a power of two). Raises ValueError when none exists."""
    n = int(n)
    if n < 1:
        raise ValueError(f"Hadamard width must be positive, got {n}")
    m = n & -n  # largest power of two dividing n
    k = n // m
    while m >= 1:
        if k == 1 or (not _is_pow2(k) and base_construction(k) is not None):
            return k, m
        k, m = k * 2, m // 2
    raise ValueError(
        f"width {n} has no Hadamard factorisation K * 2^m with a known K (odd part {n // (n & -n)})"
    )


def block_size(n: int, block: int = 0) -> int:
    """The block size of the block-diagonal form: `block`, or the largest power of two dividing n."""
    b = int(block) if block else (n & -n)
    if not _is_pow2(b) or n % b:
        raise ValueError(f"Hadamard block size {b} must be a power of two dividing the width {n}")
    return b


def check_form(form: str) -> None:
    if form not in FORMS:
        raise ValueError(f"unknown Hadamard form {form!r} (expected one of {FORMS})")


def hadamard_matrix(n: int, form: str = "full", block: int = 0, dtype=torch.float64) -> torch.Tensor:
    """Dense orthonormal transform matrix H [n, n] (the reference: the fast transform equals x @ H)."""
    check_form(form)
    if form == "none":
        return torch.eye(n, dtype=dtype)
    if form == "block":
        b = block_size(n, block)
        hb = torch.from_numpy(sylvester(b).astype(np.float64)) / math.sqrt(b)
        return torch.block_diag(*([hb] * (n // b))).to(dtype)
    k, m = factorize(n)
    h = np.kron(hadamard_base(k).astype(np.float64), sylvester(m).astype(np.float64))
    return (torch.from_numpy(h) / math.sqrt(n)).to(dtype)


def _fwht_(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised Walsh-Hadamard butterflies over the last dim (a power of two); returns a new tensor."""
    m = x.shape[-1]
    h = 1
    while h < m:
        y = x.reshape(*x.shape[:-1], m // (2 * h), 2, h)
        u, v = y[..., 0, :], y[..., 1, :]
        x = torch.stack((u + v, u - v), dim=-2).reshape(*x.shape[:-1], m)
        h *= 2
    return x


def fast_hadamard(x: torch.Tensor, form: str = "full", block: int = 0) -> torch.Tensor:
    """x @ H along the last dim without forming H: butterflies, then the dense K x K base, then 1/sqrt(n).

    x: float tensor [..., n]. Returns a tensor of the same shape and dtype. Differentiable.
    """
    check_form(form)
    n = x.shape[-1]
    if form == "none":
        return x
    if form == "block":
        b = block_size(n, block)
        y = _fwht_(x.reshape(*x.shape[:-1], n // b, b)).reshape(x.shape)
        return y * torch.tensor(1.0 / math.sqrt(b), dtype=x.dtype)
    k, m = factorize(n)
    y = _fwht_(x.reshape(*x.shape[:-1], k, m))  # [..., K, M]
    if k > 1:
        hk = torch.from_numpy(hadamard_base(k).astype(np.float32)).to(dtype=x.dtype, device=x.device)
        y = torch.einsum("...am,ac->...cm", y, hk)
    return y.reshape(x.shape) * torch.tensor(1.0 / math.sqrt(n), dtype=x.dtype)

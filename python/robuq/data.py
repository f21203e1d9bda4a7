"""Training data for the reference DiT: the digits set, image folders and precomputed latents.

``load_dataset(spec, ...)`` returns ``(images float32 [N, C, H, W], labels int64 [N], num_classes)`` as
torch tensors, images in the model's input range (pixels scaled to [-1, 1]; latents as stored).

Specs:
    "digits"               scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes; ships with
                           scikit-learn, no download), 0..16 -> [-1, 1], bilinear to 16x16, 1 channel
    "folder:PATH"          PATH/<class>/<image>; class names sorted -> ids 0..K-1; images centre-cropped to a
                           square, resized (bicubic) to ``image_size``, converted to 1 (L) or 3 (RGB) channels
    "latents:PATH.npy"     float32 [N, C, H, W] (already scaled as the model sees them, e.g. VAE latents
                           times 0.18215) with labels in PATH_labels.npy, or "latents:X.npy,Y.npy"

Every spec is split the same way into a fixed train / held-out pair (``split``): per class, the indices are
shuffled with ``numpy.random.default_rng(seed)`` and the first ``round(holdout * n_class)`` go to held-out.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "load_dataset",
    "split_indices",
    "load_digits",
    "load_folder",
    "load_latents",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SPLITS = ("train", "heldout", "all")
DIGITS_SIZE = 16


def split_indices(labels: np.ndarray, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified fixed split: (train indices, held-out indices), each sorted ascending.

    For each class c (ascending), its indices (ascending) are permuted by one shared
    ``np.random.default_rng(seed)`` (classes drawn in order) and the first ``round(holdout * n_c)``
    are held out.
    """
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"holdout fraction {holdout} is not in [0, 1)")
    labels = np.asarray(labels)
    gen = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[gen.permutation(len(idx))]
        held.append(idx[: int(round(holdout * len(idx)))])
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[held_idx] = False
    return np.flatnonzero(mask), held_idx


def load_digits(image_size: int = DIGITS_SIZE) -> tuple[torch.Tensor, torch.Tensor, int]:
    """All 1,797 digits as float32 [N, 1, image_size, image_size] in [-1, 1], labels int64, 10 classes.

    x = v / 8 - 1 for the 0..16 values, then bilinear interpolation (align_corners False, no antialias)
    from 8x8. Bilinear rather than nearest: nearest would make every 2x2 patch constant, so a
    patch-size-2 DiT would never see structure inside a patch and an error in the within-patch layout
    (unpatchify order) would stay invisible in samples; bilinear gives smooth strokes with distinct
    pixels inside each patch at no cost.
    """
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 8.0 - 1.0)[:, None]  # [N, 1, 8, 8]
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    y = torch.from_numpy(d.target.astype(np.int64))
    return x.clamp(-1, 1).contiguous(), y, 10


def _load_image(path: Path, image_size: int, channels: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("L" if channels == 1 else "RGB")
        w, h = im.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        im = im.crop((left, top, left + s, top + s))
        if s != image_size:
            im = im.resize((image_size, image_size), Image.Resampling.BICUBIC)
        a = np.asarray(im, dtype=np.float32)
    if channels == 1:
        a = a[None]  # [1, H, W]
    else:
        a = a.transpose(2, 0, 1)  # [3, H, W]
    return a / 127.5 - 1.0


def load_folder(
    root: str | os.PathLike, image_size: int, channels: int = 3
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Images of ``root/<class>/*`` (sorted class names -> ids; files sorted by name; hidden files and
    non-image extensions skipped), centre-cropped to a square, resized (bicubic) to image_size, 1 or 3
    channels, scaled x / 127.5 - 1."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"image folder {str(root)!r} has no class subfolders")
    images, labels = [], []
    for cid, name in enumerate(classes):
        files = sorted(
            p
            for p in (root / name).iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        for f in files:
            images.append(_load_image(f, image_size, channels))
            labels.append(cid)
    if not images:
        raise ValueError(f"image folder {str(root)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    x = torch.from_numpy(np.stack(images).astype(np.float32))
    return x, torch.tensor(labels, dtype=torch.int64), len(classes)


def load_latents(path: str, labels_path: str | None = None, num_classes: int | None = None):
    """float32 [N, C, H, W] latents from a .npy (no pickle) and int labels [N] from ``labels_path``
    (default: the same name with ``_labels.npy``). num_classes: given, else max(label) + 1."""
    p = Path(path)
    if labels_path is None:
        labels_path = str(p.with_name(p.stem + "_labels.npy"))
    for f in (str(p), labels_path):
        if not os.path.isfile(f):
            raise FileNotFoundError(f"latents file {f!r} does not exist")
    x = np.load(p, allow_pickle=False)
    y = np.load(labels_path, allow_pickle=False)
    if x.ndim != 4:
        raise ValueError(f"latents must be [N, C, H, W], got shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"labels must be [N] with N = {len(x)}, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {y.dtype}")
    if len(y) and y.min() < 0:
        raise ValueError("labels must be non-negative")
    k = int(y.max()) + 1 if num_classes is None else int(num_classes)
    if len(y) and y.max() >= k:
        raise ValueError(f"label {int(y.max())} >= num_classes {k}")
    return (
        torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        torch.from_numpy(y.astype(np.int64)),
        k,
    )


def load_dataset(
    spec: str,
    *,
    split: str = "all",
    image_size: int | None = None,
    channels: int | None = None,
    holdout: float = 0.1,
    seed: int = 0,
    num_classes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Load ``spec`` ("digits", "folder:PATH", "latents:PATH.npy[,LABELS.npy]") and return
    ``(images float32 [N, C, H, W], labels int64 [N], num_classes)``.

    split: "all", "train" or "heldout" (``split_indices(labels, holdout, seed)``).
    image_size: digits (default 16) and folders (required); latents: None or the stored size.
    channels: folders only (default 3). num_classes: latents only (default max label + 1).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
    if spec == "digits":
        if channels not in (None, 1):
            raise ValueError("digits are 1-channel images")
        x, y, k = load_digits(image_size or DIGITS_SIZE)
    elif spec.startswith("folder:"):
        if image_size is None:
            raise ValueError("folder datasets need an image size")
        x, y, k = load_folder(spec[len("folder:") :], image_size, channels or 3)
    elif spec.startswith("latents:"):
        parts = spec[len("latents:") :].split(",")
        if len(parts) > 2 or not parts[0]:
            raise ValueError(f"bad latents spec {spec!r}: use latents:X.npy or latents:X.npy,LABELS.npy")
        x, y, k = load_latents(parts[0], parts[1] if len(parts) == 2 else None, num_classes)
        if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
            raise ValueError(f"latents are {tuple(x.shape[-2:])}, not {image_size}x{image_size}")
        if channels is not None and x.shape[1] != channels:
            raise ValueError(f"latents have {x.shape[1]} channels, not {channels}")
    else:
        raise ValueError(f"unknown dataset {spec!r}: use 'digits', 'folder:PATH' or 'latents:PATH.npy'")
    if split != "all":
        train_idx, held_idx = split_indices(y.numpy(), holdout, seed)
        idx = torch.from_numpy(train_idx if split == "train" else held_idx)
        x, y = x[idx].contiguous(), y[idx].contiguous()
    return x, y, k

"""The digits judge of robuq-eval: a small CNN trained here on the real training digits, its training,
saving (weights + JSON sidecar) and loading, and the 8-bit view every image is judged on.

    python -m robuq.evaluate train-classifier -o models/digits/classifier.pt
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import diffusion
from .cli import UsageError, sha256_file, write_atomic, write_text_atomic
from .data import load_dataset

PROG = "robuq-eval"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CLASSIFIER = REPO_ROOT / "models" / "digits" / "classifier.pt"
CLASSIFIER_FORMAT = "robuq-digits-classifier"
TRAIN_COMMAND = "python -m robuq.evaluate train-classifier -o models/digits/classifier.pt"
IMAGE_SIZE, CHANNELS, NUM_CLASSES = 16, 1, 10


class DigitsClassifier(nn.Module):
    """16x16 1-channel digits in [-1, 1] -> 10 logits. ``features`` is the 64-d penultimate layer (after
    its ReLU, the vector the logits are linear in): the space the Frechet distance is measured in."""

    def __init__(self, width: int = 16, features: int = 64, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.conv1 = nn.Conv2d(CHANNELS, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc = nn.Linear(2 * width * (IMAGE_SIZE // 4) ** 2, features)
        self.head = nn.Linear(features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # [N, w, 8, 8]
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # [N, 2w, 4, 4]
        return F.relu(self.fc(x.flatten(1)))  # [N, features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # [N, num_classes]


@contextlib.contextmanager
def _torch_threads(n: int):
    """Run with n intra-op threads (training is bit-reproducible only at a fixed thread count)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def as_8bit(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] rounded to the 8-bit grid of ``diffusion.to_uint8`` and mapped back to [-1, 1]:
    the classifier always sees what a PNG holds, for real and generated images alike."""
    u = torch.from_numpy(diffusion.to_uint8(x)).permute(0, 3, 1, 2).float()  # [N, C, H, W] 0..255
    return u / 127.5 - 1.0


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by independent integer offsets in [-max_shift, max_shift] (both axes), filling
    with the background value -1 (augmentation: generated digits sit slightly off the real ones)."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    p = max_shift
    padded = F.pad(x, (p, p, p, p), value=-1.0).permute(0, 2, 3, 1)  # [N, H+2p, W+2p, C]
    dy = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # [N, H, 1]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # [N, 1, W]
    out = padded[torch.arange(n)[:, None, None], rows, cols]  # [N, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def predict(model: DigitsClassifier, x: torch.Tensor, batch: int = 512) -> tuple[torch.Tensor, np.ndarray]:
    """(predicted classes int64 [N], float64 features [N, F]) for images [N, 1, 16, 16] in [-1, 1]."""
    model.eval()
    preds, feats = [], []
    for i in range(0, len(x), batch):
        f = model.features(x[i : i + batch].float())
        preds.append(model.head(f).argmax(1))
        feats.append(f.double().numpy())
    return torch.cat(preds), np.concatenate(feats)


def heldout_accuracy(model: DigitsClassifier) -> tuple[int, int]:
    """(correct, total) on the fixed held-out split of the digits (179 images)."""
    x, y, _ = load_dataset("digits", split="heldout")
    pred, _ = predict(model, as_8bit(x))
    return int((pred == y).sum()), len(y)


def fit_classifier(
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    seed: int,
    batch_size: int,
    lr: float,
    max_shift: int,
    weight_decay: float,
) -> DigitsClassifier:
    """The training loop of ``train_classifier`` on given images / labels (one CPU thread, seeded)."""
    with _torch_threads(1), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsClassifier()
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        total, step = epochs * math.ceil(len(x) / batch_size), 0
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), batch_size):
                idx = perm[i : i + batch_size]
                xb = random_shift(x[idx], max_shift, gen)
                for g in opt.param_groups:
                    g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
                loss = F.cross_entropy(model(xb), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
    return model.eval()


def train_classifier(
    epochs: int = 60,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 2e-3,
    max_shift: int = 1,
    weight_decay: float = 1e-4,
) -> tuple[DigitsClassifier, dict]:
    """Train ``DigitsClassifier`` on the digits training split (1,618 images, 8-bit grid), on the CPU with
    one thread and every random draw from ``seed``: the same weights on every run of the same machine
    and torch. Adam, cosine learning rate, random shifts of up to ``max_shift`` pixels.
    Returns (model in eval mode, info with the held-out accuracy)."""
    t0 = time.perf_counter()
    x, y, _ = load_dataset("digits", split="train")
    x = as_8bit(x)
    model = fit_classifier(x, y, epochs, seed, batch_size, lr, max_shift, weight_decay)
    correct, n = heldout_accuracy(model)
    info = {
        "format": CLASSIFIER_FORMAT,
        "architecture": {"class": "robuq.evaluate.DigitsClassifier", "width": 16, "features": 64},
        "heldout_accuracy": correct / n,
        "heldout_correct": correct,
        "heldout_n": n,
        "train_n": len(x),
        "data": "digits, split='train' (holdout 0.1, split seed 0), 8-bit grid",
        "training": {
            "seed": seed,
            "epochs": epochs,
            "batch_size": batch_size,
            "optimizer": "Adam",
            "lr": lr,
            "lr_schedule": "cosine to 0",
            "weight_decay": weight_decay,
            "augmentation": f"random integer shifts in [-{max_shift}, {max_shift}] px, fill -1",
            "threads": 1,
            "device": "cpu",
        },
        "torch": torch.__version__,
        "train_seconds": round(time.perf_counter() - t0, 2),
    }
    return model, info


def save_classifier(model: DigitsClassifier, info: dict, path: str | os.PathLike, command: str) -> Path:
    """Write the state dict (torch.save) and the JSON sidecar ``<path>.json``, each atomically."""
    path = Path(path)
    state = model.state_dict()
    write_atomic(path, lambda f: torch.save(state, f))
    side = dict(info, command=command, sha256=sha256_file(path))
    write_text_atomic(path.with_suffix(".json"), json.dumps(side, indent=1) + "\n")
    return path


def load_classifier(path: str | os.PathLike | None = None, log=print) -> tuple[DigitsClassifier, dict]:
    """The judge: weights from ``path`` (default models/digits/classifier.pt, read with
    weights_only=True), or, when the default file is absent, trained now (deterministic, seconds).
    An explicitly given path that does not exist is a UsageError. The returned info holds the held-out
    accuracy recomputed here and, when the sidecar exists, what it recorded."""
    explicit = path is not None
    path = Path(path) if explicit else DEFAULT_CLASSIFIER
    if not path.is_file():
        if explicit:
            raise UsageError(f"classifier {str(path)!r} does not exist (make it with: {TRAIN_COMMAND})")
        log(f"{PROG}: {path} not found; training the digits classifier now (deterministic, seed 0)")
        model, info = train_classifier()
        return model, dict(info, file=None, source="trained on the fly (no weights file)")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
        model = DigitsClassifier()
        model.load_state_dict(sd, strict=True)
    except Exception as e:  # noqa: BLE001 - any failure to read the weights is a bad input
        first = " ".join(str(e).split())[:200]  # one line: state-dict errors span several
        raise UsageError(f"cannot load classifier {path}: {type(e).__name__}: {first}") from None
    model.eval()
    correct, n = heldout_accuracy(model)
    info = {"file": str(path), "sha256": sha256_file(path), "heldout_accuracy": correct / n}
    info.update(heldout_correct=correct, heldout_n=n)
    side = path.with_suffix(".json")
    if side.is_file():
        rec = json.loads(side.read_text())
        info["recorded"] = {k: rec.get(k) for k in ("heldout_correct", "heldout_n", "sha256", "command")}
        if rec.get("sha256") not in (None, info["sha256"]):
            log(f"{PROG}: warning: {side} describes other weights (sha256 differs from {path})")
    return model, info

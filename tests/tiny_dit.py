"""The one builder of small random DiTs for the tests (beside rq_layout.py, the .rq layout helpers)."""

from __future__ import annotations

import torch

from robuq import models


def tiny_dit(
    seed: int = 0, *, std: float = 0.05, refill_seed: int | None = None, base: str = "DiT-S/2", **config
) -> models.DiT:
    """``models.create(base, **config)`` with the weights of ``torch.manual_seed(seed)`` and its zero-
    initialised adaLN and final layers refilled with N(0, std^2) (``reinit_zero_layers``, generator seeded
    with ``refill_seed``, default ``seed + 1``) so that its outputs are not trivial; in eval mode."""
    torch.manual_seed(seed)
    model = models.create(base, **config)
    g = torch.Generator().manual_seed(seed + 1 if refill_seed is None else refill_seed)
    models.reinit_zero_layers(model, std=std, generator=g)
    return model.eval()

"""AMPN: activation-only mixed precision. Every weight stays ternary; each quantized block linear gets its
own activation bit width so that the summed sensitivity is minimal under an average bit budget.

Sensitivity of (layer, bits) = increase of the training objective on held-out batches when that layer's
activations are quantized at `bits` while every other layer keeps the warm-up width (the largest
candidate). Allocation is an exact dynamic program over layers (a multiple-choice knapsack).

Budget: the average is MAC-weighted by default (sum_l macs_l * bits_l <= budget * sum_l macs_l), since
the MACs are what the hardware pays for; `weighting="plain"` averages over layers instead. With the
paper's budget 2.0 the MAC-weighted average lets a cheap attn.proj take more bits than an fc1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from .quant.config import BLOCK_LINEARS, QuantConfig

CANDIDATES = (1, 2, 3, 4)
WEIGHTINGS = ("mac", "plain")


def layer_macs(name: str, hidden_size: int, mlp_ratio: float = 4.0) -> int:
    """Multiply-adds per token of a block linear, from its state-dict name."""
    d, h = hidden_size, int(hidden_size * mlp_ratio)
    suffix = name.split(".", 2)[-1]
    table = {"attn.qkv": 3 * d * d, "attn.proj": d * d, "mlp.fc1": h * d, "mlp.fc2": d * h}
    if suffix not in table:
        raise ValueError(f"{name!r} is not a block linear ({', '.join(BLOCK_LINEARS)})")
    return table[suffix]


def allocate_bits(
    sensitivity: np.ndarray,
    budget: float,
    weights: Sequence[int] | None = None,
    candidates: Sequence[int] = CANDIDATES,
) -> list[int]:
    """Exact minimiser of sum_l sensitivity[l, j_l] subject to
    sum_l weights[l] * candidates[j_l] <= budget * sum_l weights[l].

    sensitivity: float [layers, len(candidates)]; weights: positive integers per layer (None: all 1, the
    plain average). Returns the chosen bit width per layer. Raises ValueError when even the smallest
    candidate everywhere exceeds the budget.
    """
    sens = np.asarray(sensitivity, dtype=np.float64)
    n, c = sens.shape
    if c != len(candidates):
        raise ValueError(f"sensitivity has {c} columns for {len(candidates)} candidates")
    w = np.ones(n, dtype=np.int64) if weights is None else np.asarray(weights, dtype=np.int64)
    if w.shape != (n,) or np.any(w <= 0):
        raise ValueError("weights must be one positive integer per layer")
    g = int(np.gcd.reduce(w))
    w = w // g
    cand = [int(b) for b in candidates]
    cap = int(math.floor(budget * int(w.sum()) + 1e-9))
    if min(cand) * int(w.sum()) > cap:
        raise ValueError(f"budget {budget} is below the smallest candidate {min(cand)} bits")
    inf = math.inf
    # best[l][u]: least summed sensitivity of layers < l using exactly u budget units
    best = np.full((n + 1, cap + 1), inf)
    choice = np.zeros((n, cap + 1), dtype=np.int64)
    best[0, 0] = 0.0
    for layer in range(n):
        prev, cur = best[layer], best[layer + 1]
        for j, b in enumerate(cand):
            cost = int(w[layer]) * b
            if cost > cap:
                continue
            cand_val = prev[: cap + 1 - cost] + sens[layer, j]
            better = cand_val < cur[cost:]
            cur[cost:][better] = cand_val[better]
            choice[layer, cost:][better] = j
    u = int(np.argmin(best[n]))
    out = [0] * n
    for layer in range(n - 1, -1, -1):
        j = int(choice[layer, u])
        out[layer] = cand[j]
        u -= int(w[layer]) * cand[j]
    return out


def average_bits(bits: Sequence[int], weights: Sequence[int] | None = None) -> float:
    """The (weighted) average bit width of an allocation."""
    b = np.asarray(bits, dtype=np.float64)
    w = np.ones_like(b) if weights is None else np.asarray(weights, dtype=np.float64)
    return float((b * w).sum() / w.sum())


def apply_allocation(config: QuantConfig, names: Sequence[str], bits: Sequence[int]) -> QuantConfig:
    """A copy of `config` with the given activation bits on the named layers."""
    layers = dict(config.layers)
    for name, b in zip(names, bits, strict=True):
        layers[name] = layers[name].replace(act_bits=int(b))
    return QuantConfig(layers=layers, attention_bits=config.attention_bits)


def measure_sensitivity(
    model,
    names: Sequence[str],
    objective: Callable[[], float],
    candidates: Sequence[int] = CANDIDATES,
) -> np.ndarray:
    """Sensitivity table [len(names), len(candidates)]: objective() with one layer at each candidate width
    (all other layers at the largest candidate) minus objective() with all layers at the largest.

    model: a quantized DiT (robuq.quant.quantize_model); objective: evaluates the training objective on
    fixed held-out batches (same noise every call) and returns a float.
    """
    modules = dict(model.named_modules())
    top = max(candidates)
    saved = {n: modules[n].cfg for n in names}
    try:
        for n in names:
            modules[n].cfg = saved[n].replace(act_bits=top)
        base = objective()
        table = np.zeros((len(names), len(candidates)))
        for i, n in enumerate(names):
            for j, b in enumerate(candidates):
                if b == top:
                    continue
                modules[n].cfg = saved[n].replace(act_bits=b)
                table[i, j] = objective() - base
            modules[n].cfg = saved[n].replace(act_bits=top)
    finally:
        for n in names:
            modules[n].cfg = saved[n]
    return table

"""Quantization primitives: ternary and k-bit weights, per-token asymmetric activations, clipping.

The exact arithmetic is specified in docs/quantization.md; the C++ kernels implement the same and the
tests compare code for code. Fake quantization is literally ``dequantize(quantize(x))`` plus a
straight-through gradient, so the trained model and the deployed one cannot drift.
"""

from __future__ import annotations

import functools
import math

import torch

from .formats import weight_format

CLIPS = ("gauss", "minmax")
SCALE_EPS = 1e-8


class _StraightThrough(torch.autograd.Function):
    """Forward: the quantized value exactly. Backward: the gradient passes to the float input unchanged."""

    @staticmethod
    def forward(ctx, x, xq):
        return xq

    @staticmethod
    def backward(ctx, *grad_outputs):
        return grad_outputs[0], None


def straight_through(x: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
    """xq in the forward pass (bit for bit), identity gradient to x in the backward pass."""
    return _StraightThrough.apply(x, xq.to(x.dtype))


# ---------------------------------------------------------------------------------------------- weights
def ternary_quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ternary (W1.58) weights with a per-output-channel absmean scale.

    w: float [out, in]. Returns (q int8 [out, in] in {-1, 0, 1}, s float32 [out]) with w ~ s[:, None] * q.
    """
    w = w.detach().float()
    s = w.abs().mean(dim=-1).clamp_min(SCALE_EPS)
    q = torch.round(w / s[:, None]).clamp_(-1, 1).to(torch.int8)
    return q, s


def symmetric_quantize(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k-bit symmetric per-output-channel weights (absmax scale, codes in [-(2^(k-1)-1), 2^(k-1)-1]).

    w: float [out, in]. Returns (q int8 [out, in], s float32 [out]).
    """
    if not 2 <= bits <= 8:
        raise ValueError(f"symmetric weight bits must be in 2..8, got {bits}")
    qmax = 2 ** (bits - 1) - 1
    w = w.detach().float()
    s = (w.abs().amax(dim=-1) / qmax).clamp_min(SCALE_EPS)
    q = torch.round(w / s[:, None]).clamp_(-qmax, qmax).to(torch.int8)
    return q, s


def weight_bits(fmt: str) -> int | None:
    """Bits of a weight format name (robuq.quant.formats): 'ternary' -> None (1.58), 'int4' -> 4, 'int8' -> 8;
    ValueError for a format the .rq file cannot store."""
    return weight_format(fmt).bits


def quantize_weight(w: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a weight matrix in the named format: returns (codes int8, per-row scale float32)."""
    bits = weight_bits(fmt)
    return ternary_quantize(w) if bits is None else symmetric_quantize(w, bits)


def fake_quantize_weight(w: torch.Tensor, fmt: str) -> torch.Tensor:
    """s * q in w's dtype with a straight-through gradient to the latent weight w."""
    q, s = quantize_weight(w, fmt)
    return straight_through(w, q.float() * s[:, None])


# ---------------------------------------------------------------------------------------- clipping ratio
def _norm_pdf(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _norm_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _second_moment(a: float, b: float, c: float) -> float:
    """E[(X - c)^2 ; a < X < b] for X ~ N(0, 1), in closed form."""
    pa, pb = _norm_pdf(a) if math.isfinite(a) else 0.0, _norm_pdf(b) if math.isfinite(b) else 0.0
    fa, fb = _norm_cdf(a), _norm_cdf(b)
    ex2 = (fb - fa) + (a * pa if math.isfinite(a) else 0.0) - (b * pb if math.isfinite(b) else 0.0)
    ex1 = pa - pb
    return ex2 - 2.0 * c * ex1 + c * c * (fb - fa)


def gauss_quant_mse(k: float, bits: int) -> float:
    """E[(X - Q(X))^2] for X ~ N(0, 1) and the uniform quantizer with 2^bits levels evenly spaced on
    [-k, k] (end points included), values outside clamped to the nearest end level."""
    levels = 2**bits
    step = 2.0 * k / (levels - 1)
    total = 0.0
    for i in range(levels):
        c = -k + i * step
        a = -math.inf if i == 0 else c - step / 2
        b = math.inf if i == levels - 1 else c + step / 2
        total += _second_moment(a, b, c)
    return total


@functools.cache
def gauss_clip_ratio(bits: int) -> float:
    """The clipping ratio k_b that minimises gauss_quant_mse(k, bits), found numerically (golden section
    on [0.05, 8], where the error is unimodal in k); the minimum is flat, so k is good to ~1e-8."""
    if not 1 <= bits <= 8:
        raise ValueError(f"activation bits must be in 1..8, got {bits}")
    lo, hi = 0.05, 8.0
    g = (math.sqrt(5.0) - 1.0) / 2.0
    x1, x2 = hi - g * (hi - lo), lo + g * (hi - lo)
    f1, f2 = gauss_quant_mse(x1, bits), gauss_quant_mse(x2, bits)
    while hi - lo > 1e-10:
        if f1 < f2:
            hi, x2, f2 = x2, x1, f1
            x1 = hi - g * (hi - lo)
            f1 = gauss_quant_mse(x1, bits)
        else:
            lo, x1, f1 = x1, x2, f2
            x2 = lo + g * (hi - lo)
            f2 = gauss_quant_mse(x2, bits)
    return 0.5 * (lo + hi)


def clip_constant(clip: str, bits: int) -> float:
    """The float constant the kernels receive for a clipping rule: k_b for 'gauss', 0 for 'minmax'."""
    if clip == "gauss":
        return float(torch.tensor(gauss_clip_ratio(bits), dtype=torch.float32))
    if clip == "minmax":
        return 0.0
    raise ValueError(f"unknown clipping rule {clip!r} (expected one of {CLIPS})")


# ------------------------------------------------------------------------------------------ activations
def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"activation bits must be an integer in 1..8, got {bits!r}")


def activation_range(x: torch.Tensor, bits: int, clip: str = "gauss") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row clipping range (lo, hi), float32 [...], over the last dim of x (docs/quantization.md)."""
    _check_bits(bits)
    x = x.detach().float()
    mn, mx = x.amin(dim=-1), x.amax(dim=-1)
    if clip == "minmax":
        return mn, mx
    k = clip_constant(clip, bits)
    xd = x.double()
    m = xd.mean(dim=-1)
    sd = (xd - m[..., None]).square().mean(dim=-1).sqrt()
    kd = torch.tensor(k, dtype=torch.float64)
    lo = torch.maximum(mn, (m - kd * sd).float())
    hi = torch.minimum(mx, (m + kd * sd).float())
    return lo, hi


def quantize_activations(
    x: torch.Tensor, bits: int, clip: str = "gauss"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token asymmetric uniform quantization over the last dim.

    x: float [..., n]. Returns (q uint8 [..., n] in 0..2^bits-1, scale float32 [...], zero float32 [...])
    with x ~ (q - zero) * scale.
    """
    lo, hi = activation_range(x, bits, clip)
    levels = torch.tensor(float(2**bits - 1), dtype=torch.float32)
    scale = (hi - lo).clamp_min(SCALE_EPS) / levels
    q = torch.round((x.detach().float() - lo[..., None]) / scale[..., None]).clamp_(0, 2**bits - 1)
    zero = -lo / scale
    return q.to(torch.uint8), scale, zero


def dequantize_activations(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """(q - zero) * scale, float32 [..., n]."""
    return (q.float() - zero[..., None]) * scale[..., None]


def fake_quantize_activations(x: torch.Tensor, bits: int | None, clip: str = "gauss") -> torch.Tensor:
    """dequantize(quantize(x)) in x's dtype with a straight-through gradient; bits None = identity."""
    if bits is None:
        return x
    return straight_through(x, dequantize_activations(*quantize_activations(x, bits, clip)))


def fake_quantize_probs(p: torch.Tensor, bits: int | None = 8) -> torch.Tensor:
    """Softmax probabilities on the fixed unsigned grid round(p * (2^b - 1)) / (2^b - 1), with STE."""
    if bits is None:
        return p
    _check_bits(bits)
    levels = float(2**bits - 1)
    pq = torch.round(p.detach().float() * levels).clamp_(0, levels) / levels
    return straight_through(p, pq)

"""QAT (or full-precision) DiT -> a standard ONNX graph that onnxruntime runs: (x, t, y) -> output.

Uses the TorchScript exporter (torch.onnx.export(..., dynamo=False)): it needs no onnxscript and inlines
the straight-through autograd Function of robuq.quant, whose forward is the quantized value itself.
Inside ``onnx_export_mode`` every QLinear is swapped for ``OnnxQLinear``, its inference-only twin:

  xr = (x @ Hpm) * (1 / sqrt(n))             Hpm: the +-1 Hadamard matrix as a dense MatMul constant
                                              (the same final float32 scaling as fast_hadamard)
  xq = dequantize(quantize(xr, bits, clip))  robuq.quant's own functions, traced into ReduceMin /
                                              ReduceMax / ReduceMean (float64 for 'gauss') / Sub / Div /
                                              Round (half to even) / Clip / Cast / Mul
  y  = xq @ (s * codes).T + bias + (xr @ down.T) @ up.T      (s * codes: a constant float matrix)

Attention is exported unchanged (its q/k/v and probability fake-quantization trace into the same
standard operators). The graph computes what QLinear.forward computes; outputs differ only by float
summation order (dense MatMul against the butterflies of fast_hadamard, onnxruntime's GEMM against
PyTorch's), which can move an activation that lies within a rounding error of a quantization boundary
to the neighbouring code. Such flips are rare (tests/test_onnx_export.py counts them).
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings

import numpy as np
import torch
from torch import nn

from robuq.models import DiT, DiTConfig
from robuq.quant import (
    QLinear,
    QuantConfig,
    block_size,
    dequantize_activations,
    factorize,
    hadamard_base,
    quantize_activations,
    quantize_model,
    quantize_weight,
    sylvester,
)

from .errors import ExportError
from .rq import atomic_path

OPSET = 17
INPUT_NAMES = ("x", "t", "y")
OUTPUT_NAME = "out"


def hadamard_pm1(n: int, form: str, block: int = 0) -> tuple[np.ndarray | None, float]:
    """(+-1 matrix P [n, n] as float32, normalisation c) with x @ H = (x @ P) * c; (None, 1) for 'none'."""
    if form == "none":
        return None, 1.0
    if form == "block":
        b = block_size(n, block)
        return np.kron(np.eye(n // b, dtype=np.float32), sylvester(b).astype(np.float32)), 1.0 / math.sqrt(b)
    k, m = factorize(n)
    p = np.kron(hadamard_base(k).astype(np.float32), sylvester(m).astype(np.float32))
    return p, 1.0 / math.sqrt(n)


class OnnxQLinear(nn.Module):
    """Inference-only twin of a QLinear with export-friendly operators (module docstring). x [..., in]."""

    # buffers (register_buffer), declared for type checkers
    hadamard: torch.Tensor | None
    hadamard_scale: torch.Tensor
    weight_t: torch.Tensor
    bias: torch.Tensor | None
    down_t: torch.Tensor | None
    up_t: torch.Tensor | None

    def __init__(self, q: QLinear):
        super().__init__()
        self.cfg = q.cfg
        p, c = hadamard_pm1(q.in_features, q.cfg.hadamard, q.cfg.hadamard_block)
        self.register_buffer("hadamard", None if p is None else torch.from_numpy(p))
        self.register_buffer("hadamard_scale", torch.tensor(c, dtype=torch.float32))
        with torch.no_grad():
            codes, scale = quantize_weight(q.weight, q.cfg.weight)
            self.register_buffer("weight_t", (codes.float() * scale[:, None]).T.contiguous())  # [in, out]
            self.register_buffer("bias", None if q.bias is None else q.bias.detach().float().clone())
            down = up = None
            if q.lowrank_down is not None and q.lowrank_up is not None:
                down = q.lowrank_down.weight.detach().float().T.contiguous()  # [in, r]
                up = q.lowrank_up.weight.detach().float().T.contiguous()  # [r, out]
        self.register_buffer("down_t", down)
        self.register_buffer("up_t", up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xr = x if self.hadamard is None else (x @ self.hadamard) * self.hadamard_scale  # [..., in]
        xq = xr
        if self.cfg.act_bits is not None:
            xq = dequantize_activations(*quantize_activations(xr, self.cfg.act_bits, self.cfg.clip))
        y = xq @ self.weight_t  # [..., out]
        if self.bias is not None:
            y = y + self.bias
        if self.down_t is not None and self.up_t is not None:
            y = y + (xr @ self.down_t) @ self.up_t
        return y


@contextlib.contextmanager
def onnx_export_mode(model: nn.Module):
    """Swap every QLinear of `model` for its OnnxQLinear twin (and eval mode); restore on exit."""
    swapped = []
    training = model.training
    try:
        for name, mod in list(model.named_modules()):
            if isinstance(mod, QLinear):
                parent_name, _, attr = name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                setattr(parent, attr, OnnxQLinear(mod))
                swapped.append((parent, attr, mod))
        model.eval()
        yield model
    finally:
        for parent, attr, mod in reversed(swapped):
            setattr(parent, attr, mod)
        model.train(training)


def build_model(config: DiTConfig, quant: QuantConfig | None, state) -> DiT:
    """The PyTorch model (QAT form when `quant`) holding `state` (a mapping name -> tensor), built on the
    meta device and filled by assignment, so no second copy of the weights is made."""
    with torch.device("meta"):
        model = DiT(config)
        if quant is not None:
            quantize_model(model, quant, init_lowrank=False)
    sd = {k: state[k].detach().float() for k in model.state_dict()}
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval()


def sample_inputs(config: DiTConfig, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Example (x float32 [N, C, H, W], t float32 [N], y int64 [N]) for a model of this config."""
    g = torch.Generator().manual_seed(seed)
    s = config.input_size
    x = torch.randn(batch, config.in_channels, s, s, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g).float()
    y = torch.randint(0, config.num_classes, (batch,), generator=g)
    return x, t, y


def export_onnx(model: DiT, path: str | os.PathLike, *, opset: int = OPSET) -> None:
    """Write `model` (a DiT, QAT form or not) as ONNX: inputs x [N, C, H, W] float32, t [N] float32
    (timesteps 0..999), y [N] int64 (class labels; num_classes is the null class), output `out`
    [N, out_channels, H, W]; N is dynamic. Written atomically."""
    if not isinstance(model, DiT):
        raise ExportError(f"ONNX export takes a robuq.models.DiT, got {type(model).__name__}")
    args = sample_inputs(model.config)
    axes = {n: {0: "batch"} for n in (*INPUT_NAMES, OUTPUT_NAME)}
    with (
        onnx_export_mode(model),
        torch.no_grad(),
        warnings.catch_warnings(),
        atomic_path(path) as tmp,
    ):
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # pyright: ignore[reportPrivateImportUsage]
        try:
            torch.onnx.export(
                model,
                args,
                tmp,
                dynamo=False,
                opset_version=opset,
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                dynamic_axes=axes,
                do_constant_folding=True,
            )
        except ImportError as e:
            raise ExportError(f"ONNX export needs the onnx package (pip install robuq[onnx]): {e}") from None

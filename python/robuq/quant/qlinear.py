"""The quantized linear layer used in QAT, and the conversion of a reference DiT into its QAT form."""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from .config import LayerQuant, QuantConfig
from .hadamard import block_size, factorize, fast_hadamard
from .primitives import fake_quantize_activations, fake_quantize_weight, quantize_weight


class QLinear(nn.Module):
    """y = dequant(Qa(x H)) @ (s * Wq).T + ((x H) @ down.T) @ up.T + bias  (docs/quantization.md).

    Parameters (state-dict names): `weight` [out, in] is the latent weight with the Hadamard folded in
    (W @ H); `bias` [out]; `lowrank_down.weight` [rank, in] and `lowrank_up.weight` [out, rank] when
    rank > 0. Input x: float [..., in]; output [..., out].
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, cfg: LayerQuant):
        super().__init__()
        self.in_features, self.out_features, self.cfg = in_features, out_features, cfg
        if cfg.hadamard == "full":
            factorize(in_features)  # fail early on widths without a Hadamard matrix
        elif cfg.hadamard == "block":
            block_size(in_features, cfg.hadamard_block)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        if cfg.rank > 0:
            self.lowrank_down = nn.Linear(in_features, cfg.rank, bias=False)
            self.lowrank_up = nn.Linear(cfg.rank, out_features, bias=False)
        else:
            self.lowrank_down = self.lowrank_up = None

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """x @ H, the layer's online Hadamard transform (identity for 'none')."""
        return fast_hadamard(x, self.cfg.hadamard, self.cfg.hadamard_block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xr = self.rotate(x)  # [..., in]
        xq = fake_quantize_activations(xr, self.cfg.act_bits, self.cfg.clip)
        y = F.linear(xq, fake_quantize_weight(self.weight, self.cfg.weight), self.bias)  # [..., out]
        if self.lowrank_down is not None and self.lowrank_up is not None:
            y = y + self.lowrank_up(self.lowrank_down(xr))
        return y

    @torch.no_grad()
    def init_lowrank(self) -> None:
        """Initialise the low-rank branch from the truncated SVD of the quantization error."""
        if self.lowrank_down is None or self.lowrank_up is None:
            return
        w = self.weight.double()
        q, s = quantize_weight(self.weight, self.cfg.weight)
        err = w - q.double() * s.double()[:, None]
        u, sv, vh = torch.linalg.svd(err, full_matrices=False)
        r = self.cfg.rank
        self.lowrank_up.weight.copy_((u[:, :r] * sv[:r]).to(self.lowrank_up.weight.dtype))
        self.lowrank_down.weight.copy_(vh[:r].to(self.lowrank_down.weight.dtype))

    @classmethod
    def from_linear(cls, linear: nn.Linear, cfg: LayerQuant) -> QLinear:
        """Quantized twin of a float linear: folds the Hadamard into the weight and sets the low-rank
        branch from the SVD of the quantization error."""
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, cfg)
        q = q.to(device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            w_rot = fast_hadamard(linear.weight.double(), cfg.hadamard, cfg.hadamard_block)
            q.weight.copy_(w_rot.to(q.weight.dtype))
            if linear.bias is not None and q.bias is not None:
                q.bias.copy_(linear.bias)
        q.init_lowrank()
        return q

    def extra_repr(self) -> str:
        c = self.cfg
        return (
            f"in={self.in_features}, out={self.out_features}, w={c.weight}, a={c.act_bits}, clip={c.clip}, "
            f"hadamard={c.hadamard}, rank={c.rank}"
        )


def quantize_model(model: nn.Module, config: QuantConfig, *, init_lowrank: bool = True) -> nn.Module:
    """Turn a reference DiT into its QAT form, in place: every layer named in `config` (an nn.Linear)
    becomes a QLinear with the Hadamard folded into its weight, and attention operands get
    `config.attention_bits`. Returns the model, with `model.quant_config` set.

    init_lowrank False leaves the low-rank factors uninitialised (for loading a QAT state dict).
    """
    modules = dict(model.named_modules())
    for name, cfg in config.layers.items():
        lin = modules.get(name)
        if lin is None:
            raise ValueError(f"quantization config names layer {name!r}, which the model does not have")
        if not isinstance(lin, nn.Linear):
            raise ValueError(f"layer {name!r} is a {type(lin).__name__}, not an nn.Linear")
        if init_lowrank:
            qlin = QLinear.from_linear(lin, cfg)
        else:
            qlin = QLinear(lin.in_features, lin.out_features, lin.bias is not None, cfg)
            qlin = qlin.to(device=lin.weight.device, dtype=lin.weight.dtype)
        parent_name, _, attr = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, attr, qlin)
    for mod_name, mod in model.named_modules():
        if mod_name.endswith(".attn") and hasattr(mod, "act_bits"):
            cast(Any, mod).act_bits = config.attention_bits  # a plain attribute (nn.Module types tensors)
    cast(Any, model).quant_config = config
    return model

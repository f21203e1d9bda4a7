"""A DiT state dict (QAT or full precision) -> .rq file, one layer in memory at a time.

``plan_rq`` lays the file out from the model config alone (names, dtypes, shapes, metadata), so the file
size is known before any weight is touched; ``export_rq`` then streams the converted tensors in that
order from any mapping of state-dict names to tensors (a loaded checkpoint, or random_model's
lazily generated weights).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from robuq.models import DiTConfig
from robuq.quant import LayerQuant, QuantConfig, block_size, clip_constant, factorize, quantize_weight

from .checkpoint import check_quant_config, expected_shapes
from .errors import ExportError
from .packing import pack_weight
from .rq import FORMAT, FORMAT_VERSION, TensorSpec, layer_tensor_specs, plan_container, write_safetensors

SPACES = ("pixel", "latent")
LAYER_PARAMS = ("weight", "bias", "lowrank_down.weight", "lowrank_up.weight")  # a QLinear's state
CFG_MODES = ("dit", "all")


def split_key(key: str, layers) -> tuple[str | None, str]:
    """(quantized layer, its parameter) for a key of a quantized layer, else (None, key)."""
    for layer in (key.rsplit(".", 1)[0], key.rsplit(".", 2)[0]):
        if layer in layers and key[len(layer) + 1 :] in LAYER_PARAMS:
            return layer, key[len(layer) + 1 :]
    return None, key


def layer_entry(lq: LayerQuant, in_features: int, out_features: int) -> dict:
    """The quant_config entry of one quantized linear (docs/rq-format.md), with the Hadamard resolved."""
    k = m = block = 0
    if lq.hadamard == "full":
        k, m = factorize(in_features)
    elif lq.hadamard == "block":
        block = block_size(in_features, lq.hadamard_block)
    clip_k = clip_constant(lq.clip, lq.act_bits) if lq.act_bits is not None else 0.0
    return {
        "weight": lq.weight,
        "in_features": in_features,
        "out_features": out_features,
        "act_bits": lq.act_bits,
        "clip": lq.clip,
        "clip_k": clip_k,  # a float32 value; json writes repr() of it widened to float64
        "hadamard": lq.hadamard,
        "hadamard_block": block,
        "hadamard_k": k,
        "hadamard_m": m,
        "rank": lq.rank,
    }


@dataclass
class RQPlan:
    """Everything about a .rq file except the weights."""

    config: DiTConfig
    quant: QuantConfig | None
    shapes: dict[str, tuple[int, ...]]  # state-dict key -> shape, state-dict order
    entries: dict[str, dict]  # quantized layer name -> quant_config entry
    specs: list[TensorSpec]  # file tensors, file order
    metadata: dict[str, str]

    @property
    def file_size(self) -> int:
        return plan_container(self.specs, self.metadata)[2]


def default_space(config: DiTConfig) -> str:
    return "latent" if config.in_channels == 4 else "pixel"


def plan_rq(
    config: DiTConfig,
    quant: QuantConfig | None,
    *,
    space: str | None = None,
    clip_denoised: bool | None = None,
    cfg_mode: str = "dit",
    source: str = "",
) -> RQPlan:
    """Lay out the .rq file of a model: tensors by layer in state-dict order, and the metadata."""
    space = space or default_space(config)
    if space not in SPACES:
        raise ExportError(f"unknown space {space!r} (expected pixel or latent)")
    if cfg_mode not in CFG_MODES:
        raise ExportError(f"unknown cfg mode {cfg_mode!r} (expected dit or all)")
    if clip_denoised is None:
        clip_denoised = space == "pixel"
    if quant is not None:
        check_quant_config(quant)
    shapes = expected_shapes(config, quant)
    entries: dict[str, dict] = {}
    specs: list[TensorSpec] = []
    layers = quant.layers if quant is not None else {}
    for key, shape in shapes.items():
        layer, param = split_key(key, layers)
        if layer is not None:
            if param == "weight":
                entries[layer] = layer_entry(layers[layer], shape[1], shape[0])
                specs += layer_tensor_specs(layer, entries[layer], bias=f"{layer}.bias" in shapes)
            continue  # bias and low-rank factors are in the layer's specs
        specs.append(TensorSpec(key, "F32", shape))
    model_config = {**config.to_dict(), "space": space}
    quant_config = {"attention_bits": quant.attention_bits if quant is not None else None, "layers": entries}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": json.dumps(model_config),
        "quant_config": json.dumps(quant_config),
        "sampling": json.dumps({"clip_denoised": bool(clip_denoised), "cfg_mode": cfg_mode}),
        "source": source,
    }
    return RQPlan(config, quant, shapes, entries, specs, metadata)


def _f32(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()


def _f16(name: str, t: torch.Tensor) -> np.ndarray:
    h = t.detach().to(device="cpu", dtype=torch.float16)
    if not torch.isfinite(h).all():
        raise ExportError(f"tensor {name} overflows float16 (max |value| {float(t.abs().max()):.4g} > 65504)")
    return h.contiguous().numpy()


def convert_layer(entry: dict, weight: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Latent (Hadamard-folded) weight -> (packed codes U8, scale F32 [out], code row sums I32 [out]),
    with robuq.quant.quantize_weight, the function QAT's forward uses."""
    codes, scale = quantize_weight(weight.detach().cpu(), entry["weight"])
    codes = codes.numpy()
    row_sum = codes.sum(axis=1, dtype=np.int64).astype(np.int32)
    return pack_weight(codes, entry["weight"]), scale.numpy().astype(np.float32), row_sum


def tensor_stream(plan: RQPlan, state: Mapping[str, torch.Tensor]) -> Iterator[np.ndarray]:
    """The arrays of plan.specs, in order, converted from `state` (fetched once per key)."""
    for key in plan.shapes:
        layer, param = split_key(key, plan.entries)
        entry = None if layer is None else plan.entries.get(layer)
        t = state[key]
        if entry is None:
            yield _f32(t)
        elif param == "weight":
            yield from convert_layer(entry, t)
        elif param == "bias":
            yield _f32(t)
        else:  # lowrank_down.weight / lowrank_up.weight
            yield _f16(key, t)
        del t


def _check_order(plan: RQPlan) -> None:
    """Sanity check: the key walk of tensor_stream yields plan.specs' order (layer tensors contiguous)."""
    names = []
    for key in plan.shapes:
        layer, param = split_key(key, plan.entries)
        if layer is not None and param == "weight":
            names += [f"{layer}.weight_packed", f"{layer}.weight_scale", f"{layer}.weight_sum"]
        else:
            names.append(key)
    if names != [s.name for s in plan.specs]:
        raise AssertionError("state-dict order and file order disagree")


def export_rq(plan: RQPlan, state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> int:
    """Write the .rq file `plan` describes from `state`; returns its size in bytes."""
    _check_order(plan)
    return write_safetensors(path, plan.specs, tensor_stream(plan, state), plan.metadata)

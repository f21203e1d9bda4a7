"""Random-weight models for benchmarks: the official DiT initialisation (with the zero-initialised layers
refilled as robuq.models.reinit_zero_layers does), quantized with the paper's preset, generated lazily
one layer at a time so that even DiT-XL/2 never exists in memory in full.

Every tensor has its own generator, seeded from (seed, the tensor's index in the full-precision state
dict), so the weights do not depend on the order they are asked for, and a quantized file and a
full-precision file of the same seed share their underlying weights.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from robuq.models import DiT, DiTConfig, get_2d_sincos_pos_embed
from robuq.quant import ADALN, BLOCK_LINEARS, LayerQuant, QuantConfig, fast_hadamard, preset, quantize_weight

from .checkpoint import expected_shapes
from .errors import ExportError
from .export import split_key

#: The RobuQ paper's published AMPN allocations for DiT-XL/2, averaged over blocks per layer type.
PAPER_AMPN_AVERAGES = {
    2: {"attn.proj": 2.75, "attn.qkv": 2.21, "mlp.fc1": 2.00, "mlp.fc2": 1.64},
    3: {"attn.proj": 3.89, "attn.qkv": 2.96, "mlp.fc1": 3.04, "mlp.fc2": 2.31},
}
STD = 0.02  # normal init of the embedding tables, the timestep MLP and the refilled zero-init layers


def parse_bits(text: str) -> int | None:
    """'W1.58A2' -> 2 (activation bits of the block linears); 'W1.58A16' / 'W1.58A32' -> None (float)."""
    m = re.fullmatch(r"W1\.58A(\d+)", text.strip(), flags=re.IGNORECASE)
    if m is None:
        raise ExportError(
            f"unsupported bit widths {text!r}: --bits takes W1.58A<b> (ternary block linears, b = 1..8 "
            "activation bits, or 16 / 32 for float activations)"
        )
    bits = int(m.group(1))
    if bits in (16, 32):
        return None
    if not 1 <= bits <= 8:
        raise ExportError(f"unsupported activation bits A{bits} in {text!r} (1..8, or 16 / 32 for float)")
    return bits


def ampn_mix(depth: int, act_bits: int) -> dict[str, int]:
    """A fixed AMPN-style allocation: per layer type, each block gets floor(a) or floor(a) + 1 bits so
    that the average over blocks is the paper's published average a (nearest achievable for `depth`),
    the higher widths spread evenly over depth. Block linear name -> activation bits."""
    if act_bits not in PAPER_AMPN_AVERAGES:
        raise ExportError(
            f"--ampn follows the paper's published averages, which exist for A2 and A3 only (got A{act_bits})"
        )
    out: dict[str, int] = {}
    for kind, avg in PAPER_AMPN_AVERAGES[act_bits].items():
        lo = math.floor(avg)
        high = round((avg - lo) * depth)
        for i in range(depth):
            up = (i + 1) * high // depth > i * high // depth
            out[f"blocks.{i}.{kind}"] = lo + int(up)
    return {f"blocks.{i}.{k}": out[f"blocks.{i}.{k}"] for i in range(depth) for k in BLOCK_LINEARS}


def random_quant_config(
    depth: int,
    act_bits: int | None,
    *,
    rank: int = 0,
    adaln: str = "int4",
    ampn: bool = False,
    clip: str = "gauss",
    hadamard: str = "full",
) -> QuantConfig:
    """The paper preset with these options. adaln 'ternary' stores the adaLN projections ternary (still
    A4 minmax, no Hadamard) instead of int4; ampn replaces the block linears' activation bits by
    ampn_mix(depth, act_bits)."""
    try:
        q = preset(depth, act_bits, clip=clip, hadamard=hadamard, rank=rank)
    except ValueError as e:
        raise ExportError(str(e)) from None
    if adaln == "ternary":
        for i in range(depth):
            q.layers[f"blocks.{i}.{ADALN}"] = LayerQuant("ternary", 4, "minmax", "none", 0, 0)
    elif adaln != "int4":
        raise ExportError(f"unsupported --adaln {adaln!r} (int4 or ternary)")
    if ampn:
        if act_bits is None:
            raise ExportError("--ampn needs quantized activations (A2 or A3)")
        for name, bits in ampn_mix(depth, act_bits).items():
            q.layers[name] = q.layers[name].replace(act_bits=bits)
    return q


def mac_weighted_bits(quant: QuantConfig, hidden_size: int, mlp_ratio: float = 4.0) -> float:
    """MAC-weighted average activation bits of the block linears (the hardware's view of the budget)."""
    from robuq.ampn import layer_macs

    names = quant.block_linears()
    macs = [layer_macs(n, hidden_size, mlp_ratio) for n in names]
    bits = [quant.layers[n].act_bits for n in names]
    if any(b is None for b in bits):
        raise ExportError("the MAC-weighted bit average needs quantized activations in every block linear")
    return sum(m * b for m, b in zip(macs, bits, strict=True) if b is not None) / sum(macs)


class RandomWeights(Mapping):
    """Lazy state dict of a randomly initialised (and, with `quant`, QAT-converted) DiT.

    Mapping of the state-dict names of quantize_model(create(...), quant) (or of the plain model) to
    float32 tensors, generated on access. A quantized layer's latent weight is the random weight with
    the layer's Hadamard folded in by robuq.quant.fast_hadamard; its low-rank factors (rank > 0) come from
    a truncated SVD of the ternarisation error (randomised, torch.svd_lowrank: exact enough for
    benchmark weights and far faster than quantize_model's full SVD). The last quantized layer's tensors
    are cached, nothing else.
    """

    def __init__(self, config: DiTConfig, quant: QuantConfig | None = None, seed: int = 0):
        self.config, self.quant, self.seed = config, quant, int(seed)
        with torch.device("meta"):
            base = DiT(config)
        self._base = {k: (i, tuple(v.shape)) for i, (k, v) in enumerate(base.state_dict().items())}
        zero = [f"blocks.{i}.{ADALN}" for i in range(config.depth)]
        self._zero_init = set(zero + ["final_layer.adaLN_modulation.1", "final_layer.linear"])
        self._shapes = expected_shapes(config, quant)
        self._layers = quant.layers if quant is not None else {}
        self._cache: tuple[str, dict[str, torch.Tensor]] | None = None

    def __iter__(self) -> Iterator[str]:
        return iter(self._shapes)

    def __len__(self) -> int:
        return len(self._shapes)

    def _generator(self, index: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + index)

    def base_tensor(self, key: str) -> torch.Tensor:
        """The full-precision model's tensor `key` under the official init (+ reinit_zero_layers)."""
        index, shape = self._base[key]
        g = self._generator(index)
        layer, _, param = key.rpartition(".")
        if key == "pos_embed":
            pos = get_2d_sincos_pos_embed(self.config.hidden_size, self.config.grid_size)
            return torch.from_numpy(pos).float().reshape(shape)
        if layer in self._zero_init or key in (
            "y_embedder.embedding_table.weight",
            "t_embedder.mlp.0.weight",
            "t_embedder.mlp.2.weight",
        ):
            return torch.randn(shape, generator=g).mul_(STD)
        if param == "bias":
            return torch.zeros(shape)
        if param == "weight":
            t = torch.empty(shape)
            nn.init.xavier_uniform_(t.view(shape[0], -1), generator=g)  # conv: as a linear over (C, p, p)
            return t
        raise AssertionError(f"no init rule for {key}")

    def _quantized_layer(self, layer: str) -> dict[str, torch.Tensor]:
        if self._cache is not None and self._cache[0] == layer:
            return self._cache[1]
        lq = self._layers[layer]
        w = fast_hadamard(self.base_tensor(f"{layer}.weight"), lq.hadamard, lq.hadamard_block)
        out = {"weight": w}
        if lq.rank:
            codes, scale = quantize_weight(w, lq.weight)
            err = w - codes.float() * scale[:, None]
            r = lq.rank
            with torch.random.fork_rng(devices=[]):  # svd_lowrank draws from the global generator
                torch.manual_seed(self.seed * 1_000_003 + self._base[f"{layer}.weight"][0])
                u, s, v = torch.svd_lowrank(err, q=min(r + 8, min(err.shape)), niter=2)
            out["lowrank_up.weight"] = (u[:, :r] * s[:r]).contiguous()
            out["lowrank_down.weight"] = v[:, :r].T.contiguous()
        self._cache = (layer, out)
        return out

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._shapes:
            raise KeyError(key)
        layer, param = split_key(key, self._layers)
        if layer is not None and param != "bias":
            return self._quantized_layer(layer)[param]
        return self.base_tensor(key)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """All tensors at once (small models: to load into a PyTorch model)."""
        return {k: self[k] for k in self}

"""Per-layer quantization configuration (JSON), and the presets that follow the RobuQ paper."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

from .hadamard import FORMS
from .primitives import CLIPS, weight_bits

CONFIG_FORMAT = "robuq-quant-config"
CONFIG_VERSION = 1
BLOCK_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
ADALN = "adaLN_modulation.1"


@dataclass(frozen=True)
class LayerQuant:
    """How one linear layer is quantized.

    weight: a name in robuq.quant.formats.WEIGHT_FORMATS: 'ternary' (W1.58), 'int4' or 'int8' (symmetric
        per-channel); any other name is refused here, before training.
    act_bits: 1..8 per-token activation bits, or None for full-precision activations.
    clip: 'gauss' (Gaussian-optimal ratio on mean/std) or 'minmax'.
    hadamard: 'full' (K x 2^m Kronecker), 'block' (block diagonal) or 'none'.
    hadamard_block: block size for 'block' (0: the largest power of two dividing the width).
    rank: rank of the full-precision low-rank branch (0: none).
    """

    weight: str = "ternary"
    act_bits: int | None = 4
    clip: str = "gauss"
    hadamard: str = "full"
    hadamard_block: int = 0
    rank: int = 0

    def __post_init__(self):
        weight_bits(self.weight)  # raises on an unknown format
        if self.act_bits is not None and (not isinstance(self.act_bits, int) or not 1 <= self.act_bits <= 8):
            raise ValueError(f"act_bits must be None or an integer in 1..8, got {self.act_bits!r}")
        if self.clip not in CLIPS:
            raise ValueError(f"unknown clip {self.clip!r} (expected one of {CLIPS})")
        if self.hadamard not in FORMS:
            raise ValueError(f"unknown hadamard form {self.hadamard!r} (expected one of {FORMS})")
        if not isinstance(self.hadamard_block, int) or self.hadamard_block < 0:
            raise ValueError(f"hadamard_block must be a non-negative integer, got {self.hadamard_block!r}")
        if not isinstance(self.rank, int) or self.rank < 0:
            raise ValueError(f"rank must be a non-negative integer, got {self.rank!r}")

    def replace(self, **kw) -> LayerQuant:
        return dataclasses.replace(self, **kw)


@dataclass
class QuantConfig:
    """Quantization of a whole model: one LayerQuant per quantized linear (by state-dict module name),
    and the bit width of the attention matmuls' operands (None: full precision)."""

    layers: dict[str, LayerQuant] = field(default_factory=dict)
    attention_bits: int | None = 8

    def to_dict(self) -> dict:
        return {
            "format": CONFIG_FORMAT,
            "version": CONFIG_VERSION,
            "attention_bits": self.attention_bits,
            "layers": {name: dataclasses.asdict(lq) for name, lq in self.layers.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> QuantConfig:
        if not isinstance(d, dict) or d.get("format") != CONFIG_FORMAT:
            raise ValueError(f"not a quantization config (expected format {CONFIG_FORMAT!r})")
        if d.get("version") != CONFIG_VERSION:
            raise ValueError(f"unsupported quantization config version {d.get('version')!r}")
        known = {f.name for f in dataclasses.fields(LayerQuant)}
        layers = {}
        for name, lq in d.get("layers", {}).items():
            extra = set(lq) - known
            if extra:
                raise ValueError(f"layer {name}: unknown fields {sorted(extra)}")
            layers[name] = LayerQuant(**lq)
        bits = d.get("attention_bits")
        if bits is not None and (not isinstance(bits, int) or not 1 <= bits <= 8):
            raise ValueError(f"attention_bits must be None or 1..8, got {bits!r}")
        return cls(layers=layers, attention_bits=bits)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, s: str) -> QuantConfig:
        return cls.from_dict(json.loads(s))

    def save(self, path: str | os.PathLike) -> None:
        from robuq.cli import write_text_atomic

        write_text_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> QuantConfig:
        with open(path) as f:
            return cls.from_json(f.read())

    def block_linears(self) -> list[str]:
        """Names of the quantized block linears (the layers AMPN allocates bits to), in model order."""
        return [n for n in self.layers if n.startswith("blocks.") and n.endswith(BLOCK_LINEARS)]


def preset(
    depth: int,
    act_bits: int | None = 4,
    *,
    clip: str = "gauss",
    hadamard: str = "full",
    rank: int = 0,
    adaln: bool = True,
    attention_bits: int | None = 8,
) -> QuantConfig:
    """The paper's layout for a DiT of `depth` blocks: the four block linears W1.58 with `act_bits`
    activations (clip / hadamard / rank as given), adaLN W4A4 (minmax, no Hadamard) when `adaln`,
    attention matmuls at `attention_bits`; embedders and the final layer stay full precision.

    The plain baseline of the paper's ablations is preset(depth, bits, clip='minmax', hadamard='none').
    """
    layers: dict[str, LayerQuant] = {}
    block = LayerQuant("ternary", act_bits, clip, hadamard, 0, rank)
    for i in range(depth):
        for name in BLOCK_LINEARS:
            layers[f"blocks.{i}.{name}"] = block
        if adaln:
            layers[f"blocks.{i}.{ADALN}"] = LayerQuant("int4", 4, "minmax", "none", 0, 0)
    return QuantConfig(layers=layers, attention_bits=attention_bits)

"""The exporter's view of robuq.checkpoint (the one checkpoint reader): the same functions, raising
ExportError (robuq-export's error line) instead of CheckpointError."""

from __future__ import annotations

import os

from robuq import checkpoint as _ck
from robuq.checkpoint import Checkpoint
from robuq.models import DiTConfig
from robuq.quant import QuantConfig

from .errors import ExportError

__all__ = ["Checkpoint", "check_quant_config", "expected_shapes", "load_checkpoint"]


def load_checkpoint(path: str | os.PathLike, *, ema: bool = True, num_heads: int | None = None) -> Checkpoint:
    """robuq.checkpoint.load: read, interpret and validate a checkpoint of any supported layout."""
    try:
        return _ck.load(path, ema=ema, num_heads=num_heads)
    except _ck.CheckpointError as e:
        raise ExportError(str(e)) from None


def expected_shapes(config: DiTConfig, quant: QuantConfig | None) -> dict[str, tuple[int, ...]]:
    """robuq.checkpoint.expected_shapes: state-dict key -> shape of the (quantized) model."""
    try:
        return _ck.expected_shapes(config, quant)
    except _ck.CheckpointError as e:
        raise ExportError(str(e)) from None


def check_quant_config(quant: QuantConfig) -> None:
    """robuq.checkpoint.check_quant_config: every layer's weight format is one the .rq format stores."""
    try:
        _ck.check_quant_config(quant)
    except _ck.CheckpointError as e:
        raise ExportError(str(e)) from None

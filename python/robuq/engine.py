"""The standalone C++ DiT engine (``robuq._C``): a ``.rq`` file in, model outputs out. No torch needed.

    from robuq import Engine
    eng = Engine("model.rq")                 # map and validate the file (robuq.FormatError if bad)
    eps = eng.forward(x, t, y)               # float32 [N, C, S, S], int64 [N], int64 [N]
    h = eng.linear("blocks.0.attn.qkv", a)   # one layer, float32 [tokens, in] -> [tokens, out]

Layer names are the PyTorch state-dict module names. Inputs are checked here and again in C++; the
GIL is released while the engine computes, so other Python threads keep running.
"""

from __future__ import annotations

import copy
import errno
import os
from typing import Any

import numpy as np

from . import _C

__all__ = ["Engine", "FormatError"]

#: Raised for a malformed or inconsistent ``.rq`` file; the message names the tensor or metadata field.
#: A subclass of ValueError.
FormatError = _C.FormatError


def _as_labels(name: str, v: Any, n: int) -> np.ndarray:
    """An integer array of n entries as int64 (a Python int or 0-d array is broadcast)."""
    a = np.asarray(v)
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must be an integer array (int64), got dtype {a.dtype}")
    if a.ndim == 0:
        a = np.full(n, int(a), dtype=np.int64)
    if a.ndim != 1 or a.shape[0] != n:
        raise ValueError(f"{name} must have shape [N] = [{n}], got {list(a.shape)}")
    if a.dtype == np.uint64 and a.size and int(a.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{name} has values beyond the int64 range")
    return np.ascontiguousarray(a, dtype=np.int64)


def _as_float32(name: str, v: Any, ndim: int, shape_doc: str) -> np.ndarray:
    a = np.asarray(v)
    if a.dtype != np.float32:
        raise ValueError(f"{name} must be float32, got dtype {a.dtype} (convert with .astype(np.float32))")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D {shape_doc}, got shape {list(a.shape)}")
    return np.ascontiguousarray(a)


class Engine:
    """A DiT loaded from a ``.rq`` file (docs/rq-format.md) and run by the C++ engine.

    Args:
        path: the ``.rq`` file. It is memory-mapped read-only (read into memory if mapping fails, or
            when the environment variable ``ROBUQ_NO_MMAP=1`` is set) and fully validated: container,
            metadata schema, every tensor's dtype and shape, finite float values, valid weight codes
            and row sums.
        threads: worker threads for every call; None or 0 uses all available cores. Results do not
            depend on the thread count.

    Raises:
        FileNotFoundError (or another OSError): the file cannot be opened or read.
        robuq.FormatError: the file is not a valid ``.rq`` file; the message names the problem.
        ValueError: threads is negative.

    The kernel tier (reference, generic or avx2) is chosen per call from ``robuq._C.active_tier()``.
    ``forward`` calls on one Engine are serialised (they share a workspace sized for the batch);
    ``linear`` may run concurrently.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        path = os.fspath(path)
        if threads is None:
            threads = 0
        if not isinstance(threads, int | np.integer) or isinstance(threads, bool) or threads < 0:
            raise ValueError(f"threads must be None or an integer >= 0, got {threads!r}")
        if not os.path.exists(path):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        self._path = path
        self._engine = _C.Engine(path, int(threads))
        self._info = self._engine.info()
        cfg = self._info["model_config"]
        self._channels = cfg["in_channels"]
        self._size = cfg["input_size"]
        self._label_rows = self._info["label_rows"]

    @property
    def info(self) -> dict:
        """What the file holds, as a dict (a copy):

        * ``format_version`` (str), ``source`` (str), ``path``, ``file_size`` (bytes), ``mapped`` (bool),
          ``threads`` (int);
        * ``model_config``: depth, hidden_size, patch_size, num_heads, mlp_ratio, input_size, in_channels,
          num_classes, learn_sigma, class_dropout_prob, space; and ``out_channels``, ``num_tokens``,
          ``label_rows`` (num_classes, plus the null class when the model has one);
        * ``attention_bits``: int, or None for float attention;
        * ``layers``: quantized layer name -> {in_features, out_features, weight, act_bits (None: float),
          clip, clip_k, hadamard, hadamard_block (resolved block size), hadamard_k, hadamard_m, rank};
        * ``linears``: every linear layer name -> {in_features, out_features, quantized};
        * ``sampling``: {clip_denoised, cfg_mode} or None.
        """
        return copy.deepcopy(self._info)

    @property
    def threads(self) -> int:
        """Worker threads used by every call."""
        return self._engine.threads

    @property
    def path(self) -> str:
        return self._path

    def forward(self, x: np.ndarray, t: Any, y: Any) -> np.ndarray:
        """One DiT forward.

        Args:
            x: float32 [N, in_channels, input_size, input_size], the noisy input (C-contiguous or not).
            t: int64 [N] timesteps (any integer dtype; a scalar is used for every sample).
            y: int64 [N] class labels in 0..num_classes, where num_classes is the null (unconditional)
                class; 0..num_classes-1 when the model has no null class (class_dropout_prob 0).

        Returns:
            float32 [N, out_channels, input_size, input_size] (eps channels, then variance channels when
            learn_sigma).

        Raises:
            ValueError: wrong dtype, shape, or a label out of range.
        """
        x = _as_float32("x", x, 4, "[N, C, H, W]")
        n = x.shape[0]
        want = (self._channels, self._size, self._size)
        if tuple(x.shape[1:]) != want:
            raise ValueError(f"x must have shape [N, {want[0]}, {want[1]}, {want[2]}], got {list(x.shape)}")
        t = _as_labels("t", t, n)
        y = _as_labels("y", y, n)
        if y.size and (y.min() < 0 or y.max() >= self._label_rows):
            bad = int(y[(y < 0) | (y >= self._label_rows)][0])
            null = " (the null class)" if self._label_rows > self._info["model_config"]["num_classes"] else ""
            raise ValueError(f"class label {bad} is out of range 0..{self._label_rows - 1}{null}")
        return self._engine.forward(x, t, y)

    def linear(self, name: str, x: np.ndarray) -> np.ndarray:
        """Run one linear layer of the model.

        Args:
            name: the layer's state-dict module name, e.g. ``"blocks.0.attn.qkv"`` (see ``info["linears"]``).
            x: float32 [tokens, in_features].

        Returns:
            float32 [tokens, out_features]: for a quantized layer the engine's quantized computation
            (Hadamard, per-token activation quantization, integer GEMM, low-rank branch, bias), else
            ``x @ W.T + b``.

        Raises:
            ValueError: unknown layer name, wrong dtype or shape.
        """
        layer = self._info["linears"].get(name)
        if layer is None:
            raise ValueError(f"the model has no linear layer {name!r} (see Engine.info['linears'])")
        x = _as_float32("x", x, 2, "[tokens, in_features]")
        if x.shape[1] != layer["in_features"]:
            raise ValueError(
                f"x must have shape [tokens, {layer['in_features']}] for layer {name!r}, got {list(x.shape)}"
            )
        return self._engine.linear(name, x)

    def __repr__(self) -> str:
        c = self._info["model_config"]
        return (
            f"Engine({self._path!r}, depth={c['depth']}, hidden={c['hidden_size']}, "
            f"quantized_layers={len(self._info['layers'])}, threads={self.threads})"
        )

"""The standalone C++ DiT engine (``robuq._C``): a ``.rq`` file in, model outputs out. No torch needed.

    from robuq import Engine
    eng = Engine("model.rq")                 # map and validate the file (robuq.FormatError if bad)
    eps = eng.forward(x, t, y)               # float32 [N, C, S, S], int64 [N], int64 [N]
    h = eng.linear("blocks.0.attn.qkv", a)   # one layer, float32 [tokens, in] -> [tokens, out]
    img = eng.sample([7, 3], steps=50, cfg_scale=4.0, seed=0)   # uint8 [2, H, W, C] (pixel models)

Layer names are the PyTorch state-dict module names. Inputs are checked here and again in C++; the
GIL is released while the engine computes, so other Python threads keep running.
"""

from __future__ import annotations

import copy
import errno
import math
import numbers
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from . import _C

__all__ = ["Engine", "FormatError", "NonFiniteError", "to_uint8", "parse_bytes"]

SAMPLERS = ("ddpm", "ddim")
CFG_MODES = ("dit", "all")
OUTPUTS = ("auto", "image", "latent")

#: Raised for a malformed or inconsistent ``.rq`` file; the message names the tensor or metadata field.
#: A subclass of ValueError.
FormatError = _C.FormatError

#: Raised when a computation produces NaN or infinity (a model whose values overflow float32, e.g. a huge but
#: finite weight scale); the message names where (for sampling: the step). A subclass of ArithmeticError.
NonFiniteError = _C.NonFiniteError


def parse_bytes(v: Any, what: str = "max_memory") -> int:
    """A byte count: a positive int, or a string like "8G", "512M", "1073741824" (K, M, G, T: powers of
    1024). ValueError otherwise."""
    if isinstance(v, bool):
        raise ValueError(f"{what} must be a positive number of bytes, got {v!r}")
    if isinstance(v, int | np.integer | float) and math.isfinite(v) and v > 0:
        return int(v)
    if isinstance(v, str):
        s = v.strip().upper().removesuffix("IB").removesuffix("B")
        mult = 1
        if s and s[-1] in "KMGT":
            mult = 1024 ** ("KMGT".index(s[-1]) + 1)
            s = s[:-1]
        try:
            f = float(s)
        except ValueError:
            f = -1.0
        if math.isfinite(f) and f > 0:
            return int(f * mult)
    raise ValueError(f"{what} must be a positive number of bytes (e.g. 8G, 512M), got {v!r}")


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


def _as_seeds(seeds: Any, n: int) -> list[int]:
    """n per-sample seeds as Python ints in 0..2**64-1 (ValueError otherwise)."""
    vals = list(np.asarray(seeds, dtype=object).reshape(-1)) if not isinstance(seeds, int) else [seeds]
    if len(vals) != n:
        raise ValueError(f"seeds must hold one seed per sample: {n} classes, {len(vals)} seeds")
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or not 0 <= int(v) < 2**64:
            raise ValueError(f"seeds must be integers in 0..2**64-1, got {v!r}")
    return [int(v) for v in vals]


def _cuda_device_index(device: Any) -> int | None:
    """None for "cpu"; N for "cuda" (0) or "cuda:N". ValueError for another string, RuntimeError (saying
    why) when the CUDA backend is not compiled in or no usable GPU is present."""
    if not isinstance(device, str):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if device == "cpu":
        return None
    name, sep, idx = device.partition(":")
    if name != "cuda" or (sep and not idx.isdigit()):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if not _C.cuda_available():
        raise RuntimeError(f"device {device!r} is not available: {_C.cuda_unavailable_reason()}")
    return int(idx or 0)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Images float32 [N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C]: ``round((clamp(x, -1, 1) + 1) * 127.5)``
    in float32, rounding half to even (the semantics of ``robuq.diffusion.to_uint8``, without torch)."""
    x = np.clip(np.asarray(x, dtype=np.float32), np.float32(-1), np.float32(1))
    u = np.rint((x + np.float32(1)) * np.float32(127.5))
    return np.ascontiguousarray(np.clip(u, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1))


def _is_finite_real(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, numbers.Real) and math.isfinite(v)


def steps_spec(steps: int | str) -> str:
    """``steps`` of Engine.sample as a respacing spec: a positive int n -> "n"; a string ("250", "ddim25",
    "10,10,5") is checked and returned stripped. ValueError / TypeError otherwise."""
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer | str):
        raise TypeError(f"steps must be an int or a respacing string like 'ddim25', got {steps!r}")
    if not isinstance(steps, str):
        if steps < 1:
            raise ValueError(f"steps must be a positive number of sampling steps, got {int(steps)}")
        return str(int(steps))
    spec = steps.strip()
    if spec.lstrip("+-").isdigit() and int(spec) < 1:
        raise ValueError(f"steps must be a positive number of sampling steps, got {spec}")
    _C.space_timesteps(1000, spec)  # ValueError for a spec that is malformed or cannot be satisfied
    return spec


class Engine:
    """A DiT loaded from a ``.rq`` file (docs/rq-format.md) and run by the C++ engine.

    Args:
        path: the ``.rq`` file. It is memory-mapped read-only (read into memory if mapping fails, or
            when the environment variable ``ROBUQ_NO_MMAP=1`` is set) and fully validated: container,
            metadata schema, every tensor's dtype and shape, finite float values, valid weight codes
            and row sums.
        threads: worker threads for every call; None or 0 uses all available cores; more than 4 x the
            cores is clamped to that (``robuq._C.max_threads()``). Results do not depend on the thread count.
        max_memory: bytes of activations one call (a forward, or a sampling's forward) may use: an int or
            a string like "32G"; None uses ``ROBUQ_MAX_MEMORY`` or the default 16 GiB. A model whose
            single-sample forward is beyond the budget (memory, ``ROBUQ_MAX_MACS`` multiply-adds per sample,
            ``ROBUQ_MAX_TOKENS`` tokens per sample; docs/reliability.md, "Budget") is refused with
            FormatError; a batch beyond it with ValueError naming the largest batch that fits.
        device: "cpu" (the C++ engine) or "cuda" / "cuda:N" (the CUDA engine on GPU N: the same API and
            file; docs/cuda.md). ``robuq._C.cuda_available()`` says whether this build and machine can.

    Raises:
        FileNotFoundError (or another OSError): the file cannot be opened or read.
        robuq.FormatError: the file is not a valid ``.rq`` file; the message names the problem.
        ValueError: threads is negative, or device is not "cpu", "cuda" or "cuda:N".
        RuntimeError: device "cuda" without the CUDA backend in this build or without a usable GPU (the
            message says which).

    The kernel tier (reference, generic or avx2) is chosen per call from ``robuq._C.active_tier()``.
    ``forward`` calls on one Engine are serialised (they share a workspace sized for the batch);
    ``linear`` may run concurrently.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        threads: int | None = None,
        device: str = "cpu",
        max_memory: int | str | None = None,
    ):
        path = os.fspath(path)
        cuda_index = _cuda_device_index(device)
        if threads is None:
            threads = 0
        if not isinstance(threads, int | np.integer) or isinstance(threads, bool) or threads < 0:
            raise ValueError(f"threads must be None or an integer >= 0, got {threads!r}")
        memory = 0 if max_memory is None else parse_bytes(max_memory)
        if not os.path.exists(path):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        self._path = path
        self._device = "cpu" if cuda_index is None else f"cuda:{cuda_index}"
        if cuda_index is None:
            self._engine = _C.Engine(path, int(threads), float(memory))
            self._info = self._engine.info()
        else:  # the CUDA engine (docs/cuda.md); the info dict comes from the CPU loader (same validation)
            self._info = _C.Engine(path, 1, float(memory)).info()
            self._engine = _C.CudaEngine(path, cuda_index)
            self._info["threads"] = 1
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
    def budget(self) -> dict:
        """The limits this engine checks (docs/reliability.md, "Budget"): ``max_memory`` (bytes of activations
        per call), ``max_macs`` (multiply-adds per sample), ``max_tokens`` (per sample), ``max_threads``."""
        if not hasattr(self._engine, "budget"):
            return dict(_C.default_budget())
        return dict(self._engine.budget)

    def batch_limit(self, guided: bool = False) -> int:
        """The largest number of samples one ``sample`` call may take under ``max_memory`` (guidance doubles
        the forward batch)."""
        c = self._info["model_config"]
        keys = ("depth", "hidden_size", "patch_size", "num_heads", "mlp_ratio", "input_size", "in_channels")
        args = {k: c[k] for k in keys} | {"learn_sigma": c["learn_sigma"], "threads": max(1, self.threads)}
        limit = self.budget["max_memory"]
        one = _C.forward_cost(n=1, **args)["activation_bytes"]
        two = _C.forward_cost(n=2, **args)["activation_bytes"]
        each = max(two - one, 1.0)
        fit = int((limit - (one - each)) // each)
        return max(1, fit // 2 if guided else fit)

    @property
    def path(self) -> str:
        return self._path

    @property
    def device(self) -> str:
        """The device the engine runs on: "cpu", or "cuda:N" for the CUDA engine on GPU N."""
        return self._device

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
            ValueError: wrong dtype, shape, a label out of range, or a batch beyond the engine's max_memory.
            KeyboardInterrupt: Ctrl-C stops the forward after the current block.
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

    def profile(self, x: np.ndarray, t: Any, y: Any) -> dict[str, float]:
        """One forward (as :meth:`forward`) timed per part: seconds of ``linears`` (quantized GEMMs and their
        epilogues), ``hadamard_quantize`` (the quantized linears' Hadamard + per-token quantization, their
        share of wall time), ``attention``, ``elementwise`` (LayerNorm / modulate, gated residuals),
        ``float_linears`` (patch embedding, timestep MLP, final linear), ``other``, and ``total``.
        CPU engine only."""
        if not hasattr(self._engine, "profile"):
            raise NotImplementedError(f"profile() is not available on the {self._device} engine")
        self.forward(x, t, y)  # the argument checks of forward(), and a warm-up run
        x = _as_float32("x", x, 4, "[N, C, H, W]")
        return dict(self._engine.profile(x, _as_labels("t", t, x.shape[0]), _as_labels("y", y, x.shape[0])))

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

    @property
    def num_classes(self) -> int:
        """Class ids sample() accepts: 0..num_classes-1."""
        return int(self._info["model_config"]["num_classes"])

    @property
    def has_null_class(self) -> bool:
        """Whether the model has the null-class embedding classifier-free guidance needs."""
        return self._label_rows > self.num_classes

    def sample(
        self,
        classes: Any,
        steps: int | str = 250,
        cfg_scale: float = 4.0,
        seed: int = 0,
        sampler: str = "ddpm",
        eta: float = 0.0,
        cfg_mode: str | None = None,
        clip_denoised: bool | None = None,
        progress: bool | Callable[[int, int], Any] = False,
        output: str = "auto",
        seeds: Any = None,
        noise: Any = None,
    ) -> np.ndarray:
        """Class-conditional samples, the whole reverse process in C++ (the GIL is released).

        The same computation as ``robuq.diffusion.sample_classes`` on the PyTorch model (the reference;
        docs/training.md, "Sampler arithmetic"): x_T = ``robuq.rng.gaussian(seed, 0, [n, C, H, W])``, the
        noise of step i from key 1 + i; with ``cfg_scale != 1`` every model call runs [x; x] with labels
        [classes; null] and guides the eps channels as ``robuq.models.DiT.forward_with_cfg``.

        Args:
            classes: the class id of each sample: int or integer array-like [n], ids in 0..num_classes-1.
            steps: sampling steps: an int n (the 1000 training steps respaced to n, "n") or a respacing
                string: "250", "10,10,5" (sections) or "ddim25" (an even stride).
            cfg_scale: float, the classifier-free guidance scale; 1 disables guidance (one model call on
                n samples per step), otherwise 2n per step. Needs a model with the null class.
            seed: int in 0..2**64-1, the noise stream (the same seed gives identical output for any thread
                count).
            seeds: None, or one seed per sample (ints in 0..2**64-1), used instead of ``seed``: sample j
                draws its own streams ``gaussian(seeds[j], key, [1, C, H, W])`` and comes out bit-identical
                to ``sample([classes[j]], seed=seeds[j])`` whatever batch it is in (robuq-sample relies on
                this for results independent of batch size and process count).
            noise: None, or the starting noise x_T itself: float32 array-like [n, C, H, W] (NCHW; a CPU torch
                tensor works), e.g. DiT's ``z = torch.randn(n, 4, latent_size, latent_size)``. It replaces
                the draw from key 0; the noise a DDPM (or DDIM eta > 0) step adds still comes from ``seed``
                / ``seeds``. Values must be finite.
            sampler: "ddpm" (ancestral, learned variance) or "ddim".
            eta: float >= 0, DDIM's noise scale (0: deterministic); ignored by DDPM.
            cfg_mode: "dit" (guide the first min(3, C) channels, as official DiT) or "all" (every eps
                channel); None: the file's ``sampling.cfg_mode`` ("dit" when the file has none).
            clip_denoised: bool, clamp the predicted x0 to [-1, 1] at every step; None: the file's
                ``sampling.clip_denoised`` (without one: True for pixel models, False for latent ones).
            progress: True shows a tqdm bar over the steps; or a callable ``progress(done, total)`` called
                after each step (an exception it raises stops sampling and is re-raised here).
            output: "auto" (uint8 images for pixel models, float32 latents for latent models), "image"
                (uint8 images) or "latent" (the raw float32 x0, images in about [-1, 1] for pixel models).

        Returns:
            "image": uint8 [n, H, W, C], ``round((clamp(x0, -1, 1) + 1) * 127.5)`` (half to even);
            "latent": float32 [n, C, H, W], x0 as sampled (for latent models: the latents the VAE
            decodes, still scaled by 0.18215).

        Raises:
            ValueError / TypeError: a bad argument (class id out of range, zero steps, unknown sampler, a
                guidance scale without a null class, ...), before any model call.
            KeyboardInterrupt: Ctrl-C stops sampling after the current block of the current step.
            NonFiniteError: the model's output or the sample stopped being finite (the message names the
                step); nothing is returned.
        """
        if isinstance(classes, str) or (
            isinstance(classes, list | tuple) and any(isinstance(c, str) for c in classes)
        ):
            from .labels import resolve_class  # names ('golden retriever') or id strings, as robuq-infer

            names = [classes] if isinstance(classes, str) else list(classes)
            classes = [resolve_class(c, self.num_classes) for c in names]
        a = np.asarray(classes)
        if a.size == 0:
            raise ValueError("no classes given: pass at least one class id")
        if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"classes must be integer class ids, got dtype {a.dtype}")
        if a.ndim > 1:
            raise ValueError(f"classes must be an int or a 1-D list of ints, got shape {list(a.shape)}")
        a = a.reshape(-1)
        k = self.num_classes
        bad = a[(a < 0) | (a >= k)]
        if bad.size:
            raise ValueError(f"class id {int(bad[0])} is out of range 0..{k - 1}")
        spec = steps_spec(steps)
        if not _is_finite_real(cfg_scale):
            raise ValueError(f"cfg_scale must be a finite number, got {cfg_scale!r}")
        if float(cfg_scale) != 1.0 and not self.has_null_class:
            raise ValueError(
                "this model has no null-class embedding (trained without class dropout), so it cannot use "
                "classifier-free guidance: pass cfg_scale=1"
            )
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**64:
            raise ValueError(f"seed must be an integer in 0..2**64-1, got {seed!r}")
        seed_list = None
        if seeds is not None:
            seed_list = _as_seeds(seeds, a.shape[0])
        x_T = None
        if noise is not None:
            x_T = np.asarray(noise)
            c = self._info["model_config"]
            want = [a.shape[0], c["in_channels"], c["input_size"], c["input_size"]]
            if list(x_T.shape) != want:
                raise ValueError(f"noise must have shape {want} ([n, C, H, W]), got {list(x_T.shape)}")
            if x_T.dtype != np.float32:
                if not np.issubdtype(x_T.dtype, np.floating):
                    raise ValueError(f"noise must be a float array, got dtype {x_T.dtype}")
                x_T = x_T.astype(np.float32)
            if not np.isfinite(x_T).all():
                raise ValueError("noise holds non-finite values")
            x_T = np.ascontiguousarray(x_T)
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)}")
        if not (_is_finite_real(eta) and eta >= 0):
            raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
        if cfg_mode is not None and cfg_mode not in CFG_MODES:
            raise ValueError(f"unknown cfg_mode {cfg_mode!r}; use one of {', '.join(CFG_MODES)} (or None)")
        if clip_denoised is not None and not isinstance(clip_denoised, bool | np.bool_):
            raise ValueError(f"clip_denoised must be True, False or None, got {clip_denoised!r}")
        if output not in OUTPUTS:
            raise ValueError(f"unknown output {output!r}; use one of {', '.join(OUTPUTS)}")

        bar = None
        callback = None
        if callable(progress):
            callback = progress
        elif progress:
            from tqdm.auto import tqdm

            total = len(_C.space_timesteps(1000, spec))
            bar = tqdm(total=total, desc=f"{sampler} {spec}", unit="step")

            def callback(done: int, total: int) -> None:
                bar.update(done - bar.n)

        try:
            x0 = self._engine.sample(
                np.ascontiguousarray(a, dtype=np.int64),
                spec,
                float(cfg_scale),
                int(seed),
                sampler,
                float(eta),
                cfg_mode,
                None if clip_denoised is None else bool(clip_denoised),
                callback,
                seed_list,
                x_T,
            )
        finally:
            if bar is not None:
                bar.close()
        if not np.isfinite(x0).all():  # the CPU engine checks every step; this covers every engine
            raise NonFiniteError("the final sample is not finite: the model's values overflow float32")
        if output == "auto":
            output = "latent" if self._info["model_config"]["space"] == "latent" else "image"
        return to_uint8(x0) if output == "image" else x0

    def __repr__(self) -> str:
        c = self._info["model_config"]
        return (
            f"Engine({self._path!r}, depth={c['depth']}, hidden={c['hidden_size']}, "
            f"quantized_layers={len(self._info['layers'])}, threads={self.threads})"
        )

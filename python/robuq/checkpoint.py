"""The one checkpoint reader: read safely, interpret the layout, infer the config, check the tensors.

Every command that opens a PyTorch checkpoint goes through here (robuq-train's --init / --resume,
robuq-export, robuq-parity, robuq-eval, robuq.ship): one allow-list, one config inference, one
``load_model``. Failures raise CheckpointError with a message naming the file and the problem; each CLI
prints it as its own error line.

Accepted layouts:
  * robuq (python/robuq/train.py): {"model", "ema", "opt", "step", "args": dict, "model_config":
    DiTConfig.to_dict(), "quant_config": QuantConfig.to_dict() or None, "rng"}; the model is quantized
    iff quant_config is set, and its state dict is that of quantize_model(create(...), config);
  * official DiT train.py: {"model", "ema", "opt", "args": argparse.Namespace};
  * a plain official state dict (the released DiT-XL-2-*.pt files).
For the official layouts the model config is inferred from the tensor shapes.

Files are read with torch.load(weights_only=True): only tensors, containers, numbers, strings,
argparse.Namespace and numpy arrays (rng states) can be built; anything else is refused as untrusted.
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import re
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from robuq.models import CONFIGS, DiT, DiTConfig
from robuq.quant import QuantConfig, quantize_model
from robuq.quant.formats import WEIGHT_FORMATS

#: the "format" entry of robuq-train's checkpoints
CHECKPOINT_FORMAT = "robuq-train-checkpoint"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not describe a valid DiT; str(e) says which and why."""


#: heads of the official configurations, by hidden size (--num-heads overrides)
OFFICIAL_HEADS = {384: 6, 768: 12, 1024: 16, 1152: 16}
#: keys the official layouts' config is inferred from
INFER_KEYS = (
    "x_embedder.proj.weight",
    "pos_embed",
    "y_embedder.embedding_table.weight",
    "final_layer.linear.weight",
    "blocks.0.mlp.fc1.weight",
)


def _safe_globals() -> list:
    """argparse.Namespace (official train.py args) and what numpy arrays need (rng states): data only."""
    reconstruct = np.array(0).__reduce__()[0]  # numpy's _reconstruct, wherever this numpy keeps it
    dtypes = {type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDG"}
    return [argparse.Namespace, reconstruct, np.ndarray, np.dtype, *dtypes]


@dataclass
class Checkpoint:
    """A checked checkpoint: the state dict to export (float tensors, keys and shapes as the model's)."""

    state: dict[str, torch.Tensor]
    config: DiTConfig
    quant: QuantConfig | None
    layout: str  # "robuq", "official-train" or "official"
    source: str  # for the .rq metadata


def _names(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def read(path: str | os.PathLike) -> object:
    """torch.load(weights_only=True) on the CPU, after checking the file looks like a PyTorch checkpoint
    (a zip archive or a legacy pickle). Only tensors, containers, numbers, strings, argparse.Namespace (DiT
    train.py's "args") and numpy arrays (rng states) can be built; anything else is refused as untrusted."""
    path = os.fspath(path)
    if not path or not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path!r} is a directory, not a checkpoint file")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} is not a regular file")
    try:
        with open(path, "rb") as f:
            magic = f.read(8)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    is_zip = magic[:4] == b"PK\x03\x04"
    if not is_zip and magic[:1] != b"\x80":
        hint = ": it looks like a safetensors / .rq file" if _is_safetensors(path) else ""
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint (neither a zip archive nor a pickle){hint}"
        )
    try:
        with torch.serialization.safe_globals(_safe_globals()), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Detected pickle protocol 4 ..."
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        msg = str(e)
        detail = msg.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()[0] if msg else ""
        m = re.search(r"Unsupported global: GLOBAL (\S+)", msg) or re.search(r"got <class '([^']+)'>", msg)
        if m:
            raise CheckpointError(
                f"refusing to load {path}: unsafe/untrusted checkpoint: it contains a pickled object "
                f"({m.group(1)}) that weights_only loading refuses; no code from a checkpoint is ever run"
            ) from None
        if "Unsupported operand" in msg:
            raise CheckpointError(
                f"{path} is not a torch.save checkpoint: a pickle the weights-only loader refuses "
                f"({detail}); it was not unpickled"
            ) from None
        if "Weights only load failed" in msg:
            raise CheckpointError(
                f"refusing to load {path}: unsafe/untrusted checkpoint refused by weights_only loading "
                f"({detail})"
            ) from None
        raise CheckpointError(f"{path} is not a readable checkpoint: {msg.splitlines()[0]}") from None
    except Exception as e:  # corrupt archives, truncated files, foreign pickles
        first = (str(e).splitlines() or [""])[0]
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: {first})") from None


def _is_safetensors(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False  # read() names the problem
    n = int.from_bytes(head[:8], "little")
    return len(head) == 9 and head[8:9] == b"{" and n < os.path.getsize(path)


def _is_state_dict(obj: dict) -> bool:
    return any(isinstance(k, str) and (k.startswith("blocks.") or k in INFER_KEYS) for k in obj)


#: the dtypes a checkpoint tensor may have (float8 and the like are refused: nothing here reads them)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
#: the most blocks a model may have (the .rq schema's limit on depth)
MAX_DEPTH = 4096


def _check_tensor(k: str, v: torch.Tensor, what: str) -> None:
    """A dense float tensor whose storage holds every element of its shape: sparse, quantized and other
    layouts, float8 and non-float dtypes, and views whose storage is smaller than their shape (stride-0 or
    overlapping tricks that make a few bytes read as gigabytes) are refused before anything touches them."""
    if v.layout != torch.strided or v.is_quantized or v.is_sparse or v.device.type != "cpu":
        raise CheckpointError(
            f"{what}: tensor {k} has layout {v.layout} on {v.device.type}, expected a dense CPU tensor"
        )
    if v.dtype not in FLOAT_DTYPES:
        raise CheckpointError(
            f"{what}: tensor {k} has dtype {v.dtype}, expected float32, float16, bfloat16 or float64"
        )
    if v.numel() == 0:
        return
    # Distinct elements (dims sorted by stride, each stride at least the extent of the smaller ones) that all
    # lie in the storage: then the storage really holds numel elements.
    dims = sorted((st, n) for st, n in zip(v.stride(), v.shape, strict=True) if n > 1)
    extent, reach, overlap = 1, 1, False
    for st, n in dims:
        overlap = overlap or st < extent
        extent = st * n
        reach += (n - 1) * st
    have = v.untyped_storage().nbytes() // v.element_size() - v.storage_offset()
    if overlap or reach > have:
        raise CheckpointError(
            f"{what}: tensor {k} has shape {list(v.shape)} ({v.numel() * v.element_size()} bytes) but its "
            f"storage holds {max(have, 0) * v.element_size()} bytes (strides {list(v.stride())}): a stride-0 "
            "or overlapping view is refused"
        )


def _block_indices(keys) -> set[int]:
    return {int(m.group(1)) for k in keys if (m := re.match(r"blocks\.(\d+)\.", k))}


def _check_blocks(sd: dict, depth: int | None, what: str) -> int:
    """The block indices of `sd` are exactly 0..depth-1 (depth: the config's, or inferred as their count),
    checked arithmetically before any model is built; returns depth."""
    idx = _block_indices(sd)
    if depth is None:
        depth = len(idx)
    if depth > MAX_DEPTH or depth < 1:
        raise CheckpointError(f"{what}: depth {depth} is out of range 1..{MAX_DEPTH}")
    if idx != set(range(depth)):
        extra = sorted(i for i in idx if i >= depth)
        missing = sorted(set(range(depth)) - idx)
        parts = [f"unexpected blocks {', '.join(map(str, extra[:5]))}"] if extra else []
        parts += [f"missing blocks {', '.join(map(str, missing[:5]))}"] if missing else []
        raise CheckpointError(
            f"{what}: the state dict's blocks do not match depth {depth} ({'; '.join(parts)}; "
            f"{len(idx)} distinct block indices)"
        )
    return depth


def _check_state_dict(sd: object, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(sd, dict):
        raise CheckpointError(f"{what} is a {type(sd).__name__}, not a state dict")
    for k, v in sd.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{what}: entry {k!r} is a {type(v).__name__}, not a tensor")
        _check_tensor(k, v, what)
    return sd


def infer_config(
    sd: dict[str, torch.Tensor],
    num_heads: int | None = None,
    model_name: str | None = None,
    class_dropout_prob: float = 0.1,
) -> DiTConfig:
    """The DiTConfig of an official state dict, from its shapes (see the module docstring).

    num_heads: given, else the registry's for `model_name` (DiT train.py's --model) when its hidden size
    matches, else the official configuration's of the same hidden size. The label table has a null-class
    row (classifier-free guidance) iff class_dropout_prob > 0, as in DiT's LabelEmbedder: official
    checkpoints (0.1) have num_classes + 1 rows."""
    missing = [k for k in INFER_KEYS if k not in sd]
    if missing:
        raise CheckpointError(f"missing keys: {', '.join(missing)} (needed to infer the model config)")

    def shape_error(key, expected):
        return CheckpointError(f"tensor {key}: expected shape {expected}, got {list(sd[key].shape)}")

    w = sd["x_embedder.proj.weight"]
    if w.ndim != 4 or w.shape[2] != w.shape[3]:
        raise shape_error("x_embedder.proj.weight", "[D, C, p, p]")
    hidden, in_ch, patch = int(w.shape[0]), int(w.shape[1]), int(w.shape[2])
    depth = _check_blocks(sd, None, "state dict")
    pos = sd["pos_embed"]
    tokens = int(pos.shape[1]) if pos.ndim == 3 else -1
    grid = math.isqrt(max(tokens, 0))
    if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != hidden or grid * grid != tokens or grid == 0:
        raise shape_error("pos_embed", f"[1, T, {hidden}] with T a square")
    table = sd["y_embedder.embedding_table.weight"]
    if table.ndim != 2 or table.shape[1] != hidden or table.shape[0] < 2:
        raise shape_error("y_embedder.embedding_table.weight", f"[num_classes + 1, {hidden}]")
    out = sd["final_layer.linear.weight"]
    if out.ndim != 2 or out.shape[0] not in (patch * patch * in_ch, patch * patch * 2 * in_ch):
        raise shape_error(
            "final_layer.linear.weight", f"[{patch * patch * 2 * in_ch} or {patch * patch * in_ch}, D]"
        )
    fc1 = sd["blocks.0.mlp.fc1.weight"]
    if fc1.ndim != 2 or fc1.shape[1] != hidden:
        raise shape_error("blocks.0.mlp.fc1.weight", f"[mlp_ratio * {hidden}, {hidden}]")
    if num_heads is None and model_name in CONFIGS and CONFIGS[model_name]["hidden_size"] == hidden:
        num_heads = CONFIGS[model_name]["num_heads"]
    if num_heads is None:
        num_heads = OFFICIAL_HEADS.get(hidden)
        if num_heads is None:
            raise CheckpointError(
                f"cannot infer num_heads for hidden size {hidden} (official sizes: "
                f"{', '.join(f'{d}->{h}' for d, h in OFFICIAL_HEADS.items())}); pass --num-heads"
            )
    try:
        return DiTConfig(
            depth=depth,
            hidden_size=hidden,
            patch_size=patch,
            num_heads=num_heads,
            mlp_ratio=fc1.shape[0] / hidden,
            input_size=grid * patch,
            in_channels=in_ch,
            num_classes=int(table.shape[0]) - (1 if class_dropout_prob > 0 else 0),
            learn_sigma=out.shape[0] == patch * patch * 2 * in_ch,
            class_dropout_prob=class_dropout_prob,
        )
    except ValueError as e:
        raise CheckpointError(f"inferred model config is invalid: {e}") from None


def expected_shapes(config: DiTConfig, quant: QuantConfig | None) -> dict[str, tuple[int, ...]]:
    """State-dict key -> shape of the (quantized) model, in state-dict order. Builds on the meta device."""
    try:
        with torch.device("meta"):
            model = DiT(config)
            if quant is not None:
                quantize_model(model, quant, init_lowrank=False)
    except ValueError as e:
        raise CheckpointError(f"quant_config does not fit the model: {e}") from None
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_quant_config(quant: QuantConfig) -> None:
    for name, lq in quant.layers.items():
        if lq.weight not in WEIGHT_FORMATS:
            raise CheckpointError(
                f"layer {name}: unsupported weight format {lq.weight!r} "
                f"(the .rq format stores {', '.join(WEIGHT_FORMATS)})"
            )


def _check_main_shapes(sd: dict[str, torch.Tensor], config: DiTConfig) -> None:
    """The config's sizes against the tensors that carry them, by arithmetic (so a config of absurd sizes
    never reaches a model build): every size must be backed by tensor data the file really holds."""
    D, p, C = config.hidden_size, config.patch_size, config.in_channels
    T = (config.input_size // p) ** 2
    cout = 2 * C if config.learn_sigma else C
    want = {
        "x_embedder.proj.weight": (D, C, p, p),
        "pos_embed": (1, T, D),
        "final_layer.linear.bias": (p * p * cout,),
        "blocks.0.mlp.fc1.bias": (int(D * config.mlp_ratio),),
    }
    for k, shape in want.items():
        if k in sd and tuple(sd[k].shape) != shape:
            raise CheckpointError(
                f"shape mismatch: tensor {k}: expected shape {list(shape)} (from the model config), "
                f"got {list(sd[k].shape)}"
            )


def validate(sd: dict[str, torch.Tensor], config: DiTConfig, quant: QuantConfig | None) -> None:
    """Keys, shapes and finiteness of `sd` against the model `config` (+ `quant`) describes. The tensors,
    the block indices and the main shapes are checked before the model's shapes are built."""
    for k, v in sd.items():
        _check_tensor(k, v, "state dict")
    _check_blocks(sd, config.depth, "state dict")
    _check_main_shapes(sd, config)
    if quant is not None:
        check_quant_config(quant)
    expected = expected_shapes(config, quant)
    missing, extra = set(expected) - set(sd), set(sd) - set(expected)
    if missing or extra:
        parts = [f"missing keys: {_names(missing)}"] if missing else []
        parts += [f"unexpected keys: {_names(extra)}"] if extra else []
        raise CheckpointError("state dict does not match the model config: " + "; ".join(parts))
    bad = [
        f"tensor {k}: expected shape {list(shape)}, got {list(sd[k].shape)}"
        for k, shape in expected.items()
        if tuple(sd[k].shape) != shape
    ]
    if bad:
        raise CheckpointError(
            "shape mismatch: " + "; ".join(bad[:8]) + (f" (and {len(bad) - 8} more)" if len(bad) > 8 else "")
        )
    for k in expected:
        t = sd[k]
        if not torch.isfinite(t).all():
            nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            raise CheckpointError(f"tensor {k} has non-finite values ({nan} NaN, {inf} inf)")


def _read_safetensors(path: str) -> dict[str, torch.Tensor]:
    """A safetensors file as a state dict (an official-layout DiT); a .rq file is named as such."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") == "robuq":
                raise CheckpointError(f"{path} is a .rq file (an exported model), not a checkpoint")
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator
    except CheckpointError:
        raise
    except (SafetensorError, OSError, ValueError) as e:
        first = (str(e).splitlines() or [""])[0]
        raise CheckpointError(f"{path} is not a readable safetensors file ({first})") from None


def load(path: str | os.PathLike, *, ema: bool = True, num_heads: int | None = None) -> Checkpoint:
    """Read, interpret and validate a checkpoint: robuq, official train.py, a plain official state dict (.pt
    or .safetensors), or diffusers' layout (a DiTPipeline folder, its transformer/ folder or weights file)."""
    from robuq.diffusers_layout import DiffusersLayoutError, is_diffusers_path, read_diffusers

    name = os.path.basename(os.fspath(path))
    if is_diffusers_path(path):
        if num_heads is not None:
            raise CheckpointError(
                "--num-heads is not used with a diffusers folder (its config.json holds them)"
            )
        try:
            sd, config, source = read_diffusers(path)
        except DiffusersLayoutError as e:
            raise CheckpointError(str(e)) from None
        validate(sd, config, None)
        return Checkpoint(state=sd, config=config, quant=None, layout="diffusers", source=source)
    if os.path.isfile(path) and _is_safetensors(os.fspath(path)):
        sd = _check_state_dict(_read_safetensors(os.fspath(path)), str(path))
        if not _is_state_dict(sd):
            raise CheckpointError(f"{path} is a safetensors file without DiT weights (keys: {_names(sd, 8)})")
        config = infer_config(sd, num_heads)
        validate(sd, config, None)
        return Checkpoint(sd, config, None, "official", f"official DiT state dict {name} (safetensors)")
    obj = read(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict or a state dict")
    if "model" in obj or "ema" in obj:
        key = "ema" if ema and obj.get("ema") is not None else "model"
        if obj.get(key) is None:
            raise CheckpointError(f"{path} has no {key!r} weights (keys: {_names(map(str, obj))})")
        sd = _check_state_dict(obj[key], f"{path}[{key!r}]")
        which = (
            "EMA weights" if key == "ema" else ("raw weights" if not ema else "raw weights (no EMA saved)")
        )
        step = obj.get("step")
        step_text = f" step {step}" if isinstance(step, int) else ""
        if "model_config" in obj:
            layout = "robuq"
            try:
                config = DiTConfig.from_dict(dict(obj["model_config"]))
                qd = obj.get("quant_config")
                quant = None if qd is None else QuantConfig.from_dict(qd)
            except (TypeError, ValueError) as e:
                raise CheckpointError(f"{path}: invalid model_config / quant_config: {e}") from None
            if num_heads is not None and num_heads != config.num_heads:
                raise CheckpointError(
                    f"--num-heads {num_heads} contradicts the checkpoint's model_config ({config.num_heads})"
                )
            source = f"robuq checkpoint {name}{step_text}, {which}"
        else:
            layout = "official-train"
            args = obj.get("args")
            model_name = getattr(args, "model", None) if isinstance(args, argparse.Namespace) else None
            config, quant = infer_config(sd, num_heads, model_name), None
            source = f"official DiT training checkpoint {name}{step_text}, {which}"
    elif _is_state_dict(obj):
        layout = "official"
        sd = _check_state_dict(obj, str(path))
        config, quant = infer_config(sd, num_heads), None
        source = f"official DiT state dict {name}"
    else:
        keys = _names(map(str, obj), 8)
        raise CheckpointError(
            f"{path} is not a DiT checkpoint: a dict with keys [{keys}] "
            "and no 'model' / 'ema' entry or DiT weights"
        )
    validate(sd, config, quant)
    return Checkpoint(state=sd, config=config, quant=quant, layout=layout, source=source)


def load_model(path: str | os.PathLike, weights: str = "ema") -> DiT:
    """A trained model from one of robuq-train's checkpoints, in eval mode on the CPU: the DiT of
    "model_config", quantized with "quant_config" when that is set (low-rank factors loaded, not
    re-initialised), holding the "ema" (default) or "model" weights."""
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    ck = read(path)
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{os.fspath(path)} is not a robuq-train checkpoint")
    model = DiT(DiTConfig.from_dict(dict(ck["model_config"])))
    if ck.get("quant_config") is not None:
        quantize_model(model, QuantConfig.from_dict(ck["quant_config"]), init_lowrank=False)
    model.load_state_dict(ck[weights], strict=True)
    return model.eval()

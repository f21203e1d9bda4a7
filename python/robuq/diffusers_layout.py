"""DiT weights in diffusers' layout, read as the official DiT state dict.

diffusers stores DiT as a pipeline folder (``model_index.json``; ``transformer/`` with ``config.json`` of a
``DiTTransformer2DModel``, or ``Transformer2DModel`` with ``norm_type: ada_norm_zero`` in older pipelines,
and ``diffusion_pytorch_model.safetensors``, possibly sharded with an ``.index.json``; ``vae/``;
``scheduler/``). ``read_diffusers(path)`` accepts the pipeline folder, its ``transformer/`` folder or the
weights file (next to its ``config.json``) and returns the official names (docs/dit.md lists them):

============================================================  =====================================
diffusers                                                     official DiT
============================================================  =====================================
pos_embed.proj.{weight,bias}                                  x_embedder.proj.*
(none: diffusers computes the table)                          pos_embed (the fixed 2-D sin-cos table)
transformer_blocks.{i}.norm1.emb.timestep_embedder.linear_1   t_embedder.mlp.0 (one copy per block in
transformer_blocks.{i}.norm1.emb.timestep_embedder.linear_2   t_embedder.mlp.2  diffusers: all must be
transformer_blocks.{i}.norm1.emb.class_embedder.embedding_    y_embedder.embedding_table  equal; stored once)
table
transformer_blocks.{i}.norm1.linear                           blocks.{i}.adaLN_modulation.1 (same chunk
                                                              order: shift, scale, gate for msa, mlp)
transformer_blocks.{i}.attn1.to_q / to_k / to_v               blocks.{i}.attn.qkv (rows q, k, v)
transformer_blocks.{i}.attn1.to_out.0                         blocks.{i}.attn.proj
transformer_blocks.{i}.ff.net.0.proj / ff.net.2               blocks.{i}.mlp.fc1 / fc2
proj_out_1 / proj_out_2                                       final_layer.adaLN_modulation.1 / .linear
============================================================  =====================================

The model then runs with DiT's semantics, which differ from diffusers' ``DiTTransformer2DModel`` in two
places (docs/dit.md, "diffusers"): the sinusoidal timestep features (DiT: frequencies exp(-ln(10^4) i / half),
diffusers' ``Timesteps(downscale_freq_shift=1)``: exp(-ln(10^4) i / (half - 1))) and the eps of the LayerNorm
before the MLP (DiT 1e-6, diffusers 1e-5). Weights converted from DiT were trained with DiT's semantics.

What DiT cannot express is refused with ``DiffusersLayoutError`` naming the setting (another norm type or
activation, cross-attention, affine LayerNorms, no attention bias, missing or extra tensors, per-block
embedder copies that differ).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .models import DiTConfig, get_2d_sincos_pos_embed

__all__ = ["DiffusersLayoutError", "find_transformer", "is_diffusers_path", "read_diffusers"]

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
INDEX_FILE = "diffusion_pytorch_model.safetensors.index.json"
CLASS_NAMES = ("DiTTransformer2DModel", "Transformer2DModel")
#: DiT's class_dropout_prob when the class table has the extra "null" row (classifier-free guidance)
DIT_CLASS_DROPOUT = 0.1


class DiffusersLayoutError(ValueError):
    """A diffusers folder or file that cannot be read as a DiT (message names the problem)."""


def _config_json(folder: Path) -> dict | None:
    f = folder / "config.json"
    if not f.is_file():
        return None
    try:
        d = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DiffusersLayoutError(f"{f} is not readable JSON ({e})") from None
    return d if isinstance(d, dict) else None


def find_transformer(path: str | os.PathLike) -> Path | None:
    """The ``transformer/`` folder a path means (pipeline folder, the folder itself, or a weights file in it);
    None when the path is not in diffusers' layout."""
    p = Path(path)
    if p.is_file():
        p = p.parent if p.name in WEIGHT_FILES or p.name == INDEX_FILE else None
        if p is None:
            return None
    if not p.is_dir():
        return None
    if (p / "model_index.json").is_file() and (p / "transformer").is_dir():
        return p / "transformer"
    cfg = _config_json(p)
    if cfg is not None and cfg.get("_class_name") in CLASS_NAMES:
        return p
    return None


def is_diffusers_path(path: str | os.PathLike) -> bool:
    return find_transformer(path) is not None


def _load_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    def load_st(f: Path) -> dict[str, torch.Tensor]:
        try:
            return load_file(str(f), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise DiffusersLayoutError(f"{f} is not a readable safetensors file ({e})") from None

    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise DiffusersLayoutError(f"{index} is not a weights index ({e})") from None
        sd: dict[str, torch.Tensor] = {}
        for s in shards:
            if not isinstance(s, str) or "/" in s or "\\" in s or s.startswith("."):
                raise DiffusersLayoutError(f"{index} names a shard outside its folder: {s!r}")
            sd.update(load_st(folder / s))
        return sd
    if (folder / WEIGHT_FILES[0]).is_file():
        return load_st(folder / WEIGHT_FILES[0])
    if (folder / WEIGHT_FILES[1]).is_file():
        from robuq.checkpoint import CheckpointError, read  # torch.load(weights_only=True) with its checks

        try:
            obj = read(folder / WEIGHT_FILES[1])
        except CheckpointError as e:
            raise DiffusersLayoutError(str(e)) from None
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise DiffusersLayoutError(f"{folder / WEIGHT_FILES[1]} is not a state dict of tensors")
        return obj
    raise DiffusersLayoutError(
        f"{folder} has no weights ({WEIGHT_FILES[0]}, {INDEX_FILE} or {WEIGHT_FILES[1]})"
    )


def _config(cfg: dict, folder: Path, sd: dict[str, torch.Tensor]) -> DiTConfig:
    where = folder / "config.json"

    def need(key, ok, text):
        v = cfg.get(key)
        if not ok(v):
            raise DiffusersLayoutError(f"{where}: {key} = {v!r}; DiT needs {text}")
        return v

    need("norm_type", lambda v: v == "ada_norm_zero", "'ada_norm_zero' (adaLN-Zero blocks)")
    need("activation_fn", lambda v: v in (None, "gelu-approximate"), "'gelu-approximate' (tanh GELU)")
    need("attention_bias", lambda v: v in (None, True), "true (biases on q, k, v)")
    need("norm_elementwise_affine", lambda v: v in (None, False), "false (LayerNorms without affine)")
    need("cross_attention_dim", lambda v: v is None, "none (DiT has no cross-attention)")
    need("num_vector_embeds", lambda v: v is None, "none (continuous inputs)")
    heads = need("num_attention_heads", lambda v: isinstance(v, int) and v > 0, "a positive integer")
    head_dim = need("attention_head_dim", lambda v: isinstance(v, int) and v > 0, "a positive integer")
    depth = need("num_layers", lambda v: isinstance(v, int) and v > 0, "a positive integer")
    c = need("in_channels", lambda v: isinstance(v, int) and v > 0, "a positive integer")
    p = need("patch_size", lambda v: isinstance(v, int) and v > 0, "a positive integer")
    size = need("sample_size", lambda v: isinstance(v, int) and v > 0, "one integer (square latents)")
    k = need("num_embeds_ada_norm", lambda v: isinstance(v, int) and v > 0, "the number of classes")
    out = cfg.get("out_channels") or c
    if out not in (c, 2 * c):
        raise DiffusersLayoutError(
            f"{where}: out_channels {out} for in_channels {c}; DiT predicts eps (C) or eps and variance (2C)"
        )
    d = heads * head_dim
    table = sd.get("transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight")
    fc1 = sd.get("transformer_blocks.0.ff.net.0.proj.weight")
    if table is None or fc1 is None:
        raise DiffusersLayoutError(f"{folder}: the weights lack block 0's class table or MLP")
    rows = int(table.shape[0])
    if rows not in (k, k + 1):
        raise DiffusersLayoutError(f"{folder}: class table has {rows} rows for num_embeds_ada_norm {k}")
    try:
        return DiTConfig(
            depth=depth,
            hidden_size=d,
            patch_size=p,
            num_heads=heads,
            mlp_ratio=int(fc1.shape[0]) / d,
            input_size=size,
            in_channels=c,
            num_classes=k,
            learn_sigma=out == 2 * c,
            class_dropout_prob=DIT_CLASS_DROPOUT if rows == k + 1 else 0.0,
        )
    except ValueError as e:
        raise DiffusersLayoutError(f"{where}: {e}") from None


def convert_state_dict(sd: dict[str, torch.Tensor], config: DiTConfig) -> dict[str, torch.Tensor]:
    """diffusers names -> official DiT names (module docstring); every diffusers tensor must be used."""
    src = dict(sd)
    out: dict[str, torch.Tensor] = {}

    def take(name: str) -> torch.Tensor:
        if name not in src:
            raise DiffusersLayoutError(f"the diffusers weights lack {name}")
        v = src.pop(name)
        if not v.is_floating_point():
            raise DiffusersLayoutError(f"tensor {name} has dtype {v.dtype}, expected floating point")
        return v.float()

    def move(dst: str, name: str) -> None:
        for suffix in (".weight", ".bias"):
            out[dst + suffix] = take(name + suffix)

    move("x_embedder.proj", "pos_embed.proj")
    pos = get_2d_sincos_pos_embed(config.hidden_size, config.grid_size)
    out["pos_embed"] = torch.from_numpy(pos).float().unsqueeze(0)
    shared = {
        "t_embedder.mlp.0": "norm1.emb.timestep_embedder.linear_1",
        "t_embedder.mlp.2": "norm1.emb.timestep_embedder.linear_2",
    }
    for i in range(config.depth):
        b = f"transformer_blocks.{i}."
        for dst, name in shared.items():
            for suffix in (".weight", ".bias"):
                v = take(b + name + suffix)
                if i == 0:
                    out[dst + suffix] = v
                elif v.shape != out[dst + suffix].shape or not torch.equal(v, out[dst + suffix]):
                    raise DiffusersLayoutError(
                        f"{b + name + suffix} differs from block 0's copy: DiT has one timestep embedder"
                    )
        v = take(b + "norm1.emb.class_embedder.embedding_table.weight")
        if i == 0:
            out["y_embedder.embedding_table.weight"] = v
        elif v.shape != out["y_embedder.embedding_table.weight"].shape or not torch.equal(
            v, out["y_embedder.embedding_table.weight"]
        ):
            raise DiffusersLayoutError(
                f"{b}norm1.emb.class_embedder differs from block 0's copy: DiT has one class embedder"
            )
        o = f"blocks.{i}."
        move(o + "adaLN_modulation.1", b + "norm1.linear")
        for suffix in (".weight", ".bias"):
            q, k, v = (take(f"{b}attn1.to_{n}{suffix}") for n in "qkv")
            if not q.shape == k.shape == v.shape:
                raise DiffusersLayoutError(f"{b}attn1: q, k and v have different shapes")
            out[o + "attn.qkv" + suffix] = torch.cat([q, k, v], 0)
        move(o + "attn.proj", b + "attn1.to_out.0")
        move(o + "mlp.fc1", b + "ff.net.0.proj")
        move(o + "mlp.fc2", b + "ff.net.2")
    move("final_layer.adaLN_modulation.1", "proj_out_1")
    move("final_layer.linear", "proj_out_2")
    if src:
        names = sorted(src)
        more = f" and {len(names) - 6} more" if len(names) > 6 else ""
        raise DiffusersLayoutError(
            f"the diffusers weights hold tensors DiT has no place for: {', '.join(names[:6])}{more}"
        )
    return out


def read_diffusers(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], DiTConfig, str]:
    """(official state dict, DiTConfig, description) of a diffusers pipeline folder, its transformer/ folder
    or weights file. DiffusersLayoutError names what is wrong; the shapes are checked by the caller against
    the config (robuq.checkpoint.validate / DiT.load_state_dict)."""
    folder = find_transformer(path)
    if folder is None:
        raise DiffusersLayoutError(f"{path} is not a diffusers DiT folder (no model_index.json, config.json)")
    cfg = _config_json(folder)
    if cfg is None:
        raise DiffusersLayoutError(f"{folder} has no config.json")
    if cfg.get("_class_name") not in CLASS_NAMES:
        raise DiffusersLayoutError(
            f"{folder / 'config.json'} describes a {cfg.get('_class_name')!r}, not a DiT "
            f"({' or '.join(CLASS_NAMES)})"
        )
    sd = _load_weights(folder)
    config = _config(cfg, folder, sd)
    state = convert_state_dict(sd, config)
    return state, config, f"diffusers {cfg['_class_name']} {folder}"

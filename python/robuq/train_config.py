"""robuq-train's configuration: the checkpoint to start from (--init), the quantization config of --bits
/ --act-bits / --clip / --hadamard / --rank / --quant-config, the checks of the options, and the options of
a resumed run (docs/training.md)."""

from __future__ import annotations

import argparse
import json
import os
import re

from . import ampn
from .checkpoint import CheckpointError, infer_config, load, read
from .cli import UsageError
from .cli_paths import output_path_problem
from .models import DiT
from .quant import QuantConfig, preset

# Options a resumed run may change; every other option is taken from the checkpoint's "args".
RESUME_OVERRIDABLE = (
    "resume",
    "steps",
    "out",
    "log_every",
    "ckpt_every",
    "progress",
    "device",
    "debug_dump_weights",
)
MODEL_OVERRIDES = ("depth", "hidden_size", "num_heads", "input_size")


def load_checkpoint(path: str):
    """robuq.checkpoint.read (torch.load with weights_only=True and one allow-list), its refusals raised as
    UsageError (robuq-train's error line)."""
    try:
        return read(path)
    except CheckpointError as e:
        raise UsageError(str(e)) from None


def load_init(args) -> DiT:
    """The full-precision model of --init: ours, an official state dict (.pt or .safetensors), a DiT train.py
    file, or diffusers' layout (a DiTPipeline folder, its transformer/ folder or weights file), read and
    validated by robuq.checkpoint.load; an official layout's config inferred with --num-heads and
    --class-dropout-prob."""
    try:
        ck = load(args.init, ema=args.init_weights == "ema", num_heads=args.num_heads)
    except CheckpointError as e:
        raise UsageError(f"--init: {e}") from None
    if ck.quant is not None:
        raise UsageError(f"{args.init} is a quantized (QAT) checkpoint; continue it with --resume")
    cfg = ck.config
    if ck.layout in ("official", "official-train") and args.class_dropout_prob != cfg.class_dropout_prob:
        try:  # the label table's null row exists iff the dropout is > 0 (DiT's LabelEmbedder)
            cfg = infer_config(ck.state, cfg.num_heads, None, args.class_dropout_prob)
        except CheckpointError as e:
            raise UsageError(f"--init: {e}") from None
    for key in MODEL_OVERRIDES:
        want = getattr(args, key)
        if want is not None and want != getattr(cfg, key):
            raise UsageError(
                f"--{key.replace('_', '-')} {want} differs from --init's {key} {getattr(cfg, key)}"
            )
    model = DiT(cfg)
    try:
        model.load_state_dict(ck.state, strict=True)
    except RuntimeError as e:
        raise UsageError(f"{args.init} does not match the inferred configuration: {str(e)[:400]}") from None
    return model


def parse_bits(spec: str) -> int:
    m = re.fullmatch(r"[Ww]1\.58[Aa]([1-8])", spec.strip())
    if not m:
        raise UsageError(
            f"unknown --bits {spec!r}: expected W1.58A<n> (ternary weights, n = 1..8 activation bits), "
            "e.g. W1.58A4"
        )
    return int(m.group(1))


def quant_config_from_args(args, depth: int) -> QuantConfig | None:
    """The QuantConfig the run starts with (None: full precision)."""
    act = parse_bits(args.bits) if args.bits else None
    if args.act_bits is not None:
        if not 1 <= args.act_bits <= 8:
            raise UsageError(f"--act-bits {args.act_bits} is not in 1..8")
        if act is not None and act != args.act_bits:
            raise UsageError(f"--bits {args.bits} and --act-bits {args.act_bits} disagree")
        act = args.act_bits
    warm = max(ampn.CANDIDATES) if args.ampn_budget is not None else None
    preset_opts = {"clip": args.clip, "hadamard": args.hadamard, "rank": args.rank}
    if args.quant_config:
        if act is not None or any(v is not None for v in preset_opts.values()):
            raise UsageError(
                "--quant-config fixes every layer; do not combine it with "
                "--bits/--act-bits/--clip/--hadamard/--rank"
            )
        if not os.path.isfile(args.quant_config):
            raise UsageError(f"quantization config {args.quant_config!r} does not exist")
        try:
            cfg = QuantConfig.load(args.quant_config)
        except (ValueError, TypeError, json.JSONDecodeError) as e:
            raise UsageError(f"{args.quant_config}: {e}") from None
        if warm is not None:
            cfg = ampn.apply_allocation(cfg, cfg.block_linears(), [warm] * len(cfg.block_linears()))
        return cfg
    if warm is not None:
        if act is not None:
            raise UsageError(
                "--ampn-budget chooses the activation bits; do not give --bits/--act-bits with it"
            )
        act = warm
    if act is None:
        if any(v is not None for v in preset_opts.values()):
            raise UsageError(
                "--clip/--hadamard/--rank need --bits, --act-bits, --quant-config or --ampn-budget"
            )
        return None
    if args.rank is not None and args.rank < 0:
        raise UsageError(f"--rank {args.rank} is negative")
    return preset(
        depth, act, clip=args.clip or "gauss", hadamard=args.hadamard or "full", rank=args.rank or 0
    )


def _validate(args) -> None:
    if args.out is None:
        raise UsageError("--out is required")
    for name in ("steps", "log_every", "ckpt_every", "ampn_warmup"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0")
    if args.steps == 0:
        raise UsageError("--steps must be >= 1 (the total number of optimiser steps)")
    _check_out_dir(args.out)
    if args.batch_size <= 0 or args.ampn_batch_size <= 0 or args.ampn_batches <= 0:
        raise UsageError("batch sizes and --ampn-batches must be positive")
    if not 0.0 <= args.ema_decay <= 1.0:
        raise UsageError(f"--ema-decay {args.ema_decay} is not in [0, 1]")
    if args.lr <= 0:
        raise UsageError(f"--lr {args.lr} must be positive")
    if args.bits:
        parse_bits(args.bits)
    if args.distill and not args.init:
        raise UsageError("--distill needs --init (the full-precision teacher)")
    if args.ampn_budget is not None and not min(ampn.CANDIDATES) <= args.ampn_budget <= max(ampn.CANDIDATES):
        raise UsageError(
            f"--ampn-budget {args.ampn_budget} is not in {min(ampn.CANDIDATES)}..{max(ampn.CANDIDATES)}"
        )


def _check_out_dir(out: str) -> None:
    """--out must be a directory or creatable as one, and writable; checked before anything is written."""
    problem = output_path_problem(out, "--out", directory=True)
    if problem:
        raise UsageError(problem)


def _merge_resume_args(args, parser, ck_args: dict):
    """Arguments of a resumed run: the checkpoint's, with RESUME_OVERRIDABLE taken from the command line.
    An explicitly different value of any other option is an error (the run continues as saved)."""
    defaults = vars(parser.parse_args([]))
    cli = vars(args)
    merged = dict(defaults)
    merged.update({k: v for k, v in ck_args.items() if k in defaults})
    for k, v in cli.items():
        if k in RESUME_OVERRIDABLE:
            if k == "out" and v is None:
                continue
            merged[k] = v
        elif v != defaults[k] and v != merged[k]:
            raise UsageError(
                f"--{k.replace('_', '-')} {v!r} differs from the resumed run's {merged[k]!r}; "
                "a resumed run continues with its saved options"
            )
    return argparse.Namespace(**merged)

"""robuq-export: checkpoint (or random weights) -> .rq file (docs/rq-format.md) and/or ONNX graph.

  robuq-export CKPT -o model.rq [--onnx model.onnx] [--no-ema] [--num-heads H] [--space pixel|latent]
               [--clip-denoised | --no-clip-denoised] [--cfg-mode dit|all]
  robuq-export --random DiT-XL/2 (--bits W1.58A2 [--rank R] [--adaln int4|ternary] [--ampn]
               [--clip gauss|minmax] [--hadamard full|block|none] | --fp) [--seed S]
               [--depth N] [--hidden-size D] [--num-heads H] [--input-size N] [--in-channels C]
               [--num-classes K] -o model.rq

Checkpoints: ours (robuq-train; EMA weights unless --no-ema), official DiT train.py files, plain
state dicts (.pt or .safetensors) and diffusers' DiT layout (config inferred from the shapes or config.json;
full precision). A full-precision checkpoint is written to .rq only with --allow-fp (the usual path is QAT
with robuq-train --init first). Refusals (bad checkpoints, options or configs) print one line naming the
problem and exit with 2; no output file is left behind. docs/rq-format.md describes the file and options.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from robuq.models import CONFIGS, DiTConfig

from .checkpoint import load_checkpoint
from .errors import ExportError
from .export import CFG_MODES, SPACES, export_rq, plan_rq
from .random_model import RandomWeights, mac_weighted_bits, parse_bits, random_quant_config

RANDOM_ONLY = ("bits", "rank", "seed", "adaln", "ampn", "fp", "clip", "hadamard", "depth", "hidden_size",
               "input_size", "in_channels", "num_classes")  # fmt: skip
CONFIG_OVERRIDES = ("depth", "hidden_size", "num_heads", "input_size", "in_channels", "num_classes")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="robuq-export",
        description="Export a RobuQ QAT, full-precision or official DiT checkpoint (or random weights) "
        "to a .rq file and/or an ONNX graph.",
    )
    p.add_argument(
        "checkpoint", nargs="?", help="checkpoint (.pt): robuq train.py, official train.py or state dict"
    )
    p.add_argument("-o", "--output", help="the .rq file to write")
    p.add_argument("--onnx", help="also (or only) write the model as an ONNX graph here")
    p.add_argument(
        "--no-ema", dest="ema", action="store_false", help="export the raw 'model' weights, not 'ema'"
    )
    p.add_argument(
        "--num-heads", type=int, help="attention heads (official checkpoints: default by hidden size)"
    )
    p.add_argument(
        "--space", choices=SPACES, help="pixel or latent (default: latent for 4 channels, else pixel)"
    )
    p.add_argument(
        "--clip-denoised",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="sampler clips x0 to [-1, 1] (default: true for pixel models, false for latent)",
    )
    p.add_argument("--cfg-mode", choices=CFG_MODES, default="dit", help="guided channels: dit (0..2) or all")
    p.add_argument(
        "--allow-fp",
        action="store_true",
        help="write a full-precision checkpoint (no quantized layers) to .rq as it is, unquantized",
    )
    r = p.add_argument_group("random weights (benchmarks, no checkpoint)")
    r.add_argument("--random", metavar="NAME", help=f"a DiT config name ({', '.join(CONFIGS)})")
    r.add_argument("--bits", help="W1.58A<b>: ternary block linears with b-bit activations (A16/A32: float)")
    r.add_argument("--fp", action="store_true", help="full precision (no quantized layers)")
    r.add_argument("--rank", type=int, default=0, help="low-rank branch rank (default 0)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument(
        "--adaln", choices=("int4", "ternary"), default="int4", help="adaLN weights (default int4)"
    )
    r.add_argument("--ampn", action="store_true", help="AMPN-style activation mix (paper averages, A2 or A3)")
    r.add_argument("--clip", choices=("gauss", "minmax"), default="gauss")
    r.add_argument("--hadamard", choices=("full", "block", "none"), default="full")
    r.add_argument("--depth", type=int, help="config overrides (also --num-heads)")
    r.add_argument("--hidden-size", type=int)
    r.add_argument("--input-size", type=int)
    r.add_argument("--in-channels", type=int)
    r.add_argument("--num-classes", type=int)
    p.add_argument("-q", "--quiet", action="store_true", help="no summary line")
    return p


def _random_source(args) -> tuple[RandomWeights, str]:
    if args.random not in CONFIGS:
        raise ExportError(f"unknown DiT config {args.random!r} (known: {', '.join(CONFIGS)})")
    overrides = {k: getattr(args, k) for k in CONFIG_OVERRIDES if getattr(args, k) is not None}
    try:
        config = DiTConfig(**{**CONFIGS[args.random], **overrides})
    except (TypeError, ValueError) as e:
        raise ExportError(f"invalid config for --random {args.random}: {e}") from None
    if args.fp:
        quant, what = None, "full precision"
    else:
        act = parse_bits(args.bits)
        quant = random_quant_config(
            config.depth,
            act,
            rank=args.rank,
            adaln=args.adaln,
            ampn=args.ampn,
            clip=args.clip,
            hadamard=args.hadamard,
        )
        what = (
            f"{args.bits}, rank {args.rank}, adaLN {args.adaln}, {args.clip} clip, {args.hadamard} Hadamard"
        )
        if args.ampn:
            mean = mac_weighted_bits(quant, config.hidden_size, config.mlp_ratio)
            what += f", AMPN mix (MAC-weighted mean {mean:.3f} bits)"
    overridden = "".join(f", {k}={v}" for k, v in overrides.items())
    source = f"random weights: {args.random}{overridden}, seed {args.seed}, {what}"
    return RandomWeights(config, quant, seed=args.seed), source


def _check_output(path: str | None, what: str) -> None:
    if not path:
        return
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ExportError(f"output path {path} is a directory")
    if not os.path.isdir(directory):
        raise ExportError(f"{what} {path}: output directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ExportError(f"{what} {path}: output directory {directory} is not writable")


def run(args) -> str:
    """Do the export the parsed arguments ask for; returns the summary line."""
    if (args.checkpoint is None) == (args.random is None):
        raise ExportError("give either a checkpoint or --random NAME")
    if not args.output and not args.onnx:
        raise ExportError("nothing to write: give -o OUT.rq and/or --onnx OUT.onnx")
    if args.output and args.onnx and args.output == args.onnx:
        raise ExportError("-o and --onnx name the same file")
    for what, out in (("-o", args.output), ("--onnx", args.onnx)):
        _check_output(out, what)  # before any work: a bad path costs nothing
    if args.onnx:  # before the .rq is written: a missing package must not leave half the job done
        import importlib.util

        if importlib.util.find_spec("onnx") is None:
            raise ExportError(
                "--onnx needs the onnx package, which is not installed: pip install 'robuq[onnx]'"
            )
    defaults = build_parser().parse_args([])
    if args.checkpoint is not None:
        given = [k for k in RANDOM_ONLY if getattr(args, k) != getattr(defaults, k)]
        if given:
            raise ExportError(f"--{given[0].replace('_', '-')} applies to --random only")
        ckpt = load_checkpoint(args.checkpoint, ema=args.ema, num_heads=args.num_heads)
        config, quant, state, source = ckpt.config, ckpt.quant, ckpt.state, ckpt.source
        if quant is None and args.output and not args.allow_fp:
            raise ExportError(
                f"0 quantized layers: {args.checkpoint} is a full-precision model. Quantize it first with "
                f"robuq-train --init {args.checkpoint} --bits W1.58A2 ... (QAT, docs/training.md), then "
                "export the QAT checkpoint; or pass --allow-fp to write it unquantized"
            )
    else:
        if not args.ema:
            raise ExportError("--no-ema applies to checkpoints only")
        if args.fp == (args.bits is not None):
            raise ExportError("--random needs exactly one of --bits W1.58A<b> or --fp")
        if args.fp and (args.ampn or args.rank or args.adaln != "int4"):
            raise ExportError("--ampn, --rank and --adaln do not apply to --fp")
        if args.rank < 0:
            raise ExportError(f"--rank must be >= 0, got {args.rank}")
        state, source = _random_source(args)
        config, quant = state.config, state.quant
    plan = plan_rq(
        config,
        quant,
        space=args.space,
        clip_denoised=args.clip_denoised,
        cfg_mode=args.cfg_mode,
        source=source,
    )
    fp32 = 4 * sum(int(np.prod(s)) for k, s in plan.shapes.items() if ".lowrank_" not in k)
    parts = []
    if args.output:
        size = export_rq(plan, state, args.output)
        parts.append(
            f"wrote {args.output}: {size / 1e6:.1f} MB, {len(plan.entries)} quantized layers, "
            f"1/{fp32 / size:.2f} of the fp32 weights ({fp32 / 1e6:.1f} MB)"
        )
    if args.onnx:
        from .onnx_export import build_model, export_onnx  # torch.onnx only when asked for

        model = build_model(config, quant, state)
        export_onnx(model, args.onnx)
        parts.append(f"wrote {args.onnx}")
    return "; ".join(parts) + f" ({source})"


def main(argv: list[str] | None = None) -> int:
    """Entry point of robuq-export; returns the exit status (0 ok, 2 refused)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0)
    t0 = time.perf_counter()
    try:
        summary = run(args)
    except ExportError as e:
        print(f"robuq-export: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file the OS refuses (permissions, a full disk): no partial output is left
        where = f"{e.filename}: " if e.filename else ""
        print(f"robuq-export: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"{summary} [{time.perf_counter() - t0:.1f} s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""robuq-train: full-precision training, QAT (with distillation and AMPN) and exact resume for the DiT.

    robuq-train --data digits --model DiT-S/2 --depth 2 --hidden-size 64 --num-heads 2 \
        --steps 2000 --out runs/fp
    robuq-train --data digits --init runs/fp/checkpoints/0002000.pt --bits W1.58A2 --rank 8 --distill \
        --steps 4000 --out runs/a2
    robuq-train --data digits --init runs/fp/checkpoints/0002000.pt --ampn-budget 2.0 --ampn-warmup 1000 \
        --steps 4000 --out runs/ampn
    robuq-train --resume runs/a2/checkpoints/0002000.pt --steps 4000
    torchrun --nproc_per_node 2 -m robuq.train ...          # DistributedDataParallel, same flags

See docs/training.md for the loss, the checkpoint layout and the exact resume rules.
"""

from __future__ import annotations

import argparse
import sys

from . import ampn
from .checkpoint import CHECKPOINT_FORMAT, load_model
from .cli import UsageError
from .cli_paths import DefaultsHelpFormatter
from .distributed import Dist
from .models import CONFIGS
from .train_config import load_checkpoint, load_init
from .train_run import Run

__all__ = [
    "main",
    "build_parser",
    "load_checkpoint",
    "load_init",
    "load_model",
    "UsageError",
    "CHECKPOINT_FORMAT",
]


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="robuq-train",
        description="Train a DiT in full precision or with RobuQ QAT (docs/training.md).",
        formatter_class=DefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--data", default="digits", help="'digits', 'folder:PATH' or 'latents:PATH.npy[,LABELS.npy]'"
    )
    g.add_argument("--image-size", type=int, default=None, help="image side for digits / folders")
    g.add_argument(
        "--channels", type=int, default=None, choices=(1, 3), help="folder images: 1 or 3 channels"
    )
    g.add_argument("--holdout", type=float, default=0.1, help="held-out fraction (stratified; used by AMPN)")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the fixed train / held-out split")

    g = p.add_argument_group("model (training from scratch)")
    g.add_argument("--model", default="DiT-S/2", choices=sorted(CONFIGS), help="base configuration")
    g.add_argument("--depth", type=int, default=None)
    g.add_argument("--hidden-size", type=int, default=None)
    g.add_argument("--num-heads", type=int, default=None)
    g.add_argument("--input-size", type=int, default=None, help="model input side (default: the data's)")
    g.add_argument("--class-dropout-prob", type=float, default=0.1)
    g.add_argument("--no-learn-sigma", dest="learn_sigma", action="store_false", help="eps only, plain MSE")

    g = p.add_argument_group("QAT")
    g.add_argument(
        "--init",
        default=None,
        help="full-precision checkpoint: ours, an official DiT state dict or a DiT train.py file",
    )
    g.add_argument("--init-weights", default="ema", choices=("ema", "model"), help="which weights of --init")
    g.add_argument("--bits", default=None, help="W1.58A<n>: ternary block linears, n-bit activations")
    g.add_argument("--act-bits", type=int, default=None, help="activation bits of the block linears (1..8)")
    g.add_argument("--clip", default=None, choices=("gauss", "minmax"), help="activation clipping [gauss]")
    g.add_argument(
        "--hadamard", default=None, choices=("full", "block", "none"), help="online Hadamard [full]"
    )
    g.add_argument("--rank", type=int, default=None, help="low-rank branch rank [0]")
    g.add_argument("--quant-config", default=None, help="per-layer QuantConfig JSON (e.g. from AMPN)")
    g.add_argument("--distill", action="store_true", help="add MSE(student eps, full-precision teacher eps)")
    g.add_argument("--distill-weight", type=float, default=1.0)

    g = p.add_argument_group("AMPN (activation mixed precision in one command)")
    g.add_argument("--ampn-budget", type=float, default=None, help="average activation bits, e.g. 2.0")
    g.add_argument("--ampn-warmup", type=int, default=1000, help="QAT steps at 4 bits before measuring")
    g.add_argument("--ampn-weighting", default="mac", choices=ampn.WEIGHTINGS, help="budget average")
    g.add_argument(
        "--ampn-batches", type=int, default=4, help="held-out batches of the sensitivity objective"
    )
    g.add_argument("--ampn-batch-size", type=int, default=64)

    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=float, default=1e-4)
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--ema-decay", type=float, default=0.9999)
    g.add_argument("--batch-size", type=int, default=256, help="global batch (split over DDP ranks)")
    g.add_argument("--steps", type=int, default=1000, help="total optimiser steps (AMPN warm-up included)")
    g.add_argument("--seed", type=int, default=0)

    g = p.add_argument_group("run")
    g.add_argument("--out", default=None, help="output directory (log.jsonl, checkpoints/, ampn.json)")
    g.add_argument("--resume", default=None, help="continue this checkpoint exactly")
    g.add_argument("--log-every", type=int, default=100)
    g.add_argument("--ckpt-every", type=int, default=0, help="0: only the final checkpoint")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bar")
    g.add_argument("--debug-dump-weights", default=None, help=argparse.SUPPRESS)  # tests: per-rank hashes
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse printed its message (bad option value: code 2; --help: 0)
        return int(e.code) if isinstance(e.code, int) else 2
    d = None
    try:
        d = Dist(args.device)
        run = Run(args, parser, d)
        path = run.train()
        if d.main:
            print(f"robuq-train: {run.step} steps done; checkpoint {path}")
        return 0
    except UsageError as e:
        print(f"robuq-train: error: {e}", file=sys.stderr)
        return 2
    finally:
        if d is not None:
            d.close()


if __name__ == "__main__":
    sys.exit(main())

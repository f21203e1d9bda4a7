"""The models shipped in the repository: release checkpoints and their `.rq` exports.

Release checkpoints (models/digits/*.pt) are training checkpoints stripped to what inference and export
need (EMA weights, configs, step, arguments); the `.rq` files beside the package
(python/robuq/assets/*.rq) are exported from them and must stay byte-identical to a fresh export:

    python -m robuq.ship strip RUN/checkpoints/0000800.pt models/digits/w158a2-ampn.pt
    python -m robuq.ship export            # re-export every shipped .rq (after a format change)
    python -m robuq.ship export --check    # exit 1 if any shipped .rq differs from a fresh export

How each checkpoint was trained: docs/models.md.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODELS_DIR = REPO / "models" / "digits"
ASSETS_DIR = Path(__file__).resolve().parent / "assets"

# asset name -> release checkpoint file name (in MODELS_DIR)
SHIPPED = {
    "digits-fp.rq": "fp.pt",
    "digits-w158a4.rq": "w158a4.pt",
    "digits-w158a3.rq": "w158a3.pt",
    "digits-w158a2.rq": "w158a2-ampn.pt",
}
DEFAULT_MODEL = "digits-w158a2.rq"
RELEASE_KEYS = ("format", "model_config", "quant_config", "ema", "step", "args")


def default_model_path() -> Path:
    """The model `robuq-infer` runs when given none: the W1.58A2 (AMPN) digits model."""
    return ASSETS_DIR / DEFAULT_MODEL


def strip(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Write a release checkpoint: the training checkpoint without optimizer state, raw weights and RNG."""
    import torch

    from .checkpoint import read
    from .cli import write_atomic

    ck = read(str(src))
    missing = [k for k in ("format", "model_config", "ema") if k not in ck]
    if missing:
        raise ValueError(f"{src} is not a robuq-train checkpoint (missing {missing})")
    out = {k: ck[k] for k in RELEASE_KEYS if k in ck}
    write_atomic(dst, lambda f: torch.save(out, f))


def export_one(ckpt: Path, out: Path) -> None:
    from .exporter.cli import main as export_main

    rc = export_main([str(ckpt), "-o", str(out), "-q", "--allow-fp"])  # the shipped set includes the FP model
    if rc != 0:
        raise RuntimeError(f"exporting {ckpt} failed (exit {rc})")


def export_shipped(check: bool = False) -> list[str]:
    """Export every shipped model from its release checkpoint. check=True compares with the committed
    files instead of replacing them and returns the names that differ (or are missing)."""
    differ = []
    ASSETS_DIR.mkdir(exist_ok=True)
    for asset, ckpt in SHIPPED.items():
        src, dst = MODELS_DIR / ckpt, ASSETS_DIR / asset
        if not src.is_file():
            raise FileNotFoundError(f"release checkpoint {src} is missing")
        with tempfile.TemporaryDirectory(dir=ASSETS_DIR) as tmp:
            fresh = Path(tmp) / asset
            export_one(src, fresh)
            if check:
                if not dst.is_file() or not filecmp.cmp(fresh, dst, shallow=False):
                    differ.append(asset)
            else:
                os.replace(fresh, dst)
    return differ


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m robuq.ship", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("strip", help="training checkpoint -> release checkpoint")
    s.add_argument("src")
    s.add_argument("dst")
    e = sub.add_parser("export", help="re-export the shipped .rq files from their release checkpoints")
    e.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    args = p.parse_args(argv)
    from .cli import UsageError

    try:
        if args.cmd == "strip":
            strip(args.src, args.dst)
            return 0
        differ = export_shipped(check=args.check)
    except (OSError, ValueError, RuntimeError, UsageError) as e:
        print(f"robuq.ship: {e}", file=sys.stderr)
        return 2
    if differ:
        print(f"shipped models differ from a fresh export: {', '.join(differ)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

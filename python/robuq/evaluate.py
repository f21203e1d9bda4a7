"""robuq-eval: sample quality of trained digits DiTs (class accuracy and a Frechet distance).

    python -m robuq.evaluate train-classifier -o models/digits/classifier.pt
    python -m robuq.evaluate eval runs/fp/checkpoints/0005000.pt runs/a2/checkpoints/0010000.pt \
        --per-class 100 --steps 50 --sampler ddpm --cfg-scale 1.5 --seed 0 --json eval.json --grid-dir grids
    python -m robuq.evaluate table --spec docs/quality_rows.json --out docs/quality.md

The judge is a small CNN trained here on the real training digits (``robuq.judge``; its weights ship as
models/digits/classifier.pt); the distances are ``robuq.metrics``; the table, grids and the generated block
of docs/quality.md are ``robuq.quality_report``. For each checkpoint, a fixed set of class-conditional
samples is drawn with ``robuq.diffusion.sample_classes`` and scored by

* class accuracy: the classifier's prediction against the requested class;
* pixel FD (the headline distance): the Frechet distance between Gaussians fitted to the samples' and the
  real training split's 8-bit pixels (256-d for 16x16 digits; ``robuq.metrics``), with its spread: mean
  and standard deviation over 5 disjoint class-balanced subsets of the samples;
* pixel KID x 1e3: the unbiased kernel distance on the same pixels (mean and sd over random subsets);
* class-structure distance: the Frechet distance in the classifier's penultimate features. It mostly
  measures the shape of the class clusters and rewards pixel noise (docs/quality.md), so it is reported
  under that name, beside the pixel metrics, never instead of them.

See docs/quality.md for the method and the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from . import ampn, diffusion, metrics, rng
from .checkpoint import CHECKPOINT_FORMAT, CheckpointError, load_model, read
from .cli import UsageError, write_text_atomic
from .cli_paths import DefaultsHelpFormatter, output_path_problem
from .data import load_dataset
from .judge import (
    CHANNELS,
    DEFAULT_CLASSIFIER,
    IMAGE_SIZE,
    NUM_CLASSES,
    PROG,
    as_8bit,
    load_classifier,
    predict,
    save_classifier,
    train_classifier,
)
from .metrics import feature_stats, frechet_distance
from .quality_report import (
    BEGIN_MARK,
    END_MARK,
    generated_section,
    machine_info,
    pct,
    print_table,
    sample_grid,
    save_png,
    settings,
    write_quality_doc,
)
from .quant import QuantConfig

__all__ = [
    "BEGIN_MARK",
    "END_MARK",
    "Reference",
    "describe_checkpoint",
    "evaluate_checkpoint",
    "generate",
    "inspect_checkpoint",
    "interleaved_classes",
    "main",
]


# ---------------------------------------------------------------------------------------------------------
# Checkpoints: description from quant_config, sampling
# ---------------------------------------------------------------------------------------------------------


def _weight_name(fmt: str) -> str:
    return "W1.58" if fmt == "ternary" else "W" + fmt.removeprefix("int")


def describe_checkpoint(ck: dict) -> dict:
    """Label, bits and method of a robuq-train checkpoint, from its quant_config (and args)."""
    args = ck.get("args") or {}
    mc = ck.get("model_config") or {}
    desc = {
        "step": ck.get("step"),
        "model": f"depth {mc.get('depth')}, hidden {mc.get('hidden_size')}, patch {mc.get('patch_size')}",
    }
    qc = ck.get("quant_config")
    if qc is None:
        return dict(desc, label="full precision", bits="FP32", method="full precision", recipe="fp")
    cfg = QuantConfig.from_dict(qc)
    names = cfg.block_linears()
    if not names:
        return dict(desc, label="quantized", bits="?", method="no quantized block linears", recipe="custom")
    lqs = [cfg.layers[n] for n in names]
    wfmt = sorted({_weight_name(q.weight) for q in lqs})
    acts = [q.act_bits for q in lqs]
    if len(set(acts)) == 1:
        abits = "A16" if acts[0] is None else f"A{acts[0]}"
    elif None in acts:
        abits = "A(mixed, some unquantized)"
    else:
        macs = [
            ampn.layer_macs(n, int(mc.get("hidden_size", 0)), float(mc.get("mlp_ratio", 4.0))) for n in names
        ]
        avg = ampn.average_bits(acts, macs)
        abits = f"A{avg:.2f} (mixed {min(acts)}-{max(acts)}, MAC-weighted)"
    bits = "/".join(wfmt) + abits

    def one(values, fmt, mixed):
        values = sorted(set(values), key=str)
        return fmt(values[0]) if len(values) == 1 else mixed

    had = one(
        [q.hadamard for q in lqs],
        lambda h: "no Hadamard" if h == "none" else f"Hadamard {h}",
        "Hadamard mixed",
    )
    clip = one(
        [q.clip for q in lqs],
        lambda c: "per-token minmax" if c == "minmax" else "per-token gauss clip",
        "clip mixed",
    )
    rank = one(
        [q.rank for q in lqs], lambda r: "no low-rank" if r == 0 else f"low-rank r{r}", "low-rank mixed"
    )
    if all(q.hadamard == "none" and q.clip == "minmax" and q.rank == 0 for q in lqs):
        recipe, method = "plain", "plain baseline (per-token minmax, no Hadamard, no low-rank)"
    elif all(q.hadamard != "none" and q.clip == "gauss" and q.rank > 0 for q in lqs):
        recipe, method = "robuq", f"RobuQ ({had} + gauss clip + {rank})"
    else:
        recipe, method = "custom", f"{had}, {clip}, {rank}"
    extras = []
    if args.get("ampn_budget") is not None:
        extras.append(f"AMPN budget {args['ampn_budget']:g} ({args.get('ampn_weighting', 'mac')})")
    if args.get("distill"):
        extras.append("distillation")
    if extras:
        method += " + " + " + ".join(extras)
    name = {"plain": "plain baseline", "robuq": "RobuQ", "custom": "custom"}[recipe]
    label = f"{bits.split(' ')[0]} {name}" + (" + AMPN" if args.get("ampn_budget") is not None else "")
    return dict(desc, label=label, bits=bits, method=method, recipe=recipe)


def interleaved_classes(per_class: int, num_classes: int = NUM_CLASSES) -> list[int]:
    """0, 1, ..., 9, 0, 1, ...: sample i of class c is index i * num_classes + c, so the first k samples
    of every class are the same for any per_class >= k (noise is a prefix stream, robuq.rng)."""
    return [c for _ in range(per_class) for c in range(num_classes)]


def generate(
    model,
    per_class: int,
    steps: str | int = 50,
    sampler: str = "ddpm",
    cfg_scale: float = 1.5,
    seed: int = 0,
    batch_size: int = 500,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images float32 [N, C, H, W] in [-1, 1] on the CPU, requested classes int64 [N]), N = 10 * per_class,
    classes interleaved. The set is the one ``sample_classes`` would draw in a single call over all N
    (pixel space, clip_denoised=True): each chunk of ``batch_size`` draws the rows of the full-size noise
    it covers, so the batch size only bounds memory."""
    classes = interleaved_classes(per_class)
    out = []
    for lo in range(0, len(classes), batch_size):
        hi = min(lo + batch_size, len(classes))

        def noise_rows(s, key, shape, lo=lo, hi=hi):
            return rng.gaussian(s, key, (hi, *shape[1:]))[lo:]

        x = diffusion.sample_classes(
            model,
            classes[lo:hi],
            steps=steps,
            cfg_scale=cfg_scale,
            seed=seed,
            sampler=sampler,
            clip_denoised=True,
            noise_fn=noise_rows,
        )
        out.append(x.float().cpu())
    return torch.cat(out), torch.tensor(classes, dtype=torch.long)


class Reference:
    """The judge and the real data every distance is measured against.

    The digits (all 1,797, on the 8-bit grid) are split per class (seed 0) into a *floor set* of
    ``per_class`` images of every class, as many as each model row samples, and the *reference*: the rest.
    Every distance of a row is against the reference; the floor set, scored the same way at the same n,
    is what real digits score: the table's floor. At most ``min class count - MIN_REF_PER_CLASS`` images
    per class go to the floor set (``floor_per_class``), so the reference keeps every class. Accuracy of
    the real row is the judge's on its own held-out split (the floor set holds images it was trained on).
    """

    def __init__(self, classifier_path: str | None, per_class: int = 100, log=print):
        self.model, self.classifier = load_classifier(classifier_path, log=log)
        x, y, _ = load_dataset("digits", split="all")
        xh, yh, _ = load_dataset("digits", split="heldout")
        y_np = y.numpy()
        counts = np.bincount(y_np, minlength=NUM_CLASSES)
        fpc = max(2, min(per_class, int(counts.min()) - MIN_REF_PER_CLASS))
        rng = np.random.default_rng(0)
        floor_idx, ref_idx = [], []
        for c in range(NUM_CLASSES):
            idx = rng.permutation(np.flatnonzero(y_np == c))
            floor_idx.append(idx[:fpc])
            ref_idx.append(idx[fpc:])
        fi, ri = np.sort(np.concatenate(floor_idx)), np.sort(np.concatenate(ref_idx))
        xr, xf, yf = x[ri], x[fi], y_np[fi]
        _, fr = predict(self.model, as_8bit(xr))
        _, ff = predict(self.model, as_8bit(xf))
        ph, _ = predict(self.model, as_8bit(xh))
        self.stats = feature_stats(fr)
        self.pixels = metrics.pixel_features(xr.numpy())
        self.pixel_stats = feature_stats(self.pixels)
        floor = metrics.pixel_scores(xf.numpy(), yf, self.pixels, self.pixel_stats)
        self.info = {
            "set": "digits (all 1,797) less the floor set, 8-bit grid",
            "n": len(ri),
            "floor_per_class": fpc,
            "floor_n": len(fi),
            "heldout_n": len(xh),
            "heldout_accuracy": float((ph == yh).double().mean()),
            "floor_fd": frechet_distance(*feature_stats(ff), *self.stats),
            **{f"floor_{k}": v for k, v in floor.items()},
        }


#: images of every class the reference keeps (the floor set takes at most the rest)
MIN_REF_PER_CLASS = 50


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower() or "row"


def _checkpoint_slug(path: str) -> str:
    p = Path(path)
    run = p.parent.parent.name if p.parent.name == "checkpoints" else p.parent.name
    return _slug(f"{run}-{p.stem}" if run else p.stem)


def inspect_checkpoint(path: str) -> dict:
    """``describe_checkpoint`` of ``path`` after checking that it is a robuq-train checkpoint of a model
    the digits judge can score (1 channel, 16x16, 10 classes); a UsageError otherwise."""
    try:
        ck = read(path)
    except CheckpointError as e:
        raise UsageError(str(e)) from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise UsageError(f"{path} is not a robuq-train checkpoint")
    mc = ck.get("model_config") or {}
    shape = (mc.get("in_channels"), mc.get("input_size"), mc.get("num_classes"))
    if shape != (CHANNELS, IMAGE_SIZE, NUM_CLASSES):
        raise UsageError(
            f"{path}: the digits judge scores 1-channel 16x16 10-class models; this one is "
            f"{shape[0]} channels, {shape[1]}x{shape[1]}, {shape[2]} classes"
        )
    try:
        return describe_checkpoint(ck)
    except (ValueError, TypeError, KeyError) as e:
        raise UsageError(f"{path}: bad quant_config: {e}") from None


def _generate_engine(path: str, opts) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The sample set of ``generate``'s layout (classes interleaved, pixel space, clip_denoised) drawn by the
    C++ engine from the checkpoint exported to a temporary .rq (what a user deploys; robuq-parity bounds
    its difference from the PyTorch model). Returns (images, classes, sampling seconds)."""
    from .engine import Engine, FormatError
    from .exporter.cli import main as export_main

    classes = interleaved_classes(opts.per_class)
    with tempfile.TemporaryDirectory(prefix="robuq-eval-") as tmp:
        rq = Path(tmp) / "model.rq"
        argv = [path, "-o", str(rq), "-q", "--allow-fp"] + ([] if opts.weights == "ema" else ["--no-ema"])
        if export_main(argv) != 0:
            raise UsageError(f"{path}: exporting it to .rq for the engine failed (see above)")
        try:
            eng = Engine(str(rq), threads=opts.threads)
            t0 = time.perf_counter()
            x = eng.sample(
                classes,
                steps=str(opts.steps),
                sampler=opts.sampler,
                cfg_scale=opts.cfg_scale,
                seed=opts.seed,
                clip_denoised=True,
                output="latent",
            )
            seconds = time.perf_counter() - t0
        except (FormatError, ValueError, ArithmeticError) as e:
            raise UsageError(f"{path}: sampling failed: {e}") from None
    return torch.from_numpy(np.ascontiguousarray(x, np.float32)), torch.tensor(classes), seconds


def evaluate_checkpoint(
    path: str, ref: Reference, opts, grid_path: Path | None = None, label=None, desc: dict | None = None
) -> dict:
    """Sample ``opts.per_class`` images per class from checkpoint ``path`` and score them."""
    desc = desc or inspect_checkpoint(path)
    if opts.backend == "engine":
        x, y, seconds = _generate_engine(path, opts)
    else:
        try:
            model = load_model(path, weights=opts.weights).to(opts.device)
        except (RuntimeError, ValueError, TypeError, KeyError) as e:
            raise UsageError(f"{path}: cannot rebuild the model: {str(e).splitlines()[0][:300]}") from None
        t0 = time.perf_counter()
        try:
            x, y = generate(
                model, opts.per_class, opts.steps, opts.sampler, opts.cfg_scale, opts.seed, opts.batch_size
            )
        except (ValueError, ArithmeticError) as e:  # e.g. CFG without a null class; a non-finite sample
            raise UsageError(f"{path}: sampling failed: {e}") from None
        if opts.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    pred, feats = predict(ref.model, as_8bit(x))
    hit = (pred == y).double()
    per_class = [float(hit[y == c].mean()) for c in range(NUM_CLASSES)]
    res = {
        "checkpoint": str(path),
        "label": label or desc["label"],
        **{k: desc[k] for k in ("bits", "method", "recipe", "step", "model")},
        "n": len(y),
        "accuracy": float(hit.mean()),
        "per_class_accuracy": per_class,
        "fd": frechet_distance(*feature_stats(feats), *ref.stats),
        **metrics.pixel_scores(x.numpy(), y.numpy(), ref.pixels, ref.pixel_stats),
        "sample_seconds": round(seconds, 3),
        "images_per_second": round(len(y) / max(seconds, 1e-9), 2),
    }
    if grid_path is not None:
        save_png(sample_grid(x, opts.per_class), grid_path)
        res["grid"] = str(grid_path)
    return res


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------


def _add_eval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--per-class", type=int, default=100, help="samples per class")
    p.add_argument("--steps", default="50", help="sampling steps (a respacing: '50', 'ddim50', ...)")
    p.add_argument("--sampler", default="ddpm", choices=diffusion.SAMPLERS)
    p.add_argument("--cfg-scale", type=float, default=1.5, help="classifier-free guidance (1: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=500, help="samples per model call (bounds memory)")
    p.add_argument("--weights", default="ema", choices=("ema", "model"))
    p.add_argument("--classifier", default=None, help=f"judge weights [{DEFAULT_CLASSIFIER}]")
    p.add_argument(
        "--backend",
        default="engine",
        choices=("engine", "torch"),
        help="sample with the C++ engine (the checkpoint exported to a temporary .rq) or the PyTorch model",
    )
    p.add_argument("--threads", type=int, default=0, help="engine threads (0: all cores)")
    p.add_argument("--device", default="auto", help="torch backend: auto, cpu, cuda")
    p.add_argument("--json", default=None, help="write the results here")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Sample quality of digits DiT checkpoints: class accuracy, pixel FD / KID "
        "(docs/quality.md).",
        formatter_class=DefaultsHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{train-classifier,eval,table}")
    t = sub.add_parser(
        "train-classifier",
        help="train the judge and write its weights + JSON sidecar",
        formatter_class=DefaultsHelpFormatter,
    )
    t.add_argument("-o", "--out", required=True, help="weights file (sidecar: same name, .json)")
    t.add_argument("--epochs", type=int, default=60)
    t.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("eval", help="score checkpoints", formatter_class=DefaultsHelpFormatter)
    e.add_argument("checkpoints", nargs="+", metavar="CKPT")
    _add_eval_options(e)
    e.add_argument("--grid-dir", default=None, help="write a 10 x 10 sample grid PNG per checkpoint here")
    b = sub.add_parser(
        "table",
        help="score the rows of a spec and write docs/quality.md",
        formatter_class=DefaultsHelpFormatter,
    )
    b.add_argument("--spec", required=True, help='JSON {"rows": [{"label": ..., "checkpoint": ...}, ...]}')
    b.add_argument("--out", default="docs/quality.md", help="markdown file (its generated block is replaced)")
    b.add_argument("--grid-dir", default=None, help="PNG grids [<out dir>/quality]")
    b.add_argument("--skip-missing", action="store_true", help="list missing checkpoints instead of failing")
    _add_eval_options(b)
    return p


def _device(arg: str) -> torch.device:
    if arg == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if arg.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {arg}: no CUDA device is available")
    if not (arg == "cpu" or arg.startswith("cuda")):
        raise UsageError(f"unknown --device {arg!r}")
    return torch.device(arg)


def _check_opts(opts) -> None:
    if opts.per_class < 2:
        raise UsageError("--per-class must be >= 2 (a covariance needs two samples per set)")
    if opts.batch_size < 1:
        raise UsageError("--batch-size must be positive")
    if opts.threads < 0:
        raise UsageError(f"--threads must be >= 0 (0: all cores), got {opts.threads}")
    try:
        steps = diffusion.create_diffusion(opts.steps).num_timesteps
    except ValueError as e:
        raise UsageError(f"--steps {opts.steps!r}: {e}") from None
    if steps < 1:
        raise UsageError(f"--steps {opts.steps!r}: needs at least one sampling step")
    opts.device = _device(opts.device)


def _check_output(path: str | None, what: str, directory: bool = False) -> None:
    """An output path (a file, or with ``directory`` a folder to create) must be writable."""
    problem = output_path_problem(path, what, directory)
    if problem:
        raise UsageError(problem)


def _read_spec(path: str) -> list[dict]:
    if not os.path.isfile(path):
        raise UsageError(f"spec {path!r} does not exist")
    try:
        spec = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"spec {path}: not JSON: {e}") from None
    rows = spec.get("rows") if isinstance(spec, dict) else None
    if not isinstance(rows, list) or not rows:
        raise UsageError(f'spec {path}: expected {{"rows": [{{"label": ..., "checkpoint": ...}}, ...]}}')
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not isinstance(r.get("checkpoint"), str):
            raise UsageError(f'spec {path}: row {i} has no "checkpoint" string')
        if "label" in r and not isinstance(r["label"], str):
            raise UsageError(f'spec {path}: row {i}: "label" must be a string')
    return rows


def _report(opts, ref: Reference, results: list[dict], command: str) -> dict:
    return {
        "format": "robuq-eval",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "settings": settings(opts),
        "classifier": ref.classifier,
        "reference": ref.info,
        "machine": machine_info(opts.device),
        "results": results,
    }


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _unique(path: Path, used: set) -> Path:
    k, cand = 1, path
    while str(cand) in used:
        k += 1
        cand = path.with_name(f"{path.stem}-{k}{path.suffix}")
    used.add(str(cand))
    return cand


def run_rows(rows: list[dict], opts, grid_dir: Path | None, slugs: list[str]) -> tuple[Reference, list[dict]]:
    descs = [None if r.get("missing") else inspect_checkpoint(r["checkpoint"]) for r in rows]  # fail early
    ref = Reference(opts.classifier, per_class=opts.per_class, log=_log)
    results, used = [], set()
    for r, slug, desc in zip(rows, slugs, descs, strict=True):
        if r.get("missing"):
            results.append(
                {"label": r.get("label") or r["checkpoint"], "checkpoint": r["checkpoint"], "missing": True}
            )
            continue
        grid = _unique(grid_dir / f"{slug}.png", used) if grid_dir is not None else None
        res = evaluate_checkpoint(r["checkpoint"], ref, opts, grid, r.get("label"), desc)
        _log(
            f"{PROG}: {res['label']}: accuracy {pct(res['accuracy'])}, pixel FD {res['pixel_fd']:.3f}, "
            f"class-structure distance {res['fd']:.2f}, "
            f"{res['sample_seconds']:.1f} s ({r['checkpoint']})"
        )
        results.append(res)
    return ref, results


def cmd_train_classifier(args, command: str) -> int:
    if args.epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {args.epochs}")
    _check_output(args.out, "-o")
    _log(f"{PROG}: training the digits classifier (seed {args.seed}, {args.epochs} epochs, 1 thread)")
    model, info = train_classifier(epochs=args.epochs, seed=args.seed)
    path = save_classifier(model, info, args.out, command)
    print(
        f"{PROG}: held-out accuracy {pct(info['heldout_accuracy'])} "
        f"({info['heldout_correct']}/{info['heldout_n']}) in {info['train_seconds']:.1f} s; "
        f"wrote {path} and {path.with_suffix('.json')}"
    )
    return 0


def cmd_eval(args, command: str) -> int:
    _check_opts(args)
    for c in args.checkpoints:
        if os.path.isdir(c):
            raise UsageError(f"checkpoint {c!r} is a directory, not a checkpoint file")
        if os.path.exists(c) and not os.path.isfile(c):
            raise UsageError(f"checkpoint {c!r} is not a regular file")
        if not os.path.isfile(c):
            raise UsageError(f"checkpoint {c!r} does not exist")
    _check_output(args.json, "--json")
    _check_output(args.grid_dir, "--grid-dir", directory=True)
    rows = [{"checkpoint": c} for c in args.checkpoints]
    grid_dir = Path(args.grid_dir) if args.grid_dir else None
    ref, results = run_rows(rows, args, grid_dir, [_checkpoint_slug(c) for c in args.checkpoints])
    print_table(results, ref.info)
    if args.json:
        write_text_atomic(Path(args.json), json.dumps(_report(args, ref, results, command), indent=1) + "\n")
    return 0


def cmd_table(args, command: str) -> int:
    _check_opts(args)
    rows = _read_spec(args.spec)
    missing = [r["checkpoint"] for r in rows if not os.path.isfile(r["checkpoint"])]
    if missing and not args.skip_missing:
        raise UsageError(f"checkpoint(s) not found: {', '.join(missing)} (or give --skip-missing)")
    rows = [dict(r, missing=r["checkpoint"] in missing) for r in rows]
    _check_output(args.out, "--out")
    _check_output(args.json, "--json")
    _check_output(args.grid_dir, "--grid-dir", directory=True)
    out = Path(args.out)
    grid_dir = Path(args.grid_dir) if args.grid_dir else out.parent / "quality"
    slugs = [_slug(r.get("label") or _checkpoint_slug(r["checkpoint"])) for r in rows]
    ref, results = run_rows(rows, args, grid_dir, slugs)
    report = _report(args, ref, results, command)
    write_quality_doc(out, generated_section(report, out))
    json_path = Path(args.json) if args.json else out.with_suffix(".json")
    write_text_atomic(json_path, json.dumps(report, indent=1) + "\n")
    print_table(results, ref.info)
    _log(f"{PROG}: wrote {out}, {json_path} and the grids in {grid_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse printed its message (bad option: 2; --help: 0)
        return int(e.code) if isinstance(e.code, int) else 2
    command = "python -m robuq.evaluate " + shlex.join(argv)
    try:
        if args.cmd == "train-classifier":
            return cmd_train_classifier(args, command)
        if args.cmd == "eval":
            return cmd_eval(args, command)
        return cmd_table(args, command)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

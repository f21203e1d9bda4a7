"""robuq-bench: the RobuQ engine against PyTorch fp32 and onnxruntime (fp32 and int8 dynamic quantization) on
this machine, in one run.

  robuq-bench [--models S/2,B/2,XL/2] [--configs W1.58A2,W1.58A3,W1.58A4,AMPN] [--quick]
              [--json PATH] [--png PATH] [--readme README.md] [--workdir DIR]
  robuq-bench --from-json PATH --readme README.md [--png PATH]   (regenerate the README section and chart)

Measured, each in its own subprocess (so every peak RSS is that runtime's alone):
  1. instruction ceilings per core and on all cores: fp32 FMA, int8 vpmaddubsw, vpshufb table lookups;
  2. the block linears of each model (qkv, proj, fc1, fc2) at T = 512 tokens: robuq._C.QLinear (W1.58, full
     Hadamard, gauss clipping; A2 and A4) against torch.matmul fp32, multiply-adds per second;
  3. a whole forward at batch 2 (one CFG step) of each model: the engine on random .rq files
     (robuq-export --random, W1.58A2 / A3 / A4 / AMPN, rank --rank) against PyTorch fp32 eager,
     onnxruntime fp32 and onnxruntime int8 (quantize_dynamic of the fp32 ONNX export of the same weights);
  4. peak resident memory (VmHWM) of each, model file sizes, and 1 thread against all threads.
Warm-up runs first, then repeats; times are medians. Model files are cached in --workdir.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from robuq.cli_paths import output_path_problem

from . import report

MODELS = ("DiT-S/2", "DiT-B/2", "DiT-XL/2")
CONFIGS = ("W1.58A2", "W1.58A3", "W1.58A4", "AMPN")
RUNTIMES = ("torch", "ort", "ort-int8")


def model_name(text: str) -> str:
    text = text.strip()
    return text if text.startswith("DiT-") else f"DiT-{text}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="robuq-bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--models", default=",".join(m[4:] for m in MODELS), help="comma list (default S/2,B/2,XL/2)"
    )
    p.add_argument(
        "--configs", default=",".join(CONFIGS), help="engine configs (default all: " + ",".join(CONFIGS) + ")"
    )
    p.add_argument("--baselines", default=",".join(RUNTIMES), help="torch,ort,ort-int8 (default all)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="1 warm-up + 3 repeats, short ceilings, one-thread runs only "
        "for the engine's first config and PyTorch",
    )
    p.add_argument("--warmup", type=int, help="warm-up runs (default 2, --quick 1)")
    p.add_argument("--repeats", type=int, help="timed runs, median reported (default 5, --quick 3)")
    p.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)), help="'all threads' (default: cores)"
    )
    p.add_argument("--tokens", type=int, default=512, help="tokens of the block-linear runs (default 512)")
    p.add_argument("--rank", type=int, default=8, help="low-rank branch of the random .rq models (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip", default="", help="comma list of parts to skip: ceilings,linears,forward")
    p.add_argument(
        "--workdir",
        default=os.environ.get("ROBUQ_BENCH_DIR", str(Path.home() / ".cache" / "robuq-bench")),
        help="model files (.rq, .onnx) are written and reused here",
    )
    p.add_argument("--json", help="write all results here")
    p.add_argument("--png", help="bar chart of the whole-forward times (PIL)")
    p.add_argument("--readme", help="rewrite this file's performance section (between robuq-bench markers)")
    p.add_argument(
        "--from-json", help="no measurements: render the table / README section / chart from this JSON"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    return p


# -------------------------------------------------------------------------------------------- helpers
class Runner:
    def __init__(self, quiet: bool):
        self.quiet = quiet

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def worker(self, spec: dict, threads: int = 1) -> dict:
        """Runs robuq.bench.worker in a fresh process with OMP_NUM_THREADS = threads; its JSON result."""
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        r = subprocess.run(
            [sys.executable, "-m", "robuq.bench.worker", json.dumps(spec)],
            env=env,
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            raise RuntimeError(f"benchmark worker failed ({spec['kind']}): {r.stderr.strip()[-2000:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])


def machine_info() -> dict:
    from robuq import _C, __version__

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "features": [k for k, v in _C.cpu_features().items() if v],
        "tier": _C.active_tier(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "robuq": __version__,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }
    for mod in ("numpy", "torch", "onnxruntime"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    try:
        root = Path(__file__).resolve().parent.parent
        info["git"] = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info["git"] = None
    return info


def rq_file(run: Runner, workdir: Path, model: str, config: str, rank: int, seed: int) -> Path:
    """The random .rq of a model and engine config, exported once (robuq-export --random)."""
    tag = config.replace(".", "")
    path = workdir / f"{model.replace('/', '_')}-{tag}-r{rank}-s{seed}.rq"
    if not path.exists():
        bits = "W1.58A2" if config == "AMPN" else config
        cmd = [
            sys.executable,
            "-m",
            "robuq.exporter.cli",
            "--random",
            model,
            "--bits",
            bits,
            "--rank",
            str(rank),
            "--seed",
            str(seed),
            "-o",
            str(path),
            "-q",
        ]
        if config == "AMPN":
            cmd.append("--ampn")
        run.log(f"export {path.name}")
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"robuq-export failed: {r.stderr.strip()[-2000:]}")
    return path


def onnx_files(
    run: Runner, workdir: Path, model: str, seed: int, need_int8: bool
) -> tuple[Path, Path | None]:
    base = workdir / f"{model.replace('/', '_')}-fp32-s{seed}.onnx"
    if not base.exists():
        run.log(f"ONNX export {base.name}")
        run.worker({"kind": "export-onnx", "model": model, "seed": seed, "path": str(base)})
    int8 = None
    if need_int8:
        int8 = workdir / f"{model.replace('/', '_')}-int8-s{seed}.onnx"
        if not int8.exists():
            run.log(f"ONNX int8 dynamic quantization {int8.name}")
            run.worker({"kind": "quantize-onnx", "src": str(base), "dst": str(int8)})
    return base, int8


def onnx_size_mb(path: Path) -> float:
    """The graph file plus its external data files (large models), MB."""
    total = path.stat().st_size
    try:
        import onnx

        m = onnx.load(str(path), load_external_data=False)
        locs = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
        total += sum((path.parent / loc).stat().st_size for loc in locs)
    except Exception:  # noqa: BLE001 - the size is informative only
        pass
    return total / 1e6


# ----------------------------------------------------------------------------------------------- parts
def measure(args) -> dict:
    run = Runner(args.quiet)
    models = [model_name(m) for m in args.models.split(",") if m.strip()]
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 5)
    threads_all = args.threads
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "format": "robuq-bench",
        "version": 1,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "load_before": list(os.getloadavg()),
        "settings": {
            "models": models,
            "configs": configs,
            "baselines": baselines,
            "warmup": warmup,
            "repeats": repeats,
            "threads": threads_all,
            "tokens": args.tokens,
            "rank": args.rank,
            "seed": args.seed,
            "quick": args.quick,
            "command": "robuq-bench " + " ".join(sys.argv[1:])
            if sys.argv and sys.argv[0].endswith("robuq-bench")
            else None,
        },
        "ceilings": [],
        "linears": [],
        "forward": [],
    }
    if "ceilings" not in skip:
        run.log("instruction ceilings")
        results["ceilings"] = run.worker(
            {"kind": "ceilings", "threads": threads_all, "seconds": 0.1 if args.quick else 0.3}, threads_all
        )["ceilings"]
    # the engine on its default tier and, on an AVX-512 machine, on the avx2 tier too (one table for both)
    tier = results["machine"]["tier"]
    tiers = [tier] + (["avx2"] if tier == "avx512" else [])
    if "linears" not in skip:
        bits = [2] if args.quick else [2, 3, 4]
        for threads in sorted({1, threads_all}):
            for side, tr in [("robuq", t) for t in tiers] + [("torch", None)]:
                run.log(f"block linears: {side}{' ' + tr if tr else ''}, {threads} thread(s)")
                spec = {
                    "kind": "linears",
                    "side": side,
                    "tier": tr,
                    "models": models,
                    "tokens": args.tokens,
                    "bits": bits,
                    "threads": threads,
                    "warmup": warmup,
                    "repeats": repeats,
                }
                results["linears"] += run.worker(spec, threads)["linears"]
    if "forward" not in skip:
        for model in models:
            rq = {c: rq_file(run, workdir, model, c, args.rank, args.seed) for c in configs}
            fp32 = int8 = None
            if "ort" in baselines or "ort-int8" in baselines:
                fp32, int8 = onnx_files(run, workdir, model, args.seed, "ort-int8" in baselines)
            from robuq.models import CONFIGS as DIT_CONFIGS
            from robuq.models import DiT, DiTConfig

            cfg = DiTConfig(**DIT_CONFIGS[model])
            inputs = {
                "in_channels": cfg.in_channels,
                "input_size": cfg.input_size,
                "num_classes": cfg.num_classes,
            }
            jobs = []  # (runtime, config, path, file size MB, tier)
            for c in configs:
                for tr in tiers:  # a forced lower tier's rows are named "<config> @<tier>"
                    name = c if tr == tier else f"{c} @{tr}"
                    jobs.append(("robuq", name, rq[c], rq[c].stat().st_size / 1e6, tr))
            if "torch" in baselines:
                import torch

                with torch.device("meta"):
                    n_params = sum(p.numel() for p in DiT(cfg).parameters())
                jobs.append(("torch", "fp32", None, n_params * 4 / 1e6, None))
            if "ort" in baselines:
                jobs.append(("ort", "fp32", fp32, onnx_size_mb(fp32), None))
            if "ort-int8" in baselines:
                jobs.append(("ort", "int8", int8, onnx_size_mb(int8), None))
            for runtime, config, path, size, tr in jobs:
                one_thread = (
                    not args.quick or (runtime == "robuq" and config == configs[0]) or runtime == "torch"
                )
                for threads in sorted({threads_all} | ({1} if one_thread else set())):
                    run.log(f"forward {model} {runtime} {config}, {threads} thread(s)")
                    spec = {
                        "kind": "forward",
                        "runtime": runtime,
                        "tier": tr,
                        "model": model,
                        "threads": threads,
                        "warmup": warmup,
                        "repeats": repeats,
                        "seed": args.seed,
                        "inputs": inputs,
                        "path": str(path) if path else None,
                    }
                    r = run.worker(spec, threads)
                    results["forward"].append(
                        {
                            "model": model,
                            "runtime": runtime,
                            "config": config,
                            "threads": threads,
                            "file_mb": size,
                            **r,
                        }
                    )
    results["load_after"] = list(os.getloadavg())
    return results


class BenchUsageError(Exception):
    """A bad command line: one line on stderr, exit status 2, before anything is measured or written."""


def _check_output(path: str | None, what: str, directory: bool = False) -> None:
    problem = output_path_problem(path, what, directory)
    if problem:
        raise BenchUsageError(problem)


def _check_args(args) -> dict | None:
    """Validates the command line; returns the results of --from-json (None when measuring)."""
    for name, low in (("warmup", 0), ("repeats", 1), ("threads", 1), ("tokens", 1), ("rank", 0)):
        v = getattr(args, name)
        if v is not None and v < low:
            raise BenchUsageError(f"--{name} must be >= {low}, got {v}")
    for what in ("json", "png", "readme"):
        _check_output(getattr(args, what), f"--{what}")
    if not args.from_json:
        _check_output(args.workdir, "--workdir", directory=True)
        return None
    src = Path(args.from_json)
    if src.is_dir():
        raise BenchUsageError(f"--from-json {src}: is a directory")
    try:
        results = json.loads(src.read_text())
    except OSError as e:
        raise BenchUsageError(f"--from-json {src}: {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BenchUsageError(f"--from-json {src}: not JSON ({e})") from None
    if not isinstance(results, dict) or results.get("format") != "robuq-bench":
        raise BenchUsageError(f"--from-json {src}: not a robuq-bench result file (no format 'robuq-bench')")
    return results


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        loaded = _check_args(args)
    except BenchUsageError as e:
        print(f"robuq-bench: error: {e}", file=sys.stderr)
        return 2
    if loaded is not None:
        results = loaded
    else:
        results = measure(args)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    print(report.text_table(results))
    if args.png:
        report.chart(results, args.png)
    if args.readme:
        report.update_readme(args.readme, results, png=args.png, json_path=args.json or args.from_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

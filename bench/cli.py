"""robuq-bench: the RobuQ engine against the runtimes a CPU user would pick instead (PyTorch, onnxruntime,
OpenVINO; float and int8) on this machine, in one run.

  robuq-bench [--models S/2,B/2,XL/2] [--configs W1.58A2,W1.58A3,W1.58A4,AMPN] [--quick]
              [--json PATH] [--png PATH] [--readme README.md] [--workdir DIR]
  robuq-bench --from-json PATH --readme README.md [--png PATH]   (regenerate the README section and chart)

Measured, each in its own subprocess (so every peak RSS is that runtime's alone):
  1. instruction ceilings per core and on all cores: fp32 FMA, int8 vpmaddubsw, vpshufb table lookups;
  2. the block linears of each model (qkv, proj, fc1, fc2) at T = 512 tokens: robuq._C.QLinear (W1.58, full
     Hadamard, gauss clipping; A2 and A4) against torch.matmul fp32, multiply-adds per second;
  3. a whole forward at batch 2 (one CFG step) of each model: the engine on random .rq files
     (robuq-export --random, W1.58A2 / A3 / A4 / AMPN, rank --rank) on its kernel tier (and, on an AVX-512
     machine, the forced avx2 tier too) against, on the same random weights: PyTorch fp32 and bf16 (bf16
     only where the CPU has AVX512_BF16) eager; onnxruntime fp32, int8 dynamic (quantize_dynamic) and int8
     static (QDQ, per-channel weights, u8 activations with MinMax ranges from --calib random inputs) of our
     ONNX export; OpenVINO (2024+) on the same ONNX at its default precision (bf16 where the CPU has it), at
     f32, and int8 from NNCF post-training quantization (--calib random inputs);
  4. peak resident memory (VmHWM) of each, model file sizes, and 1 thread against all threads.
Warm-up runs first, then repeats; times are medians (min and max beside them). Model files, ONNX exports,
quantized models and OpenVINO IRs are cached in --workdir. A baseline whose package is missing is skipped
and the results say why (`pip install robuq[bench]` installs them all).
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
# baseline name -> (runtime, config) of its rows
BASELINES = {
    "torch": ("torch", "fp32"),
    "torch-bf16": ("torch", "bf16"),
    "ort": ("ort", "fp32"),
    "ort-int8": ("ort", "int8"),
    "ort-int8-static": ("ort", "int8-static"),
    "ov": ("ov", "default"),
    "ov-f32": ("ov", "f32"),
    "ov-int8": ("ov", "int8"),
}
RUNTIMES = tuple(BASELINES)


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
    p.add_argument(
        "--baselines", default=",".join(RUNTIMES), help=f"comma list of {','.join(RUNTIMES)} (default all)"
    )
    p.add_argument(
        "--tiers",
        help="engine kernel tiers to run (default: the active tier and the vector tiers below it: amx, "
        "avx512 and avx2 on an AMX CPU, avx512 and avx2 on an AVX-512 one)",
    )
    p.add_argument(
        "--calib", type=int, default=8, help="random calibration inputs of the static int8 baselines"
    )
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
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "features": [k for k, v in _C.cpu_features().items() if v],
        # the vector features that decide kernel tiers here and in the peers
        "vector": [f for f in VECTOR_FLAGS if f in flags],
        "tier": _C.active_tier(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "robuq": __version__,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }
    for mod in ("numpy", "torch", "onnxruntime", "openvino", "nncf"):
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


VECTOR_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512vbmi",
    "avx512_vnni",
    "avx512_bf16",
    "amx_int8",
    "amx_bf16",
)


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
    """The fp32 ONNX export of a model's random weights and (need_int8) its dynamic int8 quantization."""
    base = baseline_file(run, workdir, model, seed, "ort", None)
    return base, baseline_file(run, workdir, model, seed, "ort-int8", None) if need_int8 else None


def baseline_file(
    run: Runner, workdir: Path, model: str, seed: int, baseline: str, inputs: dict | None, calib: int = 8
) -> Path | None:
    """The model file a baseline runs (made once and cached in workdir): the fp32 ONNX export for "ort",
    its int8 versions for "ort-int8" / "ort-int8-static", the OpenVINO IR of it for "ov" / "ov-f32", the
    NNCF int8 IR for "ov-int8"; None for PyTorch (weights are made in the worker)."""
    tag = model.replace("/", "_")
    if baseline in ("torch", "torch-bf16"):
        return None
    base = workdir / f"{tag}-fp32-s{seed}.onnx"
    if not base.exists():
        run.log(f"ONNX export {base.name}")
        run.worker({"kind": "export-onnx", "model": model, "seed": seed, "path": str(base)})
    if baseline == "ort":
        return base
    big = (workdir / (base.name + ".data")).exists()
    if baseline == "ort-int8":
        dst = workdir / f"{tag}-int8-s{seed}.onnx"
        if not dst.exists():
            run.log(f"ONNX int8 dynamic quantization {dst.name}")
            run.worker({"kind": "quantize-onnx", "src": str(base), "dst": str(dst)})
        return dst
    if baseline == "ort-int8-static":
        dst = workdir / f"{tag}-int8qdq-c{calib}-s{seed}.onnx"
        if not dst.exists():
            run.log(f"ONNX int8 static quantization (QDQ, {calib} calibration inputs) {dst.name}")
            spec = {"kind": "quantize-onnx-static", "src": str(base), "dst": str(dst), "inputs": inputs}
            run.worker({**spec, "calib": calib, "external": big})
        return dst
    ir = workdir / f"{tag}-fp32-s{seed}.xml"
    if not ir.exists():
        run.log(f"OpenVINO IR {ir.name}")
        run.worker({"kind": "ov-convert", "src": str(base), "dst": str(ir)})
    if baseline in ("ov", "ov-f32"):
        return ir
    if baseline == "ov-int8":
        dst = workdir / f"{tag}-int8nncf-c{calib}-s{seed}.xml"
        if not dst.exists():
            run.log(f"NNCF int8 post-training quantization ({calib} calibration inputs) {dst.name}")
            spec = {"kind": "ov-quantize", "src": str(ir), "dst": str(dst), "inputs": inputs, "calib": calib}
            run.worker(spec)
        return dst
    raise ValueError(f"unknown baseline {baseline!r}")


def baseline_unavailable(baseline: str, vector: list[str]) -> str | None:
    """Why a baseline cannot run here (a package missing, no bf16 on this CPU), or None."""
    need = {
        "torch": "torch",
        "torch-bf16": "torch",
        "ov": "openvino",
        "ov-f32": "openvino",
        "ov-int8": "nncf",
    }
    mod = need.get(baseline, "onnxruntime")
    try:
        __import__(mod)
        if baseline.startswith("ov") or baseline.startswith("ort"):
            __import__("onnx")  # the baselines start from our ONNX export
        if baseline == "ov-int8":
            __import__("openvino")
    except ImportError as e:
        return f"{e.name or mod} is not installed (pip install robuq[bench])"
    if baseline == "torch-bf16" and "avx512_bf16" not in vector:
        return "this CPU has no AVX512_BF16 (PyTorch bf16 would run emulated)"
    return None


def model_file_mb(path: Path | None) -> float:
    """A model file's size with its companions: ONNX external data, an OpenVINO IR's .bin."""
    if path is None:
        return 0.0
    if path.suffix == ".xml":
        return (path.stat().st_size + path.with_suffix(".bin").stat().st_size) / 1e6
    return onnx_size_mb(path)


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
            "calib": args.calib,
            "quick": args.quick,
            "command": "robuq-bench " + " ".join(sys.argv[1:])
            if sys.argv and sys.argv[0].endswith("robuq-bench")
            else None,
        },
        "ceilings": [],
        "linears": [],
        "forward": [],
    }
    from robuq import _C

    # the engine on its default tier and, on an AVX-512 machine, on the avx2 tier too (one table for both)
    tiers = [t.strip() for t in (args.tiers or "").split(",") if t.strip()]
    if not tiers:
        tiers = [_C.active_tier()]
        below = {"amx": ["avx512", "avx2"], "avx512": ["avx2"]}.get(tiers[0], [])
        tiers += [t for t in below if _C.tier_available(t)]
    results["settings"]["tiers"] = tiers
    if "ceilings" not in skip:
        run.log("instruction ceilings")
        results["ceilings"] = run.worker(
            {"kind": "ceilings", "threads": threads_all, "seconds": 0.1 if args.quick else 0.3}, threads_all
        )["ceilings"]
    if "linears" not in skip:
        results["linears"] = _measure_linears(run, args, models, tiers, threads_all, warmup, repeats)
    if "forward" not in skip:
        _measure_forward(run, args, results, models, configs, baselines, tiers, workdir, warmup, repeats)
    results["load_after"] = list(os.getloadavg())
    return results


def _measure_linears(run, args, models, tiers, threads_all, warmup, repeats) -> list:
    """The block linears' rows: the engine on each tier and PyTorch, on one thread and on all."""
    rows: list = []
    bits = [2] if args.quick else [2, 3, 4]
    for threads in sorted({1, threads_all}):
        for side, tier in [("robuq", t) for t in tiers] + [("torch", None)]:
            run.log(f"block linears: {side}{f' [{tier}]' if tier else ''}, {threads} thread(s)")
            spec = {
                "kind": "linears",
                "side": side,
                "tier": tier,
                "models": models,
                "tokens": args.tokens,
                "bits": bits,
                "threads": threads,
                "warmup": warmup,
                "repeats": repeats,
            }
            rows += run.worker(spec, threads)["linears"]
    return rows


def _measure_forward(run, args, results, models, configs, baselines, tiers, workdir, warmup, repeats) -> None:
    """The forward rows (results["forward"]) of the engine on each tier and config and of every runnable
    peer, and the peers skipped with the reason (results["skipped"])."""
    threads_all = args.threads
    vector = results["machine"].get("vector", [])
    results["skipped"] = []
    runnable = []
    for b in baselines:
        why = baseline_unavailable(b, vector)
        if why:
            run.log(f"skip {b}: {why}")
            results["skipped"].append({"baseline": b, "reason": why})
        else:
            runnable.append(b)
    for model in models:
        rq = {c: rq_file(run, workdir, model, c, args.rank, args.seed) for c in configs}
        from robuq.models import CONFIGS as DIT_CONFIGS
        from robuq.models import DiT, DiTConfig

        cfg = DiTConfig(**DIT_CONFIGS[model])
        inputs = {
            "in_channels": cfg.in_channels,
            "input_size": cfg.input_size,
            "num_classes": cfg.num_classes,
        }
        jobs = []  # (runtime, config, tier, path, precision, file size MB)
        for tier in tiers:
            for c in configs:
                jobs.append(("robuq", c, tier, rq[c], None, rq[c].stat().st_size / 1e6))
        for b in runnable:
            runtime, config = BASELINES[b]
            try:
                path = baseline_file(run, workdir, model, args.seed, b, inputs, args.calib)
            except RuntimeError as e:  # a peer that fails on this model: say so, keep the rest
                run.log(f"skip {b} on {model}: {e}")
                results["skipped"].append({"baseline": b, "model": model, "reason": str(e)[-500:]})
                continue
            if runtime == "torch":
                import torch

                with torch.device("meta"):
                    n_params = sum(p.numel() for p in DiT(cfg).parameters())
                size = n_params * (2 if config == "bf16" else 4) / 1e6
            else:
                size = model_file_mb(path)
            precision = {"bf16": "bf16", "f32": "f32"}.get(config)
            jobs.append((runtime, config, None, path, precision, size))
        for runtime, config, tier, path, precision, size in jobs:
            # one thread: the engine (the scaling target) and PyTorch fp32; --quick: the first config only
            one_thread = (
                runtime == "robuq" and tier == tiers[0] and (not args.quick or config == configs[0])
            ) or ((runtime, config) == ("torch", "fp32"))
            for threads in sorted({threads_all} | ({1} if one_thread else set())):
                what = f"{runtime} {config}" + (f" [{tier}]" if tier else "")
                run.log(f"forward {model} {what}, {threads} thread(s)")
                spec = {
                    "kind": "forward",
                    "runtime": runtime,
                    "model": model,
                    "threads": threads,
                    "warmup": warmup,
                    "repeats": repeats,
                    "seed": args.seed,
                    "inputs": inputs,
                    "path": str(path) if path else None,
                    "tier": tier,
                    "precision": precision,
                }
                try:
                    r = run.worker(spec, threads)
                except RuntimeError as e:
                    run.log(f"skip {what} on {model}: {e}")
                    results["skipped"].append({"baseline": what, "model": model, "reason": str(e)[-500:]})
                    continue
                row = {"model": model, "runtime": runtime, "config": config, "threads": threads}
                if tier:
                    row["tier"] = tier
                results["forward"].append({**row, "file_mb": size, **r})


class BenchUsageError(Exception):
    """A bad command line: one line on stderr, exit status 2, before anything is measured or written."""


def _check_output(path: str | None, what: str, directory: bool = False) -> None:
    problem = output_path_problem(path, what, directory)
    if problem:
        raise BenchUsageError(problem)


def _check_args(args) -> dict | None:
    """Validates the command line; returns the results of --from-json (None when measuring)."""
    from robuq import _C

    try:
        from robuq.models import CONFIGS as DIT_CONFIGS  # needs torch

        dit_models = tuple(DIT_CONFIGS)
    except ImportError:
        dit_models = MODELS

    def names(text: str | None) -> list[str]:
        return [t.strip() for t in (text or "").split(",") if t.strip()]

    for option, given, known in (
        ("--models", [model_name(m) for m in names(args.models)], dit_models),
        ("--configs", names(args.configs), CONFIGS),
        ("--baselines", names(args.baselines), RUNTIMES),
        ("--skip", names(args.skip), ("ceilings", "linears", "forward")),
        ("--tiers", names(args.tiers), ("reference", "generic", "avx2", "avx512", "amx")),
    ):
        unknown = [g for g in given if g not in known]
        if unknown:
            raise BenchUsageError(f"{option}: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    for tier in names(args.tiers):
        if not _C.tier_available(tier):
            raise BenchUsageError(f"--tiers: this CPU or build cannot run the {tier} tier")
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

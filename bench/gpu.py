"""GPU benchmark of the CUDA engine (docs/cuda.md) on a random W1.58 DiT:

1. the block linears' GEMMs at M = --tokens rows (DiT-XL/2: 1152->3456, 1152->1152, 1152->4608,
   4608->1152): the engine's ternary GEMM kernel alone and the whole layer (Hadamard + quantize, low-rank,
   GEMM) against cuBLAS bf16 (torch.matmul) and cuBLAS int8 (torch._int_mm), in tera-ops per second;
2. a whole DiT forward at each --batches size (batch 2 = one CFG step) on the engine (CUDA graph replay, and
   plain launches) against PyTorch bf16 eager, torch.compile (with --compile) and TensorRT fp16 from our ONNX
   export where ``tensorrt`` is importable; with the engine's per-part times (quantize, low-rank, GEMM,
   attention, norms) from one profiled forward.

  python -m robuq.bench.gpu [--model XL/2] [--bits W1.58A2] [--rank 8] [--batches 2,32] [--tokens 512]
                            [--compile] [--gemm-variants] [--warmup 5] [--repeats 20]
                            [--workdir DIR] [--json PATH] [--no-trt] [-q]

Times are device times (CUDA events around back-to-back device work, inputs already on the device), medians
of --repeats runs after --warmup runs. Without a usable GPU, or in a build without the CUDA backend, it
prints one line saying so and why, and exits 0 (nothing is measured, nothing is written).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from robuq import _C

from .cli import Runner, model_name, onnx_files, rq_file


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m robuq.bench.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="XL/2", help="DiT config (default XL/2)")
    p.add_argument("--bits", default="W1.58A2", help="engine config (default W1.58A2)")
    p.add_argument("--rank", type=int, default=8, help="low-rank branch of the random .rq (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--workdir", default=str(Path.home() / ".cache" / "robuq-bench"))
    p.add_argument("--json", help="write the results here")
    p.add_argument("--no-trt", dest="trt", action="store_false", help="skip TensorRT")
    p.add_argument("--batches", default="2,32", help="forward batch sizes (default 2,32; 2 = one CFG step)")
    p.add_argument("--tokens", type=int, default=512, help="rows of the GEMM measurements (default 512)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (minutes of compilation)")
    p.add_argument("--gemm-variants", action="store_true", help="time every GEMM kernel variant")
    p.add_argument("--skip", default="", help="comma list of parts to skip: gemm,forward")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def skip_reason() -> str | None:
    """Why the GPU benchmark cannot run here, or None."""
    if not _C.cuda_compiled():
        return "robuq was built without the CUDA backend (nvcc not found at build time)"
    if not _C.cuda_available():
        return _C.cuda_unavailable_reason()
    return None


GEMM_LAYERS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


def median_ms(fn, warmup: int, repeats: int, inner: int = 1, graph: bool = False) -> float:
    """Median over `repeats` of the device time of `inner` back-to-back calls of fn, per call. graph: the
    `inner` calls captured once in a CUDA graph and replayed, so that Python's launch cost (~10 us a call,
    more than a small GEMM takes) stays out of the device time."""
    import torch

    for _ in range(warmup):
        fn()
    if graph:
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(inner):
                fn()
        fn = g.replay
        inner_calls, inner = inner, 1
    else:
        inner_calls = inner
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(inner):
            fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / inner_calls)
    return statistics.median(times)


def gemm_table(eng, tokens: int, warmup: int, repeats: int, variants: bool, log) -> list[dict]:
    """Per block linear of block 0: engine GEMM alone, engine layer, cuBLAS bf16 and int8."""
    import torch

    rows = []
    for short in GEMM_LAYERS:
        name = f"blocks.0.{short}"
        layer = eng.info["linears"][name]
        k, n, m = layer["in_features"], layer["out_features"], tokens
        ops = 2.0 * m * n * k
        inner = 20
        row = {"layer": short, "M": m, "K": k, "N": n}
        e = eng._engine
        e.time_linear(name, m, 3, True)
        row["robuq_gemm_us"] = 1e3 * statistics.median(
            e.time_linear(name, m, inner, True) for _ in range(repeats)
        )
        row["robuq_layer_us"] = 1e3 * statistics.median(
            e.time_linear(name, m, inner, False) for _ in range(repeats)
        )
        if variants:
            row["variants_us"] = {}
            for v in range(1, _C.CUDA_GEMM_VARIANTS + 1):
                _C.cuda_set_gemm_variant(v)
                try:
                    e.time_linear(name, m, 3, True)
                    row["variants_us"][v] = 1e3 * statistics.median(
                        e.time_linear(name, m, inner, True) for _ in range(repeats)
                    )
                finally:
                    _C.cuda_set_gemm_variant(0)
        g = torch.Generator(device="cuda").manual_seed(k + n)
        a16 = torch.randn(m, k, device="cuda", generator=g, dtype=torch.bfloat16)
        w16 = torch.randn(k, n, device="cuda", generator=g, dtype=torch.bfloat16)
        row["bf16_us"] = 1e3 * median_ms(
            lambda a16=a16, w16=w16: torch.matmul(a16, w16), warmup, repeats, inner, graph=True
        )
        a8 = torch.randint(-127, 128, (m, k), device="cuda", dtype=torch.int8, generator=g)
        w8 = torch.randint(-127, 128, (k, n), device="cuda", dtype=torch.int8, generator=g)
        try:
            row["int8_us"] = 1e3 * median_ms(
                lambda a8=a8, w8=w8: torch._int_mm(a8, w8), warmup, repeats, inner, graph=True
            )
        except RuntimeError as err:
            row["int8_skipped"] = str(err)[:200]
        for key in ("robuq_gemm_us", "robuq_layer_us", "bf16_us", "int8_us"):
            if key in row:
                row[key.replace("_us", "_tops")] = ops / (row[key] * 1e-6) / 1e12
        log(
            f"GEMM {short} {m}x{k}->{n}: "
            + ", ".join(
                f"{k2} {v:.1f}" for k2, v in row.items() if k2.endswith("_us") and not isinstance(v, dict)
            )
        )
        rows.append(row)
    return rows


def step_inputs(c: dict, n: int):
    """x, t, y of a forward at batch n (classes and the null class alternating, as in CFG)."""
    import numpy as np

    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, c["in_channels"], c["input_size"], c["input_size"])).astype(np.float32)
    t = np.full(n, 500, np.int64)
    y = np.array([207 if i % 2 == 0 else c["num_classes"] for i in range(n)], np.int64)
    return x, t, y


def time_robuq(eng, n: int, warmup: int, repeats: int, variants: list[int] | None = None) -> dict:
    x, t, y = step_inputs(eng.info["model_config"], n)
    e = eng._engine
    res = {}
    if variants:  # the whole forward with each GEMM kernel variant forced (graphs on)
        res["ms_by_variant"] = {}
        for v in variants:
            _C.cuda_set_gemm_variant(v)
            try:
                eng.forward(x, t, y)  # re-captures the graph (the variant is read at capture)
                e.set_graphs(False)
                e.set_graphs(True)
                eng.forward(x, t, y)
                res["ms_by_variant"][v] = statistics.median(
                    e.time_forward(n, 5) for _ in range(max(3, repeats // 2))
                )
            finally:
                _C.cuda_set_gemm_variant(0)
        e.set_graphs(False)
    for graphs in (True, False):
        e.set_graphs(graphs)
        for _ in range(warmup):
            eng.forward(x, t, y)
        ms = [e.time_forward(n, 5) for _ in range(repeats)]
        res["ms" if graphs else "ms_no_graphs"] = statistics.median(ms)
    e.set_graphs(True)
    res["graph_status"] = e.graph_status or "ok"
    _C.cuda_set_lowrank_fused(True)  # the fused low-rank pass (default off until measured)
    try:
        e.set_graphs(False)
        e.set_graphs(True)
        eng.forward(x, t, y)
        res["ms_lowrank_fused"] = statistics.median(e.time_forward(n, 5) for _ in range(max(3, repeats // 2)))
    finally:
        _C.cuda_set_lowrank_fused(False)
        e.set_graphs(False)
        e.set_graphs(True)
    res["parts_ms"] = e.profile_forward(n)
    return res


def torch_model(model: str, seed: int):
    import torch

    from .worker import random_torch_model

    return random_torch_model(model, seed).to("cuda", torch.bfloat16).eval()


def time_torch(m, n: int, warmup: int, repeats: int, compiled: bool) -> dict:
    import torch

    c = m.config
    x, t, y = step_inputs(
        {"in_channels": c.in_channels, "input_size": c.input_size, "num_classes": c.num_classes}, n
    )
    xt = torch.from_numpy(x).to("cuda", torch.bfloat16)
    tt, yt = torch.from_numpy(t).cuda(), torch.from_numpy(y).cuda()
    fn = m
    t0 = time.time()
    if compiled:
        fn = torch.compile(m)
    with torch.inference_mode():
        ms = median_ms(lambda: fn(xt, tt, yt), warmup, repeats)
    res = {"ms": ms, "torch": torch.__version__}
    if compiled:
        res["compile_and_warmup_s"] = round(time.time() - t0, 1)
    return res


def time_tensorrt(onnx_path: Path, n: int, warmup: int, repeats: int) -> dict:
    """An fp16 TensorRT engine of the ONNX graph (explicit batch n), timed with execute_async_v3."""
    try:
        import tensorrt as trt
    except ImportError:
        return {"skipped": "tensorrt is not installed"}
    import numpy as np
    import torch

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        return {"skipped": f"TensorRT could not parse the ONNX graph: {errs[:500]}"}
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    profile = None
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        if any(d < 0 for d in inp.shape):
            profile = profile or builder.create_optimization_profile()
            fixed = tuple(n if d < 0 else d for d in inp.shape)
            profile.set_shape(inp.name, fixed, fixed, fixed)
    if profile is not None:
        config.add_optimization_profile(profile)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        return {"skipped": "TensorRT failed to build the fp16 engine"}
    engine = trt.Runtime(logger).deserialize_cuda_engine(blob)
    ctx = engine.create_execution_context()
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        shape = tuple(n if d < 0 else d for d in engine.get_tensor_shape(name))
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            ctx.set_input_shape(name, shape)
        dtype = torch.from_numpy(np.zeros(1, trt.nptype(engine.get_tensor_dtype(name)))).dtype
        buf = torch.zeros(shape, dtype=dtype, device="cuda")
        if name == "t":
            buf.fill_(500)
        ctx.set_tensor_address(name, buf.data_ptr())
    stream = torch.cuda.current_stream()
    return {
        "ms": median_ms(lambda: ctx.execute_async_v3(stream.cuda_stream), warmup, repeats),
        "tensorrt": trt.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    why = skip_reason()
    if why is not None:
        print(f"robuq GPU benchmark skipped: no usable CUDA GPU ({why})")
        return 0
    from robuq.engine import Engine

    run = Runner(args.quiet)
    model = model_name(args.model)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    skip = {p.strip() for p in args.skip.split(",") if p.strip()}
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    res: dict = {"model": model, "bits": args.bits, "rank": args.rank, "tokens": args.tokens}
    path = rq_file(run, workdir, model, args.bits, args.rank, args.seed)
    eng = Engine(path, device="cuda")
    res["device"] = eng._engine.device_name
    try:  # an idle GPU runs at a low clock (345 MHz on an H200): a second of large matrix products first
        import torch

        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        t_end = time.time() + 1.0
        while time.time() < t_end:
            a @ a
            torch.cuda.synchronize()
        del a
    except ImportError:
        pass
    res["gemm"] = []
    if "gemm" not in skip:
        try:
            import torch  # noqa: F401

            res["gemm"] = gemm_table(eng, args.tokens, args.warmup, args.repeats, args.gemm_variants, run.log)
        except ImportError:
            res["gemm_skipped"] = "torch is not installed"
    res["forward"] = {}
    tm = None
    if "forward" not in skip:
        for n in batches:
            # whole-forward times per GEMM variant at the first batch size only (minutes at batch 32)
            fv = list(range(1, _C.CUDA_GEMM_VARIANTS + 1)) if args.gemm_variants and n == batches[0] else None
            r = {"robuq": time_robuq(eng, n, args.warmup, args.repeats, fv)}
            run.log(f"forward batch {n}: robuq {r['robuq']['ms']:.3f} ms")
            try:
                tm = tm if tm is not None else torch_model(model, args.seed)
                r["torch_bf16"] = time_torch(tm, n, args.warmup, args.repeats, False)
                if args.compile:
                    r["torch_compile"] = time_torch(tm, n, args.warmup, args.repeats, True)
            except ImportError:
                r["torch_bf16"] = {"skipped": "torch is not installed"}
            if args.trt:
                try:
                    onnx_path, _ = onnx_files(run, workdir, model, args.seed, need_int8=False)
                    r["tensorrt_fp16"] = time_tensorrt(onnx_path, n, args.warmup, args.repeats)
                except Exception as e:  # a missing onnx / a failed export: report, keep the other numbers
                    r["tensorrt_fp16"] = {"skipped": f"{type(e).__name__}: {e}"[:500]}
            res["forward"][str(n)] = r

    print(report_text(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


def report_text(res: dict) -> str:
    lines = [f"{res['model']} {res['bits']} rank {res['rank']} on {res['device']}"]
    if res["gemm"]:
        lines.append(f"GEMMs at M = {res['tokens']} (us; TOPS):")
        head = (
            "layer",
            "K->N",
            "robuq gemm",
            "robuq layer",
            "cuBLAS bf16",
            "cuBLAS int8",
            "x bf16",
            "x int8",
        )
        lines.append("  {:<10} {:<10} {:>15} {:>15} {:>15} {:>15} {:>7} {:>7}".format(*head))

        def cell(r, key):
            us = r.get(f"{key}_us")
            return f"{us:7.1f} ({r[f'{key}_tops']:5.0f})" if us is not None else "-"

        for r in res["gemm"]:
            xi8 = f"{r['int8_us'] / r['robuq_gemm_us']:.2f}" if "int8_us" in r else "-"
            cells = [cell(r, k) for k in ("robuq_gemm", "robuq_layer", "bf16", "int8")]
            lines.append(
                "  {:<10} {:<10} {:>15} {:>15} {:>15} {:>15} {:>7} {:>7}".format(
                    r["layer"], f"{r['K']}->{r['N']}", *cells, f"{r['bf16_us'] / r['robuq_gemm_us']:.2f}", xi8
                )
            )
            if "variants_us" in r:
                lines.append(
                    "    variants (us): " + "  ".join(f"{v}:{t:.1f}" for v, t in r["variants_us"].items())
                )
    for n, r in res["forward"].items():
        rb = r["robuq"]
        lines.append(f"forward, batch {n}:")
        lines.append(
            f"  {'robuq CUDA engine':<22} {rb['ms']:9.3f} ms  (plain launches {rb['ms_no_graphs']:.3f} ms)"
        )
        if "ms_lowrank_fused" in rb:
            lines.append(f"  {'  low-rank fused':<22} {rb['ms_lowrank_fused']:9.3f} ms")
        for key, label in (("torch_bf16", "PyTorch bf16 eager"), ("torch_compile", "torch.compile bf16"),
                           ("tensorrt_fp16", "TensorRT fp16")):  # fmt: skip
            if key not in r:
                continue
            if "ms" in r[key]:
                lines.append(
                    f"  {label:<22} {r[key]['ms']:9.3f} ms  (robuq {r[key]['ms'] / rb['ms']:.2f}x faster)"
                )
            else:
                lines.append(f"  {label:<22} skipped: {r[key]['skipped']}")
        if "ms_by_variant" in rb:
            lines.append(
                "  robuq by GEMM variant (ms): "
                + "  ".join(f"{v}:{ms:.3f}" for v, ms in rb["ms_by_variant"].items())
            )
        parts = ", ".join(f"{k} {v:.3f}" for k, v in rb["parts_ms"].items())
        lines.append(f"  robuq parts (ms, one profiled forward): {parts}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

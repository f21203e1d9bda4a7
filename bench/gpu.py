"""GPU benchmark of the CUDA engine (docs/cuda.md): one DiT CFG step (a forward at batch 2) of a random
W1.58 model on the CUDA engine against PyTorch bf16 eager on the same GPU, and against TensorRT (an fp16
engine built from our ONNX export of the same weights) where ``tensorrt`` is importable.

  python -m robuq.bench.gpu [--model XL/2] [--bits W1.58A2] [--rank 8] [--warmup 5] [--repeats 20]
                            [--workdir DIR] [--json PATH] [--no-trt] [-q]

Times are device times per step (CUDA events around the device work, inputs already on the device for all
three; the engine's host-device copies of x and the output, 2 x 4 x 32 x 32 floats for XL/2, are left
out), medians of --repeats runs after --warmup runs. Without a usable GPU, or in a build without the CUDA
backend, it prints one line saying so and why, and exits 0 (nothing is measured, nothing is written).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
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
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def skip_reason() -> str | None:
    """Why the GPU benchmark cannot run here, or None."""
    if not _C.cuda_compiled():
        return "robuq was built without the CUDA backend (nvcc not found at build time)"
    if not _C.cuda_available():
        return _C.cuda_unavailable_reason()
    return None


def time_robuq(path: Path, warmup: int, repeats: int) -> dict:
    from robuq.engine import Engine

    from .worker import sample_inputs

    eng = Engine(path, device="cuda")
    c = eng.info["model_config"]
    x, t, y = sample_inputs(c)
    for _ in range(warmup):
        eng.forward(x, t, y)
    ms = [eng._engine.time_forward(x.shape[0], 1) for _ in range(repeats)]
    return {"ms": statistics.median(ms), "device": eng._engine.device_name}


def time_torch_bf16(model: str, seed: int, warmup: int, repeats: int) -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"skipped": f"this PyTorch ({torch.__version__}) has no CUDA device"}
    from .worker import random_torch_model, sample_inputs

    m = random_torch_model(model, seed).to("cuda", torch.bfloat16)
    c = m.config
    x, t, y = sample_inputs(
        {"in_channels": c.in_channels, "input_size": c.input_size, "num_classes": c.num_classes}
    )
    xt = torch.from_numpy(x).to("cuda", torch.bfloat16)
    tt, yt = torch.from_numpy(t).cuda(), torch.from_numpy(y).cuda()
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            m(xt, tt, yt)
            b.record()
            torch.cuda.synchronize()
            if i >= warmup:
                times.append(a.elapsed_time(b))
    return {"ms": statistics.median(times), "torch": torch.__version__}


def time_tensorrt(onnx_path: Path, warmup: int, repeats: int) -> dict:
    """An fp16 TensorRT engine of the ONNX graph (explicit batch 2), timed with execute_async_v3."""
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
            fixed = tuple(2 if d < 0 else d for d in inp.shape)
            profile.set_shape(inp.name, fixed, fixed, fixed)
    if profile is not None:
        config.add_optimization_profile(profile)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        return {"skipped": "TensorRT failed to build the fp16 engine"}
    engine = trt.Runtime(logger).deserialize_cuda_engine(blob)
    ctx = engine.create_execution_context()
    buffers = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        shape = tuple(2 if d < 0 else d for d in engine.get_tensor_shape(name))
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            ctx.set_input_shape(name, shape)
        dtype = torch.from_numpy(np.zeros(1, trt.nptype(engine.get_tensor_dtype(name)))).dtype
        buf = torch.zeros(shape, dtype=dtype, device="cuda")
        if name == "t":
            buf.fill_(500)
        buffers[name] = buf
        ctx.set_tensor_address(name, buf.data_ptr())
    stream = torch.cuda.Stream()
    times = []
    for i in range(warmup + repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(stream)
        ctx.execute_async_v3(stream.cuda_stream)
        b.record(stream)
        stream.synchronize()
        if i >= warmup:
            times.append(a.elapsed_time(b))
    return {"ms": statistics.median(times), "tensorrt": trt.__version__}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    why = skip_reason()
    if why is not None:
        print(f"robuq GPU benchmark skipped: no usable CUDA GPU ({why})")
        return 0
    run = Runner(args.quiet)
    model = model_name(args.model)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    res: dict = {"model": model, "bits": args.bits, "rank": args.rank, "batch": 2}
    res["robuq"] = time_robuq(
        rq_file(run, workdir, model, args.bits, args.rank, args.seed), args.warmup, args.repeats
    )
    try:
        res["torch_bf16"] = time_torch_bf16(model, args.seed, args.warmup, args.repeats)
    except ImportError:
        res["torch_bf16"] = {"skipped": "torch is not installed"}
    if args.trt:
        try:
            onnx_path, _ = onnx_files(run, workdir, model, args.seed, need_int8=False)
            res["tensorrt_fp16"] = time_tensorrt(onnx_path, args.warmup, args.repeats)
        except Exception as e:  # a missing onnx / a failed export: report, keep the other numbers
            res["tensorrt_fp16"] = {"skipped": f"{type(e).__name__}: {e}"[:500]}
    else:
        res["tensorrt_fp16"] = {"skipped": "--no-trt"}

    print(f"{model} {args.bits} rank {args.rank}, one CFG step (batch 2) on {res['robuq']['device']}:")
    base = res["robuq"]["ms"]
    for key, label in (
        ("robuq", "robuq CUDA engine"),
        ("torch_bf16", "PyTorch bf16 eager"),
        ("tensorrt_fp16", "TensorRT fp16"),
    ):
        r = res[key]
        if "ms" in r:
            ratio = "" if key == "robuq" else f"  (robuq {r['ms'] / base:.2f}x faster)"
            print(f"  {label:<20} {r['ms']:9.3f} ms{ratio}")
        else:
            print(f"  {label:<20} skipped: {r['skipped']}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

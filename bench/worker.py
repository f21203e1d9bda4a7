"""One benchmark measurement per process: ``python -m robuq.bench.worker '<json spec>'`` prints one JSON line.

Kinds (the spec's "kind"):
  ceilings      instruction-throughput ceilings (robuq._C.measure_ceiling), 1 thread and `threads`
  linears       block-linear shapes at T tokens: robuq._C.QLinear (side "robuq") or torch.matmul fp32
                (side "torch"), multiply-adds per second
  forward       whole forward of one runtime at batch 2 (one CFG step): "robuq" (.rq file, optional kernel
                tier), "torch" (eager, random weights, fp32 or bf16), "ort" (an ONNX file: fp32, int8
                dynamic or int8 static QDQ), "ov" (OpenVINO: an IR at its default precision, f32, or the
                NNCF-quantized int8 IR); times and peak RSS of this process
  export-onnx   the full-precision DiT (random weights, same init as the exporter's --random) -> ONNX
  quantize-onnx onnxruntime.quantization.quantize_dynamic (int8 weights, MatMulInteger) of an ONNX file
  quantize-onnx-static  onnxruntime.quantization.quantize_static: QDQ, per-channel int8 weights, int8
                activations with MinMax ranges from `calib` random inputs
  ov-convert    OpenVINO IR (.xml + .bin, fp32 weights) of an ONNX file
  ov-quantize   NNCF post-training quantization of an OpenVINO IR (int8 weights and activations, ranges from
                `calib` random inputs) -> IR
The parent sets OMP_NUM_THREADS to the thread count before starting the process.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time

import numpy as np

BATCH = 2  # one CFG step: the conditional and the unconditional half


def peak_rss_mb() -> float:
    """Peak resident memory of this process: VmHWM of its address space. (ru_maxrss is not used: on Linux it
    carries over the parent's peak across fork + exec, so every worker would report at least its parent's.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all CPUs, /proc/stat; steal counts as busy)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def timed(
    fn, warmup: int, repeats: int, max_other: float = 0.15, min_sample_s: float = 0.25
) -> tuple[list[float], list[float], int]:
    """Seconds per call of fn: `warmup` calls, then `repeats` samples, each of k back-to-back calls (k such
    that a sample lasts at least min_sample_s; 1 for slow calls). Also measures, per sample, the share of the
    machine's CPUs that other processes kept busy meanwhile (other = machine busy time - this process's CPU
    time, over wall time x CPUs). A sample during which others took more than max_other of the machine is
    taken again (a burst of other work must not decide a median), at most 2 x repeats times; the JSON keeps
    the count. Returns (seconds per call per sample, other loads, samples taken again)."""
    t0 = time.perf_counter()
    for _ in range(max(1, warmup)):
        fn()
    per_call = (time.perf_counter() - t0) / max(1, warmup)
    k = max(1, int(min_sample_s / max(per_call, 1e-9) + 0.999)) if per_call < min_sample_s else 1
    ncpu = len(os.sched_getaffinity(0))
    times, others, redone = [], [], 0
    while len(times) < repeats:
        b0, c0, t0 = busy_seconds(), time.process_time(), time.perf_counter()
        for _ in range(k):
            fn()
        dt = time.perf_counter() - t0
        other = max(0.0, (busy_seconds() - b0) - (time.process_time() - c0)) / (dt * ncpu)
        if other > max_other and redone < 2 * repeats:
            redone += 1
            time.sleep(min(2.0, 2 * dt))
            continue
        times.append(dt / k)
        others.append(other)
    return times, others, redone


def calibration_inputs(shape: dict, n: int, seed: int = 1):
    """n random (x, t, y) batches of one CFG step for the static quantizers' ranges: x ~ N(0, 1) (a noisy
    latent), t uniform over the 1000 steps, y a random class and the null class."""
    rng = np.random.default_rng(seed)
    c, s = shape["in_channels"], shape["input_size"]
    out = []
    for _ in range(n):
        x = rng.standard_normal((BATCH, c, s, s)).astype(np.float32)
        t = rng.integers(0, 1000, BATCH).astype(np.int64)
        y = np.array([int(rng.integers(0, shape["num_classes"])), shape["num_classes"]][:BATCH], np.int64)
        out.append((x, t, y))
    return out


def onnx_feed(x, t, y) -> dict:
    return {"x": x, "t": t.astype(np.float32), "y": y}


def model_config(name: str):
    from robuq.models import CONFIGS, DiTConfig

    return DiTConfig(**CONFIGS[name])


def sample_inputs(shape: dict, seed: int = 0):
    """x, t, y of one CFG step; shape: in_channels, input_size, num_classes (from the parent, so that the
    robuq and onnxruntime workers never import torch, which would count in their peak RSS)."""
    rng = np.random.default_rng(seed)
    c, s = shape["in_channels"], shape["input_size"]
    x = rng.standard_normal((BATCH, c, s, s)).astype(np.float32)
    t = np.array([500] * BATCH, np.int64)
    y = np.array([207, shape["num_classes"]][:BATCH], np.int64)  # a class and the null class
    return x, t, y


def random_torch_model(name: str, seed: int):
    """robuq.models.DiT in fp32 with the exporter's random weights (RandomWeights, no quantization)."""
    import torch

    from robuq.exporter.random_model import RandomWeights
    from robuq.models import DiT

    cfg = model_config(name)
    model = DiT(cfg).eval()
    weights = RandomWeights(cfg, None, seed)
    with torch.no_grad():
        for k, p in model.state_dict().items():  # one tensor at a time: no second copy of the model
            p.copy_(weights[k])
    return model


# ------------------------------------------------------------------------------------------------ kinds
def run_ceilings(spec: dict) -> dict:
    from robuq import _C

    out = []
    for kind in _C.ceiling_kinds():
        for threads in sorted({1, spec["threads"]}):
            out.append(
                {
                    "kind": kind,
                    "threads": threads,
                    "gops": _C.measure_ceiling(kind, threads, spec["seconds"]) / 1e9,
                }
            )
    return {"ceilings": out}


def block_linear_shapes(name: str) -> list[tuple[str, int, int]]:
    cfg = model_config(name)
    d, h = cfg.hidden_size, int(cfg.hidden_size * cfg.mlp_ratio)
    return [("attn.qkv", d, 3 * d), ("attn.proj", d, d), ("mlp.fc1", d, h), ("mlp.fc2", h, d)]


def run_linears(spec: dict) -> dict:
    tokens, threads, side = spec["tokens"], spec["threads"], spec["side"]
    tier = None
    if side == "robuq":
        from robuq import _C

        if spec.get("tier"):
            _C.set_tier(spec["tier"])
        tier = _C.active_tier()
    rng = np.random.default_rng(0)
    rows = []
    for name in spec["models"]:
        for layer, n_in, n_out in block_linear_shapes(name):
            x = rng.standard_normal((tokens, n_in)).astype(np.float32)
            for bits in spec["bits"] if side == "robuq" else [None]:
                if side == "robuq":
                    from robuq import _C
                    from robuq import quant as Q

                    w = rng.integers(-1, 2, (n_out, n_in), dtype=np.int8)
                    lin = _C.QLinear(
                        "ternary",
                        n_in,
                        _C.pack_ternary(w),
                        np.full(n_out, 0.02, np.float32),
                        w.astype(np.int32).sum(1).astype(np.int32),
                        np.zeros(n_out, np.float32),
                        act_bits=bits,
                        clip_k=Q.clip_constant("gauss", bits),
                        hadamard="full",
                    )

                    def fn(lin=lin, x=x):
                        lin.forward(x, threads)
                else:
                    import torch

                    torch.set_num_threads(threads)
                    xt = torch.from_numpy(x)
                    wt = torch.randn(n_out, n_in)

                    def fn(xt=xt, wt=wt):
                        torch.matmul(xt, wt.T)

                times, others, redone = timed(fn, spec["warmup"], spec["repeats"])
                med = statistics.median(times)
                rows.append(
                    {
                        "model": name,
                        "layer": layer,
                        "in": n_in,
                        "out": n_out,
                        "tokens": tokens,
                        "bits": bits,
                        "threads": threads,
                        "side": side,
                        "tier": tier,
                        "median_s": med,
                        "gmacs": tokens * n_in * n_out / med / 1e9,
                        "other_load": statistics.median(others),
                        "redone": redone,
                    }
                )
    return {"linears": rows}


def run_forward(spec: dict) -> dict:
    threads, runtime = spec["threads"], spec["runtime"]
    x, t, y = sample_inputs(spec["inputs"])
    t0 = time.perf_counter()
    tier = None
    if runtime == "robuq":
        import robuq
        from robuq import _C

        if spec.get("tier"):
            _C.set_tier(spec["tier"])
        tier = _C.active_tier()
        eng = robuq.Engine(spec["path"], threads=threads)

        def fn():
            eng.forward(x, t, y)
    elif runtime == "torch":
        import torch

        torch.set_num_threads(threads)
        model = random_torch_model(spec["model"], spec["seed"])
        xt, tt, yt = torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y)
        if spec.get("precision") == "bf16":
            model, xt = model.to(torch.bfloat16), xt.to(torch.bfloat16)

        def fn():
            with torch.inference_mode():
                model(xt, tt, yt)
    elif runtime == "ort":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sess = ort.InferenceSession(spec["path"], so, providers=["CPUExecutionProvider"])
        feed = onnx_feed(x, t, y)

        def fn():
            sess.run(None, feed)
    elif runtime == "ov":
        import openvino as ov

        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if spec.get("precision") == "f32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        compiled = ov.Core().compile_model(spec["path"], "CPU", config)
        request = compiled.create_infer_request()
        feed = onnx_feed(x, t, y)

        def fn():
            request.infer(feed)
    else:
        raise ValueError(f"unknown runtime {runtime!r}")
    load_s = time.perf_counter() - t0
    times, others, redone = timed(fn, spec["warmup"], spec["repeats"])
    # seconds per part of one more forward (Engine.profile: linears, hadamard_quantize, attention, ...)
    parts = eng.profile(x, t, y) if runtime == "robuq" else None
    return {
        "tier": tier,
        "profile": parts,
        "times": times,
        "min_s": min(times),
        "max_s": max(times),
        "median_s": statistics.median(times),
        "other_load": statistics.median(others),
        "redone": redone,
        "load_s": load_s,
        "peak_rss_mb": peak_rss_mb(),
    }


def run_export_onnx(spec: dict) -> dict:
    """Exports in a scratch directory (models over 2 GB come out as one external file per tensor), then writes
    `path` with all tensors in one external data file `path`.data when the model is that large."""
    import shutil
    import tempfile
    from pathlib import Path

    import onnx

    from robuq.exporter.onnx_export import export_onnx

    final = Path(spec["path"])
    model = random_torch_model(spec["model"], spec["seed"])
    with tempfile.TemporaryDirectory(dir=final.parent) as tmp:
        p = Path(tmp) / "model.onnx"
        export_onnx(model, p)
        del model
        if any(f != p for f in Path(tmp).iterdir()):  # external tensor files
            m = onnx.load(str(p))
            onnx.save_model(
                m,
                str(final),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=final.name + ".data",
                size_threshold=1024,
            )
        else:
            shutil.move(str(p), final)
    return {}


def run_quantize_onnx(spec: dict) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(spec["src"], spec["dst"], weight_type=QuantType.QInt8, use_external_data_format=False)
    return {}


def run_quantize_onnx_static(spec: dict) -> dict:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([onnx_feed(*b) for b in calibration_inputs(spec["inputs"], spec["calib"])])

        def get_next(self):
            return next(self.items, None)

    quantize_static(
        spec["src"],
        spec["dst"],
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        use_external_data_format=spec.get("external", False),
    )
    return {}


def run_ov_convert(spec: dict) -> dict:
    import openvino as ov

    model = ov.Core().read_model(spec["src"])
    ov.save_model(model, spec["dst"], compress_to_fp16=False)
    return {}


def run_ov_quantize(spec: dict) -> dict:
    import nncf
    import openvino as ov

    model = ov.Core().read_model(spec["src"])
    data = nncf.Dataset([onnx_feed(*b) for b in calibration_inputs(spec["inputs"], spec["calib"])])
    kwargs = {"subset_size": spec["calib"]}
    if spec.get("model_type") == "transformer":
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    q = nncf.quantize(model, data, **kwargs)
    ov.save_model(q, spec["dst"], compress_to_fp16=False)
    return {}


KINDS = {
    "ceilings": run_ceilings,
    "linears": run_linears,
    "forward": run_forward,
    "export-onnx": run_export_onnx,
    "quantize-onnx": run_quantize_onnx,
    "quantize-onnx-static": run_quantize_onnx_static,
    "ov-convert": run_ov_convert,
    "ov-quantize": run_ov_quantize,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(argv[0])
    result = KINDS[spec["kind"]](spec)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

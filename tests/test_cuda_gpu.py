"""The CUDA engine on a GPU against the CPU engine (docs/cuda.md): the same .rq files, the same API.

On a GPU: the fused Hadamard-quantize kernel's codes, scales and zero points equal the CPU reference bit
for bit; every linear layer (quantized: tensor-core GEMM and fused epilogue; float: one thread per output)
equals the CPU reference tier bit for bit (the same integer sums, the same float operations in the same
order; host_device_math.h); the whole forward is within relative error 1e-3 of the CPU engine (the
exp-based ops, GELU / SiLU / softmax, use host_device_math.h's exp instead of glibc's, a few ulp apart, and
the differences grow through the blocks); sampling gives the CPU engine's samples within the same bound.

Without a GPU (or in a build without the CUDA backend) the GPU tests are skipped and say why; the API
tests below check that asking for device="cuda" then fails with a clear error.
"""

from __future__ import annotations

import numpy as np
import pytest

from robuq import _C, ship
from robuq.engine import Engine, to_uint8

GPU = pytest.mark.skipif(
    not _C.cuda_available(), reason=f"no usable CUDA GPU: {_C.cuda_unavailable_reason()}"
)
ASSETS = ["digits-w158a2.rq", "digits-w158a4.rq", "digits-fp.rq"]
TINY = ["a2", "fp", "latent", "nonull", "h128", "mix"]
REL_TOL = 1e-3


@pytest.fixture
def reference_tier():
    before = _C.active_tier()
    _C.set_tier("reference")
    yield
    _C.set_tier(before)


def rel_err(a, b) -> float:
    """||a - b|| / ||b|| (a quantizer code that flips on one side moves a few outputs by a code step; the
    norm bound holds the forward as a whole, as tests/test_engine.py does)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def inputs(eng: Engine, n: int, seed: int):
    c = eng.info["model_config"]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c["in_channels"], c["input_size"], c["input_size"])).astype(np.float32)
    t = rng.integers(0, 1000, n).astype(np.int64)
    y = rng.integers(0, eng.info["label_rows"], n).astype(np.int64)
    return x, t, y


def model_paths(tiny):
    return [str(ship.ASSETS_DIR / a) for a in ASSETS] + [tiny(name).rq for name in TINY]


# ------------------------------------------------------------------------------------------- GPU tests
@pytest.mark.gpu
@GPU
def test_quantize_codes_identical(tiny):
    for path in model_paths(tiny):
        gpu = Engine(path, device="cuda")
        for name, layer in gpu.info["layers"].items():
            if layer["act_bits"] is None:
                continue
            n = layer["in_features"]
            x = (np.random.default_rng(n).standard_normal((37, n)) * 2 + 0.3).astype(np.float32)
            codes, scale, zero = gpu._engine.quantize_input(name, x)
            block = layer["hadamard_block"] if layer["hadamard"] == "block" else 0
            want = _C.hadamard_quantize(x, layer["act_bits"], layer["clip_k"], layer["hadamard"], block)
            np.testing.assert_array_equal(codes, want[0], err_msg=f"{path}: {name} codes")
            np.testing.assert_array_equal(scale.view(np.uint32), want[1].view(np.uint32), err_msg=name)
            np.testing.assert_array_equal(zero.view(np.uint32), want[2].view(np.uint32), err_msg=name)


@pytest.mark.gpu
@GPU
def test_linears_bit_identical_to_cpu_reference(tiny, reference_tier):
    for path in model_paths(tiny):
        cpu, gpu = Engine(path, threads=1), Engine(path, device="cuda")
        for name, lin in cpu.info["linears"].items():
            for rows in (70, 3):  # the tiled GEMMs and the few-row GEMV
                x = np.random.default_rng(lin["in_features"]).standard_normal((rows, lin["in_features"]))
                x = x.astype(np.float32)
                a, b = gpu.linear(name, x), cpu.linear(name, x)
                np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32), err_msg=f"{path}: {name}")


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("n", [1, 3, 8])
def test_forward_matches_cpu(tiny, reference_tier, n):
    for path in model_paths(tiny):
        cpu, gpu = Engine(path, threads=2), Engine(path, device="cuda")
        x, t, y = inputs(cpu, n, seed=n)
        err = rel_err(gpu.forward(x, t, y), cpu.forward(x, t, y))
        assert err <= REL_TOL, f"{path}: relative error {err:.2e}"


@pytest.mark.gpu
@GPU
def test_graphs_and_gemm_variants_bit_identical(tiny):
    """The forward replayed from a CUDA graph equals plain launches bit for bit, and every GEMM kernel variant
    (the general kernel, each tile shape of the fast ternary kernel) gives the same bits: integer sums are
    exact and the epilogue is per output."""
    for name in ("h128", "mix", "a2"):
        path = tiny(name).rq
        gpu = Engine(path, device="cuda")
        x, t, y = inputs(gpu, 5, seed=11)
        want = gpu.forward(x, t, y)
        np.testing.assert_array_equal(gpu.forward(x, t, y), want, err_msg=f"{name}: graph replay")
        gpu._engine.set_graphs(False)
        np.testing.assert_array_equal(gpu.forward(x, t, y), want, err_msg=f"{name}: without graphs")
        assert gpu._engine.graph_status == ""
        try:
            for v in range(1, _C.CUDA_GEMM_VARIANTS + 1):
                _C.cuda_set_gemm_variant(v)
                np.testing.assert_array_equal(gpu.forward(x, t, y), want, err_msg=f"{name}: variant {v}")
            _C.cuda_set_gemm_variant(0)
            _C.cuda_set_lowrank_fused(True)  # the low-rank pass inside the quantize kernel: the same bits
            np.testing.assert_array_equal(gpu.forward(x, t, y), want, err_msg=f"{name}: fused low-rank")
            for lin in gpu.info["linears"]:
                xr = np.random.default_rng(3).standard_normal((9, gpu.info["linears"][lin]["in_features"]))
                xr = xr.astype(np.float32)
                _C.cuda_set_lowrank_fused(False)
                a = gpu.linear(lin, xr)
                _C.cuda_set_lowrank_fused(True)
                np.testing.assert_array_equal(gpu.linear(lin, xr), a, err_msg=f"{name}: {lin} fused low-rank")
        finally:
            _C.cuda_set_gemm_variant(0)
            _C.cuda_set_lowrank_fused(False)


def psnr(a, b, peak=2.0) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize(
    ("model", "sampler", "steps", "cfg", "mode"),
    [
        ("digits-w158a2", "ddim", "ddim10", 4.0, None),
        ("digits-w158a2", "ddpm", "8", 1.0, None),
        ("latent", "ddpm", "6", 4.0, "dit"),
        ("latent", "ddim", "ddim6", 3.0, "all"),
    ],
)
def test_sampling_parity(tiny, reference_tier, model, sampler, steps, cfg, mode):
    """GPU samples against the CPU reference tier's. Samplings are reproducible per tier, not across tiers
    or devices (docs/reliability.md): a quantizer code that flips on one side changes the rest of the
    trajectory a little, and the GPU's exp differs from glibc's by a few ulp. So the bound is the CPU
    engine's own parity bound against the PyTorch reference sampler (PSNR >= 40 dB on x0 in [-1, 1]), and
    as images at most 1 % of the pixels may differ, by at most 2 levels of 255."""
    path = str(ship.ASSETS_DIR / f"{model}.rq") if model.startswith("digits") else tiny(model).rq
    cpu, gpu = Engine(path, threads=2), Engine(path, device="cuda")
    kw = dict(steps=steps, cfg_scale=cfg, seed=3, sampler=sampler, output="latent")
    if mode is not None:
        kw["cfg_mode"] = mode
    a, b = gpu.sample([1, 4, 7], **kw), cpu.sample([1, 4, 7], **kw)
    assert np.isfinite(a).all()
    # A trained A2 model's trajectory is chaotic under code flips: there the CPU's own tiers differ by as
    # much (digits A2, DDIM 10 at CFG 4: generic vs reference 22 dB; DDPM 8: 37 dB). The GPU must then stay
    # within 3 dB of the CPU tiers' own spread.
    _C.set_tier("generic")
    spread = psnr(Engine(path, threads=2).sample([1, 4, 7], **kw), b)
    _C.set_tier("reference")
    bound = min(40.0, spread - 3.0)
    assert psnr(a, b) >= bound, f"x0 PSNR {psnr(a, b):.1f} dB, CPU tiers' spread {spread:.1f} dB"
    if a.shape[1] in (1, 3) and spread >= 40:
        d = np.abs(to_uint8(a).astype(np.int16) - to_uint8(b).astype(np.int16))
        assert d.max() <= 2 and (d > 0).mean() <= 0.01, f"max {d.max()}, share {(d > 0).mean():.4f}"


@pytest.mark.gpu
@GPU
def test_gpu_errors_are_clear():
    path = str(ship.ASSETS_DIR / "digits-w158a2.rq")
    gpu = Engine(path, device="cuda")
    with pytest.raises(ValueError, match="no linear layer"):
        gpu.linear("blocks.99.attn.qkv", np.zeros((1, 8), np.float32))
    with pytest.raises(ValueError, match="out of range"):
        gpu.forward(*inputs(gpu, 1, 0)[:2], np.array([999]))
    with pytest.raises(ValueError, match="does not exist"):
        _C.CudaEngine(path, 4096)


# ------------------------------------------------------------------------------- without a GPU
@pytest.mark.skipif(
    _C.cuda_available(), reason="a GPU is present: the unavailable-device errors do not apply"
)
def test_cuda_device_unavailable_is_a_clear_error(tmp_path):
    path = str(ship.ASSETS_DIR / "digits-w158a2.rq")
    with pytest.raises(RuntimeError, match="not available: .+"):
        Engine(path, device="cuda")
    from robuq.infer import main

    out = tmp_path / "s.png"
    assert main([path, "--device", "cuda", "--steps", "2", "--no-progress", "-o", str(out)]) == 2
    assert not out.exists()


def test_device_argument_is_checked(tmp_path, capsys):
    path = str(ship.ASSETS_DIR / "digits-w158a2.rq")
    for bad in ("gpu", "cuda:x", "cuda:", 0):
        with pytest.raises(ValueError, match="device must be"):
            Engine(path, device=bad)
    assert Engine(path, threads=1, device="cpu").device == "cpu"
    from robuq.infer import main

    out = tmp_path / "s.png"
    assert main([path, "--device", "tpu", "--steps", "2", "--no-progress", "-o", str(out)]) == 2
    assert "--device must be cpu, cuda or cuda:N" in capsys.readouterr().err
    assert not out.exists()


# ------------------------------------------------------------------------------------- GPU benchmark
@pytest.mark.skipif(_C.cuda_available(), reason="a GPU is present: the benchmark runs instead of skipping")
def test_gpu_bench_skips_with_a_reason(tmp_path, capsys):
    from robuq.bench import gpu

    out = tmp_path / "gpu.json"
    assert gpu.main(["--json", str(out), "--workdir", str(tmp_path)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("robuq GPU benchmark skipped: no usable CUDA GPU (") and len(line) > 60
    assert not out.exists()


@pytest.mark.gpu
@GPU
def test_gpu_bench_runs(tmp_path, capsys):
    import json

    from robuq.bench import gpu

    out = tmp_path / "gpu.json"
    args = ["--model", "S/2", "--batches", "2", "--warmup", "1", "--repeats", "3", "-q"]
    args += ["--workdir", str(tmp_path)]
    assert gpu.main([*args, "--no-trt", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["forward"]["2"]["robuq"]["ms"] > 0 and len(res["gemm"]) == 4
    assert "robuq CUDA engine" in capsys.readouterr().out

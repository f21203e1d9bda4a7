"""The CUDA kernels' per-thread arithmetic (kernels/cuda/host_device_math.h), compiled for the host into
``robuq._C.cuda_host`` and arranged as the device kernels arrange it, against the CPU reference kernels.

This runs in every build, with or without nvcc and without a GPU: it is what verifies the CUDA backend's
arithmetic on machines that cannot run it (docs/cuda.md). Where the math is integer or the same float
operations in the same order (unpacking, Hadamard + quantization, the GEMM's fragments, the epilogue,
LayerNorm) the results must be bit-identical; exp / GELU / SiLU use host_device_math.h's own exp (no library
call, so host and device agree bit for bit with each other) and are held to measured ulp bounds.
"""

from __future__ import annotations

import numpy as np
import pytest
from rq_layout import pack_codes

from robuq import _C

if not hasattr(_C, "cuda_host"):
    pytest.skip(
        "robuq._C was built with -DROBUQ_TEST_HOOKS=OFF: no host emulation of the CUDA kernels to test",
        allow_module_level=True,
    )
H = _C.cuda_host


@pytest.fixture
def reference_tier():
    """The CPU reference tier forced for the comparison, restored afterwards."""
    before = _C.active_tier()
    _C.set_tier("reference")
    yield
    _C.set_tier(before)


def bits_of(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint32 if a.dtype == np.float32 else np.uint8)


def assert_bit_identical(a: np.ndarray, b: np.ndarray, what: str):
    assert a.shape == b.shape, what
    diff = np.flatnonzero(bits_of(a).reshape(-1) != bits_of(b).reshape(-1))
    assert diff.size == 0, f"{what}: {diff.size} of {a.size} values differ, first at {diff[0]}"


CODE_MAX = {"ternary": 1, "int4": 7, "int8": 127}


def random_codes(rng, rows, cols, fmt):
    m = CODE_MAX[fmt]
    return rng.integers(-m, m + 1, size=(rows, cols)).astype(np.int8)


def token_rows(rng, t, n):
    """Activation-like rows: per-token offset and scale, a few outliers."""
    x = rng.standard_normal((t, n)) * rng.uniform(0.2, 3.0, (t, 1)) + rng.uniform(-1, 1, (t, 1))
    x[:, rng.integers(0, n, 2)] *= 8.0
    return x.astype(np.float32)


# ----------------------------------------------------------------------------------------- weights
@pytest.mark.parametrize("fmt", ["ternary", "int4", "int8"])
@pytest.mark.parametrize("cols", [1, 3, 4, 5, 31, 32, 33, 100, 1152])
def test_unpack_exact(fmt, cols):
    rng = np.random.default_rng(cols)
    codes = random_codes(rng, 6, cols, fmt)
    got = H.unpack(pack_codes(codes, fmt), cols, fmt)
    np.testing.assert_array_equal(got, codes)


def test_unpack_ternary_every_byte():
    """All 81 bytes of valid codes through the SWAR decoder, against the reference unpacker."""
    vals = [
        a | b << 2 | c << 4 | d << 6 for a in range(3) for b in range(3) for c in range(3) for d in range(3)
    ]
    packed = np.array(vals, np.uint8).reshape(-1, 1)
    np.testing.assert_array_equal(H.unpack(packed, 4, "ternary"), _C.unpack_ternary(packed, 4))


def test_unpack_int4_every_byte():
    b = np.array([lo | hi << 4 for lo in range(16) for hi in range(16) if lo != 8 and hi != 8], np.uint8)
    got = H.unpack(b.reshape(-1, 1), 2, "int4")
    lo, hi = (b & 15).astype(np.int16), (b >> 4).astype(np.int16)
    want = np.stack([np.where(lo >= 8, lo - 16, lo), np.where(hi >= 8, hi - 16, hi)], 1)
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------- activation quantization
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("clip_k", [0.0, 1.7])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 96, 1152])
def test_quantize_rows_bit_identical(bits, clip_k, n):
    rng = np.random.default_rng(bits * 1000 + n)
    x = token_rows(rng, 9, n)
    x[0] = 0.25  # a constant row: the 1e-8 floor of the range
    got = H.quantize_rows(x, bits, clip_k)
    want = _C.quantize_tokens(x, bits, clip_k)
    for g, w, what in zip(got, want, ("codes", "scale", "zero"), strict=True):
        assert_bit_identical(g, w, what)


# (width, form, block): K = 1 (powers of two), the Paley orders K = 12, 20, 28, 36 of the DiT widths, and
# the block-diagonal form with explicit and default block sizes.
HADAMARD_CASES = [
    (64, "full", 0),
    (96, "full", 0),  # 12 * 8
    (640, "full", 0),  # 20 * 32
    (896, "full", 0),  # 28 * 32
    (1152, "full", 0),  # 36 * 32
    (4608, "full", 0),  # 36 * 128
    (1152, "block", 0),  # 128
    (1152, "block", 16),
    (384, "none", 0),
]


@pytest.mark.parametrize(("n", "form", "block"), HADAMARD_CASES)
@pytest.mark.parametrize(("bits", "clip_k"), [(2, 1.71), (4, 2.51), (8, 0.0), (3, 0.0)])
def test_hadamard_quantize_bit_identical(n, form, block, bits, clip_k):
    x = token_rows(np.random.default_rng(n + bits), 5, n)
    codes, scale, zero, rotated = H.hadamard_quantize(x, bits, clip_k, form, block)
    want = _C.hadamard_quantize(x, bits, clip_k, form, block, True)
    for g, w, what in zip(
        (codes, scale, zero, rotated), want, ("codes", "scale", "zero", "rotated"), strict=True
    ):
        assert_bit_identical(g, w, what)


def test_hadamard_rotation_only():
    x = token_rows(np.random.default_rng(5), 3, 1152)
    rotated = H.hadamard_quantize(x, 0, 0.0, "full", 0)[3]
    assert_bit_identical(rotated, _C.hadamard_transform(x, "full", 0), "rotated")


# ------------------------------------------------------------------------------------- the GEMM
@pytest.mark.parametrize("fmt", ["ternary", "int4", "int8"])
@pytest.mark.parametrize(("t", "n_in", "out"), [(1, 32, 8), (17, 37, 13), (40, 100, 70), (16, 1152, 24)])
def test_gemm_fragments_exact(fmt, t, n_in, out):
    """The mma.sync fragments as qgemm_kernel loads them (A rows, B from the packed weights, C stores),
    multiplied by an mma emulated from the PTX ISA's fragment table: exactly the integer matmul, including
    the row / column / k tails that the kernel pads."""
    rng = np.random.default_rng(t * 7 + n_in)
    codes = rng.integers(0, 256, size=(t, n_in)).astype(np.uint8)  # 8-bit codes: the full u8 range
    w = random_codes(rng, out, n_in, fmt)
    got = H.gemm(codes, pack_codes(w, fmt), n_in, fmt)
    want = codes.astype(np.int64) @ w.astype(np.int64).T
    np.testing.assert_array_equal(got.astype(np.int64), want)


@pytest.mark.parametrize(("t", "n_in", "out"), [(1, 64, 8), (37, 128, 13), (16, 1152, 24), (50, 4608, 9)])
def test_gemm_fast_fragments_exact(t, n_in, out):
    """The fast ternary GEMM (qgemm_fast_kernel): codes in the interleave16 layout, one 16-byte activation
    load and one 4-byte weight load per lane and 64-code step, unsigned weight codes with the row sum
    subtracted: exactly the integer matmul, row and column tails included, for 8-bit codes (full u8 range)."""
    rng = np.random.default_rng(t * 11 + n_in)
    codes = rng.integers(0, 256, size=(t, n_in)).astype(np.uint8)
    w = random_codes(rng, out, n_in, "ternary")
    got = H.gemm_fast(codes, pack_codes(w, "ternary"), n_in)
    want = codes.astype(np.int64) @ w.astype(np.int64).T
    np.testing.assert_array_equal(got.astype(np.int64), want)


def test_gemm_fast_refuses_other_widths():
    with pytest.raises(ValueError, match="% 64"):
        H.gemm_fast(np.zeros((2, 96), np.uint8), np.zeros((3, 24), np.uint8), 96)


# ------------------------------------------------------------------------------- the whole layer
LAYER_CASES = [
    # fmt, n_in, out, act_bits, clip, hadamard, block, rank
    ("ternary", 1152, 40, 2, "gauss", "full", 0, 4),
    ("ternary", 96, 33, 4, "gauss", "full", 0, 0),
    ("ternary", 640, 16, 3, "minmax", "block", 32, 2),
    ("int4", 96, 50, 4, "minmax", "none", 0, 0),
    ("int8", 37, 9, 8, "minmax", "none", 0, 0),
    ("ternary", 384, 20, 0, "gauss", "full", 0, 3),  # float activations
    ("int4", 1152, 12, 0, "gauss", "none", 0, 0),
]


def layer_args(fmt, n_in, out, act_bits, clip, hadamard, block, rank, seed):
    from robuq import quant as Q

    rng = np.random.default_rng(seed)
    codes = random_codes(rng, out, n_in, fmt)
    args = dict(
        weight=fmt,
        in_features=n_in,
        packed=pack_codes(codes, fmt),
        scale=rng.uniform(0.01, 0.1, out).astype(np.float32),
        wsum=codes.astype(np.int64).sum(1).astype(np.int32),
        bias=rng.standard_normal(out).astype(np.float32) * 0.1,
        act_bits=act_bits,
        clip_k=Q.clip_constant(clip, act_bits) if act_bits else 0.0,
        hadamard=hadamard,
        hadamard_block=block,
    )
    if rank:
        args["down"] = (rng.standard_normal((rank, n_in)) * 0.05).astype(np.float32)
        args["up"] = (rng.standard_normal((out, rank)) * 0.05).astype(np.float32)
    return args


@pytest.mark.parametrize("case", LAYER_CASES, ids=lambda c: "-".join(map(str, c)))
def test_qlinear_bit_identical_to_reference(reference_tier, case):
    """Hadamard + quantize, low-rank u, GEMM fragments, epilogue (float64 dequantization, low-rank, bias):
    the CUDA engine's computation equals the CPU reference tier's QLinear bit for bit."""
    args = layer_args(*case, seed=len(case[0]) + case[1])
    x = token_rows(np.random.default_rng(case[1]), 21, case[1])
    want = _C.QLinear(**args).forward(x)
    got = H.qlinear(**args, x=x)
    assert_bit_identical(got, want, "layer output")


def ulp_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in float32 units in the last place (both finite, same sign conventions)."""
    ia = a.astype(np.float32).view(np.int32).astype(np.int64)
    ib = b.astype(np.float32).view(np.int32).astype(np.int64)
    ia = np.where(ia < 0, -(ia & 0x7FFFFFFF), ia)
    ib = np.where(ib < 0, -(ib & 0x7FFFFFFF), ib)
    return np.abs(ia - ib)


def test_qlinear_gelu_epilogue(reference_tier):
    """fc1's fused GELU: the reference layer output, then GELU; equal up to the GELU's own ulp bound."""
    args = layer_args("ternary", 1152, 64, 4, "gauss", "full", 0, 0, seed=3)
    x = token_rows(np.random.default_rng(3), 8, 1152)
    plain = _C.QLinear(**args).forward(x)
    assert_bit_identical(H.qlinear(**args, x=x), plain, "layer output before GELU")
    got = H.qlinear(**args, x=x, gelu=True)
    np.testing.assert_array_equal(got, H.gelu_tanh(plain.reshape(-1)).reshape(plain.shape))


# ------------------------------------------------------------------------------------ float functions
def test_exp_ulp_bound():
    """exp_hd against float64 exp rounded to float32: at most 2 ulp over the whole normal range (measured
    maximum on this grid: see the assertion message), exact at 0, correct limits."""
    x = np.concatenate(
        [np.linspace(-87.0, 88.7, 400_001), np.random.default_rng(0).uniform(-20, 20, 100_000)]
    ).astype(np.float32)
    got = H.exp(x)
    want = np.exp(x.astype(np.float64)).astype(np.float32)
    d = ulp_diff(got, want)
    assert d.max() <= 2, f"max ulp error {d.max()} at x = {x[d.argmax()]}"
    special = H.exp(np.array([0.0, -np.inf, np.inf, -200.0, 100.0, np.nan], np.float32))
    assert special[0] == 1.0 and special[1] == 0.0 and special[3] == 0.0
    assert np.isposinf(special[2]) and np.isposinf(special[4]) and np.isnan(special[5])
    # subnormal results (below 2^-126, exp(x) for x < -87.34): one rounding of the scaled result
    sub = np.linspace(-103.0, -87.0, 20_001).astype(np.float32)
    assert ulp_diff(H.exp(sub), np.exp(sub.astype(np.float64)).astype(np.float32)).max() <= 2


def gelu64(v: np.ndarray) -> np.ndarray:
    """GELU (tanh form) in float64 as v / (1 + exp(-2u)): 0.5 v (1 + tanh u) cancels to 0 in the far tail."""
    v = v.astype(np.float64)
    u = np.sqrt(2.0 / np.pi) * (v + 0.044715 * v**3)
    return v / (1.0 + np.exp(-2.0 * u)), u


def test_gelu_silu_accuracy(reference_tier):
    """GELU and SiLU through exp_hd against float64 math, and GELU against the CPU engine's (glibc tanhf).

    Bound: float32 evaluation of u = sqrt(2/pi) (v + 0.044715 v^3) carries a relative error of about 4 ulp
    (four roundings), which exp(-2u) turns into a relative error of 2 |u| * 4 * 2^-24 of the result; plus
    about 4 ulp for exp, the addition and the division. Far in the negative tail (|u| ~ 40) that is ~1e-5
    relative, which is why the GPU's outputs are compared with the CPU engine by relative error, not bits.
    """
    x = np.linspace(-12.0, 12.0, 240_001).astype(np.float32)
    g = H.gelu_tanh(x).astype(np.float64)
    want, u = gelu64(x)
    # below the float32 normal range (x < -10.06) the tail's v * exp(2u) multiplies a subnormal exp, rounded
    # to 2^-149, by |v|: plus (|v| + 1) 2^-149 absolute
    tol = np.abs(want) * (4 * 2.0**-24 + 2 * np.abs(u) * 4 * 2.0**-24) + (np.abs(x) + 1) * 2.0**-149
    err = np.abs(g - want)
    assert (err <= tol).all(), f"GELU error {err[err > tol][:3]} at x = {x[err > tol][:3]}"
    cpu = _C.gelu_tanh(x).astype(np.float64)
    # the CPU reference's 0.5 v (1 + tanh u) loses up to |v| 2^-24 absolute to the cancellation in 1 + tanh
    assert (np.abs(cpu - g) <= 2 * tol + np.abs(x) * 2.0**-23).all()

    s = H.silu(x)
    s64 = x.astype(np.float64) / (1.0 + np.exp(-x.astype(np.float64)))
    assert ulp_diff(s, s64.astype(np.float32)).max() <= 4


def test_layernorm_modulate_bit_identical(reference_tier):
    rng = np.random.default_rng(11)
    for d in (8, 96, 1152, 13):
        x = token_rows(rng, 2 * 5, d).reshape(2, 5, d)
        shift = rng.standard_normal((2, d)).astype(np.float32)
        scale = rng.standard_normal((2, d)).astype(np.float32) * 0.1
        assert_bit_identical(
            H.layernorm_modulate(x, shift, scale), _C.layernorm_modulate(x, shift, scale), f"D = {d}"
        )


def test_build_info_is_consistent():
    info = _C.cuda_build_info()
    assert info["compiled"] == _C.cuda_compiled()
    if info["compiled"]:
        assert set(info["archs"].split(",")) >= {"80", "90"}
    if not _C.cuda_available():
        assert _C.cuda_unavailable_reason()


@pytest.mark.parametrize(("n", "t", "heads", "head_dim"), [(2, 16, 3, 32), (1, 64, 2, 24), (2, 256, 4, 72)])
def test_attention_matches_reference(reference_tier, n, t, heads, head_dim):
    """The attention kernels' arithmetic against ops::attention (reference tier). q, k, v fake quantization,
    scores, max, sums and the output are the reference's operations in its order; only exp differs (exp_hd,
    <= 2 ulp from glibc's). Float attention: each probability is then within a few ulp, and the output, a
    convex combination of v, within 1e-6 max|v|. A8 attention: the 1/255 probability grid absorbs that,
    except for a probability within a few ulp of a rounding boundary (one grid step, |v| / 255)."""
    rng = np.random.default_rng(n * t + head_dim)
    qkv = (rng.standard_normal((n * t, 3 * heads * head_dim)) * 1.5).astype(np.float32)
    vmax = float(np.abs(qkv).max())
    got = H.attention(qkv, n, heads, 0)
    assert np.abs(got.astype(np.float64) - _C.attention(qkv, n, heads, 0)).max() <= 1e-6 * vmax
    got8, want8 = H.attention(qkv, n, heads, 8), _C.attention(qkv, n, heads, 8)
    same = np.mean(got8 == want8)
    assert same >= 0.999, f"only {same:.4%} of the A8 outputs are bit-identical"
    assert np.abs(got8.astype(np.float64) - want8).max() <= 2 * vmax / 255


# ------------------------------------------------------------------------------- the sampler's device loop
@pytest.mark.parametrize(
    "sampler, eta, learn_sigma, clip, seeds",
    [
        ("ddpm", 0.0, True, False, None),
        ("ddpm", 0.0, False, True, [3, 2**64 - 1, 0]),
        ("ddim", 0.0, True, True, None),
        ("ddim", 0.7, False, False, [11, 12, 13]),
    ],
)
def test_device_sampling_loop_matches_cpu(sampler, eta, learn_sigma, clip, seeds):
    """CudaEngine::sample's loop, arranged as on the device (the noise kernel's and the update kernel's
    thread bodies from engine/sampler_step.h), against the CPU sample_loop: bit-identical on the host. An
    odd per-sample size (3 x 5 x 3 = 45 values) exercises the noise streams' unpaired last value."""
    n, c, h, w = 3, 3, 5, 3
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2 * c if learn_sigma else c, c)).astype(np.float32) * 0.3

    def model(x, t):  # a deterministic stand-in: a channel mix of x plus a timestep term
        mix = np.einsum("oc,nchw->nohw", a, x).astype(np.float32)
        return (mix + (t[:, None, None, None] / 1000.0).astype(np.float32)).astype(np.float32)

    args = (model, n, c, h, w, "ddim7" if sampler == "ddim" else "9", sampler, eta, clip, learn_sigma, 5)
    want = _C.sample_loop(*args, seeds=seeds, check_finite=False)  # the stand-in may overflow: compare anyway
    got = H.sample_loop(*args, seeds=seeds)
    assert_bit_identical(got, want, f"{sampler} eta={eta} sigma={learn_sigma} clip={clip} seeds={seeds}")
    if seeds is not None:  # a sample with its own seed equals that sample drawn alone
        one = _C.sample_loop(
            model, 1, c, h, w, args[5], sampler, eta, clip, learn_sigma, seeds[1], check_finite=False
        )
        assert_bit_identical(got[1:2], one, "per-sample stream")

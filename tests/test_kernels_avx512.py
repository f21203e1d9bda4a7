"""The avx512 tier (kernels/avx512/): its own kernels against exact references, and the tier as a whole.

* Ternary vpermb table-lookup GEMM straight from the .rq layout: exact integer sums for every bit width
  (1..6 on the AVX-512 kernel, 7..8 on the avx2 one), shapes with tails (in not a multiple of 6 or 192, out
  not a multiple of 96, T not a multiple of the 4-token tile), garbage in padding positions, and bit-identical
  results for 1 and 2 threads and for a token alone or in any batch (the dynamic split never shows).
* QLinear on the avx512 tier equals the avx2 tier bit for bit (same exact integers, same epilogue), with a
  low-rank branch, a fused GELU and 1 / 2 threads.
* Tier machinery: the default on a CPU that has the features, ROBUQ_KERNEL_TIER=avx512 and forced lower
  tiers.

Skipped, with the reason, on CPUs or builds without the avx512 tier.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from tier_cases import (
    assert_forward_matches_avx2,
    assert_fused_gelu_matches,
    assert_qlinear_matches_avx2,
    assert_shipped_samples_match_avx2,
    assert_ternary_extremes_exact,
    layernorm_case,
    packed_with_garbage_padding,
    ternary_layer,
)

from robuq import _C
from robuq import quant as Q

pytestmark = pytest.mark.skipif(
    not _C.tier_available("avx512"),
    reason="the avx512 tier needs AVX-512 F/BW/VL/VBMI/VNNI (and AVX2) in the CPU and the build",
)


def _rows(t, n, seed, kind):
    rng = np.random.default_rng(seed)
    if kind == "heavy":
        x = rng.standard_t(3, (t, n)) * rng.uniform(0.2, 3, (t, 1)) + rng.normal(0, 1, (t, 1))
    elif kind == "zeros":  # signed zeros and ties for min / max
        x = rng.choice([0.0, -0.0, 1.0, -1.0, 0.5], (t, n))
    elif kind == "extreme":  # infinities, NaN, values near the float32 limits, subnormals, codes near halves
        x = rng.normal(0, 1, (t, n))
        picks = np.array([np.inf, -np.inf, np.nan, 3.0e38, -3.0e38, 1e-40, -1e-42, 1e-30], np.float64)
        x[np.arange(t), rng.integers(0, n, t)] = picks[np.arange(t) % len(picks)]
        if n > 1:
            x[-1] = (np.arange(n) % 9) / 8.0 + 1e-7  # quotients near half-integers
            x[-2] = np.linspace(1e-38, 3e-38, n)  # a row of tiny normals and its tiny range
    else:
        x = np.full((t, n), 0.25)
    return np.ascontiguousarray(x, dtype=np.float32)


@pytest.mark.parametrize(
    "n,form,block",
    [(1152, "full", 0), (4608, "full", 0), (384, "full", 0), (640, "full", 0), (256, "full", 0)]
    + [(768, "full", 0), (3072, "full", 0), (96, "full", 0), (1152, "block", 0), (384, "block", 16)]
    + [(384, "block", 8), (1024, "block", 256), (512, "block", 64), (2048, "block", 512)],
)
@pytest.mark.parametrize("kind", ["heavy", "zeros"])
def test_hadamard_bit_identical_to_reference(n, form, block, kind):
    # "zeros": signed zeros, where x + (-y), x - y and fma(y, -1, x) must all give the reference's zero sign
    x = _rows(5, n, n + block, kind)
    got = _C.hadamard_transform(x, form, block, tier="avx512")
    np.testing.assert_array_equal(got.view(np.uint32), _C.hadamard_transform(x, form, block).view(np.uint32))


def assert_quantize_matches_reference(x):
    """Codes, scales and zero points of the avx512 quantizer equal the reference's, bit for bit, for 1..4
    and 8 bits, without and with clipping."""
    for bits in (1, 2, 3, 4, 8):
        for k in (0.0, Q.clip_constant("gauss", bits)):
            got = _C.quantize_tokens(x, bits, k, tier="avx512")
            want = _C.quantize_tokens(x, bits, k)
            for g, w in zip(got, want, strict=True):
                np.testing.assert_array_equal(np.asarray(g).view(np.uint8), np.asarray(w).view(np.uint8))


@pytest.mark.parametrize("n", [1, 7, 16, 33, 384, 1152, 4608])
@pytest.mark.parametrize("kind", ["heavy", "zeros", "const", "extreme"])
def test_quantize_bit_identical_to_reference(n, kind):
    assert_quantize_matches_reference(_rows(11, n, n, kind))  # 5 pairs (quantize_rows2) and a last row alone


def test_quantize_codes_across_scales():
    """Many rows whose ranges span 2^-30 .. 2^30, with values on and next to the code boundaries: the codes
    (and scales, zero points) equal the reference's. On Intel CPUs the avx512 quantizer divides by the scale
    as a multiply plus one fused correction (Markstein), which must give the division's codes."""
    rng = np.random.default_rng(20261206)
    t, n = 600, 96
    scale = np.exp2(rng.uniform(-30, 30, (t, 1)))
    offset = rng.normal(0, 4, (t, 1)) * scale
    x = rng.normal(0, 1, (t, n)) * scale + offset
    lo, hi = x.min(1, keepdims=True), x.max(1, keepdims=True)
    step = (hi - lo) / 15  # 4-bit code boundaries, and values a hair away from their midpoints
    k = rng.integers(0, 16, (t, n // 2))
    mid = lo + (k + 0.5) * step
    x[:, ::2] = mid * (1 + rng.choice([-1e-7, 0.0, 1e-7], (t, n // 2)))
    assert_quantize_matches_reference(np.ascontiguousarray(x, dtype=np.float32))


SHAPES = [
    (1, 1, 1),
    (5, 17, 3),
    (7, 96, 6),
    (9, 97, 193),  # one chunk past a 32-chunk decode group, one output past a 96-output block
    (13, 300, 129),
    (4, 33, 4608),
    (3, 200, 385),
    (33, 191, 1152),
    (64, 40, 1150),  # in not a multiple of 6 nor of 4
]


@pytest.mark.parametrize("t,out,n_in", SHAPES)
def test_ternary_matmul_exact_all_bits(t, out, n_in):
    rng = np.random.default_rng(t * 131 + out * 7 + n_in)
    w, p = packed_with_garbage_padding(rng, out, n_in)
    for bits in range(1, 9):
        q = rng.integers(0, 2**bits, (t, n_in), dtype=np.uint8)
        if bits <= 6:  # the extremes of the codes: the int8 / int16 overflow bounds are tight there
            q[0] = 2**bits - 1
            if t > 1:
                q[1] = 0
        want = q.astype(np.int64) @ w.astype(np.int64).T
        got = _C.ternary_matmul(q, p, n_in, bits, tier="avx512")
        np.testing.assert_array_equal(got, want)


def test_ternary_matmul_no_inputs_after_a_call_that_left_scratch():
    # in = 0: no k-block runs, so the int32 sums must still start from z * wsum = 0, not from what an
    # earlier call left in the thread's scratch
    rng = np.random.default_rng(5)
    w = rng.integers(-1, 2, (200, 300), dtype=np.int8)
    q = rng.integers(0, 4, (40, 300), dtype=np.uint8)
    _C.ternary_matmul(q, _C.pack_ternary(w), 300, 2, tier="avx512")
    got = _C.ternary_matmul(np.zeros((40, 0), np.uint8), np.zeros((200, 0), np.uint8), 0, 2, tier="avx512")
    np.testing.assert_array_equal(got, np.zeros((40, 200), np.int64))


def test_ternary_matmul_extreme_weights_and_codes():
    """All weights +1 (or -1) and all codes at the maximum: every table entry at its bound, every int8 run and
    int16 k-block sum at its extreme."""
    # two full k-blocks of 64 chunks (6 inputs each) and a partial one
    assert_ternary_extremes_exact("avx512", n_in=6 * 64 * 2 + 5, out=97, tokens=6, max_bits=6)


@pytest.mark.parametrize("bits", [2, 4, 6])
def test_ternary_matmul_thread_and_batch_invariance(bits):
    rng = np.random.default_rng(bits)
    n_in, out, t = 1152, 290, 203
    w, p = packed_with_garbage_padding(rng, out, n_in)
    q = rng.integers(0, 2**bits, (t, n_in), dtype=np.uint8)

    def mm(codes, threads):
        return _C.ternary_matmul(codes, p, n_in, bits, threads=threads, tier="avx512")

    one = mm(q, 1)
    np.testing.assert_array_equal(one, q.astype(np.int64) @ w.astype(np.int64).T)
    np.testing.assert_array_equal(mm(q, 2), one)
    np.testing.assert_array_equal(mm(q, 3), one)
    np.testing.assert_array_equal(mm(q[57:58], 2)[0], one[57])
    np.testing.assert_array_equal(mm(q[5:18], 2), one[5:18])


@pytest.mark.parametrize(
    "n_in,out,bits,rank,hadamard",
    [
        (1152, 203, 2, 8, "full"),  # K = 36, M = 32: the AVX-512 Hadamard
        (4608, 50, 3, 0, "full"),  # K = 36, M = 128
        (384, 97, 3, 0, "block"),  # block of 128
        (256, 33, 2, 0, "full"),  # a power of two (K = 1)
        (96, 37, 4, 4, "full"),  # M = 8: the avx2 Hadamard
        (384, 40, 8, 0, "full"),  # 8 bits: the avx2 GEMM
    ],
)
def test_qlinear_avx512_equals_avx2(restore_tier, n_in, out, bits, rank, hadamard):
    """Hadamard + quantize, GEMM and epilogue of the avx512 tier give the avx2 tier's bits."""
    lin = ternary_layer(n_in, out, bits, rank, n_in + out + bits, hadamard)
    x = np.random.default_rng(bits).standard_t(3, (45, n_in)).astype(np.float32)
    assert_qlinear_matches_avx2("avx512", lin, x)


@pytest.mark.parametrize("extreme", [False, True])
def test_fused_gelu_on_avx512(restore_tier, extreme):
    assert_fused_gelu_matches("avx512", extreme)


@pytest.mark.parametrize("bits", [0, 8])
@pytest.mark.parametrize(
    "t,heads,head_dim", [(64, 6, 64), (37, 4, 72), (256, 2, 72), (9, 1, 20), (11, 3, 18), (70, 2, 5)]
)
def test_attention_avx512_equals_avx2(restore_tier, bits, t, heads, head_dim):
    """The AVX-512 attention head gives the avx2 bits, for any thread count: float (bits 0) and the integer
    q k^T path (bits 8), head dims not a multiple of 4 (code padding), key counts not a multiple of 64."""
    n = 2
    rng = np.random.default_rng(t + head_dim + bits)
    qkv = rng.normal(0, 1.5, (n * t, 3 * heads * head_dim)).astype(np.float32)
    _C.set_tier("avx2")
    want = _C.attention(qkv, n, heads, bits)
    _C.set_tier("avx512")
    np.testing.assert_array_equal(_C.attention(qkv, n, heads, bits), want)
    np.testing.assert_array_equal(_C.attention(qkv, n, heads, bits, threads=2), want)


def test_layernorm_modulate_avx512_equals_avx2(restore_tier):
    """Rows in groups of 4 (interleaved float64 statistics): groups that straddle two batch items (T not a
    multiple of 4), widths with a 16-float tail, a last group of 1..3 rows; avx2 bits, any thread count."""
    rng = np.random.default_rng(8)
    for n, t, d in ((2, 5, 384), (1, 3, 77), (2, 17, 1152), (3, 1, 16), (2, 7, 20), (1, 4, 8)):
        x, sh, sc = layernorm_case(rng, n, t, d)
        _C.set_tier("avx2")
        want = _C.layernorm_modulate(x, sh, sc)
        _C.set_tier("avx512")
        np.testing.assert_array_equal(_C.layernorm_modulate(x, sh, sc), want)
        np.testing.assert_array_equal(_C.layernorm_modulate(x, sh, sc, 2), want)


@pytest.mark.parametrize("bits", [0, 8])
def test_attention_avx512_wide_scores(restore_tier, bits):
    """Scores spread far beyond exp's range (rows scaled by up to 60), so softmax vectors mix ordinary lanes
    with lanes whose exp underflows (exp512's clamped path): the avx2 bits all the same."""
    n, t, heads, head_dim = 2, 40, 3, 64
    rng = np.random.default_rng(11 + bits)
    qkv = rng.normal(0, 1.0, (n * t, 3 * heads * head_dim)).astype(np.float32)
    qkv *= rng.choice(np.array([1, 8, 60], np.float32), (n * t, 1))
    d = heads * head_dim  # qkv rows: q | k | v, head h at h * head_dim
    q = qkv[:t, :head_dim].astype(np.float64)
    k = qkv[:t, d : d + head_dim].astype(np.float64)
    s = q @ k.T / np.sqrt(head_dim)
    assert ((s.max(1, keepdims=True) - s) > 100).any(1).mean() > 0.3  # many rows reach the underflow lanes
    _C.set_tier("avx2")
    want = _C.attention(qkv, n, heads, bits)
    _C.set_tier("avx512")
    np.testing.assert_array_equal(_C.attention(qkv, n, heads, bits), want)


def test_tier_selection():
    """avx512 (or amx above it) is the default where available; the environment variable forces it or a lower
    tier."""
    features = _C.cpu_features()
    for name in ("avx512f", "avx512bw", "avx512vl", "avx512vbmi", "avx512vnni"):
        assert features[name]
    code = "from robuq import _C; print(_C.active_tier())"
    env = {k: v for k, v in os.environ.items() if k != "ROBUQ_KERNEL_TIER"}

    def run(e):
        return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, check=True)

    # the amx tier (the avx512 tier with the GEMM on AMX tiles) comes first where the CPU and OS have AMX
    assert run(env).stdout.strip() == ("amx" if _C.tier_available("amx") else "avx512")
    for forced in ("avx512", "avx2", "generic"):
        assert run({**env, "ROBUQ_KERNEL_TIER": forced}).stdout.strip() == forced


@pytest.mark.parametrize("name", ["a2", "mix", "h128", "latent"])
def test_whole_forward_avx512_equals_avx2(restore_tier, tiny, name):
    """A whole DiT forward (every layer kind, Hadamard form and bit width of the tiny models, attention A6 /
    A8, CFG batch) gives the same bits on the avx512 and avx2 tiers, for 1 and 2 threads: the property the
    docs and the README state for the tier as a whole, not only for its kernels one by one."""
    assert_forward_matches_avx2("avx512", tiny(name))


def test_shipped_model_samples_avx512_equal_avx2(restore_tier):
    """The shipped W1.58A2 digits model samples the same pixels on both tiers (DDIM, CFG)."""
    assert_shipped_samples_match_avx2("avx512")

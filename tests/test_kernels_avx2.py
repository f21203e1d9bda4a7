"""The avx2 tier's own kernels against the reference tier and exact / float64 references.

* Hadamard transform and per-token quantization: bit-identical to the reference tier (codes, scale, zero and
  the rotated rows), including widths with vector tails, signed zeros and constant rows.
* Ternary table-lookup GEMM from the .rq layout: the on-the-fly weight decoder equals the scalar repack, and
  the integer sums are exact (any padding codes, every bit width, any thread count).
* int4 (adaLN) GEMM: the avx2 QLinear equals the generic one bit for bit (same integer sums and epilogue).
* Vector exp and GELU: within a few ulp of float64; LayerNorm + modulate bit-identical to the generic tier;
  attention close to the generic tier and independent of the thread count.
"""

import math

import numpy as np
import pytest
from tier_cases import assert_ternary_extremes_exact, layernorm_case, lowrank_kw, packed_with_garbage_padding

from robuq import _C
from robuq import quant as Q

pytestmark = pytest.mark.skipif(
    not _C.tier_available("avx2"), reason="the avx2 tier needs an x86-64 CPU with AVX2, FMA and F16C"
)


@pytest.fixture
def tier():
    """Restores the active tier after a test that switches it."""
    before = _C.active_tier()
    yield
    _C.set_tier(before)


def rows(t, n, seed, kind="heavy"):
    rng = np.random.default_rng(seed)
    if kind == "heavy":
        x = rng.standard_t(3, (t, n)) * rng.uniform(0.2, 3, (t, 1)) + rng.normal(0, 1, (t, 1))
    elif kind == "zeros":  # signed zeros and ties for min / max
        x = rng.choice([0.0, -0.0, 1.0, -1.0, 0.5], (t, n))
    else:
        x = np.full((t, n), 0.25)
    return np.ascontiguousarray(x, dtype=np.float32)


def same_bits(a, b):
    np.testing.assert_array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8))


# ----------------------------------------------------------------------------- Hadamard + quantize
TRANSFORMS = [
    (1152, "full", 0),  # K = 36, M = 32
    (4608, "full", 0),  # K = 36, M = 128
    (384, "full", 0),  # K = 12
    (640, "full", 0),  # K = 20
    (896, "full", 0),  # K = 28
    (256, "full", 0),  # power of two
    (20, "full", 0),  # M = 1: the reference path
    (96, "full", 0),  # K = 12, M = 8
    (1152, "block", 0),
    (384, "block", 8),
    (384, "block", 4),  # segments below one vector: the reference path
    (66, "block", 2),
    (77, "none", 0),
    # each compile-time (K, M) of the K x K step, its run-time-M fallback, butterfly passes of 2 and 4 stages
    (768, "full", 0),  # K = 12, M = 64
    (1536, "full", 0),  # K = 12, M = 128
    (3072, "full", 0),  # K = 12, M = 256
    (6144, "full", 0),  # K = 12, M = 512: run-time M
    (576, "full", 0),  # K = 36, M = 16: run-time M
    (2304, "full", 0),  # K = 36, M = 64
    (9216, "full", 0),  # K = 36, M = 256
    (512, "full", 0),  # butterflies: in registers to h = 32, then h = 64, 128 together, then 256
    (2048, "full", 0),  # h = 64, 128 and 256, 512 together, then 1024
    (384, "block", 16),
    (384, "block", 32),
    (4608, "block", 0),  # block 512
]


@pytest.mark.parametrize("n,form,block", TRANSFORMS, ids=lambda v: str(v))
def test_hadamard_transform_bit_identical(n, form, block):
    for kind in ("heavy", "zeros"):
        x = rows(9, n, n + block, kind)
        same_bits(_C.hadamard_transform(x, form, block, tier="avx2"), _C.hadamard_transform(x, form, block))


@pytest.mark.parametrize("n", [1, 3, 7, 8, 9, 31, 33, 64, 72, 100, 1152])
@pytest.mark.parametrize("kind", ["heavy", "zeros", "constant"])
def test_quantize_bit_identical(n, kind):
    x = rows(11, n, n, kind)
    for bits in range(1, 9):
        for clip in ("minmax", "gauss"):
            k = Q.clip_constant(clip, bits)
            for got, want in zip(
                _C.quantize_tokens(x, bits, k, tier="avx2"), _C.quantize_tokens(x, bits, k), strict=True
            ):
                same_bits(got, want)


def test_min_max_keep_the_sign_of_the_first_zero():
    # minmax lo is the row minimum; with a zero minimum its sign is the first zero's (the sequential scan)
    for first in (0.0, -0.0):
        x = np.array([[1.0, first, 2.0, -first, 3.0, 0.0, -0.0, 5.0, 6.0, 7.0]], np.float32)
        _, _, zr = _C.quantize_tokens(x, 2, 0.0)
        _, _, za = _C.quantize_tokens(x, 2, 0.0, tier="avx2")
        same_bits(za, zr)


@pytest.mark.parametrize("n,form,block", TRANSFORMS[:9], ids=lambda v: str(v))  # up to (1152, block)
def test_hadamard_quantize_bit_identical_any_threads(n, form, block):
    x = rows(13, n, 2 * n + 1)
    for bits, clip in ((2, "gauss"), (3, "minmax"), (4, "gauss"), (8, "minmax")):
        k = Q.clip_constant(clip, bits)
        want = _C.hadamard_quantize(x, bits, k, form, block, return_rotated=True)
        for threads in (1, 2, 3):
            got = _C.hadamard_quantize(
                x, bits, k, form, block, return_rotated=True, tier="avx2", threads=threads
            )
            for g, w in zip(got, want, strict=True):
                same_bits(g, w)


# -------------------------------------------------------------------------------- ternary LUT GEMM
@pytest.mark.parametrize(
    "out,n_in", [(1, 1), (15, 7), (16, 64), (17, 130), (40, 1152), (300, 129), (33, 4608)]
)
def test_lut_decoder_equals_repack(out, n_in):
    w = np.random.default_rng(out * n_in).integers(-1, 2, (out, n_in), dtype=np.int8)
    p = _C.pack_ternary(w)  # padding code 1, as the repack assumes
    np.testing.assert_array_equal(
        _C.ternary_lut_indices(p, n_in, tier="avx2"), _C.ternary_lut_indices(p, n_in, tier="reference")
    )


@pytest.mark.parametrize(
    "t,out,n_in",
    [(1, 1, 1), (5, 17, 3), (7, 16, 5), (13, 300, 129), (64, 40, 1152), (100, 33, 4608), (3, 8, 515)],
)
def test_ternary_matmul_exact(t, out, n_in):
    rng = np.random.default_rng(t * 7 + out + n_in)
    w, p = packed_with_garbage_padding(rng, out, n_in)
    for bits in range(1, 9):
        q = rng.integers(0, 2**bits, (t, n_in), dtype=np.uint8)
        ref = q.astype(np.int64) @ w.astype(np.int64).T
        got = _C.ternary_matmul(q, p, n_in, bits)
        np.testing.assert_array_equal(got, ref)
        if bits in (2, 8):
            np.testing.assert_array_equal(_C.ternary_matmul(q, p, n_in, bits, threads=2), ref)
            np.testing.assert_array_equal(_C.ternary_matmul(q[-1:], p, n_in, bits, threads=2)[0], ref[-1])


def test_ternary_matmul_extreme_weights_and_codes():
    """Every table entry, int8 run and int16 k-block sum at its bound (docs in ternary_gemm_avx2.cpp), over
    two full k-blocks of <= 128 chunks (4 inputs each) and a partial one, for every code width."""
    assert_ternary_extremes_exact("avx2", n_in=4 * 128 * 2 + 4 * 5 + 3, out=17, tokens=7, max_bits=8)


# ---------------------------------------------------------------------------------- QLinear int4
def _int4_layer(n_in, out, bits, rank, seed):
    rng = np.random.default_rng(seed)
    codes = rng.integers(-7, 8, (out, n_in)).astype(np.int16)
    q = np.concatenate([codes, np.zeros((out, n_in % 2), np.int16)], axis=1) & 15
    packed = np.ascontiguousarray((q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8))
    kw = lowrank_kw(rng, rank, n_in, out)
    return _C.QLinear(
        "int4",
        n_in,
        packed,
        rng.uniform(0.01, 0.1, out).astype(np.float32),
        codes.sum(1).astype(np.int32),
        rng.normal(0, 0.1, out).astype(np.float32),
        act_bits=bits,
        clip_k=0.0,
        hadamard="none",
        **kw,
    )


@pytest.mark.parametrize("n_in,out,bits", [(1152, 6912 // 8, 4), (384, 37, 4), (33, 5, 8), (1, 3, 2)])
def test_int4_avx2_equals_generic(tier, n_in, out, bits):
    lin = _int4_layer(n_in, out, bits, 0, n_in + out)
    x = rows(7, n_in, 3)
    _C.set_tier("generic")
    want = lin.forward(x, 1)
    _C.set_tier("avx2")
    np.testing.assert_array_equal(lin.forward(x, 1), want)
    np.testing.assert_array_equal(lin.forward(x, 2), want)
    np.testing.assert_array_equal(lin.forward(x[2:3], 2)[0], want[2])


def test_lowrank_epilogue_independent_of_threads_and_batch(tier):
    _C.set_tier("avx2")
    lin = _int4_layer(384, 77, 4, 8, 5)
    x = rows(70, 384, 6)
    y1 = lin.forward(x, 1)
    np.testing.assert_array_equal(lin.forward(x, 2), y1)
    np.testing.assert_array_equal(lin.forward(x[33:40], 2), y1[33:40])


# -------------------------------------------------------------------------- vector math and ops
def test_exp_accuracy_and_special_values():
    x = np.concatenate(
        [np.linspace(-87.3, 88.7, 200001, dtype=np.float32), np.random.default_rng(0).normal(0, 3, 10001)]
    ).astype(np.float32)
    got = _C.exp_f32(x).astype(np.float64)
    ref = np.exp(x.astype(np.float64))
    assert np.max(np.abs(got - ref) / ref) < 2.5e-7  # ~2 ulp
    special = np.array([-np.inf, -1000.0, -88.0, 0.0, -0.0, 89.0, np.inf, np.nan, 1.0], np.float32)
    out = _C.exp_f32(special)
    assert out[0] == 0 and out[1] == 0 and out[2] == 0 and out[3] == 1 and out[4] == 1
    assert np.isinf(out[5]) and np.isinf(out[6]) and np.isnan(out[7])
    assert abs(out[8] - math.e) <= 2.5e-7 * math.e


def test_exp_lanes_independent_of_special_neighbours():
    """exp takes a short path for 8 in-range lanes and a clamped one when any lane of the vector is out of
    range or NaN; an ordinary lane must get the same bits either way (softmax and GELU rely on it)."""
    x = np.random.default_rng(3).uniform(-87.0, 88.5, 8 * 4096).astype(np.float32)
    want = _C.exp_f32(x)
    specials = np.array([np.nan, np.inf, -np.inf, -100.0, 95.0, -87.5, 88.8, 3e38], np.float32)
    mixed = x.copy()
    # one special lane per vector, each lane position in turn
    pos = np.arange(0, x.size, 8) + np.arange(x.size // 8) % 8
    mixed[pos] = specials[np.arange(pos.size) % specials.size]
    got = _C.exp_f32(mixed)
    keep = np.ones(x.size, bool)
    keep[pos] = False
    np.testing.assert_array_equal(got[keep], want[keep])
    sp = got[pos]
    assert np.isnan(sp[0::8]).all()
    assert all(np.isinf(sp[i::8]).all() and (sp[i::8] > 0).all() for i in (1, 4, 6, 7))
    assert all((sp[i::8] == 0).all() for i in (2, 3, 5))


def test_gelu_accuracy_and_threads(tier):
    x = np.concatenate([np.linspace(-12, 12, 100003), np.random.default_rng(1).normal(0, 2, 50001)]).astype(
        np.float32
    )
    # u in float32 with the kernels' operation order; the rest in float64 as x / (1 + exp(-2u)), which is
    # 0.5 x (1 + tanh(u)) without the cancellation of 1 + tanh(u) for x << 0
    u = np.float32(math.sqrt(2 / math.pi)) * (x + np.float32(0.044715) * (x * x * x))
    xd = x.astype(np.float64)
    ref = xd / (1 + np.exp(-2 * u.astype(np.float64)))
    for name in ("generic", "avx2"):
        _C.set_tier(name)
        got = _C.gelu_tanh(x, 1).astype(np.float64)
        if name == "avx2":  # a few ulp everywhere (exp within 2 ulp, one add, one division)
            big = np.abs(ref) > 1e-30
            assert (np.abs(got - ref)[big] / np.abs(ref)[big]).max() < 1e-6
            np.testing.assert_array_equal(_C.gelu_tanh(x, 2), got.astype(np.float32))
        else:  # the tanh form loses relative accuracy where 1 + tanh(u) cancels (x << 0), not absolute
            assert np.abs(got - ref).max() < 1e-6


def test_layernorm_modulate_avx2_equals_generic(tier):
    """Rows in groups of 4 (interleaved float64 statistics): groups that straddle two batch items (T not a
    multiple of 4), widths with a tail, a last group of 1..3 rows; the generic tier's bits, 1 or 2 threads."""
    rng = np.random.default_rng(3)
    for n, t, d in ((2, 5, 384), (1, 3, 77), (2, 17, 1152), (3, 1, 16), (2, 7, 20), (1, 4, 8), (1, 2, 5)):
        x, sh, sc = layernorm_case(rng, n, t, d)
        _C.set_tier("generic")
        want = _C.layernorm_modulate(x, sh, sc)
        _C.set_tier("avx2")
        same_bits(_C.layernorm_modulate(x, sh, sc, 2), want)
        same_bits(_C.layernorm_modulate(x, sh, sc, 1), want)
        xd = x.astype(np.float64)
        ln = (xd - xd.mean(-1, keepdims=True)) / np.sqrt(xd.var(-1, keepdims=True) + 1e-6)
        ref = ln * (1 + sc[:, None].astype(np.float64)) + sh[:, None]
        assert np.abs(want - ref).max() < 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("bits", [0, 8])
@pytest.mark.parametrize(
    "t,heads,head_dim", [(64, 6, 64), (37, 4, 72), (256, 2, 72), (11, 3, 18), (70, 2, 5)]
)
def test_attention_avx2(tier, bits, t, heads, head_dim):
    n = 2
    rng = np.random.default_rng(t + head_dim + bits)
    qkv = rng.normal(0, 1.5, (n * t, 3 * heads * head_dim)).astype(np.float32)
    _C.set_tier("generic")
    want = _C.attention(qkv, n, heads, bits)
    _C.set_tier("avx2")
    got = _C.attention(qkv, n, heads, bits)
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    # float: summation order only; 8 bits: a probability may move to the neighbouring 1/255 step
    assert rel < (1e-5 if bits == 0 else 2e-3)
    np.testing.assert_array_equal(_C.attention(qkv, n, heads, bits, threads=2), got)
    np.testing.assert_array_equal(_C.attention(qkv[t:], 1, heads, bits, threads=2), got[t:])


@pytest.mark.parametrize(
    "fmt,n_in,out,bits", [("ternary", 1152, 203, 2), ("ternary", 384, 37, 8), ("int4", 384, 45, 4)]
)
def test_fused_gelu_equals_separate_pass(tier, fmt, n_in, out, bits):
    """QLinear.forward(post=GELU) (fused into the avx2 epilogue) == forward, then the tier's own GELU."""
    rng = np.random.default_rng(n_in + out)
    if fmt == "ternary":
        w = rng.integers(-1, 2, (out, n_in), dtype=np.int8)
        packed = _C.pack_ternary(w)
    else:
        w = rng.integers(-7, 8, (out, n_in)).astype(np.int8)
        nib = (w.astype(np.int16) & 15).astype(np.uint8)
        packed = np.ascontiguousarray(nib[:, 0::2] | (nib[:, 1::2] << 4))
    args = dict(
        weight=fmt,
        in_features=n_in,
        packed=packed,
        scale=rng.uniform(0.01, 0.05, out).astype(np.float32),
        wsum=w.astype(np.int32).sum(1).astype(np.int32),
        bias=rng.normal(0, 0.1, out).astype(np.float32),
        act_bits=bits,
        clip_k=Q.clip_constant("gauss", bits),
        hadamard="full" if fmt == "ternary" else "none",
    )
    x = rows(29, n_in, 8)
    for name in ("reference", "generic", "avx2"):
        _C.set_tier(name)
        plain = _C.qlinear_forward_post(**args, x=x, threads=2, post="none")
        fused = _C.qlinear_forward_post(**args, x=x, threads=2)
        same_bits(fused, _C.gelu_tanh(plain.ravel(), 1).reshape(plain.shape))

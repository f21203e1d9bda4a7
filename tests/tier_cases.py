"""Test helper: the cases that every wide kernel tier (avx512, amx) must pass against the avx2 tier, and the
random ternary layers they run on; shared by tests/test_kernels_avx2.py, test_kernels_avx512.py and
test_kernels_amx.py so the tiers are held to the same checks."""

import numpy as np

from robuq import _C
from robuq import quant as Q


def packed_with_garbage_padding(rng, out, n_in):
    """Random ternary codes in the .rq layout, padding positions of the last byte filled with codes 0..3."""
    w = rng.integers(-1, 2, (out, n_in), dtype=np.int8)
    p = _C.pack_ternary(w)
    if n_in % 4:
        mask = np.uint8((0xFF << (2 * (n_in % 4))) & 0xFF)
        p[:, -1] = (p[:, -1] & ~mask) | (rng.integers(0, 256, out, dtype=np.uint8) & mask)
    return w, p


def assert_ternary_extremes_exact(tier, n_in, out, tokens, max_bits):
    """All weights +1 (or -1) and every code at 0 or its maximum, bits 1..max_bits: each table entry, int8 run
    and int16 k-block sum of the tier's ternary GEMM at its bound; the int32 results must be exact."""
    for sign in (1, -1):
        w = np.full((out, n_in), sign, np.int8)
        p = _C.pack_ternary(w)
        for bits in range(1, max_bits + 1):
            for value in (0, 2**bits - 1):
                q = np.full((tokens, n_in), value, np.uint8)
                want = q.astype(np.int64) @ w.astype(np.int64).T
                np.testing.assert_array_equal(_C.ternary_matmul(q, p, n_in, bits, tier=tier), want)


def lowrank_kw(rng, rank, n_in, out):
    """QLinear arguments of a random low-rank branch (down [rank, n_in], up [out, rank]); none for rank 0."""
    if not rank:
        return {}
    return dict(
        down=rng.normal(0, 0.05, (rank, n_in)).astype(np.float32),
        up=rng.normal(0, 0.05, (out, rank)).astype(np.float32),
    )


def layernorm_case(rng, n, t, d):
    """LayerNorm + modulate inputs: x [n, t, d], rows offset so the mean matters; shift, scale [n, d]."""
    x = (rng.normal(0, 2, (n, t, d)) + rng.normal(0, 3, (n, t, 1))).astype(np.float32)
    sh = rng.normal(0, 1, (n, d)).astype(np.float32)
    sc = rng.normal(0, 1, (n, d)).astype(np.float32)
    return x, sh, sc


def ternary_layer(n_in, out, bits, rank, seed, hadamard="full"):
    """A random ternary QLinear (scales, bias, and a low-rank branch of `rank`)."""
    rng = np.random.default_rng(seed)
    w = rng.integers(-1, 2, (out, n_in), dtype=np.int8)
    kw = lowrank_kw(rng, rank, n_in, out)
    return _C.QLinear(
        "ternary",
        n_in,
        _C.pack_ternary(w),
        rng.uniform(0.01, 0.05, out).astype(np.float32),
        w.astype(np.int32).sum(1).astype(np.int32),
        rng.normal(0, 0.1, out).astype(np.float32),
        act_bits=bits,
        clip_k=Q.clip_constant("gauss", bits),
        hadamard=hadamard,
        **kw,
    )


def assert_qlinear_matches_avx2(tier, lin, x):
    """lin.forward on `tier` gives the avx2 tier's bits for 1 and 2 threads and for a token alone."""
    _C.set_tier("avx2")
    want = lin.forward(x, 1)
    _C.set_tier(tier)
    np.testing.assert_array_equal(lin.forward(x, 1), want)
    np.testing.assert_array_equal(lin.forward(x, 2), want)
    np.testing.assert_array_equal(lin.forward(x[11:12], 2)[0], want[11])


def assert_fused_gelu_matches(tier, extreme=False):
    """The GELU fused into a ternary linear's epilogue on `tier` equals GELU as a separate pass, and the avx2
    tier's fused result. extreme: large weight scales and a few infinite / NaN biases, so that 16-output
    vectors mix ordinary lanes with lanes whose exp argument is out of range or special (the clamped path)."""
    rng = np.random.default_rng(5 if extreme else 4)
    n_in, out = 384, 131
    w = rng.integers(-1, 2, (out, n_in), dtype=np.int8)
    scale = rng.uniform(0.01, 0.05, out).astype(np.float32)
    bias = rng.normal(0, 0.1, out).astype(np.float32)
    if extreme:
        scale *= rng.choice(np.array([1, 30, 300], np.float32), out)
        bias[[3, 40]] = np.inf
        bias[[17, 70]] = -np.inf
        bias[[20, 99]] = np.nan
    args = dict(
        weight="ternary",
        in_features=n_in,
        packed=_C.pack_ternary(w),
        scale=scale,
        wsum=w.astype(np.int32).sum(1).astype(np.int32),
        bias=bias,
        act_bits=2,
        clip_k=Q.clip_constant("gauss", 2),
        hadamard="full",
    )
    x = rng.standard_normal((29, n_in)).astype(np.float32)
    if extreme:
        plain = _C.qlinear_forward_post(**args, x=x, threads=1, post="none")
        assert np.isnan(plain).any() and np.isinf(plain).any() and (np.abs(plain) > 20).mean() > 0.2
    _C.set_tier(tier)
    plain = _C.qlinear_forward_post(**args, x=x, threads=2, post="none")
    fused = _C.qlinear_forward_post(**args, x=x, threads=2)
    np.testing.assert_array_equal(fused, _C.gelu_tanh(plain.ravel(), 1).reshape(plain.shape))
    _C.set_tier("avx2")
    np.testing.assert_array_equal(_C.qlinear_forward_post(**args, x=x, threads=1), fused)


def assert_forward_matches_avx2(tier, model):
    """A whole DiT forward of `model` (a tiny_dit model: CFG batch, t at both ends) gives the same bits on
    `tier` and the avx2 tier, for 1 and 2 threads."""
    from robuq import Engine

    c = model.config
    rng = np.random.default_rng(11)
    n = 3
    x = rng.standard_normal((n, c.in_channels, c.input_size, c.input_size)).astype(np.float32)
    t = np.array([999, 500, 3], dtype=np.int64)
    y = np.array([1, 7, c.num_classes if c.class_dropout_prob > 0 else 0], dtype=np.int64)
    outs = {}
    for tier_name in ("avx2", tier):
        _C.set_tier(tier_name)
        for threads in (1, 2):
            outs[tier_name, threads] = Engine(model.rq, threads=threads).forward(x, t, y)
    want = outs["avx2", 1]
    assert np.isfinite(want).all() and np.abs(want).max() > 0
    for key, got in outs.items():
        np.testing.assert_array_equal(got, want, err_msg=str(key))


def assert_shipped_samples_match_avx2(tier):
    """The shipped W1.58A2 digits model samples the same pixels on `tier` and the avx2 tier (DDIM, CFG)."""
    from robuq import Engine
    from robuq.infer import default_model_path

    got = {}
    for tier_name in ("avx2", tier):
        _C.set_tier(tier_name)
        eng = Engine(default_model_path(), threads=2)
        got[tier_name] = eng.sample([3, 7], steps="ddim8", sampler="ddim", seed=5, output="latent")
    np.testing.assert_array_equal(got[tier], got["avx2"])

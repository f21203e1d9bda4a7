"""Reference-tier C++ kernels (robuq._C) against the Python source of truth robuq.quant.

Hadamard base matrices, factorisation, dense and fast transforms; per-token activation quantization
(minmax and gauss, 1..8 bits); the fused Hadamard-quantize pass; ternary packing. See
docs/quantization.md for the arithmetic both sides implement.
"""

import numpy as np
import pytest
import torch

from robuq import _C
from robuq import quant as Q

WIDTHS = [64, 192, 384, 1152, 4608]
FORMS = ["full", "block", "none"]
ALL_BITS = list(range(1, 9))


# --------------------------------------------------------------------------------------------- helpers
def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rows(kind: str, t: int, n: int, seed: int) -> np.ndarray:
    """float32 [t, n] test rows: normal (scaled and shifted), heavy-tailed, or constant."""
    g = _gen(seed)
    if kind == "normal":
        x = torch.randn(t, n, generator=g) * 3.0 + 0.5
    elif kind == "heavy":
        # Student-t with 3 degrees of freedom: z / sqrt(chi2_3 / 3).
        z = torch.randn(t, n, generator=g)
        chi2 = torch.randn(3, t, n, generator=g).square().sum(0)
        x = z / (chi2 / 3.0).sqrt()
    elif kind == "constant":
        x = (torch.randn(t, 1, generator=g) * 2.0).expand(t, n).clone()
        x[0] = 0.0
    else:
        raise AssertionError(kind)
    return np.ascontiguousarray(x.numpy(), dtype=np.float32)


def _clip_k(clip: str, bits: int) -> float:
    return Q.gauss_clip_ratio(bits) if clip == "gauss" else 0.0


def _py_quantize(x: np.ndarray, bits: int, clip: str):
    q, s, z = Q.quantize_activations(torch.from_numpy(x), bits, clip)
    return q.numpy(), s.numpy(), z.numpy()


def _boundary_mismatches(codes, ref_codes, x, bits, clip, tol=1e-4):
    """Number of codes that differ from the reference. Every difference must be by exactly 1 and sit
    on a rounding boundary: t = (x - lo) / scale (the reference's float32 operands) within `tol` of a
    half-integer."""
    diff = codes.astype(np.int32) - ref_codes.astype(np.int32)
    bad = np.nonzero(diff)
    if bad[0].size == 0:
        return 0
    assert np.abs(diff[bad]).max() == 1, "codes differ by more than one step"
    xt = torch.from_numpy(x)
    lo, hi = Q.activation_range(xt, bits, clip)
    scale = (hi - lo).clamp_min(1e-8) / torch.tensor(float(2**bits - 1))
    t = ((xt - lo[:, None]) / scale[:, None]).numpy()[bad]
    dist = np.abs(t - (np.floor(t) + 0.5))
    assert dist.max() < tol, f"a code differs away from a rounding boundary (distance {dist.max():.3g})"
    return int(bad[0].size)


def _spec_transform(x: np.ndarray, form: str, block: int = 0) -> np.ndarray:
    """The fast transform emulated in numpy float32, operation for operation as the spec orders it:
    butterflies (h = 1, 2, 4, ...), then Y[c] = sum_a H_K[a, c] X[a] with a ascending, then times the
    float32 constant 1 / sqrt(n) (or 1 / sqrt(b))."""
    x = x.astype(np.float32).copy()
    t, n = x.shape
    if form == "none":
        return x
    if form == "block":
        b = Q.block_size(n, block)
        k, m, segs = 1, b, n // b
        norm = np.float32(1.0 / np.sqrt(b))
    else:
        k, m = Q.factorize(n)
        segs = k
        norm = np.float32(1.0 / np.sqrt(n))
    y = x.reshape(t, segs, m)
    h = 1
    while h < m:
        v = y.reshape(t, segs, m // (2 * h), 2, h)
        u0, u1 = v[..., 0, :].copy(), v[..., 1, :].copy()
        v[..., 0, :] = u0 + u1
        v[..., 1, :] = u0 - u1
        h *= 2
    if form == "full" and k > 1:
        hk = Q.hadamard_base(k)
        out = np.empty_like(y)
        for c in range(k):
            acc = y[:, 0] if hk[0, c] > 0 else -y[:, 0]
            for a in range(1, k):
                acc = acc + y[:, a] if hk[a, c] > 0 else acc - y[:, a]
            out[:, c] = acc
        y = out
    return (y.reshape(t, n) * norm).astype(np.float32)


# -------------------------------------------------------------------------------------------- Hadamard
@pytest.mark.parametrize("k", [2**i for i in range(9)] + [12, 20, 28, 36, 44, 60, 76])
def test_base_matrices_equal_python(k):
    h = _C.hadamard_base(k)
    assert h.dtype == np.int8 and h.shape == (k, k)
    np.testing.assert_array_equal(h, Q.hadamard_base(k))
    h64 = h.astype(np.int64)
    np.testing.assert_array_equal(h64 @ h64.T, k * np.eye(k, dtype=np.int64))


def test_paley_one_preferred_and_unknown_orders():
    # 12 and 60 admit both Paley I and II; I is used, so the first row is all ones.
    for k in (12, 60):
        assert Q.base_construction(k) == "paley1"
        assert (_C.hadamard_base(k)[0] == 1).all()
    for k in (0, 3, 6, 18, 42):
        with pytest.raises(ValueError, match="Hadamard"):
            _C.hadamard_base(k)


@pytest.mark.parametrize(
    "n,expected",
    [(1152, (36, 32)), (4608, (36, 128)), (384, (12, 32)), (768, (12, 64)), (40, (20, 2)), (1024, (1, 1024))]
    + [(n, None) for n in (1, 3 * 4, 96, 192, 320, 576, 2304, 3072)],
)
def test_factorisation(n, expected):
    got = _C.hadamard_factor(n)
    assert got == Q.factorize(n)
    if expected is not None:
        assert got == expected


@pytest.mark.parametrize("n", [7, 9, 14, 18, 30])
def test_factorisation_rejects_widths_without_hadamard(n):
    with pytest.raises(ValueError, match=f"width {n} has no Hadamard matrix"):
        _C.hadamard_factor(n)
    with pytest.raises(ValueError, match="no Hadamard"):
        _C.hadamard_transform(np.zeros((1, n), np.float32))
    # 'none' and 'block' need no factorisation
    x = _rows("normal", 2, n, 0)
    np.testing.assert_array_equal(_C.hadamard_transform(x, "none"), x)
    assert _C.hadamard_transform(x, "block").shape == x.shape


@pytest.mark.parametrize("n", WIDTHS)
@pytest.mark.parametrize("form", FORMS)
def test_dense_matrix_equals_python(n, form):
    h = _C.hadamard_matrix(n, form)
    assert h.dtype == np.float64 and h.shape == (n, n)
    np.testing.assert_array_equal(h, Q.hadamard_matrix(n, form).numpy())
    if n <= 1152:
        np.testing.assert_allclose(h @ h.T, np.eye(n), atol=1e-12)


@pytest.mark.parametrize("block", [1, 2, 16, 64])
def test_dense_block_sizes(block):
    np.testing.assert_array_equal(
        _C.hadamard_matrix(192, "block", block), Q.hadamard_matrix(192, "block", block).numpy()
    )


@pytest.mark.parametrize("n", WIDTHS)
@pytest.mark.parametrize("form", FORMS)
def test_fast_transform(n, form):
    x = _rows("normal", 6, n, n)
    y = _C.hadamard_transform(x, form)
    assert y.dtype == np.float32 and y.shape == x.shape
    # equals the float64 dense product up to float32 rounding
    ref = x.astype(np.float64) @ _C.hadamard_matrix(n, form)
    assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()
    # bit for bit the spec's operation order
    np.testing.assert_array_equal(y, _spec_transform(x, form))
    # and Python's fast_hadamard: identical where it performs the same float32 operations (no K x K
    # mixing), else equal to rounding
    py = Q.fast_hadamard(torch.from_numpy(x), form).numpy()
    if form != "full" or Q.factorize(n)[0] == 1:
        np.testing.assert_array_equal(y, py)
    else:
        assert np.abs(y - py).max() <= 1e-5 * np.abs(ref).max()
    # the input is not modified
    np.testing.assert_array_equal(x, _rows("normal", 6, n, n))


@pytest.mark.parametrize("n,block", [(1152, 32), (1152, 128), (4608, 512), (192, 1), (96, 0)])
def test_fast_transform_block_sizes(n, block):
    x = _rows("heavy", 3, n, block)
    y = _C.hadamard_transform(x, "block", block)
    np.testing.assert_array_equal(y, _spec_transform(x, "block", block))
    np.testing.assert_array_equal(y, Q.fast_hadamard(torch.from_numpy(x), "block", block).numpy())


def test_transform_non_contiguous_and_empty_inputs():
    x = _rows("normal", 4, 2 * 384, 1)
    view = x[:, ::2]
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(_C.hadamard_transform(view), _C.hadamard_transform(view.copy()))
    assert _C.hadamard_transform(np.zeros((0, 384), np.float32)).shape == (0, 384)


# ---------------------------------------------------------------------------------------- quantization
@pytest.mark.parametrize("clip", ["minmax", "gauss"])
@pytest.mark.parametrize("kind", ["normal", "heavy", "constant"])
def test_quantize_tokens_equals_python(clip, kind):
    x = _rows(kind, 48, 1152, {"normal": 1, "heavy": 2, "constant": 3}[kind])
    total = mismatches = 0
    for bits in ALL_BITS:
        codes, scale, zero = _C.quantize_tokens(x, bits, _clip_k(clip, bits))
        assert codes.dtype == np.uint8 and codes.shape == x.shape
        assert scale.dtype == np.float32 and zero.dtype == np.float32 and scale.shape == (x.shape[0],)
        assert codes.max() <= 2**bits - 1
        q, s, z = _py_quantize(x, bits, clip)
        if clip == "minmax":
            # same lo and scale from identical float32 operations: bit-identical
            np.testing.assert_array_equal(codes, q)
            np.testing.assert_array_equal(scale, s)
            np.testing.assert_array_equal(zero, z)
        else:
            np.testing.assert_allclose(scale, s, rtol=1e-6, atol=0)
            np.testing.assert_allclose(zero, z, rtol=1e-6, atol=1e-6)
            mismatches += _boundary_mismatches(codes, q, x, bits, clip)
        total += codes.size
        if kind == "constant":
            assert (codes == 0).all()
    assert mismatches <= 1e-4 * total


def test_boundary_mismatch_counter():
    # the tolerance helper itself: a one-step difference exactly on a half-integer counts, others fail
    x = np.array([[0.0, 1.5, 3.0, 1.0]], np.float32)  # lo = 0, scale = 1 at 2 bits
    codes, _, _ = _C.quantize_tokens(x, 2, 0.0)
    ref = codes.copy()
    ref[0, 1] -= 1
    assert _boundary_mismatches(codes, ref, x, 2, "minmax") == 1
    ref[0, 3] -= 1
    with pytest.raises(AssertionError, match="away from a rounding boundary"):
        _boundary_mismatches(codes, ref, x, 2, "minmax")


def test_minmax_codes_on_transformed_inputs_identical():
    x = _C.hadamard_transform(_rows("heavy", 32, 1152, 4))
    for bits in ALL_BITS:
        codes, scale, zero = _C.quantize_tokens(x, bits, 0.0)
        q, s, z = _py_quantize(x, bits, "minmax")
        np.testing.assert_array_equal(codes, q)
        np.testing.assert_array_equal(scale, s)
        np.testing.assert_array_equal(zero, z)


def test_quantize_round_half_even_and_range_ends():
    # lo = 0, hi = 3, 2 bits: scale = 1, so (x - lo) / scale is x exactly; half-integers round to even
    x = np.array([[0.0, 0.5, 1.5, 2.5, 3.0, 1.0, 2.0, 0.49999997]], np.float32)
    codes, scale, zero = _C.quantize_tokens(x, 2, 0.0)
    np.testing.assert_array_equal(codes[0], [0, 0, 2, 2, 3, 1, 2, 0])
    assert scale[0] == 1.0 and zero[0] == 0.0
    # dequantization reproduces the range ends exactly
    xs = _rows("normal", 8, 64, 5)
    codes, scale, zero = _C.quantize_tokens(xs, 4, 0.0)
    xhat = (codes.astype(np.float32) - zero[:, None]) * scale[:, None]
    np.testing.assert_allclose(xhat.min(1), xs.min(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(xhat.max(1), xs.max(1), rtol=1e-5, atol=1e-6)


def test_gauss_clips_heavy_tails_and_matches_negative_k_minmax():
    x = _rows("heavy", 16, 1152, 6)
    _, s_gauss, _ = _C.quantize_tokens(x, 2, Q.gauss_clip_ratio(2))
    _, s_minmax, _ = _C.quantize_tokens(x, 2, 0.0)
    assert (s_gauss < s_minmax).all()
    for k in (0.0, -1.0):
        c, s, z = _C.quantize_tokens(x, 3, k)
        q, sp, zp = _py_quantize(x, 3, "minmax")
        np.testing.assert_array_equal(c, q)
        np.testing.assert_array_equal(s, sp)


# -------------------------------------------------------------------------------- fused Hadamard + quant
@pytest.mark.parametrize(
    "n,form", [(1152, "full"), (4608, "full"), (384, "block"), (192, "none"), (256, "full")]
)
@pytest.mark.parametrize("clip", ["minmax", "gauss"])
def test_hadamard_quantize(n, form, clip):
    x = _rows("heavy", 24, n, n + len(clip))
    total = mismatches = 0
    for bits in ALL_BITS:
        k = _clip_k(clip, bits)
        fused = _C.hadamard_quantize(x, bits, k, form)
        assert len(fused) == 3
        rot = _C.hadamard_transform(x, form)
        for got, want in zip(fused, _C.quantize_tokens(rot, bits, k), strict=True):
            np.testing.assert_array_equal(got, want)
        codes, scale, zero, rotated = _C.hadamard_quantize(x, bits, k, form, return_rotated=True)
        np.testing.assert_array_equal(rotated, rot)
        np.testing.assert_array_equal(codes, fused[0])
        # the Python composition: its K x K mixing (einsum) may round differently, so its codes may
        # differ from ours at rounding boundaries only
        xr = Q.fast_hadamard(torch.from_numpy(x), form).numpy()
        q, s, z = _py_quantize(xr, bits, clip)
        np.testing.assert_allclose(scale, s, rtol=1e-5, atol=0)
        mismatches += _boundary_mismatches(codes, q, xr, bits, clip, tol=1e-3)
        total += codes.size
    assert mismatches <= 1e-4 * total


def test_hadamard_quantize_block_argument():
    x = _rows("normal", 4, 1152, 7)
    for block in (0, 32):
        got = _C.hadamard_quantize(x, 4, 0.0, "block", block)
        want = _C.quantize_tokens(_C.hadamard_transform(x, "block", block), 4, 0.0)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------- packing
def test_pack_layout_hand_written():
    w = np.array([[-1, 0, 1, 1, -1], [1, 1, 1, 1, 0]], np.int8)
    p = _C.pack_ternary(w)
    assert p.dtype == np.uint8 and p.shape == (2, 2)
    # byte = c0 | c1 << 2 | c2 << 4 | c3 << 6 with c = w + 1; padding code 1 (weight 0)
    assert p[0, 0] == 0 | 1 << 2 | 2 << 4 | 2 << 6  # 0xA4
    assert p[0, 1] == 0 | 1 << 2 | 1 << 4 | 1 << 6  # 0x54
    assert p[1, 0] == 0xAA and p[1, 1] == 0x55
    # low nibble = lookup index of the pair (w0, w1)
    assert p[0, 0] & 0xF == (w[0, 0] + 1) | (w[0, 1] + 1) << 2
    np.testing.assert_array_equal(_C.unpack_ternary(p, 5), w)


@pytest.mark.parametrize("cols", [1, 2, 3, 4, 5, 7, 63, 1151, 1152])
def test_pack_round_trip(cols):
    g = _gen(cols)
    q, _ = Q.ternary_quantize(torch.randn(9, cols, generator=g))
    w = q.numpy()
    p = _C.pack_ternary(w)
    assert p.shape == (9, (cols + 3) // 4)
    np.testing.assert_array_equal(_C.unpack_ternary(p, cols), w)
    # independent decode of the layout
    codes = (p[:, :, None] >> np.array([0, 2, 4, 6], np.uint8)) & 3
    dec = codes.reshape(9, -1).astype(np.int8) - 1
    np.testing.assert_array_equal(dec[:, :cols], w)
    assert (dec[:, cols:] == 0).all()


def test_pack_rejects_bad_values_and_inputs():
    with pytest.raises(ValueError, match=r"value 2 at \[1, 2\]"):
        _C.pack_ternary(np.array([[0, 0, 0], [1, 0, 2]], np.int8))
    with pytest.raises(ValueError, match="value -2"):
        _C.pack_ternary(np.array([[-2]], np.int8))
    with pytest.raises(ValueError, match="invalid code 3"):
        _C.unpack_ternary(np.array([[0x55, 0x3F]], np.uint8), 8)
    with pytest.raises(ValueError, match="dtype int8"):
        _C.pack_ternary(np.zeros((2, 4), np.int16))
    with pytest.raises(ValueError, match="2-D"):
        _C.pack_ternary(np.zeros(4, np.int8))
    with pytest.raises(ValueError, match="dtype uint8"):
        _C.unpack_ternary(np.zeros((2, 1), np.int8), 4)
    with pytest.raises(ValueError, match="needs ceil"):
        _C.unpack_ternary(np.zeros((2, 2), np.uint8), 4)


@pytest.mark.parametrize("t,out,n_in", [(1, 1, 1), (5, 17, 3), (7, 16, 5), (3, 33, 130), (2, 40, 515)])
def test_table_lookup_layout_specification(t, out, n_in):
    """The table-lookup GEMM's kernel layout (robuq/ternary_gemm.h), as its scalar specification builds and
    reads it (kernels/ref/ternary_lut_ref.cpp): exact against the integer product for every bit width, with
    random codes in the padding positions (the repack must not read them). The avx2 tier's on-the-fly
    decoder is held to the same indices in test_kernels_avx2.py."""
    rng = np.random.default_rng(t * 31 + out * 7 + n_in)
    w = rng.integers(-1, 2, (out, n_in), dtype=np.int8)
    p = _C.pack_ternary(w)
    if n_in % 4:
        mask = np.uint8((0xFF << (2 * (n_in % 4))) & 0xFF)
        p[:, -1] = (p[:, -1] & ~mask) | (rng.integers(0, 256, out, dtype=np.uint8) & mask)
    idx = _C.ternary_lut_indices(p, n_in)
    assert idx.shape == ((out + 15) // 16, (n_in + 3) // 4, 32)
    for bits in (1, 2, 4, 8):
        q = rng.integers(0, 2**bits, (t, n_in), dtype=np.uint8)
        got = _C.ternary_matmul(q, p, n_in, bits, tier="reference")
        np.testing.assert_array_equal(got, q.astype(np.int64) @ w.astype(np.int64).T)


# ---------------------------------------------------------------------------------------- bad inputs
def test_bad_inputs_raise_clear_errors():
    x = _rows("normal", 2, 64, 8)
    with pytest.raises(ValueError, match="dtype float32, got float64"):
        _C.hadamard_transform(x.astype(np.float64))
    with pytest.raises(ValueError, match="dtype float32"):
        _C.quantize_tokens(x.astype(np.float16), 4, 0.0)
    with pytest.raises(ValueError, match="2-D"):
        _C.quantize_tokens(x[0], 4, 0.0)
    with pytest.raises(ValueError, match="2-D"):
        _C.hadamard_quantize(x[None], 4, 0.0)
    with pytest.raises(ValueError, match="dtype float32"):
        _C.hadamard_transform("not an array")
    with pytest.raises(ValueError, match="width 18 has no Hadamard matrix"):
        _C.hadamard_quantize(np.zeros((1, 18), np.float32), 4, 0.0, "full")
    with pytest.raises(ValueError, match="block size must be a power of two.*got 3"):
        _C.hadamard_transform(x, "block", 3)
    with pytest.raises(ValueError, match="does not divide the width 96"):
        _C.hadamard_transform(np.zeros((1, 96), np.float32), "block", 64)
    with pytest.raises(ValueError, match="unknown Hadamard form 'diag'"):
        _C.hadamard_transform(x, "diag")
    with pytest.raises(ValueError, match="unknown Hadamard form"):
        _C.hadamard_matrix(64, "Full")
    for bits in (0, 9, -1):
        with pytest.raises(ValueError, match=f"bits must be in 1..8, got {bits}"):
            _C.quantize_tokens(x, bits, 0.0)
        with pytest.raises(ValueError, match="bits must be in 1..8"):
            _C.hadamard_quantize(x, bits, 1.0)
    with pytest.raises(ValueError, match="clip_k must be finite"):
        _C.quantize_tokens(x, 4, float("nan"))
    with pytest.raises(ValueError, match="at least one column"):
        _C.quantize_tokens(np.zeros((3, 0), np.float32), 4, 0.0)
    with pytest.raises(ValueError, match="width must be >= 1"):
        _C.hadamard_factor(0)

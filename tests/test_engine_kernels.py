"""Engine kernels (robuq._C) on every tier against the Python source of truth.

QLinear (the quantized linear of the engine: fused Hadamard + per-token quantize, integer GEMM, zero-point
epilogue, low-rank branch, bias) against robuq.quant.QLinear with the same weights; linear_f32 against
numpy; determinism across thread counts and batch composition; the weight-code checks; the loader's
F16 conversion and JSON parser.
"""

import json
import math

import numpy as np
import pytest
import torch
from rq_layout import pack_codes

from robuq import _C
from robuq import quant as Q

REL_TOL = 1e-5


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------- test layers
def make_layer(n_in, n_out, fmt, bits, clip, hadamard, rank, seed=0, block=0):
    """A Python QLinear with random weights and the engine's QLinear over the same weights."""
    g = _gen(seed)
    cfg = Q.LayerQuant(fmt, bits, clip, hadamard, block, rank)
    lin = Q.QLinear(n_in, n_out, True, cfg)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n_out, n_in, generator=g) * 0.05)
        lin.bias.copy_(torch.randn(n_out, generator=g) * 0.1)
        if rank:
            lin.lowrank_down.weight.copy_(torch.randn(rank, n_in, generator=g) * 0.05)
            lin.lowrank_up.weight.copy_(torch.randn(n_out, rank, generator=g) * 0.05)
    codes, scale = Q.quantize_weight(lin.weight, fmt)
    codes = codes.numpy()
    lowrank = {}
    if rank:
        lowrank = dict(
            down=lin.lowrank_down.weight.detach().numpy(), up=lin.lowrank_up.weight.detach().numpy()
        )
    eng = _C.QLinear(
        fmt,
        n_in,
        pack_codes(codes, fmt),
        scale.numpy(),
        codes.astype(np.int64).sum(1).astype(np.int32),
        lin.bias.detach().numpy(),
        act_bits=bits or 0,
        clip_k=Q.clip_constant(clip, bits) if bits else 0.0,
        hadamard=hadamard,
        hadamard_block=block,
        **lowrank,
    )
    return lin.eval(), eng


def inputs(t, n, seed):
    """Token rows with per-token offsets and scales (as activations after a LayerNorm + modulate)."""
    g = _gen(seed)
    x = torch.randn(t, n, generator=g) * (0.5 + torch.rand(t, 1, generator=g)) + torch.randn(
        t, 1, generator=g
    )
    return np.ascontiguousarray(x.numpy())


def rel_err(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def compare_layer(lin, eng, x, threads=1):
    """Engine vs Python on the same input. Tokens whose activation codes differ between the two sides
    (a transformed value on a rounding boundary: Python's K x K Hadamard mixing rounds differently) are
    counted and left out; the rest must agree to REL_TOL."""
    with torch.no_grad():
        ref = lin(torch.from_numpy(x)).numpy()
    got = eng.forward(x, threads)
    assert got.dtype == np.float32 and got.shape == ref.shape
    keep = np.ones(x.shape[0], bool)
    cfg = lin.cfg
    if cfg.act_bits is not None:
        xr = lin.rotate(torch.from_numpy(x))
        q_py = Q.quantize_activations(xr, cfg.act_bits, cfg.clip)[0].numpy()
        k = Q.clip_constant(cfg.clip, cfg.act_bits)
        q_cc = _C.hadamard_quantize(x, cfg.act_bits, k, cfg.hadamard, cfg.hadamard_block)[0]
        keep = (q_py == q_cc).all(axis=1)
        assert keep.sum() >= 0.9 * len(keep), "activation codes differ on more than 10% of the tokens"
    assert rel_err(got[keep], ref[keep]) <= REL_TOL
    return got


# ------------------------------------------------------------------------------ QLinear vs Python
BITS = [1, 2, 3, 4, 8, None]
CLIPS = ["gauss", "minmax"]
FORMS = ["full", "block", "none"]


def _cases():
    """Every width x weight format x activation bits, with clipping, Hadamard form and rank rotating so
    each appears with every width; plus odd small shapes."""
    cases = []
    i = 0
    for n_in in (192, 384, 1152):
        for fmt in ("ternary", "int4"):
            for bits in BITS:
                cases.append((n_in, 40 + i % 7, fmt, bits, CLIPS[i % 2], FORMS[i % 3], (0, 4)[(i // 3) % 2]))
                i += 1
    cases += [
        (12, 5, "ternary", 2, "gauss", "full", 0),  # K = 12 alone (no Sylvester part)
        (20, 3, "int4", 3, "minmax", "full", 2),  # K = 20
        (7, 9, "ternary", 4, "minmax", "none", 0),  # odd width: no Hadamard exists, tail-only kernels
        (66, 5, "int8", 8, "gauss", "block", 4),  # int8 weights; block size 2
        (1, 1, "ternary", 1, "minmax", "none", 0),
        (36, 1, "ternary", None, "gauss", "full", 1),
    ]
    return cases


@pytest.mark.parametrize("case", _cases(), ids=lambda c: "-".join(map(str, c)))
def test_qlinear_matches_python(tier, case):
    n_in, n_out, fmt, bits, clip, form, rank = case
    lin, eng = make_layer(n_in, n_out, fmt, bits, clip, form, rank, seed=n_in + n_out)
    assert (eng.in_features, eng.out_features) == (n_in, n_out)
    compare_layer(lin, eng, inputs(13, n_in, seed=n_out))


@pytest.mark.parametrize("n_in,block", [(384, 32), (1152, 0), (192, 1)])
def test_qlinear_block_sizes(tier, n_in, block):
    lin, eng = make_layer(n_in, 24, "ternary", 3, "gauss", "block", 0, seed=3, block=block)
    compare_layer(lin, eng, inputs(9, n_in, seed=4))


def test_qlinear_large_batch_and_threads(tier):
    """A layer big enough that the generic kernels split it among threads: outputs are identical for
    1 and 2 threads, and each token's output does not depend on the batch it came in."""
    lin, eng = make_layer(384, 257, "ternary", 2, "gauss", "full", 4, seed=11)
    x = inputs(133, 384, seed=12)
    y1 = compare_layer(lin, eng, x, threads=1)
    y2 = eng.forward(x, 2)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(eng.forward(x[57:58], 2)[0], y1[57])
    np.testing.assert_array_equal(eng.forward(x[64:100], 1), y1[64:100])


def test_qlinear_float_activation_path_threads(tier):
    lin, eng = make_layer(1152, 100, "int4", None, "gauss", "full", 4, seed=13)
    x = inputs(70, 1152, seed=14)
    y1 = compare_layer(lin, eng, x, threads=1)
    np.testing.assert_array_equal(y1, eng.forward(x, 2))


def test_tiers_compute_the_same_integer_term():
    """Without a low-rank branch the quantized term is exact integers plus one shared epilogue, so every
    tier gives bit-identical outputs."""
    _, eng = make_layer(1152, 33, "ternary", 3, "gauss", "full", 0, seed=21)
    x = inputs(11, 1152, seed=22)
    before = _C.active_tier()
    try:
        outs = []
        for name in ("reference", "generic", "avx2", "avx512", "amx"):
            if _C.tier_available(name):
                _C.set_tier(name)
                outs.append(eng.forward(x, 2))
    finally:
        _C.set_tier(before)
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])


def test_qlinear_zero_tokens_and_input_checks():
    _, eng = make_layer(64, 8, "ternary", 4, "minmax", "full", 0)
    assert eng.forward(np.zeros((0, 64), np.float32)).shape == (0, 8)
    with pytest.raises(ValueError, match="columns"):
        eng.forward(np.zeros((2, 63), np.float32))
    with pytest.raises(ValueError, match="float32"):
        eng.forward(np.zeros((2, 64), np.float64))
    with pytest.raises(ValueError, match="threads"):
        eng.forward(np.zeros((2, 64), np.float32), 0)


# ---------------------------------------------------------------------------- descriptor validation
def _qargs(fmt="ternary", n_in=8, n_out=2, codes=None):
    if codes is None:
        codes = np.tile(np.array([1, 0, -1, 1, 1, 0, -1, -1], np.int8)[:n_in], (n_out, 1))
    packed = pack_codes(codes, fmt)
    return dict(
        weight=fmt,
        in_features=n_in,
        packed=packed,
        scale=np.ones(n_out, np.float32),
        wsum=codes.astype(np.int32).sum(1).astype(np.int32),
    )


def test_qlinear_rejects_invalid_codes_and_sums():
    a = _qargs()
    _C.QLinear(**a)
    bad = dict(a, packed=a["packed"].copy())
    bad["packed"][1, 0] |= 0b11 << 2  # weight 1 of row 1 -> code 3
    with pytest.raises(ValueError, match=r"invalid ternary code 3 at row 1, column 1"):
        _C.QLinear(**bad)
    codes = np.array([[1, -7, 7, 0]], np.int8)
    a4 = _qargs("int4", 4, 1, codes)
    _C.QLinear(**a4)
    p = a4["packed"].copy()
    p[0, 1] = (p[0, 1] & 0x0F) | 0x80  # column 3 -> nibble 8 = -8
    with pytest.raises(ValueError, match=r"invalid int4 code -8 at row 0, column 3"):
        _C.QLinear(**dict(a4, packed=p))
    a8 = _qargs("int8", 2, 1, np.array([[5, -5]], np.int8))
    p8 = a8["packed"].copy()
    p8[0, 1] = 0x80
    with pytest.raises(ValueError, match=r"invalid int8 code -128"):
        _C.QLinear(**dict(a8, packed=p8))
    with pytest.raises(ValueError, match=r"wsum\[1\] = 7 but the row's codes sum to 0"):
        _C.QLinear(**dict(a, wsum=np.array([0, 7], np.int32)))


@pytest.mark.parametrize("n_in", [31, 32, 37, 100, 131, 259])
def test_ternary_code_check_and_sums_on_wide_rows(n_in):
    # Ternary rows are scanned 32 codes (8 packed bytes) at a time, then byte by byte, then code by code:
    # sums and the first invalid column must come out the same in each region of a row.
    rng = np.random.default_rng(n_in)
    codes = rng.integers(-1, 2, (5, n_in), dtype=np.int8)
    codes[1] = 1  # the largest sum a row can have
    codes[2] = -1
    a = _qargs("ternary", n_in, 5, codes)
    _C.QLinear(**a)
    true = codes.astype(np.int32).sum(1)
    wrong = true.copy()
    wrong[3] += 1
    with pytest.raises(ValueError, match=rf"wsum\[3\] = {wrong[3]} but the row's codes sum to {true[3]}"):
        _C.QLinear(**dict(a, wsum=wrong.astype(np.int32)))
    last_word, code_tail = (n_in // 32) * 32 - 1, (n_in // 4) * 4
    for row, col in [(0, 0), (4, 5), (1, n_in // 2), (2, n_in - 1), (3, last_word), (4, code_tail)]:
        if col >= n_in or col < 0:
            continue
        p = a["packed"].copy()
        p[row, col // 4] |= 0b11 << (2 * (col % 4))
        # a later invalid code too: the first one is named
        p[row, (n_in - 1) // 4] |= 0b11 << (2 * ((n_in - 1) % 4))
        with pytest.raises(ValueError, match=rf"invalid ternary code 3 at row {row}, column {col} "):
            _C.QLinear(**dict(a, packed=p))


def test_qlinear_rejects_bad_descriptors():
    a = _qargs()
    with pytest.raises(ValueError, match="activation bits"):
        _C.QLinear(**a, act_bits=9)
    with pytest.raises(ValueError, match="clip_k"):
        _C.QLinear(**a, act_bits=2, clip_k=float("nan"))
    with pytest.raises(ValueError, match="rank"):
        _C.QLinear(**a, down=np.zeros((3, 8), np.float32), up=np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="bytes per row"):
        _C.QLinear(**dict(a, in_features=16))
    with pytest.raises(ValueError, match="no Hadamard matrix"):
        _C.QLinear(**_qargs(n_in=7), hadamard="full")
    with pytest.raises(ValueError, match="unknown weight format"):
        _C.QLinear(**dict(a, weight="int5"))


# ------------------------------------------------------------------------------------- linear_f32
@pytest.mark.parametrize("t,n_in,n_out", [(1, 1, 1), (13, 77, 5), (5, 256, 1152), (70, 384, 97)])
def test_linear_f32_matches_numpy(tier, t, n_in, n_out):
    rng = np.random.default_rng(t * 1000 + n_in)
    x = rng.standard_normal((t, n_in)).astype(np.float32)
    w = rng.standard_normal((n_out, n_in)).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32)
    ref = x.astype(np.float64) @ w.astype(np.float64).T
    y = _C.linear_f32(x, w, None, 1)
    assert y.dtype == np.float32 and y.shape == (t, n_out)
    # float32 sums of n_in products: the error bound grows like sqrt(n_in) ulps of the terms
    tol = 4e-7 * math.sqrt(n_in) * np.abs(x).max() * np.abs(w).max() * math.sqrt(n_in)
    assert np.abs(y - ref).max() <= tol
    assert rel_err(_C.linear_f32(x, w, b, 1), ref + b) <= REL_TOL
    np.testing.assert_array_equal(_C.linear_f32(x, w, None, 2), y)
    np.testing.assert_array_equal(_C.linear_f32(x[-1:], w, None, 2)[0], y[-1])  # independent of T


def test_linear_f32_input_checks():
    with pytest.raises(ValueError, match="w must be"):
        _C.linear_f32(np.zeros((2, 3), np.float32), np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="b must"):
        _C.linear_f32(np.zeros((2, 3), np.float32), np.zeros((4, 3), np.float32), np.zeros(3, np.float32))
    assert _C.linear_f32(np.zeros((0, 3), np.float32), np.zeros((4, 3), np.float32)).shape == (0, 4)


# ------------------------------------------------------------------------------------ F16 and JSON
def test_f16_conversion_all_values():
    bits = np.arange(65536, dtype=np.uint16)
    got = _C.f16_to_f32(bits)
    ref = bits.view(np.float16).astype(np.float32)
    finite = np.isfinite(ref)
    np.testing.assert_array_equal(
        got[finite].view(np.uint32), ref[finite].view(np.uint32)
    )  # signed zeros too
    assert np.array_equal(np.isinf(got), np.isinf(ref)) and np.array_equal(np.isnan(got), np.isnan(ref))
    assert np.array_equal(np.signbit(got), np.signbit(ref))
    assert got[1] == 2.0**-24 and got[0x3FF] == 1023 * 2.0**-24 and got[0x7BFF] == 65504.0


@pytest.mark.parametrize(
    "text",
    [
        '{"a": [1, -2.5e3, 0, -0, 1E-2, true, false, null], "b": {"c": ""}, "d": []}',
        '"esc \\" \\\\ \\/ \\b \\f \\n \\r \\t \\u00e9 \\ud83d\\ude00 \\u0000"',
        "  [ ]  \n",
        "9223372036854775807",
        "-9223372036854775808",
        '"h\u00e9llo \u4e16\u754c \U0001f600"',
        "1.4935300350189209",
        "1e-400",
    ],
)
def test_json_parser_accepts(text):
    assert _C.parse_json(text.encode()) == json.loads(text)


def test_json_parser_keeps_large_integers_exact():
    v = _C.parse_json(b"[9007199254740993, 1.0, 2]")
    assert v == [9007199254740993, 1.0, 2] and isinstance(v[0], int) and isinstance(v[1], float)
    # beyond int64 an integer literal is only a number (the schema then rejects it where it wants an int)
    big = _C.parse_json(b"123456789012345678901234567890")
    assert isinstance(big, float) and big == 1.2345678901234568e29


@pytest.mark.parametrize(
    "text,message",
    [
        (b"", "byte 0 .*expected a value"),
        (b'{"a": 1,}', "byte 8 .*expected a string key"),
        (b'{"a" 1}', "byte 5 .*expected ':'"),
        (b'{"a": 1} x', "byte 9 .*unexpected data after"),
        (b'{"a": 1, "a": 2}', 'byte 9 .*duplicate key "a"'),
        (b"[01]", "leading zero"),
        (b"[1.]", "digit after '.'"),
        (b"[+1]", "unexpected '\\+'"),
        (b"[1e]", "exponent"),
        (b"[1e400]", "out of range"),
        (b"[NaN]", "unexpected 'N'"),
        (b"[tru]", "invalid literal"),
        (b'"abc', "unterminated string"),
        (b'"a\tb"', "raw control character"),
        (b'"\\x"', "invalid escape"),
        (b'"\\u12g4"', "invalid hex digit"),
        (b'"\\ud800"', "high surrogate"),
        (b'"\\udc00"', "lone low surrogate"),
        (b'"\xff"', "invalid UTF-8"),
        (b'"\xc0\x80"', "invalid UTF-8"),  # overlong
        (b'"\xed\xa0\x80"', "invalid UTF-8"),  # an encoded surrogate
        (b"[1,\n 2,\n x]", r"line 3, column 2"),
    ],
)
def test_json_parser_rejects_with_position(text, message):
    with pytest.raises(ValueError, match=message):
        _C.parse_json(text)


def test_json_parser_limits():
    deep = b"[" * 10 + b"]" * 10
    assert _C.parse_json(deep, max_depth=10) is not None
    with pytest.raises(ValueError, match="nesting deeper than the limit of 9"):
        _C.parse_json(deep, max_depth=9)
    with pytest.raises(ValueError, match="more than the limit"):
        _C.parse_json(b"[1, 2, 3]", max_size=8)
    # hostile nesting far beyond the limit fails fast, without exhausting the stack
    with pytest.raises(ValueError, match="nesting deeper"):
        _C.parse_json(b"[" * 1_000_000)

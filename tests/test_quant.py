"""robuq.quant: Hadamard transforms, weight/activation quantizers, clipping ratio, QLinear, config."""

import math

import numpy as np
import pytest
import torch
from tiny_dit import tiny_dit

from robuq import quant

# ------------------------------------------------------------------------------------------- Hadamard


@pytest.mark.parametrize("n", [2**k for k in range(0, 13)])
def test_sylvester_orthonormal(n):
    h = quant.hadamard_matrix(n)
    assert torch.allclose(h @ h.T, torch.eye(n, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("k", [12, 20, 28, 36, 44, 60, 76])
def test_paley_bases(k):
    h = quant.hadamard_base(k).astype(np.int64)
    assert set(np.unique(h)) == {-1, 1}
    assert np.array_equal(h @ h.T, k * np.eye(k, dtype=np.int64))


@pytest.mark.parametrize(
    "n,expected", [(1152, (36, 32)), (4608, (36, 128)), (384, (12, 32)), (768, (12, 64)), (1024, (1, 1024))]
)
def test_factorize(n, expected):
    assert quant.factorize(n) == expected


@pytest.mark.parametrize("n", [7, 9, 14, 18, 30])
def test_factorize_rejects_unknown_orders(n):
    with pytest.raises(ValueError, match="no Hadamard"):
        quant.factorize(n)


@pytest.mark.parametrize("n", [64, 192, 384, 1152, 4608])
@pytest.mark.parametrize("form", ["full", "block"])
def test_orthonormal_and_fast_equals_dense(n, form):
    h = quant.hadamard_matrix(n, form)
    eye = torch.eye(n, dtype=torch.float64)
    assert (h @ h.T - eye).abs().max() < 1e-12
    g = torch.Generator().manual_seed(n)
    x = torch.randn(7, n, generator=g, dtype=torch.float64)
    assert (quant.fast_hadamard(x, form) - x @ h).abs().max() < 1e-12
    # float32: the fast transform's error is that of float32 sums of at most n terms of size |x|
    y32 = quant.fast_hadamard(x.float(), form).double()
    assert (y32 - x @ h).abs().max() < 1e-5 * math.log2(n) * x.abs().max()


def test_block_form_structure():
    h = quant.hadamard_matrix(1152, "block")  # blocks of 128 (largest power of two dividing 1152)
    assert quant.block_size(1152) == 128 and quant.block_size(4608) == 512
    assert h[:128, 128:].abs().max() == 0
    assert torch.allclose(h[:128, :128] * math.sqrt(128), torch.from_numpy(quant.sylvester(128)).double())
    h32 = quant.hadamard_matrix(1152, "block", block=32)
    assert (h32 @ h32.T - torch.eye(1152, dtype=torch.float64)).abs().max() < 1e-12
    with pytest.raises(ValueError, match="power of two dividing"):
        quant.hadamard_matrix(1152, "block", block=256)


def test_fast_hadamard_is_differentiable():
    x = torch.randn(3, 192, dtype=torch.float64, requires_grad=True)
    (quant.fast_hadamard(x) ** 2).sum().backward()
    assert torch.allclose(x.grad, 2 * x.detach())  # orthonormal: |xH|^2 = |x|^2


# -------------------------------------------------------------------------------------------- weights


def test_ternary_quantize():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 96, generator=g)
    q, s = quant.ternary_quantize(w)
    assert q.dtype == torch.int8 and s.dtype == torch.float32
    assert set(q.unique().tolist()) <= {-1, 0, 1}
    assert torch.allclose(s, w.abs().mean(dim=1))
    assert torch.equal(q, torch.round(w / s[:, None]).clamp(-1, 1).to(torch.int8))
    # zero rows do not divide by zero
    q0, s0 = quant.ternary_quantize(torch.zeros(2, 8))
    assert torch.all(q0 == 0) and torch.all(s0 > 0)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_symmetric_quantize(bits):
    w = torch.randn(32, 50, generator=torch.Generator().manual_seed(bits))
    q, s = quant.symmetric_quantize(w, bits)
    qmax = 2 ** (bits - 1) - 1
    assert q.abs().max() == qmax and torch.all(q.abs().amax(dim=1) == qmax)
    assert (q.float() * s[:, None] - w).abs().max() <= s.max() / 2 * (1 + 1e-6)


# ---------------------------------------------------------------------------------------- activations


def test_gauss_clip_ratio_minimises_expected_error():
    for bits in range(1, 9):
        k = quant.gauss_clip_ratio(bits)
        best = quant.gauss_quant_mse(k, bits)
        for d in (1e-3, 1e-2, 0.1):
            assert best < quant.gauss_quant_mse(k * (1 + d), bits)
            assert best < quant.gauss_quant_mse(k * (1 - d), bits)
    # the 1-bit optimum is known in closed form: +-E|X| = sqrt(2/pi). A minimum is flat to second order,
    # so a float64 search locates it to ~sqrt(machine eps) ~ 1e-8; 1e-6 leaves margin.
    assert abs(quant.gauss_clip_ratio(1) - math.sqrt(2 / math.pi)) < 1e-6


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_gauss_mse_formula_matches_monte_carlo(bits):
    x = torch.randn(1_000_000, generator=torch.Generator().manual_seed(bits), dtype=torch.float64)
    for k in (quant.gauss_clip_ratio(bits), 1.0, 3.0):
        step = 2 * k / (2**bits - 1)
        xq = torch.round((x.clamp(-k, k) + k) / step) * step - k
        mc = ((x - xq) ** 2).mean().item()
        assert abs(mc / quant.gauss_quant_mse(k, bits) - 1) < 0.02


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("clip", ["gauss", "minmax"])
def test_codes_in_range_and_fake_quant_identical(bits, clip):
    for seed in range(5):
        x = torch.randn(4, 33, 96, generator=torch.Generator().manual_seed(seed)) * 3 + 0.5
        q, s, z = quant.quantize_activations(x, bits, clip)
        assert q.dtype == torch.uint8 and q.shape == x.shape and s.shape == x.shape[:-1]
        assert int(q.max()) <= 2**bits - 1
        fq = quant.fake_quantize_activations(x, bits, clip)
        assert torch.equal(fq, quant.dequantize_activations(q, s, z))
        # every value lands within half a step of its reconstruction unless it was clipped
        lo, hi = quant.activation_range(x, bits, clip)
        inside = (x >= lo[..., None]) & (x <= hi[..., None])
        assert torch.all(((fq - x).abs() <= s[..., None] * 0.5001 + 1e-6)[inside])


def test_codes_exact_where_representable():
    for bits in range(1, 9):
        levels = 2**bits - 1
        codes = torch.randint(0, levels + 1, (10, 64), generator=torch.Generator().manual_seed(bits))
        codes[:, 0], codes[:, 1] = 0, levels  # the row spans the full range
        x = codes.float() * 0.25 - 1.0
        q, s, z = quant.quantize_activations(x, bits, "minmax")
        assert torch.equal(q.long(), codes)
        assert torch.all(s == 0.25) and torch.all(z == 4.0)
        assert torch.equal(quant.dequantize_activations(q, s, z), x)


def test_gauss_range_inside_minmax_and_wider_ratio_is_minmax():
    x = torch.randn(16, 256, generator=torch.Generator().manual_seed(1))
    x[:, 0] = 40.0  # an outlier that gauss clipping cuts off
    lo, hi = quant.activation_range(x, 2, "gauss")
    mn, mx = quant.activation_range(x, 2, "minmax")
    assert torch.all(lo >= mn) and torch.all(hi <= mx) and torch.all(hi < 40.0)
    # 8-bit gauss ratio ~3.9 sigma still clips a 40-sigma outlier, but a plain normal row keeps its min
    y = torch.linspace(-1, 1, 256)[None]
    assert torch.equal(quant.activation_range(y, 8, "gauss")[0], y.amin(dim=-1))


def test_constant_rows_and_errors():
    x = torch.full((3, 16), 2.5)
    for clip in ("gauss", "minmax"):
        q, s, z = quant.quantize_activations(x, 4, clip)
        assert torch.all(q == 0) and torch.allclose(quant.dequantize_activations(q, s, z), x)
    with pytest.raises(ValueError):
        quant.quantize_activations(x, 0)
    with pytest.raises(ValueError):
        quant.quantize_activations(x, 9)
    with pytest.raises(ValueError, match="clip"):
        quant.quantize_activations(x, 4, "percentile")


def test_error_shrinks_with_bits_and_gauss_beats_minmax_on_gaussian_tokens():
    x = torch.randn(512, 1152, generator=torch.Generator().manual_seed(2))
    errs = {}
    for clip in ("gauss", "minmax"):
        errs[clip] = [
            ((quant.fake_quantize_activations(x, b, clip) - x) ** 2).mean().item() for b in (2, 3, 4)
        ]
        assert errs[clip][0] > errs[clip][1] > errs[clip][2]
    assert all(g < m for g, m in zip(errs["gauss"], errs["minmax"], strict=True))
    # and the measured gauss error is the theory's (the tokens are standard normal)
    for b, e in zip((2, 3, 4), errs["gauss"], strict=True):
        assert abs(e / quant.gauss_quant_mse(quant.gauss_clip_ratio(b), b) - 1) < 0.1


def test_straight_through_gradients():
    x = torch.randn(4, 64, requires_grad=True)
    quant.fake_quantize_activations(x, 2).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    w = torch.randn(8, 64, requires_grad=True)
    quant.fake_quantize_weight(w, "ternary").sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))
    p = torch.rand(4, 10, requires_grad=True)
    pq = quant.fake_quantize_probs(p, 8)
    assert torch.all(((pq * 255) - torch.round(pq * 255)).abs() < 1e-4)
    pq.sum().backward()
    assert torch.equal(p.grad, torch.ones_like(p))


# ---------------------------------------------------------------------------------- QLinear and config


@pytest.mark.parametrize("form", ["full", "block", "none"])
def test_qlinear_full_rank_branch_reconstructs_the_float_layer(form):
    """With float activations and a full-rank branch, Wq*s + up@down equals the folded weight, so the
    quantized layer equals the float one: checks the Hadamard fold and the SVD initialisation."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(192, 48).double()
    q = quant.QLinear.from_linear(lin, quant.LayerQuant("ternary", None, "gauss", form, 0, rank=48))
    x = torch.randn(5, 192, dtype=torch.float64)
    assert torch.allclose(q(x), lin(x), atol=1e-10)


def test_qlinear_lowrank_reduces_error():
    torch.manual_seed(0)
    lin = torch.nn.Linear(384, 384)
    x = torch.randn(64, 384)
    errs = []
    for rank in (0, 8, 32):
        q = quant.QLinear.from_linear(lin, quant.LayerQuant("ternary", None, rank=rank))
        errs.append(((q(x) - lin(x)) ** 2).mean().item())
    assert errs[0] > errs[1] > errs[2]


def test_qlinear_state_dict_names():
    q = quant.QLinear(64, 32, True, quant.LayerQuant(rank=4))
    assert set(q.state_dict()) == {"weight", "bias", "lowrank_down.weight", "lowrank_up.weight"}
    assert q.lowrank_down.weight.shape == (4, 64) and q.lowrank_up.weight.shape == (32, 4)
    with pytest.raises(ValueError, match="no Hadamard"):
        quant.QLinear(14, 8, True, quant.LayerQuant())


def test_config_json_round_trip_and_validation(tmp_path):
    cfg = quant.preset(2, act_bits=3, rank=8)
    assert len(cfg.layers) == 2 * 5 and cfg.attention_bits == 8
    assert cfg.layers["blocks.0.adaLN_modulation.1"] == quant.LayerQuant("int4", 4, "minmax", "none", 0, 0)
    assert cfg.layers["blocks.1.mlp.fc2"] == quant.LayerQuant("ternary", 3, "gauss", "full", 0, 8)
    assert cfg.block_linears()[:4] == [f"blocks.0.{n}" for n in quant.BLOCK_LINEARS]
    path = tmp_path / "q.json"
    cfg.save(path)
    assert quant.QuantConfig.load(path) == cfg
    bad = cfg.to_dict()
    bad["layers"]["blocks.0.attn.qkv"]["act_bits"] = 9
    with pytest.raises(ValueError, match="act_bits"):
        quant.QuantConfig.from_dict(bad)
    bad = cfg.to_dict()
    bad["layers"]["blocks.0.attn.qkv"]["colour"] = 1
    with pytest.raises(ValueError, match="unknown fields"):
        quant.QuantConfig.from_dict(bad)
    with pytest.raises(ValueError, match="not a quantization config"):
        quant.QuantConfig.from_dict({"layers": {}})
    with pytest.raises(ValueError, match="weight format"):
        quant.LayerQuant(weight="int16")


# ------------------------------------------------------------------------------------ whole-model QAT


def _tiny_dit(seed=0):
    return tiny_dit(seed, std=0.02, refill_seed=seed, depth=2, hidden_size=192, num_heads=3, input_size=8)


def _inputs(n=2):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, 8, 8, generator=g), torch.tensor([10, 500][:n]), torch.tensor([3, 7][:n])


def test_quantize_model_at_8_bits_stays_close_to_full_precision():
    fp = _tiny_dit()
    x, t, y = _inputs()
    with torch.no_grad():
        ref = fp(x, t, y)
        cfg = quant.preset(2, act_bits=8)
        cfg = quant.QuantConfig({n: lq.replace(weight="int8") for n, lq in cfg.layers.items()}, 8)
        out = quant.quantize_model(fp, cfg)(x, t, y)
    rel = ((out - ref).norm() / ref.norm()).item()
    assert rel < 0.02, rel  # 8-bit weights and activations everywhere: ~0.5% expected


def test_quantize_model_structure_and_ternary_degrades_gracefully():
    m = _tiny_dit()
    x, t, y = _inputs()
    with torch.no_grad():
        ref = m(x, t, y)
        q = quant.quantize_model(m, quant.preset(2, act_bits=4, rank=8))
        out = q(x, t, y)
    assert isinstance(q.blocks[0].attn.qkv, quant.QLinear) and q.blocks[1].attn.act_bits == 8
    assert isinstance(q.blocks[0].adaLN_modulation[1], quant.QLinear)
    assert type(q.final_layer.linear) is torch.nn.Linear  # full precision by the preset
    keys = set(q.state_dict())
    assert "blocks.0.attn.qkv.lowrank_down.weight" in keys and "blocks.0.mlp.fc2.lowrank_up.weight" in keys
    assert "blocks.0.adaLN_modulation.1.lowrank_down.weight" not in keys
    rel = ((out - ref).norm() / ref.norm()).item()
    assert 0.01 < rel < 1.0, rel
    with pytest.raises(ValueError, match="does not have"):
        quant.quantize_model(_tiny_dit(), quant.QuantConfig({"blocks.9.attn.qkv": quant.LayerQuant()}))


def test_weight_format_table_is_the_one_every_side_reads():
    """One table (robuq.quant.formats): QAT's quantizer, the config check and the exporter's packing agree
    on names, code ranges and packed widths, and a format .rq cannot store is refused when the config is
    built (before any training), naming the stored ones."""
    from robuq.exporter import packing
    from robuq.quant.formats import WEIGHT_FORMATS

    assert packing.FORMATS == tuple(WEIGHT_FORMATS) == ("ternary", "int4", "int8")
    w = torch.randn(16, 40) * 3
    for name, f in WEIGHT_FORMATS.items():
        q, _ = quant.quantize_weight(w, name)
        assert q.min().item() == f.code_min and q.max().item() == f.code_max, name
        assert packing.CODE_RANGE[name] == (f.code_min, f.code_max)
        codes = q.numpy().astype(np.int8)
        assert (
            packing.pack_weight(codes, name).shape
            == (16, f.packed_cols(40))
            == (16, packing.packed_cols(name, 40))
        )
        np.testing.assert_array_equal(
            packing.unpack_weight(packing.pack_weight(codes, name), name, 40), codes
        )
    for bad in ("int3", "int5", "int2", "fp8", 4):
        with pytest.raises(ValueError, match="unsupported weight format .*stores ternary, int4, int8"):
            quant.LayerQuant(bad, 4, "gauss", "full", 0, 0)
    # the C++ twin (kernels/include/robuq/format.h): the same formats, in the same order, the same codes
    from robuq import _C

    cpp = _C.weight_formats()
    assert [d["name"] for d in cpp] == list(WEIGHT_FORMATS) and [d["value"] for d in cpp] == [0, 1, 2]
    for d in cpp:
        f = WEIGHT_FORMATS[d["name"]]
        want = (f.code_min, f.code_max, f.codes_per_byte)
        assert (d["code_min"], d["code_max"], d["codes_per_byte"]) == want, d

"""Tests of the PyTorch reference DiT (robuq.models) against the facts in docs/dit.md.

Large configurations are only built on the meta device (shapes and counts, no memory); forwards use tiny
models so the file runs in seconds.
"""

import io
import math
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_dit import tiny_dit

import robuq
from robuq import models
from robuq.models import CONFIGS, DiTConfig, create, reinit_zero_layers

NUM_CLASSES = 10


def fresh(**overrides) -> models.DiT:
    """A tiny DiT with the official initialisation (zeroed adaLN / output layers)."""
    kw = dict(depth=2, hidden_size=64, num_heads=4, input_size=8, num_classes=NUM_CLASSES)
    return create("DiT-S/2", **{**kw, **overrides})


def tiny(seed: int = 0, **overrides) -> models.DiT:
    """A tiny DiT with random (non-zero) adaLN / output layers, in eval mode."""
    kw = dict(depth=2, hidden_size=64, num_heads=4, input_size=8, num_classes=NUM_CLASSES)
    return tiny_dit(seed, **{**kw, **overrides})


def inputs(model: models.DiT, n: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    x = torch.randn(n, c.in_channels, c.input_size, c.input_size, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    y = torch.randint(0, c.num_classes, (n,), generator=g)
    return x, t, y


# ------------------------------------------------------------------------------------------------------
# Fixed embeddings and layout
# ------------------------------------------------------------------------------------------------------


def test_timestep_embedding_matches_float64_formula():
    ts = [0, 1, 7, 250, 500, 998, 999]
    dim, half = 256, 128
    got = models.timestep_embedding(torch.tensor(ts), dim)
    assert got.shape == (len(ts), dim) and got.dtype == torch.float32
    ref = np.zeros((len(ts), dim))
    for r, t in enumerate(ts):
        for i in range(half):
            arg = t * math.exp(-math.log(10000) * i / half)
            ref[r, i] = math.cos(arg)  # cos first
            ref[r, half + i] = math.sin(arg)
    # float32 args of up to ~1000 radians carry some error (max 6e-5 observed over t = 0..999).
    np.testing.assert_allclose(got.double().numpy(), ref, atol=2e-4, rtol=0)
    np.testing.assert_array_equal(got[0].numpy(), np.r_[np.ones(half), np.zeros(half)])
    # float timesteps give the same values as integer ones
    torch.testing.assert_close(models.timestep_embedding(torch.tensor(ts, dtype=torch.float32), dim), got)


def test_timestep_embedding_odd_dim_pads_zero():
    emb = models.timestep_embedding(torch.tensor([3, 5]), 7)
    assert emb.shape == (2, 7)
    assert torch.all(emb[:, -1] == 0)


def test_pos_embed_matches_float64_formula():
    d, grid = 16, 3
    got = models.get_2d_sincos_pos_embed(d, grid)
    assert got.shape == (grid * grid, d) and got.dtype == np.float64
    quarter = d // 4
    for row in range(grid):
        for col in range(grid):
            token = row * grid + col
            for half, pos in ((0, col), (1, row)):  # first half: column, second half: row
                for i in range(quarter):
                    w = 1.0 / 10000 ** (i / quarter)
                    base = half * d // 2
                    assert got[token, base + i] == pytest.approx(math.sin(pos * w), abs=1e-12)
                    assert got[token, base + quarter + i] == pytest.approx(math.cos(pos * w), abs=1e-12)


def test_model_pos_embed_is_frozen_float32_table():
    model = tiny()
    c = model.config
    ref = models.get_2d_sincos_pos_embed(c.hidden_size, c.grid_size).astype(np.float32)[None]
    assert model.pos_embed.requires_grad is False
    assert model.pos_embed.dtype == torch.float32
    np.testing.assert_array_equal(model.pos_embed.numpy(), ref)
    assert "pos_embed" in model.state_dict()


def test_unpatchify_ordering():
    n, gh, p, ch = 2, 3, 2, 5
    tokens = gh * gh
    # value encodes (n, token, p_row, p_col, channel); features ordered (p_row, p_col, channel)
    x = torch.zeros(n, tokens, p * p * ch)
    for b in range(n):
        for tok in range(tokens):
            for pr in range(p):
                for pc in range(p):
                    for c in range(ch):
                        x[b, tok, (pr * p + pc) * ch + c] = b * 10000 + tok * 100 + pr * 20 + pc * 10 + c
    img = models.unpatchify(x, p, ch)
    assert img.shape == (n, ch, gh * p, gh * p)
    for b in range(n):
        for tok in range(tokens):
            h, w = divmod(tok, gh)  # tokens row-major over the patch grid
            for pr in range(p):
                for pc in range(p):
                    for c in range(ch):
                        expected = b * 10000 + tok * 100 + pr * 20 + pc * 10 + c
                        assert img[b, c, h * p + pr, w * p + pc].item() == expected


def test_patch_embed_is_row_major_linear_over_patches():
    model = tiny()
    c = model.config
    x, _, _ = inputs(model)
    p, g = c.patch_size, c.grid_size
    got = model.x_embedder(x)  # [N, T, D]
    patches = x.reshape(2, c.in_channels, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(2, g * g, -1)
    w = model.x_embedder.proj.weight.reshape(c.hidden_size, -1)  # (C, p_row, p_col) flattened
    torch.testing.assert_close(got, patches @ w.T + model.x_embedder.proj.bias, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        model.x_embedder(torch.zeros(1, c.in_channels, c.input_size + p, c.input_size))


# ------------------------------------------------------------------------------------------------------
# Configurations, state dict, parameter counts
# ------------------------------------------------------------------------------------------------------


def test_registry_has_the_twelve_configs():
    assert len(CONFIGS) == 12
    for size, (depth, d, heads) in {
        "S": (12, 384, 6),
        "B": (12, 768, 12),
        "L": (24, 1024, 16),
        "XL": (28, 1152, 16),
    }.items():
        for p in (2, 4, 8):
            expected = dict(depth=depth, hidden_size=d, patch_size=p, num_heads=heads)
            assert CONFIGS[f"DiT-{size}/{p}"] == expected


@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_dict_keys_and_shapes(name):
    with torch.device("meta"):
        model = create(name)
    c = model.config
    d, p, out = c.hidden_size, c.patch_size, c.out_channels
    sd = model.state_dict()
    assert len(sd) == 8 + 10 * c.depth + 4
    expected = {
        "x_embedder.proj.weight": (d, 4, p, p),
        "x_embedder.proj.bias": (d,),
        "t_embedder.mlp.0.weight": (d, 256),
        "t_embedder.mlp.0.bias": (d,),
        "t_embedder.mlp.2.weight": (d, d),
        "t_embedder.mlp.2.bias": (d,),
        "y_embedder.embedding_table.weight": (1001, d),
        "pos_embed": (1, (32 // p) ** 2, d),
        "final_layer.linear.weight": (p * p * 8, d),
        "final_layer.linear.bias": (p * p * 8,),
        "final_layer.adaLN_modulation.1.weight": (2 * d, d),
        "final_layer.adaLN_modulation.1.bias": (2 * d,),
    }
    for i in range(c.depth):
        for sub, shape in {
            "attn.qkv": (3 * d, d),
            "attn.proj": (d, d),
            "mlp.fc1": (4 * d, d),
            "mlp.fc2": (d, 4 * d),
            "adaLN_modulation.1": (6 * d, d),
        }.items():
            expected[f"blocks.{i}.{sub}.weight"] = shape
            expected[f"blocks.{i}.{sub}.bias"] = (shape[0],)
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    assert out == 8
    assert c.head_dim == (72 if name.startswith("DiT-XL") else 64)


def test_xl2_has_292_keys():
    with torch.device("meta"):
        model = create("DiT-XL/2")
    assert len(model.state_dict()) == 292


@pytest.mark.parametrize(
    "name, millions", [("DiT-S/2", 33.0), ("DiT-B/2", 130.5), ("DiT-L/2", 458.1), ("DiT-XL/2", 675.1)]
)
def test_parameter_counts(name, millions):
    with torch.device("meta"):
        model = create(name)
    count = sum(p.numel() for p in model.parameters())  # includes pos_embed
    assert abs(count / 1e6 - millions) < 0.06


def test_config_round_trip_and_overrides():
    model = create(
        "DiT-S/2", depth=2, hidden_size=192, num_heads=3, input_size=16, in_channels=1, num_classes=10
    )
    c = model.config
    assert (c.depth, c.hidden_size, c.num_heads, c.patch_size, c.input_size) == (2, 192, 3, 2, 16)
    assert (c.in_channels, c.out_channels, c.num_classes, c.num_patches) == (1, 2, 10, 64)
    assert DiTConfig.from_dict(c.to_dict()) == c
    assert c.to_dict()["class_dropout_prob"] == 0.1
    with torch.device("meta"):
        assert create("DiT-B/4", learn_sigma=False).final_layer.linear.weight.shape == (4 * 4 * 4, 768)
    with pytest.raises(KeyError):
        create("DiT-M/2")
    with pytest.raises(TypeError):
        create("DiT-S/2", depthh=3)
    with pytest.raises(ValueError):
        DiTConfig.from_dict({**c.to_dict(), "bogus": 1})
    with pytest.raises(ValueError):
        DiTConfig(depth=1, hidden_size=64, patch_size=2, num_heads=3)


def test_official_initialisation():
    model = fresh()
    for block in model.blocks:
        ada = block.adaLN_modulation[1]
        assert torch.all(ada.weight == 0) and torch.all(ada.bias == 0)
        assert torch.all(block.attn.qkv.bias == 0) and torch.all(block.mlp.fc1.bias == 0)
        bound = math.sqrt(6 / (64 + 192))  # xavier uniform on qkv [192, 64]
        assert block.attn.qkv.weight.abs().max() <= bound
    assert torch.all(model.final_layer.linear.weight == 0) and torch.all(model.final_layer.linear.bias == 0)
    assert torch.all(model.final_layer.adaLN_modulation[1].weight == 0)
    assert torch.all(model.x_embedder.proj.bias == 0)
    assert model.x_embedder.proj.weight.abs().max() <= math.sqrt(6 / (64 + 4 * 2 * 2))
    assert model.y_embedder.embedding_table.weight.shape == (NUM_CLASSES + 1, 64)
    # no null-class row without class dropout (official use_cfg_embedding = dropout_prob > 0)
    no_cfg = create("DiT-S/2", depth=1, hidden_size=64, num_heads=4, input_size=8, class_dropout_prob=0.0)
    assert no_cfg.y_embedder.embedding_table.weight.shape == (1000, 64)


def test_strict_load_round_trip():
    src = tiny(seed=3)
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    dst = models.DiT(src.config)
    result = dst.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    dst.eval()
    x, t, y = inputs(src)
    with torch.no_grad():
        torch.testing.assert_close(dst(x, t, y), src(x, t, y), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------------
# Forward
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, out_channels",
    [
        (dict(), 8),
        (dict(learn_sigma=False), 4),
        (dict(patch_size=4, input_size=16), 8),
        (dict(in_channels=1, input_size=16, hidden_size=48, num_heads=3), 2),
    ],
)
def test_forward_shape(overrides, out_channels):
    model = tiny(**overrides)
    x, t, y = inputs(model, n=3)
    with torch.no_grad():
        out = model(x, t, y)
    assert out.shape == (3, out_channels, x.shape[2], x.shape[3])
    assert torch.isfinite(out).all()


def test_zero_init_outputs_zero_and_reinit_nonzero():
    model = fresh().eval()
    x, t, y = inputs(model)
    with torch.no_grad():
        assert torch.all(model(x, t, y) == 0)
        reinit_zero_layers(model, generator=torch.Generator().manual_seed(0))
        out = model(x, t, y)
    assert out.abs().mean() > 1e-4
    # a seeded generator gives the same weights
    other = reinit_zero_layers(fresh(), generator=torch.Generator().manual_seed(0))
    for a, b in zip(models._zero_init_linears(other), models._zero_init_linears(model), strict=True):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


def _reference_forward(model: models.DiT, x, t, y):
    """The DiT forward written independently from torch.nn.functional and the parameters."""
    c = model.config
    d, p, h = c.hidden_size, c.patch_size, c.num_heads
    sd = model.state_dict()

    def lin(v, name):
        return F.linear(v, sd[name + ".weight"], sd[name + ".bias"])

    def ln(v):
        return F.layer_norm(v, (d,), eps=1e-6)

    tok = F.conv2d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=p)
    tok = tok.flatten(2).transpose(1, 2) + sd["pos_embed"]
    temb = lin(F.silu(lin(models.timestep_embedding(t, 256), "t_embedder.mlp.0")), "t_embedder.mlp.2")
    cond = temb + sd["y_embedder.embedding_table.weight"][y]
    n, tokens, _ = tok.shape
    for i in range(c.depth):
        pre = f"blocks.{i}."
        sh1, sc1, g1, sh2, sc2, g2 = lin(F.silu(cond), pre + "adaLN_modulation.1").chunk(6, dim=1)
        a = ln(tok) * (1 + sc1[:, None]) + sh1[:, None]
        q, k, v = lin(a, pre + "attn.qkv").split(d, dim=-1)
        q, k, v = (z.reshape(n, tokens, h, d // h).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, tokens, d)
        tok = tok + g1[:, None] * lin(a, pre + "attn.proj")
        m = ln(tok) * (1 + sc2[:, None]) + sh2[:, None]
        m = lin(F.gelu(lin(m, pre + "mlp.fc1"), approximate="tanh"), pre + "mlp.fc2")
        tok = tok + g2[:, None] * m
    sh, sc = lin(F.silu(cond), "final_layer.adaLN_modulation.1").chunk(2, dim=1)
    out = lin(ln(tok) * (1 + sc[:, None]) + sh[:, None], "final_layer.linear")
    return models.unpatchify(out, p, c.out_channels)


def test_forward_matches_functional_reference():
    model = tiny(seed=5, hidden_size=96, num_heads=3)
    x, t, y = inputs(model, n=3, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y), _reference_forward(model, x, t, y), rtol=1e-4, atol=1e-5)


def test_attention_float_path_matches_sdpa():
    torch.manual_seed(0)
    attn = models.Attention(48, num_heads=3)
    x = torch.randn(2, 10, 48)
    q, k, v = attn.qkv(x).reshape(2, 10, 3, 3, 16).permute(2, 0, 3, 1, 4)
    ref = attn.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 10, 48))
    assert attn.act_bits is None
    torch.testing.assert_close(attn(x), ref, rtol=1e-5, atol=1e-6)


def test_attention_quant_hook_calls(monkeypatch):
    """The act_bits branch calls robuq.quant on q, k, v ([..., head_dim] rows) and the probabilities."""
    calls = []

    def fake_act(t, bits, clip="gauss"):
        calls.append(("act", tuple(t.shape), bits, clip))
        return t

    def fake_probs(p, bits=8):
        calls.append(("probs", tuple(p.shape), bits))
        return p

    fake = types.SimpleNamespace(fake_quantize_activations=fake_act, fake_quantize_probs=fake_probs)
    monkeypatch.setattr(robuq, "quant", fake, raising=False)
    torch.manual_seed(0)
    attn = models.Attention(48, num_heads=3)
    x = torch.randn(2, 10, 48)
    ref = attn(x)
    assert calls == []
    attn.act_bits = 6
    torch.testing.assert_close(attn(x), ref)
    assert calls == [("act", (2, 3, 10, 16), 6, "minmax")] * 3 + [("probs", (2, 3, 10, 10), 6)]


def _real_quant():
    try:
        from robuq import quant
    except ImportError as e:  # pragma: no cover - robuq.quant is developed alongside
        pytest.skip(f"robuq.quant not importable: {e}")
    if not (hasattr(quant, "fake_quantize_activations") and hasattr(quant, "fake_quantize_probs")):
        pytest.skip("robuq.quant lacks fake_quantize_activations / fake_quantize_probs")
    return quant


def test_attention_quantized_branch():
    quant = _real_quant()
    torch.manual_seed(0)
    attn = models.Attention(48, num_heads=3)
    x = torch.randn(2, 10, 48)
    with torch.no_grad():
        ref_float = attn(x)
        attn.act_bits = 8
        got = attn(x)
        q, k, v = attn.qkv(x).reshape(2, 10, 3, 3, 16).permute(2, 0, 3, 1, 4)
        q, k, v = (quant.fake_quantize_activations(z, 8, clip="minmax") for z in (q, k, v))
        probs = quant.fake_quantize_probs(torch.softmax((q @ k.transpose(-2, -1)) / 4.0, dim=-1), 8)
        expected = attn.proj((probs @ v).transpose(1, 2).reshape(2, 10, 48))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert not torch.equal(got, ref_float)
    rel = (got - ref_float).norm() / ref_float.norm()
    assert rel < 0.05
    # gradients pass through (straight-through estimators)
    xg = x.clone().requires_grad_(True)
    attn(xg).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------------
# Classifier-free guidance and class dropout
# ------------------------------------------------------------------------------------------------------


def _cfg_setup(seed: int = 0):
    model = tiny(seed=seed)
    x, t, y = inputs(model, n=2, seed=seed)
    garbage = torch.randn_like(x) * 100  # the uncond half of x is ignored (first half duplicated)
    x_full = torch.cat([x, garbage])
    t_full = torch.cat([t, t])
    y_full = torch.cat([y, torch.full_like(y, NUM_CLASSES)])
    with torch.no_grad():
        cond = model(x, t, y)
        uncond = model(x, t, torch.full_like(y, NUM_CLASSES))
    return model, (x_full, t_full, y_full), cond, uncond


@pytest.mark.parametrize("mode", ["dit", "all"])
def test_cfg_scale_one_is_conditional(mode):
    model, args, cond, uncond = _cfg_setup()
    with torch.no_grad():
        out = model.forward_with_cfg(*args, cfg_scale=1.0, mode=mode)
    torch.testing.assert_close(out[:2], cond, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode, guided", [("dit", 3), ("all", 4)])
def test_cfg_formula(mode, guided):
    model, args, cond, uncond = _cfg_setup(seed=1)
    s = 4.0
    with torch.no_grad():
        out = model.forward_with_cfg(*args, cfg_scale=s, mode=mode)
    assert out.shape == (4, 8, 8, 8)
    expected = uncond[:, :guided] + s * (cond[:, :guided] - uncond[:, :guided])
    tol = dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out[:2, :guided], expected, **tol)
    torch.testing.assert_close(out[2:, :guided], expected, **tol)  # guided eps duplicated in both halves
    # remaining channels (eps channel 3 in "dit" mode, the variance channels always) are not guided:
    torch.testing.assert_close(out[:2, guided:], cond[:, guided:], **tol)
    torch.testing.assert_close(out[2:, guided:], uncond[:, guided:], **tol)
    assert not torch.allclose(out[:2, :guided], cond[:, :guided], rtol=1e-3, atol=1e-4)
    if mode == "dit":
        torch.testing.assert_close(out[:2, 3], cond[:, 3], **tol)
    else:
        assert not torch.allclose(out[:2, 3], cond[:, 3], rtol=1e-3, atol=1e-4)


def test_cfg_rejects_bad_input():
    model, args, _, _ = _cfg_setup()
    with pytest.raises(ValueError):
        model.forward_with_cfg(*args, cfg_scale=2.0, mode="bogus")
    with pytest.raises(ValueError):
        model.forward_with_cfg(*(a[:3] for a in args), cfg_scale=2.0)


def test_class_dropout_all_labels_dropped_in_train():
    model = tiny(seed=2, class_dropout_prob=1.0)
    x, t, y = inputs(model, n=4)
    assert torch.all(y < NUM_CLASSES)
    with torch.no_grad():
        model.train()
        dropped = model(x, t, y)
        model.eval()
        null = model(x, t, torch.full_like(y, NUM_CLASSES))
        kept = model(x, t, y)
    torch.testing.assert_close(dropped, null, rtol=0, atol=0)
    assert not torch.allclose(kept, null)


def test_label_embedder_force_drop_ids():
    emb = models.LabelEmbedder(NUM_CLASSES, 8, dropout_prob=0.1)
    labels = torch.tensor([1, 2, 3, 4])
    force = torch.tensor([1, 0, 1, 0])
    got = emb(labels, train=False, force_drop_ids=force)
    torch.testing.assert_close(got, emb.embedding_table(torch.tensor([NUM_CLASSES, 2, NUM_CLASSES, 4])))
    torch.testing.assert_close(emb(labels, train=False), emb.embedding_table(labels))
    # train mode with dropout 0: labels kept, no null row
    emb0 = models.LabelEmbedder(NUM_CLASSES, 8, dropout_prob=0.0)
    torch.testing.assert_close(emb0(labels, train=True), emb0.embedding_table(labels))

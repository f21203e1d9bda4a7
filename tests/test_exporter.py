"""robuq-export and the .rq format (docs/rq-format.md).

The file is checked with a reader written here from the spec alone (numpy: the 8-byte length, the JSON
header, byte slices; no safetensors library, no exporter code): the layer outputs computed from the file
by the spec's formula must equal QLinear.forward for every quantized layer of a tiny QAT model.
"""

import argparse
import json
import math
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from robuq import quant
from robuq.checkpoint import _safe_globals
from robuq.exporter import packing
from robuq.exporter.cli import main
from robuq.exporter.export import plan_rq
from robuq.exporter.random_model import RandomWeights, ampn_mix, mac_weighted_bits, random_quant_config
from robuq.exporter.rq import ALIGN, load_rq
from robuq.models import CONFIGS, DiTConfig, create, reinit_zero_layers
from robuq.quant import LayerQuant, QLinear, preset, quantize_model

TINY = dict(depth=2, hidden_size=192, num_heads=3, input_size=8, num_classes=10)
TINY_ARGS = [
    "--depth",
    "2",
    "--hidden-size",
    "192",
    "--num-heads",
    "3",
    "--input-size",
    "8",
    "--num-classes",
    "10",
]
SPEC_DTYPES = {"F32": "<f4", "F16": "<f2", "U8": "u1", "I32": "<i4"}


# --------------------------------------------------------------------------------------------- helpers
def mixed_config() -> quant.QuantConfig:
    """W1.58A2 gauss full Hadamard rank 4 (paper preset) and adaLN int4, plus variants: a block-Hadamard
    layer, a minmax / no-Hadamard baseline layer, an int8 layer and a float-activation layer."""
    q = preset(2, 2, rank=4)
    q.layers["blocks.1.attn.proj"] = LayerQuant("ternary", 3, "gauss", "block", 0, 4)
    q.layers["blocks.1.mlp.fc2"] = LayerQuant("ternary", 2, "minmax", "none", 0, 0)
    q.layers["blocks.1.attn.qkv"] = LayerQuant("int8", 8, "minmax", "block", 32, 2)
    q.layers["blocks.1.mlp.fc1"] = LayerQuant("ternary", None, "gauss", "full", 0, 4)
    return q


def tiny_model(seed: int = 0, q: quant.QuantConfig | None = None, **overrides):
    torch.manual_seed(seed)
    m = create("DiT-S/2", **{**TINY, **overrides})
    g = torch.Generator().manual_seed(seed)  # the refill, then the low-rank factors below
    reinit_zero_layers(m, generator=g)
    if q is not None:
        # quantize_model's layout, with random low-rank factors instead of its (slow, here irrelevant) SVD
        base = m.state_dict()
        quantize_model(m, q, init_lowrank=False)
        with torch.no_grad():
            for name, lq in q.layers.items():
                mod = m.get_submodule(name)
                mod.weight.copy_(quant.fast_hadamard(base[f"{name}.weight"], lq.hadamard, lq.hadamard_block))
                mod.bias.copy_(base[f"{name}.bias"])
                for lin in (mod.lowrank_down, mod.lowrank_up) if lq.rank else ():
                    lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.05)
    return m.eval()


def robuq_checkpoint(path, model, ema=None, step=7):
    q = getattr(model, "quant_config", None)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    torch.save(
        {
            "model": model.state_dict(),
            "ema": (ema or model).state_dict(),
            "opt": opt.state_dict(),
            "step": step,
            "args": {"lr": 1e-4, "model": "DiT-S/2"},
            "model_config": model.config.to_dict(),
            "quant_config": None if q is None else q.to_dict(),
            # numpy's legacy state holds an ndarray: weights_only loading must accept it
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()},  # noqa: NPY002
        },
        path,
    )
    return path


def spec_read(path):
    """A .rq reader from docs/rq-format.md: (metadata, tensors, header, data start)."""
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    meta = header.pop("__metadata__")
    start = 8 + n
    tensors = {}
    for name, e in header.items():
        if name.startswith("__pad"):
            continue
        b, end = e["data_offsets"]
        tensors[name] = np.frombuffer(raw[start + b : start + end], dtype=SPEC_DTYPES[e["dtype"]]).reshape(
            e["shape"]
        )
    return meta, tensors, header, start


def spec_codes(packed: np.ndarray, fmt: str, cols: int) -> np.ndarray:
    """Weight codes int64 [out, in] from the packed bytes, as the spec describes the layouts."""
    if fmt == "ternary":
        c = np.stack([(packed >> (2 * i)) & 3 for i in range(4)], axis=-1).reshape(len(packed), -1)[:, :cols]
        assert not np.any(c == 3)
        return c.astype(np.int64) - 1
    if fmt == "int4":
        nib = (
            np.stack([packed & 15, packed >> 4], axis=-1).reshape(len(packed), -1)[:, :cols].astype(np.int64)
        )
        return np.where(nib >= 8, nib - 16, nib)
    assert fmt == "int8"
    return packed.view(np.int8).astype(np.int64)


def spec_layer(name: str, entry: dict, tensors: dict, x: torch.Tensor) -> np.ndarray:
    """y = scale * s * (q . code - zero * weight_sum) + lowrank + bias, from the file (float64)."""
    n = entry["in_features"]
    if entry["hadamard"] == "full":
        assert quant.factorize(n) == (entry["hadamard_k"], entry["hadamard_m"])
        xr = quant.fast_hadamard(x, "full")
    elif entry["hadamard"] == "block":
        xr = quant.fast_hadamard(x, "block", entry["hadamard_block"])
    else:
        xr = x
    code = spec_codes(tensors[f"{name}.weight_packed"], entry["weight"], n)
    s = tensors[f"{name}.weight_scale"].astype(np.float64)
    wsum = tensors[f"{name}.weight_sum"].astype(np.int64)
    assert np.array_equal(wsum, code.sum(axis=1))
    if entry["act_bits"] is not None:
        k = entry["clip_k"]
        assert np.float32(k) == np.float32(quant.clip_constant(entry["clip"], entry["act_bits"]))
        q, scale, zero = quant.quantize_activations(xr, entry["act_bits"], entry["clip"])
        acc = q.numpy().astype(np.int64) @ code.T  # exact integer dot products
        y = scale.double().numpy()[:, None] * s[None] * (acc - zero.double().numpy()[:, None] * wsum[None])
    else:
        y = xr.double().numpy() @ (s[:, None] * code).T
    if entry["rank"]:
        down = tensors[f"{name}.lowrank_down.weight"].astype(np.float64)
        up = tensors[f"{name}.lowrank_up.weight"].astype(np.float64)
        y = y + (xr.double().numpy() @ down.T) @ up.T
    if f"{name}.bias" in tensors:
        y = y + tensors[f"{name}.bias"].astype(np.float64)
    return y


def layer_inputs(model, x, t, y):
    """Each QLinear's input during a forward pass: name -> [tokens, in] float32."""
    got, hooks = {}, []
    for name, mod in model.named_modules():
        if isinstance(mod, QLinear):
            hooks.append(mod.register_forward_hook(lambda m, a, o, n=name: got.__setitem__(n, a[0].detach())))
    with torch.no_grad():
        model(x, t, y)
    for h in hooks:
        h.remove()
    return {n: v.reshape(-1, v.shape[-1]) for n, v in got.items()}


def export(*argv) -> int:
    return main([str(a) for a in argv] + ["-q"])


def sample(model, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    c, s = model.config.in_channels, model.config.input_size
    return torch.randn(n, c, s, s, generator=g), torch.tensor([10.0, 700.0])[:n], torch.tensor([1, 3])[:n]


@pytest.fixture(scope="module")
def qat_file(tmp_path_factory):
    """A tiny QAT model (mixed_config), its checkpoint and its exported .rq."""
    d = tmp_path_factory.mktemp("qat")
    model = tiny_model(0, mixed_config())
    ckpt = robuq_checkpoint(d / "qat.pt", model)
    assert export(ckpt, "-o", d / "qat.rq") == 0
    return model, d / "qat.rq"


# ------------------------------------------------------------------------------------------------ packing
@pytest.mark.parametrize("cols", [1, 2, 3, 4, 5, 7, 8, 9, 13, 63, 192, 1153])
def test_pack_round_trip(cols):
    g = np.random.default_rng(cols)
    for fmt, (lo, hi) in packing.CODE_RANGE.items():
        codes = g.integers(lo, hi + 1, size=(5, cols), dtype=np.int8)
        packed = packing.pack_weight(codes, fmt)
        assert packed.dtype == np.uint8 and packed.shape == (5, packing.packed_cols(fmt, cols))
        assert np.array_equal(packing.unpack_weight(packed, fmt, cols), codes)
        assert np.array_equal(spec_codes(packed, fmt, cols), codes)  # the layout the spec describes


def test_pack_padding_and_invalid_codes():
    t = packing.pack_ternary(np.array([[-1, 0, 1, -1, 1]], dtype=np.int8))
    assert t.tolist() == [[0 | 1 << 2 | 2 << 4 | 0 << 6, 2 | 1 << 2 | 1 << 4 | 1 << 6]]  # pads are code 1
    assert packing.pack_int4(np.array([[-7, 7, -1]], dtype=np.int8)).tolist() == [[0x79, 0x0F]]
    with pytest.raises(ValueError, match="outside -1..1"):
        packing.pack_ternary(np.array([[2]], dtype=np.int8))
    with pytest.raises(ValueError, match="outside -7..7"):
        packing.pack_int4(np.array([[-8]], dtype=np.int8))
    with pytest.raises(ValueError, match="code 3"):
        packing.unpack_ternary(np.array([[0xFF]], dtype=np.uint8), 4)
    with pytest.raises(ValueError, match="-8"):
        packing.unpack_int4(np.array([[0x08]], dtype=np.uint8), 2)
    with pytest.raises(ValueError, match="unsupported weight format"):
        packing.pack_weight(np.zeros((1, 1), np.int8), "int3")


@pytest.mark.parametrize("cols", [1, 3, 4, 6, 9, 1152, 1155])
def test_ternary_packing_matches_cpp(cols):
    c_ext = pytest.importorskip("robuq._C", reason="C++ extension not built")
    codes = np.random.default_rng(cols).integers(-1, 2, size=(7, cols), dtype=np.int8)
    assert np.array_equal(packing.pack_ternary(codes), c_ext.pack_ternary(codes))
    assert np.array_equal(c_ext.unpack_ternary(packing.pack_ternary(codes), cols), codes)


# ------------------------------------------------------------------------------------------- the format
def test_layer_outputs_from_file_match_qlinear(qat_file):
    """Every quantized layer, computed from the file by the spec's formula, equals QLinear.forward (with
    its low-rank factors rounded to fp16, as stored)."""
    model, path = qat_file
    meta, tensors, _, _ = spec_read(path)
    layers = json.loads(meta["quant_config"])["layers"]
    assert set(layers) == set(model.quant_config.layers)
    inputs = layer_inputs(model, *sample(model))
    modules = dict(model.named_modules())
    for name, entry in layers.items():
        mod = modules[name]
        lq = model.quant_config.layers[name]
        assert (entry["weight"], entry["act_bits"], entry["clip"], entry["hadamard"], entry["rank"]) == (
            lq.weight,
            lq.act_bits,
            lq.clip,
            lq.hadamard,
            lq.rank,
        )
        assert (entry["in_features"], entry["out_features"]) == (mod.in_features, mod.out_features)
        x = inputs[name]
        with torch.no_grad():
            if mod.lowrank_down is not None:
                for lin in (mod.lowrank_down, mod.lowrank_up):
                    lin.weight.copy_(lin.weight.half().float())
            ref = mod(x).double().numpy()
        got = spec_layer(name, entry, tensors, x)
        err = np.abs(got - ref).max() / np.abs(ref).max()
        assert err <= 1e-5, f"{name}: max relative error {err:.2e}"
    # everything else is stored unchanged, in float32
    sd = model.state_dict()
    for key, value in sd.items():
        layer = key.rsplit(".", 1)[0]
        if layer not in layers and layer.rsplit(".", 1)[0] not in layers:
            assert tensors[key].dtype == np.float32 and np.array_equal(tensors[key], value.numpy()), key


def test_block_hadamard_entry_is_resolved(qat_file):
    _, path = qat_file
    layers = json.loads(spec_read(path)[0]["quant_config"])["layers"]
    assert layers["blocks.1.attn.proj"]["hadamard_block"] == 64  # 0 in the config: largest power of 2
    assert layers["blocks.1.attn.qkv"]["hadamard_block"] == 32
    assert (layers["blocks.0.mlp.fc2"]["hadamard_k"], layers["blocks.0.mlp.fc2"]["hadamard_m"]) == (12, 64)
    assert layers["blocks.1.mlp.fc2"]["clip_k"] == 0 and layers["blocks.1.mlp.fc2"]["hadamard_k"] == 0


def test_metadata_round_trip(qat_file):
    model, path = qat_file
    raw, _, _, _ = spec_read(path)
    assert all(isinstance(v, str) for v in raw.values())
    assert raw["format"] == "robuq" and raw["format_version"] == "1"
    meta, _ = load_rq(path)
    assert meta["model_config"] == {**model.config.to_dict(), "space": "latent"}
    assert (
        DiTConfig.from_dict({k: v for k, v in meta["model_config"].items() if k != "space"}) == model.config
    )
    assert meta["sampling"] == {"clip_denoised": False, "cfg_mode": "dit"}
    assert meta["quant_config"]["attention_bits"] == 8
    q = model.quant_config
    for name, e in meta["quant_config"]["layers"].items():
        lq = q.layers[name]
        assert lq == LayerQuant(
            e["weight"], e["act_bits"], e["clip"], e["hadamard"], lq.hadamard_block, e["rank"]
        )
        if e["act_bits"] is not None and e["clip"] == "gauss":
            k32 = np.float32(quant.gauss_clip_ratio(e["act_bits"]))
            assert e["clip_k"] == float(k32)  # exactly the float32 value
    assert "qat.pt" in meta["source"] and "step 7" in meta["source"] and "EMA" in meta["source"]


def test_alignment_and_safetensors_library(qat_file):
    from safetensors import safe_open
    from safetensors.numpy import load_file

    _, path = qat_file
    _, tensors, header, start = spec_read(path)
    assert start % ALIGN == 0
    ends = sorted(e["data_offsets"] for e in header.values())
    assert all(a[1] == b[0] for a, b in zip(ends, ends[1:], strict=False))  # contiguous
    for name, e in header.items():
        assert (start + e["data_offsets"][0]) % ALIGN == 0 or name.startswith("__pad"), name
    assert os.path.getsize(path) == start + ends[-1][1]
    lib = load_file(str(path))
    assert {k for k in lib if not k.startswith("__pad")} == set(tensors)
    for k, v in tensors.items():
        assert lib[k].dtype == v.dtype and np.array_equal(lib[k], v), k
    with safe_open(str(path), framework="np") as f:
        assert f.metadata()["format"] == "robuq"
        assert np.array_equal(
            f.get_tensor("blocks.0.attn.qkv.weight_packed"), tensors["blocks.0.attn.qkv.weight_packed"]
        )
    meta, mine = load_rq(path)
    assert set(mine) == set(tensors) and all(np.array_equal(mine[k], tensors[k]) for k in tensors)
    # tensors are grouped by layer, in state-dict order
    order = [k for k in header if not k.startswith("__pad")]
    assert order.index("blocks.0.attn.qkv.weight_packed") + 5 == order.index(
        "blocks.0.attn.qkv.lowrank_up.weight"
    )
    assert (
        order.index("pos_embed")
        < order.index("blocks.0.attn.qkv.weight_packed")
        < order.index("final_layer.linear.weight")
    )


def test_reader_refuses_other_versions(tmp_path):
    from robuq.exporter.rq import TensorSpec, write_safetensors

    path = tmp_path / "v2.rq"
    meta = {
        "format": "robuq",
        "format_version": "2",
        "model_config": "{}",
        "quant_config": "{}",
        "sampling": "{}",
    }
    write_safetensors(path, [TensorSpec("a", "F32", (3,))], [np.zeros(3, np.float32)], meta)
    with pytest.raises(ValueError, match="version"):
        load_rq(path)


# --------------------------------------------------------------------------------------- checkpoints
def test_ema_default_and_no_ema(tmp_path):
    q = preset(2, 4, rank=2)
    model, ema = tiny_model(1, q), tiny_model(2, q)
    ckpt = robuq_checkpoint(tmp_path / "c.pt", model, ema)
    assert export(ckpt, "-o", tmp_path / "ema.rq") == 0
    assert export(ckpt, "--no-ema", "-o", tmp_path / "raw.rq") == 0
    _, t_ema, _, _ = spec_read(tmp_path / "ema.rq")
    meta_raw, t_raw, _, _ = spec_read(tmp_path / "raw.rq")
    assert "raw weights" in meta_raw["source"]
    for t, m in ((t_ema, ema), (t_raw, model)):
        codes, s = quant.quantize_weight(m.blocks[0].mlp.fc1.weight, "ternary")
        assert np.array_equal(t["blocks.0.mlp.fc1.weight_packed"], packing.pack_ternary(codes.numpy()))
        assert np.array_equal(t["blocks.0.mlp.fc1.weight_scale"], s.numpy())
        assert np.array_equal(t["x_embedder.proj.weight"], m.x_embedder.proj.weight.detach().numpy())
    assert not np.array_equal(
        t_ema["blocks.0.mlp.fc1.weight_packed"], t_raw["blocks.0.mlp.fc1.weight_packed"]
    )


def test_full_precision_robuq_checkpoint_and_pixel_space(tmp_path):
    model = tiny_model(3, None, in_channels=1, learn_sigma=False)
    ckpt = robuq_checkpoint(tmp_path / "fp.pt", model)
    # a full-precision model is written to .rq only when asked for: the usual path is QAT first
    assert export(ckpt, "-o", tmp_path / "fp.rq") == 2 and not (tmp_path / "fp.rq").exists()
    assert export(ckpt, "-o", tmp_path / "fp.rq", "--allow-fp") == 0
    meta, tensors = load_rq(tmp_path / "fp.rq")
    assert meta["quant_config"] == {"attention_bits": None, "layers": {}}
    assert meta["model_config"]["space"] == "pixel" and meta["sampling"]["clip_denoised"] is True
    sd = model.state_dict()
    assert set(tensors) == set(sd)
    assert all(
        tensors[k].dtype == np.float32 and np.array_equal(tensors[k], v.numpy()) for k, v in sd.items()
    )
    assert export(ckpt, "--space", "latent", "--cfg-mode", "all", "-o", tmp_path / "l.rq", "--allow-fp") == 0
    meta, _ = load_rq(tmp_path / "l.rq")
    assert meta["model_config"]["space"] == "latent"
    assert meta["sampling"] == {"clip_denoised": False, "cfg_mode": "all"}
    assert export(ckpt, "--no-clip-denoised", "-o", tmp_path / "p.rq", "--allow-fp") == 0
    assert load_rq(tmp_path / "p.rq")[0]["sampling"]["clip_denoised"] is False


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """A random DiT-S/2 state dict saved plain and in official train.py's layout."""
    d = tmp_path_factory.mktemp("official")
    model = create("DiT-S/2")
    reinit_zero_layers(model, generator=torch.Generator().manual_seed(0))
    sd = model.state_dict()
    ema = {k: v + 0.001 for k, v in sd.items()}
    torch.save(sd, d / "plain.pt")
    args = argparse.Namespace(model="DiT-S/2", image_size=256, num_classes=1000, global_seed=0)
    torch.save(
        {"model": sd, "ema": ema, "opt": {"state": {}, "param_groups": []}, "args": args}, d / "train.pt"
    )
    return model, sd, ema, d


@pytest.mark.parametrize("layout", ["plain", "train"])
def test_official_checkpoints_export_full_precision(official, layout, tmp_path):
    model, sd, ema, d = official
    out = tmp_path / "o.rq"
    assert export(d / f"{layout}.pt", "-o", out, "--allow-fp") == 0
    meta, tensors = load_rq(out)
    assert meta["model_config"] == {**model.config.to_dict(), "space": "latent"}
    assert meta["quant_config"]["layers"] == {}
    want = sd if layout == "plain" else ema
    assert set(tensors) == set(want)
    assert all(np.array_equal(tensors[k], v.numpy()) for k, v in want.items())
    assert ("state dict" if layout == "plain" else "EMA") in meta["source"]


def test_legacy_pickle_checkpoint_and_missing_ema(tmp_path):
    """torch.save's pre-zip format loads too; a checkpoint whose 'ema' is None falls back to 'model'."""
    model = tiny_model(5, preset(2, 3, rank=2))
    sd = model.state_dict()
    torch.save(sd, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    # a bare QAT state dict has no config: read as an official (full-precision) one, its low-rank keys
    # are unexpected (at rank 0 the keys are the official ones: a bare state dict is always taken as fp)
    assert export(tmp_path / "legacy.pt", "--num-heads", "3", "-o", tmp_path / "a.rq") == 2
    fp = tiny_model(5)
    torch.save(fp.state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert export(tmp_path / "legacy.pt", "--num-heads", "3", "-o", tmp_path / "a.rq", "--allow-fp") == 0
    assert np.array_equal(load_rq(tmp_path / "a.rq")[1]["pos_embed"], fp.pos_embed.detach().numpy())
    ck = {
        "model": sd,
        "ema": None,
        "model_config": model.config.to_dict(),
        "quant_config": preset(2, 3, rank=2).to_dict(),
    }
    torch.save(ck, tmp_path / "noema.pt")
    assert export(tmp_path / "noema.pt", "-o", tmp_path / "b.rq") == 0
    assert "no EMA saved" in load_rq(tmp_path / "b.rq")[0]["source"]


def test_option_conflicts(tmp_path, capsys):
    assert export("--random", "DiT-S/2", "--fp") == 2
    assert "nothing to write" in capsys.readouterr().err
    assert export("--random", "DiT-S/2", "--fp", "--no-ema", "-o", tmp_path / "x.rq") == 2
    assert "--no-ema applies to checkpoints only" in capsys.readouterr().err
    assert export("--random", "DiT-S/2", "--fp", "--ampn", "-o", tmp_path / "x.rq") == 2
    assert "do not apply to --fp" in capsys.readouterr().err
    assert export("--random", "DiT-S/2", "-o", tmp_path / "x.rq") == 2
    assert "exactly one of --bits" in capsys.readouterr().err
    assert export("-o", tmp_path / "x.rq") == 2
    assert "either a checkpoint or --random" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_official_num_heads_override(official, tmp_path):
    _, _, _, d = official
    assert export(d / "plain.pt", "--num-heads", "12", "-o", tmp_path / "h.rq", "--allow-fp") == 0
    assert load_rq(tmp_path / "h.rq")[0]["model_config"]["num_heads"] == 12


# ------------------------------------------------------------------------------------------ refusals
def _payload(path, zip_format=True):
    class Payload:
        def __reduce__(self):
            return (os.path.join, ("a", "b"))  # harmless even if it ran; weights_only never runs it

    obj = {"model": {"x": torch.zeros(1)}, "extra": Payload()}
    torch.save(obj, path, _use_new_zipfile_serialization=zip_format)
    return path


def _plain_pickle(path):
    with open(path, "wb") as f:
        pickle.dump({"model": {"x": 1}}, f, protocol=4)
    return path


def _edit(tmp, change, q=None):
    """A robuq checkpoint of a tiny QAT model with `change` applied to (state dict, checkpoint dict)."""
    model = tiny_model(4, q if q is not None else preset(2, 2, rank=2))
    robuq_checkpoint(tmp / "in.pt", model)
    # the exporter's own allow-list (numpy rng state): weights_only loading, as everywhere
    with torch.serialization.safe_globals(_safe_globals()):
        ck = torch.load(tmp / "in.pt", weights_only=True)
    change(ck["ema"], ck)
    torch.save(ck, tmp / "in.pt")
    return tmp / "in.pt"


def _official_small(tmp):
    sd = create("DiT-S/2", **TINY).state_dict()
    torch.save(sd, tmp / "in.pt")
    return tmp / "in.pt"


def _set(d, k, v):
    d[k] = v


def _saved(tmp, obj):
    torch.save(obj, tmp / "in.pt")
    return tmp / "in.pt"


def _text(tmp):
    (tmp / "in.pt").write_text("hello")
    return tmp / "in.pt"


BAD = {
    "missing": (lambda tmp: tmp / "nope.pt", [], "does not exist"),
    "text file": (lambda tmp: _text(tmp), [], "not a PyTorch checkpoint"),
    "truncated zip": (
        lambda tmp: _truncate(_saved(tmp, {"a": torch.zeros(100)})),
        [],
        "not a readable checkpoint",
    ),
    "no model keys": (
        lambda tmp: _saved(tmp, {"foo": 1, "bar": torch.zeros(2)}),
        [],
        "not a DiT checkpoint",
    ),
    "not a dict": (lambda tmp: _saved(tmp, [1, 2]), [], "holds a list"),
    "missing key": (
        lambda tmp: _edit(tmp, lambda sd, ck: sd.pop("blocks.1.mlp.fc2.bias")),
        [],
        "missing keys: blocks.1.mlp.fc2.bias",
    ),
    "extra key": (
        lambda tmp: _edit(tmp, lambda sd, ck: _set(sd, "blocks.0.extra.weight", torch.zeros(2))),
        [],
        "unexpected keys: blocks.0.extra.weight",
    ),
    "shape": (
        lambda tmp: _edit(tmp, lambda sd, ck: _set(sd, "blocks.0.attn.proj.weight", torch.zeros(192, 100))),
        [],
        "tensor blocks.0.attn.proj.weight: expected shape [192, 192], got [192, 100]",
    ),
    "weight format": (
        lambda tmp: _edit(
            tmp, lambda sd, ck: ck["quant_config"]["layers"]["blocks.0.attn.qkv"].update(weight="int3")
        ),
        [],
        "unsupported weight format 'int3'",
    ),
    "act bits": (
        lambda tmp: _edit(
            tmp, lambda sd, ck: ck["quant_config"]["layers"]["blocks.0.mlp.fc1"].update(act_bits=9)
        ),
        [],
        "act_bits must be",
    ),
    "non-finite": (
        lambda tmp: _edit(
            tmp, lambda sd, ck: sd["blocks.0.mlp.fc1.weight"].__setitem__((0, 0), float("nan"))
        ),
        [],
        "tensor blocks.0.mlp.fc1.weight has non-finite values (1 NaN",
    ),
    "integer tensor": (
        lambda tmp: _edit(tmp, lambda sd, ck: _set(sd, "pos_embed", sd["pos_embed"].long())),
        [],
        "tensor pos_embed has dtype torch.int64",
    ),
    "fp16 overflow": (
        lambda tmp: _edit(
            tmp, lambda sd, ck: sd["blocks.1.mlp.fc2.lowrank_up.weight"].__setitem__((0, 0), 1e6)
        ),
        [],
        "blocks.1.mlp.fc2.lowrank_up.weight overflows float16",
    ),
    "payload": (lambda tmp: _payload(tmp / "in.pt"), [], "unsafe/untrusted checkpoint"),
    "payload, legacy format": (lambda tmp: _payload(tmp / "in.pt", False), [], "unsafe/untrusted checkpoint"),
    "plain pickle": (lambda tmp: _plain_pickle(tmp / "in.pt"), [], "not a torch.save checkpoint"),
    "heads unknown": (lambda tmp: _official_small(tmp), [], "cannot infer num_heads for hidden size 192"),
    "random option with checkpoint": (
        lambda tmp: _official_small(tmp),
        ["--num-heads", "3", "--bits", "W1.58A2"],
        "--bits applies to --random only",
    ),
    "bits": (lambda tmp: None, ["--random", "DiT-S/2", "--bits", "W2A2"], "unsupported bit widths 'W2A2'"),
    "ampn A4": (lambda tmp: None, ["--random", "DiT-S/2", "--bits", "W1.58A4", "--ampn"], "A2 and A3"),
    "unknown model": (lambda tmp: None, ["--random", "DiT-M/2", "--fp"], "unknown DiT config"),
}


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("case", list(BAD))
def test_refusals_exit_2_and_leave_no_file(case, tmp_path, capsys):
    make, extra, message = BAD[case]
    src = make(tmp_path)
    before = set(os.listdir(tmp_path))
    argv = ([src] if src is not None else []) + extra + ["-o", tmp_path / "out.rq"]
    assert export(*argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("robuq-export: error: ") and message in err, err
    assert set(os.listdir(tmp_path)) == before  # no output, no temporary left behind


def test_missing_output_directory(tmp_path, capsys):
    assert export("--random", "DiT-S/2", "--fp", "--depth", "1", "-o", tmp_path / "no" / "x.rq") == 2
    assert "does not exist" in capsys.readouterr().err


def test_console_entry_point_exit_code(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "robuq.exporter.cli",
            str(tmp_path / "missing.pt"),
            "-o",
            str(tmp_path / "x.rq"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "does not exist" in r.stderr


# ----------------------------------------------------------------------------------------- random
def test_random_weights_follow_the_official_init():
    cfg = DiTConfig(**{**CONFIGS["DiT-S/2"], "depth": 2})
    ours = RandomWeights(cfg, None, seed=0)
    ref = reinit_zero_layers(
        create("DiT-S/2", depth=2), generator=torch.Generator().manual_seed(0)
    ).state_dict()
    assert list(ours) == list(ref)
    for k, r in ref.items():
        o = ours[k]
        assert o.shape == r.shape and o.dtype == torch.float32, k
        if not r.any():
            assert not o.any(), k
        elif k == "pos_embed":
            assert torch.equal(o, r)
        else:
            assert abs(o.std().item() / r.std().item() - 1) < 0.1, k


def test_random_quantized_weights_share_the_base_and_fold_the_hadamard():
    cfg = DiTConfig(**{**CONFIGS["DiT-S/2"], "depth": 2})
    q = random_quant_config(2, 2, rank=4)
    fp, qw = RandomWeights(cfg, None, seed=3), RandomWeights(cfg, q, seed=3)
    name = "blocks.1.mlp.fc2"
    assert torch.allclose(qw[f"{name}.weight"], quant.fast_hadamard(fp[f"{name}.weight"], "full"), atol=1e-6)
    assert torch.equal(qw[f"{name}.bias"], fp[f"{name}.bias"])
    w = qw[f"{name}.weight"]
    codes, s = quant.quantize_weight(w, "ternary")
    err = w - codes.float() * s[:, None]
    lr = qw[f"{name}.lowrank_up.weight"] @ qw[f"{name}.lowrank_down.weight"]
    assert torch.linalg.norm(err - lr) < torch.linalg.norm(err)  # the branch absorbs part of the error
    assert torch.equal(qw["blocks.0.adaLN_modulation.1.weight"], fp["blocks.0.adaLN_modulation.1.weight"])


def test_random_file_is_deterministic_and_loads_as_qat_model(tmp_path):
    argv = ["--random", "DiT-S/2", *TINY_ARGS, "--bits", "W1.58A3", "--rank", "2", "--seed", "5"]
    assert export(*argv, "-o", tmp_path / "a.rq") == 0
    assert export(*argv, "-o", tmp_path / "b.rq") == 0
    assert (tmp_path / "a.rq").read_bytes() == (tmp_path / "b.rq").read_bytes()
    meta, tensors, _, _ = spec_read(tmp_path / "a.rq")
    assert "seed 5" in meta["source"] and "hidden_size=192" in meta["source"]
    cfg = DiTConfig(**{**CONFIGS["DiT-S/2"], **TINY})
    q = random_quant_config(2, 3, rank=2)
    model = create("DiT-S/2", **TINY)
    quantize_model(model, q, init_lowrank=False)
    model.load_state_dict(RandomWeights(cfg, q, seed=5).state_dict())
    layers = json.loads(meta["quant_config"])["layers"]
    x = torch.randn(16, 192)
    for name in ("blocks.0.attn.qkv", "blocks.1.adaLN_modulation.1"):
        mod = model.get_submodule(name)
        with torch.no_grad():
            for lin in (mod.lowrank_down, mod.lowrank_up):
                if lin is not None:
                    lin.weight.copy_(lin.weight.half().float())
            ref = mod(x).double().numpy()
        got = spec_layer(name, layers[name], tensors, x)
        assert np.abs(got - ref).max() / np.abs(ref).max() <= 1e-5


def test_ampn_mix_follows_the_published_averages():
    mix = ampn_mix(28, 2)
    for kind, avg in {"attn.proj": 2.75, "attn.qkv": 2.21, "mlp.fc1": 2.0, "mlp.fc2": 1.64}.items():
        bits = [mix[f"blocks.{i}.{kind}"] for i in range(28)]
        assert abs(np.mean(bits) - avg) <= 0.5 / 28 + 1e-9 and max(bits) - min(bits) <= 1
    q = random_quant_config(28, 2, ampn=True)
    assert abs(mac_weighted_bits(q, 1152) - 2.0) < 0.01
    q3 = random_quant_config(28, 3, ampn=True)
    assert 2.8 < mac_weighted_bits(q3, 1152) < 2.9  # the paper's A3 averages are ~3.05 plain


# ------------------------------------------------------------------------------------------- sizes
FP32_XL = 4 * 675_129_632  # DiT-XL/2 parameters (pos_embed included) x 4 bytes, 2.7 GB


def _xl_plan(adaln: str, source: str = ""):
    cfg = DiTConfig(**CONFIGS["DiT-XL/2"])
    return plan_rq(cfg, random_quant_config(28, 2, adaln=adaln, ampn=True), source=source)


def test_fp32_size_of_xl():
    cfg = DiTConfig(**CONFIGS["DiT-XL/2"])
    shapes = plan_rq(cfg, None).shapes
    assert 4 * sum(math.prod(s) for s in shapes.values()) == FP32_XL


@pytest.mark.parametrize("bits", ["W1.58A2", "W1.58A16"])
def test_planned_size_equals_file_size(tmp_path, bits):
    out = tmp_path / "s.rq"
    assert (
        export(
            "--random", "DiT-S/4", *TINY_ARGS, "--bits", bits, "--rank", "3", "--hadamard", "block", "-o", out
        )
        == 0
    )
    meta, _ = load_rq(out)
    cfg = DiTConfig(**{**CONFIGS["DiT-S/4"], **TINY})
    q = random_quant_config(2, None if bits.endswith("16") else 2, rank=3, hadamard="block")
    plan = plan_rq(cfg, q, source=meta["source"])
    assert plan.file_size == os.path.getsize(out)
    assert meta["quant_config"]["layers"] == plan.entries


def test_size_ratio_xl_width_two_blocks(tmp_path):
    """The default run's real export for the size check: DiT-XL/2 cut to 2 blocks (same layer shapes,
    relatively more full-precision embedders). Its file equals the plan, so the planned full-XL sizes
    below are the sizes of the real files (the slow tests export those too)."""
    ratios = {}
    cfg = DiTConfig(**{**CONFIGS["DiT-XL/2"], "depth": 2})
    fp32 = 4 * sum(math.prod(s) for s in plan_rq(cfg, None).shapes.values())
    for adaln in ("int4", "ternary"):
        out = tmp_path / f"{adaln}.rq"
        argv = ["--random", "DiT-XL/2", "--depth", "2", "--bits", "W1.58A2", "--ampn", "--adaln", adaln]
        assert export(*argv, "-o", out) == 0
        q = random_quant_config(2, 2, adaln=adaln, ampn=True)
        assert plan_rq(cfg, q, source=load_rq(out)[0]["source"]).file_size == os.path.getsize(out)
        ratios[adaln] = fp32 / os.path.getsize(out)
    r4, r3 = ratios["int4"], ratios["ternary"]
    print(f"\nDiT-XL/2 width, 2 blocks: fp32 / .rq = {r4:.2f} (int4 adaLN), {r3:.2f} (ternary adaLN)")
    assert ratios["int4"] >= 5 and ratios["ternary"] > ratios["int4"]


def test_size_ratio_xl_planned():
    """The exact DiT-XL/2 file sizes from the layout (the writer's own plan; equal to the file, above)."""
    paper, ternary = (FP32_XL / _xl_plan(a).file_size for a in ("int4", "ternary"))
    print(
        f"\nDiT-XL/2 W1.58 AMPN rank 0, planned: fp32/.rq = {paper:.2f} (paper), {ternary:.2f} (adaLN W1.58)"
    )
    assert ternary >= 13
    # adaLN at 4 bits is a third of the file and every quantized row carries F32 scale + bias and an I32
    # sum (5.8 MB for XL): the paper preset lands at 10.7, short of 11 (docs/rq-format.md, Sizes).
    assert paper >= 10.5


@pytest.mark.slow
@pytest.mark.parametrize("adaln", ["int4", "ternary"])
def test_size_ratio_xl_exported(tmp_path, adaln):
    """A real DiT-XL/2 export (random weights, AMPN mix, rank 0): 11-15 s each, one layer in memory."""
    out = tmp_path / "xl.rq"
    assert export("--random", "DiT-XL/2", "--bits", "W1.58A2", "--ampn", "--adaln", adaln, "-o", out) == 0
    size = os.path.getsize(out)
    assert size == _xl_plan(adaln, load_rq(out)[0]["source"]).file_size
    ratio = FP32_XL / size
    print(f"\nDiT-XL/2 W1.58 AMPN rank 0, adaLN {adaln}: {size / 1e6:.1f} MB, fp32 / .rq = {ratio:.2f}")
    assert ratio >= (13 if adaln == "ternary" else 10.5)

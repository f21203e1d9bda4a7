"""The C++ engine (robuq.Engine) end to end: small DiTs exported with robuq-export, run on every kernel
tier and compared with the PyTorch QAT model; determinism; the Python API's checks; and the loader's
refusals of corrupt files (each variant made by editing a valid file's header or bytes).
"""

import json
import re
import struct
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from tiny_dit import tiny_dit

import robuq
from robuq import _C, models
from robuq import quant as Q
from robuq.exporter.cli import main as export_main

DEPTH = 2
SMALL = dict(depth=DEPTH, hidden_size=192, num_heads=3, input_size=8, num_classes=10)
REL_TOL = 1e-3


pytestmark = pytest.mark.usefixtures("torch_one_thread")


# ---------------------------------------------------------------------------------------- the models
def ampn_mix(rank: int = 0) -> Q.QuantConfig:
    """An AMPN-style mix: every block linear ternary with its own activation bits (1..4), clipping and
    Hadamard form; adaLN int4 A4 minmax; attention A8."""
    layers = {}
    bits = {"attn.qkv": (2, 3), "attn.proj": (4, 1), "mlp.fc1": (2, 2), "mlp.fc2": (3, 4)}
    forms = {"attn.qkv": "full", "attn.proj": "block", "mlp.fc1": "full", "mlp.fc2": "none"}
    for i in range(DEPTH):
        for name in Q.BLOCK_LINEARS:
            clip = "minmax" if name == "attn.proj" else "gauss"
            layers[f"blocks.{i}.{name}"] = Q.LayerQuant("ternary", bits[name][i], clip, forms[name], 0, rank)
        layers[f"blocks.{i}.{Q.ADALN}"] = Q.LayerQuant("int4", 4, "minmax", "none", 0, 0)
    return Q.QuantConfig(layers=layers, attention_bits=8)


CONFIGS = {
    "fp": lambda: None,
    "w158a2": lambda: Q.preset(DEPTH, 2),
    "w158a3": lambda: Q.preset(DEPTH, 3),
    "w158a4": lambda: Q.preset(DEPTH, 4),
    "w158a2-r4": lambda: Q.preset(DEPTH, 2, rank=4),
    "w158a3-r4": lambda: Q.preset(DEPTH, 3, rank=4),
    "w158a4-r4": lambda: Q.preset(DEPTH, 4, rank=4),
    "ampn": lambda: ampn_mix(),
    "ampn-r4": lambda: ampn_mix(rank=4),
}


def build_model(quant: Q.QuantConfig | None, seed: int = 0, **overrides) -> models.DiT:
    """A small random DiT (non-zero adaLN / final layers), quantized for QAT when `quant` is given.
    Low-rank factors are rounded to float16 values, which the .rq file stores exactly."""
    model = tiny_dit(seed, **{**SMALL, **overrides}).train()  # train mode, as models.create returns it
    if quant is not None:
        Q.quantize_model(model, quant)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if ".lowrank_" in name:
                    p.copy_(p.half().float())
    return model.eval()


def export(model: models.DiT, quant: Q.QuantConfig | None, path) -> str:
    sd = model.state_dict()
    ckpt = f"{path}.pt"
    torch.save(
        {
            "model": sd,
            "ema": sd,
            "model_config": model.config.to_dict(),
            "quant_config": quant.to_dict() if quant is not None else None,
        },
        ckpt,
    )
    rc = export_main([ckpt, "-o", str(path), "-q", "--allow-fp"])
    assert rc in (0, None)
    return str(path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (PyTorch model, .rq path), built once for the module."""
    d = tmp_path_factory.mktemp("rq")
    out = {}
    for name, make in CONFIGS.items():
        quant = make()
        model = build_model(quant, seed=len(out))
        out[name] = (model, export(model, quant, d / f"{name}.rq"))
    return out


def sample_inputs(model: models.DiT, n: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    x = torch.randn(n, c.in_channels, c.input_size, c.input_size, generator=g)
    t = torch.tensor([0, 517, 999, 250][:n])
    y = torch.tensor([3, c.num_classes, 7, 0][:n])  # includes the null class
    return x, t, y


def rel_err(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ------------------------------------------------------------------------------ forward vs PyTorch
@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_matches_pytorch(exported, tier, name):
    model, path = exported[name]
    x, t, y = sample_inputs(model)
    with torch.no_grad():
        ref = model(x, t, y).numpy()
    eng = robuq.Engine(path, threads=2)
    out = eng.forward(x.numpy(), t.numpy(), y.numpy())
    assert out.dtype == np.float32 and out.shape == ref.shape == (3, 8, 8, 8)
    assert rel_err(out, ref) <= REL_TOL


def test_forward_without_null_class(tmp_path):
    model = build_model(Q.preset(DEPTH, 4), class_dropout_prob=0.0)
    path = export(model, Q.preset(DEPTH, 4), tmp_path / "nonull.rq")
    eng = robuq.Engine(path, threads=1)
    assert eng.info["label_rows"] == 10
    x, t, _ = sample_inputs(model, 2)
    y = torch.tensor([9, 0])
    with torch.no_grad():
        ref = model(x, t, y).numpy()
    assert rel_err(eng.forward(x.numpy(), t.numpy(), y.numpy()), ref) <= REL_TOL
    with pytest.raises(ValueError, match=r"class label 10 is out of range 0\.\.9"):
        eng.forward(x.numpy(), t.numpy(), np.array([10, 0]))


def test_linear_by_name_matches_pytorch(exported, tier):
    model, path = exported["ampn-r4"]
    eng = robuq.Engine(path, threads=2)
    mods = dict(model.named_modules())
    g = torch.Generator().manual_seed(5)
    for name in ["blocks.0.attn.qkv", "blocks.1.attn.proj", "blocks.0.mlp.fc2", "blocks.1.adaLN_modulation.1",
                 "t_embedder.mlp.0", "final_layer.linear"]:  # fmt: skip
        lin = mods[name]
        n_in = eng.info["linears"][name]["in_features"]
        x = torch.randn(17, n_in, generator=g) + 0.3
        with torch.no_grad():
            ref = lin(x).numpy()
        got = eng.linear(name, x.numpy())
        assert got.shape == ref.shape
        assert rel_err(got, ref) <= 1e-5, name


# ----------------------------------------------------------------------------------- determinism
def test_results_independent_of_threads_and_batch(exported):
    model, path = exported["ampn-r4"]
    x, t, y = sample_inputs(model, 4)
    x, t, y = x.numpy(), t.numpy(), y.numpy()
    one = robuq.Engine(path, threads=1).forward(x, t, y)
    eng = robuq.Engine(path, threads=2)
    np.testing.assert_array_equal(eng.forward(x, t, y), one)
    # each sample's output is the same whatever batch it is computed in (a CFG half, a single image)
    np.testing.assert_array_equal(eng.forward(x[2:3], t[2:3], y[2:3])[0], one[2])
    np.testing.assert_array_equal(eng.forward(x[:2], t[:2], y[:2]), one[:2])
    np.testing.assert_array_equal(eng.forward(x, t, y), one)  # workspace re-sized back


def test_concurrent_calls_from_python_threads(exported):
    """forward releases the GIL and serialises on the engine's workspace; linear runs concurrently."""
    model, path = exported["w158a3"]
    eng = robuq.Engine(path, threads=1)
    inputs = [tuple(a.numpy() for a in sample_inputs(model, 2, seed)) for seed in range(4)]
    want = [eng.forward(*args) for args in inputs]
    a = np.random.default_rng(0).standard_normal((33, 192)).astype(np.float32)
    want_lin = eng.linear("blocks.1.mlp.fc1", a)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda args: eng.forward(*args), inputs * 2))
        got_lin = list(pool.map(lambda _: eng.linear("blocks.1.mlp.fc1", a), range(4)))
    for g, w in zip(got, want * 2, strict=True):
        np.testing.assert_array_equal(g, w)
    for g in got_lin:
        np.testing.assert_array_equal(g, want_lin)


def test_misaligned_tensors_are_copied(exported, tmp_path):
    """One extra header byte shifts every tensor off its alignment: F32 / I32 tensors are copied and the
    output is unchanged."""
    model, path = exported["w158a2-r4"]
    header, data = read_rq(path)
    bad = write_rq(tmp_path / "shifted.rq", header, data, extra=b" ")
    x, t, y = (a.numpy() for a in sample_inputs(model))
    np.testing.assert_array_equal(
        robuq.Engine(bad, 1).forward(x, t, y), robuq.Engine(path, 1).forward(x, t, y)
    )


def test_read_fallback_when_not_mapped(exported, monkeypatch):
    model, path = exported["ampn-r4"]
    x, t, y = (a.numpy() for a in sample_inputs(model))
    mapped = robuq.Engine(path, 1)
    monkeypatch.setenv("ROBUQ_NO_MMAP", "1")
    read = robuq.Engine(path, 1)
    assert mapped.info["mapped"] and not read.info["mapped"]
    np.testing.assert_array_equal(read.forward(x, t, y), mapped.forward(x, t, y))


# --------------------------------------------------------------------------------------- Python API
def test_info(exported):
    model, path = exported["w158a2-r4"]
    info = robuq.Engine(path, threads=1).info
    assert info["format_version"] == "1" and info["threads"] == 1 and info["mapped"] is True
    cfg = info["model_config"]
    assert cfg == {**model.config.to_dict(), "space": "latent"}
    assert info["out_channels"] == 8 and info["num_tokens"] == 16 and info["label_rows"] == 11
    assert info["attention_bits"] == 8
    assert info["sampling"] == {"clip_denoised": False, "cfg_mode": "dit"}
    assert len(info["layers"]) == 5 * DEPTH and len(info["linears"]) == 5 * DEPTH + 4
    qkv = info["layers"]["blocks.0.attn.qkv"]
    assert qkv["weight"] == "ternary" and qkv["act_bits"] == 2 and qkv["rank"] == 4
    assert (qkv["hadamard"], qkv["hadamard_k"], qkv["hadamard_m"]) == ("full", 12, 16)
    assert qkv["clip_k"] == Q.clip_constant("gauss", 2)
    fc1 = info["layers"]["blocks.0.mlp.fc1"]
    assert (fc1["in_features"], fc1["out_features"]) == (192, 768)
    ada = info["layers"]["blocks.1.adaLN_modulation.1"]
    assert (ada["weight"], ada["act_bits"], ada["clip"], ada["hadamard"]) == ("int4", 4, "minmax", "none")
    assert info["linears"]["final_layer.linear"] == {
        "in_features": 192,
        "out_features": 32,
        "quantized": False,
    }
    info["model_config"]["depth"] = 99  # a copy
    assert robuq.Engine(path).info["model_config"]["depth"] == DEPTH

    fp = robuq.Engine(exported["fp"][1]).info
    assert fp["layers"] == {} and fp["attention_bits"] is None

    ampn = robuq.Engine(exported["ampn"][1]).info["layers"]
    assert ampn["blocks.0.attn.proj"]["hadamard_block"] == 64  # resolved: largest power of two in 192
    assert ampn["blocks.1.attn.proj"]["act_bits"] == 1


def test_input_checks(exported):
    model, path = exported["w158a4"]
    eng = robuq.Engine(path, threads=1)
    x, t, y = (a.numpy() for a in sample_inputs(model, 2))
    with pytest.raises(ValueError, match="x must be float32"):
        eng.forward(x.astype(np.float64), t, y)
    with pytest.raises(ValueError, match=r"x must have shape \[N, 4, 8, 8\]"):
        eng.forward(x[:, :3], t, y)
    with pytest.raises(ValueError, match="4-D"):
        eng.forward(x[0], t, y)
    with pytest.raises(ValueError, match=r"t must have shape \[N\] = \[2\]"):
        eng.forward(x, t[:1], y)
    with pytest.raises(ValueError, match="y must be an integer array"):
        eng.forward(x, t, y.astype(np.float32))
    with pytest.raises(ValueError, match=r"class label 11 is out of range 0\.\.10 \(the null class\)"):
        eng.forward(x, t, np.array([1, 11]))
    with pytest.raises(ValueError, match=r"class label -1"):
        eng.forward(x, t, np.array([-1, 1]))
    # a scalar t is used for every sample; a non-contiguous x is accepted
    np.testing.assert_array_equal(eng.forward(x, 517, y), eng.forward(x, np.array([517, 517]), y))
    xt = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    np.testing.assert_array_equal(eng.forward(xt, t, y), eng.forward(x, t, y))
    assert eng.forward(x[:0], t[:0], y[:0]).shape == (0, 8, 8, 8)
    with pytest.raises(ValueError, match="no linear layer 'blocks.7.attn.qkv'"):
        eng.linear("blocks.7.attn.qkv", np.zeros((1, 192), np.float32))
    with pytest.raises(ValueError, match=r"\[tokens, 192\]"):
        eng.linear("blocks.0.attn.qkv", np.zeros((1, 191), np.float32))
    # the C++ side checks too (robuq._C.Engine without the wrapper)
    raw = _C.Engine(path, 1)
    with pytest.raises(ValueError, match="out of range"):
        raw.forward(x, t, np.array([0, 11]))
    with pytest.raises(ValueError, match="no linear layer"):
        raw.linear("nope", np.zeros((1, 192), np.float32))
    with pytest.raises(ValueError, match="threads"):
        robuq.Engine(path, threads=-1)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        robuq.Engine(tmp_path / "absent.rq")
    with pytest.raises(FileNotFoundError):
        _C.Engine(str(tmp_path / "absent.rq"), 1)
    with pytest.raises(IsADirectoryError):
        _C.Engine(str(tmp_path), 1)
    assert issubclass(robuq.FormatError, ValueError) and robuq.FormatError is _C.FormatError


# ------------------------------------------------------------------------------------- bad files
def read_rq(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def rq_bytes(header, data, extra=b""):
    text = json.dumps(header).encode() + extra
    return struct.pack("<Q", len(text)) + text + data


def write_rq(path, header, data, extra=b""):
    with open(path, "wb") as f:
        f.write(rq_bytes(header, data, extra))
    return str(path)


def copy(header):
    return json.loads(json.dumps(header))


def entry(header, name, **changes):
    """The header with fields of one tensor entry replaced."""
    h = copy(header)
    h[name].update(changes)
    return h


def meta(header, **values):
    """The header with metadata strings replaced (None: removed)."""
    h = copy(header)
    h["__metadata__"].update(values)
    h["__metadata__"] = {k: v for k, v in h["__metadata__"].items() if v is not None}
    return h


def meta_json(header, key, fn):
    """The header with one JSON-valued metadata entry edited in place by fn."""
    value = json.loads(header["__metadata__"][key])
    fn(value)
    return meta(header, **{key: json.dumps(value)})


def drop(header, data, name):
    """(header, data) without one tensor: its bytes removed and the later offsets moved down."""
    h = copy(header)
    begin, end = h.pop(name)["data_offsets"]
    for k, e in h.items():
        if k != "__metadata__" and e["data_offsets"][0] >= end:
            e["data_offsets"] = [e["data_offsets"][0] - (end - begin), e["data_offsets"][1] - (end - begin)]
    return h, data[:begin] + data[end:]


def poke(header, data, name, value: bytes, offset=0):
    """The data section with bytes of one tensor overwritten."""
    begin = header[name]["data_offsets"][0] + offset
    return data[:begin] + value + data[begin + len(value) :]


@pytest.fixture(scope="module")
def valid(exported):
    """(header, data) of a valid file with quantized layers and low-rank branches."""
    return read_rq(exported["w158a2-r4"][1])


def corrupt_files(h, data):
    """(what, message pattern, file bytes) for every refusal the loader must make."""
    raw = rq_bytes(h, data)
    text_len = struct.unpack("<Q", raw[:8])[0]
    qkv = "blocks.0.attn.qkv"
    fc1, fc2 = "blocks.0.mlp.fc1.bias", "blocks.0.mlp.fc2.bias"
    a = h[fc1]["data_offsets"][0]
    nan32 = np.array([np.nan], np.float32).tobytes()
    inf16 = np.array([np.inf], np.float16).tobytes()

    def model(**kw):
        return meta_json(h, "model_config", lambda m: m.update(kw))

    def layer(**kw):
        return meta_json(h, "quant_config", lambda q: q["layers"][qkv].update(kw))

    cases = [
        # container
        ("truncated", r"data_offsets .* run past the end of the data section .*truncated",
         raw[: len(raw) // 2]),
        ("too short", "too short for the 8-byte header length", raw[:5]),
        ("header beyond file", r"header length \d+ exceeds the file size",
         struct.pack("<Q", len(raw)) + raw[8:]),
        ("header too large", "exceeds the limit", struct.pack("<Q", 1 << 40) + raw[8:]),
        ("bad JSON", r"header: invalid JSON at byte \d+",
         raw[: 8 + text_len - 1] + b"," + raw[8 + text_len :]),
        ("header not an object", "header: expected a JSON object", b"\x02\0\0\0\0\0\0\0[]"),
        ("unknown dtype", "'x_embedder.proj.bias': unsupported dtype 'BF16'",
         entry(h, "x_embedder.proj.bias", dtype="BF16")),
        ("size mismatch", r"'pos_embed': data_offsets span \d+ bytes but F32 \[1, 16, 191\] needs",
         entry(h, "pos_embed", shape=[1, 16, 191])),
        ("negative shape", "shape entries must be non-negative integers",
         entry(h, "pos_embed", shape=[-1, 16, 192])),
        ("overlapping offsets", r"'blocks.0.mlp.fc(1|2).bias' .* overlaps tensor 'blocks.0.mlp.fc(1|2).bias'",
         entry(h, fc2, data_offsets=[a, a + 192 * 4])),
        ("gap", r"tensor '.*' \(bytes \d+\.\.\d+\) leaves a gap of 768 bytes before it",
         {k: v for k, v in h.items() if k != fc2}),
        ("trailing bytes", "the data section has 64 bytes after the last tensor", (h, data + bytes(64))),
        # metadata
        ("format_version", "'format_version' is \"2\"; this engine reads version \"1\"",
         meta(h, format_version="2")),
        ("format", "'format' is \"safetensors\"", meta(h, format="safetensors")),
        ("no model_config", "metadata field 'model_config' is missing", meta(h, model_config=None)),
        ("quant_config JSON", "metadata field 'quant_config': invalid JSON at byte 1",
         meta(h, quant_config="{x")),
        ("depth", "model_config.depth: 0 is out of range", model(depth=0)),
        ("float depth", "model_config.depth: expected an integer", model(depth=2.5)),
        ("heads", "model_config.hidden_size: 192 is not divisible by num_heads 5", model(num_heads=5)),
        ("patch", "model_config.input_size: 8 is not divisible by patch_size 3", model(patch_size=3)),
        ("space", r"model_config.space: \"rgb\" is not one of", model(space="rgb")),
        ("unknown field", "model_config.colour: unknown field", model(colour=1)),
        ("act_bits", f"quant_config.layers.{qkv}.act_bits: 9 is out of range", layer(act_bits=9)),
        ("weight format", f"layers.{qkv}.weight: \"int5\" is not one of", layer(weight="int5")),
        ("clip_k type", f"layers.{qkv}.clip_k: expected a number", layer(clip_k="nan")),
        ("gauss clip_k", f"layers.{qkv}.clip_k: gauss clipping needs clip_k > 0", layer(clip_k=0.0)),
        ("hadamard_k", f"layers.{qkv}.hadamard_k: .* = 3 x 64 but in_features 192 factorises as 12 x 16",
         layer(hadamard_k=3, hadamard_m=64)),
        ("hadamard block", f"layers.{qkv}.hadamard_block: 24 is not a power of two",
         layer(hadamard="block", hadamard_block=24, hadamard_k=0, hadamard_m=0)),
        ("rank range", f"layers.{qkv}.rank: 193 is out of range", layer(rank=193)),
        ("in_features", f"layers.{qkv}: in_features x out_features = 192 x 512 but the model's layer is",
         layer(out_features=512)),
        ("unknown layer", "quant_config.layers.blocks.0.norm1: the model has no linear layer",
         meta_json(h, "quant_config", lambda q: q["layers"].update({"blocks.0.norm1": q["layers"][qkv]}))),
        ("attention_bits", "quant_config.attention_bits: 0 is out of range",
         meta_json(h, "quant_config", lambda q: q.update(attention_bits=0))),
        ("sampling", r"sampling.cfg_mode: \"half\" is not one of",
         meta_json(h, "sampling", lambda s: s.update(cfg_mode="half"))),
        # the model's tensors
        ("missing tensor", "missing tensor 'blocks.1.mlp.fc2.bias'", drop(h, data, "blocks.1.mlp.fc2.bias")),
        ("wrong shape", r"tensor 'pos_embed' has shape \[16, 192\], expected \[1, 16, 192\]",
         entry(h, "pos_embed", shape=[16, 192])),
        ("wrong shape (transposed)", rf"'{qkv}.lowrank_up.weight' has shape \[4, 576\], expected \[576, 4\]",
         entry(h, f"{qkv}.lowrank_up.weight", shape=[4, 576])),
        ("wrong dtype", f"tensor '{qkv}.weight_scale' has dtype I32, expected F32",
         entry(h, f"{qkv}.weight_scale", dtype="I32")),
        ("unexpected tensor", "unexpected tensor 'stowaway'",
         {**h, "stowaway": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}}),
        ("depth mismatch", "missing tensor 'blocks.2.", model(depth=3)),
        ("rank mismatch", rf"tensor '{qkv}.lowrank_down.weight' has shape \[4, 192\], expected \[5, 192\]",
         layer(rank=5)),
        ("non-finite scale", r"'blocks.1.mlp.fc1.weight_scale' has a non-finite value \(nan\) at .* 3",
         (h, poke(h, data, "blocks.1.mlp.fc1.weight_scale", nan32, 12))),
        ("non-finite F16", r"'blocks.0.attn.proj.lowrank_down.weight' has a non-finite value \(inf\) at .* 1",
         (h, poke(h, data, "blocks.0.attn.proj.lowrank_down.weight", inf16, 2))),
        ("ternary code 3", r"'blocks.0.mlp.fc1.weight_packed': invalid ternary code 3 at row 0, column 0",
         (h, poke(h, data, "blocks.0.mlp.fc1.weight_packed", b"\xff"))),
        ("int4 code -8", r"'blocks.1.adaLN_modulation.1.weight_packed': invalid int4 code -8 at row 0, "
         r"column 1",
         (h, poke(h, data, "blocks.1.adaLN_modulation.1.weight_packed", b"\x80"))),
        ("weight_sum", f"tensor '{qkv}.weight_sum': row 2 says 12345",
         (h, poke(h, data, f"{qkv}.weight_sum", struct.pack("<i", 12345), 8))),
    ]  # fmt: skip
    for what, pattern, content in cases:
        if isinstance(content, dict):
            content = rq_bytes(content, data)
        elif isinstance(content, tuple):
            content = rq_bytes(*content)
        yield what, pattern, content


def test_corrupt_files_raise_format_error(valid, tmp_path):
    header, data = valid
    robuq.Engine(write_rq(tmp_path / "copy.rq", header, data), threads=1)  # the unedited round trip loads
    failures = []
    for i, (what, pattern, content) in enumerate(corrupt_files(header, data)):
        path = tmp_path / f"bad{i}.rq"
        path.write_bytes(content)
        try:
            robuq.Engine(path, threads=1)
            failures.append(f"{what}: loaded without error")
        except robuq.FormatError as e:
            if not re.search(pattern, str(e)):
                failures.append(f"{what}: message {str(e)!r} does not match {pattern!r}")
    assert not failures, "\n".join(failures)


def test_exporter_padding_entries_are_accepted_only_as_padding(valid, tmp_path):
    """robuq-export fills alignment gaps with 1-D U8 entries named __pad<i>; nothing else may hide there."""
    header, data = valid
    h = {**header, "__pad99": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}}
    robuq.Engine(write_rq(tmp_path / "pad.rq", h, data), threads=1)
    h["__pad99"] = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
    with pytest.raises(robuq.FormatError, match="unexpected tensor '__pad99'"):
        robuq.Engine(write_rq(tmp_path / "pad2.rq", h, data), threads=1)


def test_profile_breakdown(exported):
    """Engine.profile: one forward timed per part (robuq/profile.h); the parts add up to the total."""
    eng = robuq.Engine(str(exported["w158a2-r4"][1]), threads=2)
    c = eng.info["model_config"]
    x = np.random.default_rng(5).standard_normal((2, c["in_channels"], c["input_size"], c["input_size"]))
    x = x.astype(np.float32)
    t, y = np.array([10, 900]), np.array([3, c["num_classes"]])
    parts = eng.profile(x, t, y)
    names = {"linears", "hadamard_quantize", "attention", "elementwise", "float_linears", "other"}
    assert set(parts) == names | {"total"}
    assert abs(sum(parts[k] for k in names) - parts["total"]) < 1e-6
    assert parts["total"] > 0 and parts["linears"] > 0 and parts["attention"] > 0
    assert parts["hadamard_quantize"] > 0

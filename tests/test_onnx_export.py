"""ONNX export (robuq.exporter.onnx_export): onnxruntime runs the whole QAT forward (x, t, y) -> output.

Tolerances. The graph computes what QLinear.forward and the attention's fake quantization compute; only
the float summation order differs (dense +-1 MatMul against fast_hadamard's butterflies, onnxruntime's
GEMMs against PyTorch's). Without a quantizer boundary flip the outputs agree to float32 rounding
(measured 2e-7 to 4e-7 relative). A flip happens when a value lies within a rounding error of a code
boundary: that value then moves by a whole step (at A2 a third of the token's clipped range, at A8 1/255
of it). Measured on these tiny models over 160 inputs of batch 4: the A8 attention operands flip most
often (in ~45% of inputs for W1.58A4, ~15% for W1.58A2; ~10% with attention quantization off); the worst
input moved the output by 6.8e-4 relative max / 3.6e-4 relative L2 (1.6e-3 / 5.3e-4 for an A2
linear-layer flip with attention unquantized). The random tiny models' outputs are dominated by the
residual stream, so a plain relative error is a weak detector (minmax clipping instead of gauss moves
it by only 5e-3); the sharp measure is the error relative to the activation quantization's own effect,
|onnx - qat| / |qat - qat without activation quantization|: flips reach 0.04 at worst (80 inputs), a
wrong clipping rule gives 1.1 to 2.3. Whole-model checks: max 1e-2, L2 2e-3, effect ratio 0.1. The
single-layer checks require 1e-5 on every token except at most one flipped.
"""

import contextlib

import numpy as np
import onnx
import pytest
import torch

from robuq import quant
from robuq.exporter.cli import main
from robuq.exporter.onnx_export import OnnxQLinear, build_model, export_onnx, hadamard_pm1, sample_inputs
from robuq.models import Attention, create, reinit_zero_layers
from robuq.quant import LayerQuant, QLinear, preset, quantize_model

ort = pytest.importorskip("onnxruntime")

TINY = dict(depth=2, hidden_size=192, num_heads=3, input_size=8, num_classes=10)
STANDARD_OPS = {
    "Add", "Cast", "Clip", "Concat", "Constant", "Conv", "Cos", "Div", "Gather", "Gemm", "Identity",
    "LayerNormalization", "MatMul", "Max", "Min", "Mul", "Neg", "ReduceMax", "ReduceMean", "ReduceMin",
    "Reshape", "Round", "Shape", "Sigmoid", "Sin", "Slice", "Softmax", "Split", "Sqrt", "Squeeze", "Sub",
    "Tanh", "Transpose", "Unsqueeze", "Pow", "Expand", "Range", "Exp", "Erf", "Where", "Equal",
}  # fmt: skip


def tiny_qat(bits, seed=0, rank=4):
    """Tiny DiT in QAT form (paper preset at `bits`, rank 4), with random low-rank factors."""
    torch.manual_seed(seed)
    m = create("DiT-S/2", **TINY)
    g = torch.Generator().manual_seed(seed)
    reinit_zero_layers(m, generator=g)
    q = preset(2, bits, rank=rank)
    q.layers["blocks.1.attn.proj"] = LayerQuant("ternary", bits, "gauss", "block", 0, rank)
    q.layers["blocks.1.mlp.fc2"] = LayerQuant("ternary", bits, "minmax", "none", 0, 0)
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


@contextlib.contextmanager
def activations_unquantized(model):
    """The QAT model with float activations everywhere (ternary / int4 weights kept)."""
    qlins = [(m, m.cfg) for m in model.modules() if isinstance(m, QLinear)]
    attns = [(m, m.act_bits) for m in model.modules() if isinstance(m, Attention)]
    for m, cfg in qlins:
        m.cfg = cfg.replace(act_bits=None)
    for m, _ in attns:
        m.act_bits = None
    try:
        yield model
    finally:
        for m, cfg in qlins:
            m.cfg = cfg
        for m, bits in attns:
            m.act_bits = bits


def run_both(model, path, seeds=range(4), batch=3):
    """Per input: onnxruntime against the PyTorch model, (relative max error, relative L2 error, L2
    error relative to the activation quantization's effect on the output)."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    errs = []
    for seed in seeds:
        x, t, y = sample_inputs(model.config, batch=batch, seed=seed)  # batch differs from the export's
        got = sess.run(None, {"x": x.numpy(), "t": t.numpy(), "y": y.numpy()})[0]
        with torch.no_grad():
            ref = model(x, t, y).numpy().astype(np.float64)
            with activations_unquantized(model):
                float_act = model(x, t, y).numpy()
        assert got.shape == ref.shape
        d = got - ref
        effect = np.linalg.norm(ref - float_act) or 1.0  # 0 for a full-precision model
        errs.append(
            (
                np.abs(d).max() / np.abs(ref).max(),
                np.linalg.norm(d) / np.linalg.norm(ref),
                np.linalg.norm(d) / effect,
            )
        )
    return errs


def check_errors(errs):
    print("\nrelative max / L2 / to-effect errors per input:", [tuple(f"{e:.1e}" for e in r) for r in errs])
    assert all(mx <= 1e-2 and l2 <= 2e-3 and eff <= 0.1 for mx, l2, eff in errs), errs


@pytest.fixture(scope="module", params=[4, 2], ids=["W1.58A4", "W1.58A2"])
def exported(request, tmp_path_factory):
    model = tiny_qat(request.param)
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    export_onnx(model, path)
    return model, path


def test_onnxruntime_matches_qat_model(exported):
    model, path = exported
    check_errors(run_both(model, path))
    assert not any(isinstance(m, OnnxQLinear) for m in model.modules())  # export mode was undone


def test_graph_uses_standard_operators(exported):
    model, path = exported
    g = onnx.load(str(path)).graph
    onnx.checker.check_model(onnx.load(str(path)))
    ops = {n.op_type for n in g.node}
    assert all(n.domain in ("", "ai.onnx") for n in g.node)
    assert ops <= STANDARD_OPS, ops - STANDARD_OPS
    assert {"MatMul", "Round", "Clip", "ReduceMin", "ReduceMax", "ReduceMean", "Sqrt"} <= ops
    casts = {a.i for n in g.node if n.op_type == "Cast" for a in n.attribute if a.name == "to"}
    assert onnx.TensorProto.DOUBLE in casts  # gauss statistics stay float64
    consts = [onnx.numpy_helper.to_array(t) for t in g.initializer]
    consts += [
        onnx.numpy_helper.to_array(a.t) for n in g.node if n.op_type == "Constant" for a in n.attribute
    ]
    had = [c for c in consts if c.shape == (192, 192) and set(np.unique(c)) == {-1.0, 1.0}]
    assert had, "no dense +-1 Hadamard matrix among the constants"
    w = model.blocks[0].mlp.fc1.weight
    codes, s = quant.quantize_weight(w, "ternary")
    wt = (codes.float() * s[:, None]).T.numpy()
    assert any(c.shape == wt.shape and np.array_equal(c, wt) for c in consts)  # constant s * codes
    assert [i.name for i in g.input] == ["x", "t", "y"] and [o.name for o in g.output] == ["out"]


@pytest.mark.parametrize(
    "lq",
    [
        LayerQuant("ternary", 2, "gauss", "full", 0, 4),
        LayerQuant("ternary", 3, "gauss", "block", 0, 4),
        LayerQuant("ternary", 2, "minmax", "none", 0, 0),
        LayerQuant("int4", 4, "minmax", "none", 0, 0),
        LayerQuant("ternary", None, "gauss", "full", 0, 2),
    ],
    ids=["A2-gauss-full-r4", "A3-block", "A2-minmax-none", "int4-adaLN", "A16"],
)
@pytest.mark.filterwarnings("ignore")
def test_single_layer(lq, tmp_path):
    """One QLinear alone: OnnxQLinear in PyTorch and in onnxruntime against QLinear.forward."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(384, 200)
    q = QLinear(384, 200, True, lq)
    with torch.no_grad():
        q.weight.copy_(quant.fast_hadamard(lin.weight, lq.hadamard, lq.hadamard_block))
        q.bias.copy_(lin.bias)
        if lq.rank:
            q.lowrank_down.weight.normal_(0, 0.05)
            q.lowrank_up.weight.normal_(0, 0.05)
    x = torch.randn(64, 384) * 2 + 0.3
    with torch.no_grad():
        ref = q(x).numpy()
        mine = OnnxQLinear(q)(x).numpy()
    path = tmp_path / "l.onnx"
    torch.onnx.export(OnnxQLinear(q), (x,), path, dynamo=False, input_names=["x"], opset_version=17)
    got = ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})[0]
    for out in (mine, got):
        rows = np.abs(out - ref).max(axis=1) / np.abs(ref).max()
        assert (rows > 1e-5).sum() <= 1, rows.max()  # at most one token with a boundary flip


def test_hadamard_pm1_is_the_reference_matrix():
    for n, form, block in [(192, "full", 0), (768, "full", 0), (384, "block", 0), (384, "block", 32)]:
        p, c = hadamard_pm1(n, form, block)
        h = quant.hadamard_matrix(n, form, block, dtype=torch.float64).numpy()
        assert np.allclose(p.astype(np.float64) * c, h, atol=1e-15)
    assert hadamard_pm1(64, "none") == (None, 1.0)


def test_full_precision_model(tmp_path):
    model = create("DiT-S/2", **TINY)
    reinit_zero_layers(model, generator=torch.Generator().manual_seed(1))
    model.eval()
    export_onnx(model, tmp_path / "fp.onnx")
    errs = run_both(model, tmp_path / "fp.onnx", seeds=range(2))
    assert all(mx <= 1e-5 for mx, _, _ in errs), errs


def test_cli_onnx_from_checkpoint(tmp_path):
    model = tiny_qat(2, seed=3, rank=2)
    torch.save(
        {
            "model": model.state_dict(),
            "ema": model.state_dict(),
            "opt": {},
            "step": 1,
            "args": {},
            "model_config": model.config.to_dict(),
            "quant_config": model.quant_config.to_dict(),
            "rng": {},
        },
        tmp_path / "c.pt",
    )
    assert main([str(tmp_path / "c.pt"), "--onnx", str(tmp_path / "c.onnx"), "-q"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.onnx", "c.pt"]
    check_errors(run_both(model, tmp_path / "c.onnx", seeds=range(3)))
    rebuilt = build_model(model.config, model.quant_config, model.state_dict())  # what the CLI exports
    x, t, y = sample_inputs(model.config, batch=2)
    with torch.no_grad():
        assert torch.equal(rebuilt(x, t, y), model(x, t, y))


def test_cli_onnx_random(tmp_path):
    argv = [
        "--random",
        "DiT-S/2",
        "--depth",
        "1",
        "--hidden-size",
        "192",
        "--num-heads",
        "3",
        "--input-size",
        "8",
    ]
    argv += ["--num-classes", "10", "--bits", "W1.58A4", "--rank", "2", "-o", str(tmp_path / "r.rq")]
    assert main([*argv, "--onnx", str(tmp_path / "r.onnx"), "-q"]) == 0
    assert (tmp_path / "r.rq").exists() and (tmp_path / "r.onnx").exists()
    sess = ort.InferenceSession(str(tmp_path / "r.onnx"))
    x = np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)
    out = sess.run(None, {"x": x, "t": np.array([1.0, 999.0], np.float32), "y": np.array([0, 10])})[0]
    assert out.shape == (2, 8, 8, 8) and np.isfinite(out).all()

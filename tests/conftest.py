"""Shared fixtures: tiny DiT checkpoints (robuq-train layout) and their .rq exports, built once per session
on demand (``tiny("a2")``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from tiny_dit import tiny_dit

from robuq import models
from robuq import quant as Q

#: the CPU kernel tiers (robuq._C.set_tier); see the `tier` fixture
TIERS = ["reference", "generic", "avx2", "avx512", "amx"]

TINY = dict(depth=2, hidden_size=96, num_heads=3, input_size=16, in_channels=1, num_classes=10)

#: name -> (config overrides, quant config maker (depth -> QuantConfig) or None, seed)
TINY_VARIANTS = {
    # the digits-shaped QAT model: W1.58A2, rank 4, adaLN W4A4, attention A8
    "a2": ({}, lambda d: Q.preset(d, 2, rank=4), 0),
    # the same configuration with other weights (a different checkpoint)
    "a2-other": ({}, lambda d: Q.preset(d, 2, rank=4), 1),
    "fp": ({}, None, 2),
    # a latent-space model: 4 channels (cfg "dit" guides 3 of them), fixed variance (learn_sigma False)
    "latent": (dict(in_channels=4, input_size=8, learn_sigma=False), lambda d: Q.preset(d, 3), 3),
    # no null class (class_dropout_prob 0): no classifier-free guidance
    "nonull": (dict(class_dropout_prob=0.0), lambda d: Q.preset(d, 4), 4),
    # widths that are multiples of 64 (the CUDA engine's fast ternary GEMM; docs/cuda.md): hidden 128
    "h128": (dict(hidden_size=128, num_heads=2), lambda d: Q.preset(d, 2, rank=4), 5),
    # every weight format, Hadamard form and activation width A2..A8 (and float activations) in one model,
    # hidden 192 (Paley K = 12 full transforms), attention at 6 bits
    "mix": (dict(hidden_size=192, num_heads=3), lambda d: mixed_config(d), 6),
}


def mixed_config(depth: int) -> Q.QuantConfig:
    L = Q.LayerQuant
    per_block = [
        {
            "attn.qkv": L("ternary", 2, "gauss", "full", 0, 4),
            "attn.proj": L("ternary", 3, "minmax", "block", 64, 0),
            "mlp.fc1": L("int8", 8, "minmax", "none", 0, 0),
            "mlp.fc2": L("int4", 5, "gauss", "full", 0, 2),
        },
        {
            "attn.qkv": L("ternary", 6, "gauss", "block", 0, 0),
            "attn.proj": L("int4", 7, "gauss", "none", 0, 0),
            "mlp.fc1": L("ternary", None, "gauss", "full", 0, 0),
            "mlp.fc2": L("ternary", 4, "minmax", "full", 0, 3),
        },
    ]
    layers = {}
    for i in range(depth):
        for name, lq in per_block[i % 2].items():
            layers[f"blocks.{i}.{name}"] = lq
        layers[f"blocks.{i}.adaLN_modulation.1"] = L("int4", 4, "minmax", "none", 0, 0)
    return Q.QuantConfig(layers=layers, attention_bits=6)


@dataclass
class TinyModel:
    name: str
    ckpt: str  # robuq-train checkpoint (model = ema, step 0)
    rq: str  # its export (robuq.exporter.cli.main, EMA weights)
    config: models.DiTConfig


def build_tiny(name: str, directory: Path) -> TinyModel:
    """A randomly initialised DiT (trained 0 steps) whose zero-initialised adaLN and final layers are
    refilled (reinit_zero_layers) so its outputs are not trivial; QAT-quantized as the variant says
    (low-rank factors from the SVD of the quantization error, in float32 as training leaves them)."""
    from robuq.exporter.cli import main as export_main

    overrides, make_quant, seed = TINY_VARIANTS[name]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = tiny_dit(seed, refill_seed=seed + 100, **{**TINY, **overrides}).train()
        quant = make_quant(model.config.depth) if make_quant else None
        if quant is not None:
            Q.quantize_model(model, quant)
        sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        ckpt = directory / f"{name}.pt"
        torch.save(
            {
                "format": "robuq-train-checkpoint",
                "model": sd,
                "ema": sd,
                "step": 0,
                "args": {},
                "model_config": model.config.to_dict(),
                "quant_config": quant.to_dict() if quant is not None else None,
            },
            ckpt,
        )
        rq = directory / f"{name}.rq"
        assert export_main([str(ckpt), "-o", str(rq), "-q", "--allow-fp"]) == 0
    finally:
        torch.set_num_threads(before)
    return TinyModel(name, str(ckpt), str(rq), model.config)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """tiny(name) -> TinyModel, built on first use and shared by the whole session."""
    directory = tmp_path_factory.mktemp("tiny-models")
    cache: dict[str, TinyModel] = {}

    def get(name: str) -> TinyModel:
        if name not in cache:
            cache[name] = build_tiny(name, directory)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def torch_one_thread():
    """PyTorch on one thread for a module (``pytestmark = pytest.mark.usefixtures("torch_one_thread")``):
    the reference models in the tests are tiny, and torch's thread pool only slows them down (badly so when
    the machine is busy)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def restore_tier():
    """Restores the kernel tier a test may force with robuq._C.set_tier."""
    from robuq import _C

    before = _C.active_tier()
    yield
    _C.set_tier(before)


@pytest.fixture(params=TIERS)
def tier(request):
    """Runs the test with the named kernel tier forced, restoring the previous one afterwards."""
    from robuq import _C

    name = request.param
    if not _C.tier_available(name):
        needs = {
            "avx512": "AVX-512 F/BW/VL/VBMI/VNNI and AVX2",
            "amx": "AMX-INT8 enabled by the OS, and the avx512 tier",
        }.get(name, "AVX2, FMA and F16C")
        pytest.skip(f"kernel tier {name!r} is not available on this CPU / build (needs {needs})")
    before = _C.active_tier()
    _C.set_tier(name)
    yield name
    _C.set_tier(before)

"""Official DiT checkpoints end to end: a randomly initialised DiT saved in the official layouts (the plain
state dict of the released DiT-XL-2-256x256.pt, and DiT's train.py dict {"model", "ema", "opt", "args":
argparse.Namespace}) goes through robuq-train QAT (--init), robuq-export and the engine: sampling with an
ImageNet class name, and the engine's forward against the PyTorch QAT model.

DiT-S/2 from train.py's layout runs by default (about a minute on 2 cores); the plain layout (loading of both
layouts is also tested in tests/test_exporter.py) and DiT-XL/2 (2.7 GB checkpoint; the QAT step holds
weights, gradients, AdamW state and EMA, ~15 GB) are the same pipeline, marked slow."""

import argparse
import glob

import numpy as np
import pytest
import torch

import robuq
from robuq import models, parity, train
from robuq.exporter.cli import main as export_main
from robuq.labels import resolve_class


def _save_official(model: models.DiT, d, layout: str) -> str:
    sd = model.state_dict()
    path = str(d / f"{layout}.pt")
    if layout == "plain":  # what facebookresearch/DiT released: the EMA state dict alone
        torch.save(sd, path)
    else:  # DiT's train.py checkpoint
        args = argparse.Namespace(model="DiT-S/2", image_size=256, num_classes=1000, global_seed=0)
        ema = {k: v.clone() for k, v in sd.items()}
        torch.save({"model": sd, "ema": ema, "opt": {"state": {}, "param_groups": []}, "args": args}, path)
    return path


def _pipeline(name: str, layout: str, tmp_path, batch: int):
    torch.manual_seed(0)
    model = models.create(name)  # the official init (adaLN and final layer zero) ...
    # ... made non-trivial
    models.reinit_zero_layers(model, std=0.02, generator=torch.Generator().manual_seed(1))
    ckpt = _save_official(model, tmp_path, layout)
    del model
    # a few latents of the model's shape (ImageNet 256 -> 32x32x4), labels from ImageNet's 1000 classes
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", (rng.standard_normal((4, 4, 32, 32)) * 0.8).astype(np.float32))
    np.save(tmp_path / "y.npy", np.array([207, 360, 387, 974], dtype=np.int64))
    out = tmp_path / "qat"
    data = f"latents:{tmp_path / 'x.npy'},{tmp_path / 'y.npy'}"
    argv = [
        "--data",
        data,
        "--init",
        ckpt,
        "--bits",
        "W1.58A2",
        "--rank",
        "4",
        "--steps",
        "1",
        "--batch-size",
        str(batch),
        "--holdout",
        "0",
        "--out",
        str(out),
        "--no-progress",
        "--log-every",
        "1",
    ]
    assert train.main(argv) == 0
    (qat_ckpt,) = glob.glob(str(out / "checkpoints" / "*.pt"))
    rq = tmp_path / "model.rq"
    assert export_main([qat_ckpt, "-o", str(rq), "-q"]) == 0
    return qat_ckpt, str(rq)


def _check(qat_ckpt: str, rq: str):
    eng = robuq.Engine(rq, threads=2)
    info = eng.info["model_config"]
    assert info["space"] == "latent" and info["num_classes"] == 1000 and eng.has_null_class
    assert len(eng.info["layers"]) > 0  # quantized layers made it into the file
    # sampling: classes by ImageNet name, 2 DDIM steps with guidance; latents of the VAE's shape
    classes = [resolve_class("golden retriever", 1000), resolve_class("Arctic fox", 1000)]
    z = eng.sample(classes, steps="ddim2", sampler="ddim", cfg_scale=4.0, seed=0)
    assert z.dtype == np.float32 and z.shape == (2, 4, 32, 32) and np.isfinite(z).all()

    # the engine computes what the PyTorch QAT model computes (EMA weights, low-rank factors rounded to
    # float16 as the file stores them): robuq.parity's check, every linear on identical inputs <= 1e-4 and
    # the whole forward <= 1e-3 (or, where quantizer-boundary flips make PyTorch's own float32 forward that
    # noisy, within 1e-3 + 2x that noise of the float64 model; robuq.parity explains why)
    report = parity.check_parity(eng, train.load_model(qat_ckpt).eval())
    assert not report.failures(layer_tol=1e-4, tol=1e-3), report.failures(layer_tol=1e-4, tol=1e-3)
    assert len(report.layers) == len(eng.info["linears"])


@pytest.mark.parametrize("layout", [pytest.param("plain", marks=pytest.mark.slow), "train"])
def test_official_dit_s2_qat_export_engine(layout, tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        qat_ckpt, rq = _pipeline("DiT-S/2", layout, tmp_path, batch=2)
        _check(qat_ckpt, rq)
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_official_dit_xl2_qat_export_engine(tmp_path):
    qat_ckpt, rq = _pipeline("DiT-XL/2", "plain", tmp_path, batch=1)
    _check(qat_ckpt, rq)

"""The models shipped in the repository: each .rq equals a fresh export of its release checkpoint, the
engine reproduces its PyTorch QAT model (robuq-parity), and robuq-infer runs the default model."""

import numpy as np
import pytest
import torch

from robuq import Engine, infer, parity, ship

SHIPPED = sorted(ship.SHIPPED.items())
missing = not all((ship.MODELS_DIR / ck).is_file() for _, ck in SHIPPED)
pytestmark = pytest.mark.skipif(
    missing, reason="release checkpoints (models/digits/*.pt) are not in this tree"
)


def test_shipped_rq_files_match_a_fresh_export():
    assert ship.export_shipped(check=True) == []


@pytest.mark.parametrize("asset,ckpt", SHIPPED)
def test_parity_on_shipped_models(asset, ckpt, torch_one_thread):
    rc = parity.main([str(ship.ASSETS_DIR / asset), str(ship.MODELS_DIR / ckpt), "--threads", "1"])
    assert rc == 0


def test_default_model_generates_digits(tmp_path):
    """robuq-infer with no model file (the shipped A2 model, its default CFG 4, 50 DDPM steps here) draws
    digits the judge recognises: 3 samples of every class, at least 80 % classified as requested. The
    model scores ~91 % at CFG 4 over 200 samples (docs/quality.md), so 80 % is ~2 binomial sd below it
    at n = 30; a broken sampler or model scores ~10 %. Seeded: the outcome is the same on every tier."""
    from robuq.evaluate import load_classifier, predict

    out = tmp_path / "d.npy"
    classes = [c for _ in range(3) for c in range(10)]
    argv = [a for c in classes for a in ("--class", str(c))]
    assert infer.main([*argv, "--steps", "50", "--threads", "2", "-o", str(out), "--no-progress"]) == 0
    imgs = np.load(out)
    assert imgs.shape == (30, 16, 16, 1) and imgs.dtype == np.uint8
    judge, _ = load_classifier(log=lambda *_: None)
    pred, _ = predict(judge, torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1.0)
    accuracy = float((pred.numpy() == np.array(classes)).mean())
    assert accuracy >= 0.8, accuracy
    eng = Engine(str(ship.default_model_path()), threads=1)
    assert eng.info["model_config"]["num_classes"] == 10

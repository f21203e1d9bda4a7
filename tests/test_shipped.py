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
def test_parity_on_shipped_models(asset, ckpt):
    torch.set_num_threads(1)
    rc = parity.main([str(ship.ASSETS_DIR / asset), str(ship.MODELS_DIR / ckpt), "--threads", "1"])
    assert rc == 0


def test_default_model_generates_digits(tmp_path):
    out = tmp_path / "d.npy"
    assert (
        infer.main(
            [
                "--class",
                "7",
                "--class",
                "3",
                "--steps",
                "10",
                "--threads",
                "1",
                "-o",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    imgs = np.load(out)
    assert imgs.shape == (2, 16, 16, 1) and imgs.dtype == np.uint8
    eng = Engine(str(ship.default_model_path()), threads=1)
    assert eng.info["model_config"]["num_classes"] == 10

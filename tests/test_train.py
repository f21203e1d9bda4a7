"""robuq-train (full precision, QAT, AMPN, exact resume, DDP, bad inputs) and robuq.data."""

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from robuq import ampn, data, diffusion
from robuq.quant import QuantConfig
from robuq.train import load_checkpoint, load_model, main

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TINY = ["--data", "digits", "--depth", "1", "--hidden-size", "64", "--num-heads", "2", "--no-progress"]


def run(*argv) -> int:
    return main([str(a) for a in argv])


def read_log(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def ckpt(out, step):
    return os.path.join(out, "checkpoints", f"{step:07d}.pt")


@pytest.fixture(scope="module")
def fp_run(tmp_path_factory):
    """A tiny full-precision model trained for 100 steps on digits (a few seconds)."""
    out = str(tmp_path_factory.mktemp("fp"))
    rc = run(
        *TINY,
        "--batch-size",
        32,
        "--steps",
        100,
        "--lr",
        1e-3,
        "--ema-decay",
        0.9,
        "--log-every",
        10,
        "--out",
        out,
    )
    assert rc == 0
    return out


# ------------------------------------------------------------------------------------------ data
def test_digits_dataset():
    x, y, k = data.load_dataset("digits")
    assert x.shape == (1797, 1, 16, 16) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and k == 10 and set(y.tolist()) == set(range(10))
    assert x.min() >= -1 and x.max() <= 1 and x.min() == -1 and x.max() == 1
    tr, ytr, _ = data.load_dataset("digits", split="train")
    ho, yho, _ = data.load_dataset("digits", split="heldout")
    assert len(tr) + len(ho) == 1797 and 170 <= len(ho) <= 190
    counts = np.bincount(yho.numpy(), minlength=10)
    assert counts.min() >= 17 and counts.max() <= 19  # stratified
    # fixed: the same split every time, and disjoint
    ti, hi = data.split_indices(y.numpy(), 0.1, 0)
    assert set(ti.tolist()).isdisjoint(hi.tolist())
    assert torch.equal(ho, x[torch.from_numpy(hi)])
    assert not np.array_equal(hi, data.split_indices(y.numpy(), 0.1, 1)[1])
    x8, _, _ = data.load_dataset("digits", image_size=8)
    assert x8.shape == (1797, 1, 8, 8)


def test_folder_dataset(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in (("zebra", 3), ("ant", 2)):
        (tmp_path / name).mkdir()
        for i in range(n):
            a = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)  # non-square: centre crop
            Image.fromarray(a).save(tmp_path / name / f"{i}.png")
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    x, y, k = data.load_dataset(f"folder:{tmp_path}", image_size=8)
    assert k == 2 and x.shape == (5, 3, 8, 8) and x.dtype == torch.float32
    assert y.tolist() == [0, 0, 1, 1, 1]  # sorted class names: ant -> 0, zebra -> 1
    assert x.min() >= -1 and x.max() <= 1
    g, _, _ = data.load_dataset(f"folder:{tmp_path}", image_size=12, channels=1)
    assert g.shape == (5, 1, 12, 12)
    # size kept: the centre crop of a 12x20 image is columns 4..15
    img = np.asarray(Image.open(tmp_path / "ant" / "0.png").convert("L"), dtype=np.float32)[:, 4:16]
    assert np.allclose(g[0, 0].numpy(), img / 127.5 - 1)
    with pytest.raises(FileNotFoundError):
        data.load_dataset(f"folder:{tmp_path / 'missing'}", image_size=8)
    with pytest.raises(ValueError, match="image size"):
        data.load_dataset(f"folder:{tmp_path}")


def test_latents_dataset(tmp_path):
    lat = np.random.default_rng(1).standard_normal((20, 4, 4, 4)).astype(np.float32)
    lab = np.arange(20) % 3
    np.save(tmp_path / "z.npy", lat)
    np.save(tmp_path / "z_labels.npy", lab)
    x, y, k = data.load_dataset(f"latents:{tmp_path / 'z.npy'}")
    assert torch.equal(x, torch.from_numpy(lat)) and y.tolist() == lab.tolist() and k == 3
    np.save(tmp_path / "other.npy", lab[::-1].copy())
    _, y2, k2 = data.load_dataset(f"latents:{tmp_path / 'z.npy'},{tmp_path / 'other.npy'}", num_classes=5)
    assert y2.tolist() == lab[::-1].tolist() and k2 == 5
    tr, _, _ = data.load_dataset(f"latents:{tmp_path / 'z.npy'}", split="train", holdout=0.2)
    assert len(tr) == 17  # classes of 7, 7, 6: round(0.2 * n) = 1 held out from each
    np.save(tmp_path / "bad.npy", lat[0])
    np.save(tmp_path / "bad_labels.npy", lab)
    with pytest.raises(ValueError, match="N, C, H, W"):
        data.load_dataset(f"latents:{tmp_path / 'bad.npy'}")
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load_dataset("imagenet")


# ------------------------------------------------------------------------------------------ training
def test_fp_training_reduces_loss(fp_run):
    recs = [r for r in read_log(fp_run) if "mse" in r]
    assert [r["step"] for r in recs] == list(range(10, 101, 10))
    assert recs[-1]["mse"] < 0.5 * recs[0]["mse"]
    assert all(r["vb"] >= 0 for r in recs)
    ck = load_checkpoint(ckpt(fp_run, 100))
    assert {"model", "ema", "opt", "step", "args", "model_config", "quant_config", "rng"} <= set(ck)
    assert ck["step"] == 100 and ck["quant_config"] is None and isinstance(ck["args"], dict)
    assert ck["model_config"]["in_channels"] == 1 and ck["model_config"]["num_classes"] == 10
    assert ck["model_config"]["input_size"] == 16 and ck["model_config"]["learn_sigma"]
    # EMA kept alongside and different from the raw weights
    assert not torch.equal(ck["ema"]["final_layer.linear.weight"], ck["model"]["final_layer.linear.weight"])


def test_qat_from_fp_checkpoint(fp_run, tmp_path):
    out = str(tmp_path / "qat")
    rc = run(
        *TINY[:2],
        "--no-progress",
        "--init",
        ckpt(fp_run, 100),
        "--init-weights",
        "model",
        "--bits",
        "W1.58A2",
        "--rank",
        2,
        "--distill",
        "--batch-size",
        16,
        "--steps",
        8,
        "--lr",
        1e-3,
        "--log-every",
        4,
        "--out",
        out,
    )
    assert rc == 0
    ck = load_checkpoint(ckpt(out, 8))
    qc = QuantConfig.from_dict(ck["quant_config"])
    lin = qc.layers["blocks.0.mlp.fc1"]
    assert (lin.weight, lin.act_bits, lin.rank, lin.clip, lin.hadamard) == ("ternary", 2, 2, "gauss", "full")
    assert qc.layers["blocks.0.adaLN_modulation.1"].weight == "int4"
    assert ck["model"]["blocks.0.mlp.fc1.lowrank_down.weight"].shape == (2, 64)
    recs = [r for r in read_log(out) if "loss" in r]
    assert all(np.isfinite(r["loss"]) and r["distill"] >= 0 for r in recs)
    model = load_model(ckpt(out, 8))
    x = diffusion.sample_classes(model, [3, 7], steps=4, cfg_scale=2.0, seed=0)
    assert x.shape == (2, 1, 16, 16) and torch.isfinite(x).all()


def test_ampn_one_command(fp_run, tmp_path):
    out = tmp_path / "ampn"
    rc = run(
        *TINY[:2],
        "--no-progress",
        "--init",
        ckpt(fp_run, 100),
        "--init-weights",
        "model",
        "--ampn-budget",
        2.0,
        "--ampn-warmup",
        2,
        "--ampn-batches",
        2,
        "--ampn-batch-size",
        16,
        "--batch-size",
        16,
        "--steps",
        4,
        "--lr",
        1e-3,
        "--log-every",
        2,
        "--out",
        out,
    )
    assert rc == 0
    cfg = QuantConfig.load(out / "ampn.json")
    names = cfg.block_linears()
    assert len(names) == 4
    bits = [cfg.layers[n].act_bits for n in names]
    macs = [ampn.layer_macs(n, 64) for n in names]
    assert ampn.average_bits(bits, macs) <= 2.0 + 1e-9
    report = json.loads((out / "ampn_sensitivity.json").read_text())
    assert report["layers"] == names and report["bits"] == bits and report["weighting"] == "mac"
    sens = np.array(report["sensitivity"])
    assert sens.shape == (4, 4) and (sens[:, -1] == 0).all()
    assert report["warmup_steps"] == 2
    ck = load_checkpoint(ckpt(out, 4))
    assert QuantConfig.from_dict(ck["quant_config"]).layers == cfg.layers
    assert ck["ampn"]["done"]
    events = [r for r in read_log(out) if r.get("event") == "ampn"]
    assert len(events) == 1 and events[0]["step"] == 2


@pytest.mark.parametrize("kind", ["fp", "qat"])
def test_resume_is_bit_exact(fp_run, tmp_path, kind):
    if kind == "fp":
        common = [*TINY, "--batch-size", 16, "--lr", 1e-3, "--ema-decay", 0.9, "--log-every", 1]
    else:  # QAT with distillation and the AMPN switch between the two halves
        common = [
            *TINY[:2],
            "--no-progress",
            "--init",
            ckpt(fp_run, 100),
            "--init-weights",
            "model",
            "--rank",
            2,
            "--distill",
            "--ampn-budget",
            2.5,
            "--ampn-warmup",
            2,
            "--ampn-batches",
            1,
            "--ampn-batch-size",
            8,
            "--batch-size",
            16,
            "--lr",
            1e-3,
            "--ema-decay",
            0.9,
        ]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run(*common, "--steps", 6, "--out", straight) == 0
    assert run(*common, "--steps", 3, "--out", split) == 0
    assert run("--resume", ckpt(split, 3), "--steps", 6, "--no-progress") == 0
    a, b = load_checkpoint(ckpt(straight, 6)), load_checkpoint(ckpt(split, 6))
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    sa, sb = a["opt"]["state"], b["opt"]["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    assert a["quant_config"] == b["quant_config"] and a["rng"]["data"] == b["rng"]["data"]


def test_official_checkpoint_formats(fp_run, tmp_path):
    sd = load_checkpoint(ckpt(fp_run, 100))
    dit_train = tmp_path / "dit_train.pt"  # DiT train.py layout; "args" is an argparse.Namespace
    torch.save(
        {"model": sd["model"], "ema": sd["ema"], "opt": {}, "args": argparse.Namespace(model="DiT-S/2")},
        dit_train,
    )
    plain = tmp_path / "plain.pt"  # a released plain state dict
    torch.save(sd["ema"], plain)
    for i, path in enumerate((dit_train, plain)):
        out = tmp_path / f"o{i}"
        assert (
            run(
                *TINY[:2],
                "--no-progress",
                "--init",
                path,
                "--num-heads",
                2,
                "--bits",
                "W1.58A4",
                "--batch-size",
                8,
                "--steps",
                1,
                "--out",
                out,
            )
            == 0
        )
        assert load_checkpoint(ckpt(out, 1))["model_config"]["num_heads"] == 2


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo payload-ran",))


def test_bad_inputs_exit_2(fp_run, tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Payload()}, evil)
    cases = [
        (["--init", tmp_path / "missing.pt", "--bits", "W1.58A2"], "does not exist"),
        (["--init", evil, "--bits", "W1.58A2"], "refusing to load"),
        (["--init", ckpt(fp_run, 100), "--bits", "W2A4"], "unknown --bits"),
        (["--act-bits", 9], "not in 1..8"),
        (["--data", "folder:/no/such/dir", "--image-size", 8], "does not exist"),
        (["--quant-config", tmp_path / "none.json"], "does not exist"),
        (["--rank", 4], "need --bits"),
        (["--distill"], "needs --init"),
        (["--resume", ckpt(fp_run, 100), "--lr", 0.5], "differs from the resumed run"),
    ]
    for extra, msg in cases:
        capsys.readouterr()
        rc = run(*TINY, "--steps", 1, "--batch-size", 8, "--out", tmp_path / "o", *extra)
        err = capsys.readouterr().err
        assert rc == 2, extra
        assert msg in err and "robuq-train: error:" in err, (extra, err)
    assert "payload-ran" not in capsys.readouterr().out
    assert run("--bits") == 2  # argparse: missing value


def test_ddp_two_ranks_stay_identical(tmp_path):
    out, dump = tmp_path / "ddp", tmp_path / "dump"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "robuq.train",
        *TINY,
        "--batch-size",
        16,
        "--steps",
        3,
        "--lr",
        1e-3,
        "--log-every",
        1,
        "--out",
        out,
        "--debug-dump-weights",
        dump,
    ]
    res = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    r0 = json.loads((dump / "rank0.json").read_text())
    r1 = json.loads((dump / "rank1.json").read_text())
    assert r0["world_size"] == r1["world_size"] == 2 and r0["step"] == r1["step"] == 3
    assert r0["model_sha256"] == r1["model_sha256"] and r0["ema_sha256"] == r1["ema_sha256"]
    assert len(r0["first_batch"]) == 8 and set(r0["first_batch"]).isdisjoint(r1["first_batch"])
    ck = load_checkpoint(ckpt(out, 3))
    assert ck["rng"]["world_size"] == 2 and len(ck["rng"]["ranks"]) == 2
    assert len([r for r in read_log(out) if "loss" in r]) == 3  # rank 0 alone writes the log

"""robuq-sample: sharded FID sampling. Two torchrun processes on the CPU give the same PNGs and ADM .npz as
one process with another batch size; a killed run resumes to the same result; settings are pinned."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import robuq
from robuq import sample_many
from robuq.infer import default_model_path

MODEL = str(default_model_path())  # the shipped W1.58A2 digits model (16x16, 1 channel, 10 classes)
N = 7
ARGS = ["-n", str(N), "--steps", "4", "--seed", "3", "--no-progress"]


def run(capsys, *argv):
    rc = sample_many.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def npz(d):
    return np.load(d / f"samples_{N}x16x16x3.npz")["arr_0"]


def test_samples_are_the_engines(tmp_path, capsys):
    rc, out, err = run(capsys, MODEL, *ARGS, "--out", tmp_path, "--batch-size", "3", "--threads", "1")
    assert rc == 0, err
    arr = npz(tmp_path)
    assert arr.dtype == np.uint8 and arr.shape == (N, 16, 16, 3)
    eng = robuq.Engine(MODEL, threads=1)
    classes = sample_many.sample_classes("random", N, 10, 3)
    for i in (0, 4, 6):  # sample i alone, with its own seed and class: the same pixels
        one = eng.sample([int(classes[i])], steps=4, cfg_scale=1.5, seed=3 * 2**32 + i)[0]
        assert np.array_equal(arr[i], np.repeat(one, 3, axis=-1))
        assert np.array_equal(np.asarray(Image.open(tmp_path / "images" / f"{i:06d}.png")), one[..., 0])
    settings = json.loads((tmp_path / "run.json").read_text())
    assert settings["num_samples"] == N and settings["cfg_scale"] == 1.5 and settings["classes"] == "random"


def test_classes_modes():
    assert sample_many.sample_classes("balanced", 23, 10, 0).tolist() == [i % 10 for i in range(23)]
    r = sample_many.sample_classes("random", 5000, 10, 1)
    assert np.array_equal(r, sample_many.sample_classes("random", 5000, 10, 1))
    assert r.min() == 0 and r.max() == 9 and np.bincount(r).min() > 400  # uniform: 500 +- 3 sigma (21)
    assert not np.array_equal(r, sample_many.sample_classes("random", 5000, 10, 2))


def test_two_processes_match_one_and_resume(tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    rc, _, err = run(capsys, MODEL, *ARGS, "--out", one, "--batch-size", "4", "--threads", "1")
    assert rc == 0, err
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "robuq.sample_many",
        MODEL,
        *ARGS,
        "--out",
        str(two),
        "--batch-size",
        "2",
        "--threads",
        "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "rank 0/2" in p.stdout and "rank 1/2" in p.stdout
    assert np.array_equal(npz(one), npz(two))

    # resume: a run killed after some samples (here: PNGs removed, the .npz gone) redoes only what is missing
    images = two / "images"
    for i in (1, 5):
        (images / f"{i:06d}.png").unlink()
    os.remove(two / f"samples_{N}x16x16x3.npz")
    kept = {f: os.stat(images / f).st_mtime_ns for f in os.listdir(images)}
    rc, out, err = run(capsys, MODEL, *ARGS, "--out", two, "--threads", "1")
    assert rc == 0, err
    assert "2 new sample(s) of 7" in out and "5 already there" in out
    assert all(os.stat(images / f).st_mtime_ns == t for f, t in kept.items())
    assert np.array_equal(npz(one), npz(two))


def test_resume_with_other_settings_is_refused(tmp_path, capsys):
    rc, _, err = run(capsys, MODEL, *ARGS, "--out", tmp_path, "--threads", "1")
    assert rc == 0, err
    before = sorted(os.listdir(tmp_path / "images"))
    rc, _, err = run(capsys, MODEL, *ARGS, "--cfg-scale", "2", "--out", tmp_path, "--threads", "1")
    assert rc == 2 and "other settings (cfg_scale differ)" in err
    assert sorted(os.listdir(tmp_path / "images")) == before


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (["-n", "0"], "--num-samples must be >= 1"),
        (["-n", "2", "--steps", "0"], "positive number of sampling steps"),
        (["-n", "2", "--batch-size", "0"], "--batch-size must be >= 1"),
        (["-n", "2", "--seed", "-1"], "--seed must be in"),
        (["-n", "2", "--vae", "somewhere"], "pixel-space model"),
    ],
)
def test_bad_inputs(tmp_path, capsys, argv, pattern):
    rc, _, err = run(capsys, MODEL, *argv, "--out", tmp_path / "out", "--no-progress")
    assert rc == 2 and pattern in err
    assert not (tmp_path / "out").exists()


def test_missing_model_and_latent_without_vae(tmp_path, capsys, tiny):
    rc, _, err = run(capsys, tmp_path / "absent.rq", "-n", "2", "--out", tmp_path / "o")
    assert rc == 2 and "not found" in err
    rc, _, err = run(capsys, tiny("latent").rq, "-n", "2", "--out", tmp_path / "o")
    assert rc == 2 and "latent model" in err and "--vae" in err
    (tmp_path / "file").write_text("x")
    rc, _, err = run(capsys, MODEL, "-n", "2", "--out", tmp_path / "file")
    assert rc == 2 and "is not a folder" in err
    assert sorted(os.listdir(tmp_path)) == ["file"]

"""robuq-infer (PNG grid / .npy from a .rq model, bad inputs -> exit 2 and no file) and robuq-parity
(pass on a matching checkpoint / .rq pair, fail on a mismatched one)."""

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import robuq
from robuq import _C, infer, parity

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def run_infer(capsys, *argv):
    rc = infer.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


FAST = ("--steps", "4", "--threads", "1", "--no-progress")


# ----------------------------------------------------------------------------------- robuq-infer
def test_png_grid(tiny, tmp_path, capsys):
    m = tiny("a2")
    out = tmp_path / "grid.png"
    rc, stdout, err = run_infer(capsys, m.rq, "--class", "7", "--class", "3,1", *FAST, "-o", out)
    assert rc == 0, err
    assert f"wrote {out}" in stdout
    img = Image.open(out)
    # 3 samples of 16x16, upscaled x8, in one row with 2-pixel gaps
    assert img.mode == "L" and img.size == (3 * 128 + 2 * 2, 128)
    want = robuq.Engine(m.rq, threads=1).sample([7, 3, 1], steps=4, cfg_scale=4.0, seed=0)
    np.testing.assert_array_equal(np.asarray(img), infer.make_grid(want)[..., 0])
    assert sorted(os.listdir(tmp_path)) == ["grid.png"]  # no temporary file left


def test_default_classes_and_output(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_infer(capsys, tiny("a2").rq, "--steps", "2", "--threads", "1")
    assert rc == 0, err
    assert "2/2" in err  # the progress bar
    # no --class: one sample of each of the 10 classes, 10 per row
    assert Image.open(tmp_path / "samples.png").size == (10 * 128 + 9 * 2, 128)


def test_npy_output(tiny, tmp_path, capsys):
    m = tiny("a2")
    out = tmp_path / "s.npy"
    rc, _, err = run_infer(capsys, m.rq, "--class", "2", "--class", "5", *FAST, "--sampler", "ddim",
                           "--seed", "9", "--cfg-scale", "1.5", "-o", out)  # fmt: skip
    assert rc == 0, err
    x = np.load(out)
    assert x.dtype == np.uint8 and x.shape == (2, 16, 16, 1)
    want = robuq.Engine(m.rq, threads=1).sample([2, 5], steps=4, cfg_scale=1.5, seed=9, sampler="ddim")
    np.testing.assert_array_equal(x, want)


def test_dit_conventions(tiny, tmp_path, capsys):
    """DiT's sample.py spelling --num-sampling-steps, --threads 0 (all cores), --seeds (sample j equals a
    single sample of its class with seed Sj), --nrow, --list-classes, and names in Engine.sample."""
    m = tiny("a2")
    out = tmp_path / "s.npy"
    argv = [m.rq, "--class", "2,5", "--num-sampling-steps", "4", "--threads", "0", "--no-progress"]
    rc, stdout, err = run_infer(capsys, *argv, "--seeds", "11,12", "-o", out)
    assert rc == 0, err
    assert "seeds 11,12" in stdout
    eng = robuq.Engine(m.rq, threads=1)
    x = np.load(out)
    np.testing.assert_array_equal(x[0], eng.sample([2], steps=4, seed=11)[0])
    np.testing.assert_array_equal(x[1], eng.sample([5], steps=4, seed=12)[0])
    np.testing.assert_array_equal(eng.sample(["2", 5], steps=4, seed=1), eng.sample([2, 5], steps=4, seed=1))
    png = tmp_path / "g.png"
    rc, _, err = run_infer(capsys, *argv, "--class", "1,3", "--nrow", "2", "-o", png)
    assert rc == 0, err
    assert Image.open(png).size == (2 * 128 + 2, 2 * 128 + 2)  # 4 samples, 2 per row
    rc, stdout, _ = run_infer(capsys, m.rq, "--list-classes")
    assert rc == 0 and stdout.strip() == "10 classes: ids 0..9 (names are known only for ImageNet models)"


def test_ckpt_and_noise(tiny, tmp_path, capsys):
    """--ckpt samples a checkpoint through a temporary export (the same pixels as its .rq); --noise gives
    x_T (sample j: row j, equal to Engine.sample(noise=...))."""
    m = tiny("a2")
    out = tmp_path / "s.npy"
    exports = set(Path(tempfile.gettempdir()).glob("robuq-infer-*"))
    rc, stdout, err = run_infer(capsys, "--ckpt", m.ckpt, "--class", "2,5", *FAST, "-o", out)
    assert rc == 0, err
    assert set(Path(tempfile.gettempdir()).glob("robuq-infer-*")) == exports  # the export is removed
    assert "robuq-infer-" not in stdout
    eng = robuq.Engine(m.rq, threads=1)
    np.testing.assert_array_equal(np.load(out), eng.sample([2, 5], steps=4, seed=0))
    z = np.random.default_rng(1).standard_normal((2, 1, 16, 16)).astype(np.float32)
    np.save(tmp_path / "z.npy", z)
    argv = [m.rq, "--class", "2,5", "--noise", tmp_path / "z.npy", *FAST]
    rc, stdout, err = run_infer(capsys, *argv, "-o", out)
    assert rc == 0, err
    assert "noise " in stdout
    want = eng.sample([2, 5], steps=4, seed=0, noise=z)
    np.testing.assert_array_equal(np.load(out), want)
    assert not np.array_equal(want, eng.sample([2, 5], steps=4, seed=0))
    assert sorted(os.listdir(tmp_path)) == ["s.npy", "z.npy"]


def test_grid_layout():
    imgs = np.arange(13 * 4 * 4 * 3, dtype=np.int64).reshape(13, 4, 4, 3).astype(np.uint8)
    g = infer.make_grid(imgs)  # zoom 128 // 4 = 32, 10 per row, 2 rows
    assert g.shape == (2 * 128 + 2, 10 * 128 + 9 * 2, 3)
    np.testing.assert_array_equal(g[130:162:32, 130:162:32], imgs[11, :1, :1])
    assert (g[128:130] == 128).all() and (g[130:, 3 * 130 :] == 128).all()  # gaps and empty cells
    assert infer.make_grid(imgs[:2], zoom=1).shape == (4, 4 + 2 + 4, 3)


def test_latent_model_without_vae_writes_latents_and_preview(tiny, tmp_path, capsys):
    from robuq.latent import preview

    m = tiny("latent")
    rc, stdout, err = run_infer(capsys, m.rq, "--class", "4", *FAST, "-o", tmp_path / "lat.png")
    assert rc == 0, err
    assert sorted(os.listdir(tmp_path)) == ["lat.npy", "lat.png"]
    x = np.load(tmp_path / "lat.npy")
    assert x.dtype == np.float32 and x.shape == (1, 4, 8, 8)
    # the latents are the engine's, the preview is their linear map upscaled x8 (nearest)
    ref = robuq.Engine(m.rq, threads=1).sample([4], steps=4, output="latent")
    assert np.array_equal(x, ref)
    png = np.asarray(Image.open(tmp_path / "lat.png"))
    assert png.shape == (64, 64, 3)
    assert np.array_equal(png, preview(x)[0].repeat(8, axis=0).repeat(8, axis=1))
    assert "linear preview" in stdout and "--vae" in stdout


def test_default_model(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(infer, "default_model_path", lambda: tmp_path / "assets" / "digits-w158a2.rq")
    rc, _, err = run_infer(capsys, "--class", "1", *FAST)
    assert rc == 2
    assert "default model digits-w158a2.rq is missing" in err and "robuq-export" in err
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(infer, "default_model_path", lambda: Path(tiny("a2").rq))
    rc, _, err = run_infer(capsys, "--class", "1", *FAST)
    assert rc == 0, err
    assert Image.open(tmp_path / "samples.png").size == (128, 128)


def _bad_inputs(m, d):
    text = d / "notes.rq"
    text.write_text("hello, not a model\n")
    empty = d / "empty.rq"
    empty.write_bytes(b"")
    (d / "adir").mkdir()
    ok = d / "out.png"
    one = d / "z1.npy"
    np.save(one, np.zeros((1, 1, 16, 16), np.float32))
    nan = d / "nan.npy"
    np.save(nan, np.full((1, 1, 16, 16), np.nan, np.float32))
    return [
        ("missing model", [d / "absent.rq", "--class", "1", "-o", ok], "model file .*absent.rq not found"),
        ("directory model", [d / "adir", "--class", "1", "-o", ok], "adir is a directory, not a .rq"),
        ("text file", [text, "--class", "1", "-o", ok], "notes.rq is not a valid .rq model"),
        ("empty file", [empty, "--class", "1", "-o", ok], "empty.rq is not a valid .rq model"),
        ("checkpoint", [m.ckpt, "--class", "1", "-o", ok], "checkpoint, not a .rq model: export it"),
        ("class too large", [m.rq, "--class", "10", "-o", ok], "class id 10 is out of range.*0..9"),
        ("class negative", [m.rq, "--class", "3", "--class", "-1", "-o", ok], "class id -1 is out of range"),
        ("class not a number", [m.rq, "--class", "seven", "-o", ok], "class 'seven' is not a class id"),
        ("class float", [m.rq, "--class", "1.5", "-o", ok], "class '1.5' is not a class id"),
        ("zero steps", [m.rq, "--class", "1", "--steps", "0", "-o", ok], "positive number of sampling steps"),
        ("negative steps", [m.rq, "--class", "1", "--steps", "-3", "-o", ok], "positive number"),
        ("bad steps", [m.rq, "--class", "1", "--steps", "many", "-o", ok], "bad respacing 'many'"),
        ("no such dir", [m.rq, "--class", "1", "-o", d / "nodir" / "x.png"], "write .*nodir does not exist"),
        ("output is a dir", [m.rq, "--class", "1", "-o", d / "adir"], "adir must end in .png|adir is a dir"),
        ("output dir .png", [m.rq, "--class", "1", "-o", d / "adir.png"], "adir.png is a directory"),
        ("bad extension", [m.rq, "--class", "1", "-o", d / "x.jpg"], "must end in .png .* or .npy"),
        ("threads", [m.rq, "--class", "1", "--threads", "-1", "-o", ok], "--threads must be >= 0"),
        ("seeds count", [m.rq, "--class", "1,2", "--seeds", "5", "-o", ok], "1 seeds for 2 samples"),
        ("seeds value", [m.rq, "--class", "1", "--seeds", "x", "-o", ok], "'x' is not an integer"),
        ("nrow", [m.rq, "--class", "1", "--nrow", "0", "-o", ok], "--nrow must be in"),
        ("seed", [m.rq, "--class", "1", "--seed", "-2", "-o", ok], "--seed must be in"),
        ("argparse", [m.rq, "--class", "1", "--seed", "x", "-o", ok], "argument --seed: invalid int"),
        ("model and ckpt", [m.rq, "--ckpt", m.ckpt, "-o", ok], "either MODEL .* or --ckpt"),
        ("ckpt missing", ["--ckpt", d / "absent.pt", "-o", ok], "--ckpt .*absent.pt: not found"),
        ("ckpt not one", ["--ckpt", text, "--class", "1", "-o", ok], "notes.rq: exporting it to .rq failed"),
        ("noise shape", [m.rq, "--class", "1,2", "--noise", one, "-o", ok], r"\[1, 1, 16, 16\], but 2 s"),
        ("noise missing", [m.rq, "--class", "1", "--noise", d / "no.npy", "-o", ok], "no.npy: not found"),
        ("noise not npy", [m.rq, "--class", "1", "--noise", text, "-o", ok], "not a readable .npy"),
        ("noise nan", [m.rq, "--class", "1", "--noise", nan, "-o", ok], "nan.npy: holds non-finite"),
    ]  # fmt: skip


def test_bad_inputs_exit_2_without_output(tiny, tmp_path, capsys):
    m = tiny("a2")
    cases = _bad_inputs(m, tmp_path)
    (tmp_path / "adir.png").mkdir()
    before = sorted(os.listdir(tmp_path))
    failures = []
    for what, argv, pattern in cases:
        extra = ["--no-progress"] + ([] if "--steps" in argv else ["--steps", "2"])
        rc, stdout, err = run_infer(capsys, *argv, *extra)
        lines = err.strip().splitlines()
        if rc != 2:
            failures.append(f"{what}: exit {rc}, stderr {err!r}")
        elif not re.search(pattern, lines[-1] if lines else ""):
            failures.append(f"{what}: message {err!r} does not match {pattern!r}")
        if sorted(os.listdir(tmp_path)) != before:
            failures.append(f"{what}: left files {sorted(set(os.listdir(tmp_path)) - set(before))}")
    assert not failures, "\n".join(failures)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_permission_errors(tiny, tmp_path, capsys):
    m = tiny("a2")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    unreadable = tmp_path / "u.rq"
    unreadable.write_bytes(open(m.rq, "rb").read())
    unreadable.chmod(0)
    rc, _, err = run_infer(capsys, m.rq, "--class", "1", *FAST, "-o", locked / "x.png")
    assert rc == 2 and "not writable" in err
    rc, _, err = run_infer(capsys, unreadable, "--class", "1", *FAST, "-o", tmp_path / "x.png")
    assert rc == 2 and "permission denied" in err.lower()


def test_interrupt_leaves_no_file(tiny, tmp_path, capsys, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(robuq.Engine, "sample", interrupted)
    rc, _, err = run_infer(capsys, tiny("a2").rq, "--class", "1", *FAST, "-o", tmp_path / "x.png")
    assert rc == 130 and "interrupted" in err and os.listdir(tmp_path) == []


def test_module_entry_point(tiny, tmp_path):
    m = tiny("a2")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "robuq.infer", m.rq, *FAST, "--class"]
    ok = subprocess.run([*cmd, "3", "-o", str(tmp_path / "a.npy")], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert np.load(tmp_path / "a.npy").shape == (1, 16, 16, 1)
    bad = subprocess.run([*cmd, "11", "-o", str(tmp_path / "b.npy")], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "class id 11 is out of range" in bad.stderr
    assert not (tmp_path / "b.npy").exists()


# ---------------------------------------------------------------------------------- robuq-parity
def run_parity(capsys, *argv):
    rc = parity.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_parity_passes_on_matching_pair(tiny, capsys):
    m = tiny("a2")
    tier = _C.active_tier()
    rc, out, err = run_parity(capsys, m.rq, m.ckpt, "--threads", "1", "--tier", "reference")
    assert rc == 0, out + err
    assert "PASS: 14 layers" in out and "blocks.1.mlp.fc2" in out and "ternary A2 r4" in out
    assert _C.active_tier() == tier  # restored
    rc, out, err = run_parity(capsys, m.rq, m.ckpt, "--threads", "2")
    assert rc == 0, out + err


def test_parity_full_precision(tiny, capsys):
    m = tiny("fp")
    rc, out, err = run_parity(capsys, m.rq, m.ckpt, "--threads", "1")
    assert rc == 0, out + err
    assert "float" in out and "PASS" in out


def test_parity_fails_on_other_checkpoint(tiny, capsys):
    rc, out, err = run_parity(capsys, tiny("a2").rq, tiny("a2-other").ckpt, "--threads", "1")
    assert rc == 1, out + err
    assert "FAIL" in out and "forward" in out


def test_parity_fails_on_other_config(tiny, capsys):
    rc, out, err = run_parity(capsys, tiny("latent").rq, tiny("a2").ckpt, "--threads", "1")
    assert rc == 1, out + err
    assert "config mismatch: model_config.in_channels: 4 in the .rq file, 1 in the checkpoint" in out


def test_parity_tolerances(tiny, capsys):
    m = tiny("a2")
    rc, out, _ = run_parity(capsys, m.rq, m.ckpt, "--threads", "1", "--layer-tol", "0", "--tol", "0")
    assert rc == 1 and "FAIL" in out


@pytest.mark.parametrize(
    "argv,pattern",
    [
        (lambda m, d: [m.rq, d / "absent.pt"], "checkpoint file .*absent.pt not found"),
        (lambda m, d: [d / "absent.rq", m.ckpt], "model file .*absent.rq not found"),
        (lambda m, d: [m.ckpt, m.ckpt], "is not a valid .rq model"),
        (lambda m, d: [m.rq, m.rq], r"is a \.rq file \(an exported model\), not a checkpoint"),
        (lambda m, d: [m.rq, m.ckpt, "--threads", "0"], "--threads must be >= 1"),
    ],
)
def test_parity_bad_inputs(tiny, tmp_path, capsys, argv, pattern):
    rc, _, err = run_parity(capsys, *argv(tiny("a2"), tmp_path))
    assert rc == 2 and re.search(pattern, err), err


def test_parity_forward_criteria():
    """The three ways a forward passes (robuq.parity docstring) and that the flip tolerance applies to
    quantized models only and never hides an error beyond it."""
    R = parity.ParityReport

    def report(err, err64, noise, quantized=True):
        return R([], [], err, err, [], reference_noise=noise, forward_rel_err_64=err64, quantized=quantized)

    assert report(5e-4, 9e-3, 0.0).forward_criterion(1e-3) == "tol"
    assert report(6e-3, 5e-3, 3e-3).forward_criterion(1e-3) == "noise"  # 5e-3 <= 1e-3 + 2 * 3e-3
    assert report(6e-3, 6e-3, 1e-4).forward_criterion(1e-3) == "flips"
    assert report(6e-3, 6e-3, 1e-4, quantized=False).forward_criterion(1e-3) is None
    assert report(6e-3, 6e-3, 1e-4).forward_criterion(1e-3, flip_tol=0.0) is None
    assert report(3e-2, 3e-2, 1e-4).forward_criterion(1e-3) is None  # beyond the flip tolerance
    assert report(1e-2, 3e-2, 1e-4).forward_criterion(1e-3) is None  # both references must be within it
    assert "above the flip tolerance 0.02" in report(3e-2, 3e-2, 1e-4).failures(1e-4, 1e-3)[0]

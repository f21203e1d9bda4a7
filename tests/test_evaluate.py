"""robuq.evaluate: the Frechet distance, the digits judge, and the eval / table commands end to end."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_dit import tiny_dit

from robuq import ampn, evaluate, judge, metrics
from robuq.evaluate import generate, interleaved_classes
from robuq.judge import DEFAULT_CLASSIFIER
from robuq.metrics import feature_stats, frechet_distance, sqrtm_psd
from robuq.quant import preset
from robuq.train import main as train_main

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def fd(a, b):
    return metrics.fd_between(a, b)


def random_cov(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / (rank or d)


# ------------------------------------------------------------------------------------------ FD
def test_sqrtm_psd():
    rng = np.random.default_rng(0)
    for rank in (None, 3):  # full rank and singular
        a = random_cov(rng, 6, rank)
        r = sqrtm_psd(a)
        np.testing.assert_allclose(r, r.T, atol=1e-12)
        np.testing.assert_allclose(r @ r, a, atol=1e-10)
        assert np.linalg.eigvalsh(r).min() > -1e-10


def test_fd_of_a_set_with_itself_is_zero():
    rng = np.random.default_rng(1)
    for n, d in ((500, 16), (10, 16)):  # the second: a rank-deficient covariance
        f = rng.standard_normal((n, d)) @ rng.standard_normal((d, d))
        assert fd(f, f) == pytest.approx(0.0, abs=1e-8 * np.trace(np.cov(f, rowvar=False)))


def test_fd_grows_with_a_shift():
    rng = np.random.default_rng(2)
    f = rng.standard_normal((400, 8)) * rng.uniform(0.5, 2.0, 8)
    direction = rng.standard_normal(8)
    direction /= np.linalg.norm(direction)
    values = [fd(f, f + s * direction) for s in (0.0, 0.1, 0.5, 1.0, 3.0)]
    assert values == sorted(values) and values[-1] > values[1] > 0
    for s, v in zip((0.0, 0.1, 0.5, 1.0, 3.0), values, strict=True):  # same covariance: FD = |shift|^2
        assert v == pytest.approx(s * s, rel=1e-7, abs=1e-9)
    # a widened copy is farther than the copy
    assert fd(f, 1.5 * f) > fd(f, 1.1 * f) > 0


def test_fd_matches_the_diagonal_closed_form_and_is_rotation_invariant():
    rng = np.random.default_rng(3)
    d = 7
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.0, 3.0, d)  # b may have (near-)zero variances
    b[0] = 0.0
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    exact = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(exact, rel=1e-12)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))  # dense, non-diagonal covariances, same distance
    got = frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T)
    # sqrt is not Lipschitz at 0: round-off of 1e-16 in the zero eigenvalue moves the trace by ~1e-8
    assert got == pytest.approx(exact, abs=1e-6)
    # 1-d: (mu1 - mu2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)


def test_fd_non_commuting_2x2_brute_force():
    """2 x 2: tr sqrt(S1^1/2 S2 S1^1/2) = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2)) (eigenvalues of S1 S2)."""
    rng = np.random.default_rng(4)
    for _ in range(20):
        s1, s2 = random_cov(rng, 2), random_cov(rng, 2)
        assert not np.allclose(s1 @ s2, s2 @ s1)
        mu1, mu2 = rng.standard_normal(2), rng.standard_normal(2)
        tr_sqrt = np.sqrt(np.trace(s1 @ s2) + 2 * np.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
        exact = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(exact, rel=1e-9, abs=1e-12)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1))


def test_fd_against_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")  # a test-only cross-check; robuq does not use scipy
    rng = np.random.default_rng(5)
    s1, s2 = random_cov(rng, 12), random_cov(rng, 12, rank=5)
    mu1, mu2 = rng.standard_normal(12), rng.standard_normal(12)
    covmean = linalg.sqrtm(s1 @ s2).real
    exact = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(exact, rel=1e-7)


def test_feature_stats_and_bad_shapes():
    f = np.arange(12, dtype=np.float64).reshape(4, 3) ** 1.5
    mu, cov = feature_stats(f)
    np.testing.assert_allclose(mu, f.mean(0))
    np.testing.assert_allclose(cov, np.cov(f.T))
    with pytest.raises(ValueError):
        feature_stats(f[:1])
    with pytest.raises(ValueError):
        frechet_distance(mu, cov, mu[:2], cov[:2, :2])


# ------------------------------------------------------------------------------------------ the judge
def test_random_shift_moves_whole_images():
    x = torch.rand(32, 1, 16, 16) * 2 - 1
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(judge.random_shift(x, 0, gen), x)
    out = judge.random_shift(x, 1, gen)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)
    crops = [padded[:, :, dy : dy + 16, dx : dx + 16] for dy in range(3) for dx in range(3)]
    for i in range(len(x)):
        assert any(torch.equal(out[i], c[i]) for c in crops)


def test_classifier_short_deterministic_run():
    _, info = judge.train_classifier(epochs=6)  # 10 % of the shipped run's epochs; about 2 s
    assert info["heldout_accuracy"] >= 0.90, info
    m1, _ = judge.train_classifier(epochs=1)
    m2, _ = judge.train_classifier(epochs=1)
    for k, v in m1.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k


def test_shipped_classifier_reproduces_its_recorded_accuracy():
    assert DEFAULT_CLASSIFIER.is_file(), f"make it with: {judge.TRAIN_COMMAND}"
    side = json.loads(DEFAULT_CLASSIFIER.with_suffix(".json").read_text())
    model, info = judge.load_classifier(DEFAULT_CLASSIFIER)
    assert info["sha256"] == side["sha256"]
    assert (info["heldout_correct"], info["heldout_n"]) == (side["heldout_correct"], side["heldout_n"])
    assert side["heldout_accuracy"] >= 0.97 and side["command"] == judge.TRAIN_COMMAND
    assert sum(p.numel() for p in model.parameters()) < 100_000


# ------------------------------------------------------------------------------------------ checkpoints
def test_describe_checkpoint():
    mc = {"depth": 2, "hidden_size": 64, "patch_size": 2, "mlp_ratio": 4.0}
    d = evaluate.describe_checkpoint({"model_config": mc, "quant_config": None, "step": 7, "args": {}})
    assert (d["label"], d["bits"], d["step"]) == ("full precision", "FP32", 7)
    robuq = preset(2, 3, rank=8).to_dict()
    d = evaluate.describe_checkpoint({"model_config": mc, "quant_config": robuq, "args": {"distill": True}})
    assert d["bits"] == "W1.58A3" and d["recipe"] == "robuq" and "low-rank r8" in d["method"]
    assert "distillation" in d["method"] and d["label"] == "W1.58A3 RobuQ"
    plain = preset(2, 2, clip="minmax", hadamard="none").to_dict()
    d = evaluate.describe_checkpoint({"model_config": mc, "quant_config": plain, "args": {}})
    assert d["recipe"] == "plain" and d["bits"] == "W1.58A2" and "minmax" in d["method"]
    cfg = preset(2, 4, rank=8)
    names = cfg.block_linears()
    bits = [2, 1, 3, 2, 2, 2, 1, 3]
    mixed = ampn.apply_allocation(cfg, names, bits).to_dict()
    args = {"ampn_budget": 2.0, "ampn_weighting": "mac"}
    d = evaluate.describe_checkpoint({"model_config": mc, "quant_config": mixed, "args": args})
    avg = ampn.average_bits(bits, [ampn.layer_macs(n, 64) for n in names])
    assert d["bits"].startswith(f"W1.58A{avg:.2f} (mixed 1-3") and "AMPN budget 2" in d["method"]
    assert d["label"].endswith("+ AMPN")


def test_generate_does_not_depend_on_the_batch_size():
    model = tiny_dit(0, std=0.02, depth=1, hidden_size=64, num_heads=2, input_size=16, in_channels=1).train()
    x, y = generate(model, per_class=2, steps=3, batch_size=20)
    assert x.shape == (20, 1, 16, 16) and y.tolist() == interleaved_classes(2)
    x7, _ = generate(model, per_class=2, steps=3, batch_size=7)
    torch.testing.assert_close(x7, x, atol=1e-5, rtol=1e-5)
    x1, _ = generate(model, per_class=1, steps=3, batch_size=20)  # the first sample of each class
    torch.testing.assert_close(x1, x[:10], atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    tiny = ["--data", "digits", "--depth", "1", "--hidden-size", "64", "--num-heads", "2", "--no-progress"]
    assert train_main([*tiny, "--batch-size", "32", "--steps", "5", "--out", str(out)]) == 0
    return str(out / "checkpoints" / "0000005.pt")


FAST = ["--per-class", "2", "--steps", "5"]


def test_engine_backend_draws_the_torch_sample_set(tiny_ckpt):
    """--backend engine (the default) samples the checkpoint exported to .rq in the C++ engine: the same
    interleaved classes, noise stream and clip_denoised as the PyTorch model's ``generate``, so the images
    agree within the engine's parity bound (an FP model here: float32 round-off only)."""
    opts = evaluate.build_parser().parse_args(["eval", tiny_ckpt, *FAST, "--cfg-scale", "1.5"])
    evaluate._check_opts(opts)
    x_eng, y_eng, _ = evaluate._generate_engine(tiny_ckpt, opts)
    x_ref, y_ref = generate(evaluate.load_model(tiny_ckpt), 2, steps="5", cfg_scale=1.5)
    assert torch.equal(y_eng, y_ref) and x_eng.shape == x_ref.shape
    torch.testing.assert_close(x_eng, x_ref, atol=1e-4, rtol=0)


def test_eval_end_to_end(tiny_ckpt, tmp_path, capsys):
    js, grids = tmp_path / "eval.json", tmp_path / "grids"
    rc = evaluate.main(["eval", tiny_ckpt, *FAST, "--json", str(js), "--grid-dir", str(grids)])
    assert rc == 0
    assert "| full precision | FP32 |" in capsys.readouterr().out
    rep = json.loads(js.read_text())
    assert rep["settings"]["n"] == 20 and rep["reference"]["floor_n"] == 20
    assert rep["reference"]["n"] == 1797 - 20
    assert rep["classifier"]["heldout_accuracy"] >= 0.97
    (r,) = rep["results"]
    assert r["label"] == "full precision" and r["step"] == 5 and r["n"] == 20
    assert 0.0 <= r["accuracy"] <= 1.0 and np.isfinite(r["fd"]) and r["fd"] > 0
    # pixel FD against the reference, the real floor at the same n (20) beside it; KID (mean, sd) pairs
    assert r["pixel_fd"] > rep["reference"]["floor_pixel_fd"] > 0
    assert len(r["pixel_kid"]) == 2 and len(rep["reference"]["floor_pixel_kid"]) == 2
    assert len(r["per_class_accuracy"]) == 10
    with Image.open(r["grid"]) as im:  # 10 classes x 2 samples, 16 px + 1 px gaps, x4
        assert im.size == ((2 * 17 + 1) * 4, (10 * 17 + 1) * 4) and im.mode == "L"


def test_table_writes_the_doc(tiny_ckpt, tmp_path):
    spec = tmp_path / "rows.json"
    rows = [{"label": "tiny fp", "checkpoint": tiny_ckpt}, {"label": "not yet", "checkpoint": "nope.pt"}]
    spec.write_text(json.dumps({"rows": rows}))
    out = tmp_path / "docs" / "quality.md"
    out.parent.mkdir()
    stale = f"{evaluate.BEGIN_MARK}\nSTALE ROWS\n{evaluate.END_MARK}"
    out.write_text(f"# Quality\n\nhand-written method\n\n{stale}\n\ntail\n")
    argv = ["table", "--spec", str(spec), "--out", str(out), *FAST, "--backend", "torch"]  # the torch path
    assert evaluate.main(argv) == 2  # a missing checkpoint fails before any sampling
    for _ in range(2):  # idempotent: the generated block is replaced, not appended
        assert evaluate.main([*argv, "--skip-missing"]) == 0
    text = out.read_text()
    assert text.startswith("# Quality\n\nhand-written method\n") and text.endswith("\n\ntail\n")
    assert text.count(evaluate.BEGIN_MARK) == 1 and "STALE ROWS" not in text
    assert "| tiny fp | FP32 | full precision | 5 |" in text and "`nope.pt` not found" in text
    assert "| real digits (floor set, 20 images) |" in text and "pixel FD | spread (5 subsets)" in text
    assert "python -m robuq.evaluate table --spec" in text and "[grid](quality/tiny-fp.png)" in text
    assert (out.parent / "quality" / "tiny-fp.png").is_file()
    assert json.loads(out.with_suffix(".json").read_text())["results"][0]["label"] == "tiny fp"


def test_reference_floor_set_is_disjoint_and_capped():
    """The floor set takes per_class images of every class but leaves MIN_REF_PER_CLASS of each in the
    reference (digits' rarest class has 174 images)."""
    ref = evaluate.Reference(None, per_class=1000, log=lambda *_: None)
    assert ref.info["floor_per_class"] == 174 - evaluate.MIN_REF_PER_CLASS
    assert ref.info["floor_n"] + ref.info["n"] == 1797 and ref.pixels.shape == (ref.info["n"], 256)


def test_bad_inputs_exit_2(tiny_ckpt, tmp_path, capsys):
    assert evaluate.main(["eval", str(tmp_path / "missing.pt"), *FAST]) == 2
    assert "missing.pt' does not exist" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    torch.save({"a": torch.zeros(1)}, junk)
    assert evaluate.main(["eval", str(junk), *FAST]) == 2
    assert "not a robuq-train checkpoint" in capsys.readouterr().err
    ck = torch.load(tiny_ckpt, weights_only=True)
    ck["model_config"]["in_channels"] = 3
    rgb = tmp_path / "rgb.pt"
    torch.save(ck, rgb)
    assert evaluate.main(["eval", str(rgb), *FAST]) == 2
    assert "1-channel 16x16 10-class" in capsys.readouterr().err
    spec = tmp_path / "rows.json"  # every row is checked before any sampling
    spec.write_text(json.dumps({"rows": [{"checkpoint": tiny_ckpt}, {"checkpoint": str(junk)}]}))
    out = tmp_path / "q" / "quality.md"
    assert evaluate.main(["table", "--spec", str(spec), "--out", str(out), *FAST]) == 2
    assert not out.parent.exists()
    assert evaluate.main(["eval", tiny_ckpt, *FAST, "--classifier", str(tmp_path / "c.pt")]) == 2
    assert "classifier" in capsys.readouterr().err
    assert evaluate.main(["eval", tiny_ckpt, "--per-class", "1"]) == 2
    assert evaluate.main(["table", "--spec", str(tmp_path / "none.json")]) == 2
    assert evaluate.main(["eval"]) == 2  # argparse: no checkpoint


def test_module_entry_point_bad_path():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(
        [sys.executable, "-m", "robuq.evaluate", "eval", "no/such/ckpt.pt"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert p.returncode == 2
    assert "robuq-eval: error: checkpoint 'no/such/ckpt.pt' does not exist" in p.stderr


def test_missing_default_classifier_is_trained_on_the_fly(tiny_ckpt, tmp_path, monkeypatch, capsys):
    from robuq import judge as J

    fast = J.train_classifier
    monkeypatch.setattr(J, "DEFAULT_CLASSIFIER", tmp_path / "absent.pt")
    monkeypatch.setattr(J, "train_classifier", lambda: fast(epochs=1))  # the full run takes ~15 s
    js = tmp_path / "e.json"
    assert evaluate.main(["eval", tiny_ckpt, *FAST, "--json", str(js)]) == 0
    assert "absent.pt not found; training the digits classifier now" in capsys.readouterr().err
    judge = json.loads(js.read_text())["classifier"]
    assert judge["file"] is None and judge["source"].startswith("trained on the fly")
    assert not (tmp_path / "absent.pt").exists()  # nothing is written behind the user's back

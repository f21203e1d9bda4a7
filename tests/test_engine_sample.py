"""robuq.Engine.sample (the C++ sampler driving the C++ DiT) against the PyTorch reference sampler
robuq.diffusion.sample_classes on the QAT model of the same checkpoint; determinism; progress, Ctrl-C and
callback exceptions; argument checks."""

import os
import signal
import threading

import numpy as np
import pytest
import torch

import robuq
from robuq import _C, diffusion, rng
from robuq.checkpoint import load_model

CLASSES = [0, 3, 7, 9]


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def reference_model(ckpt: str):
    """The PyTorch QAT model of the checkpoint (EMA weights) with its low-rank factors rounded to float16,
    which is what the .rq file stores."""
    model = load_model(ckpt)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lowrank_" in name:
                p.copy_(p.half().float())
    return model


def psnr(a, b, peak=2.0):
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


# --------------------------------------------------------------------------- against the reference
@pytest.mark.parametrize(
    "sampler,eta,cfg_scale,cfg_mode",
    [
        ("ddpm", 0.0, 1.0, "dit"),
        ("ddpm", 0.0, 4.0, "dit"),
        ("ddpm", 0.0, 4.0, "all"),
        ("ddim", 0.0, 1.0, "dit"),
        ("ddim", 0.0, 4.0, "dit"),
        ("ddim", 0.0, 4.0, "all"),
        ("ddim", 0.5, 2.0, "dit"),
    ],
)
def test_matches_reference_sampler(tiny, sampler, eta, cfg_scale, cfg_mode):
    m = tiny("a2")
    eng = robuq.Engine(m.rq, threads=1)
    kw = dict(steps=10, cfg_scale=cfg_scale, seed=3, sampler=sampler, eta=eta, cfg_mode=cfg_mode)
    got = eng.sample(CLASSES, output="latent", **kw)
    ref = diffusion.sample_classes(reference_model(m.ckpt), CLASSES, clip_denoised=True, **kw).numpy()
    assert got.dtype == np.float32 and got.shape == ref.shape == (4, 1, 16, 16)
    assert float(ref.std()) > 0.1  # not a trivial output
    assert psnr(got, ref) >= 40
    # the default output of a pixel model: uint8 NHWC as diffusion.to_uint8
    img = eng.sample(CLASSES, **kw)
    assert img.dtype == np.uint8 and img.shape == (4, 16, 16, 1)
    np.testing.assert_array_equal(img, diffusion.to_uint8(torch.from_numpy(got)))


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_given_starting_noise(tiny, sampler):
    """noise= replaces x_T and nothing else: the seed's own x_T given back is bit-identical to not giving it;
    other noise matches the reference sampler started from the same x_T (the steps' noise still from the
    seed); shape, dtype and non-finite values are refused before any model call."""
    m = tiny("a2")
    eng = robuq.Engine(m.rq, threads=1)
    kw = dict(steps=6, cfg_scale=2.0, seed=5, sampler=sampler)
    own = rng.gaussian(5, 0, (4, 1, 16, 16)).astype(np.float32)
    base = eng.sample(CLASSES, output="latent", **kw)
    np.testing.assert_array_equal(eng.sample(CLASSES, output="latent", noise=own, **kw), base)
    z = np.random.default_rng(0).standard_normal((4, 1, 16, 16)).astype(np.float32)
    got = eng.sample(CLASSES, output="latent", noise=torch.from_numpy(z), **kw)
    assert psnr(got, base) < 30  # the start matters

    def noise_fn(seed, key, shape):
        return z if key == 0 else rng.gaussian(seed, key, shape)

    ref = diffusion.sample_classes(
        reference_model(m.ckpt), CLASSES, clip_denoised=True, noise_fn=noise_fn, **kw
    )
    assert psnr(got, ref.numpy()) >= 40
    np.testing.assert_array_equal(eng.sample(CLASSES, output="latent", noise=z.astype(np.float64), **kw), got)
    with pytest.raises(ValueError, match=r"noise must have shape \[4, 1, 16, 16\]"):
        eng.sample(CLASSES, noise=z[:3], **kw)
    with pytest.raises(ValueError, match="non-finite"):
        eng.sample(CLASSES, noise=np.where(np.arange(z.size).reshape(z.shape) == 7, np.inf, z), **kw)
    with pytest.raises(ValueError, match="float array"):
        eng.sample(CLASSES, noise=z.astype(np.int32), **kw)
    raw = _C.Engine(m.rq, 1)  # the C++ checks without the wrapper
    with pytest.raises(ValueError, match=r"noise must be float32 \[n, C, S, S\] = \[4, 1, 16, 16\]"):
        raw.sample(np.array(CLASSES, np.int64), "2", noise=np.zeros((4, 1, 16, 8), np.float32))
    bad = np.zeros((4, 1, 16, 16), np.float32)
    bad.flat[3] = np.nan
    with pytest.raises(ValueError, match="non-finite value at flat index 3"):
        raw.sample(np.array(CLASSES, np.int64), "2", noise=bad)


def test_latent_model_cfg_modes(tiny):
    """4 channels: "dit" guides channels 0..2 and "all" all four; no learned variance; float latents."""
    m = tiny("latent")
    eng = robuq.Engine(m.rq, threads=1)
    assert eng.info["sampling"] == {"clip_denoised": False, "cfg_mode": "dit"}
    model = reference_model(m.ckpt)
    out = {}
    for mode in ("dit", "all"):
        got = eng.sample([1, 8], steps=8, cfg_scale=3.0, seed=1, cfg_mode=mode)
        assert got.dtype == np.float32 and got.shape == (2, 4, 8, 8)  # "auto": latents
        ref = diffusion.sample_classes(model, [1, 8], steps=8, cfg_scale=3.0, seed=1, cfg_mode=mode).numpy()
        assert psnr(got, ref) >= 40, mode
        out[mode] = got
    assert not np.array_equal(out["dit"], out["all"])
    # cfg_mode None is the file's default ("dit")
    np.testing.assert_array_equal(eng.sample([1, 8], steps=8, cfg_scale=3.0, seed=1), out["dit"])
    img = eng.sample([1, 8], steps=8, cfg_scale=3.0, seed=1, output="image")
    np.testing.assert_array_equal(img, diffusion.to_uint8(torch.from_numpy(out["dit"])))


def test_defaults_come_from_the_file(tiny):
    m = tiny("a2")
    eng = robuq.Engine(m.rq, threads=1)
    assert eng.info["sampling"] == {"clip_denoised": True, "cfg_mode": "dit"}
    kw = dict(steps=5, cfg_scale=1.0, seed=0, output="latent")
    default = eng.sample([2], **kw)
    np.testing.assert_array_equal(default, eng.sample([2], clip_denoised=True, **kw))
    assert not np.array_equal(default, eng.sample([2], clip_denoised=False, **kw))
    assert eng._engine.default_cfg_mode == "dit" and eng._engine.default_clip_denoised is True


# --------------------------------------------------------------------------------- determinism
def test_deterministic_across_runs_and_threads(tiny):
    m = tiny("a2")
    kw = dict(steps=6, cfg_scale=4.0, seed=11, output="latent")
    one = robuq.Engine(m.rq, threads=1)
    two = robuq.Engine(m.rq, threads=2)
    a = one.sample(CLASSES, **kw)
    np.testing.assert_array_equal(a, one.sample(CLASSES, **kw))
    np.testing.assert_array_equal(a, two.sample(CLASSES, **kw))
    np.testing.assert_array_equal(a, two.sample(CLASSES, **kw))
    b = one.sample(CLASSES, **{**kw, "seed": 12})
    assert not np.array_equal(a, b) and psnr(a, b) < 30
    # a different class changes that sample; the forward of the others is unchanged by the batch
    c = one.sample([0, 3, 7, 1], **kw)
    assert not np.array_equal(a[3], c[3])
    np.testing.assert_array_equal(a[:3], c[:3])
    # int steps and the equivalent respacing string agree; "ddim6" is another schedule
    np.testing.assert_array_equal(a, one.sample(CLASSES, **{**kw, "steps": "6"}))


# ------------------------------------------------------------------- progress, Ctrl-C, exceptions
def test_progress_callback_and_bar(tiny, capsys):
    m = tiny("a2")
    eng = robuq.Engine(m.rq, threads=1)
    calls = []
    kw = dict(steps="ddim10", cfg_scale=1.0, sampler="ddim")
    x = eng.sample([1], progress=lambda d, t: calls.append((d, t)), **kw)
    assert calls == [(i, 10) for i in range(1, 11)]
    np.testing.assert_array_equal(x, eng.sample([1], **kw))
    eng.sample([1], steps=7, cfg_scale=1.0, progress=True)
    assert "7/7" in capsys.readouterr().err


def test_callback_exception_stops_cleanly(tiny):
    m = tiny("a2")
    eng = robuq.Engine(m.rq, threads=1)
    want = eng.sample([4, 5], steps=8, seed=2)
    seen = []

    class Stop(Exception):
        pass

    def cb(done, total):
        seen.append(done)
        if done == 3:
            raise Stop("enough")

    with pytest.raises(Stop, match="enough"):
        eng.sample([4, 5], steps=8, seed=2, progress=cb)
    assert seen == [1, 2, 3]  # stopped after the step that raised
    np.testing.assert_array_equal(eng.sample([4, 5], steps=8, seed=2), want)  # still usable


def test_ctrl_c_interrupts_sampling(tiny):
    """SIGINT (sent by another thread, as a terminal would) during sampling raises KeyboardInterrupt
    within a step or two; the engine stays usable. The callback of step 2 waits until the signal has been
    sent, so the test does not depend on how fast the machine samples or how threads are scheduled."""
    m = tiny("a2")
    eng = robuq.Engine(m.rq, threads=1)
    steps = []
    second_step, sent = threading.Event(), threading.Event()

    def cb(done, total):
        steps.append(done)
        if done == 2:
            second_step.set()
            sent.wait(30)

    def killer():
        if second_step.wait(30):
            os.kill(os.getpid(), signal.SIGINT)
        sent.set()

    # Python's own SIGINT handler, as a foreground process has: a shell that starts the tests in the
    # background without job control leaves SIGINT ignored, and Python then installs none
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    thread = threading.Thread(target=killer)
    thread.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            eng.sample([1], steps=1000, cfg_scale=1.0, progress=cb)
    finally:
        second_step.set()
        thread.join()
        signal.signal(signal.SIGINT, previous)
    assert 2 <= len(steps) < 1000
    assert eng.sample([1], steps=2, cfg_scale=1.0).shape == (1, 16, 16, 1)


# --------------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(classes=[10]), r"class id 10 is out of range 0\.\.9"),
        (dict(classes=[3, -1]), r"class id -1 is out of range"),
        (dict(classes=[1.0]), "integer class ids"),
        (dict(classes=[]), "no classes given"),
        (dict(classes=[[1, 2]]), "1-D"),
        (dict(steps=0), "positive number of sampling steps"),
        (dict(steps=-4), "positive number of sampling steps"),
        (dict(steps="0"), "positive number of sampling steps"),
        (dict(steps="abc"), "bad respacing"),
        (dict(steps="2000"), "cannot divide"),
        (dict(steps="ddim999"), "cannot create exactly 999 steps"),
        (dict(sampler="euler"), "unknown sampler 'euler'"),
        (dict(cfg_mode="half"), "unknown cfg_mode 'half'"),
        (dict(eta=-1.0), "eta must be"),
        (dict(eta=float("nan")), "eta must be"),
        (dict(cfg_scale=float("inf")), "cfg_scale must be a finite number"),
        (dict(seed=-1), "seed must be an integer"),
        (dict(seed=2**64), "seed must be an integer"),
        (dict(output="png"), "unknown output 'png'"),
        (dict(clip_denoised="yes"), "clip_denoised must be"),
    ],
)
def test_bad_arguments(tiny, kwargs, pattern):
    eng = robuq.Engine(tiny("a2").rq, threads=1)
    kw = {"classes": [1], "steps": 2, **kwargs}
    with pytest.raises((ValueError, TypeError), match=pattern):
        eng.sample(**kw)


def test_bad_types(tiny):
    eng = robuq.Engine(tiny("a2").rq, threads=1)
    with pytest.raises(TypeError, match="steps must be an int"):
        eng.sample([1], steps=True)
    with pytest.raises(TypeError, match="steps must be an int"):
        eng.sample([1], steps=2.5)


def test_cfg_needs_null_class(tiny):
    eng = robuq.Engine(tiny("nonull").rq, threads=1)
    assert not eng.has_null_class
    with pytest.raises(ValueError, match="no null-class embedding"):
        eng.sample([1], steps=2)  # the default cfg_scale is 4
    assert eng.sample([9], steps=2, cfg_scale=1.0).shape == (1, 16, 16, 1)


def test_cpp_checks_without_the_wrapper(tiny):
    raw = _C.Engine(tiny("a2").rq, 1)
    with pytest.raises(ValueError, match=r"class id 10 \(classes\[1\]\) is out of range 0\.\.9"):
        raw.sample(np.array([0, 10], np.int64), "2")
    with pytest.raises(ValueError, match="unknown cfg_mode"):
        raw.sample(np.array([0], np.int64), "2", cfg_mode="x")
    with pytest.raises(ValueError, match="at least one class"):
        raw.sample(np.zeros(0, np.int64), "2")
    with pytest.raises(ValueError, match="bad respacing"):
        raw.sample(np.array([0], np.int64), "x2")
    with pytest.raises(ValueError, match="eta must be"):
        raw.sample(np.array([0], np.int64), "2", eta=-0.5)
    with pytest.raises(ValueError, match="null-class"):
        _C.Engine(tiny("nonull").rq, 1).sample(np.array([0], np.int64), "2", cfg_scale=2.0)
    x = raw.sample(np.array([0], np.int64), "2", cfg_scale=1.0)
    assert x.dtype == np.float32 and x.shape == (1, 1, 16, 16)

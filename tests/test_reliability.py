"""Reliability guarantees of issue 7 (docs/reliability.md): checkpoints are only ever unpickled with
weights_only=True and a pickle carrying code is refused by every entry point; a robuq.Engine shared by
several Python threads gives bit-identical results to serial use and releases the GIL while it computes;
outputs are bit-identical for the same seed across processes and thread counts, and across kernel tiers
exactly where the tiers compute the same integers.

The loader's refusals of corrupt .rq files are in tests/test_engine.py; the fuzzing and sanitizer runs in
scripts/fuzz.sh and scripts/sanitize.sh; bad command lines in tests/test_cli_errors.py.
"""

from __future__ import annotations

import ast
import hashlib
import os
import pickle
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

import robuq
import robuq.rng
from robuq import _C, evaluate, parity, train
from robuq.checkpoint import CheckpointError, read
from robuq.exporter import cli as export_cli
from robuq.infer import default_model_path

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".venv", "build", ".git", "node_modules"}


# ------------------------------------------------------------------------------ weights_only everywhere
def _python_sources() -> list[Path]:
    out = []
    for p in ROOT.rglob("*.py"):
        rel = p.relative_to(ROOT).parts
        if any(part in SKIP_DIRS or part.startswith(("build", ".")) for part in rel[:-1]):
            continue
        out.append(p)
    return out


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def test_every_torch_load_in_the_repository_is_weights_only():
    """Parses every Python file of the repository (sources, tests, scripts) and checks each call of
    torch.load / torch.serialization.load passes weights_only=True literally, and that nothing else
    unpickles (pickle.load(s), pickle.Unpickler, numpy allow_pickle=True)."""
    loads, bad = 0, []
    files = _python_sources()
    assert len(files) > 20, "the scan found too few files to be looking at the repository"
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name, where = _dotted(node.func), f"{path.relative_to(ROOT)}:{node.lineno}"
            kw = {k.arg: k.value for k in node.keywords}
            if name in ("torch.load", "torch.serialization.load"):
                loads += 1
                v = kw.get("weights_only")
                if not (isinstance(v, ast.Constant) and v.value is True):
                    bad.append(f"{where}: {name} without weights_only=True")
            elif name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "cPickle.load"):
                if path.name != Path(__file__).name:  # this file unpickles its own payload once, on purpose
                    bad.append(f"{where}: {name}")
            elif name.endswith("load") and "allow_pickle" in kw:
                v = kw["allow_pickle"]
                if not (isinstance(v, ast.Constant) and v.value is False):
                    bad.append(f"{where}: {name}(allow_pickle=...)")
    assert loads >= 5, f"found only {loads} torch.load calls: the scan is broken"
    assert not bad, "\n".join(bad)


# ------------------------------------------------------------------------------------- pickle payloads
class Payload:
    """Unpickling this runs `touch MARKER` through os.system (what a hostile checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def payloads(tmp_path):
    """(marker, {kind: path}) for a raw pickle and torch.save (zip) files whose loading runs the payload."""
    marker = tmp_path / "PWNED"
    files = {}
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"model": Payload(marker), "ema": Payload(marker)}, protocol=2))
    files["pickle"] = raw
    for kind, obj in (
        ("zip-top", Payload(marker)),
        ("zip-nested", {"model": {"x": torch.zeros(2)}, "ema": {"x": Payload(marker)}, "step": 1}),
    ):
        p = tmp_path / f"{kind}.pt"
        torch.save(obj, p)
        files[kind] = p
    return marker, files


def test_the_payload_is_live(tmp_path):
    """The payload does run when unpickled unsafely: the refusals below are not vacuous."""
    marker = tmp_path / "live"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


def test_pickle_payloads_are_refused_everywhere(payloads, tiny, tmp_path, capsys):
    marker, files = payloads
    a2 = tiny("a2")
    out = tmp_path / "out"
    out.mkdir()
    for kind, p in files.items():
        with pytest.raises(CheckpointError, match="unsafe|refus|not a torch.save"):
            read(p)
        with pytest.raises(train.UsageError, match="refusing to load"):
            train.load_checkpoint(str(p))
        calls = {
            "robuq-export": lambda p=p: export_cli.main([str(p), "-o", str(out / "x.rq"), "-q"]),
            "robuq-train --init": lambda p=p: train.main(
                ["--init", str(p), "--steps", "1", "--out", str(out / "r")]
            ),
            "robuq-train --resume": lambda p=p: train.main(["--resume", str(p), "--out", str(out / "r")]),
            "robuq-eval eval": lambda p=p: evaluate.main(["eval", str(p), "--per-class", "2"]),
            "robuq-eval --classifier": lambda p=p: evaluate.main(
                ["eval", a2.ckpt, "--per-class", "2", "--classifier", str(p)]
            ),
            "robuq-parity": lambda p=p: parity.main([a2.rq, str(p)]),
        }
        threads = torch.get_num_threads()
        for what, call in calls.items():
            rc = call()
            torch.set_num_threads(threads)
            err = capsys.readouterr().err
            assert rc == 2, f"{what} on the {kind} payload: exit {rc}\n{err}"
            assert "error:" in err
        assert not marker.exists(), f"the {kind} payload ran"
        assert list(out.iterdir()) == []
    assert not marker.exists()


# ----------------------------------------------------------------------------------------- concurrency
@pytest.fixture(scope="module")
def shipped():
    return robuq.Engine(default_model_path(), threads=2)


def _tasks(eng: robuq.Engine):
    """A mix of forward, linear and sample calls, each a closure returning an array."""
    c = eng.info["model_config"]
    rng = np.random.default_rng(1)
    tasks = []
    for i in range(4):
        n = 1 + i
        x = rng.standard_normal((n, c["in_channels"], c["input_size"], c["input_size"])).astype(np.float32)
        t = rng.integers(0, 1000, n)
        y = rng.integers(0, c["num_classes"] + 1, n)  # the null class included
        tasks.append(lambda x=x, t=t, y=y: eng.forward(x, t, y))
    for name in (
        "blocks.0.attn.qkv",
        "blocks.2.mlp.fc2",
        "blocks.3.adaLN_modulation.1",
        "final_layer.linear",
    ):
        a = rng.standard_normal((19, eng.info["linears"][name]["in_features"])).astype(np.float32)
        tasks.append(lambda name=name, a=a: eng.linear(name, a))
    for seed in (0, 5):
        tasks.append(
            lambda seed=seed: eng.sample([seed, 9 - seed], steps="ddim3", seed=seed, output="latent")
        )
    return tasks


def test_engine_shared_by_threads_matches_serial(shipped):
    """forward (serialised on the engine's workspace), linear (concurrent) and sample (serialised per
    model call) from 6 Python threads at once, in two shuffled rounds: every result is bit-identical to
    the same call made alone."""
    tasks = _tasks(shipped)
    want = [f() for f in tasks]
    order = list(range(len(tasks))) * 2
    np.random.default_rng(0).shuffle(order)
    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda i: (i, tasks[i]()), order))
    for i, g in got:
        np.testing.assert_array_equal(g, want[i])


def _spin_rate(fn) -> tuple[float, float, float]:
    """Runs fn() on this thread while another Python thread counts as fast as it can; returns the
    counter's rate (per second) alone and during fn, and fn's duration."""
    count, stop = [0], threading.Event()

    def spin():
        while not stop.is_set():
            count[0] += 1

    th = threading.Thread(target=spin)
    th.start()
    try:
        c0, t0 = count[0], time.perf_counter()
        time.sleep(0.2)  # the main thread waits (GIL released): the spinner runs alone
        c1, t1 = count[0], time.perf_counter()
        fn()
        c2, t2 = count[0], time.perf_counter()
    finally:
        stop.set()
        th.join()
    return (c1 - c0) / (t1 - t0), (c2 - c1) / (t2 - t1), t2 - t1


def test_gil_is_released_during_compute(shipped):
    """While a 1-thread engine computes, a Python thread keeps counting. With the GIL held for the call
    the counter would stand still (switches happen only between bytecodes); with it released the counter
    runs at its own speed on the other core. We require a fifth of its solo rate (a loaded 2-core machine
    still gives that; a held GIL gives ~0, or at most one 5 ms switch interval per sampling step)."""
    eng = robuq.Engine(default_model_path(), threads=1)
    c = eng.info["model_config"]
    x = np.random.default_rng(0).standard_normal((64, c["in_channels"], c["input_size"], c["input_size"]))
    x = x.astype(np.float32)
    t, y = np.full(64, 500), np.arange(64) % c["num_classes"]
    a = np.random.default_rng(1).standard_normal((4096, c["hidden_size"])).astype(np.float32)
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.001)
    try:
        for what, fn in (
            ("forward", lambda: [eng.forward(x, t, y) for _ in range(3)]),
            ("linear", lambda: [eng.linear("blocks.1.mlp.fc1", a) for _ in range(30)]),
            ("sample", lambda: eng.sample(list(range(8)), steps="ddim20", seed=0)),
        ):
            solo, during, secs = _spin_rate(fn)
            assert secs > 0.05, f"{what} took {secs:.3f} s: too short to tell"
            assert during > 0.2 * solo, f"{what}: the Python thread ran at {during / solo:.1%} of its rate"
    finally:
        sys.setswitchinterval(before)


# ----------------------------------------------------------------------------------------- determinism
DIGEST = r"""
import hashlib, sys
import numpy as np
import robuq
import robuq.rng
from robuq.infer import default_model_path

eng = robuq.Engine(default_model_path(), threads=int(sys.argv[1]))
c = eng.info["model_config"]
x = robuq.rng.gaussian(7, 0, [3, c["in_channels"], c["input_size"], c["input_size"]])
h = hashlib.sha256()
h.update(eng.forward(x, np.array([0, 400, 999]), np.array([1, 2, c["num_classes"]])).tobytes())
h.update(eng.sample([3, 1, 4, 1], steps="ddim5", seed=11, output="latent").tobytes())
h.update(eng.sample([5, 9], steps="8", seed=2, cfg_scale=1.5).tobytes())
print(h.hexdigest())
"""


def test_bit_identical_across_processes_and_thread_counts():
    """Four separate processes (1 and 2 threads; the file mapped or read into memory) hash a forward
    and two samplings (DDIM and DDPM with CFG) of the shipped model: one digest."""
    runs = [("1", {}), ("2", {}), ("2", {"ROBUQ_NO_MMAP": "1"}), ("1", {"OMP_NUM_THREADS": "2"})]
    digests = set()
    for threads, extra in runs:
        env = dict(os.environ, **extra)
        r = subprocess.run(
            [sys.executable, "-c", DIGEST, threads], capture_output=True, text=True, env=env, timeout=300
        )
        assert r.returncode == 0, r.stderr
        digests.add(r.stdout.strip())
    assert len(digests) == 1, digests


def test_in_process_thread_counts_and_repeats(shipped):
    one = robuq.Engine(default_model_path(), threads=1)
    for eng in (one, shipped):  # 1 and 2 threads, and each one twice
        for _ in range(2):
            np.testing.assert_array_equal(
                eng.sample([0, 7], steps="ddim4", seed=3, output="latent"),
                one.sample([0, 7], steps="ddim4", seed=3, output="latent"),
            )


def _tiers():
    return [t for t in ("reference", "generic", "avx2", "avx512", "amx") if _C.tier_available(t)]


def test_tiers_compute_the_same_integers():
    """DEVELOPERS.md / kernels/include/robuq/avx2.h: the Hadamard transform and the per-token quantization
    are bit-identical on every tier (same float operations), and the ternary GEMM is exact integer
    arithmetic: codes, scales and zero points equal the reference's exactly; the integer products equal
    a float64 matmul of the codes (exact: |sums| < 2**53)."""
    if "avx2" not in _tiers():
        pytest.skip("the avx2 tier is not available on this CPU / build (needs AVX2, FMA and F16C)")
    rng = np.random.default_rng(3)
    for n, form in ((96, "full"), (384, "full"), (96, "block"), (160, "none")):
        x = (rng.standard_normal((23, n)) * rng.uniform(0.1, 5, (23, 1))).astype(np.float32)
        for bits in (1, 2, 3, 4, 8):
            for clip_k in (0.0, 2.5):
                ref = _C.hadamard_quantize(x, bits, clip_k, form=form, tier="reference")
                vec = _C.hadamard_quantize(x, bits, clip_k, form=form, tier="avx2", threads=2)
                for r, v in zip(ref, vec, strict=True):
                    np.testing.assert_array_equal(v, r)
    codes = rng.integers(0, 16, (37, 200), dtype=np.uint8)
    w = rng.integers(-1, 2, (50, 200)).astype(np.int8)
    packed = _C.pack_ternary(w)
    want = (codes.astype(np.float64) @ w.T.astype(np.float64)).astype(np.int32)
    for name in ("avx2", "avx512", "amx"):
        if name in _tiers():
            got = _C.ternary_matmul(codes, packed, 200, 4, threads=2, tier=name)
            np.testing.assert_array_equal(got, want)


def test_tiers_differ_only_in_float_rounding(shipped):
    """Where the tiers legitimately differ (float32 GEMMs, LayerNorm, softmax, GELU with their own fixed
    summation orders; the epilogue), a layer's output on each tier stays within 1e-5 of max |reference|
    (float32 rounding of sums of a few hundred terms, ~1e-7 relative each). The whole forward of the
    full-precision model (no quantizer) stays within 1e-5 too (measured: <= 7.6e-7 over 20 random inputs).
    In a quantized model such a rounding difference can move an activation across a quantizer boundary: a
    whole code step, at 1-4 bits a large change that the following layers carry on; so its whole forward
    is held to a relative L2 error of 2e-2 (measured over 40 random inputs on the shipped A2-AMPN and A4
    models: at most 1.2e-2; most inputs below 1e-5). Each tier is bit-identical to itself across repeats
    and thread counts."""
    tiers = _tiers()
    before = _C.active_tier()
    c = shipped.info["model_config"]
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, c["in_channels"], c["input_size"], c["input_size"])).astype(np.float32)
    t, y = np.array([1, 500, 999]), np.array([0, 5, c["num_classes"]])
    a = rng.standard_normal((29, c["hidden_size"])).astype(np.float32)
    one = robuq.Engine(default_model_path(), threads=1)
    res = {}
    try:
        for tier in tiers:
            _C.set_tier(tier)
            res[tier] = (shipped.forward(x, t, y), shipped.linear("blocks.1.attn.qkv", a))
            np.testing.assert_array_equal(one.forward(x, t, y), res[tier][0])
            np.testing.assert_array_equal(one.linear("blocks.1.attn.qkv", a), res[tier][1])
    finally:
        _C.set_tier(before)
    fwd_ref, lin_ref = res["reference"]
    for tier in tiers:
        fwd, lin = res[tier]
        assert np.abs(lin - lin_ref).max() <= 1e-5 * np.abs(lin_ref).max(), tier
        assert np.linalg.norm(fwd - fwd_ref) <= 2e-2 * np.linalg.norm(fwd_ref), tier
    fp = robuq.Engine(str(default_model_path()).replace("digits-w158a2.rq", "digits-fp.rq"), threads=2)
    fp_res = {}
    try:
        for tier in tiers:
            _C.set_tier(tier)
            fp_res[tier] = fp.forward(x, t, y)
    finally:
        _C.set_tier(before)
    for tier in tiers:
        fp_ref = fp_res["reference"]
        assert np.abs(fp_res[tier] - fp_ref).max() <= 1e-5 * np.abs(fp_ref).max(), tier


def test_digest_script_hashes_what_it_says():
    """The digest of test_bit_identical_across_processes_and_thread_counts changes when the seed does
    (so equal digests mean equal outputs, not a constant)."""
    eng = robuq.Engine(default_model_path(), threads=1)
    a = eng.sample([3], steps="ddim2", seed=11, output="latent")
    b = eng.sample([3], steps="ddim2", seed=12, output="latent")
    assert hashlib.sha256(a.tobytes()).digest() != hashlib.sha256(b.tobytes()).digest()


# -------------------------------------------------------------------- corrupt files through the binding
def _mutations(raw: bytes, n: int, seed: int):
    """n deterministic corruptions of a valid file: byte flips in the header and in the data, truncations,
    forged header lengths, duplicated or deleted spans."""
    rng = np.random.default_rng(seed)
    header_end = 8 + int.from_bytes(raw[:8], "little")
    for i in range(n):
        b = bytearray(raw)
        kind = i % 5
        if kind == 0:  # flip bytes in the header JSON
            for _ in range(int(rng.integers(1, 4))):
                b[int(rng.integers(8, header_end))] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:  # overwrite bytes in the data section
            for _ in range(int(rng.integers(1, 9))):
                b[int(rng.integers(header_end, len(b)))] = int(rng.integers(0, 256))
        elif kind == 2:  # truncate anywhere
            del b[int(rng.integers(0, len(b))) :]
        elif kind == 3:  # a forged header length
            forged = [0, 1, 2, header_end - 9, header_end, len(b), 2**63, 2**64 - 1]
            b[:8] = forged[int(rng.integers(0, len(forged)))].to_bytes(8, "little")
        else:  # delete or duplicate a span
            a = int(rng.integers(0, len(b)))
            z = min(len(b), a + int(rng.integers(1, 200)))
            b[a:z] = b"" if rng.random() < 0.5 else bytes(b[a:z]) * 2
        yield kind, bytes(b)


def test_random_corruptions_raise_only_format_error(tiny, tmp_path):
    """500 corruptions of a valid file through robuq.Engine (the Python binding): each one loads (and
    then runs a forward pass) or raises robuq.FormatError; no other exception type, no crash. The C++
    fuzzers (scripts/fuzz.sh) go much further; this checks the exception translation of the binding."""
    raw = Path(tiny("a2").rq).read_bytes()
    x = np.zeros((1, 1, 16, 16), np.float32)
    outcomes = {"loaded": 0, "refused": 0}
    for i, (kind, data) in enumerate(_mutations(raw, 500, seed=0)):
        p = tmp_path / f"m{i % 4}.rq"
        p.write_bytes(data)
        try:
            eng = robuq.Engine(p, threads=1)
        except robuq.FormatError as e:
            assert str(e), f"mutation {i} (kind {kind}): empty message"
            outcomes["refused"] += 1
            continue
        eng.forward(x, np.array([10]), np.array([3]))
        outcomes["loaded"] += 1
    assert outcomes["refused"] >= 300, outcomes  # most corruptions are caught (sanity of the generator)

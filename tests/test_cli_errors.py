"""Every command line refuses bad input the same way (issue 7, docs/reliability.md): one clear message on
stderr, exit status 2, and nothing written. One table, one row per case, for robuq-infer, robuq-export,
robuq-train, robuq-eval, robuq-parity and robuq-bench: missing files, directories given as files, garbage
bytes, a model of the wrong kind (.pt for .rq and back, a full-precision checkpoint where a QAT one is
needed, a release checkpoint for --resume), class ids out of range or not numbers, zero or negative steps,
output paths that cannot be written.

The table runs each CLI's main() in-process (fast); the cases that need a file the user cannot read or a
directory they cannot write run the installed entry points as a separate process, under an unprivileged
uid when the tests run as root (root reads and writes everything).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from robuq import evaluate, infer, parity, train
from robuq.bench import cli as bench_cli
from robuq.exporter import cli as export_cli

ROOT = Path(__file__).resolve().parents[1]
MAINS = {
    "robuq-infer": infer.main,
    "robuq-export": export_cli.main,
    "robuq-train": train.main,
    "robuq-eval": evaluate.main,
    "robuq-parity": parity.main,
    "robuq-bench": bench_cli.main,
}
NO_SAMPLING = ("--threads", "1", "--no-progress")

# (id, CLI, arguments, pattern the error message must match). Placeholders: {rq} a valid quantized .rq,
# {fp_rq} a valid full-precision .rq, {qat} / {fp} the matching robuq-train checkpoints, {release} a
# release checkpoint (EMA weights only, no training state), {garbage} random bytes, {trunc} the first
# 1000 bytes of {rq}, {dir} a directory, {file} a regular file (as a parent directory), {missing} a path
# that does not exist, {out} the directory outputs go to (must stay empty).
CASES = [
    # ---- robuq-infer
    ("infer missing model", "robuq-infer", "{missing} -o {out}/a.png", r"not found"),
    ("infer directory", "robuq-infer", "{dir} -o {out}/a.png", r"is a directory"),
    ("infer garbage", "robuq-infer", "{garbage} -o {out}/a.png", r"not a valid \.rq model: header length"),
    ("infer truncated", "robuq-infer", "{trunc} -o {out}/a.png", r"not a valid \.rq model: .*truncated"),
    ("infer .pt for .rq", "robuq-infer", "{qat} -o {out}/a.png", r"looks like a PyTorch checkpoint"),
    ("infer class too big", "robuq-infer", "{rq} --class 10 -o {out}/a.png", r"class id 10 is out of range"),
    ("infer class negative", "robuq-infer", "{rq} --class -1 -o {out}/a.png", r"class id -1 is out of range"),
    (
        "infer class not a number",
        "robuq-infer",
        "{rq} --class seven -o {out}/a.png",
        r"'seven' is not a class id",
    ),
    (
        "infer zero steps",
        "robuq-infer",
        "{rq} --steps 0 -o {out}/a.png",
        r"positive number of sampling steps",
    ),
    ("infer negative steps", "robuq-infer", "{rq} --steps -3 -o {out}/a.png", r"positive number of sampling"),
    ("infer negative threads", "robuq-infer", "{rq} --threads -1 -o {out}/a.png", r"--threads must be >= 0"),
    ("infer output dir missing", "robuq-infer", "{rq} -o {missing}/a.png", r"cannot write .*does not exist"),
    ("infer output under a file", "robuq-infer", "{rq} -o {file}/a.png", r"write .* is not a directory"),
    ("infer output is a directory", "robuq-infer", "{rq} -o {out}", r"must end in \.png"),
    ("infer output is a dir.png", "robuq-infer", "{rq} -o {dir_png}", r"is a directory"),
    # ---- robuq-export
    ("export missing", "robuq-export", "{missing} -o {out}/a.rq", r"does not exist"),
    ("export directory", "robuq-export", "{dir} -o {out}/a.rq", r"is a directory"),
    ("export garbage", "robuq-export", "{garbage} -o {out}/a.rq", r"is not a PyTorch checkpoint"),
    ("export .rq for .pt", "robuq-export", "{rq} -o {out}/a.rq", r"is a \.rq file \(an exported model\)"),
    ("export output dir missing", "robuq-export", "{qat} -o {missing}/a.rq", r"does not exist"),
    ("export output under a file", "robuq-export", "{qat} -o {file}/a.rq", r"does not exist|not a directory"),
    ("export output is a directory", "robuq-export", "{qat} -o {dir}", r"is a directory"),
    ("export bad bits", "robuq-export", "--random DiT-S/2 --bits W1.58A9 -o {out}/a.rq", r"A9"),
    # ---- robuq-parity
    ("parity missing model", "robuq-parity", "{missing} {qat}", r"model file .* not found"),
    ("parity missing checkpoint", "robuq-parity", "{rq} {missing}", r"checkpoint file .* not found"),
    ("parity directory model", "robuq-parity", "{dir} {qat}", r"is a directory"),
    ("parity directory checkpoint", "robuq-parity", "{rq} {dir}", r"is a directory"),
    ("parity garbage model", "robuq-parity", "{garbage} {qat}", r"not a valid \.rq model"),
    ("parity garbage checkpoint", "robuq-parity", "{rq} {garbage}", r"is not a PyTorch checkpoint"),
    ("parity swapped", "robuq-parity", "{qat} {rq}", r"not a valid \.rq model"),
    (
        "parity fp checkpoint for QAT",
        "robuq-parity",
        "{rq} {fp}",
        r"full-precision checkpoint but .* quantized",
    ),
    (
        "parity QAT checkpoint for fp",
        "robuq-parity",
        "{fp_rq} {qat}",
        r"QAT\) checkpoint but .* full-precision",
    ),
    ("parity zero threads", "robuq-parity", "{rq} {qat} --threads 0", r"--threads must be >= 1"),
    # ---- robuq-train (every case would train a few steps if it were accepted)
    (
        "train init missing",
        "robuq-train",
        "--init {missing} --bits W1.58A2 --steps 1 --out {out}/r",
        r"does not exist",
    ),
    (
        "train init directory",
        "robuq-train",
        "--init {dir} --bits W1.58A2 --steps 1 --out {out}/r",
        r"is a directory",
    ),
    (
        "train init garbage",
        "robuq-train",
        "--init {garbage} --bits W1.58A2 --steps 1 --out {out}/r",
        r"is not a PyTorch checkpoint",
    ),
    (
        "train init .rq",
        "robuq-train",
        "--init {rq} --bits W1.58A2 --steps 1 --out {out}/r",
        r"is a \.rq file \(an exported model\), not a checkpoint",
    ),
    (
        "train init QAT",
        "robuq-train",
        "--init {qat} --bits W1.58A2 --steps 1 --out {out}/r",
        r"quantized \(QAT\) checkpoint",
    ),
    ("train resume missing", "robuq-train", "--resume {missing} --out {out}/r", r"does not exist"),
    ("train resume garbage", "robuq-train", "--resume {garbage} --out {out}/r", r"not a PyTorch checkpoint"),
    (
        "train resume release",
        "robuq-train",
        "--resume {release} --steps 2 --out {out}/r",
        r"no training state",
    ),
    ("train zero steps", "robuq-train", "--steps 0 --out {out}/r", r"--steps must be >= 1"),
    ("train negative steps", "robuq-train", "--steps -1 --out {out}/r", r"--steps must be >= 0"),
    ("train steps not a number", "robuq-train", "--steps many --out {out}/r", r"invalid int value"),
    ("train out is a file", "robuq-train", "--steps 1 --out {file}", r"exists and is not a directory"),
    ("train out under a file", "robuq-train", "--steps 1 --out {file}/r", r"is not a directory"),
    (
        "train quant-config missing",
        "robuq-train",
        "--quant-config {missing} --steps 1 --out {out}/r",
        r"does not exist",
    ),
    (
        "train quant-config garbage",
        "robuq-train",
        "--quant-config {garbage} --steps 1 --out {out}/r",
        r"garbage",
    ),
    # ---- robuq-eval
    ("eval missing", "robuq-eval", "eval {missing} --per-class 2 --json {out}/r.json", r"does not exist"),
    ("eval directory", "robuq-eval", "eval {dir} --per-class 2 --json {out}/r.json", r"is a directory"),
    ("eval garbage", "robuq-eval", "eval {garbage} --per-class 2 --json {out}/r.json", r"not a PyTorch"),
    ("eval .rq for .pt", "robuq-eval", "eval {rq} --per-class 2 --json {out}/r.json", r"looks like a safet"),
    (
        "eval zero steps",
        "robuq-eval",
        "eval {qat} --per-class 2 --steps 0 --json {out}/r.json",
        r"at least one sampling step",
    ),
    (
        "eval negative steps",
        "robuq-eval",
        "eval {qat} --per-class 2 --steps -2 --json {out}/r.json",
        r"--steps '-2'",
    ),
    (
        "eval per-class 0",
        "robuq-eval",
        "eval {qat} --per-class 0 --json {out}/r.json",
        r"--per-class must be >= 2",
    ),
    (
        "eval classifier missing",
        "robuq-eval",
        "eval {qat} --per-class 2 --classifier {missing}",
        r"classifier .* does not exist",
    ),
    (
        "eval classifier garbage",
        "robuq-eval",
        "eval {qat} --per-class 2 --classifier {garbage}",
        r"cannot load classifier",
    ),
    (
        "eval classifier of the wrong kind",
        "robuq-eval",
        "eval {qat} --per-class 2 --classifier {fp}",
        r"cannot load classifier",
    ),
    (
        "eval json is a directory",
        "robuq-eval",
        "eval {qat} --per-class 2 --json {dir}",
        r"--json .*: is a directory",
    ),
    (
        "eval json under a file",
        "robuq-eval",
        "eval {qat} --per-class 2 --json {file}/r.json",
        r"is not a directory",
    ),
    (
        "eval grid-dir is a file",
        "robuq-eval",
        "eval {qat} --per-class 2 --grid-dir {file}",
        r"is not a directory",
    ),
    (
        "classifier output under a file",
        "robuq-eval",
        "train-classifier -o {file}/c.pt",
        r"is not a directory",
    ),
    ("classifier output is a directory", "robuq-eval", "train-classifier -o {dir}", r"is a directory"),
    (
        "classifier zero epochs",
        "robuq-eval",
        "train-classifier -o {out}/c.pt --epochs 0",
        r"--epochs must be >= 1",
    ),
    ("table spec missing", "robuq-eval", "table --spec {missing} --out {out}/q.md", r"does not exist"),
    ("table spec garbage", "robuq-eval", "table --spec {garbage} --out {out}/q.md", r"not JSON"),
    # ---- robuq-bench (--from-json: render without measuring)
    ("bench from-json missing", "robuq-bench", "--from-json {missing} --json {out}/b.json", r"No such file"),
    ("bench from-json directory", "robuq-bench", "--from-json {dir} --json {out}/b.json", r"is a directory"),
    ("bench from-json garbage", "robuq-bench", "--from-json {garbage} --json {out}/b.json", r"not JSON"),
    (
        "bench from-json wrong kind",
        "robuq-bench",
        "--from-json {spec} --json {out}/b.json",
        r"not a robuq-bench",
    ),
    ("bench zero repeats", "robuq-bench", "--repeats 0 --workdir {out}/w", r"--repeats must be >= 1"),
    ("bench negative warmup", "robuq-bench", "--warmup -1 --workdir {out}/w", r"--warmup must be >= 0"),
    ("bench zero threads", "robuq-bench", "--threads 0 --workdir {out}/w", r"--threads must be >= 1"),
    (
        "bench json under a file",
        "robuq-bench",
        "--from-json {perf} --json {file}/b.json",
        r"is not a directory",
    ),
    ("bench png is a directory", "robuq-bench", "--from-json {perf} --png {dir}", r"is a directory"),
    ("bench workdir is a file", "robuq-bench", "--quick --workdir {file}", r"is not a directory"),
]


@pytest.fixture(scope="module")
def inputs(tiny, tmp_path_factory):
    """The files the cases refer to (read-only for the tests: nothing may be added next to them)."""
    d = tmp_path_factory.mktemp("cli_inputs")
    a2, fp = tiny("a2"), tiny("fp")
    (d / "garbage.bin").write_bytes(np.random.default_rng(7).bytes(5000))
    (d / "trunc.rq").write_bytes(Path(a2.rq).read_bytes()[:1000])
    (d / "adir").mkdir()
    (d / "dir.png").mkdir()
    (d / "afile").write_text("a regular file\n")
    (d / "spec.json").write_text('{"rows": []}\n')
    release = d / "release.pt"
    ck = torch.load(a2.ckpt, map_location="cpu", weights_only=True)
    torch.save({k: v for k, v in ck.items() if k not in ("model", "opt", "rng", "sampler")}, release)
    return {
        "rq": a2.rq,
        "fp_rq": fp.rq,
        "qat": a2.ckpt,
        "fp": fp.ckpt,
        "release": str(release),
        "garbage": str(d / "garbage.bin"),
        "trunc": str(d / "trunc.rq"),
        "dir": str(d / "adir"),
        "dir_png": str(d / "dir.png"),
        "file": str(d / "afile"),
        "missing": str(d / "missing" / "nothing.here"),
        "spec": str(d / "spec.json"),
        "perf": str(ROOT / "docs" / "performance.json"),
        "root": d,
    }


def tree(d: Path) -> list[str]:
    """Every path under d (hidden temporary files included) with its size: what a run may not change."""
    return sorted(f"{p.relative_to(d)}:{p.stat().st_size if p.is_file() else 'dir'}" for p in d.rglob("*"))


def run_main(cli: str, argv: list[str], capsys) -> tuple[int, str]:
    try:
        rc = MAINS[cli](argv)
    except SystemExit as e:  # argparse's own errors exit 2 after printing the usage line
        rc = e.code
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_a_message_and_writes_nothing(case, inputs, tmp_path, capsys):
    what, cli, args, pattern = case
    out = tmp_path / "out"
    out.mkdir()
    argv = args.format(out=out, **{k: v for k, v in inputs.items() if k != "root"}).split()
    before_inputs, torch_threads = tree(inputs["root"]), torch.get_num_threads()
    try:
        rc, err = run_main(cli, argv, capsys)
    finally:
        torch.set_num_threads(torch_threads)
    assert rc == 2, f"{what}: exit status {rc}, stderr:\n{err}"
    # one clear message naming the problem, on the last line (argparse prints its usage line before it)
    last = err.strip().splitlines()[-1] if err.strip() else ""
    assert re.match(rf"{re.escape(cli)}( [a-z-]+)?: error: ", last), f"{what}: {last!r}"
    assert re.search(pattern, last), f"{what}: {last!r} does not match {pattern!r}"
    assert "Traceback" not in err
    # nothing written: the output directory stays empty (no partial or temporary file, no run folder)
    # and nothing appeared next to the inputs
    assert tree(out) == [], f"{what}: left {tree(out)}"
    assert tree(inputs["root"]) == before_inputs


# ------------------------------------------------------------------ unreadable input, unwritable output
def _unprivileged() -> list[str] | None:
    """A command prefix that runs as an ordinary user: empty when we are one, setpriv to nobody as root,
    None when that is not possible."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


def _unprivileged_cannot_run(prefix: list[str], paths: tuple[Path, ...] | None = None) -> str:
    """Why the unprivileged user cannot run this checkout's commands ("" when it can): a checkout or virtual
    environment under a folder other users cannot traverse (a clone in root's 0700 home, say) keeps them
    from importing robuq at all, which says nothing about the commands' own permission handling."""
    if not prefix:
        return ""
    for path in paths or (ROOT, Path(sys.executable).parent):
        for p in [path, *path.parents]:
            if p.stat().st_mode & stat.S_IXOTH == 0:
                return (
                    f"{p} is not traversable by other users (mode {oct(p.stat().st_mode & 0o777)}); the "
                    f"unprivileged user cannot run {path}, so file permissions cannot be tested from here"
                )
    r = subprocess.run([*prefix, sys.executable, "-c", "import robuq._C"], capture_output=True, text=True,
                       timeout=120, cwd="/")  # fmt: skip
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return (
            f"the unprivileged user cannot import robuq from this checkout ({last}); cannot test permissions"
        )
    return ""


def test_a_checkout_in_a_private_folder_skips_the_permission_tests(tmp_path):
    """Issue 14, 9: cloned under a 0700 folder (root's home), the unprivileged user cannot even import robuq;
    the permission tests then skip, naming the folder, instead of failing."""
    private = tmp_path / "home"
    (private / "checkout").mkdir(parents=True)
    private.chmod(0o700)
    reason = _unprivileged_cannot_run(["setpriv"], (private / "checkout",))
    assert reason.startswith(f"{private} is not traversable by other users (mode 0o700)"), reason
    assert _unprivileged_cannot_run([], (private / "checkout",)) == ""  # not root: nothing to drop


@pytest.fixture(scope="module")
def locked(tiny):
    """A world-traversable directory with a model and a checkpoint nobody may read (mode 000) and a
    directory nobody may write (mode 555)."""
    prefix = _unprivileged()
    if prefix is None:
        pytest.skip("running as root without setpriv: cannot drop privileges to test permissions")
    reason = _unprivileged_cannot_run(prefix)
    if reason:
        pytest.skip(reason)
    # not under pytest's base temp (mode 700): the unprivileged user must reach the files to be refused
    # by their own modes
    d = Path(os.path.realpath(tempfile.mkdtemp(prefix="robuq-locked-")))
    d.chmod(0o755)
    for p in d.parents:
        if p.stat().st_mode & stat.S_IXOTH == 0:
            shutil.rmtree(d)
            pytest.skip(f"{p} is not traversable by other users; cannot test file permissions here")
    shutil.copyfile(tiny("a2").rq, d / "model.rq")
    shutil.copyfile(tiny("a2").ckpt, d / "qat.pt")
    (d / "model.rq").chmod(0)
    (d / "qat.pt").chmod(0)
    ro = d / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    readable_rq = d / "ok.rq"
    shutil.copyfile(tiny("a2").rq, readable_rq)
    readable_ck = d / "ok.pt"
    shutil.copyfile(tiny("a2").ckpt, readable_ck)
    for p in (readable_rq, readable_ck):
        p.chmod(0o444)
    yield prefix, d
    ro.chmod(0o755)
    shutil.rmtree(d)


SCRIPTS = Path(sys.executable).parent
PERMISSION_CASES = [
    (
        "infer unreadable model",
        "robuq-infer",
        "{d}/model.rq -o /tmp/unused-{pid}.png",
        r"(cannot read|denied)",
    ),
    (
        "export unreadable checkpoint",
        "robuq-export",
        "{d}/qat.pt -o /tmp/unused-{pid}.rq",
        r"denied|cannot read",
    ),
    ("parity unreadable model", "robuq-parity", "{d}/model.rq {d}/ok.pt", r"denied|cannot read"),
    (
        "train unreadable init",
        "robuq-train",
        "--init {d}/qat.pt --steps 1 --out /tmp/unused-{pid}-run",
        r"denied|cannot read",
    ),
    ("eval unreadable checkpoint", "robuq-eval", "eval {d}/qat.pt --per-class 2", r"denied|cannot read"),
    (
        "infer unwritable output",
        "robuq-infer",
        "{d}/ok.rq --steps 2 --threads 1 -o {d}/readonly/a.png",
        r"not writable|denied",
    ),
    ("export unwritable output", "robuq-export", "{d}/ok.pt -o {d}/readonly/a.rq", r"not writable|denied"),
    ("train unwritable out", "robuq-train", "--steps 1 --out {d}/readonly/run", r"not writable"),
    (
        "eval unwritable json",
        "robuq-eval",
        "eval {d}/ok.pt --per-class 2 --json {d}/readonly/r.json",
        r"not writable",
    ),
    (
        "bench unwritable json",
        "robuq-bench",
        "--from-json {perf} --json {d}/readonly/b.json",
        r"not writable",
    ),
]


def _run_all(commands: dict[str, tuple[list[str], dict, Path]]) -> dict[str, subprocess.CompletedProcess]:
    """Runs the commands (name -> (argv, env, cwd)) four at a time: each is a fresh interpreter that
    spends seconds importing, and they do not interfere."""

    def one(item):
        name, (argv, env, cwd) = item
        return name, subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)

    with ThreadPoolExecutor(4) as pool:
        return dict(pool.map(one, commands.items()))


@pytest.fixture(scope="module")
def permission_runs(locked):
    prefix, d = locked
    perf = ROOT / "docs" / "performance.json"
    env = dict(os.environ, HOME=str(d), OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    commands = {}
    for what, cli, args, _ in PERMISSION_CASES:
        argv = args.format(d=d, pid=os.getpid(), perf=perf).split()
        commands[what] = ([*prefix, str(SCRIPTS / cli), *argv], env, d)
    return _run_all(commands)


@pytest.mark.parametrize("case", PERMISSION_CASES, ids=[c[0] for c in PERMISSION_CASES])
def test_permission_errors_exit_2(case, locked, permission_runs):
    what, cli, _, pattern = case
    _, d = locked
    r = permission_runs[what]
    err = r.stderr.strip()
    assert r.returncode == 2, f"{what}: exit status {r.returncode}, stderr:\n{err}"
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith(f"{cli}: error: ") or last.startswith(f"{cli} "), last
    assert re.search(pattern, last, re.I), f"{what}: {last!r} does not match {pattern!r}"
    assert sorted(os.listdir(d / "readonly")) == []
    assert not any(Path("/tmp").glob(f"unused-{os.getpid()}*"))


# ------------------------------------------------------------------------------ a FIFO instead of a file
FIFO_CASES = [
    ("robuq-infer", "{fifo} --steps 2 -o {d}/a.png", r"not a regular file"),
    ("robuq-parity", "{fifo} {qat}", r"not a regular file"),
    ("robuq-export", "{fifo} -o {d}/a.rq", r"not a regular file"),
    ("robuq-train", "--init {fifo} --steps 1 --out {d}/r", r"not a regular file"),
    ("robuq-eval", "eval {fifo} --per-class 2", r"not a regular file"),
]


@pytest.fixture(scope="module")
def fifo_runs(tiny, tmp_path_factory):
    """A named pipe given as the model or checkpoint: opening it for reading would block until someone
    writes (the loader opens with O_NONBLOCK and refuses anything but a regular file). Each CLI runs as a
    process with a timeout, so a regression fails instead of hanging the suite."""
    d = tmp_path_factory.mktemp("fifo")
    fifo = d / "model.fifo"
    os.mkfifo(fifo)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    commands = {}
    for cli, args, _ in FIFO_CASES:
        out = d / cli
        out.mkdir()
        argv = args.format(fifo=fifo, qat=tiny("a2").ckpt, d=out).split()
        commands[cli] = ([str(SCRIPTS / cli), *argv], env, d)
    return d, _run_all(commands)


@pytest.mark.parametrize("case", FIFO_CASES, ids=[c[0] for c in FIFO_CASES])
def test_fifo_is_refused_without_waiting_for_a_writer(case, fifo_runs):
    cli, _, pattern = case
    d, runs = fifo_runs
    r = runs[cli]
    last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
    assert r.returncode == 2, r.stderr
    assert re.search(pattern, last), last
    assert list((d / cli).iterdir()) == []

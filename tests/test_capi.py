"""The Python-free build (docs/c-api.md): ``-DROBUQ_PYTHON=OFF`` configured, built and installed into a
temporary prefix once per session (about a minute on 2 cores), then the installed ``robuq.h`` /
``librobuq.so`` / CMake package / ``robuq-run`` checked against ``robuq.Engine``: the example program of
docs/c-api.md (compiled with the system C compiler, and through ``find_package(robuq)``), robuq-run's
``.npy`` and ``.png``, hostile arguments to every C function (tests/capi/hostile.c) and robuq-run's errors.
Skipped, with the reason, without cmake or a C compiler."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import robuq
from robuq.infer import make_grid

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "python" / "robuq" / "assets" / "digits-w158a2.rq"
DOC = ROOT / "docs" / "c-api.md"
HOSTILE = Path(__file__).resolve().parent / "capi" / "hostile.c"

# what the example program of docs/c-api.md samples
EXAMPLE_CLASSES, EXAMPLE_STEPS, EXAMPLE_CFG, EXAMPLE_SEED = [7, 3], 50, 4.0, 0


def _c_compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _run(cmd: list, timeout: float = 900, **kw) -> subprocess.CompletedProcess:
    # OpenMP's short spin, as `import robuq` sets it (docs/c-api.md, "Speed"): the example and hostile.c
    # sample, and libgomp's default spinning workers make that many times slower when the machine is busy
    kw.setdefault("env", dict(os.environ, GOMP_SPINCOUNT="1000"))
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    if r.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        )
    return r


def _example_source() -> str:
    blocks = re.findall(r"```c\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks, "docs/c-api.md has no ```c block"
    return blocks[0]


def _python_pixels(classes=EXAMPLE_CLASSES, steps=EXAMPLE_STEPS, cfg_scale=EXAMPLE_CFG, seed=EXAMPLE_SEED):
    return robuq.Engine(MODEL).sample(classes, steps=steps, cfg_scale=cfg_scale, seed=seed)


# ------------------------------------------------------------------------------------- no build needed
def test_versions_agree():
    """pyproject.toml, CMakeLists.txt's project() and robuq.h's ROBUQ_VERSION_* state one version."""
    py = re.search(r'(?m)^version = "([0-9.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    cm = re.search(r"project\(robuq VERSION ([0-9.]+)", (ROOT / "CMakeLists.txt").read_text()).group(1)
    h = (ROOT / "capi" / "robuq.h").read_text()
    hv = ".".join(
        re.search(rf"#define ROBUQ_VERSION_{k} (\d+)", h).group(1) for k in ("MAJOR", "MINOR", "PATCH")
    )
    assert py == cm == hv


def test_example_is_short():
    lines = [ln for ln in _example_source().splitlines() if ln.strip()]
    assert 10 <= len(lines) <= 30, len(lines)


# ----------------------------------------------------------------------------- the Python-free build
@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    cmake, cc = shutil.which("cmake"), _c_compiler()
    if cmake is None:
        pytest.skip("cmake not found: the Python-free build cannot be tested")
    if cc is None:
        pytest.skip("no C compiler (cc, gcc or clang) found: the C API cannot be tested")
    base = tmp_path_factory.mktemp("capi")
    build, prefix = base / "build", base / "prefix"
    flags = "-DROBUQ_PYTHON=OFF -DROBUQ_CUDA=OFF -DROBUQ_WERROR=ON -DCMAKE_BUILD_TYPE=Release".split()
    _run([cmake, "-S", ROOT, "-B", build, *flags])
    _run([cmake, "--build", build, "-j2"], timeout=1800)
    _run([cmake, "--install", build, "--prefix", prefix])
    libdirs = [d for d in prefix.iterdir() if d.name.startswith("lib") and (d / "librobuq.so").exists()]
    assert libdirs, f"no lib*/librobuq.so under {prefix}"
    run = prefix / "bin" / "robuq-run"
    png = ".png" in _run([run, "--version"]).stdout  # "formats: .png .npy" when built with libpng
    return SimpleNamespace(build=build, prefix=prefix, lib=libdirs[0], cc=cc, cmake=cmake, run=run, png=png)


def _compile(inst, source: Path, out: Path, *extra: str) -> Path:
    flags = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", f"-I{inst.prefix / 'include'}"]
    _run([inst.cc, *flags, source, f"-L{inst.lib}", "-lrobuq", f"-Wl,-rpath,{inst.lib}", *extra, "-o", out])
    return out


def test_install_layout(installed):
    p = installed.prefix
    assert (p / "include" / "robuq.h").is_file()
    assert (installed.lib / "cmake" / "robuq" / "robuqConfig.cmake").is_file()
    assert (installed.lib / "pkgconfig" / "robuq.pc").is_file()
    assert os.access(installed.run, os.X_OK)
    cache = (installed.build / "CMakeCache.txt").read_text()
    assert "pybind11_DIR" not in cache and "Python_EXECUTABLE" not in cache  # no Python looked for
    if shutil.which("nm"):
        syms = _run(["nm", "-D", "--defined-only", installed.lib / "librobuq.so"]).stdout.split("\n")
        names = [ln.split()[-1] for ln in syms if ln.strip()]
        assert "robuq_sample" in names and "robuq_open" in names
        assert all(n.startswith("robuq_") for n in names), [n for n in names if not n.startswith("robuq_")]


def test_example_program_matches_python(installed, tmp_path):
    src = tmp_path / "example.c"
    src.write_text(_example_source())
    exe = _compile(installed, src, tmp_path / "example")
    _run([exe, MODEL, tmp_path / "out.raw"])
    want = _python_pixels()
    got = np.fromfile(tmp_path / "out.raw", dtype=np.uint8).reshape(want.shape)
    np.testing.assert_array_equal(got, want)


def test_find_package(installed, tmp_path):
    """A CMake project finds the installed package and links robuq::robuq."""
    (tmp_path / "example.c").write_text(_example_source())
    (tmp_path / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.18)\nproject(example C)\nfind_package(robuq 0.1 REQUIRED)\n"
        "add_executable(example example.c)\ntarget_link_libraries(example PRIVATE robuq::robuq)\n"
    )
    build = tmp_path / "build"
    defs = [f"-DCMAKE_PREFIX_PATH={installed.prefix}", f"-DCMAKE_C_COMPILER={installed.cc}"]
    _run([installed.cmake, "-S", tmp_path, "-B", build, *defs, "-DCMAKE_BUILD_TYPE=Release"])
    _run([installed.cmake, "--build", build])
    _run([build / "example", MODEL, tmp_path / "out.raw"])
    want = _python_pixels()
    np.testing.assert_array_equal(np.fromfile(tmp_path / "out.raw", dtype=np.uint8).reshape(want.shape), want)


def test_pkg_config(installed, tmp_path):
    """lib/pkgconfig/robuq.pc (relocatable) gives the flags that build the example."""
    if shutil.which("pkg-config") is None:
        pytest.skip("pkg-config not found")
    env = dict(os.environ, PKG_CONFIG_PATH=str(installed.lib / "pkgconfig"))
    assert _run(["pkg-config", "--modversion", "robuq"], env=env).stdout.strip() == robuq.__version__
    flags = _run(["pkg-config", "--cflags", "--libs", "robuq"], env=env).stdout.split()
    src = tmp_path / "example.c"
    src.write_text(_example_source())
    _run([installed.cc, "-std=c99", src, *flags, f"-Wl,-rpath,{installed.lib}", "-o", tmp_path / "example"])
    _run([tmp_path / "example", MODEL, tmp_path / "out.raw"])
    want = _python_pixels()
    np.testing.assert_array_equal(np.fromfile(tmp_path / "out.raw", dtype=np.uint8).reshape(want.shape), want)


def test_robuq_run_npy_and_png(installed, tmp_path):
    args = "--class 7 --class 3 --steps 50 --cfg-scale 4 --seed 0 --no-progress".split()
    r = _run([installed.run, MODEL, *args, "-o", tmp_path / "out.npy"])
    assert "wrote" in r.stdout and r.stderr == ""
    want = _python_pixels()
    got = np.load(tmp_path / "out.npy")
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)
    if not installed.png:
        pytest.skip("this build found no libpng: robuq-run writes .npy only")
    from PIL import Image

    _run([installed.run, MODEL, *args, "-o", tmp_path / "out.png"])
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out.png")), make_grid(want)[..., 0])


def test_robuq_run_other_settings(installed, tmp_path):
    """Respacing, DDIM with eta, a comma list of classes and a seed beyond 2**63 reach the sampler."""
    out = tmp_path / "out.npy"
    seed = 2**64 - 5
    args = "--class 1,2,9 --steps ddim10 --sampler ddim --eta 0.5 --cfg-scale 2.5 --threads 1".split()
    _run([installed.run, MODEL, *args, "--seed", str(seed), "-o", out])
    want = robuq.Engine(MODEL).sample(
        [1, 2, 9], steps="ddim10", sampler="ddim", eta=0.5, cfg_scale=2.5, seed=seed
    )
    np.testing.assert_array_equal(np.load(out), want)


def test_c_api_hostile_arguments(installed, tmp_path):
    """Every failing call returns its status and a message naming the problem (never a crash); forward and
    the full-options sampler give Engine.forward's and Engine.sample's numbers."""
    exe = _compile(installed, HOSTILE, tmp_path / "hostile", "-pthread", "-lm")
    garbage = tmp_path / "garbage.rq"
    garbage.write_bytes(bytes(range(256)) * 4)
    missing = tmp_path / "missing.rq"
    r = _run([exe, MODEL, missing, garbage, tmp_path])
    rows = {}
    for line in r.stdout.splitlines():
        label, status, message = line.split("\t")
        rows[label] = (int(status), message)
    ARG, IO, FORMAT, STOPPED = 1, 2, 3, 5
    expect = {
        "open_null": (ARG, "robuq_open: path is NULL"),
        "open_empty": (ARG, "path is empty"),
        "open_missing": (IO, str(missing)),
        "open_garbage": (FORMAT, "invalid .rq file"),
        "open_threads": (ARG, "threads must be >= 0"),
        "shape_null_engine": (ARG, "engine is NULL"),
        "info_null": (ARG, "info is NULL"),
        "sample_null_engine": (ARG, "robuq_sample: engine is NULL"),
        "sample_null_classes": (ARG, "classes is NULL"),
        "sample_null_out": (ARG, "output buffer is NULL"),
        "sample_n0": (ARG, "n must be >= 1"),
        "sample_nneg": (ARG, "got -3"),
        "sample_class_high": (ARG, "class id 10 (classes[1]) is out of range 0..9"),
        "sample_class_neg": (ARG, "class id -1"),
        "sample_steps0": (ARG, "steps must be in 1..1000"),
        "sample_steps_neg": (ARG, "got -5"),
        "sample_steps_1001": (ARG, "got 1001"),
        "sample_cfg_nan": (ARG, "cfg_scale must be a finite number"),
        "sample_cfg_inf": (ARG, "cfg_scale must be a finite number"),
        "options_sampler": (ARG, "unknown sampler 7"),
        "options_cfg_mode": (ARG, "unknown cfg_mode 9"),
        "options_clip": (ARG, "clip_denoised must be"),
        "options_eta_neg": (ARG, "eta must be"),
        "options_eta_nan": (ARG, "eta must be"),
        "options_steps_null": (ARG, "steps is NULL"),
        "options_steps_empty": (ARG, "steps is empty"),
        "options_steps_abc": (ARG, "bad respacing 'abc'"),
        "options_steps_zero": (ARG, "keeps no steps"),
        "options_stopped": (STOPPED, "stopped by the progress callback"),
        "forward_null_x": (ARG, "x is NULL"),
        "forward_n0": (ARG, "n must be >= 1"),
        "forward_label": (ARG, "label 11 (y[1]) is out of range 0..10"),
        "to_uint8_null": (ARG, "x_nchw is NULL"),
        "shape": (0, ""),
        "forward": (0, ""),
        "x0": (0, ""),
    }
    for label, (status, fragment) in expect.items():
        assert label in rows, f"{label}: no line (the program stopped early?)\n{r.stdout}"
        got_status, message = rows[label]
        assert got_status == status and fragment in message, (label, rows[label])
    assert rows["shape_value"][1] == "16x16x1"
    assert rows["stopped_after"][1] == "2"
    assert rows["thread_local"][1].startswith("robuq_sample: n must be >= 1")  # not the other thread's error

    eng = robuq.Engine(MODEL)
    fwd = eng.forward(np.zeros((2, 1, 16, 16), np.float32), [0, 500], [7, 10])
    np.testing.assert_array_equal(np.fromfile(tmp_path / "forward.f32", np.float32), fwd.reshape(-1))
    x0 = eng.sample(
        [7, 3], steps="ddim25", sampler="ddim", eta=0.5, cfg_mode="all", seeds=[5, 6], output="latent"
    )
    np.testing.assert_array_equal(np.fromfile(tmp_path / "x0.f32", np.float32), x0.reshape(-1))


ERROR_CASES = {
    "missing model": (["{missing}"], "{missing}"),
    "directory model": (["{tmp}"], "is a directory"),
    "garbage model": (["{garbage}"], "invalid .rq file"),
    "no model": ([], "no MODEL.rq given"),
    "class out of range": (["{model}", "--class", "10"], "class id 10 is out of range 0..9"),
    "class not a number": (["{model}", "--class", "seven"], "--class 'seven' is not a class id"),
    "empty class entry": (["{model}", "--class", "7,"], "empty entry"),
    "zero steps": (["{model}", "--steps", "0"], "--steps 0: steps must be a positive number"),
    "negative steps": (["{model}", "--steps", "-4"], "--steps -4: steps must be a positive number"),
    "too many steps": (["{model}", "--steps", "1001"], "--steps 1001: cannot divide"),
    "bad respacing": (["{model}", "--steps", "ddimx"], "--steps ddimx: bad respacing"),
    "nan cfg": (["{model}", "--cfg-scale", "nan"], "--cfg-scale must be a finite number"),
    "negative seed": (["{model}", "--seed", "-1"], "--seed must be an integer"),
    "seed too large": (["{model}", "--seed", str(2**64)], "--seed must be an integer"),
    "negative eta": (["{model}", "--eta", "-1"], "--eta must be"),
    "negative threads": (["{model}", "--threads", "-1"], "--threads must be an integer in 0..4096"),
    "unknown sampler": (["{model}", "--sampler", "euler"], "--sampler must be ddpm or ddim"),
    "unknown option": (["{model}", "--bogus"], "unknown option --bogus"),
    "missing value": (["{model}", "-o", "{tmp}/out.npy", "--steps"], "option --steps needs a value"),
    "bad extension": (["{model}", "-o", "{tmp}/out.jpg"], "must end in .png"),
    "output is a directory": (["{model}", "-o", "{tmp}/sub.npy"], "is a directory"),
    "output directory missing": (["{model}", "-o", "{tmp}/nowhere/out.npy"], "does not exist"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_robuq_run_errors(installed, tmp_path, case):
    """One 'robuq-run: error: ...' line on stderr, exit 2, nothing written."""
    (tmp_path / "sub.npy").mkdir()
    garbage = tmp_path / "garbage.rq"
    garbage.write_bytes(b"\0" * 64)
    names = {"missing": tmp_path / "missing.rq", "tmp": tmp_path, "garbage": garbage, "model": MODEL}
    argv, fragment = ERROR_CASES[case]
    argv = [a.format(**names) for a in argv]
    if "-o" not in argv:
        argv += ["-o", str(tmp_path / "out.npy")]
    before = sorted(p.name for p in tmp_path.iterdir())
    r = subprocess.run([str(installed.run), *argv], capture_output=True, text=True, timeout=120)
    lines = r.stderr.splitlines()
    assert r.returncode == 2, (case, r.returncode, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("robuq-run: error: "), (case, r.stderr)
    assert fragment.format(**names) in lines[0], (case, lines[0])
    assert r.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temporary file left


def test_robuq_run_help(installed):
    r = _run([installed.run, "--help"])
    assert "--class" in r.stdout and "--cfg-scale" in r.stdout


def test_robuq_run_latent_and_no_null_class(installed, tiny, tmp_path):
    """A latent model's .npy holds the float32 latents (no PNG); a model without the null class samples
    without guidance by default and refuses --cfg-scale != 1."""
    lat = tiny("latent")
    out = tmp_path / "lat.npy"
    _run([installed.run, lat.rq, "--class", "4,1", "--steps", "4", "-o", out])
    want = robuq.Engine(lat.rq).sample([4, 1], steps=4, output="latent")
    got = np.load(out)
    assert got.dtype == np.float32 and got.shape == (2, 4, 8, 8)
    np.testing.assert_array_equal(got, want)
    r = subprocess.run(
        [str(installed.run), lat.rq, "-o", str(tmp_path / "lat.png")], capture_output=True, text=True
    )
    assert r.returncode == 2 and "is a latent model" in r.stderr and not (tmp_path / "lat.png").exists()

    nonull = tiny("nonull")
    _run([installed.run, nonull.rq, "--class", "3", "--steps", "4", "-o", out])
    np.testing.assert_array_equal(np.load(out), robuq.Engine(nonull.rq).sample([3], steps=4, cfg_scale=1))
    r = subprocess.run(
        [str(installed.run), nonull.rq, "--cfg-scale", "4", "-o", str(tmp_path / "x.npy")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "no null class" in r.stderr and not (tmp_path / "x.npy").exists()


def test_robuq_run_ctrl_c(installed, tmp_path):
    """SIGINT stops sampling after the current step: exit 130, no output file."""
    out = tmp_path / "out.npy"
    p = subprocess.Popen(
        [str(installed.run), MODEL, "--class", "1", "--steps", "1000", "--threads", "1", "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "interrupted" in err
    assert list(tmp_path.iterdir()) == []

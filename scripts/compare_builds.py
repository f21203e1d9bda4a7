"""Bit-identity check for refactors: the engine's outputs from two builds of robuq._C must be equal.

    python scripts/compare_builds.py dump BUILD_DIR OUT.npz [MORE.rq ...]  # BUILD_DIR: _C*.so (target _C)
    python scripts/compare_builds.py diff OLD.npz NEW.npz      # exit 1 unless every array is bit-identical

`dump` loads that extension in place of the installed one and records, on every kernel tier this CPU runs,
a float32 forward and an 8-step DDIM sample of each shipped model and the GELU kernel, and a forward of
each further .rq named (e.g. `robuq-export --random` DiT-XL/2 files: head dim 72, low-rank branches, 8-bit
attention, the shapes the shipped models lack). Build both
sides with the same flags (e.g. cmake -DCMAKE_BUILD_TYPE=Release -DROBUQ_CUDA=OFF, target _C) so only the
source differs.
"""

import glob
import importlib.util
import os
import sys

import numpy as np


def _load_extension(build_dir: str):
    so = glob.glob(os.path.join(build_dir, "_C*.so"))
    if not so:
        sys.exit(f"error: no _C*.so in {build_dir}")
    spec = importlib.util.spec_from_file_location("robuq._C", so[0])
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["robuq._C"] = mod
    spec.loader.exec_module(mod)
    return mod


def dump(build_dir: str, out_path: str, more: list[str]) -> None:
    C = _load_extension(build_dir)
    import robuq
    from robuq import Engine

    assets = os.path.join(os.path.dirname(robuq.__file__), "assets")
    out = {}
    for tier in ("reference", "generic", "avx2", "avx512"):
        if not C.tier_available(tier):
            continue
        C.set_tier(tier)
        for f in sorted(glob.glob(os.path.join(assets, "*.rq"))) + more:
            e = Engine(f, threads=2)
            name = f"{tier}/{os.path.basename(f)}"
            if f not in more:
                out[name + "/sample"] = np.asarray(e.sample([3, 7, 1], steps="ddim8", seed=1))
            mc = e.info["model_config"]
            size, ch = mc["input_size"], mc["in_channels"]
            x = np.random.default_rng(5).standard_normal((5, ch, size, size)).astype(np.float32)
            out[name + "/forward"] = e.forward(x, np.array([999, 500, 10, 0, 250]), np.array([0, 1, 2, 3, 4]))
        g = np.random.default_rng(6).standard_normal(8192).astype(np.float32) * 4
        out[f"{tier}/gelu"] = C.gelu_tanh(g, threads=2)
    np.savez(out_path, **out)
    print(f"{out_path}: {len(out)} arrays")


def diff(a_path: str, b_path: str) -> int:
    a, b = np.load(a_path), np.load(b_path)
    if sorted(a.files) != sorted(b.files):
        print(f"different contents: {sorted(set(a.files) ^ set(b.files))}")
        return 1
    bad = [k for k in a.files if a[k].dtype != b[k].dtype or not np.array_equal(a[k], b[k])]
    for k in bad:
        print(f"DIFFERS: {k}")
    print(f"{len(a.files) - len(bad)} of {len(a.files)} arrays bit-identical")
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "dump":
        dump(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif len(sys.argv) == 4 and sys.argv[1] == "diff":
        sys.exit(diff(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)

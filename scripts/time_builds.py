"""Speed A/B of two builds of robuq._C on this machine: Engine.profile's per-part times (linears,
hadamard_quantize, attention, elementwise, ...), the minimum over processes that alternate between the builds.

    python scripts/time_builds.py BUILD_A BUILD_B MODEL.rq [--threads 1] [--forwards 20] [--rounds 6]

(--tier T forces a kernel tier in both.) BUILD_A / BUILD_B: directories holding a _C*.so (cmake target _C;
build both with the same flags, as for scripts/compare_builds.py, which checks that the two give the same
bits). Each measurement is a fresh process that loads one build's extension, runs `forwards` profiled
forwards of batch 2 (one CFG step) and keeps each part's minimum; the builds then alternate `rounds` times,
so a noisy stretch of a shared machine hits both, and the report is the minimum over all rounds with B / A
per part. One-thread part times are the steadiest figures on these VMs (a 2-thread time also measures the
other tenant); judge a change by several rounds, and by repeating the whole command, not by one pair.
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _child(build: str, model: str, threads: int, forwards: int, tier: str | None) -> None:
    sys.path.insert(0, HERE)
    import numpy as np
    from compare_builds import _load_extension

    C = _load_extension(build)
    if tier:
        C.set_tier(tier)
    e = C.Engine(model, threads)
    mc = e.info()["model_config"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, mc["in_channels"], mc["input_size"], mc["input_size"])).astype(np.float32)
    t = np.array([500, 500], np.int64)
    y = np.array([1, mc["num_classes"]], np.int64)  # a class and the null label, as in a CFG step
    best: dict[str, float] = {}
    for _ in range(forwards):
        for k, v in e.profile(x, t, y).items():
            best[k] = min(best.get(k, float("inf")), v)
    print(json.dumps({"tier": C.active_tier(), "parts": best}))


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("build_a")
    ap.add_argument("build_b")
    ap.add_argument("model", help=".rq file (e.g. robuq-export --random DiT-S/2 --bits W1.58A2 -o s.rq)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--forwards", type=int, default=20, help="profiled forwards per process (default 20)")
    ap.add_argument("--rounds", type=int, default=6, help="alternations of the two builds (default 6)")
    ap.add_argument("--tier", help="force a kernel tier in both (default: the best this CPU runs)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:  # build_a is the one build to measure
        _child(a.build_a, a.model, a.threads, a.forwards, a.tier)
        return 0
    for path in (a.build_a, a.build_b, a.model):
        if not os.path.exists(path):
            print(f"error: {path} does not exist", file=sys.stderr)
            return 2
    best: dict[str, dict[str, float]] = {"A": {}, "B": {}}
    tiers = {}
    for r in range(a.rounds):
        for name, build in (("A", a.build_a), ("B", a.build_b)):
            cmd = [sys.executable, os.path.abspath(__file__), build, "-", a.model, "--child"]
            cmd += ["--threads", str(a.threads), "--forwards", str(a.forwards)]
            if a.tier:
                cmd += ["--tier", a.tier]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                print(f"error: build {name} ({build}) failed:\n{res.stderr}", file=sys.stderr)
                return 1
            got = json.loads(res.stdout.strip().splitlines()[-1])
            tiers[name] = got["tier"]
            for k, v in got["parts"].items():
                best[name][k] = min(best[name].get(k, float("inf")), v)
            print(f"round {r + 1} {name}: total {got['parts']['total']:.4f} s", file=sys.stderr)
    print(f"{a.model}, {a.threads} thread(s), min over {a.rounds} x {a.forwards} forwards per build")
    print(f"{'part':<20}{'A (s)':>10}{'B (s)':>10}{'B / A':>8}")
    for k in best["A"]:
        va, vb = best["A"][k], best["B"].get(k, float("nan"))
        ratio = vb / va if va > 0 else float("nan")
        print(f"{k:<20}{va:>10.4f}{vb:>10.4f}{ratio:>8.3f}")
    print(f"tiers: A {tiers['A']}, B {tiers['B']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""robuq-parity: does a ``.rq`` file compute what the PyTorch model of its checkpoint computes?

    robuq-parity MODEL.rq CKPT [--threads N] [--tier reference|generic|avx2] [--layer-tol 1e-4]
                 [--tol 1e-3] [--flip-tol 2e-2] [--no-ema] [--num-heads H] [--seed 0]

The checkpoint is read as ``robuq-export`` reads it (``robuq.checkpoint.load``: a
robuq-train checkpoint, QAT or full precision, with its EMA weights unless ``--no-ema``; or an official DiT
checkpoint / state dict, full precision) and rebuilt as the PyTorch model
``robuq.checkpoint.load_model`` gives (``quantize_model`` + the state dict). Both run on the same
seeded inputs: x = ``robuq.rng.gaussian(seed, 0, [4, C, S, S])``, timesteps 999, 600, 250, 0, classes 0,
1, num_classes - 1 and the null class (when the model has one).

Per linear layer (every one the engine has, quantized or not), the input the PyTorch layer sees in that
forward is captured with a forward hook and given to ``Engine.linear``; the engine's output is compared
with the PyTorch layer's. The ``.rq`` file stores the low-rank factors in float16, so the reference is the
PyTorch model with those factors rounded to float16 (``rel_err``, checked against ``--layer-tol``); the
error against the unrounded float32 factors is printed beside it (``vs fp32 lowrank``, for information).
Then the whole forward: ``rel_err`` against the rounded model, checked against ``--tol``. A quantized
forward is discontinuous: when float rounding (a different summation order) puts one activation on the
other side of a quantizer's rounding boundary, its code moves by one step and the change propagates.
Trained 2-4-bit models hit that often: at A4 a few hundred thousand quantized values per sample, each a
float32 rounding away from a boundary with probability ~1e-7 x 15 levels, give a flip in about every
other sample. PyTorch itself shows it: the same model in float64 differs from float32 by up to ~1e-2,
and which samples flip depends on the float32 path (MKL's AVX2 and AVX-512 kernels flip different ones).
So the forward passes when one of these holds:

1. it is within ``--tol`` of the float32 model;
2. it is no farther from the float64 model than ``--tol`` plus twice the PyTorch float32 model's own
   distance from it (the "reference noise", measured in the same run);
3. the model is quantized and the forward is within ``--flip-tol`` (default 2e-2) of both the float32
   and the float64 model: the size of a few boundary flips (one A4 flip moved a digits-model sample by
   7.5e-3, 5.6e-3 over the batch), while a wrong graph, scale or weight is off by 1e-1 and more.

The layer check on identical inputs stays strict (``--layer-tol``): it is what catches arithmetic bugs.
The printout says which criterion passed.

rel_err(a, ref) = ||a - ref|| / ||ref|| (Frobenius norm over the whole batch).

Exit status: 0 all within tolerance, 1 some layer or the forward above it (or the file's model / quant
config differs from the checkpoint's), 2 bad input (missing or invalid files, an unavailable tier).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

__all__ = ["LayerResult", "ParityReport", "check_parity", "main"]

TIMESTEPS = (999, 600, 250, 0)
#: default --flip-tol: the whole-forward limit for quantized models within which a difference is taken as
#: quantizer boundary flips (module docstring, criterion 3)
FLIP_TOL = 2e-2


class ParityUsageError(Exception):
    """A bad input: one line on stderr, exit status 2."""


@dataclass
class LayerResult:
    name: str
    kind: str  # "float", "ternary A2 r4", ...
    rel_err: float  # against the PyTorch layer with float16-rounded low-rank factors
    rel_err_fp32: float | None  # against the unrounded factors (None: no low-rank branch)


@dataclass
class ParityReport:
    layers: list[LayerResult]
    missing: list[str]  # engine layers the PyTorch forward never reached
    forward_rel_err: float
    forward_rel_err_fp32: float
    config_mismatch: list[str]
    # rel_err(PyTorch float32, the same model in float64) and rel_err(engine, float64 model)
    reference_noise: float = 0.0
    forward_rel_err_64: float = float("nan")
    quantized: bool = False  # the file has quantized layers (criterion 3 applies)

    def forward_criterion(self, tol: float, flip_tol: float = FLIP_TOL) -> str | None:
        """Which criterion of the module docstring the forward meets ("tol", "noise", "flips"), or None."""
        if self.forward_rel_err <= tol:
            return "tol"
        if self.forward_rel_err_64 <= tol + 2.0 * self.reference_noise:
            return "noise"
        if self.quantized and self.forward_rel_err <= flip_tol and self.forward_rel_err_64 <= flip_tol:
            return "flips"
        return None

    def forward_ok(self, tol: float, flip_tol: float = FLIP_TOL) -> bool:
        return self.forward_criterion(tol, flip_tol) is not None

    def failures(self, layer_tol: float, tol: float, flip_tol: float = FLIP_TOL) -> list[str]:
        out = list(self.config_mismatch)
        out += [f"layer {name} was not run by the PyTorch model" for name in self.missing]
        out += [
            f"{r.name}: {r.rel_err:.3g} > {layer_tol:g}"
            for r in self.layers
            if not r.rel_err <= layer_tol  # NaN fails too
        ]
        if not self.forward_ok(tol, flip_tol):
            flips = f"; above the flip tolerance {flip_tol:g}" if self.quantized else ""
            out.append(
                f"forward: {self.forward_rel_err:.3g} > {tol:g} (vs float64 model "
                f"{self.forward_rel_err_64:.3g} > {tol:g} + 2 x reference noise {self.reference_noise:.3g}"
                f"{flips})"
            )
        return out


def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
    """||a - ref|| / ||ref|| in float64 (||a - ref|| when ref is zero)."""
    a64, r64 = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    num = float(np.linalg.norm(a64 - r64))
    den = float(np.linalg.norm(r64))
    return num / den if den > 0 else num


def _layer_kind(info: dict, name: str) -> str:
    q = info["layers"].get(name)
    if q is None:
        return "float"
    act = f"A{q['act_bits']}" if q["act_bits"] else "A32"
    rank = f" r{q['rank']}" if q["rank"] else ""
    return f"{q['weight']} {act}{rank}"


def _compare_configs(info: dict, config, quant) -> list[str]:
    """Differences between the .rq file's model / quant config and the checkpoint's."""
    out = []
    file_cfg = dict(info["model_config"])
    file_cfg.pop("space", None)
    for key, want in config.to_dict().items():
        got = file_cfg.get(key)
        close = isinstance(got, float) and isinstance(want, float) and abs(got - want) < 1e-12
        if got != want and not close:
            out.append(f"model_config.{key}: {got!r} in the .rq file, {want!r} in the checkpoint")
    file_layers = info["layers"]
    ck_layers = {} if quant is None else quant.layers
    for name in sorted(set(file_layers) | set(ck_layers)):
        f, c = file_layers.get(name), ck_layers.get(name)
        if f is None or c is None:
            where = "the checkpoint" if f is None else "the .rq file"
            out.append(f"layer {name} is quantized only in {where}")
            continue
        for key in ("weight", "act_bits", "rank", "hadamard"):
            cv = getattr(c, key)
            if f[key] != cv:
                out.append(f"layer {name}: {key} {f[key]!r} in the .rq file, {cv!r} in the checkpoint")
    want_att = None if quant is None else quant.attention_bits
    if info["attention_bits"] != want_att:
        out.append(
            f"attention_bits: {info['attention_bits']!r} in the .rq file, {want_att!r} in the checkpoint"
        )
    return out


def parity_inputs(info: dict, seed: int = 0):
    """The shared inputs: x float32 [4, C, S, S] from robuq.rng, t int64 [4], y int64 [4]."""
    from . import rng

    cfg = info["model_config"]
    k = cfg["num_classes"]
    n = len(TIMESTEPS)
    x = rng.gaussian(seed, 0, (n, cfg["in_channels"], cfg["input_size"], cfg["input_size"]))
    null = k if info["label_rows"] > k else k // 2
    y = np.array([0, min(1, k - 1), k - 1, null], dtype=np.int64)
    return x, np.array(TIMESTEPS, dtype=np.int64), y


def check_parity(engine, model, seed: int = 0) -> ParityReport:
    """Compare ``engine`` (robuq.Engine) with ``model`` (a robuq.models.DiT, QAT or float, eval mode)."""
    import torch

    from .quant.qlinear import QLinear

    info = engine.info
    x, t, y = parity_inputs(info, seed)
    rounded = copy.deepcopy(model).eval()
    with torch.no_grad():
        for pname, p in rounded.named_parameters():
            if ".lowrank_" in pname:
                p.copy_(p.half().float())
    modules32 = dict(model.named_modules())
    results: dict[str, LayerResult] = {}
    hooks = []

    def hook_for(name: str):
        def hook(module, inputs, output):
            inp = inputs[0]
            a = inp.detach().reshape(-1, inp.shape[-1]).float().contiguous().numpy()
            ref = output.detach().reshape(-1, output.shape[-1]).float().numpy()
            got = engine.linear(name, a)
            err32 = None
            mod32 = modules32.get(name)
            if isinstance(module, QLinear) and module.lowrank_down is not None and mod32 is not None:
                ref32 = mod32(inp).detach().reshape(ref.shape).float().numpy()
                err32 = rel_err(got, ref32)
            results[name] = LayerResult(name, _layer_kind(info, name), rel_err(got, ref), err32)

        return hook

    named = dict(rounded.named_modules())
    for name in info["linears"]:
        if name in named:
            hooks.append(named[name].register_forward_hook(hook_for(name)))
    try:
        with torch.no_grad():
            xt, tt, yt = torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y)
            ref16 = rounded(xt, tt, yt).numpy()
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        ref32 = model(xt, tt, yt).numpy()
        # The same (fp16-rounded) model in float64: how far float rounding alone moves the reference
        # (quantizers are discontinuous: a value on a rounding boundary flips a code and the change
        # propagates; trained 2-4-bit models hit such boundaries in a few samples per batch).
        ref64 = copy.deepcopy(rounded).double()(xt.double(), tt, yt).numpy()
    got = engine.forward(x, t, y)
    if not np.isfinite(got).all():  # a model whose values overflow float32: no parity figure means anything
        flat = got.reshape(-1)
        bad = int(np.flatnonzero(~np.isfinite(flat))[0])
        kind = "nan" if np.isnan(flat[bad]) else "inf"
        raise ParityUsageError(
            f"the engine's forward is not finite ({kind} at flat index {bad} of {got.size}): the model's "
            "values overflow float32"
        )
    layers = [results[n] for n in info["linears"] if n in results]
    missing = [n for n in info["linears"] if n not in results]
    return ParityReport(
        layers,
        missing,
        rel_err(got, ref16),
        rel_err(got, ref32),
        [],
        rel_err(ref16, ref64),
        rel_err(got, ref64),
        quantized=bool(info["layers"]),
    )


# ------------------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="robuq-parity",
        description="Compare a .rq file run by the C++ engine with the PyTorch model of its checkpoint, "
        "layer by layer and for the whole forward; exit 1 above the tolerances.",
    )
    p.add_argument("model", help="the .rq file")
    p.add_argument(
        "checkpoint", help="the checkpoint it was exported from (robuq-train, QAT or full precision)"
    )
    p.add_argument("--threads", type=int, default=None, help="engine threads (default: all cores)")
    p.add_argument(
        "--tier", choices=("reference", "generic", "avx2", "avx512", "amx"), help="force a kernel tier"
    )
    p.add_argument("--layer-tol", type=float, default=1e-4, help="per-layer relative error limit (1e-4)")
    p.add_argument("--tol", type=float, default=1e-3, help="whole-forward relative error limit (1e-3)")
    p.add_argument(
        "--flip-tol",
        type=float,
        default=FLIP_TOL,
        help=f"quantized models: whole-forward limit taken as quantizer boundary flips ({FLIP_TOL:g})",
    )
    p.add_argument("--no-ema", dest="ema", action="store_false", help="the raw 'model' weights, not 'ema'")
    p.add_argument("--num-heads", type=int, help="attention heads (official checkpoints)")
    p.add_argument("--seed", type=int, default=0, help="seed of the input noise (default 0)")
    return p


def _is_diffusers(path: str) -> bool:
    from .diffusers_layout import is_diffusers_path

    return is_diffusers_path(path)


def _load(args):
    from . import _C
    from .engine import Engine, FormatError

    for what, path in (("model", args.model), ("checkpoint", args.checkpoint)):
        if not os.path.exists(path):
            raise ParityUsageError(f"{what} file {path} not found")
        if os.path.isdir(path) and not (what == "checkpoint" and _is_diffusers(path)):
            raise ParityUsageError(f"{what} path {path} is a directory")
    if args.threads is not None and args.threads < 1:
        raise ParityUsageError(f"--threads must be >= 1, got {args.threads}")
    if args.seed < 0:
        raise ParityUsageError(f"--seed must be >= 0, got {args.seed}")
    if not (args.layer_tol >= 0 and args.tol >= 0):
        raise ParityUsageError("--layer-tol and --tol must be >= 0")
    if args.tier is not None:
        if not _C.tier_available(args.tier):
            raise ParityUsageError(f"kernel tier {args.tier!r} is not available on this CPU / build")
        _C.set_tier(args.tier)
    try:
        engine = Engine(args.model, threads=args.threads)
    except FormatError as e:
        raise ParityUsageError(f"{args.model} is not a valid .rq model: {e}") from None
    except OSError as e:
        raise ParityUsageError(f"cannot read {args.model}: {e.strerror or e}") from None

    import torch

    from .checkpoint import CheckpointError, load
    from .models import DiT
    from .quant import quantize_model

    try:
        ck = load(args.checkpoint, ema=args.ema, num_heads=args.num_heads)
    except CheckpointError as e:
        raise ParityUsageError(str(e)) from None
    # The wrong kind of checkpoint (full precision for a quantized file, or the reverse) is a bad input,
    # not a parity failure.
    rq_quantized = len(engine.info["layers"])
    if ck.quant is None and rq_quantized:
        raise ParityUsageError(
            f"{args.checkpoint} is a full-precision checkpoint but {args.model} has {rq_quantized} quantized "
            "layers: give the QAT checkpoint it was exported from"
        )
    if ck.quant is not None and ck.quant.layers and not rq_quantized:
        raise ParityUsageError(
            f"{args.checkpoint} is a quantized (QAT) checkpoint but {args.model} is a full-precision model: "
            "give the checkpoint it was exported from"
        )
    model = DiT(ck.config)
    if ck.quant is not None:
        quantize_model(model, ck.quant, init_lowrank=False)
    with torch.no_grad():
        model.load_state_dict({k: v.float() for k, v in ck.state.items()}, strict=True)
    return engine, model.eval(), ck


def main(argv: list[str] | None = None) -> int:
    """Entry point of robuq-parity; returns the exit status (0 pass, 1 fail, 2 bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    t0 = time.perf_counter()
    if args.threads is not None and args.threads < 1:
        print(f"robuq-parity: error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    try:
        import torch

        from . import _C

        threads_before, tier_before = torch.get_num_threads(), _C.active_tier()
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        try:
            engine, model, ck = _load(args)
            mismatch = _compare_configs(engine.info, ck.config, ck.quant)
            if any(m.startswith("model_config.") for m in mismatch):
                report = ParityReport([], [], float("nan"), float("nan"), mismatch)
            else:
                report = check_parity(engine, model, seed=args.seed)
                report.config_mismatch = mismatch
            tier = _C.active_tier()
        finally:
            torch.set_num_threads(threads_before)
            _C.set_tier(tier_before)
    except ParityUsageError as e:
        print(f"robuq-parity: error: {e}", file=sys.stderr)
        return 2

    info = engine.info
    x, t, y = parity_inputs(info, args.seed)
    print(f"robuq-parity: {args.model} vs {args.checkpoint} ({ck.source})")
    print(
        f"engine: tier {tier}, threads {engine.threads}; inputs: x = robuq.rng.gaussian({args.seed}, 0, "
        f"{list(x.shape)}), t = {t.tolist()}, y = {y.tolist()}"
    )
    for m in report.config_mismatch:
        print(f"config mismatch: {m}")
    width = max([len(r.name) for r in report.layers] + [len("forward")])
    if report.layers:
        print(f"{'layer':<{width}}  {'kind':<16} {'rel_err':>9}  {'vs fp32 lowrank':>15}")
    for r in report.layers:
        flag = "" if r.rel_err <= args.layer_tol else "  FAIL"
        fp32 = "" if r.rel_err_fp32 is None else f"{r.rel_err_fp32:.2e}"
        print(f"{r.name:<{width}}  {r.kind:<16} {r.rel_err:9.2e}  {fp32:>15}{flag}")
    for name in report.missing:
        print(f"{name:<{width}}  not run by the PyTorch model  FAIL")
    criterion = report.forward_criterion(args.tol, args.flip_tol)
    flag = "" if criterion else "  FAIL"
    print(
        f"{'forward':<{width}}  {'whole model':<16} {report.forward_rel_err:9.2e}  "
        f"{report.forward_rel_err_fp32:15.2e}{flag}"
    )
    print(
        f"{'':<{width}}  vs float64 model {report.forward_rel_err_64:9.2e}; PyTorch float32 vs float64 "
        f"(reference noise) {report.reference_noise:.2e}"
    )
    failures = report.failures(args.layer_tol, args.tol, args.flip_tol)
    seconds = time.perf_counter() - t0
    if failures:
        shown = "; ".join(failures[:5]) + (f" (and {len(failures) - 5} more)" if len(failures) > 5 else "")
        print(f"FAIL: {shown} [{seconds:.1f} s]")
        return 1
    worst = max(report.layers, key=lambda r: r.rel_err, default=None)
    worst_text = f", worst {worst.name} {worst.rel_err:.2e}" if worst else ""
    why = {
        "tol": f" <= {args.tol:g}",
        "noise": f" (quantizer boundary flips: vs float64 model {report.forward_rel_err_64:.2e} <= "
        f"{args.tol:g} + 2 x reference noise {report.reference_noise:.2e})",
        "flips": f" (quantizer boundary flips: vs float32 and float64 models <= flip tolerance "
        f"{args.flip_tol:g}; layers strict)",
    }[criterion]
    print(
        f"PASS: {len(report.layers)} layers <= {args.layer_tol:g}{worst_text}; forward "
        f"{report.forward_rel_err:.2e}{why} [{seconds:.1f} s]"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

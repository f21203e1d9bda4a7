"""robuq-infer: class-conditional samples from a ``.rq`` model with the C++ engine (no torch needed).

    robuq-infer [MODEL.rq | --ckpt CKPT.pt] --class 7 [--class 3 ...] [--steps 250] [--cfg-scale 4.0]
                [--seed 0 | --seeds S1,S2,... | --noise X_T.npy] [--sampler ddpm|ddim] [--eta 0.0]
                [--threads N] [--zoom Z] [--nrow K] [--vae FOLDER] [--list-classes] [--no-progress]
                [-o out.png]

Without MODEL it runs the default shipped model, ``robuq/assets/digits-w158a2.rq`` (the W1.58A2 digits
DiT, package data). Output, by the extension of ``-o`` (default ``samples.png`` in the current directory):

* ``.png``: the samples as one image grid (at most 10 per row, 2-pixel grey gaps), small images upscaled
  by nearest neighbour (``--zoom``; default ``max(1, 128 // side)``: 16x16 digits x8) so they are visible;
* ``.npy``: the raw uint8 array [n, H, W, C].

``--ckpt CKPT`` (the name DiT's sample.py uses) samples a PyTorch checkpoint (a QAT or full-precision
robuq checkpoint, an official DiT ``.pt``, or a diffusers folder) instead: it is exported to a temporary
``.rq`` (robuq-export; needs torch) and sampled by the same engine. ``--noise FILE.npy`` gives the starting
noise x_T itself (float32 [n, C, H, W], one row per sample, e.g. DiT's ``z``) instead of drawing it from
the seed; the noise DDPM adds at each step still comes from ``--seed`` / ``--seeds``.

Classes are ids or, for ImageNet (1000-class) models, names: ``--class 207``, ``--class "golden
retriever"``, ``--class n02099601`` (its WordNet id) and any synonym of the ILSVRC table that only one class
has (``"white shark"``, ``"red panda"``, as diffusers' ``DiTPipeline.get_label_ids``) name a class
(robuq.labels: the tables shipped in the package, matched case-insensitively). ``--list-classes`` prints
id, name, WordNet id and synonyms.

Latent models (``space: latent``, DiT on SD-VAE latents) sample latents float32 [n, 4, h, w] (scaled by
0.18215). With ``--vae FOLDER`` (a local diffusers AutoencoderKL, e.g. a copy of stabilityai/sd-vae-ft-ema;
nothing is downloaded) they are decoded (``z / 0.18215``) and written like pixel samples (PNG grid or uint8
.npy). Without a VAE, robuq-infer writes the raw latents to ``OUT.npy`` and a fast preview grid to
``OUT.png`` (a linear latent-to-RGB map at 1/8 resolution, upscaled; robuq.latent says where its
coefficients come from).

Bad inputs (a missing, unreadable or invalid model file, a directory, a class id out of range or not a
number, zero or negative steps, a DDIM eta beyond the schedule's real variance, a --zoom that would make a
PNG side over 16384 pixels, an output path that cannot be written) and samples that stop being finite (a
model whose values overflow float32) print one line ``robuq-infer: error: ...`` on stderr and exit with 2;
Ctrl-C exits with 130. No partial output file is ever left: the output is written to a temporary file in
the target directory, fsynced, and renamed into place. More than 256 classes (or more than the engine's
memory budget holds in one call) are sampled in batches, batch i with seed + i.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .cli import write_atomic

__all__ = ["DEFAULT_MODEL", "default_model_path", "make_grid", "main"]

#: file name of the default model among the package data (robuq/assets/)
DEFAULT_MODEL = "digits-w158a2.rq"
GRID_COLUMNS = 10
GRID_GAP = 2
GRID_GAP_VALUE = 128
OUTPUT_EXTENSIONS = (".png", ".npy")
#: the largest PNG grid side robuq-infer writes (pixels): --zoom beyond it is refused before sampling
MAX_GRID_SIDE = 16384
#: samples per engine call when more classes are given: larger requests are sampled in batches
#: (batch i with seed + i), so memory stays bounded whatever the number of classes
MAX_BATCH = 256


class InferError(Exception):
    """A bad input: one line on stderr, exit status 2."""


def default_model_path() -> Path:
    """Where the default model lives: ``assets/digits-w158a2.rq`` beside this module (package data)."""
    return Path(__file__).resolve().parent / "assets" / DEFAULT_MODEL


def make_grid(
    images: np.ndarray,
    columns: int | None = None,
    zoom: int | None = None,
    gap: int = GRID_GAP,
    gap_value: int = GRID_GAP_VALUE,
) -> np.ndarray:
    """Tile images uint8 [n, H, W, C] into one uint8 image [rows * H * z + (rows - 1) * gap,
    cols * W * z + (cols - 1) * gap, C]: ``cols = min(n, columns or 10)`` per row in order, each image
    upscaled ``z`` times by nearest neighbour (default ``max(1, 128 // max(H, W))``), gaps and empty cells
    filled with ``gap_value``."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be uint8 [n, H, W, C] with n >= 1, got {images.dtype} {images.shape}")
    n, h, w, c = images.shape
    z = zoom if zoom is not None else max(1, 128 // max(h, w))
    if z < 1:
        raise ValueError(f"zoom must be >= 1, got {z}")
    cols = min(n, columns or GRID_COLUMNS)
    rows = -(-n // cols)
    th, tw = h * z, w * z
    grid = np.full((rows * th + (rows - 1) * gap, cols * tw + (cols - 1) * gap, c), gap_value, np.uint8)
    big = images.repeat(z, axis=1).repeat(z, axis=2)
    for i in range(n):
        r, k = divmod(i, cols)
        y, x = r * (th + gap), k * (tw + gap)
        grid[y : y + th, x : x + tw] = big[i]
    return grid


# -------------------------------------------------------------------------------------------- helpers
def _write_atomic(path: str, write: Callable[[BinaryIO], None]) -> None:
    """robuq.cli.write_atomic (temporary file, fsync, rename; nothing left on failure or Ctrl-C), an OS
    refusal raised as InferError."""
    try:
        write_atomic(path, write)
    except OSError as e:
        raise InferError(f"cannot write {path}: {e.strerror or e}") from None


def _check_output(path: str) -> None:
    """Refuse, before any work, an output that cannot be written."""
    if not path:
        raise InferError("the output path is empty")
    ext = os.path.splitext(path)[1].lower()
    if ext not in OUTPUT_EXTENSIONS:
        raise InferError(
            f"output {path} must end in .png (an image grid) or .npy (the array), "
            f"not {ext or 'no extension'!r}"
        )
    if os.path.isdir(path):
        raise InferError(f"output {path} is a directory")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        what = "is not a directory" if os.path.exists(directory) else "does not exist"
        raise InferError(f"cannot write {path}: {directory} {what}")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise InferError(f"cannot write {path}: directory {directory} is not writable")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise InferError(f"cannot write {path}: the existing file is not writable")


def _parse_classes(values: Sequence[str] | None) -> list[str] | None:
    """The --class tokens (ids or names), comma lists split; resolved once the model is known."""
    if not values:
        return None
    out = []
    for value in values:
        for tok in value.split(","):
            tok = tok.strip()
            if not tok:
                raise InferError(f"--class {value!r} has an empty entry")
            out.append(tok)
    return out


def _resolve_classes(tokens: list[str], num_classes: int) -> list[int]:
    from .labels import LabelError, resolve_class

    try:
        return [resolve_class(tok, num_classes) for tok in tokens]
    except LabelError as e:
        raise InferError(str(e)) from None


def _parse_seeds(text: str | None) -> list[int] | None:
    """--seeds "1,2,3" -> [1, 2, 3] (each in 0..2**64-1)."""
    if text is None:
        return None
    out = []
    for tok in text.split(","):
        try:
            v = int(tok.strip())
        except ValueError:
            raise InferError(f"--seeds {text!r}: {tok.strip()!r} is not an integer") from None
        if not 0 <= v < 2**64:
            raise InferError(f"--seeds {text!r}: {v} is outside 0..2**64-1")
        out.append(v)
    return out


def _list_classes(args: argparse.Namespace) -> str:
    """The lines of --list-classes: 'id<TAB>name<TAB>WordNet id<TAB>synonyms' (ImageNet models) or the id
    range."""
    from .labels import class_name, imagenet_synsets

    eng = _load_engine(_model_path(args.model), args.threads, args.device)
    k = eng.num_classes
    if class_name(0, k) is None:
        return f"{k} classes: ids 0..{k - 1} (names are known only for ImageNet models)"
    syn = imagenet_synsets()
    return "\n".join(f"{c}\t{class_name(c, k)}\t{syn[c][0]}\t{', '.join(syn[c][1])}" for c in range(k))


def _model_path(arg: str | None) -> str:
    if arg is None:
        path = Path(default_model_path())
        if not path.is_file():
            raise InferError(
                f"no MODEL given and the default model {DEFAULT_MODEL} is missing from this installation "
                f"({path}); make it in a source checkout with `python -m robuq.ship export` (exports the "
                "shipped models from models/digits/), or export your own with `robuq-export CKPT -o "
                "model.rq` and pass it: robuq-infer model.rq --class 7"
            )
        return str(path)
    if not os.path.exists(arg):
        raise InferError(f"model file {arg} not found")
    if os.path.isdir(arg):
        raise InferError(f"{arg} is a directory, not a .rq model file")
    if not os.access(arg, os.R_OK):
        raise InferError(f"cannot read model file {arg}: permission denied")
    return arg


def _load_engine(path: str, threads: int | None, device: str = "cpu"):
    from .engine import Engine, FormatError

    try:
        return Engine(path, threads=threads, device=device)
    except RuntimeError as e:  # --device cuda without the CUDA backend or a GPU
        if device == "cpu":
            raise
        raise InferError(f"--device {device}: {e}") from None
    except FormatError as e:
        magic = b""
        if os.path.isfile(path):  # never open a FIFO or a device here: reading it could block
            with contextlib.suppress(OSError), open(path, "rb") as f:
                magic = f.read(4)
        if magic == b"PK\x03\x04" or magic[:1] == b"\x80":
            raise InferError(
                f"{path} looks like a PyTorch checkpoint, not a .rq model: export it first with "
                f"robuq-export {path} -o model.rq, or sample it directly with --ckpt {path} ({e})"
            ) from None
        raise InferError(f"{path} is not a valid .rq model: {e}") from None
    except OSError as e:
        raise InferError(f"cannot read model file {path}: {e.strerror or e}") from None


# ------------------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="robuq-infer",
        description="Sample class-conditional images from a .rq model with the C++ engine and write a PNG "
        "grid (or the uint8 array as .npy).",
    )
    p.add_argument("model", nargs="?", help=f"the .rq model (default: the shipped {DEFAULT_MODEL})")
    p.add_argument(
        "--ckpt",
        metavar="CKPT",
        default=None,
        help="sample a PyTorch checkpoint (robuq QAT/FP .pt, official DiT .pt or a diffusers folder) instead "
        "of a .rq: exported to a temporary .rq first (needs torch), as in DiT's sample.py",
    )
    p.add_argument(
        "--class",
        dest="classes",
        action="append",
        metavar="ID",
        help="class of a sample: an id, or for ImageNet models a name ('golden retriever'); repeat (or give "
        "a comma list) for several (default: one sample of each of the first 10 classes)",
    )
    p.add_argument(
        "--steps",
        "--num-sampling-steps",
        dest="steps",
        default="250",
        help="sampling steps, or a respacing like ddim25 (default 250; --num-sampling-steps as in DiT)",
    )
    p.add_argument(
        "--cfg-scale",
        type=float,
        default=None,
        help="classifier-free guidance scale; 1 disables it (default 4.0; 1 for models without a null class)",
    )
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument(
        "--seeds",
        default=None,
        metavar="S1,S2,...",
        help="one seed per sample instead of --seed: sample j is what a single sample of its class with "
        "seed Sj gives, whatever the other samples",
    )
    p.add_argument(
        "--noise",
        metavar="X_T.npy",
        default=None,
        help="the starting noise itself: a .npy of float32 [n, C, H, W], one row per sample (instead of "
        "drawing it from the seed; the per-step noise still comes from --seed/--seeds)",
    )
    p.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddpm")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM noise scale (default 0: deterministic)")
    p.add_argument("--threads", type=int, default=None, help="engine threads (default or 0: all cores)")
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu (default) or cuda / cuda:N: run the CUDA engine on that GPU (docs/cuda.md)",
    )
    p.add_argument(
        "--zoom", type=int, default=None, help="PNG upscaling factor (default max(1, 128 // side))"
    )
    p.add_argument(
        "--vae",
        metavar="FOLDER",
        default=None,
        help="latent models: decode with the Stable-Diffusion VAE from this local diffusers folder (needs "
        "torch and diffusers); without it, write the latents (.npy) and a linear preview (.png)",
    )
    p.add_argument(
        "--nrow", type=int, default=None, help=f"PNG grid: images per row (default {GRID_COLUMNS})"
    )
    p.add_argument(
        "--list-classes",
        action="store_true",
        help="print the model's classes (id and, for ImageNet models, name) and exit",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("-o", "--output", default="samples.png", help="output .png or .npy (default samples.png)")
    return p


def _export_ckpt(ckpt: str, directory: str) -> str:
    """--ckpt: the checkpoint exported (EMA weights, full precision allowed) to DIRECTORY/model.rq."""
    if not os.path.exists(ckpt):
        raise InferError(f"--ckpt {ckpt}: not found")
    try:
        from .exporter.cli import main as export_main
    except ImportError as e:  # torch (or another export dependency) is not installed
        raise InferError(
            f"--ckpt needs torch to export the checkpoint ({e}); install it, or export on a machine with "
            f"torch (robuq-export {ckpt} -o model.rq) and pass the .rq"
        ) from None
    rq = os.path.join(directory, "model.rq")
    if export_main([ckpt, "-o", rq, "-q", "--allow-fp"]) != 0:
        raise InferError(f"--ckpt {ckpt}: exporting it to .rq failed (see the robuq-export error above)")
    return rq


def _load_noise(path: str, n: int, c: int, s: int) -> np.ndarray:
    """--noise: a .npy of finite floats [n, C, S, S], as float32."""
    if not os.path.isfile(path):
        raise InferError(f"--noise {path}: {'not a file' if os.path.exists(path) else 'not found'}")
    try:
        z = np.load(path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError, EOFError) as e:
        raise InferError(f"--noise {path}: not a readable .npy array ({e})") from None
    want = [n, c, s, s]
    if list(z.shape) != want:
        raise InferError(
            f"--noise {path}: shape {list(z.shape)}, but {n} sample{'s' if n != 1 else ''} of this model "
            f"need {want} ([n, C, H, W], one row per --class)"
        )
    if not np.issubdtype(z.dtype, np.floating):
        raise InferError(f"--noise {path}: dtype {z.dtype}, expected float32")
    z = np.ascontiguousarray(z, dtype=np.float32)
    if not np.isfinite(z).all():
        raise InferError(f"--noise {path}: holds non-finite values")
    return z


def run(args: argparse.Namespace) -> str:
    """Sample and write what the parsed arguments ask for; returns the summary line."""
    if args.ckpt is None:
        return _run(args)
    if args.model is not None:
        raise InferError(f"give either MODEL ({args.model}) or --ckpt ({args.ckpt}), not both")
    with tempfile.TemporaryDirectory(prefix="robuq-infer-") as tmp:
        if not args.list_classes:
            _check_output(args.output)  # before the export, which can take a while
        args.model = _export_ckpt(args.ckpt, tmp)
        try:
            return _run(args).replace(args.model, args.ckpt)
        except InferError as e:
            raise InferError(str(e).replace(args.model, args.ckpt)) from None


def _run(args: argparse.Namespace) -> str:
    from .engine import steps_spec

    if args.list_classes:
        return _list_classes(args)
    out = args.output
    _check_output(out)
    try:
        spec = steps_spec(args.steps)
    except (TypeError, ValueError) as e:
        raise InferError(f"--steps {args.steps}: {e}") from None
    classes = _parse_classes(args.classes)
    if args.seed < 0 or args.seed >= 2**64:
        raise InferError(f"--seed must be in 0..2**64-1, got {args.seed}")
    if args.threads is not None and args.threads < 0:
        raise InferError(f"--threads must be >= 0 (0: all cores), got {args.threads}")
    if args.nrow is not None and not 1 <= args.nrow <= MAX_GRID_SIDE:
        raise InferError(f"--nrow must be in 1..{MAX_GRID_SIDE}, got {args.nrow}")
    seeds = _parse_seeds(args.seeds)
    if args.zoom is not None and not 1 <= args.zoom <= MAX_GRID_SIDE:
        raise InferError(f"--zoom must be in 1..{MAX_GRID_SIDE}, got {args.zoom}")
    if not (args.eta >= 0) or args.eta == float("inf"):
        raise InferError(f"--eta must be a finite number >= 0, got {args.eta}")
    if args.cfg_scale is not None and not np.isfinite(args.cfg_scale):
        raise InferError(f"--cfg-scale must be finite, got {args.cfg_scale}")
    path = _model_path(args.model)
    if args.device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", args.device):
        raise InferError(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    eng = _load_engine(path, args.threads, args.device)

    k = eng.num_classes
    classes = list(range(min(k, GRID_COLUMNS))) if classes is None else _resolve_classes(classes, k)
    if seeds is not None and len(seeds) != len(classes):
        raise InferError(f"--seeds gives {len(seeds)} seeds for {len(classes)} samples: give one per sample")
    mc = eng.info["model_config"]
    noise = (
        None
        if args.noise is None
        else _load_noise(args.noise, len(classes), mc["in_channels"], mc["input_size"])
    )
    cfg = args.cfg_scale
    if cfg is None:
        cfg = 4.0 if eng.has_null_class else 1.0
    elif cfg != 1 and not eng.has_null_class:
        raise InferError(
            f"--cfg-scale {cfg}: this model has no null class (trained without class dropout), so it "
            "cannot use classifier-free guidance; use --cfg-scale 1"
        )
    info = eng.info
    latent = info["model_config"]["space"] == "latent"
    channels = info["model_config"]["in_channels"]
    ext = os.path.splitext(out)[1].lower()
    vae = None
    if args.vae is not None:
        if not latent:
            raise InferError(f"--vae: {path} is a pixel-space model; the VAE decodes latent models only")
        from .latent import VaeError, load_vae

        try:
            vae = load_vae(args.vae)
        except VaeError as e:
            raise InferError(str(e)) from None
    elif latent:
        if channels != 4:
            raise InferError(f"this latent model has {channels} channels; a preview needs SD-VAE latents (4)")
        stem = os.path.splitext(out)[0]
        out, preview_out = stem + ".npy", stem + ".png"
        _check_output(out)
        _check_output(preview_out)
    if not latent and ext == ".png" and channels not in (1, 3):
        raise InferError(f"cannot make a PNG of {channels}-channel images; write .npy instead")
    if ext == ".png" or (latent and vae is None):  # the grid's size is known before sampling: check it now
        side = info["model_config"]["input_size"] * (8 if latent and vae is not None else 1)
        zoom = args.zoom or (8 if latent and vae is None else max(1, 128 // side))
        cols = min(len(classes), args.nrow or GRID_COLUMNS)
        rows = -(-len(classes) // cols)
        width = cols * side * zoom + (cols - 1) * GRID_GAP
        height = rows * side * zoom + (rows - 1) * GRID_GAP
        if max(width, height) > MAX_GRID_SIDE:
            raise InferError(
                f"the PNG grid would be {width}x{height} pixels ({len(classes)} samples of {side}x{side}, "
                f"--zoom {zoom}); the largest side written is {MAX_GRID_SIDE}: lower --zoom or give fewer "
                "classes (or write .npy)"
            )

    from .engine import NonFiniteError

    t0 = time.perf_counter()
    batch = max(1, min(MAX_BATCH, eng.batch_limit(guided=cfg != 1)))
    parts = []
    try:
        for i in range(0, len(classes), batch):  # one call unless the classes exceed a batch
            parts.append(
                eng.sample(
                    classes[i : i + batch],
                    steps=spec,
                    cfg_scale=cfg,
                    seed=(args.seed + i // batch) % 2**64,
                    seeds=None if seeds is None else seeds[i : i + batch],
                    noise=None if noise is None else noise[i : i + batch],
                    sampler=args.sampler,
                    eta=args.eta,
                    progress=args.progress,
                    output="latent" if latent else "image",
                )
            )
    except ValueError as e:  # settings the engine refuses (e.g. a respacing it cannot satisfy)
        raise InferError(str(e)) from None
    except NonFiniteError as e:
        raise InferError(f"{path}: {e}; nothing written") from None
    except MemoryError:
        raise InferError(
            f"out of memory sampling {len(classes)} samples of {path}; give fewer classes or lower "
            "ROBUQ_MAX_MEMORY so that the engine refuses such batches up front"
        ) from None
    x = parts[0] if len(parts) == 1 else np.concatenate(parts)
    del parts
    seconds = time.perf_counter() - t0

    from .labels import class_name

    n = len(classes)
    shown = [f"{c} {class_name(c, k)}" if class_name(c, k) else str(c) for c in classes]
    what = (
        f"{n} sample{'s' if n != 1 else ''} (class{'es' if n != 1 else ''} {', '.join(shown)}), "
        f"{args.sampler} {spec}{' steps' if spec.isdigit() else ''}, cfg {cfg:g}, "
        f"{'seeds ' + args.seeds if seeds is not None else f'seed {args.seed}'}"
        f"{f', noise {args.noise}' if noise is not None else ''} "
        f"[{seconds:.1f} s]"
    )
    if latent and vae is None:
        from PIL import Image

        from .latent import preview

        grid = make_grid(preview(x), columns=args.nrow, zoom=args.zoom or 8)
        _write_atomic(out, lambda f: np.save(f, x))
        _write_atomic(preview_out, lambda f: Image.fromarray(grid).save(f, format="PNG"))
        return (
            f"wrote {out}: latents float32 {list(x.shape)} (scaled by 0.18215) and {preview_out}: a linear "
            f"preview (no VAE; pass --vae FOLDER to decode), {what}"
        )
    if latent:
        from .latent import VaeError, decode

        t1 = time.perf_counter()
        try:
            x = decode(vae, x)
        except VaeError as e:
            raise InferError(str(e)) from None
        channels = 3
        what += f", decoded by the VAE [{time.perf_counter() - t1:.1f} s]"
    if ext == ".npy":
        _write_atomic(out, lambda f: np.save(f, x))
        return f"wrote {out}: uint8 {list(x.shape)} [n, H, W, C], {what}"
    from PIL import Image

    grid = make_grid(x, columns=args.nrow, zoom=args.zoom)
    img = Image.fromarray(grid[..., 0] if channels == 1 else grid)  # 2-D uint8: "L"; [h, w, 3]: "RGB"
    _write_atomic(out, lambda f: img.save(f, format="PNG"))
    return f"wrote {out}: {grid.shape[1]}x{grid.shape[0]} grid, {what}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of robuq-infer; returns the exit status (0 ok, 2 bad input, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, message already printed)
        return int(e.code or 0)
    try:
        summary = run(args)
    except InferError as e:
        print(f"robuq-infer: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("robuq-infer: interrupted; nothing written", file=sys.stderr)
        return 130
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

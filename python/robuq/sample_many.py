"""robuq-sample: N samples for FID evaluation, sharded over processes, resumable.

    robuq-sample MODEL.rq --num-samples 50000 --out samples/ [--steps 250] [--cfg-scale 1.5] [--seed 0]
                 [--classes random|balanced] [--batch-size 8] [--vae FOLDER] [--threads T]
    torchrun --nproc_per_node 4 --no-python robuq-sample MODEL.rq --num-samples 50000 --out samples/

Every process runs the C++ engine (robuq.Engine) on its share of one global index range: sample i
(0 <= i < N) belongs to rank ``i % world``, has class ``classes[i]`` and seed ``seed_i``, and is written to
``OUT/images/{i:06d}.png``. Its pixels depend only on (model, settings, i), never on the number of
processes, the batch size or the thread count, because the engine draws each sample's noise from its own
stream (``Engine.sample(seeds=...)``) and computes it bit-identically in any batch.

* classes: ``random`` (default; uniform over the model's classes, as ADM and DiT sample for FID):
  ``numpy.random.Generator(PCG64(seed)).integers(0, num_classes, N)``; ``balanced``: ``i % num_classes``.
* seeds: ``seed_i = (seed * 2**32 + i) mod 2**64`` (the engine hashes seed and stream key, robuq.rng).
* resumable: a run writes ``OUT/run.json`` (model size and SHA-256, settings, N) first; a rerun with the
  same settings skips every PNG that exists (each is written to a temporary name and renamed, so one that
  exists is complete; files are fsynced before the rename, so a power loss cannot leave an empty PNG
  under the final name) and a rerun with other settings is refused. Ctrl-C or a killed process loses at
  most the batch in flight.
* at the end rank 0 packs all N images, in index order, into ``OUT/samples_{N}x{H}x{W}x3.npz`` with
  ``arr_0`` uint8 [N, H, W, 3], the input format of the ADM evaluation suite
  (openai/guided-diffusion, evaluations/evaluator.py); 1-channel models are repeated to 3 channels there.
  The file is streamed to disk one image at a time (memory does not grow with N), written to a temporary
  name, fsynced and renamed; so is every PNG.
* resuming checks what is already there: a PNG of the run's size and mode counts as done; anything else
  in its place (an empty or corrupt file, another size, a folder) is refused, naming it.
* latent models need ``--vae FOLDER`` (the SD VAE in diffusers layout, robuq.latent); FID is computed on
  images.
* several processes: ``torchrun`` sets RANK / WORLD_SIZE / LOCAL_WORLD_SIZE; the processes meet in
  torch.distributed (gloo) barriers only, nothing else is communicated. Default threads per process: the
  machine's cores / LOCAL_WORLD_SIZE.

Bad inputs exit with 2 and one ``robuq-sample: error: ...`` line, as robuq-infer.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cli import sha256_file
from .infer import InferError, _load_engine, _model_path, _write_atomic

__all__ = ["main", "sample_classes", "sample_seeds"]

CLASS_MODES = ("random", "balanced")
RUN_FILE = "run.json"
IMAGES = "images"


def sample_classes(mode: str, n: int, num_classes: int, seed: int) -> np.ndarray:
    """The class of every sample index 0..n-1 (int64 [n]); the same on every process."""
    if mode == "balanced":
        return np.arange(n, dtype=np.int64) % num_classes
    if mode == "random":
        return np.random.Generator(np.random.PCG64(seed)).integers(0, num_classes, n, dtype=np.int64)
    raise ValueError(f"unknown class mode {mode!r}; use one of {', '.join(CLASS_MODES)}")


def sample_seeds(seed: int, indices: np.ndarray) -> list[int]:
    """Per-sample noise seeds ``(seed * 2**32 + i) mod 2**64``."""
    return [(seed * 2**32 + int(i)) % 2**64 for i in indices]


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_world: int = 1
    dist: object = None

    def barrier(self) -> None:
        if self.dist is not None:
            self.dist.barrier()

    def close(self) -> None:
        if self.dist is not None:
            self.dist.destroy_process_group()


def _env_int(name: str, default: str) -> int:
    text = os.environ.get(name, default)
    try:
        v = int(text)
    except ValueError:
        msg = f"environment variable {name}={text!r} is not an integer (torchrun sets it)"
        raise InferError(msg) from None
    if v < 1:
        raise InferError(f"environment variable {name}={text!r} must be >= 1")
    return v


def _setup_dist() -> Dist:
    world = _env_int("WORLD_SIZE", "1")
    local_world = _env_int("LOCAL_WORLD_SIZE", str(world))
    if world <= 1:
        return Dist()
    try:
        import torch.distributed as dist
    except ImportError:
        raise InferError(
            "WORLD_SIZE > 1 (torchrun) needs torch for the process group; install a CPU torch (DEVELOPERS.md)"
        ) from None
    dist.init_process_group("gloo", timeout=datetime.timedelta(hours=6))
    return Dist(
        rank=dist.get_rank(),
        world=dist.get_world_size(),
        local_world=local_world,
        dist=dist,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="robuq-sample",
        description="Generate N class-conditional samples for FID evaluation (PNGs + an ADM-format .npz), "
        "sharded over torchrun processes and resumable.",
    )
    p.add_argument("model", help="the .rq model")
    p.add_argument("-n", "--num-samples", type=int, required=True, help="number of samples N")
    p.add_argument("--out", required=True, help="output folder (images/, run.json, the .npz)")
    p.add_argument("--steps", default="250", help="sampling steps or a respacing like ddim25 (default 250)")
    p.add_argument(
        "--cfg-scale", type=float, default=None, help="guidance scale (default 1.5 with a null class, else 1)"
    )
    p.add_argument("--seed", type=int, default=0, help="global seed (default 0)")
    p.add_argument("--classes", choices=CLASS_MODES, default="random", help="class of each index")
    p.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddpm")
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=8, help="samples per engine call (default 8)")
    p.add_argument("--threads", type=int, default=None, help="engine threads per process")
    p.add_argument("--vae", metavar="FOLDER", default=None, help="latent models: the SD VAE (diffusers)")
    p.add_argument("--no-npz", dest="npz", action="store_false", help="PNGs only, no .npz")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def _check_args(args: argparse.Namespace) -> None:
    from .engine import steps_spec

    if args.num_samples < 1:
        raise InferError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.num_samples > 10**7:
        raise InferError(f"--num-samples {args.num_samples} is more than 10 million; split the run")
    if args.batch_size < 1:
        raise InferError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        raise InferError(f"--threads must be >= 1, got {args.threads}")
    if not 0 <= args.seed < 2**32:
        raise InferError(f"--seed must be in 0..2**32-1, got {args.seed}")
    if not (np.isfinite(args.eta) and args.eta >= 0):
        raise InferError(f"--eta must be a finite number >= 0, got {args.eta}")
    if args.cfg_scale is not None and not np.isfinite(args.cfg_scale):
        raise InferError(f"--cfg-scale must be finite, got {args.cfg_scale}")
    try:
        args.steps = steps_spec(args.steps)
    except (TypeError, ValueError) as e:
        raise InferError(f"--steps {args.steps}: {e}") from None
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InferError(f"--out {out} exists and is not a folder")


def _prepare_out(args, settings: dict, d: Dist) -> Path:
    """Create OUT/images and run.json (rank 0), or check that an existing run has the same settings."""
    out = Path(args.out)
    run_file = out / RUN_FILE
    error = ""
    if d.rank == 0:
        try:
            (out / IMAGES).mkdir(parents=True, exist_ok=True)
            if run_file.exists():
                try:
                    old = json.loads(run_file.read_text())
                except (OSError, ValueError) as e:
                    raise InferError(f"{run_file} is unreadable ({e}); remove it or use another --out") from e
                if not isinstance(old, dict):
                    raise InferError(
                        f"{run_file} holds a JSON {type(old).__name__}, not a run's settings; remove it or "
                        "use another --out"
                    )
                if old != settings:
                    diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
                    raise InferError(
                        f"{out} holds a run with other settings ({', '.join(diff)} differ): resume it with "
                        "the same arguments, or use another --out"
                    )
            else:
                _write_atomic(str(run_file), lambda f: f.write(json.dumps(settings, indent=1).encode()))
        except InferError as e:
            error = str(e)
        except OSError as e:
            error = f"cannot write to {out}: {e.strerror or e}"
    if d.dist is not None:  # every rank learns rank 0's verdict
        box = [error]
        d.dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error:
        raise InferError(error)
    return out


def _save_png(path: Path, img: np.ndarray) -> None:
    from PIL import Image

    pic = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
    _write_atomic(str(path), lambda f: pic.save(f, format="PNG"))


def _check_done(path: Path, side: int, channels: int) -> bool:
    """Whether sample `path` is finished: False when absent; True for a PNG of side x side pixels with the
    model's channels; InferError (naming it) for anything else in its place (a folder, an empty or corrupt
    file, another size), which a resumed run must not count as done nor overwrite silently."""
    if not os.path.lexists(path):
        return False
    why = ""
    if not path.is_file():
        why = "is not a regular file"
    elif path.stat().st_size == 0:
        why = "is empty (0 bytes)"
    else:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                size, mode, fmt = im.size, im.mode, im.format
        except (OSError, UnidentifiedImageError, ValueError) as e:
            size, mode, fmt = None, None, None
            why = f"is not a readable image ({type(e).__name__})"
        want = "L" if channels == 1 else "RGB"
        if not why and (fmt != "PNG" or size != (side, side) or mode != want):
            why = f"is a {fmt} {mode} {size[0]}x{size[1]} image, not a {want} PNG of {side}x{side}"
    if why:
        raise InferError(
            f"{path} {why}: not a sample of this run; remove it (it is regenerated) or use another --out"
        )
    return True


def _pack_npz(out: Path, n: int) -> tuple[Path, tuple[int, ...]]:
    """Streams the N PNGs, one at a time, into OUT/samples_NxHxWx3.npz (arr_0 uint8 [N, H, W, 3]; a zip
    holding arr_0.npy, as numpy.savez writes it), so memory stays one image whatever N."""
    import zipfile

    from PIL import Image

    with Image.open(out / IMAGES / f"{0:06d}.png") as im:
        w, h = im.size
    shape = (n, h, w, 3)
    path = out / f"samples_{n}x{h}x{w}x3.npz"

    def write(f) -> None:
        with (
            zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as z,
            z.open("arr_0.npy", "w", force_zip64=True) as member,
        ):
            header = {"descr": "|u1", "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_2_0(member, header)
            for i in range(n):
                with Image.open(out / IMAGES / f"{i:06d}.png") as im:
                    a = np.asarray(im)
                if a.shape[:2] != (h, w):
                    raise InferError(f"sample {i:06d}.png is {a.shape[1]}x{a.shape[0]}, the others {w}x{h}")
                a = np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a[..., :3]
                member.write(np.ascontiguousarray(a, dtype=np.uint8).tobytes())

    _write_atomic(str(path), write)
    return path, shape


def run(args: argparse.Namespace, d: Dist) -> str:
    _check_args(args)
    path = _model_path(args.model)
    threads = args.threads or max(1, (os.cpu_count() or 1) // max(1, d.local_world))
    eng = _load_engine(path, threads)
    latent = eng.info["model_config"]["space"] == "latent"
    vae = None
    if latent:
        if args.vae is None:
            raise InferError(
                f"{path} is a latent model: FID samples are images, so give --vae FOLDER (the SD VAE)"
            )
        from .latent import VaeError, load_vae

        try:
            vae = load_vae(args.vae)
        except VaeError as e:
            raise InferError(str(e)) from None
    elif args.vae is not None:
        raise InferError(f"--vae: {path} is a pixel-space model; the VAE decodes latent models only")
    cfg = args.cfg_scale
    if cfg is None:
        cfg = 1.5 if eng.has_null_class else 1.0
    elif cfg != 1 and not eng.has_null_class:
        raise InferError(f"--cfg-scale {cfg}: this model has no null class; use --cfg-scale 1")

    from .engine import NonFiniteError

    n = args.num_samples
    settings = {
        "model_sha256": sha256_file(path),
        "model_size": os.path.getsize(path),
        "num_samples": n,
        "steps": args.steps,
        "cfg_scale": cfg,
        "seed": args.seed,
        "classes": args.classes,
        "sampler": args.sampler,
        "eta": args.eta,
        "vae": None if args.vae is None else os.path.abspath(args.vae),
    }
    out = _prepare_out(args, settings, d)
    images = out / IMAGES
    classes = sample_classes(args.classes, n, eng.num_classes, args.seed)
    mine = np.arange(d.rank, n, d.world)
    mc = eng.info["model_config"]
    side = mc["input_size"] * (8 if latent else 1)
    channels = 3 if latent else mc["in_channels"]
    todo = [int(i) for i in mine if not _check_done(images / f"{i:06d}.png", side, channels)]

    bar = None
    if args.progress and d.rank == 0 and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"rank 0/{d.world}", unit="sample")
    t0 = time.perf_counter()
    for k in range(0, len(todo), args.batch_size):
        idx = np.array(todo[k : k + args.batch_size], dtype=np.int64)
        try:
            x = eng.sample(
                classes[idx],
                steps=args.steps,
                cfg_scale=cfg,
                sampler=args.sampler,
                eta=args.eta,
                seeds=sample_seeds(args.seed, idx),
                output="latent" if latent else "image",
            )
        except ValueError as e:
            raise InferError(str(e)) from None
        except NonFiniteError as e:
            first, last = int(idx[0]), int(idx[-1])
            raise InferError(f"samples {first}..{last}: {e}; nothing written for them") from None
        if vae is not None:
            from .latent import decode

            x = decode(vae, x)
        for j, i in enumerate(idx):
            _save_png(images / f"{int(i):06d}.png", x[j])
        if bar is not None:
            bar.update(len(idx))
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    d.barrier()  # every rank's share is on disk
    msg = (
        f"rank {d.rank}/{d.world}: {len(todo)} new sample(s) of {len(mine)} in {seconds:.1f} s "
        f"({len(mine) - len(todo)} already there)"
    )
    error = ""
    if d.rank == 0:
        missing = [i for i in range(n) if not (images / f"{i:06d}.png").exists()]
        if missing:
            error = f"{len(missing)} samples are missing after the run (first: {missing[0]})"
        elif args.npz:
            npz, shape = _pack_npz(out, n)
            msg += f"; wrote {npz} (arr_0 uint8 {list(shape)})"
    d.barrier()  # the others wait for the .npz (and never hang on an error of rank 0)
    if error:
        raise InferError(error)
    return msg


def main(argv: list[str] | None = None) -> int:
    """Entry point of robuq-sample (also under torchrun); 0 ok, 2 bad input, 130 interrupted."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    d = Dist()
    try:
        d = _setup_dist()
        print(run(args, d))
    except InferError as e:
        print(f"robuq-sample: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("robuq-sample: interrupted; finished samples are kept, rerun to resume", file=sys.stderr)
        return 130
    finally:
        d.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""robuq-train: full-precision training, QAT (with distillation and AMPN) and exact resume for the DiT.

    robuq-train --data digits --model DiT-S/2 --depth 2 --hidden-size 64 --num-heads 2 \
        --steps 2000 --out runs/fp
    robuq-train --data digits --init runs/fp/checkpoints/0002000.pt --bits W1.58A2 --rank 8 --distill \
        --steps 4000 --out runs/a2
    robuq-train --data digits --init runs/fp/checkpoints/0002000.pt --ampn-budget 2.0 --ampn-warmup 1000 \
        --steps 4000 --out runs/ampn
    robuq-train --resume runs/a2/checkpoints/0002000.pt --steps 4000
    torchrun --nproc_per_node 2 -m robuq.train ...          # DistributedDataParallel, same flags

See docs/training.md for the loss, the checkpoint layout and the exact resume rules.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from . import ampn
from .checkpoint import CHECKPOINT_FORMAT, CheckpointError, infer_config, load, load_model, read
from .cli import UsageError
from .cli_paths import DefaultsHelpFormatter, output_path_problem
from .data import load_dataset
from .diffusion import GaussianDiffusion
from .models import CONFIGS, DiT, DiTConfig, create
from .quant import QuantConfig, preset, quantize_model

__all__ = ["main", "build_parser", "load_checkpoint", "load_model", "UsageError", "CHECKPOINT_FORMAT"]

# Options a resumed run may change; every other option is taken from the checkpoint's "args".
RESUME_OVERRIDABLE = (
    "resume",
    "steps",
    "out",
    "log_every",
    "ckpt_every",
    "progress",
    "device",
    "debug_dump_weights",
)
MODEL_OVERRIDES = ("depth", "hidden_size", "num_heads", "input_size")


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="robuq-train",
        description="Train a DiT in full precision or with RobuQ QAT (docs/training.md).",
        formatter_class=DefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--data", default="digits", help="'digits', 'folder:PATH' or 'latents:PATH.npy[,LABELS.npy]'"
    )
    g.add_argument("--image-size", type=int, default=None, help="image side for digits / folders")
    g.add_argument(
        "--channels", type=int, default=None, choices=(1, 3), help="folder images: 1 or 3 channels"
    )
    g.add_argument("--holdout", type=float, default=0.1, help="held-out fraction (stratified; used by AMPN)")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the fixed train / held-out split")

    g = p.add_argument_group("model (training from scratch)")
    g.add_argument("--model", default="DiT-S/2", choices=sorted(CONFIGS), help="base configuration")
    g.add_argument("--depth", type=int, default=None)
    g.add_argument("--hidden-size", type=int, default=None)
    g.add_argument("--num-heads", type=int, default=None)
    g.add_argument("--input-size", type=int, default=None, help="model input side (default: the data's)")
    g.add_argument("--class-dropout-prob", type=float, default=0.1)
    g.add_argument("--no-learn-sigma", dest="learn_sigma", action="store_false", help="eps only, plain MSE")

    g = p.add_argument_group("QAT")
    g.add_argument(
        "--init",
        default=None,
        help="full-precision checkpoint: ours, an official DiT state dict or a DiT train.py file",
    )
    g.add_argument("--init-weights", default="ema", choices=("ema", "model"), help="which weights of --init")
    g.add_argument("--bits", default=None, help="W1.58A<n>: ternary block linears, n-bit activations")
    g.add_argument("--act-bits", type=int, default=None, help="activation bits of the block linears (1..8)")
    g.add_argument("--clip", default=None, choices=("gauss", "minmax"), help="activation clipping [gauss]")
    g.add_argument(
        "--hadamard", default=None, choices=("full", "block", "none"), help="online Hadamard [full]"
    )
    g.add_argument("--rank", type=int, default=None, help="low-rank branch rank [0]")
    g.add_argument("--quant-config", default=None, help="per-layer QuantConfig JSON (e.g. from AMPN)")
    g.add_argument("--distill", action="store_true", help="add MSE(student eps, full-precision teacher eps)")
    g.add_argument("--distill-weight", type=float, default=1.0)

    g = p.add_argument_group("AMPN (activation mixed precision in one command)")
    g.add_argument("--ampn-budget", type=float, default=None, help="average activation bits, e.g. 2.0")
    g.add_argument("--ampn-warmup", type=int, default=1000, help="QAT steps at 4 bits before measuring")
    g.add_argument("--ampn-weighting", default="mac", choices=ampn.WEIGHTINGS, help="budget average")
    g.add_argument(
        "--ampn-batches", type=int, default=4, help="held-out batches of the sensitivity objective"
    )
    g.add_argument("--ampn-batch-size", type=int, default=64)

    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=float, default=1e-4)
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--ema-decay", type=float, default=0.9999)
    g.add_argument("--batch-size", type=int, default=256, help="global batch (split over DDP ranks)")
    g.add_argument("--steps", type=int, default=1000, help="total optimiser steps (AMPN warm-up included)")
    g.add_argument("--seed", type=int, default=0)

    g = p.add_argument_group("run")
    g.add_argument("--out", default=None, help="output directory (log.jsonl, checkpoints/, ampn.json)")
    g.add_argument("--resume", default=None, help="continue this checkpoint exactly")
    g.add_argument("--log-every", type=int, default=100)
    g.add_argument("--ckpt-every", type=int, default=0, help="0: only the final checkpoint")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bar")
    g.add_argument("--debug-dump-weights", default=None, help=argparse.SUPPRESS)  # tests: per-rank hashes
    return p


# ---------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------


def load_checkpoint(path: str):
    """robuq.checkpoint.read (torch.load with weights_only=True and one allow-list), its refusals raised as
    UsageError (robuq-train's error line)."""
    try:
        return read(path)
    except CheckpointError as e:
        raise UsageError(str(e)) from None


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temporary file in the same directory, then os.replace (no partial files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def state_hash(sd: dict) -> str:
    """sha256 over (name, dtype, shape, bytes) of a state dict in key order."""
    h = hashlib.sha256()
    for k in sorted(sd):
        v = sd[k]
        if torch.is_tensor(v):
            a = v.detach().cpu().contiguous().reshape(-1)
            h.update(f"{k}|{a.dtype}|{tuple(a.shape)}|".encode())
            h.update(a.view(torch.uint8).numpy().tobytes() if a.numel() else b"")
    return h.hexdigest()


def load_init(args) -> DiT:
    """The full-precision model of --init: ours, an official state dict (.pt or .safetensors), a DiT train.py
    file, or diffusers' layout (a DiTPipeline folder, its transformer/ folder or weights file), read and
    validated by robuq.checkpoint.load; an official layout's config inferred with --num-heads and
    --class-dropout-prob."""
    try:
        ck = load(args.init, ema=args.init_weights == "ema", num_heads=args.num_heads)
    except CheckpointError as e:
        raise UsageError(f"--init: {e}") from None
    if ck.quant is not None:
        raise UsageError(f"{args.init} is a quantized (QAT) checkpoint; continue it with --resume")
    cfg = ck.config
    if ck.layout in ("official", "official-train") and args.class_dropout_prob != cfg.class_dropout_prob:
        try:  # the label table's null row exists iff the dropout is > 0 (DiT's LabelEmbedder)
            cfg = infer_config(ck.state, cfg.num_heads, None, args.class_dropout_prob)
        except CheckpointError as e:
            raise UsageError(f"--init: {e}") from None
    for key in MODEL_OVERRIDES:
        want = getattr(args, key)
        if want is not None and want != getattr(cfg, key):
            raise UsageError(
                f"--{key.replace('_', '-')} {want} differs from --init's {key} {getattr(cfg, key)}"
            )
    model = DiT(cfg)
    try:
        model.load_state_dict(ck.state, strict=True)
    except RuntimeError as e:
        raise UsageError(f"{args.init} does not match the inferred configuration: {str(e)[:400]}") from None
    return model


# ---------------------------------------------------------------------------------------------------------
# Configuration helpers
# ---------------------------------------------------------------------------------------------------------


def parse_bits(spec: str) -> int:
    m = re.fullmatch(r"[Ww]1\.58[Aa]([1-8])", spec.strip())
    if not m:
        raise UsageError(
            f"unknown --bits {spec!r}: expected W1.58A<n> (ternary weights, n = 1..8 activation bits), "
            "e.g. W1.58A4"
        )
    return int(m.group(1))


def quant_config_from_args(args, depth: int) -> QuantConfig | None:
    """The QuantConfig the run starts with (None: full precision)."""
    act = parse_bits(args.bits) if args.bits else None
    if args.act_bits is not None:
        if not 1 <= args.act_bits <= 8:
            raise UsageError(f"--act-bits {args.act_bits} is not in 1..8")
        if act is not None and act != args.act_bits:
            raise UsageError(f"--bits {args.bits} and --act-bits {args.act_bits} disagree")
        act = args.act_bits
    warm = max(ampn.CANDIDATES) if args.ampn_budget is not None else None
    preset_opts = {"clip": args.clip, "hadamard": args.hadamard, "rank": args.rank}
    if args.quant_config:
        if act is not None or any(v is not None for v in preset_opts.values()):
            raise UsageError(
                "--quant-config fixes every layer; do not combine it with "
                "--bits/--act-bits/--clip/--hadamard/--rank"
            )
        if not os.path.isfile(args.quant_config):
            raise UsageError(f"quantization config {args.quant_config!r} does not exist")
        try:
            cfg = QuantConfig.load(args.quant_config)
        except (ValueError, TypeError, json.JSONDecodeError) as e:
            raise UsageError(f"{args.quant_config}: {e}") from None
        if warm is not None:
            cfg = ampn.apply_allocation(cfg, cfg.block_linears(), [warm] * len(cfg.block_linears()))
        return cfg
    if warm is not None:
        if act is not None:
            raise UsageError(
                "--ampn-budget chooses the activation bits; do not give --bits/--act-bits with it"
            )
        act = warm
    if act is None:
        if any(v is not None for v in preset_opts.values()):
            raise UsageError(
                "--clip/--hadamard/--rank need --bits, --act-bits, --quant-config or --ampn-budget"
            )
        return None
    if args.rank is not None and args.rank < 0:
        raise UsageError(f"--rank {args.rank} is negative")
    return preset(
        depth, act, clip=args.clip or "gauss", hadamard=args.hadamard or "full", rank=args.rank or 0
    )


def _validate(args) -> None:
    if args.out is None:
        raise UsageError("--out is required")
    for name in ("steps", "log_every", "ckpt_every", "ampn_warmup"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0")
    if args.steps == 0:
        raise UsageError("--steps must be >= 1 (the total number of optimiser steps)")
    _check_out_dir(args.out)
    if args.batch_size <= 0 or args.ampn_batch_size <= 0 or args.ampn_batches <= 0:
        raise UsageError("batch sizes and --ampn-batches must be positive")
    if not 0.0 <= args.ema_decay <= 1.0:
        raise UsageError(f"--ema-decay {args.ema_decay} is not in [0, 1]")
    if args.lr <= 0:
        raise UsageError(f"--lr {args.lr} must be positive")
    if args.bits:
        parse_bits(args.bits)
    if args.distill and not args.init:
        raise UsageError("--distill needs --init (the full-precision teacher)")
    if args.ampn_budget is not None and not min(ampn.CANDIDATES) <= args.ampn_budget <= max(ampn.CANDIDATES):
        raise UsageError(
            f"--ampn-budget {args.ampn_budget} is not in {min(ampn.CANDIDATES)}..{max(ampn.CANDIDATES)}"
        )


def _check_out_dir(out: str) -> None:
    """--out must be a directory or creatable as one, and writable; checked before anything is written."""
    problem = output_path_problem(out, "--out", directory=True)
    if problem:
        raise UsageError(problem)


def _merge_resume_args(args, parser, ck_args: dict):
    """Arguments of a resumed run: the checkpoint's, with RESUME_OVERRIDABLE taken from the command line.
    An explicitly different value of any other option is an error (the run continues as saved)."""
    defaults = vars(parser.parse_args([]))
    cli = vars(args)
    merged = dict(defaults)
    merged.update({k: v for k, v in ck_args.items() if k in defaults})
    for k, v in cli.items():
        if k in RESUME_OVERRIDABLE:
            if k == "out" and v is None:
                continue
            merged[k] = v
        elif v != defaults[k] and v != merged[k]:
            raise UsageError(
                f"--{k.replace('_', '-')} {v!r} differs from the resumed run's {merged[k]!r}; "
                "a resumed run continues with its saved options"
            )
    return argparse.Namespace(**merged)


# ---------------------------------------------------------------------------------------------------------
# Distributed, data shards, EMA
# ---------------------------------------------------------------------------------------------------------


class Dist:
    """Rank / world of this process; set up from torchrun's environment (WORLD_SIZE > 1)."""

    def __init__(self, device_arg: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        want_cuda = device_arg.startswith("cuda") or (device_arg == "auto" and torch.cuda.is_available())
        if want_cuda and not torch.cuda.is_available():
            raise UsageError(f"--device {device_arg}: no CUDA device is available")
        if want_cuda:
            self.device = torch.device(device_arg if ":" in device_arg else f"cuda:{self.local_rank}")
            torch.cuda.set_device(self.device)
        elif device_arg in ("auto", "cpu"):
            self.device = torch.device("cpu")
        else:
            raise UsageError(f"unknown --device {device_arg!r}")
        self.initialized_here = False
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if want_cuda else "gloo")
            self.initialized_here = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def gather_objects(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_mean(self, values: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            values = values.clone()
            dist.all_reduce(values)
            values /= self.world
        return values

    def close(self) -> None:
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


class ShardSampler:
    """Batches of dataset indices for one rank: epoch e shuffles all N indices with
    torch.randperm(N, generator=Generator().manual_seed(seed + e)) (the same on every rank), pads by
    repeating the first indices to a multiple of the world size, takes perm[rank::world], and cuts that
    shard into consecutive batches (an incomplete tail is dropped). State = (epoch, pos)."""

    def __init__(self, n: int, batch: int, rank: int, world: int, seed: int):
        self.n, self.batch, self.rank, self.world, self.seed = n, batch, rank, world, seed
        self.epoch, self.pos = 0, 0
        self._shard_epoch, self._shard = -1, None
        if self._shard_len() < batch:
            raise UsageError(
                f"dataset of {n} samples is smaller than a per-rank batch of {batch} x {world} ranks"
            )

    def _shard_len(self) -> int:
        return -(-self.n // self.world)

    def shard(self) -> torch.Tensor:
        if self._shard_epoch != self.epoch:
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
            total = self._shard_len() * self.world
            if total > self.n:
                perm = torch.cat([perm, perm[: total - self.n]])
            self._shard, self._shard_epoch = perm[self.rank :: self.world], self.epoch
        return self._shard

    def next(self) -> torch.Tensor:
        if self.pos + self.batch > self._shard_len():
            self.epoch, self.pos = self.epoch + 1, 0
        idx = self.shard()[self.pos : self.pos + self.batch]
        self.pos += self.batch
        return idx

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, s: dict) -> None:
        self.epoch, self.pos = int(s["epoch"]), int(s["pos"])


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema = decay * ema + (1 - decay) * model for trainable parameters; frozen ones are copied."""
    ema_params = dict(ema.named_parameters())
    for name, p in model.named_parameters():
        e = ema_params[name]
        if p.requires_grad:
            e.mul_(decay).add_(p.detach(), alpha=1 - decay)
        else:
            e.copy_(p.detach())


def _set_layer_configs(model: torch.nn.Module, cfg: QuantConfig) -> None:
    modules = dict(model.named_modules())
    for name, lq in cfg.layers.items():
        modules[name].cfg = lq
    model.quant_config = cfg


# ---------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------


class Run:
    def __init__(self, args, parser, d: Dist):
        self.d = d
        resume_ck = None
        if args.resume:
            resume_ck = load_checkpoint(args.resume)
            if not isinstance(resume_ck, dict) or resume_ck.get("format") != CHECKPOINT_FORMAT:
                raise UsageError(f"{args.resume} is not a robuq-train checkpoint (needed for --resume)")
            missing = [k for k in ("args", "model", "ema", "opt", "step") if k not in resume_ck]
            if missing:
                raise UsageError(
                    f"{args.resume} has no training state ({', '.join(missing)} missing: a release "
                    "checkpoint?); --resume needs a checkpoint written during training (--init takes weights)"
                )
            args = _merge_resume_args(args, parser, dict(resume_ck["args"]))
        _validate(args)
        self.args = args
        self.out = Path(args.out)

        # ---- data
        try:
            self.x, self.y, num_classes = load_dataset(
                args.data,
                split="train",
                image_size=args.image_size,
                channels=args.channels,
                holdout=args.holdout,
                seed=args.split_seed,
            )
        except (ValueError, FileNotFoundError) as e:
            raise UsageError(f"--data {args.data}: {e}") from None
        if len(self.x) == 0:
            raise UsageError(f"--data {args.data}: the training split is empty")
        c, h = int(self.x.shape[1]), int(self.x.shape[2])

        # ---- model (full precision), teacher, quantization
        teacher = None
        if resume_ck is not None:
            cfg = DiTConfig.from_dict(dict(resume_ck["model_config"]))
            model = DiT(cfg)
        elif args.init:
            model = load_init(args)
            cfg = model.config
        else:
            overrides = {k: getattr(args, k) for k in MODEL_OVERRIDES if getattr(args, k) is not None}
            overrides.setdefault("input_size", h)
            torch.manual_seed(args.seed)
            try:
                model = create(
                    args.model,
                    **overrides,
                    in_channels=c,
                    num_classes=num_classes,
                    learn_sigma=args.learn_sigma,
                    class_dropout_prob=args.class_dropout_prob,
                )
            except ValueError as e:
                raise UsageError(f"model configuration: {e}") from None
            cfg = model.config
        if (cfg.in_channels, cfg.input_size) != (c, h) or int(self.y.max()) >= cfg.num_classes:
            raise UsageError(
                f"data ({c} channels, {h}x{h}, {num_classes} classes) does not fit the model "
                f"({cfg.in_channels} channels, {cfg.input_size}x{cfg.input_size}, {cfg.num_classes} classes)"
            )
        if h != int(self.x.shape[3]):
            raise UsageError("images must be square")
        if args.distill:
            teacher = load_init(args) if resume_ck is not None else copy.deepcopy(model)
            teacher.requires_grad_(False).eval()
            self.teacher_hash = state_hash(teacher.state_dict())
            if resume_ck is not None and resume_ck.get("teacher_sha256") not in (None, self.teacher_hash):
                raise UsageError(f"the teacher {args.init} changed since the checkpoint was written")
        self.teacher = teacher

        if resume_ck is not None:
            qc = resume_ck.get("quant_config")
            self.qcfg = QuantConfig.from_dict(qc) if qc is not None else None
            if self.qcfg is not None:
                quantize_model(model, self.qcfg, init_lowrank=False)
        else:
            self.qcfg = quant_config_from_args(args, cfg.depth)
            if self.qcfg is not None:
                try:
                    quantize_model(model, self.qcfg)
                except ValueError as e:
                    raise UsageError(f"quantization config: {e}") from None
        self.cfg = cfg
        # The loop applies class dropout itself (seeded generator, same labels for the teacher); the
        # model's own dropout is switched off. The table keeps its null-class row.
        model.y_embedder.dropout_prob = 0.0
        self.model = model.to(d.device).train()
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        if self.teacher is not None:
            self.teacher.to(d.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
        self.diffusion = GaussianDiffusion.spaced(None)

        # ---- randomness and progress state
        self.local_batch, rem = divmod(args.batch_size, d.world)
        if rem:
            raise UsageError(f"--batch-size {args.batch_size} is not divisible by {d.world} ranks")
        self.sampler = ShardSampler(len(self.x), self.local_batch, d.rank, d.world, args.seed)
        self.gen = torch.Generator().manual_seed(args.seed * d.world + d.rank)
        self.step = 0
        self.ampn_done = args.ampn_budget is None
        self.first_batch: list[int] | None = None
        if resume_ck is not None:
            self._load_state(resume_ck)

        if d.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [d.device.index] if d.device.type == "cuda" else None
            self.net = DDP(self.model, device_ids=ids)
        else:
            self.net = self.model

    # ------------------------------------------------------------------ state
    def _load_state(self, ck: dict) -> None:
        self.model.load_state_dict(ck["model"], strict=True)
        self.ema.load_state_dict(ck["ema"], strict=True)
        self.opt.load_state_dict(ck["opt"])
        self.step = int(ck["step"])
        self.ampn_done = bool(ck.get("ampn", {}).get("done", self.args.ampn_budget is None))
        r = ck.get("rng", {})
        self.sampler.load_state_dict(r.get("data", {"epoch": 0, "pos": 0}))
        ranks = r.get("ranks", [])
        if r.get("world_size") == self.d.world and len(ranks) == self.d.world:
            mine = ranks[self.d.rank]
            self.gen.set_state(mine["gen"])
            torch.set_rng_state(mine["torch"])
            if mine.get("cuda") is not None and self.d.device.type == "cuda":
                torch.cuda.set_rng_state(mine["cuda"], self.d.device)
        else:
            if self.d.main:
                print(
                    f"robuq-train: warning: checkpoint was written by {r.get('world_size')} ranks, "
                    f"this run has "
                    f"{self.d.world}; noise streams restart from the seed (not an exact continuation)",
                    file=sys.stderr,
                )
            self.gen.manual_seed(self.args.seed * self.d.world + self.d.rank + 7919 * self.step)

    def checkpoint(self) -> Path | None:
        """Collective (every rank calls it); rank 0 writes out/checkpoints/<step>.pt atomically."""
        mine = {
            "gen": self.gen.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(self.d.device) if self.d.device.type == "cuda" else None,
        }
        ranks = self.d.gather_objects(mine)
        path = self.out / "checkpoints" / f"{self.step:07d}.pt"
        if self.d.main:
            state = {
                "format": CHECKPOINT_FORMAT,
                "model": self.model.state_dict(),
                "ema": self.ema.state_dict(),
                "opt": self.opt.state_dict(),
                "step": self.step,
                "args": {k: v for k, v in vars(self.args).items()},
                "model_config": self.cfg.to_dict(),
                "quant_config": self.qcfg.to_dict() if self.qcfg is not None else None,
                "rng": {"world_size": self.d.world, "ranks": ranks, "data": self.sampler.state_dict()},
                "ampn": {"done": self.ampn_done},
                "teacher_sha256": getattr(self, "teacher_hash", None),
            }
            save_atomic(state, path)
        self.d.barrier()
        return path

    # ------------------------------------------------------------------ training step
    def train_step(self) -> dict[str, torch.Tensor]:
        a, cfg, dev = self.args, self.cfg, self.d.device
        idx = self.sampler.next()
        if self.first_batch is None:
            self.first_batch = idx.tolist()
        x = self.x[idx].to(dev)
        y = self.y[idx]
        b = x.shape[0]
        # draws, in this order, from the rank's generator (CPU, so every device sees the same numbers)
        t = torch.randint(0, self.diffusion.num_timesteps, (b,), generator=self.gen)
        noise = torch.randn(tuple(x.shape), generator=self.gen)
        drop = torch.rand(b, generator=self.gen) < cfg.class_dropout_prob
        y = torch.where(drop, torch.full_like(y, cfg.num_classes), y).to(dev)
        t, noise = t.to(dev), noise.to(dev)

        terms = self.diffusion.training_losses(lambda xt, tt: self.net(xt, tt, y), x, t, noise)
        loss = terms["loss"].mean()
        out = {"loss": loss.detach(), "mse": terms["mse"].mean().detach()}
        out["vb"] = terms["vb"].mean().detach() if "vb" in terms else torch.zeros((), device=dev)
        if self.teacher is not None:
            with torch.no_grad():
                t_eps = self.teacher(terms["x_t"], t, y)[:, : cfg.in_channels]
            distill = F.mse_loss(terms["output"][:, : cfg.in_channels], t_eps)
            loss = loss + a.distill_weight * distill
            out["distill"] = distill.detach()
            out["loss"] = loss.detach()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        update_ema(self.ema, self.model, a.ema_decay)
        self.step += 1
        return out

    # ------------------------------------------------------------------ AMPN
    def run_ampn(self) -> None:
        names = self.qcfg.block_linears()
        result = None
        if self.d.main:
            result = self._measure_and_allocate(names)
        result = self.d.broadcast_object(result)
        self.qcfg = QuantConfig.from_dict(result["config"])
        _set_layer_configs(self.model, self.qcfg)
        _set_layer_configs(self.ema, self.qcfg)
        self.ampn_done = True
        if self.d.main:
            self.qcfg.save(self.out / "ampn.json")
            _write_text_atomic(self.out / "ampn_sensitivity.json", json.dumps(result["report"], indent=1))
            self.log(
                {
                    "event": "ampn",
                    "step": self.step,
                    **{k: result["report"][k] for k in ("bits", "average_bits")},
                }
            )

    def _measure_and_allocate(self, names: list[str]) -> dict:
        a, dev = self.args, self.d.device
        try:
            hx, hy, _ = load_dataset(
                a.data,
                split="heldout",
                image_size=a.image_size,
                channels=a.channels,
                holdout=a.holdout,
                seed=a.split_seed,
            )
        except ValueError:
            hx = torch.zeros(0)
        source = "heldout"
        if len(hx) == 0:
            hx, hy, source = self.x, self.y, "train"
        g = torch.Generator().manual_seed(a.seed)
        batches = []
        for i in range(a.ampn_batches):
            lo = (i * a.ampn_batch_size) % len(hx)
            idx = torch.arange(lo, lo + a.ampn_batch_size) % len(hx)
            x, y = hx[idx], hy[idx]
            t = torch.randint(0, self.diffusion.num_timesteps, (len(idx),), generator=g)
            noise = torch.randn(tuple(x.shape), generator=g)
            batches.append(tuple(v.to(dev) for v in (x, y, t, noise)))
        model = self.model

        @torch.no_grad()
        def objective() -> float:
            total = 0.0
            for x, y, t, noise in batches:
                terms = self.diffusion.training_losses(lambda xt, tt, y=y: model(xt, tt, y), x, t, noise)
                total += float(terms["loss"].double().mean())
            return total / len(batches)

        base = objective()
        sens = ampn.measure_sensitivity(model, names, objective, ampn.CANDIDATES)
        macs = [ampn.layer_macs(n, self.cfg.hidden_size, self.cfg.mlp_ratio) for n in names]
        weights = macs if a.ampn_weighting == "mac" else None
        bits = ampn.allocate_bits(sens, a.ampn_budget, weights, ampn.CANDIDATES)
        cfg = ampn.apply_allocation(self.qcfg, names, bits)
        report = {
            "budget": a.ampn_budget,
            "weighting": a.ampn_weighting,
            "candidates": list(ampn.CANDIDATES),
            "warmup_steps": self.step,
            "objective_all_at_max": base,
            "objective_batches": {
                "source": source,
                "batches": a.ampn_batches,
                "batch_size": a.ampn_batch_size,
                "seed": a.seed,
            },
            "layers": names,
            "macs_per_token": macs,
            "sensitivity": sens.tolist(),
            "bits": bits,
            "average_bits": {"mac": ampn.average_bits(bits, macs), "plain": ampn.average_bits(bits)},
        }
        return {"config": cfg.to_dict(), "report": report}

    # ------------------------------------------------------------------ logging and the loop
    def log(self, record: dict) -> None:
        if self.d.main:
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def train(self) -> Path:
        a, d = self.args, self.d
        # created only now that every input has been checked (a refused run leaves nothing behind)
        if d.main:
            (self.out / "checkpoints").mkdir(parents=True, exist_ok=True)
        d.barrier()
        from tqdm.auto import tqdm

        if self.step == 0:
            self.log(
                {
                    "event": "start",
                    "world_size": d.world,
                    "args": vars(a),
                    "model_config": self.cfg.to_dict(),
                    "quant_config": self.qcfg.to_dict() if self.qcfg else None,
                }
            )
        else:
            self.log({"event": "resume", "step": self.step, "from": a.resume})
        bar = tqdm(
            total=a.steps,
            initial=min(self.step, a.steps),
            disable=not (d.main and a.progress),
            desc="qat" if self.qcfg else "train",
            dynamic_ncols=True,
        )
        keys = ("loss", "mse", "vb", "distill")
        acc = torch.zeros(len(keys), dtype=torch.float64)
        n_acc, busy = 0, 0.0
        last_saved = -1
        while True:
            if not self.ampn_done and self.step >= a.ampn_warmup:
                self.run_ampn()
            if self.step >= a.steps:
                break
            ts = time.perf_counter()
            out = self.train_step()
            busy += time.perf_counter() - ts
            acc += torch.tensor([float(out.get(k, 0.0)) for k in keys], dtype=torch.float64)
            n_acc += 1
            bar.update(1)
            if a.log_every and (self.step % a.log_every == 0 or self.step == a.steps):
                mean = d.all_mean(acc / n_acc)
                dt = max(busy, 1e-9)
                rec = {
                    "step": self.step,
                    **{k: float(v) for k, v in zip(keys, mean, strict=True)},
                    "steps_per_s": n_acc / dt,
                    "samples_per_s": n_acc * a.batch_size / dt,
                }
                if self.teacher is None:
                    rec.pop("distill")
                self.log(rec)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", steps_s=f"{rec['steps_per_s']:.2f}")
                acc.zero_()
                n_acc, busy = 0, 0.0
            if a.ckpt_every and self.step % a.ckpt_every == 0:
                self.checkpoint()
                last_saved = self.step
        bar.close()
        path = self.out / "checkpoints" / f"{self.step:07d}.pt"
        if last_saved != self.step:
            path = self.checkpoint()
        self.log({"event": "end", "step": self.step, "checkpoint": str(path)})
        if a.debug_dump_weights:
            dump = Path(a.debug_dump_weights)
            dump.mkdir(parents=True, exist_ok=True)
            rec = {
                "rank": d.rank,
                "world_size": d.world,
                "step": self.step,
                "model_sha256": state_hash(self.model.state_dict()),
                "ema_sha256": state_hash(self.ema.state_dict()),
                "first_batch": self.first_batch,
            }
            _write_text_atomic(dump / f"rank{d.rank}.json", json.dumps(rec))
        return path


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse printed its message (bad option value: code 2; --help: 0)
        return int(e.code) if isinstance(e.code, int) else 2
    d = None
    try:
        d = Dist(args.device)
        run = Run(args, parser, d)
        path = run.train()
        if d.main:
            print(f"robuq-train: {run.step} steps done; checkpoint {path}")
        return 0
    except UsageError as e:
        print(f"robuq-train: error: {e}", file=sys.stderr)
        return 2
    finally:
        if d is not None:
            d.close()


if __name__ == "__main__":
    sys.exit(main())

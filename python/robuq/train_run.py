"""One robuq-train run: model, EMA, optimiser, data, the loop with QAT, distillation and AMPN, checkpoints
that resume exactly, and the log (docs/training.md)."""

from __future__ import annotations

import copy
import hashlib
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import ampn
from .checkpoint import CHECKPOINT_FORMAT
from .cli import UsageError, write_atomic, write_text_atomic
from .data import load_dataset
from .diffusion import GaussianDiffusion
from .distributed import Dist, ShardSampler
from .models import DiT, DiTConfig, create
from .quant import QuantConfig, quantize_model
from .train_config import (
    MODEL_OVERRIDES,
    _merge_resume_args,
    _validate,
    load_checkpoint,
    load_init,
    quant_config_from_args,
)


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


class Run:
    def __init__(self, args, parser, d: Dist):
        self.d = d
        args, resume_ck = self._resolve_args(args, parser)
        self.args = args
        self.out = Path(args.out)
        self._load_data()
        model, cfg = self._build_model(resume_ck)
        self.teacher = self._build_teacher(model, resume_ck)
        self.qcfg = self._quantize(model, cfg, resume_ck)
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

    # ------------------------------------------------------------------ setup
    @staticmethod
    def _resolve_args(args, parser):
        """(the run's arguments, the --resume checkpoint or None): a resumed run takes its saved options
        (RESUME_OVERRIDABLE from the command line); both are validated."""
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
        return args, resume_ck

    def _load_data(self) -> None:
        """self.x, self.y (the training split) and self.num_classes."""
        args = self.args
        try:
            self.x, self.y, self.num_classes = self._split("train")
        except (ValueError, FileNotFoundError) as e:
            raise UsageError(f"--data {args.data}: {e}") from None
        if len(self.x) == 0:
            raise UsageError(f"--data {args.data}: the training split is empty")

    def _split(self, split: str):
        """(x, y, num_classes) of the run's dataset split ("train" or "heldout", --holdout / --split-seed)."""
        a = self.args
        return load_dataset(
            a.data,
            split=split,
            image_size=a.image_size,
            channels=a.channels,
            holdout=a.holdout,
            seed=a.split_seed,
        )

    def _build_model(self, resume_ck: dict | None) -> tuple[DiT, DiTConfig]:
        """The full-precision model: the resumed run's config, --init's weights, or a new one (seeded),
        checked against the data."""
        args = self.args
        c, h = int(self.x.shape[1]), int(self.x.shape[2])
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
                    num_classes=self.num_classes,
                    learn_sigma=args.learn_sigma,
                    class_dropout_prob=args.class_dropout_prob,
                )
            except ValueError as e:
                raise UsageError(f"model configuration: {e}") from None
            cfg = model.config
        if (cfg.in_channels, cfg.input_size) != (c, h) or int(self.y.max()) >= cfg.num_classes:
            raise UsageError(
                f"data ({c} channels, {h}x{h}, {self.num_classes} classes) does not fit the model "
                f"({cfg.in_channels} channels, {cfg.input_size}x{cfg.input_size}, {cfg.num_classes} classes)"
            )
        if h != int(self.x.shape[3]):
            raise UsageError("images must be square")
        return model, cfg

    def _build_teacher(self, model: DiT, resume_ck: dict | None) -> DiT | None:
        """--distill's frozen full-precision teacher (--init's weights, checked unchanged on resume)."""
        args = self.args
        if not args.distill:
            return None
        teacher = load_init(args) if resume_ck is not None else copy.deepcopy(model)
        teacher.requires_grad_(False).eval()
        self.teacher_hash = state_hash(teacher.state_dict())
        if resume_ck is not None and resume_ck.get("teacher_sha256") not in (None, self.teacher_hash):
            raise UsageError(f"the teacher {args.init} changed since the checkpoint was written")
        return teacher

    def _quantize(self, model: DiT, cfg: DiTConfig, resume_ck: dict | None) -> QuantConfig | None:
        """Quantize the model for QAT in place (the resumed run's config, or the options'); the config."""
        if resume_ck is not None:
            qc = resume_ck.get("quant_config")
            qcfg = QuantConfig.from_dict(qc) if qc is not None else None
            if qcfg is not None:
                quantize_model(model, qcfg, init_lowrank=False)
            return qcfg
        qcfg = quant_config_from_args(self.args, cfg.depth)
        if qcfg is not None:
            try:
                quantize_model(model, qcfg)
            except ValueError as e:
                raise UsageError(f"quantization config: {e}") from None
        return qcfg

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
            write_atomic(path, lambda f: torch.save(state, f))
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
            write_text_atomic(self.out / "ampn_sensitivity.json", json.dumps(result["report"], indent=1))
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
            hx, hy, _ = self._split("heldout")
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
            write_text_atomic(dump / f"rank{d.rank}.json", json.dumps(rec))
        return path

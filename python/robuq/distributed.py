"""Data-parallel plumbing of robuq-train: the process's rank and world (torchrun's environment) and the
per-rank batch sampler whose order is the same for any world size up to padding (docs/training.md)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from .cli import UsageError


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

"""Joining a torchrun job, and the share of each minibatch a rank trains on."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

from .branch_parallel import BranchLayout

#: The ways of spreading Lookaround over ranks, as ``--distributed`` names them.
MODES = ("replicated", "branch-parallel")
#: How long a collective waits for the other ranks before it raises (a rank died or hangs).
DEFAULT_TIMEOUT = timedelta(minutes=10)
_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def init_from_torchrun(timeout: timedelta = DEFAULT_TIMEOUT) -> torch.device:
    """Join the process group torchrun describes in the environment; returns this rank's device.

    NCCL with one GPU per process (``cuda:LOCAL_RANK``) when CUDA is available, gloo on
    CPUs. A collective that waits longer than ``timeout`` raises instead of hanging.
    """
    missing = [name for name in _TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise RuntimeError(f"distributed training needs the environment torchrun sets ({', '.join(missing)} "
                           "missing): start it with `torchrun --nproc-per-node=N ...`")
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    dist.init_process_group(backend, timeout=timeout)
    return device


def is_main_process() -> bool:
    """Rank 0, or the only process when no process group is running (it prints and writes files)."""
    return not dist.is_initialized() or dist.get_rank() == 0


@dataclass(frozen=True)
class DataShard:
    """This rank's share of every minibatch: shard ``index`` of ``count`` equal shards."""

    count: int
    index: int

    def local_batch_size(self, global_batch_size: int) -> int:
        """Samples per rank and minibatch; the global batch must split evenly."""
        if global_batch_size % self.count != 0:
            raise ValueError(f"batch size {global_batch_size} does not split into {self.count} equal shards; "
                             f"use a multiple of {self.count}")
        return global_batch_size // self.count

    def sampler(self, dataset: Dataset, *, seed: int, shuffle: bool = True, drop_last: bool = False) -> DistributedSampler:
        """A DistributedSampler over this shard; call ``set_epoch(epoch)`` on it before each epoch.

        Ranks of the same shard index (one per branch group in branch-parallel) draw
        the same samples, so every branch sees the same minibatch.
        """
        return DistributedSampler(dataset, num_replicas=self.count, rank=self.index, shuffle=shuffle, seed=seed,
                                  drop_last=drop_last)


def data_shard(mode: str, num_branches: int) -> DataShard:
    """The data shard of this rank: one per rank (replicated) or one per rank of a branch group."""
    world_size, rank = dist.get_world_size(), dist.get_rank()
    if mode == "replicated":
        return DataShard(world_size, rank)
    if mode == "branch-parallel":
        layout = BranchLayout(world_size, rank, num_branches)
        return DataShard(layout.group_size, layout.rank_in_group)
    raise ValueError(f"Invalid distributed mode: {mode!r}; expected one of {', '.join(map(repr, MODES))}")

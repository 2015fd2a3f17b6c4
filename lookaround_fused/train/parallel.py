"""The training command under torchrun: joining the job, this rank's share of the data, SyncBatchNorm."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn

from lookaround_fused.distributed import DataShard, data_shard, init_from_torchrun
from lookaround_fused.train.config import TrainConfig
from lookaround_fused.train.errors import UsageError


@contextlib.contextmanager
def torchrun_job(cfg: TrainConfig) -> Iterator[torch.device]:
    """This process as a rank of the torchrun job ``cfg.distributed`` needs; yields its device.

    A launch that does not fit the flags (world size, batch size, SyncBatchNorm without
    GPUs) is a :class:`UsageError` before anything is built.
    """
    try:
        device = init_from_torchrun()
    except RuntimeError as error:  # not started by torchrun
        raise UsageError(str(error)) from None
    try:
        try:
            rank_shard(cfg).local_batch_size(cfg.batch_size)
        except ValueError as error:
            raise UsageError(str(error)) from None
        if cfg.sync_bn and device.type != "cuda":
            raise UsageError("--sync-bn needs GPUs: SyncBatchNorm runs on CUDA tensors only")
        yield device
    finally:
        dist.destroy_process_group()


def rank_shard(cfg: TrainConfig) -> DataShard:
    """This rank's share of every minibatch: all of it without ``--distributed``."""
    return DataShard(1, 0) if cfg.distributed == "none" else data_shard(cfg.distributed, cfg.num_branches)


def synchronize_batchnorm(model: nn.Module, optimizer: torch.optim.Optimizer, mode: str) -> None:
    """``--sync-bn``: batch statistics over the ranks that train the same branch (every rank, in replicated).

    Converts in place after the optimizer exists: SyncBatchNorm takes over the
    BatchNorm parameters and buffers themselves, so the optimizer keeps its hold on them.
    """
    group = optimizer.branch_group if mode == "branch-parallel" else None
    if nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group=group) is not model:
        raise UsageError("--sync-bn cannot convert a model that is a single BatchNorm layer")

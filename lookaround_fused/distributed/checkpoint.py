"""Checkpoints of a distributed job: one file, written once, readable by every rank."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .launch import is_main_process


def save_on_rank0(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` from rank 0 only, then wait until every rank gets here.

    Build ``state`` on every rank first (a branch-parallel ``state_dict()`` is a
    collective). The file is written to a temporary name, flushed to disk and renamed
    over ``path``, so an interruption leaves the previous checkpoint intact. Load it on
    every rank with ``torch.load(path, map_location=..., weights_only=True)``.
    """
    if is_main_process():
        path = Path(path)
        temporary = path.with_name(path.name + ".tmp")
        with open(temporary, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    if dist.is_initialized():
        dist.barrier()

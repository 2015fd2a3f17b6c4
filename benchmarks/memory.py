"""Optimizer-state memory, counted from the storages a contender actually holds."""

from __future__ import annotations

from typing import Iterable

import torch


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views of one buffer count once)."""
    storages = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def state_in_parameter_copies(tensors: Iterable[torch.Tensor], parameter_bytes: int) -> float:
    """Memory held by ``tensors`` in multiples of one copy of the parameters (weights included)."""
    return storage_bytes(tensors) / parameter_bytes

"""Device work per call, counted with the PyTorch profiler (CUDA only)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable

import torch
from torch.profiler import DeviceType, ProfilerActivity, profile

from .timing import synchronize

_TRANSFER_PREFIXES = ("Memcpy", "Memset")


@dataclass(frozen=True)
class DeviceWork:
    """Kernels and memory transfers one call put on the GPU, by name."""

    kernels: Counter[str]
    transfers: Counter[str]

    def to_json(self, calls: int) -> dict:
        """Counts per call when the profiled function made ``calls`` calls."""
        return {"kernels_per_call": sum(self.kernels.values()) / calls,
                "transfers_per_call": sum(self.transfers.values()) / calls,
                "kernels": dict(self.kernels.most_common(8)), "transfers": dict(self.transfers)}


def profile_device_work(fn: Callable[[], object], device: torch.device) -> DeviceWork:
    """Run ``fn`` once under the profiler and count what executed on the GPU."""
    synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
        fn()
        synchronize(device)
    names = [event.name for event in profiler.events() if event.device_type == DeviceType.CUDA]
    return DeviceWork(kernels=Counter(n for n in names if not n.startswith(_TRANSFER_PREFIXES)),
                      transfers=Counter(n for n in names if n.startswith(_TRANSFER_PREFIXES)))

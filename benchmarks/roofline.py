"""The memory-bandwidth floor of an outer iteration, from bandwidth measured in the same run.

Lookaround's update does a handful of flops per element and is limited by memory traffic on
every machine that matters. Per element and branch, an outer iteration must read the weight, the
gradient and the momentum and write the weight and the momentum: 5 accesses (20 bytes in fp32).
The average costs no extra traffic when it is fused into the update's pass (the weights of every
branch are read and written by the update anyway). The attainable bandwidth is that of an
in-place ``x.add_(y)`` (3 accesses) of the same size: the same read-read-write streaming pattern,
measured on the same machine at the same time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .timing import Timing, TimingConfig, time_call

#: Memory accesses per element and branch of one fused update: read w, g, m; write w, m.
STEP_ACCESSES_PER_ELEMENT = 5
#: Memory accesses per element of ``x.add_(y)``: read x, y; write x.
ADD_ACCESSES_PER_ELEMENT = 3
#: Memory accesses per element of ``x.copy_(y)``: read y; write x.
COPY_ACCESSES_PER_ELEMENT = 2


def outer_iteration_bytes(numel: int, num_branches: int, element_size: int) -> int:
    """Bytes an outer iteration must move at least: every branch updated once, the average fused in."""
    return STEP_ACCESSES_PER_ELEMENT * element_size * num_branches * numel


def roofline_ms(num_bytes: int, gigabytes_per_second: float) -> float:
    """Milliseconds to move ``num_bytes`` at the given bandwidth."""
    return num_bytes / (gigabytes_per_second * 1e9) * 1e3


@dataclass(frozen=True)
class Bandwidth:
    """Streaming bandwidth over buffers of ``numel`` elements (GB/s, 1e9 bytes)."""

    numel: int
    add: Timing
    copy: Timing
    element_size: int

    @property
    def add_gigabytes_per_second(self) -> float:
        return ADD_ACCESSES_PER_ELEMENT * self.element_size * self.numel / (self.add.median * 1e6)

    @property
    def copy_gigabytes_per_second(self) -> float:
        return COPY_ACCESSES_PER_ELEMENT * self.element_size * self.numel / (self.copy.median * 1e6)

    def to_json(self) -> dict:
        return {"numel": self.numel, "element_size": self.element_size,
                "add_GBps": self.add_gigabytes_per_second, "copy_GBps": self.copy_gigabytes_per_second,
                "add": self.add.to_json(), "copy": self.copy.to_json()}


def measure_bandwidth(numel: int, device: torch.device, dtype: torch.dtype, config: TimingConfig) -> Bandwidth:
    """Time ``x.add_(y)`` and ``x.copy_(y)`` over ``numel``-element buffers."""
    x = torch.ones(numel, device=device, dtype=dtype)
    y = torch.full((numel,), 1e-3, device=device, dtype=dtype)
    add = time_call(lambda: x.add_(y), device, config)
    copy = time_call(lambda: x.copy_(y), device, config)
    return Bandwidth(numel, add, copy, dtype.itemsize)

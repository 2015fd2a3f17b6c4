"""Wall-clock timing with warm-up, repetitions and robust statistics (CUDA events on a GPU)."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class TimingConfig:
    """How hard to try for a stable figure.

    Attributes:
        warmup: untimed calls first (compilation, allocation, caches, momentum initialisation);
            at least one, which also sizes the samples.
        repeats: timed samples; the median is reported, the quartiles as the spread.
        min_sample_ms: a sample repeats the call until it lasts this long, so that
            microsecond calls are not dominated by timer and launch jitter.
    """

    warmup: int
    repeats: int
    min_sample_ms: float

    def __post_init__(self) -> None:
        if self.warmup < 1 or self.repeats < 1:
            raise ValueError(f"warmup and repeats must be at least 1, got {self.warmup} and {self.repeats}")


@dataclass(frozen=True)
class Timing:
    """Milliseconds per call, one value per sample."""

    samples_ms: tuple[float, ...]
    calls_per_sample: int

    @property
    def median(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def quartiles(self) -> tuple[float, float]:
        """First and third quartile (both the single value when there is one sample)."""
        if len(self.samples_ms) == 1:
            return self.samples_ms[0], self.samples_ms[0]
        q1, _, q3 = statistics.quantiles(self.samples_ms, n=4, method="inclusive")
        return q1, q3

    @property
    def relative_spread(self) -> float:
        """Interquartile range over the median."""
        q1, q3 = self.quartiles
        return (q3 - q1) / self.median

    def divided(self, parts: int) -> Timing:
        """The time of one of ``parts`` equal parts of each call (one outer iteration of a cycle)."""
        return Timing(tuple(ms / parts for ms in self.samples_ms), self.calls_per_sample)

    def to_json(self) -> dict:
        q1, q3 = self.quartiles
        return {"median_ms": self.median, "q1_ms": q1, "q3_ms": q3, "min_ms": min(self.samples_ms),
                "samples_ms": list(self.samples_ms), "calls_per_sample": self.calls_per_sample}


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_calls(fn: Callable[[], object], calls: int, device: torch.device) -> float:
    """Milliseconds per call over ``calls`` back-to-back calls."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / calls
    begin = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - begin) * 1e3 / calls


def time_call(fn: Callable[[], object], device: torch.device, config: TimingConfig) -> Timing:
    """Time ``fn`` (work queued on ``device``) after ``config.warmup`` untimed calls."""
    for _ in range(config.warmup - 1):
        fn()
    synchronize(device)
    # The last warm-up call is timed to size the samples.
    once_ms = _time_calls(fn, 1, device)
    calls = max(1, math.ceil(config.min_sample_ms / max(once_ms, 1e-6)))
    samples = tuple(_time_calls(fn, calls, device) for _ in range(config.repeats))
    return Timing(samples, calls)

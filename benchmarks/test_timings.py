"""pytest-benchmark timings: each backend's step, step with the fused average and mean, and every contender's cycle.

Run with ``pytest benchmarks/ --benchmark-only`` (a plain test run skips them). Sizes are the
ResNet-18 parameter set with d=3, k=5 on the GPU when there is one, else on the CPU.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch

from benchmarks.catalog import contender_specs
from benchmarks.contender import Problem
from benchmarks.lookaround_contenders import LookaroundKernel
from benchmarks.parameter_sets import model_parameter_set
from benchmarks.timing import synchronize
from lookaround_fused import available_backends
from lookaround_fused.backends import StepPlan

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
PROBLEM = Problem(model_parameter_set("resnet18"), num_branches=3, average_every=5, device=DEVICE)
SPECS = [spec for spec in contender_specs() if spec.unavailable_reason(DEVICE) is None]


def _finished(fn: Callable[[], object]) -> Callable[[], None]:
    """``fn`` followed by waiting for the device, so that wall-clock time covers the work."""
    def call() -> None:
        fn()
        synchronize(DEVICE)
    return call


@pytest.fixture(scope="module", params=available_backends(DEVICE))
def kernel(request) -> LookaroundKernel:
    return LookaroundKernel(PROBLEM, request.param)


@pytest.mark.parametrize("average", [False, True], ids=["step", "step+average"])
def test_backend_step(benchmark, kernel, average):
    benchmark.group = f"{'step+average' if average else 'step'} resnet18 d=3"
    plan = StepPlan(range(PROBLEM.num_branches), average, kernel.optimizer.param_groups)
    benchmark(_finished(lambda: kernel.backend.step(kernel.flat, plan)))


def test_backend_mean(benchmark, kernel):
    benchmark.group = "mean resnet18 d=3"
    out = torch.empty(PROBLEM.numel, device=DEVICE)
    benchmark(_finished(lambda: kernel.backend.mean(kernel.flat, out)))


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.key)
def test_cycle_of_outer_iterations(benchmark, spec):
    benchmark.group = "cycle (k=5 outer iterations) resnet18 d=3"
    contender = spec.build(PROBLEM)
    # One untimed cycle compiles (torch.compile, Triton) and allocates momentum.
    benchmark.pedantic(_finished(contender.run_cycle), rounds=5, warmup_rounds=1)

"""Shared helpers: deterministic parameters and gradients, and driving Lookaround in the fused style."""

from __future__ import annotations

import itertools

import pytest
import torch

from lookaround_fused import Lookaround

BACKENDS = ("eager", "cpp", "triton")
SHAPES = [(4, 3), (3,), (2, 2, 2), (5,)]
STEPS = 30


def make_params(shapes=SHAPES, seed=0, dtype=torch.float32) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator, dtype=dtype)) for shape in shapes]


def synthetic_grad(weights: torch.Tensor, step: int, branch: int, index: int) -> torch.Tensor:
    """A gradient that depends on the weights, so branches drift apart, plus per-branch noise."""
    generator = torch.Generator().manual_seed(1000 * step + 10 * branch + index)
    noise = torch.randn(weights.shape, generator=generator, dtype=weights.dtype)
    return torch.sin(weights.detach() * (branch + 1)) + 0.5 * noise


def lookaround(params, groups=None, backend="eager", **options) -> Lookaround:
    """Lookaround over ``params``, split into param groups of the given sizes and settings."""
    if groups is None:
        return Lookaround(params, backend=backend, **options)
    sizes, settings = zip(*groups)
    bounds = list(itertools.accumulate(sizes, initial=0))
    param_groups = [dict(params=params[bounds[g]:bounds[g + 1]], **settings[g]) for g in range(len(sizes))]
    return Lookaround(param_groups, backend=backend, **options)


def fused_step(opt: Lookaround, params, step: int, missing=lambda step, branch, index: False) -> list[list]:
    """One style-1 iteration; returns the gradients each branch received."""
    received = []
    for branch in opt.branches():
        grads = [None if missing(step, branch, i) else synthetic_grad(p, step, branch, i)
                 for i, p in enumerate(params)]
        for p, g in zip(params, grads):
            p.grad = g
        received.append(grads)
    opt.step()
    opt.zero_grad()
    return received


def branch_weights(opt: Lookaround) -> list[torch.Tensor]:
    return [state["branch_weights"] for state in opt.state_dict()["state"].values()]


def reference_weights(reference: ReferenceLookaround) -> list[torch.Tensor]:
    return [torch.stack([copies[i].detach() for copies in reference.branches]) for i in range(len(SHAPES))]


def assert_same_weights(actual, expected, backend):
    tolerance = dict(rtol=0, atol=0) if backend == "eager" else dict(rtol=1e-5, atol=1e-5)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, **tolerance)


def check_backend(name):
    try:
        Lookaround(make_params(), backend=name)
    except RuntimeError as error:
        pytest.skip(str(error))

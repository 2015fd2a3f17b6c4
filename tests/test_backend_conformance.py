"""Every fused backend against the eager oracle, one step at a time, on the flat buffers directly."""

from __future__ import annotations

import itertools

import pytest
import torch

from lookaround_fused.backends import StepPlan, resolve_backend
from lookaround_fused.backends.eager import EagerBackend
from lookaround_fused.flat import FlatGroup

FUSED_BACKENDS = ("cpp", "triton")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

HYPERPARAMETERS = [
    dict(momentum=m, dampening=d, nesterov=n, weight_decay=wd, maximize=mx)
    for m, d, n, wd, mx in itertools.product((0.0, 0.9), (0.0, 0.3), (False, True), (0.0, 1e-2), (False, True))
    if not (n and (m == 0 or d != 0))
]


def _backend(name: str):
    try:
        return resolve_backend(name, DEVICE)
    except RuntimeError as error:
        pytest.skip(str(error))


def _assert_matches(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """fp32/fp64: relative 1e-6; fp16/bf16: at most one ulp (adjacent bit patterns)."""
    if expected.dtype in (torch.float16, torch.bfloat16):
        bits = (actual.view(torch.int16).int() - expected.view(torch.int16).int()).abs()
        assert int(bits.max()) <= 1, f"{int((bits > 1).sum())} elements more than one ulp apart"
    else:
        torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6)


def _twin_flats(shapes, groups, num_branches, dtype, seed=0, grad_fraction=1.0, ready_fraction=1.0,
                separate_grads=True):
    """Two identical flat groups with random weights, gradients, momentum and flags.

    Without ``separate_grads`` every branch shares one gradient row (stride 0), as in the drop-in style.
    """
    generator = torch.Generator().manual_seed(seed)
    params = [torch.randn(shape, generator=generator).to(DEVICE, dtype) for shape in shapes]
    flats = [FlatGroup([p.clone() for p in params], groups, num_branches) for _ in range(2)]
    weights = torch.randn(flats[0].weights.shape, generator=generator)
    grads = torch.randn(flats[0].weights.shape, generator=generator)
    momentum = torch.randn(flats[0].weights.shape, generator=generator)
    has_grad = torch.rand(num_branches, len(shapes), generator=generator) < grad_fraction
    ready = torch.rand(num_branches, len(shapes), generator=generator) < ready_fraction
    for flat in flats:
        if separate_grads:
            flat.separate_branch_gradients()
            flat.grads.copy_(grads)
        else:
            flat.grads[0].copy_(grads[0])
        flat.weights.copy_(weights)
        flat.ensure_momentum().copy_(momentum)
        for b in range(num_branches):
            flat.has_grad[b][:] = bytes(has_grad[b].tolist())
        flat.momentum_ready.copy_(ready)
    return flats


def _run(backend, flats, plan):
    EagerBackend().step(flats[0], plan)
    backend.step(flats[1], plan)
    _assert_matches(flats[1].weights, flats[0].weights)
    _assert_matches(flats[1].momentum, flats[0].momentum)


def _group(lr=0.1, **hyperparameters):
    defaults = dict(lr=lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0, maximize=False)
    return {**defaults, **hyperparameters}


@pytest.mark.parametrize("backend_name", FUSED_BACKENDS)
@pytest.mark.parametrize("hyper", HYPERPARAMETERS, ids=lambda h: "-".join(f"{k}={v}" for k, v in h.items()))
def test_every_hyperparameter_combination(backend_name, hyper):
    flats = _twin_flats([(7, 3), (1000,), (5,)], [0, 0, 0], 3, torch.float32, ready_fraction=0.5)
    _run(_backend(backend_name), flats, StepPlan(range(3), False, [_group(**hyper)]))


@pytest.mark.parametrize("backend_name", FUSED_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("average", [False, True])
def test_dtypes_and_fused_average(backend_name, dtype, average):
    flats = _twin_flats([(3, 4, 5), (70001,), (1,)], [0, 0, 0], 3, dtype, ready_fraction=0.5)
    group = _group(momentum=0.9, dampening=0.1, weight_decay=1e-2)
    _run(_backend(backend_name), flats, StepPlan(range(3), average, [group]))


@pytest.mark.parametrize("backend_name", FUSED_BACKENDS)
@pytest.mark.parametrize("shapes", [[(1,)], [(65537,)], [(2, 3), (1,), (4099,)]], ids=str)
def test_sizes_that_do_not_fill_a_block(backend_name, shapes):
    flats = _twin_flats(shapes, [0] * len(shapes), 2, torch.float32)
    _run(_backend(backend_name), flats, StepPlan(range(2), True, [_group(momentum=0.9, nesterov=True)]))


@pytest.mark.parametrize("backend_name", FUSED_BACKENDS)
def test_several_groups_missing_gradients_and_fresh_momentum(backend_name):
    flats = _twin_flats([(9,), (300,), (4, 4), (17,)], [0, 1, 1, 2], 3, torch.float32, seed=3,
                        grad_fraction=0.6, ready_fraction=0.5)
    groups = [_group(lr=0.5, momentum=0.9, weight_decay=0.1), _group(lr=torch.tensor(0.05), momentum=0.0),
              _group(lr=0.01, momentum=0.5, dampening=0.5, maximize=True)]
    _run(_backend(backend_name), flats, StepPlan(range(3), torch.tensor(True, device=DEVICE), groups))


@pytest.mark.parametrize("backend_name", FUSED_BACKENDS)
@pytest.mark.parametrize("branch", [0, 2])
@pytest.mark.parametrize("average", [False, True])
def test_single_branch_of_a_drop_in_step(backend_name, branch, average):
    flats = _twin_flats([(33,), (1000,)], [0, 0], 3, torch.float32, ready_fraction=0.5, separate_grads=False)
    assert flats[1].grads.stride(0) == 0
    _run(_backend(backend_name), flats, StepPlan(range(branch, branch + 1), average, [_group(momentum=0.9)]))


@pytest.mark.parametrize("backend_name", FUSED_BACKENDS)
@pytest.mark.parametrize("found_inf", [0.0, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_grad_scale_and_found_inf(backend_name, found_inf, dtype):
    flats = _twin_flats([(100,), (3, 3)], [0, 0], 2, dtype, ready_fraction=0.0)
    for flat in flats:
        flat.grads.mul_(1024)
    before = flats[1].weights.clone(), flats[1].momentum.clone()
    scale = torch.tensor(1024.0, device=DEVICE)
    inf = torch.tensor(found_inf, device=DEVICE)
    average = torch.tensor(True, device=DEVICE) & (inf == 0)
    _run(_backend(backend_name), flats, StepPlan(range(2), average, [_group(momentum=0.9)], scale, inf))
    if found_inf:
        assert torch.equal(flats[1].weights, before[0]) and torch.equal(flats[1].momentum, before[1])
    else:
        assert not torch.equal(flats[1].weights, before[0])


@pytest.mark.parametrize("backend_name", FUSED_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_mean(backend_name, dtype):
    flats = _twin_flats([(1000,), (7,)], [0, 0], 5, dtype)
    expected = torch.empty(flats[0].numel, device=DEVICE, dtype=dtype)
    actual = torch.empty_like(expected)
    EagerBackend().mean(flats[0], expected)
    _backend(backend_name).mean(flats[1], actual)
    _assert_matches(actual, expected)

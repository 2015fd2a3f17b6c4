"""Triton backend checks that the shared conformance suite does not make.

Runs on a CUDA device, or on CPU in Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 when no GPU is present).
"""

from __future__ import annotations

import sys

import pytest
import torch

from lookaround_fused.backends import StepPlan
from lookaround_fused.backends.eager import EagerBackend
from lookaround_fused.backends.triton import TritonBackend
from lookaround_fused.flat import FlatGroup

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
_REASON = TritonBackend.unavailable_reason(DEVICE)
pytestmark = pytest.mark.skipif(_REASON is not None, reason=str(_REASON))

if _REASON is None:
    from lookaround_fused.backends.triton import launcher


def _group(lr=1.0, momentum=0.0, weight_decay=0.0):
    return dict(lr=lr, momentum=momentum, dampening=0.0, nesterov=False, weight_decay=weight_decay, maximize=False)


def _flat(numels, groups, num_branches, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    params = [torch.randn(n, generator=generator).to(DEVICE, dtype) for n in numels]
    flat = FlatGroup(params, groups, num_branches)
    flat.separate_branch_gradients()
    flat.weights.copy_(torch.randn(flat.weights.shape, generator=generator))
    flat.grads.copy_(torch.randn(flat.weights.shape, generator=generator))
    for flags in flat.has_grad:
        flags[:] = bytes([1] * len(numels))
    return flat


def _twins(*args, **kwargs):
    return _flat(*args, **kwargs), _flat(*args, **kwargs)


def _same_bits(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Bit-for-bit equal, except that any NaN matches any NaN."""
    nan = expected.isnan()
    assert torch.equal(actual.isnan(), nan)
    assert torch.equal(actual[~nan].view(torch.int16), expected[~nan].view(torch.int16))


def _awkward_bfloat16_sums(flat: FlatGroup) -> None:
    """Make ``w - g`` hit bf16 rounding ties (both ways), overflow, infinities and NaN in branch 0."""
    ulp = 2.0 ** -7  # bf16 spacing in [1, 2)
    largest = torch.finfo(torch.bfloat16).max  # odd last bit: half an ulp more rounds up to inf
    w = [1.0, 1.0, 1.0, -1.0, largest, float("inf"), float("nan"), 1.0]
    g = [-ulp / 2, -3 * ulp / 2, -ulp / 4, ulp / 2, -(2.0 ** 119), 1.0, 1.0, float("inf")]
    flat.weights[0, : len(w)] = torch.tensor(w)
    flat.grads[0, : len(g)] = torch.tensor(g)


def _round_like_torch(exact: torch.Tensor) -> torch.Tensor:
    """torch's bf16 rounding of fp32 values that truncation would get wrong often enough to notice."""
    expected = exact.to(torch.bfloat16)
    truncated = (exact.contiguous().view(torch.int32) >> 16).to(torch.int16)
    assert int((truncated != expected.view(torch.int16)).sum()) > exact.numel() // 4
    return expected


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NaN and inf on purpose
@pytest.mark.parametrize("average", [False, True])
def test_bfloat16_stores_round_to_nearest_even_exactly(average):
    flat = _flat([4097, 3], [0, 0], 3, torch.bfloat16)
    _awkward_bfloat16_sums(flat)
    exact = flat.weights.float() - flat.grads.float()  # lr = 1: no rounding before the store
    if average:
        stored = exact.bfloat16().float()
        exact = ((stored[0] + stored[1] + stored[2]) / 3).expand_as(stored)
    expected = _round_like_torch(exact)
    TritonBackend().step(flat, StepPlan(range(3), average, [_group()]))
    _same_bits(flat.weights, expected)


def test_bfloat16_nan_with_a_full_payload_stays_nan():
    # 0x7FFFFFFF is the NaN a GPU produces; a rounding bias added to it carries into the sign bit.
    flat = _flat([100], [0], 2, torch.bfloat16)
    nan = torch.tensor(0x7FFFFFFF, dtype=torch.int32).view(torch.float32).to(DEVICE)
    TritonBackend().step(flat, StepPlan(range(2), False, [_group()], grad_scale=nan))
    assert bool(flat.weights.isnan().all())


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # 3e38 on purpose
def test_bfloat16_mean_rounds_to_nearest_even_exactly():
    flat = _flat([5000], [0], 3, torch.bfloat16)
    flat.weights[:, :3] = torch.tensor([[1.0, float("nan"), 3e38], [1.0, 0.0, 3e38], [1.0 + 2.0 ** -7, 0.0, 3e38]])
    expected = _round_like_torch((flat.weights[0].float() + flat.weights[1].float() + flat.weights[2].float()) / 3)
    actual = torch.empty_like(expected)
    TritonBackend().mean(flat, actual)
    _same_bits(actual, expected)


def test_groups_without_momentum_leave_momentum_unallocated():
    flats = _twins([300, 7, 70000], [0, 1, 1], 2, torch.float32)
    groups = [_group(lr=0.5, weight_decay=0.1), _group(lr=torch.tensor(0.05, device=DEVICE))]
    plan = StepPlan(range(2), torch.tensor(True, device=DEVICE), groups)
    EagerBackend().step(flats[0], plan)
    TritonBackend().step(flats[1], plan)
    torch.testing.assert_close(flats[1].weights, flats[0].weights, rtol=1e-6, atol=1e-6)
    assert flats[1].momentum is None


@pytest.mark.parametrize("numels, dtype, expected", [
    ([64, 1000, 4096], torch.float32, 4), ([64, 1000, 4096], torch.bfloat16, 8), ([64, 6], torch.float16, 2),
    ([64, 7], torch.float32, 1), ([64, 8], torch.float64, 2),
], ids=str)
def test_alignment_divides_every_tile_start_length_and_row_stride(numels, dtype, expected):
    flat = _flat(numels, [0] * len(numels), 2, dtype)
    alignment = launcher.alignment(flat)
    assert alignment == expected
    assert flat.weights.stride(0) % alignment == 0 and flat.grads.stride(0) % alignment == 0
    for block in (16, 2048, launcher.block_size(max(numels))):
        assert bool((flat.tiles(block)[:, :2] % alignment == 0).all())


class _LaunchRecorder:
    """Stands in for a kernel: records each ``kernel[grid](*args, **kwargs)`` and runs it."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.launches: list[tuple[tuple, tuple, dict]] = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append((grid, args, kwargs))
            return self.kernel[grid](*args, **kwargs)

        return launch


@pytest.fixture
def recorded(monkeypatch):
    step = _LaunchRecorder(launcher.lookaround_step_kernel)
    mean = _LaunchRecorder(launcher.lookaround_mean_kernel)
    monkeypatch.setattr(launcher, "lookaround_step_kernel", step)
    monkeypatch.setattr(launcher, "lookaround_mean_kernel", mean)
    return step, mean


def test_one_launch_per_step_and_per_mean(recorded):
    step, mean = recorded
    flat = _flat([5, 70000, 300], [0, 0, 1], 3, torch.float32)
    backend = TritonBackend()
    groups = [_group(lr=0.1, momentum=0.9), _group(lr=0.2)]
    flat.ensure_momentum()
    backend.step(flat, StepPlan(range(3), False, groups))
    backend.step(flat, StepPlan(range(1, 2), True, groups))
    backend.mean(flat, torch.empty(flat.numel, device=DEVICE))
    tiles = flat.tiles(launcher.block_size(max(flat.numels))).shape[0]
    assert [grid for grid, _, _ in step.launches] == [(tiles,), (tiles,)]
    assert len(mean.launches) == 1


def _compiled_variants(kernel) -> int | None:
    """Variants of ``kernel`` compiled for the current GPU; None in the interpreter, which compiles none."""
    if launcher.INTERPRETED:
        return None
    return len(kernel.device_caches[torch.cuda.current_device()][0])


def test_new_lr_values_and_branches_reuse_the_compiled_kernel(recorded):
    step, _ = recorded
    flats = _twins([70001, 9], [0, 0], 3, torch.float32)
    for flat in flats:
        flat.ensure_momentum()
    eager, triton = EagerBackend(), TritonBackend()
    schedule = [0.1, 0.05, torch.tensor(0.02, device=DEVICE), torch.tensor(0.01, device=DEVICE), 0.3, 1e-4]
    branches = [i % 3 for i in range(len(schedule))]  # drop-in style: one branch per step
    compiled = None
    for i, (lr, branch) in enumerate(zip(schedule, branches)):
        plan = StepPlan(range(branch, branch + 1), i == len(schedule) - 1,
                        [_group(lr=lr, momentum=0.9, weight_decay=1e-3)])
        eager.step(flats[0], plan)
        triton.step(flats[1], plan)
        torch.testing.assert_close(flats[1].weights, flats[0].weights, rtol=1e-6, atol=1e-6)
        for flat in flats:
            flat.momentum_ready[branch] = True  # what the optimizer records after the step
        if i == 0:
            compiled = _compiled_variants(step.kernel)
    assert compiled is None or _compiled_variants(step.kernel) == compiled

    # Nothing Triton specialises on may depend on lr: no Python floats, the same scalars and
    # constants every launch; only the branch range (not specialised) changes.
    scalars = [[a for a in args if not isinstance(a, torch.Tensor)] for _, args, _ in step.launches]
    assert not any(isinstance(a, float) for launch in scalars for a in launch)
    assert all(launch[:-2] == scalars[0][:-2] for launch in scalars)
    assert [launch[-2:] for launch in scalars] == [[b, b + 1] for b in branches]
    assert all(kwargs == step.launches[0][2] for _, _, kwargs in step.launches)


def test_empty_group_launches_nothing(recorded):
    step, mean = recorded
    flat = FlatGroup([torch.empty(0, device=DEVICE)], [0], 2)
    TritonBackend().step(flat, StepPlan(range(2), True, [_group()]))
    TritonBackend().mean(flat, torch.empty(0, device=DEVICE))
    assert step.launches == [] and mean.launches == []


def test_unavailable_reasons(monkeypatch):
    assert TritonBackend.unavailable_reason(DEVICE) is None
    assert "CUDA" in TritonBackend.unavailable_reason(torch.device("meta"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(launcher, "INTERPRETED", False)
    assert "before importing triton" in TritonBackend.unavailable_reason(torch.device("cpu"))
    monkeypatch.delenv("TRITON_INTERPRET")
    assert "TRITON_INTERPRET=1" in TritonBackend.unavailable_reason(torch.device("cpu"))
    monkeypatch.setitem(sys.modules, "triton", None)  # what an absent package looks like to import
    assert "not installed" in TritonBackend.unavailable_reason(DEVICE)

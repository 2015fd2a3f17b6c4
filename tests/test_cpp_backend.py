"""C++ backend specifics the shared conformance suite does not cover: threads, rounding, loading."""

from __future__ import annotations

import sys

import pytest
import torch

from lookaround_fused import _extension
from lookaround_fused.backends import StepPlan, resolve_backend
from lookaround_fused.backends.cpp import CppBackend
from lookaround_fused.backends.eager import EagerBackend
from lookaround_fused.flat import FlatGroup

_UNAVAILABLE = CppBackend.unavailable_reason(torch.device("cpu"))
needs_extension = pytest.mark.skipif(_UNAVAILABLE is not None, reason=str(_UNAVAILABLE))
needs_sources = pytest.mark.skipif(not all(path.exists() for path in _extension.sources(with_cuda=False)),
                                   reason="csrc/ is not there to build from (an installed copy)")

MOMENTUM_GROUP = dict(lr=0.05, momentum=0.9, dampening=0.1, nesterov=False, weight_decay=1e-3, maximize=False)


def _random_flat(shapes, num_branches, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    flat = FlatGroup([torch.zeros(shape, dtype=dtype) for shape in shapes], [0] * len(shapes), num_branches)
    flat.separate_branch_gradients()
    for buffer in (flat.weights, flat.grads, flat.ensure_momentum()):
        buffer.copy_(torch.randn(buffer.shape, generator=generator))
    for b in range(num_branches):
        flat.has_grad[b][:] = bytes([1] * len(shapes))
    flat.momentum_ready.copy_(torch.rand(flat.momentum_ready.shape, generator=generator) < 0.5)
    return flat


def _clone(flat: FlatGroup) -> FlatGroup:
    twin = _random_flat([p.shape for p in flat.params], flat.num_branches, flat.dtype)
    for name in ("weights", "grads", "momentum", "momentum_ready"):
        getattr(twin, name).copy_(getattr(flat, name))
    return twin


@pytest.fixture
def threads():
    """Restores torch's intra-op thread count after the test."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@needs_extension
def test_large_step_is_identical_on_one_and_two_threads(threads):
    # Several parameters, one of them split between threads, and a pass-sized remainder.
    flat = _random_flat([(300_001,), (17,), (250_000,), (1025,)], 3)
    plan = StepPlan(range(3), True, [MOMENTUM_GROUP])
    results = []
    for count in (1, 2):
        threads(count)
        twin = _clone(flat)
        CppBackend().step(twin, plan)
        results.append(twin)
    assert torch.equal(results[0].weights, results[1].weights)
    assert torch.equal(results[0].momentum, results[1].momentum)
    EagerBackend().step(flat, plan)
    torch.testing.assert_close(results[1].weights, flat.weights, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(results[1].momentum, flat.momentum, rtol=1e-6, atol=1e-6)


@needs_extension
@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
                    reason="PyTorch fuses multiply-adds only in its AVX2 and AVX-512 kernels")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_step_is_bitwise_eager_where_both_use_fma(dtype):
    flat = _random_flat([(5000,), (33,)], 3, dtype)
    twin = _clone(flat)
    plan = StepPlan(range(3), True, [dict(MOMENTUM_GROUP, nesterov=True, dampening=0.0)], torch.tensor(3.0))
    EagerBackend().step(flat, plan)
    CppBackend().step(twin, plan)
    assert torch.equal(twin.weights, flat.weights) and torch.equal(twin.momentum, flat.momentum)


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("num_branches", [2, 3])
def test_mean_rounds_half_types_to_nearest_even(dtype, num_branches):
    """Means of every bit pattern but NaN: ties, subnormals and infinities round as in PyTorch."""
    patterns = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    patterns = patterns[~patterns.float().isnan()]
    flat = FlatGroup([torch.zeros(patterns.numel(), dtype=dtype)], [0], num_branches)
    generator = torch.Generator().manual_seed(num_branches)
    for b in range(num_branches):
        flat.weights[b] = patterns[torch.randperm(patterns.numel(), generator=generator)]
    expected, actual = torch.empty_like(patterns), torch.empty_like(patterns)
    EagerBackend().mean(flat, expected)
    CppBackend().mean(flat, actual)
    same = (actual.view(torch.int16) == expected.view(torch.int16)) | (actual.isnan() & expected.isnan())
    assert bool(same.all()), f"{int((~same).sum())} of {patterns.numel()} means differ"


@needs_extension
def test_mean_into_the_math_dtype():
    flat = _random_flat([(999,)], 4, torch.float16)
    expected, actual = torch.empty(999), torch.empty(999)
    EagerBackend().mean(flat, expected)
    CppBackend().mean(flat, actual)
    assert torch.equal(actual, expected)


@needs_extension
def test_inputs_are_checked():
    flat = _random_flat([(10,)], 2)
    with pytest.raises(RuntimeError, match="out of range"):
        CppBackend().step(flat, StepPlan(range(1, 3), False, [MOMENTUM_GROUP]))
    with pytest.raises(RuntimeError, match="out must be"):
        CppBackend().mean(flat, torch.empty(10, dtype=torch.float16))


@needs_extension
def test_missing_momentum_buffers_are_an_error():
    flat = FlatGroup([torch.zeros(4)], [0], 2)
    with pytest.raises(ValueError, match="momentum"):
        CppBackend().step(flat, StepPlan(range(2), False, [MOMENTUM_GROUP]))


@pytest.fixture
def fresh_loader(monkeypatch):
    """A loader that has not loaded anything yet and finds no prebuilt module."""
    monkeypatch.setattr(_extension, "_module", None)
    monkeypatch.setattr(_extension, "_failure", None)
    monkeypatch.setitem(sys.modules, "lookaround_fused._C", None)  # import raises ModuleNotFoundError
    return monkeypatch


@needs_extension
@needs_sources
def test_builds_just_in_time_without_a_prebuilt_module(fresh_loader):
    fresh_loader.setattr(torch.cuda, "is_available", lambda: False)  # a CPU-only build: seconds, not minutes
    assert _extension.load().__name__ == "lookaround_fused_cpu"
    flat = _random_flat([(100,), (7,)], 2)
    twin = _clone(flat)
    plan = StepPlan(range(2), True, [MOMENTUM_GROUP])
    EagerBackend().step(flat, plan)
    CppBackend().step(twin, plan)
    torch.testing.assert_close(twin.weights, flat.weights, rtol=1e-6, atol=1e-6)


@needs_sources
def test_without_a_compiler_cpp_says_why_and_auto_falls_back_to_eager(fresh_loader):
    fresh_loader.setenv("CXX", "no-such-compiler")
    fresh_loader.setattr("lookaround_fused.backends._warned_fallbacks", set())
    with pytest.raises(RuntimeError, match="backend='cpp' cannot run on cpu: .*no C\\+\\+ compiler"):
        resolve_backend("cpp", torch.device("cpu"))
    with pytest.warns(RuntimeWarning, match="falls back to the slow eager backend"):
        assert resolve_backend("auto", torch.device("cpu")).name == "eager"


def test_cuda_needs_an_extension_built_with_cuda(monkeypatch):
    monkeypatch.setattr(_extension, "_module", type("CpuOnlyBuild", (), {"has_cuda": False}))
    monkeypatch.setattr(_extension, "_failure", None)
    assert "built without CUDA kernels" in CppBackend.unavailable_reason(torch.device("cuda"))

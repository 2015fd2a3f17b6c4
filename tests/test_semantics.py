"""Lookaround against the plainly written reference and torch.optim.SGD, in both usage styles."""

from __future__ import annotations

import itertools

import pytest
import torch

from lookaround_fused import Lookaround

from .helpers import (BACKENDS, STEPS, assert_same_weights, branch_weights, check_backend, fused_step,
                      lookaround, make_params, reference_weights, synthetic_grad)
from .reference import ReferenceLookaround

HYPERPARAMETER_GRID = [
    dict(lr=0.05, momentum=m, dampening=d, nesterov=n, weight_decay=wd, maximize=mx)
    for m, d, n, wd, mx in itertools.product((0.0, 0.9), (0.0, 0.2), (False, True), (0.0, 1e-2), (False, True))
    if not (n and (m == 0 or d != 0))
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hyper", HYPERPARAMETER_GRID, ids=lambda h: "-".join(f"{k}={v}" for k, v in h.items()))
def test_fused_style_matches_reference_for_every_hyperparameter(backend, hyper):
    check_backend(backend)
    params = make_params()
    reference = ReferenceLookaround(params, [len(params)], [hyper], 3, 2)
    opt = lookaround(params, backend=backend, num_branches=3, average_every=2, **hyper)
    for step in range(STEPS):
        reference.step(fused_step(opt, params, step))
    assert_same_weights(branch_weights(opt), reference_weights(reference), backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_branches,average_every", itertools.product((1, 2, 3, 5), (1, 2, 5)))
def test_branch_and_period_grid_with_groups_and_scheduler(backend, num_branches, average_every):
    check_backend(backend)
    params = make_params()
    groups = [(2, dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=1e-2, nesterov=True, maximize=False)),
              (2, dict(lr=0.02, momentum=0.5, dampening=0.3, weight_decay=0.0, nesterov=False, maximize=False))]
    schedule = lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)  # noqa: E731
    reference = ReferenceLookaround(params, [2, 2], [g for _, g in groups], num_branches, average_every, schedule)
    opt = lookaround(params, groups, backend=backend, num_branches=num_branches, average_every=average_every)
    scheduler = schedule(opt)
    for step in range(STEPS):
        reference.step(fused_step(opt, params, step))
        reference.step_schedulers()
        scheduler.step()
    assert_same_weights(branch_weights(opt), reference_weights(reference), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_gradients_are_skipped_per_branch(backend):
    """A parameter without a gradient in a branch gets no decay and no momentum there, as in SGD."""
    check_backend(backend)
    params = make_params()
    hyper = dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.1)
    missing = lambda step, branch, index: (step + branch + index) % 3 == 0 or (index == 3 and step < 4)  # noqa
    reference = ReferenceLookaround(params, [len(params)], [hyper], 3, 3)
    opt = lookaround(params, backend=backend, num_branches=3, average_every=3, **hyper)
    for step in range(STEPS):
        reference.step(fused_step(opt, params, step, missing))
    assert_same_weights(branch_weights(opt), reference_weights(reference), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tensor_lr_with_scheduler(backend):
    check_backend(backend)
    params = make_params()
    hyper = dict(lr=torch.tensor(0.1), momentum=0.9)
    schedule = lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)  # noqa: E731
    reference = ReferenceLookaround(params, [len(params)], [hyper], 2, 2, schedule)
    opt = lookaround(params, backend=backend, num_branches=2, average_every=2, lr=torch.tensor(0.1), momentum=0.9)
    scheduler = schedule(opt)
    for step in range(10):
        reference.step(fused_step(opt, params, step))
        reference.step_schedulers()
        scheduler.step()
    assert_same_weights(branch_weights(opt), reference_weights(reference), backend)


@pytest.mark.parametrize("hyper", HYPERPARAMETER_GRID[::3], ids=str)
def test_one_branch_is_torch_sgd(hyper):
    params, twins = make_params(), make_params()
    opt = lookaround(params, num_branches=1, average_every=3, **hyper)
    sgd = torch.optim.SGD(twins, **hyper)
    for step in range(STEPS):
        for p, twin, i in zip(params, twins, itertools.count()):
            p.grad = synthetic_grad(p, step, 0, i)
            twin.grad = p.grad.clone()
        opt.step()
        sgd.step()
    for p, twin in zip(params, twins):
        assert torch.equal(p, twin)


def test_drop_in_style_equals_fused_style():
    """step() once per branch without branches() gives the fused style's weights."""
    hyper = dict(lr=0.05, momentum=0.9, weight_decay=1e-2)
    fused_params, drop_in_params = make_params(), make_params()
    fused = lookaround(fused_params, num_branches=3, average_every=2, **hyper)
    drop_in = Lookaround(drop_in_params, head_num=3, frequence=2, backend="eager", **hyper)
    for step in range(STEPS):
        fused_step(fused, fused_params, step)
        for branch in range(3):
            assert drop_in.active_branch == branch
            drop_in.zero_grad()
            for i, p in enumerate(drop_in_params):
                p.grad = synthetic_grad(p, step, branch, i)
            drop_in.step()
    assert_same_weights(branch_weights(drop_in), branch_weights(fused), "eager")
    for a, b in zip(fused_params, drop_in_params):
        assert torch.equal(a, b)


def test_model_holds_branch_zero_and_the_mean_after_an_average():
    params = make_params()
    opt = lookaround(params, num_branches=3, average_every=2, lr=0.1, momentum=0.9)
    fused_step(opt, params, 0)
    weights = branch_weights(opt)
    assert not torch.equal(weights[0][0], weights[0][1])
    for p, w in zip(params, weights):
        assert torch.equal(p.detach(), w[0])
    fused_step(opt, params, 1)
    for p, w in zip(params, branch_weights(opt)):
        assert all(torch.equal(w[b], w[0]) for b in range(3)) and torch.equal(p.detach(), w[0])


def test_averaged_loads_the_mean_and_restores_the_branch():
    params = make_params()
    opt = lookaround(params, num_branches=3, average_every=5, lr=0.1)
    fused_step(opt, params, 0)
    before = [p.detach().clone() for p in params]
    with opt.averaged():
        for p, w in zip(params, branch_weights(opt)):
            torch.testing.assert_close(p.detach(), w.sum(0) / 3, rtol=0, atol=1e-7)
        with pytest.raises(RuntimeError, match="inside `with optimizer.averaged"):
            opt.step()
    for i, (p, b) in enumerate(zip(params, before)):
        assert torch.equal(p.detach(), b)
        assert p.data_ptr() == opt.flat_groups[0].weight_view(0, i).data_ptr()


def test_real_model_with_autograd_and_gradient_accumulation():
    """Gradients from backward land in each branch; a second loop without zero_grad accumulates."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    copies = [torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)) for _ in range(2)]
    for copy in copies:
        copy.load_state_dict(model.state_dict())
    opt = Lookaround(model.parameters(), lr=0.1, momentum=0.9, num_branches=2, average_every=2, backend="eager")
    sgds = [torch.optim.SGD(copy.parameters(), lr=0.1, momentum=0.9) for copy in copies]
    x = torch.randn(8, 6)
    for step in range(4):
        for micro in range(2):
            for b in opt.branches():
                model(x * (b + 1) + micro).square().mean().backward()
                copies[b](x * (b + 1) + micro).square().mean().backward()
        opt.step()
        opt.zero_grad()
        for sgd in sgds:
            sgd.step()
            sgd.zero_grad()
        if (step + 1) % 2 == 0:
            with torch.no_grad():
                for ps in zip(*(c.parameters() for c in copies)):
                    mean = (ps[0] + ps[1]) / 2
                    for p in ps:
                        p.copy_(mean)
    for p, q in zip(model.parameters(), copies[0].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_parameters_of_several_dtypes_get_separate_buffers():
    params = make_params()[:2] + make_params(dtype=torch.float64)[2:]
    twins = [p.detach().clone().requires_grad_() for p in params]
    opt = lookaround(params, num_branches=1, lr=0.1, momentum=0.9)
    sgd = torch.optim.SGD(twins, lr=0.1, momentum=0.9)
    assert sorted(str(f.dtype) for f in opt.flat_groups) == ["torch.float32", "torch.float64"]
    for step in range(5):
        for i, (p, twin) in enumerate(zip(params, twins)):
            p.grad = synthetic_grad(p, step, 0, i)
            twin.grad = p.grad.clone()
        opt.step()
        sgd.step()
    assert all(torch.equal(p, t) and p.dtype == t.dtype for p, t in zip(params, twins))


def test_channels_last_parameter_keeps_its_layout():
    conv = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    opt = Lookaround(conv.parameters(), lr=0.1, num_branches=2, backend="eager")
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    for b in opt.branches():
        conv(torch.randn(1, 3, 5, 5).to(memory_format=torch.channels_last)).sum().backward()
    opt.step()
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_add_param_group_joins_the_flat_buffers():
    params = make_params()
    opt = lookaround(params[:2], num_branches=2, average_every=3, lr=0.1, momentum=0.9)
    fused_step(opt, params[:2], 0)
    before = branch_weights(opt)
    opt.add_param_group(dict(params=params[2:], lr=0.01))
    after = branch_weights(opt)
    assert len(opt.flat_groups) == 1 and opt.flat_groups[0].num_params == 4
    assert all(torch.equal(a, b) for a, b in zip(after, before))
    assert torch.equal(after[2][1], params[2].detach())
    fused_step(opt, params, 1)
    assert opt.param_groups[1]["lr"] == 0.01


def test_step_without_any_gradient_changes_nothing():
    params = make_params()
    opt = lookaround(params, num_branches=2, average_every=1, lr=0.1, momentum=0.9)
    before = opt.state_dict()
    for _ in opt.branches():
        pass
    opt.step()
    opt.step()
    after = opt.state_dict()
    assert after["lookaround"] == before["lookaround"]
    assert all(torch.equal(a["branch_weights"], b["branch_weights"])
               for a, b in zip(after["state"].values(), before["state"].values()))


def test_zero_grad_without_set_to_none_keeps_zero_gradients():
    params = make_params()
    opt = lookaround(params, num_branches=2, lr=0.1, weight_decay=0.5)
    for b in opt.branches():
        for i, p in enumerate(params):
            p.grad = synthetic_grad(p, 0, b, i)
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in params)
    before = [p.detach().clone() for p in params]
    opt.step()  # zero gradients still count: weight decay applies
    assert all(torch.allclose(p, b * (1 - 0.1 * 0.5)) for p, b in zip(params, before))


def test_drop_in_style_holds_one_gradient_row_until_the_fused_style_starts():
    params = make_params()
    opt = lookaround(params, num_branches=3, average_every=2, lr=0.1, momentum=0.9)
    assert opt.flat_groups[0].grads.stride(0) == 0
    for _ in range(3):  # one drop-in rotation (around step 0), then switch styles
        for i, p in enumerate(params):
            p.grad = synthetic_grad(p, 0, opt.active_branch, i)
        opt.step()
    twin_params = make_params()
    twin = lookaround(twin_params, num_branches=3, average_every=2, lr=0.1, momentum=0.9)
    for branch in twin.branches():
        for i, p in enumerate(twin_params):
            p.grad = synthetic_grad(p, 0, branch, i)
    twin.step()
    for step in range(1, 4):
        fused_step(opt, params, step)
        fused_step(twin, twin_params, step)
    assert opt.flat_groups[0].grads.stride(0) == opt.flat_groups[0].numel
    assert all(torch.equal(a, b) for a, b in zip(branch_weights(opt), branch_weights(twin)))

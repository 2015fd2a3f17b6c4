"""torch.amp.GradScaler: the optimizer unscales itself and an overflow changes nothing at all."""

from __future__ import annotations

import pytest
import torch

from .helpers import BACKENDS, branch_weights, check_backend, lookaround, make_params, synthetic_grad

HYPER = dict(lr=0.05, momentum=0.9, dampening=0.2, weight_decay=1e-2, num_branches=3, average_every=2)
STEPS = 7


def scaled_fused_step(opt, params, scaler, step, overflow_branch=None):
    """A style-1 step under GradScaler; ``overflow_branch`` gets an inf gradient."""
    scale = scaler.scale(torch.ones(()))
    for branch in opt.branches():
        for i, p in enumerate(params):
            p.grad = synthetic_grad(p, step, branch, i) * scale
            if branch == overflow_branch and i == 1:
                p.grad[0] = float("inf")
    scaler.step(opt)
    scaler.update()
    opt.zero_grad()


def plain_fused_step(opt, params, step):
    for branch in opt.branches():
        for i, p in enumerate(params):
            p.grad = synthetic_grad(p, step, branch, i)
    opt.step()
    opt.zero_grad()


def assert_unchanged(opt, before):
    after = opt.state_dict()
    assert after["lookaround"] == before["lookaround"]
    for a, b in zip(after["state"].values(), before["state"].values()):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("overflow_branch", [0, 2], ids=["hidden-branch", "active-branch"])
@pytest.mark.parametrize("overflow_step", [0, 3], ids=["first-step", "mid-cycle"])
def test_overflow_skips_the_step_entirely(backend, overflow_branch, overflow_step):
    """Branch 2 is the one GradScaler sees after the loop; branch 0's overflow only the optimizer can see."""
    check_backend(backend)
    params, expected_params = make_params(), make_params()
    opt = lookaround(params, backend=backend, **HYPER)
    expected = lookaround(expected_params, backend=backend, **HYPER)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    for step in range(STEPS):
        if step == overflow_step:
            before, scale = opt.state_dict(), scaler.get_scale()
            scaled_fused_step(opt, params, scaler, step, overflow_branch)
            assert_unchanged(opt, before)
            assert opt.active_branch == 0
            # GradScaler sees a hidden branch's overflow once the optimizer knows a scaler is in use.
            lowered = overflow_branch == 2 or overflow_step > 0
            assert scaler.get_scale() == (scale * 0.5 if lowered else scale)
        else:
            scaled_fused_step(opt, params, scaler, step)
            plain_fused_step(expected, expected_params, step)
    for a, b in zip(branch_weights(opt), branch_weights(expected)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_drop_in_style_overflow_does_not_rotate():
    params, expected_params = make_params(), make_params()
    opt = lookaround(params, **HYPER)
    expected = lookaround(expected_params, **HYPER)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    for step in range(4):
        for branch in range(3):
            scale = scaler.scale(torch.ones(()))
            for i, (p, q) in enumerate(zip(params, expected_params)):
                p.grad = synthetic_grad(p, step, branch, i) * scale
                q.grad = synthetic_grad(q, step, branch, i)
            if step == 1 and branch == 1:
                params[0].grad[0, 0] = float("nan")
                scaler.step(opt)
                scaler.update()
                assert opt.active_branch == 1
                scale = scaler.scale(torch.ones(()))
                for i, p in enumerate(params):
                    p.grad = synthetic_grad(p, step, branch, i) * scale
            scaler.step(opt)
            scaler.update()
            expected.step()
    assert all(torch.equal(a, b) for a, b in zip(branch_weights(opt), branch_weights(expected)))


def test_unscale_before_step_is_refused_in_the_fused_style():
    params = make_params()
    opt = lookaround(params, **HYPER)
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(torch.ones(()))
    for branch in opt.branches():
        for i, p in enumerate(params):
            p.grad = synthetic_grad(p, 0, branch, i)
    scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="GradScaler.unscale_"):
        scaler.step(opt)

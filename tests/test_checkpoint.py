"""state_dict: bitwise resume, backend- and device-independent layout, and rejection of foreign state."""

from __future__ import annotations

import io

import pytest
import torch

from lookaround_fused import Lookaround

from .helpers import branch_weights, fused_step, lookaround, make_params, synthetic_grad

HYPER = dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-2, num_branches=3, average_every=4)


def roundtrip(state_dict: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def drop_in_step(opt: Lookaround, params, step: int) -> None:
    opt.zero_grad()
    for i, p in enumerate(params):
        p.grad = synthetic_grad(p, step, opt.active_branch, i)
    opt.step()


def snapshot(opt: Lookaround) -> list[torch.Tensor]:
    state = opt.state_dict()
    return [t for s in state["state"].values() for t in s.values()] + [torch.tensor(list(state["lookaround"].values()))]


def interrupted_and_uninterrupted(step_fn, stop: int, total: int) -> tuple[Lookaround, list, Lookaround, list]:
    """Train ``total`` steps in one go, and ``stop`` steps, a save, a load into a fresh model, the rest."""
    params = make_params()
    uninterrupted = lookaround(params, **HYPER)
    for step in range(total):
        step_fn(uninterrupted, params, step)
    first = make_params()
    opt = lookaround(first, **HYPER)
    for step in range(stop):
        step_fn(opt, first, step)
    resumed_params = make_params(seed=99)  # a freshly built model with other weights
    resumed = lookaround(resumed_params, **HYPER)
    resumed.load_state_dict(roundtrip(opt.state_dict()))
    assert resumed.active_branch == opt.active_branch
    assert all(torch.equal(p, q) for p, q in zip(resumed_params, first))
    for step in range(stop, total):
        step_fn(resumed, resumed_params, step)
    return resumed, resumed_params, uninterrupted, params


@pytest.mark.parametrize("style,stop", [("fused", 3), ("fused", 6), ("fused", 7), ("drop-in", 8), ("drop-in", 9)])
def test_resume_is_bitwise(style, stop):
    """Mid-cycle (fused, k=4) and mid-rotation (drop-in, 8 and 9 calls leave branch 2 and 0 active)."""
    step_fn = fused_step if style == "fused" else drop_in_step
    resumed, resumed_params, uninterrupted, params = interrupted_and_uninterrupted(step_fn, stop, 20)
    assert all(torch.equal(a, b) for a, b in zip(branch_weights(resumed), branch_weights(uninterrupted)))
    assert all(torch.equal(a, b) for a, b in zip(resumed_params, params))


def test_state_dict_layout_is_per_parameter():
    params = make_params()
    opt = lookaround(params, **HYPER)
    fused_step(opt, params, 0)
    state = opt.state_dict()
    assert state["lookaround"] == dict(format_version=1, num_branches=3, average_every=4, updates=3,
                                       active_branch=0)
    for p, entry in zip(params, state["state"].values()):
        assert entry["branch_weights"].shape == (3, *p.shape)
        assert entry["momentum_buffer"].shape == (3, *p.shape)
        assert entry["momentum_ready"].tolist() == [True] * 3
    assert state["param_groups"][0]["params"] == [0, 1, 2, 3]


def test_state_dict_moves_between_backends():
    params = make_params()
    opt = lookaround(params, **HYPER)
    fused_step(opt, params, 0)
    other_params = make_params(seed=3)
    available = [name for name in ("cpp", "eager") if _constructs(name)]
    other = lookaround(other_params, backend=available[0], **HYPER)
    other.load_state_dict(roundtrip(opt.state_dict()))
    fused_step(opt, params, 1)
    fused_step(other, other_params, 1)
    for a, b in zip(branch_weights(other), branch_weights(opt)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def _constructs(backend: str) -> bool:
    try:
        Lookaround(make_params(), backend=backend)
    except RuntimeError:
        return False
    return True


def _corrupt(state: dict, how: str) -> dict:
    if how == "truncated":
        del state["state"][2]
    elif how == "wrong shape":
        state["state"][1]["branch_weights"] = state["state"][1]["branch_weights"][:, :1]
    elif how == "not a tensor":
        state["state"][0]["momentum_buffer"] = [1.0, 2.0]
    elif how == "bad counter":
        state["lookaround"]["updates"] = -1
    elif how == "inconsistent branch":
        state["lookaround"]["active_branch"] = 1
    elif how == "foreign":
        state = torch.optim.SGD(make_params(), lr=0.1).state_dict()
    elif how == "string keys":
        state["state"] = {str(k): v for k, v in state["state"].items()}
    elif how == "bad lr":
        state["param_groups"][0]["lr"] = -1.0
    return state


@pytest.mark.parametrize("how", ["truncated", "wrong shape", "not a tensor", "bad counter", "inconsistent branch",
                                 "foreign", "string keys", "bad lr"])
def test_damaged_state_dict_raises_and_changes_nothing(how):
    params = make_params()
    opt = lookaround(params, **HYPER)
    fused_step(opt, params, 0)
    damaged = _corrupt(roundtrip(opt.state_dict()), how)
    fused_step(opt, params, 1)
    before, model_before = snapshot(opt), [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match="Cannot load Lookaround state dict"):
        opt.load_state_dict(damaged)
    assert all(torch.equal(a, b) for a, b in zip(snapshot(opt), before))
    assert all(torch.equal(p, b) for p, b in zip(params, model_before))


def test_state_dict_of_another_model_or_branch_count_raises():
    params = make_params()
    opt = lookaround(params, **HYPER)
    other_model = lookaround(make_params(shapes=[(4, 3), (3,), (2, 2, 2), (6,)]), **HYPER)
    with pytest.raises(ValueError, match=r"branch_weights of parameter 3 is \[3, 5\], expected .*\[3, 6\]"):
        other_model.load_state_dict(opt.state_dict())
    two_branches = lookaround(make_params(), **{**HYPER, "num_branches": 2})
    with pytest.raises(ValueError, match="it has 3 branches, this optimizer has 2"):
        two_branches.load_state_dict(opt.state_dict())
    fewer = lookaround(make_params()[:3], **HYPER)
    with pytest.raises(ValueError, match="different number of parameters"):
        fewer.load_state_dict(opt.state_dict())

"""Bad input gets a clear error and leaves everything as it was."""

from __future__ import annotations

import pytest
import torch

from lookaround_fused import Lookaround

from .helpers import fused_step, lookaround, make_params


@pytest.mark.parametrize("options,message", [
    (dict(lr=-0.1), "Invalid learning rate: -0.1"),
    (dict(lr=torch.tensor([0.1, 0.2])), "Tensor lr must be 1-element"),
    (dict(momentum=-0.5), "Invalid momentum value: -0.5"),
    (dict(weight_decay=-1e-4), "Invalid weight_decay value: -0.0001"),
    (dict(nesterov=True), "Nesterov momentum requires a momentum and zero dampening"),
    (dict(nesterov=True, momentum=0.9, dampening=0.1), "Nesterov momentum requires a momentum and zero dampening"),
    (dict(num_branches=0), r"Invalid num_branches: 0 \(must be an integer >= 1\)"),
    (dict(num_branches=2.5), r"Invalid num_branches: 2.5"),
    (dict(average_every=0), r"Invalid average_every: 0 \(must be an integer >= 1\)"),
    (dict(num_branches=3, head_num=2), "num_branches=3 and its alias head_num=2 disagree"),
    (dict(average_every=5, frequence=4), "average_every=5 and its alias frequence=4 disagree"),
    (dict(backend="cuda"), "Invalid backend: 'cuda'"),
])
def test_invalid_arguments(options, message):
    with pytest.raises(ValueError, match=message):
        Lookaround(make_params(), **{"lr": 0.1, **options})


def test_aliases_are_accepted():
    opt = Lookaround(make_params(), lr=0.1, head_num=4, frequence=7, num_branches=4)
    assert (opt.num_branches, opt.average_every) == (4, 7)


def test_invalid_param_group_is_rejected_without_trace():
    params = make_params()
    opt = Lookaround(params[:2], lr=0.1)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        opt.add_param_group(dict(params=params[2:], lr=-1.0))
    assert len(opt.param_groups) == 1 and opt.flat_groups[0].num_params == 2


@pytest.mark.parametrize("param,message", [
    (torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64)), "does not support complex parameters"),
    (torch.nn.Parameter(torch.zeros(4, 4)[:, :2]), "needs dense parameters"),
])
def test_unsupported_parameters(param, message):
    with pytest.raises(ValueError, match=message):
        Lookaround([param], lr=0.1)


def test_sparse_gradient_raises():
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    opt = Lookaround(embedding.parameters(), lr=0.1, num_branches=1)
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()


@pytest.mark.parametrize("break_alias,message", [
    (lambda model: model.half(), "it is now torch.float16 on cpu, the optimizer holds torch.float32 on cpu"),
    (lambda model: model.double(), "it is now torch.float64"),
    (lambda model: setattr(model.weight, "data", model.weight.data.clone()), "its data was replaced"),
    (lambda model: model.to(memory_format=torch.channels_last), "its memory layout changed"),
])
def test_broken_aliasing_is_reported(break_alias, message):
    model = torch.nn.Conv2d(3, 4, 3)
    opt = Lookaround(model.parameters(), lr=0.1, num_branches=2)
    break_alias(model)
    with pytest.raises(RuntimeError, match=message + ".*Create Lookaround after the model"):
        for _ in opt.branches():
            pass
    with pytest.raises(RuntimeError, match="no longer aliases"):
        opt.step()


def test_branches_refuses_to_start_mid_rotation():
    params = make_params()
    opt = lookaround(params, num_branches=3, lr=0.1)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    with pytest.raises(RuntimeError, match="left branch 1 active; call step\\(\\) 2 more time"):
        next(iter(opt.branches()))


def test_add_param_group_between_branches_and_step_raises():
    params = make_params()
    opt = lookaround(params[:2], num_branches=2, lr=0.1)
    for _ in opt.branches():
        pass
    with pytest.raises(RuntimeError, match="between branches\\(\\) and step\\(\\)"):
        opt.add_param_group(dict(params=params[2:]))
    assert len(opt.param_groups) == 1
    fused_step(opt, params[:2], 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="triton runs on this machine's GPU")
def test_explicit_backend_that_cannot_run_says_why(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match=r"backend='triton' cannot run on cpu: .*TRITON_INTERPRET"):
        Lookaround(make_params(), lr=0.1, backend="triton")

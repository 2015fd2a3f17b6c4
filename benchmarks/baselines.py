"""What Lookaround is compared with: the reference code's approach and plain PyTorch ways to do the same.

Each baseline computes the same outer iterations as Lookaround (same hyperparameters, every branch
updated once per iteration, the uniform mean of the branches every ``average_every`` iterations),
so the figures differ only by how the work is organised.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.optim.sgd import sgd

from .contender import HYPERPARAMETERS, Contender, Problem


def _parameters_with_grads(problem: Problem) -> list[nn.Parameter]:
    params = [nn.Parameter(t) for t in problem.initial_weights()]
    for p, grad in zip(params, problem.gradients()):
        p.grad = grad
    return params


class ReferenceLoop(Contender):
    """The reference implementation's approach, re-stated (Ardcy/Lookaround, lookaround.py).

    The model holds the active branch; each step runs torch's functional SGD with a Python loop
    over the parameters (``foreach=False``, the same tensor operations as the reference's own
    ``sgd``) for that branch, then points the model's parameters at the next branch's copies. At
    the end of a cycle a Python loop over the parameters averages the ``d`` copies of each one
    with the reference's sequence of tensor operations and writes the mean into every copy.
    State: ``d`` weight copies, ``d`` momentum buffers and the model's one gradient (2d + 1).
    """

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem)
        self.params = _parameters_with_grads(problem)
        self.branch_copies = [[p.detach().clone() for p in self.params] for _ in range(problem.num_branches)]
        self.branch_momentum: list[list[torch.Tensor | None]] = [[None] * len(self.params)
                                                                 for _ in range(problem.num_branches)]
        self._load_branch(0)

    def _load_branch(self, branch: int) -> None:
        for p, weight in zip(self.params, self.branch_copies[branch]):
            p.data = weight

    @torch.no_grad()
    def run_cycle(self) -> None:
        num_branches = self.problem.num_branches
        for _ in range(self.problem.average_every):
            for branch in range(num_branches):
                sgd(self.params, [p.grad for p in self.params], self.branch_momentum[branch], foreach=False,
                    **HYPERPARAMETERS)
                self._load_branch((branch + 1) % num_branches)
        # The reference's arithmetic, temporaries included: scale the first copy, add each scaled
        # copy out of place, assign every result back into the first copy, then copy it into the others.
        for first, *others in zip(*self.branch_copies):
            first.copy_(first * (1 / num_branches))
            for other in others:
                first.copy_(first + other * (1 / num_branches))
            for other in others:
                other.copy_(first)

    def branch_weights(self) -> list[list[torch.Tensor]]:
        return self.branch_copies

    def state_tensors(self) -> list[torch.Tensor]:
        momentum = [m for branch in self.branch_momentum for m in branch if m is not None]
        return [*self.params, *(p.grad for p in self.params), *momentum,
                *(w for branch in self.branch_copies for w in branch)]


class TorchSGDPerBranch(Contender):
    """One ``torch.optim.SGD`` per branch (``fused=True`` or ``foreach=True``), then a foreach average.

    Each branch is its own set of parameters with its own gradients, as ``d`` independent
    models trained side by side would be; the average is ``torch._foreach`` sums over the
    branches, a division and a copy back into every branch.
    """

    def __init__(self, problem: Problem, implementation: Literal["fused", "foreach"]) -> None:
        super().__init__(problem)
        self.branches = [_parameters_with_grads(problem) for _ in range(problem.num_branches)]
        self.optimizers = [torch.optim.SGD(branch, **HYPERPARAMETERS, **{implementation: True})
                           for branch in self.branches]
        self.weights = [[p.detach() for p in branch] for branch in self.branches]

    @torch.no_grad()
    def run_cycle(self) -> None:
        for _ in range(self.problem.average_every):
            for optimizer in self.optimizers:
                optimizer.step()
        if self.problem.num_branches == 1:
            return  # the mean of one branch is that branch
        mean = torch._foreach_add(self.weights[0], self.weights[1])
        for weights in self.weights[2:]:
            torch._foreach_add_(mean, weights)
        torch._foreach_div_(mean, self.problem.num_branches)
        for weights in self.weights:
            torch._foreach_copy_(weights, mean)

    def branch_weights(self) -> list[list[torch.Tensor]]:
        return self.weights

    def state_tensors(self) -> list[torch.Tensor]:
        tensors = [t for branch in self.branches for p in branch for t in (p, p.grad)]
        for optimizer in self.optimizers:
            tensors += [state["momentum_buffer"] for state in optimizer.state.values()
                        if state.get("momentum_buffer") is not None]
        return tensors


def _flat_sgd(weights: torch.Tensor, grads: torch.Tensor, momentum: torch.Tensor) -> None:
    """SGD with momentum on ``[branches, N]`` buffers in place, as a user would write it for torch.compile."""
    momentum.mul_(HYPERPARAMETERS["momentum"]).add_(grads + HYPERPARAMETERS["weight_decay"] * weights)
    weights.sub_(HYPERPARAMETERS["lr"] * momentum)


def _flat_sgd_and_average(weights: torch.Tensor, grads: torch.Tensor, momentum: torch.Tensor) -> None:
    _flat_sgd(weights, grads, momentum)
    weights.copy_(weights.mean(dim=0, keepdim=True).expand_as(weights))


class CompiledFlatUpdate(Contender):
    """``torch.compile`` of an eager update over flat ``[d, N]`` buffers, one graph with the average fused in.

    Momentum starts at zero, which with zero dampening gives the same first step as SGD's
    initialisation from the gradient, so the graph needs no first-step branch.
    """

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem)
        self.weights = _flat_rows(problem.initial_weights(), problem.num_branches)
        self.grads = _flat_rows(problem.gradients(), problem.num_branches)
        self.momentum = torch.zeros_like(self.weights)
        # A fresh cache per problem: each shape compiles once instead of counting towards the recompile limit.
        torch._dynamo.reset()
        self.step = torch.compile(_flat_sgd, dynamic=False)
        self.step_and_average = torch.compile(_flat_sgd_and_average, dynamic=False)

    def run_cycle(self) -> None:
        for _ in range(self.problem.average_every - 1):
            self.step(self.weights, self.grads, self.momentum)
        self.step_and_average(self.weights, self.grads, self.momentum)

    def branch_weights(self) -> list[list[torch.Tensor]]:
        numels = [shape.numel() for shape in self.problem.parameters.shapes]
        return [list(row.split(numels)) for row in self.weights]

    def state_tensors(self) -> list[torch.Tensor]:
        return [self.weights, self.grads, self.momentum]


def _flat_rows(tensors: list[torch.Tensor], num_branches: int) -> torch.Tensor:
    """``[num_branches, N]``: the tensors laid end to end, repeated in every row."""
    return torch.cat([t.flatten() for t in tensors]).repeat(num_branches, 1)

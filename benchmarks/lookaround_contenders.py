"""Lookaround itself, per backend: the whole optimizer call, and the backend's fused step alone."""

from __future__ import annotations

import torch
from torch import nn

from lookaround_fused import Lookaround
from lookaround_fused.backends import StepPlan, resolve_backend

from .contender import HYPERPARAMETERS, Contender, Problem


class LookaroundOptimizer(Contender):
    """``for _ in opt.branches(): ...`` then ``opt.step()``, as a training loop drives it.

    Gradients are filled once; the loop then finds them in the flat buffers, as it does when
    autograd accumulates into the gradient views. What is timed is everything the optimizer
    does per outer iteration: loading each branch into the parameters, the fused update of
    every branch and, on every ``average_every``-th call, the average.
    """

    def __init__(self, problem: Problem, backend: str) -> None:
        super().__init__(problem)
        self.params = [nn.Parameter(t) for t in problem.initial_weights()]
        self.optimizer = Lookaround(self.params, **HYPERPARAMETERS, num_branches=problem.num_branches,
                                    average_every=problem.average_every, backend=backend)
        (self.flat,) = self.optimizer.flat_groups
        gradients = problem.gradients()
        for _ in self.optimizer.branches():
            for p, gradient in zip(self.params, gradients):
                p.grad = gradient

    def run_cycle(self) -> None:
        for _ in range(self.problem.average_every):
            for _ in self.optimizer.branches():
                pass
            self.optimizer.step()

    def branch_weights(self) -> list[list[torch.Tensor]]:
        return [[self.flat.weight_view(b, i) for i in range(self.flat.num_params)]
                for b in range(self.flat.num_branches)]

    def state_tensors(self) -> list[torch.Tensor]:
        tensors = [t for p in self.params for t in (p, p.grad) if t is not None]
        return tensors + [t for t in (self.flat.weights, self.flat.grads, self.flat.momentum) if t is not None]


class LookaroundKernel(LookaroundOptimizer):
    """The backend's ``step(flat, plan)`` alone: the kernel figure, without the optimizer's Python."""

    def __init__(self, problem: Problem, backend: str) -> None:
        super().__init__(problem, backend)
        # The optimizer would do this on its first step. Zero momentum marked ready updates exactly
        # like first-step initialisation (dampening is 0) and keeps the kernel on its steady-state path.
        self.flat.ensure_momentum()
        self.flat.momentum_ready.fill_(True)
        # The gradients are in flat.grads; without a step() the parameters would keep the source tensor alive.
        for p in self.params:
            p.grad = None
        self.backend = resolve_backend(backend, problem.device)
        branches = range(problem.num_branches)
        self.plans = [StepPlan(branches, i == problem.average_every - 1, self.optimizer.param_groups)
                      for i in range(problem.average_every)]

    def run_cycle(self) -> None:
        for plan in self.plans:
            self.backend.step(self.flat, plan)

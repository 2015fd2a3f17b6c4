"""A plainly written Lookaround that the optimizer is tested against.

``d`` independent copies of the parameters, each with its own ``torch.optim.SGD``
(and its own lr scheduler), averaged with a plain loop every ``k`` steps.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch


class ReferenceLookaround:
    def __init__(self, params: Sequence[torch.Tensor], group_sizes: Sequence[int], groups: Sequence[dict],
                 num_branches: int, average_every: int,
                 scheduler: Callable[[torch.optim.Optimizer], object] | None = None) -> None:
        self.branches = [[p.detach().clone().requires_grad_() for p in params] for _ in range(num_branches)]
        self.optimizers = []
        for copies in self.branches:
            bounds = [sum(group_sizes[:g]) for g in range(len(group_sizes) + 1)]
            param_groups = [
                dict(params=copies[bounds[g]:bounds[g + 1]],
                     **{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in groups[g].items()})
                for g in range(len(groups))
            ]
            self.optimizers.append(torch.optim.SGD(param_groups))
        self.schedulers = [scheduler(opt) for opt in self.optimizers] if scheduler else []
        self.average_every = average_every
        self.steps = 0

    def step(self, grads: Sequence[Sequence[torch.Tensor | None]]) -> None:
        """One around step of every branch from ``grads[branch][param]``, then the average when due."""
        for copies, optimizer, branch_grads in zip(self.branches, self.optimizers, grads):
            for p, g in zip(copies, branch_grads):
                p.grad = None if g is None else g.clone()
            optimizer.step()
        self.steps += 1
        if self.steps % self.average_every == 0:
            with torch.no_grad():
                for i in range(len(self.branches[0])):
                    total = self.branches[0][i].clone()
                    for copies in self.branches[1:]:
                        total += copies[i]
                    mean = total / len(self.branches)
                    for copies in self.branches:
                        copies[i].copy_(mean)

    def step_schedulers(self) -> None:
        for scheduler in self.schedulers:
            scheduler.step()

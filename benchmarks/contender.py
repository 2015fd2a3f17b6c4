"""What every timed implementation shares: the problem it solves and the interface it is timed through."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Callable

import torch

from .parameter_sets import ParameterSet

#: The reference code's training recipe (SGD with momentum and coupled weight decay); the same for every contender.
HYPERPARAMETERS = dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=5e-4, nesterov=False, maximize=False)


@dataclass(frozen=True)
class Problem:
    """``num_branches`` branches of a parameter set, averaged every ``average_every`` outer iterations."""

    parameters: ParameterSet
    num_branches: int
    average_every: int
    device: torch.device
    dtype: torch.dtype = torch.float32

    @property
    def numel(self) -> int:
        return self.parameters.numel

    @property
    def parameter_bytes(self) -> int:
        """Bytes of one copy of the parameters."""
        return self.numel * self.dtype.itemsize

    def initial_weights(self) -> list[torch.Tensor]:
        """Every branch's weights at the start, one tensor per shape (fresh tensors on each call)."""
        return self._random_tensors(seed=0)

    def gradients(self) -> list[torch.Tensor]:
        """Every branch's gradient: the same in all branches, as the reference's single gradient buffer holds."""
        return self._random_tensors(seed=1)

    def _random_tensors(self, seed: int) -> list[torch.Tensor]:
        # Standard normal: values only need to stay clear of subnormals, which slow CPUs down.
        generator = torch.Generator(self.device).manual_seed(seed)
        return [torch.randn(shape, generator=generator, device=self.device).to(self.dtype)
                for shape in self.parameters.shapes]


class Contender(abc.ABC):
    """One implementation of Lookaround's outer iterations over a problem's parameters.

    An outer iteration updates every branch once; every ``average_every``-th one ends with
    the average of the branches. Contenders are timed a whole cycle at a time, so each
    measurement holds exactly one average whatever the implementation's own step counter.
    All start from the problem's :meth:`~Problem.initial_weights` and
    :meth:`~Problem.gradients`, so from the same branch weights they compute the same cycle.
    """

    def __init__(self, problem: Problem) -> None:
        self.problem = problem

    @abc.abstractmethod
    def run_cycle(self) -> None:
        """``average_every`` outer iterations, the last one ending with the average."""

    @abc.abstractmethod
    def branch_weights(self) -> list[list[torch.Tensor]]:
        """Per branch, the contender's own storage of each parameter's weights (writable views)."""

    @abc.abstractmethod
    def state_tensors(self) -> list[torch.Tensor]:
        """Every tensor kept between iterations: weights of every branch, gradients, momentum."""


def runs_anywhere(device: torch.device) -> None:
    """The ``unavailable_reason`` of contenders made of plain PyTorch."""
    return None


@dataclass(frozen=True)
class ContenderSpec:
    """How to build a contender, what it is, and whether it can run on a device."""

    key: str
    description: str
    build: Callable[[Problem], Contender]
    unavailable_reason: Callable[[torch.device], str | None] = runs_anywhere
    #: One branch-weight, momentum and gradient copy per branch (3d) or the reference's d + d + 1.
    state_formula: str = "3d"

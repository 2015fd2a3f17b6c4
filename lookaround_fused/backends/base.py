"""The interface every backend implements.

A backend sees one :class:`~lookaround_fused.flat.FlatGroup` at a time: the flat
``[branches, N]`` weight, gradient and momentum buffers of every parameter that
shares a device and a dtype, plus a :class:`StepPlan` saying what to do with them.
It never sees modules or parameter objects, so Triton, C++ and eager
implementations are interchangeable behind the same two calls.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

import torch

from ..flat import FlatGroup


@dataclass(frozen=True)
class StepPlan:
    """What one call of :meth:`Backend.step` must do to a flat group.

    Attributes:
        branches: the branches to update, a contiguous range (all of them in the
            fused style, the active one in the drop-in style).
        average: after the update, replace every branch by the mean of all
            branches. ``False``, ``True`` or a 0-dim bool tensor on the group's
            device, decided on the device when gradient scaling makes the host
            unable to know whether this step counts.
        param_groups: the optimizer's param groups; hyperparameters are read
            from them (or from ``FlatGroup.hyperparameter_table``) by group index.
        grad_scale: gradients are divided by this 0-dim tensor when given
            (``torch.amp.GradScaler``).
        found_inf: when this 0-dim tensor is nonzero the step changes nothing:
            no weight, no momentum, no average.
    """

    branches: range
    average: bool | torch.Tensor
    param_groups: Sequence[Mapping[str, Any]]
    grad_scale: torch.Tensor | None = None
    found_inf: torch.Tensor | None = None


class Backend(abc.ABC):
    """One implementation of the Lookaround update over flat buffers."""

    name: ClassVar[str]

    @classmethod
    @abc.abstractmethod
    def unavailable_reason(cls, device: torch.device) -> str | None:
        """Why this backend cannot run on ``device``, or ``None`` when it can."""

    @abc.abstractmethod
    def step(self, flat: FlatGroup, plan: StepPlan) -> None:
        """Apply one SGD step to ``plan.branches`` and, if asked, average all branches.

        For every branch ``b`` in ``plan.branches`` and every parameter ``i`` with
        ``flat.has_grad[b][i]``, the slice of ``flat.weights[b]`` and
        ``flat.momentum[b]`` that belongs to ``i`` is updated exactly as
        ``torch.optim.SGD`` would with the hyperparameters of the parameter's group
        (math in fp32 for fp16/bf16 storage). ``flat.momentum_ready[b, i]`` tells
        whether the momentum buffer holds a value (otherwise it is initialised to
        the gradient); the backend does not change it, the optimizer does.
        Gradients are only read.
        """

    @abc.abstractmethod
    def mean(self, flat: FlatGroup, out: torch.Tensor) -> None:
        """Write the mean of ``flat.weights`` over branches into the 1-D ``out``.

        The mean is ``(w_0 + w_1 + ... + w_{d-1}) / d`` summed left to right in
        the math dtype, the same order :meth:`step` uses when it averages.
        """

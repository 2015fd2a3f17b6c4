"""BatchNorm running statistics for averaged weights (``--bn shared|recompute|average``).

``shared`` needs nothing here: the module's one set of statistics is updated by every
branch's forward pass (the reference code's behaviour).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.swa_utils import update_bn


def _tracking_batchnorms(model: nn.Module) -> list[_BatchNorm]:
    return [module for module in model.modules() if isinstance(module, _BatchNorm) and module.track_running_stats]


def _running_stat_buffers(model: nn.Module) -> list[torch.Tensor]:
    """Running mean, variance and batch count of every BatchNorm that tracks them."""
    return [buffer for module in _tracking_batchnorms(model)
            for buffer in (module.running_mean, module.running_var, module.num_batches_tracked)]


def running_mean_and_var(model: nn.Module) -> list[torch.Tensor]:
    """Running mean and variance of every BatchNorm that tracks them (the statistics worth averaging)."""
    return [buffer for module in _tracking_batchnorms(model) for buffer in (module.running_mean, module.running_var)]


class BranchBatchNorm:
    """Per-branch running statistics (``--bn average``), averaged when the weights are.

    The module holds the statistics of the branch last activated; the others wait in
    copies. Means and variances are averaged uniformly, as Lookaround averages weights
    (the variance of the average ignores the spread of the branch means).
    """

    def __init__(self, model: nn.Module, num_branches: int) -> None:
        self._live = _running_stat_buffers(model)
        self._sets = [[buffer.clone() for buffer in self._live] for _ in range(num_branches)]
        self._active = 0

    def activate(self, branch: int) -> None:
        """Put ``branch``'s statistics into the model (the active branch's are kept)."""
        if branch != self._active:
            torch._foreach_copy_(self._sets[self._active], self._live)
            torch._foreach_copy_(self._live, self._sets[branch])
            self._active = branch

    def average(self) -> None:
        """Replace every branch's statistics by their mean (at the optimizer's averaging steps)."""
        torch._foreach_copy_(self._sets[self._active], self._live)
        mean = self._mean()
        for stats in self._sets:
            torch._foreach_copy_(stats, mean)
        torch._foreach_copy_(self._live, mean)

    @contextlib.contextmanager
    def averaged(self) -> Iterator[None]:
        """The model holds the mean statistics inside the block, the active branch's after it."""
        torch._foreach_copy_(self._sets[self._active], self._live)
        torch._foreach_copy_(self._live, self._mean())
        try:
            yield
        finally:
            torch._foreach_copy_(self._live, self._sets[self._active])

    def _mean(self) -> list[torch.Tensor]:
        # Batch counts are equal across branches (one forward each per step): keep branch 0's.
        return [
            torch.stack(column).mean(0) if column[0].is_floating_point() else column[0].clone()
            for column in zip(*self._sets)
        ]

    def state_dict(self) -> dict[str, Any]:
        torch._foreach_copy_(self._sets[self._active], self._live)
        return {"sets": [[t.clone() for t in stats] for stats in self._sets], "active": self._active}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for stats, saved in zip(self._sets, state["sets"], strict=True):
            torch._foreach_copy_(stats, saved)
        self._active = state["active"]
        torch._foreach_copy_(self._live, self._sets[self._active])


@contextlib.contextmanager
def recomputed_batchnorm(model: nn.Module, inputs: Iterable[torch.Tensor]) -> Iterator[None]:
    """Inside the block the model's BatchNorm statistics are recomputed from ``inputs``.

    Uses torch.optim.swa_utils.update_bn (a plain average over the inputs); the
    statistics training uses are restored on exit.
    """
    live = _running_stat_buffers(model)
    saved = [buffer.clone() for buffer in live]
    update_bn(inputs, model)
    try:
        yield
    finally:
        torch._foreach_copy_(live, saved)

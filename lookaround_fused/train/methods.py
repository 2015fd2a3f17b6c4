"""The compared training methods: Lookaround and the paper's baselines (SGD, Lookahead, SWA).

A method turns one minibatch (one augmented view per branch) into weight updates and
says which weights are evaluated. Under ``--equal-steps`` (the paper's protocol) the
baselines take one SGD step per view, as many gradient steps as Lookaround takes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterator, Sequence

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from lookaround_fused import Lookaround
from lookaround_fused.distributed import OPTIMIZERS as DISTRIBUTED_OPTIMIZERS
from lookaround_fused.train.batchnorm import BranchBatchNorm, running_mean_and_var
from lookaround_fused.train.config import TrainConfig


@dataclass
class BatchStats:
    """Sums over the views of a minibatch, kept on the device (no host sync per step)."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    count: int


def autocast(device: torch.device, dtype: torch.dtype | None) -> ContextManager[None]:
    """Mixed precision in ``dtype`` on ``device``; off for None."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


class ForwardBackward:
    """Loss of one view under autocast, backward through the (optionally scaled) loss."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], autocast_dtype: torch.dtype | None,
                 scaler: torch.amp.GradScaler, device: torch.device) -> None:
        self.forward, self.autocast_dtype = forward, autocast_dtype
        self.scaler, self.device = scaler, device
        self.loss_fn = nn.CrossEntropyLoss()

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> BatchStats:
        with autocast(self.device, self.autocast_dtype):
            logits = self.forward(images)
            loss = self.loss_fn(logits, labels)
        self.scaler.scale(loss).backward()
        correct = (logits.argmax(dim=1) == labels).sum()
        return BatchStats(loss.detach() * len(labels), correct, len(labels))

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """``optimizer.step()`` through the scaler; False when the scaler skipped it (inf/NaN grads)."""
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(optimizer)
        self.scaler.update()
        optimizer.zero_grad()
        return scale is None or self.scaler.get_scale() >= scale


def _sum(stats: Sequence[BatchStats]) -> BatchStats:
    return BatchStats(sum(s.loss_sum for s in stats), sum(s.correct for s in stats), sum(s.count for s in stats))


@contextlib.contextmanager
def _parameters_replaced(model: nn.Module, values: Sequence[torch.Tensor]) -> Iterator[None]:
    """The model's parameters hold ``values`` inside the block and their own values after it."""
    params = [p.detach() for p in model.parameters()]
    saved = [p.clone() for p in params]
    torch._foreach_copy_(params, list(values))
    try:
        yield
    finally:
        torch._foreach_copy_(params, saved)


class TrainingMethod:
    """One of the compared methods; subclasses define the update and the evaluated weights."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, run: ForwardBackward) -> None:
        self.model, self.cfg, self.run = model, cfg, run
        self.optimizer: torch.optim.Optimizer = self._make_optimizer()

    @staticmethod
    def num_views(cfg: TrainConfig) -> int:
        """Augmented views of each minibatch the method trains on."""
        return cfg.num_branches if cfg.equal_steps else 1

    def _make_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        return torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)

    def train_minibatch(self, views: Sequence[torch.Tensor], labels: Sequence[torch.Tensor]) -> BatchStats:
        """One SGD step per view."""
        stats = []
        for images, targets in zip(views, labels):
            stats.append(self.run(images, targets))
            self._after_step(self.run.step(self.optimizer))
        return _sum(stats)

    def _after_step(self, stepped: bool) -> None:
        """Hook after every SGD step of the baselines."""

    def evaluation_weights(self) -> ContextManager[None]:
        """Inside the block the model holds the weights to evaluate."""
        return contextlib.nullcontext()

    def recomputes_batchnorm(self) -> bool:
        """Whether evaluation recomputes BatchNorm statistics for the evaluated weights."""
        return self.cfg.bn == "recompute"

    def end_epoch(self, epoch: int) -> None:
        """Hook after the last minibatch of ``epoch`` (0-based)."""

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


class SGDMethod(TrainingMethod):
    """SGD with momentum (torch.optim.SGD), the paper's first baseline."""


class LookaheadMethod(TrainingMethod):
    """Lookahead (Zhang et al. 2019) around SGD: every ``k`` steps, slow += alpha * (fast - slow).

    The slow weights are evaluated; the fast weights restart from them after each sync.
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig, run: ForwardBackward) -> None:
        super().__init__(model, cfg, run)
        self.slow = [p.detach().clone() for p in model.parameters()]
        self.steps = 0

    def _after_step(self, stepped: bool) -> None:
        if not stepped:
            return
        self.steps += 1
        if self.steps % self.cfg.lookahead_k == 0:
            fast = [p.detach() for p in self.model.parameters()]
            torch._foreach_lerp_(self.slow, fast, self.cfg.lookahead_alpha)
            torch._foreach_copy_(fast, self.slow)

    def evaluation_weights(self) -> ContextManager[None]:
        return _parameters_replaced(self.model, self.slow)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "slow": [t.clone() for t in self.slow], "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        torch._foreach_copy_(self.slow, state["slow"])
        self.steps = state["steps"]


class SWAMethod(TrainingMethod):
    """SWA: SGD, and from epoch ``swa_start`` on an equal average of the end-of-epoch weights.

    Uses torch.optim.swa_utils.AveragedModel. The average is evaluated once it exists,
    always with recomputed BatchNorm statistics (swa_utils.update_bn), as SWA prescribes.
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig, run: ForwardBackward) -> None:
        super().__init__(model, cfg, run)
        self.average = AveragedModel(model)

    def _averaging(self) -> bool:
        return int(self.average.n_averaged) > 0

    def end_epoch(self, epoch: int) -> None:
        if epoch + 1 > self.cfg.swa_start:
            self.average.update_parameters(self.model)

    def evaluation_weights(self) -> ContextManager[None]:
        if not self._averaging():
            return contextlib.nullcontext()
        return _parameters_replaced(self.model, list(self.average.module.parameters()))

    def recomputes_batchnorm(self) -> bool:
        return self._averaging() or super().recomputes_batchnorm()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "average": self.average.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.average.load_state_dict(state["average"])


class LookaroundMethod(TrainingMethod):
    """Lookaround (Algorithm 1): each branch steps on its own view; branches averaged every k steps.

    Under ``--distributed`` the optimizer is the mode's (the model's gradients or weights
    are averaged over the ranks); in branch-parallel the model trains only this rank's branch.
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig, run: ForwardBackward) -> None:
        super().__init__(model, cfg, run)
        # In branch-parallel a rank's BatchNorm holds its own branch's statistics; the optimizer averages them.
        per_branch_copies = cfg.bn == "average" and cfg.distributed != "branch-parallel"
        self.branch_bn = BranchBatchNorm(model, cfg.num_branches) if per_branch_copies else None

    @staticmethod
    def num_views(cfg: TrainConfig) -> int:
        return cfg.num_branches

    def _make_optimizer(self) -> Lookaround:
        cfg = self.cfg
        args = dict(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov,
                    num_branches=cfg.num_branches, average_every=cfg.average_every, backend=cfg.backend)
        if cfg.distributed == "none":
            return Lookaround(self.model.parameters(), **args)
        if cfg.distributed == "branch-parallel" and cfg.bn == "average":
            # Each group holds its branch's statistics: averaged across the groups with the weights.
            args["buffers_to_average"] = running_mean_and_var(self.model)
        return DISTRIBUTED_OPTIMIZERS[cfg.distributed](self.model.parameters(), **args)

    def train_minibatch(self, views: Sequence[torch.Tensor], labels: Sequence[torch.Tensor]) -> BatchStats:
        stats = []
        for branch in self.optimizer.branches():
            if self.branch_bn is not None:
                self.branch_bn.activate(branch)
            stats.append(self.run(views[branch], labels[branch]))
        if self.branch_bn is None:
            self.run.step(self.optimizer)
        else:
            self._step_averaging_branch_bn()
        return _sum(stats)

    def _step_averaging_branch_bn(self) -> None:
        """Step, and average the branches' statistics if the step ended with the weights' average."""
        # The count is a device tensor after a GradScaler step: reading it waits, so only --bn average does.
        before = int(self.optimizer.updates)
        self.run.step(self.optimizer)
        after = int(self.optimizer.updates)
        if after != before and after % (self.optimizer.num_branches * self.cfg.average_every) == 0:
            self.branch_bn.average()

    @contextlib.contextmanager
    def evaluation_weights(self) -> Iterator[None]:
        branch_stats = self.branch_bn.averaged() if self.branch_bn is not None else contextlib.nullcontext()
        with self.optimizer.averaged(), branch_stats:
            yield

    def state_dict(self) -> dict[str, Any]:
        bn = self.branch_bn.state_dict() if self.branch_bn is not None else None
        return {**super().state_dict(), "branch_bn": bn}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["branch_bn"] is None) != (self.branch_bn is None):
            raise ValueError("--bn average keeps per-branch statistics in the optimizer under branch-parallel and "
                             "in the checkpoint otherwise: resume it in the kind of mode that wrote it")
        super().load_state_dict(state)
        if self.branch_bn is not None:
            self.branch_bn.load_state_dict(state["branch_bn"])


METHODS: dict[str, type[TrainingMethod]] = {
    "lookaround": LookaroundMethod,
    "sgd": SGDMethod,
    "lookahead": LookaheadMethod,
    "swa": SWAMethod,
}

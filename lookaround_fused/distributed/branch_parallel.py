"""Branch-parallel Lookaround: each group of ranks trains one branch; the branches meet every k steps.

Ranks form ``d`` groups; group ``j`` holds only branch ``j`` (weights, gradients and
momentum: ``d`` times less optimizer memory per rank than one process holding every
branch) and trains it on branch ``j``'s augmentation of the same global minibatch as the
other groups, sharded within the group. Gradients are all-reduced within a group every
step; weights are all-reduced across groups only at the average, every ``k`` steps.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.distributed as dist

from ..flat import FlatGroup
from .comm import Collectives, TrafficLog
from .replicated import ReplicatedLookaround


@dataclass(frozen=True)
class BranchLayout:
    """Which branch and which data shard a rank of a branch-parallel job has.

    The ranks are cut into ``num_branches`` groups of consecutive ranks, group ``j``
    training branch ``j``. torchrun numbers the ranks of a node consecutively, so a
    group that fits in a node keeps the every-step gradient all-reduce inside it;
    only the weight average, every ``k`` steps, crosses nodes.
    """

    world_size: int
    rank: int
    num_branches: int

    def __post_init__(self) -> None:
        if isinstance(self.num_branches, bool) or not isinstance(self.num_branches, int) or self.num_branches < 1:
            raise ValueError(f"Invalid num_branches: {self.num_branches!r} (must be an integer >= 1)")
        if self.world_size % self.num_branches != 0:
            d = self.num_branches
            raise ValueError(
                f"branch-parallel Lookaround needs a world size that is a multiple of num_branches={d} (one or "
                f"more ranks per branch), got {self.world_size} processes: start {d}, {2 * d}, {3 * d}, ... "
                "processes, or use replicated data parallel"
            )
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside a world of {self.world_size}")

    @classmethod
    def of_this_process(cls, num_branches: int) -> BranchLayout:
        """The layout of this rank in the default process group."""
        return cls(dist.get_world_size(), dist.get_rank(), num_branches)

    @property
    def group_size(self) -> int:
        """Ranks per branch."""
        return self.world_size // self.num_branches

    @property
    def branch(self) -> int:
        """The branch this rank trains."""
        return self.rank // self.group_size

    @property
    def rank_in_group(self) -> int:
        """This rank's place in its branch group: the index of its data shard."""
        return self.rank % self.group_size

    def branch_groups(self) -> list[list[int]]:
        """The ranks of each branch, branch by branch."""
        size = self.group_size
        return [list(range(branch * size, (branch + 1) * size)) for branch in range(self.num_branches)]

    def peer_groups(self) -> list[list[int]]:
        """For each data shard, the rank of every branch that trains on it (they average weights)."""
        return [list(group) for group in zip(*self.branch_groups())]


class BranchParallelLookaround(ReplicatedLookaround):
    """Lookaround with its branches spread over groups of ranks (a collective: every rank creates it).

    Each rank is a one-branch Lookaround (SGD with momentum on its branch) whose
    gradients are averaged within its group at the end of :meth:`branches`; after
    every ``average_every`` applied steps the weights of all branches are replaced by
    their mean across the groups. With the same data per branch the result equals a
    single-process :class:`~lookaround_fused.Lookaround` within fp32 rounding.

    The training loop is the fused one; :meth:`branches` yields this rank's branch
    (to pick its augmentation)::

        for x, y in loader:                       # this rank's shard of the global minibatch
            for b in opt.branches():              # one branch: layout.branch
                loss_fn(model(augment[b](x)), y).backward()
            opt.step()
            opt.zero_grad()

    Under ``torch.amp.GradScaler`` an overflow in any branch skips the step of every
    branch, as in one process; each group keeps its own loss scale.

    :meth:`state_dict`, :meth:`load_state_dict` and :meth:`averaged` are collectives
    too. The state dict is that of a single-process Lookaround with every branch, so
    a checkpoint moves between this mode, replicated data parallel, one process and
    any world size that is a multiple of ``num_branches``.

    Args:
        params, lr, momentum, dampening: as for :class:`~lookaround_fused.Lookaround`.
        num_branches: ``d``; the world size must be a multiple of it.
        buffers_to_average: floating tensors (BatchNorm running statistics) averaged
            across the branches with the weights, and inside :meth:`averaged`.
        traffic: where the collectives are counted (:attr:`traffic`).
        **kwargs: the other arguments of :class:`~lookaround_fused.Lookaround`
            (``weight_decay``, ``nesterov``, ``maximize``, ``average_every``, ``backend``).

    Attributes:
        layout: this rank's :class:`BranchLayout`.
        branch_group: the process group of this rank's branch (for SyncBatchNorm).
        last_step_averaged: whether the last :meth:`step` ended with the average.
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float | torch.Tensor = 1e-3,
                 momentum: float = 0.0, dampening: float = 0.0, *, num_branches: int = 3,
                 buffers_to_average: Sequence[torch.Tensor] = (), traffic: TrafficLog | None = None,
                 **kwargs: Any) -> None:
        if "head_num" in kwargs:
            raise TypeError("BranchParallelLookaround takes num_branches, not its drop-in alias head_num")
        for buffer in buffers_to_average:
            if not buffer.is_floating_point():
                raise ValueError(f"buffers_to_average must be floating tensors, got {buffer.dtype} "
                                 "(leave batch counters out)")
        self.layout = BranchLayout.of_this_process(num_branches)
        self.branch_group, _ = dist.new_subgroups_by_enumeration(self.layout.branch_groups())
        peer_group, _ = dist.new_subgroups_by_enumeration(self.layout.peer_groups())
        super().__init__(params, lr, momentum, dampening, num_branches=1, process_group=self.branch_group,
                         traffic=traffic, **kwargs)
        self._weight_peers = Collectives(peer_group, "weights", self.traffic)
        self._overflow_peers = Collectives(peer_group, "overflow flags", self.traffic)
        self._checkpoint_peers = Collectives(peer_group, "checkpoint", self.traffic)
        self._buffers = list(buffers_to_average)
        self._copy_weights_from_first_rank(peer_group)
        self.last_step_averaged = False

    def branches(self) -> Iterator[int]:
        """Load this rank's branch into the model once, yielding its index; then average the gradients in the group."""
        for _ in super().branches():
            yield self.layout.branch

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update this rank's branch; after every ``average_every`` applied steps, average across the branches."""
        found_inf = getattr(self, "found_inf", None)
        if isinstance(found_inf, torch.Tensor):
            # GradScaler's verdict for this group only: every group must skip together (the average schedule
            # depends on the number of applied steps, and one process skips all branches on any overflow).
            self._overflow_peers.max_(found_inf)
        applied_before = int(self.updates)
        loss = super().step(closure)
        applied = int(self.updates)
        self.last_step_averaged = applied != applied_before and applied % self.average_every == 0
        if self.last_step_averaged:
            for flat in self.flat_groups:
                self._weight_peers.mean_(flat.weights)
            self._mean_buffers_across_branches()
        return loss

    def _mean_buffers_across_branches(self) -> None:
        if not self._buffers:
            return
        packed = torch.cat([buffer.detach().reshape(-1).float() for buffer in self._buffers])
        self._weight_peers.mean_(packed)
        sizes = [buffer.numel() for buffer in self._buffers]
        torch._foreach_copy_(self._buffers, [part.view_as(buffer) for part, buffer in zip(packed.split(sizes),
                                                                                             self._buffers)])

    @contextlib.contextmanager
    def averaged(self) -> Iterator[None]:
        """The mean of every branch (and of ``buffers_to_average``) in the model for the block; every rank enters it."""
        with super().averaged():
            for flat in self.flat_groups:
                flat.bind_weights_to(self._weight_peers.mean_(flat.weights[0].clone()))
            saved = [buffer.clone() for buffer in self._buffers]
            self._mean_buffers_across_branches()
            try:
                yield
            finally:
                if saved:
                    torch._foreach_copy_(self._buffers, saved)

    # -------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Every branch's state, gathered from the groups: a single-process ``Lookaround.state_dict()``.

        Every rank receives it; save it from one (see :func:`save_on_rank0`).
        """
        local = super().state_dict()
        rows = {id(flat): self._gather_branches(flat) for flat in self.flat_groups}
        where = {id(p): (flat, i) for flat in self.flat_groups for i, p in enumerate(flat.params)}
        params = [p for group in self.param_groups for p in group["params"]]
        state = {}
        for index, p in enumerate(params):
            flat, i = where[id(p)]
            weights, momentum, ready = rows[id(flat)]
            entry = {
                "branch_weights": torch.stack([flat.param_view(row, i) for row in weights]),
                "momentum_ready": ready[:, i].clone(),
            }
            if bool(entry["momentum_ready"].any()):
                entry["momentum_buffer"] = torch.stack([flat.param_view(row, i) for row in momentum])
            state[index] = entry
        meta = local["lookaround"]
        # One fused step updates every branch: a single process counts num_branches updates for it.
        meta.update(num_branches=self.layout.num_branches, updates=meta["updates"] * self.layout.num_branches)
        return {**local, "state": state}

    def _gather_branches(self, flat: FlatGroup) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Weight rows, momentum rows and momentum flags ``[branches, P]`` of every branch, in branch order."""
        momentum = flat.momentum[0] if flat.momentum is not None else torch.zeros_like(flat.weights[0])
        ready = self._checkpoint_peers.all_gather(flat.momentum_ready[0].to(torch.uint8))
        return (self._checkpoint_peers.all_gather(flat.weights[0]), self._checkpoint_peers.all_gather(momentum),
                torch.stack(ready).bool())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a ``Lookaround.state_dict()`` with ``num_branches`` branches; this rank keeps its branch's part."""
        super().load_state_dict(self._branch_part(state_dict))

    def _branch_part(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """The state dict of the one-branch optimizer of this rank, cut from a full one."""
        d, branch = self.layout.num_branches, self.layout.branch
        meta = state_dict.get("lookaround") if isinstance(state_dict, dict) else None
        if not isinstance(meta, dict) or not isinstance(state_dict.get("state"), dict):
            raise ValueError("Cannot load Lookaround state dict: expected a dict with 'state' and 'lookaround' "
                             "entries (is this a Lookaround.state_dict()?)")
        if meta.get("num_branches") != d:
            raise ValueError(f"Cannot load Lookaround state dict: it has {meta.get('num_branches')} branches, "
                             f"this branch-parallel job trains {d}")
        updates = meta.get("updates")
        if meta.get("active_branch") != 0 or not isinstance(updates, int) or updates % d != 0:
            raise ValueError(
                f"Cannot load Lookaround state dict: it was saved in the middle of a drop-in style step cycle "
                f"(active branch {meta.get('active_branch')!r}, {updates!r} updates); branch-parallel resumes "
                "from checkpoints taken after a full step"
            )
        state = {
            index: {key: value[branch : branch + 1] if isinstance(value, torch.Tensor) else value
                    for key, value in entry.items()} if isinstance(entry, dict) else entry
            for index, entry in state_dict["state"].items()
        }
        return {**state_dict, "state": state,
                "lookaround": {**meta, "num_branches": 1, "updates": updates // d, "active_branch": 0}}

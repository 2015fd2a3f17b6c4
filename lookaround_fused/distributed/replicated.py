"""Replicated data parallel Lookaround: every rank holds every branch and a shard of each minibatch."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import torch
import torch.distributed as dist

from ..optimizer import Lookaround
from .comm import Collectives, TrafficLog


class ReplicatedLookaround(Lookaround):
    """:class:`~lookaround_fused.Lookaround` whose gradients are averaged over the ranks of a process group.

    Every rank holds all branches and trains them on its shard of the minibatch
    (see :func:`~lookaround_fused.distributed.data_shard`). At the end of each
    :meth:`branches` loop every branch's gradients are replaced by their mean over
    the ranks, one all-reduce per flat buffer, before ``GradScaler`` or :meth:`step`
    reads them; the ranks then take identical steps, and the result equals one
    process training on the whole minibatch. Every rank must produce gradients for
    the same parameters (as DistributedDataParallel without ``find_unused_parameters``).

    Only the fused style is supported: drive it with ``for b in opt.branches(): ...``
    before every :meth:`step`. A checkpoint (:meth:`state_dict`) is the same on every
    rank and is that of a single-process Lookaround: it resumes under any world size.

    Args:
        params, lr, momentum, dampening, **kwargs: as for :class:`~lookaround_fused.Lookaround`.
        process_group: the ranks gradients are averaged over (``None``: all of them).
        traffic: where the collectives are counted (:attr:`traffic`; a new log when omitted).
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float | torch.Tensor = 1e-3,
                 momentum: float = 0.0, dampening: float = 0.0, *, process_group: dist.ProcessGroup | None = None,
                 traffic: TrafficLog | None = None, **kwargs: Any) -> None:
        super().__init__(params, lr, momentum, dampening, **kwargs)
        self.traffic = traffic if traffic is not None else TrafficLog()
        self._gradient_group = Collectives(process_group, "gradients", self.traffic)
        self._gradients_averaged = False
        self._copy_weights_from_first_rank(process_group)

    def _copy_weights_from_first_rank(self, process_group: dist.ProcessGroup | None) -> None:
        """Give every rank of the group its first rank's weights (as DDP does), so that no rank starts elsewhere."""
        setup = Collectives(process_group, "setup", self.traffic)
        for flat in self.flat_groups:  # every branch holds the model's weights until the first step
            setup.broadcast_(flat.weights[0])
            flat.weights[1:].copy_(flat.weights[:1].expand_as(flat.weights[1:]))

    def branches(self) -> Iterator[int]:
        """:meth:`Lookaround.branches`, then the mean of every branch's gradients over the ranks."""
        yield from super().branches()
        for flat in self.flat_groups:
            # The model's .grad become views of the flat buffer, so GradScaler checks the averaged
            # gradients and step() does not copy the local ones back over them.
            flat.bind_grads(self.active_branch)
            self._gradient_group.mean_(flat.grads)
        self._gradients_averaged = True

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """:meth:`Lookaround.step` on gradients averaged by the preceding :meth:`branches` loop."""
        if closure is not None:
            raise ValueError(f"{type(self).__name__}.step() takes no closure: gradients are averaged over "
                             "the ranks at the end of the branches() loop, before step()")
        if not self._gradients_averaged:
            raise RuntimeError(
                f"{type(self).__name__} needs a `for b in optimizer.branches(): ...backward()` loop before "
                "every step(): the gradients are averaged over the ranks when that loop ends (the drop-in "
                "style, one branch per step() call, is not supported across processes)"
            )
        self._gradients_averaged = False
        return super().step()

"""Collectives that count the bytes they are handed, so traffic is measured, not estimated.

Every collective this package runs goes through :class:`Collectives`, which records the
payload (the bytes of the tensor this rank hands to the collective) per label in a
:class:`TrafficLog`. What an algorithm then puts on the wire is a fixed multiple of the
payload that depends on the algorithm and the group size (a ring all-reduce sends and
receives ``2 (n - 1) / n`` times the payload per rank), not on this package.
"""

from dataclasses import dataclass

import torch
import torch.distributed as dist

_LOW_PRECISION = (torch.float16, torch.bfloat16)


@dataclass
class TrafficCount:
    """Collective calls and the payload bytes this rank handed to them."""

    calls: int = 0
    bytes: int = 0


class TrafficLog:
    """Calls and payload bytes per label, summed over every :class:`Collectives` reporting here."""

    def __init__(self) -> None:
        self._counts: dict[str, TrafficCount] = {}

    def record(self, label: str, tensor: torch.Tensor) -> None:
        count = self._counts.setdefault(label, TrafficCount())
        count.calls += 1
        count.bytes += tensor.numel() * tensor.element_size()

    def counts(self) -> dict[str, TrafficCount]:
        """A copy of the counts so far, by label."""
        return {label: TrafficCount(c.calls, c.bytes) for label, c in self._counts.items()}

    def reset(self) -> None:
        self._counts.clear()


class Collectives:
    """Blocking collectives over one process group, each recorded in a :class:`TrafficLog`.

    A group of one rank communicates nothing: its calls return at once and record nothing.

    Args:
        group: the process group (``None``: every rank).
        label: the name its traffic is counted under.
        log: where to count (a new log when omitted).
    """

    def __init__(self, group: dist.ProcessGroup | None = None, label: str = "all ranks",
                 log: TrafficLog | None = None) -> None:
        self.group, self.label = group, label
        self.log = log if log is not None else TrafficLog()
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def _all_reduce(self, tensor: torch.Tensor, op: dist.ReduceOp) -> None:
        if self.size > 1:
            self.log.record(self.label, tensor)
            dist.all_reduce(tensor, op=op, group=self.group)

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Replace ``tensor`` by its sum over the group."""
        self._all_reduce(tensor, dist.ReduceOp.SUM)
        return tensor

    def max_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Replace ``tensor`` by its elementwise maximum over the group."""
        self._all_reduce(tensor, dist.ReduceOp.MAX)
        return tensor

    def mean_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Replace ``tensor`` by its mean over the group.

        fp16/bf16 tensors are summed in fp32 (twice the payload) and rounded once,
        the precision Lookaround's own average has.
        """
        if self.size == 1:
            return tensor
        if tensor.dtype in _LOW_PRECISION:
            tensor.copy_(self.sum_(tensor.float()).div_(self.size))
        else:
            self.sum_(tensor).div_(self.size)
        return tensor

    def broadcast_(self, tensor: torch.Tensor, source: int = 0) -> torch.Tensor:
        """Replace ``tensor`` by the value it has on group rank ``source``."""
        if self.size > 1:
            self.log.record(self.label, tensor)
            dist.broadcast(tensor, src=self._global_rank(source), group=self.group)
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """``tensor`` of every group rank, in group rank order."""
        if self.size == 1:
            return [tensor.clone()]
        self.log.record(self.label, tensor)
        gathered = [torch.empty_like(tensor) for _ in range(self.size)]
        dist.all_gather(gathered, tensor.contiguous(), group=self.group)
        return gathered

    def _global_rank(self, group_rank: int) -> int:
        return group_rank if self.group is None else dist.get_global_rank(self.group, group_rank)


def counting_allreduce_hook(collectives: Collectives, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """A DistributedDataParallel communication hook that does what DDP does by default
    (the mean of every gradient bucket over the ranks) and counts it.

    Register with ``ddp_model.register_comm_hook(collectives, counting_allreduce_hook)``. (DDP checks
    the annotations of a hook, so this module does not postpone their evaluation.)
    """
    future: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    future.set_result(collectives.mean_(bucket.buffer()))
    return future

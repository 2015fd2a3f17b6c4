"""Lookaround on torch.distributed: replicated data parallel and branch-parallel.

``replicated``: every rank holds every branch and a shard of each minibatch; gradients
are averaged over the ranks every step (:class:`ReplicatedLookaround`).
``branch-parallel``: ranks form one group per branch; gradients are averaged within a
group every step, weights across groups every ``average_every`` steps
(:class:`BranchParallelLookaround`).
"""

from .branch_parallel import BranchLayout, BranchParallelLookaround
from .checkpoint import save_on_rank0
from .comm import Collectives, TrafficCount, TrafficLog, counting_allreduce_hook
from .launch import DEFAULT_TIMEOUT, MODES, DataShard, data_shard, init_from_torchrun, is_main_process
from .replicated import ReplicatedLookaround

#: The optimizer class of each mode; both take Lookaround's arguments.
OPTIMIZERS = {"replicated": ReplicatedLookaround, "branch-parallel": BranchParallelLookaround}

__all__ = [
    "BranchLayout", "BranchParallelLookaround", "Collectives", "DEFAULT_TIMEOUT", "DataShard", "MODES",
    "OPTIMIZERS", "ReplicatedLookaround", "TrafficCount", "TrafficLog", "counting_allreduce_hook", "data_shard",
    "init_from_torchrun", "is_main_process", "save_on_rank0",
]

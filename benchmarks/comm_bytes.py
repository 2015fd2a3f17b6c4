"""Bytes communicated per Lookaround outer iteration: plain DDP against both distributed modes.

An outer iteration is ``k`` minibatches: ``k`` around steps of every branch, then the
average. Every collective goes through the counting wrapper of
``lookaround_fused.distributed.comm`` (DDP through a communication hook that does what
DDP does by default), so the figures are counts of the payload each rank hands to the
collectives, not estimates. Runs gloo on CPU processes; time does not matter here.

    python benchmarks/comm_bytes.py [--world-size 6] [--branches 3] [--average-every 5]
"""

from __future__ import annotations

import argparse
import gc
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Callable

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from benchmarks.parameter_sets import model_parameter_set
from lookaround_fused.distributed import (
    BranchParallelLookaround,
    Collectives,
    ReplicatedLookaround,
    TrafficCount,
    counting_allreduce_hook,
)

MODEL = "resnet50"
SGD = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)


class ParameterSetModel(nn.Module):
    """The model's parameters (zeros) and a loss that gives every one of them a gradient."""

    def __init__(self, shapes: tuple[torch.Size, ...]) -> None:
        super().__init__()
        self.weights = nn.ParameterList(nn.Parameter(torch.zeros(shape)) for shape in shapes)

    def forward(self, scale: torch.Tensor) -> torch.Tensor:
        return sum(p.sum() for p in self.weights) * scale


Counts = dict[str, TrafficCount]


def _ddp_counts(model: nn.Module, steps: int, minibatch_steps: int) -> tuple[Counts, Counts]:
    """DDP with SGD: the traffic of ``minibatch_steps`` steps and of ``steps`` steps."""
    ddp = DistributedDataParallel(model)
    collectives = Collectives(label="gradients")
    ddp.register_comm_hook(collectives, counting_allreduce_hook)
    optimizer = torch.optim.SGD(model.parameters(), **SGD)
    first = {}
    for step in range(1, steps + 1):
        ddp(torch.ones(())).backward()
        optimizer.step()
        optimizer.zero_grad()
        if step == minibatch_steps:
            first = collectives.log.counts()
    return first, collectives.log.counts()


def _lookaround_counts(optimizer_class: type, model: nn.Module, branches: int, average_every: int) -> Counts:
    """One outer iteration of a distributed Lookaround, from just after construction."""
    optimizer = optimizer_class(model.parameters(), num_branches=branches, average_every=average_every, **SGD)
    optimizer.traffic.reset()  # leave out the broadcast of the initial weights
    for _ in range(average_every):
        for _ in optimizer.branches():
            model(torch.ones(())).backward()
        optimizer.step()
        optimizer.zero_grad()
    return optimizer.traffic.counts()


def _worker(rank: int, world_size: int, store: str, out_dir: str, branches: int, average_every: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    shapes = model_parameter_set(MODEL).shapes
    measurements: list[tuple[str, Callable[[nn.Module], Counts | tuple[Counts, Counts]]]] = [
        ("ddp", lambda model: _ddp_counts(model, branches * average_every, average_every)),
        ("replicated", lambda model: _lookaround_counts(ReplicatedLookaround, model, branches, average_every)),
        ("branch-parallel", lambda model: _lookaround_counts(BranchParallelLookaround, model, branches,
                                                             average_every)),
    ]
    results = {}
    for name, measure in measurements:
        results[name] = measure(ParameterSetModel(shapes))
        gc.collect()  # one mode's buffers at a time
    torch.save(results, f"{out_dir}/{rank}.pt")
    dist.destroy_process_group()


def _rows(results: dict, world_size: int, branches: int, average_every: int) -> list[tuple[str, str, int, TrafficCount]]:
    """(mode, what is communicated, group size, count) per row of the table."""
    ddp_minibatch, ddp_equal_steps = results["ddp"]
    group = world_size // branches
    rows = [
        (f"DDP + SGD, 1 step per minibatch ({average_every} steps)", "gradients", world_size, ddp_minibatch["gradients"]),
        (f"DDP + SGD, d steps per minibatch ({branches * average_every} steps, the paper's baselines)", "gradients",
         world_size, ddp_equal_steps["gradients"]),
        ("Lookaround replicated", "gradients of every branch", world_size, results["replicated"]["gradients"]),
    ]
    parallel = results["branch-parallel"]
    rows.append(("Lookaround branch-parallel", f"gradients within a branch group (group of {group})", group,
                 parallel.get("gradients", TrafficCount())))
    rows.append(("Lookaround branch-parallel", f"weights across branch groups (group of {branches})", branches,
                 parallel["weights"]))
    return rows


def _table(rows: list[tuple[str, str, int, TrafficCount]]) -> str:
    lines = [
        "| mode | communicated | collectives per rank | payload per rank (bytes) | payload per rank (MiB) "
        "| ring all-reduce sends per rank (MiB, derived: 2(n-1)/n x payload) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for mode, what, group, count in rows:
        ring = 2 * (group - 1) / group * count.bytes if group > 1 else 0.0
        lines.append(f"| {mode} | {what} | {count.calls} | {count.bytes:,} | {count.bytes / 2**20:,.1f} "
                     f"| {ring / 2**20:,.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-size", type=int, default=6, help="processes (a multiple of --branches)")
    parser.add_argument("--branches", type=int, default=3, help="d, Lookaround's branches")
    parser.add_argument("--average-every", type=int, default=5, help="k, steps between averages")
    args = parser.parse_args(argv)
    if args.world_size % args.branches != 0:
        parser.error("--world-size must be a multiple of --branches for branch-parallel")
    parameters = model_parameter_set(MODEL)
    with tempfile.TemporaryDirectory() as directory:
        mp.spawn(_worker, args=(args.world_size, f"{directory}/store", directory, args.branches, args.average_every),
                 nprocs=args.world_size)
        per_rank = [torch.load(f"{directory}/{rank}.pt", weights_only=False) for rank in range(args.world_size)]
    if any(results != per_rank[0] for results in per_rank):
        raise AssertionError("ranks counted different traffic")
    print(f"{MODEL} parameter set: {parameters.numel:,} fp32 parameters in {parameters.num_tensors} tensors "
          f"({parameters.numel * 4:,} bytes); gloo, {args.world_size} processes; d={args.branches}, "
          f"k={args.average_every}; per outer iteration ({args.average_every} minibatches), per rank.")
    print(f"command: python benchmarks/comm_bytes.py {shlex.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    print()
    print(_table(_rows(per_rank[0], args.world_size, args.branches, args.average_every)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

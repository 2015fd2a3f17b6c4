"""One training iteration of a real model, split into forward+backward and optimizer time.

SGD and Lookaround take the same steps, as in the paper's tables: per outer iteration ``d``
forward+backward passes and ``d`` branch updates (SGD: ``d`` ordinary steps on one model;
Lookaround: one ``branches()`` loop and one fused ``step()``, the average on every ``k``-th).
Data loading and augmentation are left out: one random batch is reused.
"""

from __future__ import annotations

import statistics
import time

import torch
import torchvision
from torch.nn import functional as F

from lookaround_fused import Lookaround

from .contender import HYPERPARAMETERS
from .settings import Batch
from .timing import Timing, synchronize

NUM_CLASSES = 10


class _ComputeClock:
    """Runs forward+backward and adds up the milliseconds it took."""

    def __init__(self, model: torch.nn.Module, batch: Batch, device: torch.device) -> None:
        self.model, self.device = model, device
        self.images = torch.randn(batch.size, 3, batch.image_size, batch.image_size, device=device)
        self.labels = torch.randint(0, NUM_CLASSES, (batch.size,), device=device)
        self.elapsed_ms = 0.0

    def __call__(self) -> None:
        synchronize(self.device)
        begin = time.perf_counter()
        F.cross_entropy(self.model(self.images), self.labels).backward()
        synchronize(self.device)
        self.elapsed_ms += (time.perf_counter() - begin) * 1e3


def measure_training_iteration(model_name: str, optimizer_name: str, device: torch.device, batch: Batch,
                               num_branches: int, average_every: int, repeats: int) -> dict:
    """Time ``repeats`` cycles of ``average_every`` outer iterations after one warm-up cycle.

    ``optimizer_name`` is ``"sgd-fused"`` or ``"lookaround-<backend>"``. Optimizer time is
    everything in an iteration that is not forward+backward: ``step()``, ``zero_grad()`` and,
    for Lookaround, loading the branches in ``branches()``.
    """
    torch.manual_seed(0)
    model = torchvision.models.get_model(model_name, weights=None, num_classes=NUM_CLASSES).to(device).train()
    compute = _ComputeClock(model, batch, device)
    if optimizer_name == "sgd-fused":
        sgd = torch.optim.SGD(model.parameters(), **HYPERPARAMETERS, fused=True)

        def iteration() -> None:
            for _ in range(num_branches):
                compute()
                sgd.step()
                sgd.zero_grad()
    else:
        backend = optimizer_name.removeprefix("lookaround-")
        lookaround = Lookaround(model.parameters(), **HYPERPARAMETERS, num_branches=num_branches,
                                average_every=average_every, backend=backend)

        def iteration() -> None:
            for _ in lookaround.branches():
                compute()
            lookaround.step()
            lookaround.zero_grad()

    totals, computes = [], []
    for sample in range(repeats + 1):  # the first cycle warms up
        compute.elapsed_ms = 0.0
        synchronize(device)
        begin = time.perf_counter()
        for _ in range(average_every):
            iteration()
        synchronize(device)
        if sample:
            totals.append((time.perf_counter() - begin) * 1e3 / average_every)
            computes.append(compute.elapsed_ms / average_every)
    optimizer_ms = [total - forward_backward for total, forward_backward in zip(totals, computes)]
    total = Timing(tuple(totals), 1)
    return {"model": model_name, "optimizer": optimizer_name, "batch": batch.size, "image_size": batch.image_size,
            "num_branches": num_branches, "average_every": average_every, "median_ms": total.median,
            "total": total.to_json(), "forward_backward": Timing(tuple(computes), 1).to_json(),
            "optimizer_time": Timing(tuple(optimizer_ms), 1).to_json(),
            "optimizer_share": statistics.median(o / t for o, t in zip(optimizer_ms, totals))}


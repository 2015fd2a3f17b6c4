"""How much the suite measures in each mode: quick (a smoke run), default (minutes on a laptop CPU), full."""

from __future__ import annotations

from dataclasses import dataclass, field

from .parameter_sets import MODEL_NAMES
from .timing import TimingConfig


@dataclass(frozen=True)
class Batch:
    """Input of one forward+backward in the end-to-end section."""

    size: int
    image_size: int


@dataclass(frozen=True)
class Settings:
    """Everything that decides what a run measures and how long it takes.

    Attributes:
        timing: for the optimizer measurements (one sample is a whole cycle of ``average_every``
            outer iterations).
        parameter_sets: torchvision models whose parameter shapes every contender runs on.
        num_branches, average_every: ``d`` and ``k`` (the paper's defaults).
        numel_sweep: synthetic sizes for the scaling-with-N sweep.
        branch_sweep: values of ``d`` for the scaling-with-d sweep, on ``branch_sweep_set``.
        sweep_contenders: contenders the sweeps time (key prefixes).
        excluded: contenders this mode skips.
        end_to_end_models, end_to_end_repeats: the training-iteration section.
        end_to_end_cpu, end_to_end_cuda: its batch on each device type.
    """

    timing: TimingConfig
    parameter_sets: tuple[str, ...]
    numel_sweep: tuple[int, ...]
    branch_sweep: tuple[int, ...]
    end_to_end_models: tuple[str, ...]
    end_to_end_repeats: int
    end_to_end_cpu: Batch
    num_branches: int = 3
    average_every: int = 5
    branch_sweep_set: str = "resnet18"
    sweep_contenders: tuple[str, ...] = ("lookaround-", "sgd-fused")
    excluded: tuple[str, ...] = ()
    end_to_end_cuda: Batch = field(default=Batch(size=64, image_size=224))


MODES = {
    "quick": Settings(
        timing=TimingConfig(warmup=1, repeats=3, min_sample_ms=10.0),
        parameter_sets=("resnet18",),
        numel_sweep=(10**4, 10**5, 10**6),
        branch_sweep=(1, 2),
        end_to_end_models=("resnet18",),
        end_to_end_repeats=1,
        end_to_end_cpu=Batch(size=2, image_size=32),
        excluded=("compiled-flat",),
    ),
    "default": Settings(
        timing=TimingConfig(warmup=1, repeats=5, min_sample_ms=50.0),
        parameter_sets=MODEL_NAMES,
        numel_sweep=(10**4, 10**5, 10**6, 10**7, 10**8),
        branch_sweep=(1, 2, 3, 4, 6, 8),
        end_to_end_models=("resnet18", "resnet50"),
        end_to_end_repeats=3,
        end_to_end_cpu=Batch(size=8, image_size=64),
    ),
    "full": Settings(
        timing=TimingConfig(warmup=2, repeats=15, min_sample_ms=200.0),
        parameter_sets=MODEL_NAMES,
        numel_sweep=tuple(int(10 ** (exponent / 2)) for exponent in range(8, 17)),
        branch_sweep=tuple(range(1, 9)),
        end_to_end_models=("resnet18", "resnet50"),
        end_to_end_repeats=7,
        end_to_end_cpu=Batch(size=8, image_size=64),
    ),
}

"""What one invocation of the training command asks for, and each dataset's training recipe."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OPTIMIZERS = ("lookaround", "sgd", "lookahead", "swa")
BN_MODES = ("shared", "recompute", "average")
AMP_MODES = ("none", "bf16", "fp16")
SCHEDULES = ("cosine", "multistep")
DISTRIBUTED_MODES = ("none", "replicated", "branch-parallel")


@dataclass(frozen=True)
class DatasetRecipe:
    """The paper's training recipe for one dataset (defaults of the flags).

    ``augment`` holds one pipeline per branch for the default three branches;
    ``crop`` is ``"pad"`` (RandomCrop(image_size, padding=image_size // 8)) or
    ``"resized"`` (RandomResizedCrop(image_size)), applied before each branch's ops.
    """

    epochs: int
    image_size: int
    crop: str
    augment: tuple[str, ...]
    schedule: str
    milestones: tuple[int, ...]
    gamma: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


_CIFAR_MEAN, _CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_PAPER_AUGMENT = ("flip", "autoaugment", "randaugment")
_PAPER_AUGMENT_ROTATED = ("flip+rotate", "autoaugment+rotate", "randaugment+rotate")

RECIPES: dict[str, DatasetRecipe] = {
    # Sized so that the no-argument run (Lookaround and SGD) takes under 5 minutes on 2 CPU cores.
    # Flips are left out: a mirrored digit is another glyph (or none), not the same digit.
    "digits": DatasetRecipe(
        epochs=20, image_size=16, crop="pad", augment=("none", "autoaugment", "randaugment"),
        schedule="cosine", milestones=(), gamma=0.1, mean=(0.5,) * 3, std=(0.5,) * 3,
    ),
    "cifar10": DatasetRecipe(
        epochs=200, image_size=32, crop="pad", augment=_PAPER_AUGMENT,
        schedule="cosine", milestones=(), gamma=0.1, mean=_CIFAR_MEAN, std=_CIFAR_STD,
    ),
    "cifar100": DatasetRecipe(
        epochs=200, image_size=32, crop="pad", augment=_PAPER_AUGMENT_ROTATED,
        schedule="multistep", milestones=(60, 120, 160), gamma=0.2, mean=_CIFAR_MEAN, std=_CIFAR_STD,
    ),
    "imagefolder": DatasetRecipe(
        epochs=90, image_size=224, crop="resized", augment=_PAPER_AUGMENT_ROTATED,
        schedule="multistep", milestones=(30, 60), gamma=0.1, mean=_IMAGENET_MEAN, std=_IMAGENET_STD,
    ),
}


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of one invocation; one optimizer run is trained per entry of ``optimizers``."""

    dataset: str
    data_dir: Path | None
    image_size: int
    model: str
    optimizers: tuple[str, ...]
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    nesterov: bool
    warmup_epochs: int
    schedule: str
    milestones: tuple[int, ...]
    gamma: float
    min_lr: float
    num_branches: int
    average_every: int
    backend: str
    augment: tuple[str, ...]
    independent_batches: bool
    equal_steps: bool
    lookahead_k: int
    lookahead_alpha: float
    swa_start: int
    swa_lr: float
    bn: str
    bn_batches: int
    amp: str
    channels_last: bool
    compile: bool
    device: str
    distributed: str
    sync_bn: bool
    workers: int
    seed: int
    out_dir: Path
    resume: bool

    @property
    def recipe(self) -> DatasetRecipe:
        return RECIPES[self.dataset]

    def fingerprint(self) -> dict[str, Any]:
        """The settings a checkpoint must have been made with to be resumed under this config.

        Leaves out what cannot change the numbers: where output goes, worker count
        (augmentation is seeded per sample, not per worker) and the list of runs; and how
        the work is spread over processes, so that a checkpoint moves between one process
        and the distributed modes.
        """
        ignored = {"out_dir", "resume", "workers", "optimizers", "distributed", "sync_bn"}
        return {
            field.name: _plain(getattr(self, field.name))
            for field in dataclasses.fields(self)
            if field.name not in ignored
        }


def _plain(value: Any) -> Any:
    """``value`` as types that torch.load(weights_only=True) reads back (str, list, numbers)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value

"""Per-branch augmentation pipelines, named on the command line.

A pipeline is written as ops joined by ``+`` (``flip+rotate``); ``--augment`` takes one
pipeline per branch, separated by commas. Every pipeline starts with the dataset's crop
and ends with a uint8 CHW tensor: conversion to float and normalization happen on the
batch, on the training device.
"""

from __future__ import annotations

from typing import Callable

import torch
from torchvision.transforms import v2

from lookaround_fused.train.config import DatasetRecipe
from lookaround_fused.train.errors import UsageError

Transform = Callable[[object], torch.Tensor]

BRANCH_OPS: dict[str, Callable[[], list[v2.Transform]]] = {
    "none": lambda: [],
    "flip": lambda: [v2.RandomHorizontalFlip()],
    "rotate": lambda: [v2.RandomRotation(15)],
    "autoaugment": lambda: [v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)],
    "randaugment": lambda: [v2.RandAugment(num_ops=2, magnitude=9)],
    "trivialaugment": lambda: [v2.TrivialAugmentWide()],
}


def parse_pipelines(spec: str) -> tuple[str, ...]:
    """Split ``--augment`` into one pipeline per branch, checking every op name."""
    pipelines = tuple(part.strip() for part in spec.split(","))
    for pipeline in pipelines:
        for op in pipeline.split("+"):
            if op not in BRANCH_OPS:
                known = ", ".join(BRANCH_OPS)
                raise UsageError(f"unknown augmentation {op!r} in --augment {spec!r} (known: {known})")
    return pipelines


def default_pipelines(recipe: DatasetRecipe, num_branches: int) -> tuple[str, ...]:
    """The recipe's pipelines, repeated in turn when there are more branches than pipelines."""
    return tuple(recipe.augment[b % len(recipe.augment)] for b in range(num_branches))


def train_transform(recipe: DatasetRecipe, image_size: int, pipeline: str) -> Transform:
    """Crop, then the pipeline's ops; input PIL image or uint8 tensor, output uint8 CHW tensor."""
    if recipe.crop == "resized":
        crop = v2.RandomResizedCrop(image_size, antialias=True)
    else:
        crop = v2.RandomCrop(image_size, padding=image_size // 8)
    ops = [op for name in pipeline.split("+") for op in BRANCH_OPS[name]()]
    return v2.Compose([v2.ToImage(), crop, *ops, v2.ToPureTensor()])


def eval_transform(recipe: DatasetRecipe, image_size: int) -> Transform:
    """Deterministic held-out transform: resize and center crop for folder datasets, else none."""
    if recipe.crop == "resized":
        resize = [v2.Resize(image_size * 8 // 7, antialias=True), v2.CenterCrop(image_size)]
    else:
        resize = []
    return v2.Compose([v2.ToImage(), *resize, v2.ToPureTensor()])

"""The parameter tensors benchmarks run on: real model shapes without weights, or a synthetic size.

Only the shapes matter to an optimizer's speed, so models are built on the meta device: no memory,
no initialisation, any size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision

#: Models whose parameter shapes the suite measures (torchvision names).
MODEL_NAMES = ("resnet18", "resnet50", "vit_b_16")
#: Tensor size a synthetic set is cut into: about the mean tensor of a ResNet (ResNet-50: 159k).
SYNTHETIC_TENSOR_NUMEL = 2**18


@dataclass(frozen=True)
class ParameterSet:
    """A named list of parameter shapes."""

    name: str
    shapes: tuple[torch.Size, ...]

    @property
    def numel(self) -> int:
        return sum(shape.numel() for shape in self.shapes)

    @property
    def num_tensors(self) -> int:
        return len(self.shapes)


def model_parameter_set(name: str) -> ParameterSet:
    """The parameter shapes of torchvision model ``name`` (ImageNet head), built on the meta device."""
    with torch.device("meta"):
        model = torchvision.models.get_model(name, weights=None)
    return ParameterSet(name, tuple(p.shape for p in model.parameters()))


def synthetic_parameter_set(numel: int) -> ParameterSet:
    """``numel`` elements in 1-D tensors of :data:`SYNTHETIC_TENSOR_NUMEL` (the last one shorter)."""
    full, rest = divmod(numel, SYNTHETIC_TENSOR_NUMEL)
    sizes = [SYNTHETIC_TENSOR_NUMEL] * full + ([rest] if rest else [])
    label = f"{numel:.3g}".replace("e+0", "e").replace("e+", "e")
    return ParameterSet(f"N={label}", tuple(torch.Size([size]) for size in sizes))

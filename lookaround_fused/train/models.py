"""The models the command trains: a small CNN, or any torchvision classification model by name."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from lookaround_fused.train.errors import UsageError

SMALL_CNN = "small_cnn"


class SmallCNN(nn.Module):
    """Three conv-BatchNorm-ReLU stages and a linear head; any input size (global pooling)."""

    def __init__(self, num_classes: int, width: int = 32) -> None:
        super().__init__()
        stages, channels = [], 3
        for stage, stride in enumerate((1, 2, 2)):
            out = width * 2**stage
            conv = nn.Conv2d(channels, out, 3, stride=stride, padding=1, bias=False)
            stages += [conv, nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels = out
        self.features = nn.Sequential(*stages)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def model_names() -> list[str]:
    """Names ``--model`` accepts."""
    return [SMALL_CNN, *torchvision.models.list_models(module=torchvision.models)]


def build_model(name: str, num_classes: int, image_size: int) -> nn.Module:
    """A freshly initialised model (random init drawn from the global torch generator)."""
    if name == SMALL_CNN:
        return SmallCNN(num_classes)
    if name not in model_names():
        raise UsageError(f"unknown model {name!r} (known: {', '.join(model_names())})")
    extra = {"image_size": image_size} if name.startswith("vit_") else {}
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **extra)
    if image_size <= 64 and isinstance(model, torchvision.models.ResNet):
        _use_small_image_stem(model)
    return model


def _use_small_image_stem(model: torchvision.models.ResNet) -> None:
    """The CIFAR variant of ResNet: a 3x3 stride-1 first conv and no max-pool.

    ImageNet's stem shrinks a 32x32 image to 8x8 before the first block; the paper's
    CIFAR ResNets keep full resolution there.
    """
    model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision inits convs
    model.maxpool = nn.Identity()

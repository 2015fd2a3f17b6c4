"""Tiny settings shared by the training-command tests (runs of a second or two on CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

# 8x8 images, cheap random augmentations, no worker processes, the optimizer's reference backend.
TINY = ["--image-size", "8", "--augment", "none,flip,flip", "--workers", "0", "--backend", "eager"]


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageNet-layout folder of 4 classes of 12x12 PNGs: 32 training and 8 held-out images each.

    Each class is a pattern a horizontal flip keeps (a vertical ramp or a centred blob, or their
    negative), plus noise, so it can be learnt.
    """
    import torch
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    generator = torch.Generator().manual_seed(0)
    ramp = torch.linspace(-1, 1, 12)
    blob = (1 - (ramp.view(1, 12) ** 2 + ramp.view(12, 1) ** 2) / 2).clamp(0, 1)
    patterns = [(ramp.view(12, 1) + 1).expand(12, 12) / 2, blob]
    patterns += [1 - pattern for pattern in patterns]
    for split, count in (("train", 32), ("val", 8)):
        for label, pattern in enumerate(patterns):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(count):
                noisy = (pattern + 0.3 * torch.rand(3, 12, 12, generator=generator)).clamp(0, 1)
                pixels = (noisy * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture
def tiny(tmp_path: Path, image_folder: Path):
    """``tiny(*flags, out=..., digits=False)``: tiny settings plus ``flags``, writing to ``out``
    (default ``tmp_path / "out"``), on :func:`image_folder` (8 minibatches of 16 per epoch) or,
    with ``digits``, on the embedded digits (11 minibatches of 128)."""

    def args(*flags: str, out: Path | None = None, digits: bool = False) -> list[str]:
        data = [] if digits else ["--data", str(image_folder), "--batch-size", "16"]
        return [*TINY, *data, "--out", str(out or tmp_path / "out"), *flags]

    return args


@pytest.fixture
def stop_at(monkeypatch):
    """``stop_at(method, n)``: SIGTERM arrives during the ``n``-th minibatch (1-based) of ``method``."""
    import signal

    from lookaround_fused.train.methods import METHODS

    def arm(method: str, minibatch: int, signum: int = signal.SIGTERM) -> None:
        cls = METHODS[method]
        train_minibatch = cls.train_minibatch
        calls = 0

        def counting(self, views, labels):
            nonlocal calls
            calls += 1
            if calls == minibatch:
                signal.raise_signal(signum)
            return train_minibatch(self, views, labels)

        monkeypatch.setattr(cls, "train_minibatch", counting)

    return arm

"""Datasets and loaders: every branch gets its own augmented view of the same minibatch.

Augmentation randomness is a pure function of (seed, stream, epoch, branch, image index),
so the data a step sees does not depend on the number of workers, and a run resumed in
the middle of an epoch sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from lookaround_fused.distributed import DataShard
from lookaround_fused.train.augment import Transform, eval_transform, train_transform
from lookaround_fused.train.config import TrainConfig
from lookaround_fused.train.errors import UsageError
from lookaround_fused.train.parallel import rank_shard

#: ``stream`` values of a batch key: training batches, and the batches that recompute BatchNorm.
TRAIN_STREAM, BN_STREAM = 0, 1

# Digits held out for evaluation; the split is fixed, whatever --seed says.
_DIGITS_HELD_OUT = 0.2
_DIGITS_SPLIT_SEED = 0


class ImageTensors(Dataset):
    """Images held in memory as uint8 ``[N, 3, H, W]`` with int64 labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


@dataclass(frozen=True)
class ImageData:
    """Un-augmented training and held-out images of one dataset."""

    train: Dataset
    val: Dataset
    num_classes: int


def load_image_data(cfg: TrainConfig) -> ImageData:
    """The dataset ``cfg`` names, read from disk or from scikit-learn; never downloads."""
    if cfg.dataset == "digits":
        data = _load_digits(cfg.image_size)
    else:
        if cfg.data_dir is None:
            raise UsageError(f"--dataset {cfg.dataset} needs --data DIR")
        if not cfg.data_dir.is_dir():
            raise UsageError(f"data folder {cfg.data_dir} does not exist")
        if cfg.dataset == "imagefolder":
            data = _load_image_folders(cfg.data_dir)
        else:
            data = _load_cifar(cfg.dataset, cfg.data_dir, cfg.image_size)
    if len(data.train) < cfg.batch_size:
        raise UsageError(f"{len(data.train)} training images are fewer than one batch (--batch-size {cfg.batch_size})")
    return data


def _load_digits(image_size: int) -> ImageData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = torch.from_numpy(digits.images).float() * (255.0 / 16.0)  # 8x8, values 0..16
    images = _resize(pixels.unsqueeze(1).expand(-1, 3, -1, -1), image_size)
    labels = torch.from_numpy(digits.target).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(_DIGITS_SPLIT_SEED))
    held_out = int(len(labels) * _DIGITS_HELD_OUT)
    val, train = order[:held_out], order[held_out:]
    return ImageData(ImageTensors(images[train], labels[train]), ImageTensors(images[val], labels[val]), 10)


def _load_cifar(name: str, root: Path, image_size: int) -> ImageData:
    from torchvision import datasets

    cls, classes = (datasets.CIFAR10, 10) if name == "cifar10" else (datasets.CIFAR100, 100)
    try:
        splits = [cls(str(root), train=train, download=False) for train in (True, False)]
    except RuntimeError:
        raise UsageError(f"no {name} data under {root} (expected the folder {cls.base_folder}/ in it)") from None
    train, val = (
        ImageTensors(_resize(torch.from_numpy(split.data).permute(0, 3, 1, 2).float(), image_size),
                     torch.tensor(split.targets))
        for split in splits
    )
    return ImageData(train, val, classes)


def _load_image_folders(root: Path) -> ImageData:
    from torchvision import datasets

    splits = []
    for name in ("train", "val"):
        if not (root / name).is_dir():
            raise UsageError(f"data folder {root} has no {name}/ folder of class folders")
        try:
            splits.append(datasets.ImageFolder(str(root / name)))
        except FileNotFoundError:
            raise UsageError(f"no images in class folders under {root / name}") from None
    train, val = splits
    if train.classes != val.classes:
        raise UsageError(f"class folders of {root}/train and {root}/val differ")
    return ImageData(train, val, len(train.classes))


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Float ``[N, C, H, W]`` in 0..255 to uint8 at ``size`` x ``size`` (bilinear)."""
    if images.shape[-1] != size or images.shape[-2] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return images.round().clamp(0, 255).to(torch.uint8)


def _mix(*values: int) -> int:
    """A 63-bit seed determined by the values (which are small non-negative integers)."""
    seed = 0
    for value in values:
        seed = (seed * 1_000_003 + value) % (1 << 63)
    return seed


class MultiViewDataset(Dataset):
    """Item ``(stream, epoch, indices)``: image ``indices[b]`` under branch ``b``'s transform.

    Returns ``(views, labels)``: a list of one uint8 tensor per branch and an int64 tensor
    of the branches' labels. With shared minibatches all ``indices`` are equal and the
    image is read once.
    """

    def __init__(self, base: Dataset, transforms: Sequence[Transform], seed: int) -> None:
        self.base, self.transforms, self.seed = base, list(transforms), seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int, tuple[int, ...]]) -> tuple[list[torch.Tensor], torch.Tensor]:
        stream, epoch, indices = key
        views, labels, loaded_index = [], [], None
        # The torchvision transforms draw from the global CPU generator: seed it per view,
        # and give the caller's random stream (dropout, with no workers) back afterwards.
        generator = torch.default_generator
        caller_state = generator.get_state()
        try:
            for branch, (transform, index) in enumerate(zip(self.transforms, indices)):
                if index != loaded_index:
                    image, label = self.base[index]
                    loaded_index = index
                generator.manual_seed(_mix(self.seed, stream, epoch, branch, index))
                views.append(transform(image))
                labels.append(label)
        finally:
            generator.set_state(caller_state)
        return views, torch.tensor(labels)


class MinibatchSampler:
    """Batch sampler of :class:`MultiViewDataset` keys for one epoch at a time.

    Each epoch's order is drawn from its own seed. With ``independent`` every branch
    shuffles separately (the reference code's behaviour); otherwise all branches see the
    same images (Algorithm 1). :meth:`select` says which epoch to yield next, from which
    batch, and how many batches. Under torch.distributed a rank takes its ``shard`` of
    every global minibatch: the global order, and so a resume position, is the same for
    any number of processes.
    """

    def __init__(self, dataset_size: int, batch_size: int, num_views: int, independent: bool, seed: int,
                 shard: DataShard = DataShard(1, 0)) -> None:
        self.dataset_size, self.batch_size, self.shard = dataset_size, batch_size, shard
        self.num_views, self.independent, self.seed = num_views, independent, seed
        self.batches_per_epoch = dataset_size // batch_size  # the last, partial batch is dropped
        self.select(TRAIN_STREAM, epoch=0)

    def select(self, stream: int, epoch: int, start: int = 0, limit: int | None = None) -> None:
        self.stream, self.epoch, self.start = stream, epoch, start
        self.stop = self.batches_per_epoch if limit is None else min(self.batches_per_epoch, start + limit)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int, tuple[int, ...]]]]:
        orders = [self._order(branch) for branch in range(self.num_views if self.independent else 1)]
        if not self.independent:
            orders *= self.num_views
        for batch in range(self.start, self.stop):
            rows = slice(batch * self.batch_size, (batch + 1) * self.batch_size)
            shard = slice(self.shard.index, None, self.shard.count)
            columns = zip(*(order[rows][shard].tolist() for order in orders))
            yield [(self.stream, self.epoch, indices) for indices in columns]

    def _order(self, branch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(_mix(self.seed, self.stream, self.epoch, branch))
        return torch.randperm(self.dataset_size, generator=generator)


class Loaders:
    """Training batches (one view per branch), BatchNorm-recompute batches and held-out batches.

    Workers ship uint8 images; conversion to float, normalization and the memory format
    happen on the training device.
    """

    def __init__(self, data: ImageData, cfg: TrainConfig, pipelines: Sequence[str], device: torch.device) -> None:
        transforms = [train_transform(cfg.recipe, cfg.image_size, pipeline) for pipeline in pipelines]
        self.sampler = MinibatchSampler(len(data.train), cfg.batch_size, num_views=len(pipelines),
                                        independent=cfg.independent_batches, seed=cfg.seed, shard=rank_shard(cfg))
        # A generator of their own: loaders draw worker seeds from it, and must not draw them from the
        # global one (how often they do depends on the worker count, and the global stream is checkpointed).
        common = dict(num_workers=cfg.workers, pin_memory=device.type == "cuda", persistent_workers=cfg.workers > 0,
                      worker_init_fn=_leave_ctrl_c_to_main_process, generator=torch.Generator().manual_seed(cfg.seed))
        train = MultiViewDataset(data.train, transforms, cfg.seed)
        self._train = DataLoader(train, batch_sampler=self.sampler, **common)
        held_out = _Transformed(data.val, eval_transform(cfg.recipe, cfg.image_size))
        self._val = DataLoader(held_out, batch_size=cfg.batch_size, shuffle=False, **common)
        self._device = device
        self._memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self._mean = torch.tensor(cfg.recipe.mean, device=device).view(1, 3, 1, 1) * 255
        self._std = torch.tensor(cfg.recipe.std, device=device).view(1, 3, 1, 1) * 255

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch

    def train_batches(self, epoch: int, start: int = 0) -> Iterator[tuple[list[torch.Tensor], list[torch.Tensor]]]:
        """Batches ``start, start + 1, ...`` of ``epoch``, as (one input per branch, one label tensor per branch)."""
        self.sampler.select(TRAIN_STREAM, epoch, start)
        return self._multi_view(iter(self._train))

    def bn_batches(self, epoch: int, count: int) -> Iterator[tuple[list[torch.Tensor], list[torch.Tensor]]]:
        """``count`` training batches from a stream of their own (the training order is untouched)."""
        self.sampler.select(BN_STREAM, epoch, limit=count)
        return self._multi_view(iter(self._train))

    def val_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in self._val:
            yield self._prepare(images), labels.to(self._device, non_blocking=True)

    def _multi_view(self, batches: Iterator) -> Iterator[tuple[list[torch.Tensor], list[torch.Tensor]]]:
        for views, labels in batches:
            labels = labels.to(self._device, non_blocking=True)
            yield [self._prepare(view) for view in views], list(labels.unbind(dim=1))

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self._device, non_blocking=True).float()
        return ((images - self._mean) / self._std).contiguous(memory_format=self._memory_format)


def _leave_ctrl_c_to_main_process(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group: workers must keep serving while the main
    # process finishes its step and writes the checkpoint; they exit when it closes them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Transformed(Dataset):
    def __init__(self, base: Dataset, transform: Transform) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[index]
        return self.transform(image), label

"""What a run shows and leaves behind: progress bar, epoch lines, CSV, TensorBoard, the PNG plot."""

from __future__ import annotations

import csv
import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from tqdm import tqdm

from lookaround_fused.train.methods import BatchStats


@dataclass
class EpochTotals:
    """Running sums of the epoch in progress (carried in checkpoints taken mid-epoch).

    Loss and correct counts stay on the device while training, so steps do not wait for it.
    """

    loss_sum: float | torch.Tensor = 0.0
    correct: int | torch.Tensor = 0
    count: int = 0
    seconds: float = 0.0

    def add(self, stats: BatchStats) -> None:
        self.loss_sum = self.loss_sum + stats.loss_sum
        self.correct = self.correct + stats.correct
        self.count += stats.count

    def state_dict(self) -> dict[str, float | int]:
        return {"loss_sum": float(self.loss_sum), "correct": int(self.correct), "count": self.count,
                "seconds": self.seconds}


@dataclass(frozen=True)
class EpochRecord:
    """Metrics of one finished epoch (accuracies in percent; held-out ones on the evaluated weights)."""

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    images_per_s: float
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def epoch_line(name: str, epochs: int, record: EpochRecord) -> str:
    return (
        f"{name:<10} epoch {record.epoch:>3}/{epochs}  loss {record.train_loss:.4f}  train {record.train_acc:5.1f}%  "
        f"held-out {record.val_acc:5.1f}%  lr {record.lr:.4g}  {record.images_per_s:,.0f} img/s  {record.seconds:.1f} s"
    )


class EpochProgress:
    """A tqdm bar over one epoch's minibatches (shown on terminals only) with loss, accuracy, lr, img/s."""

    _REFRESH_S = 0.5  # reading the running sums syncs with the device: not every step

    def __init__(self, name: str, epoch: int, epochs: int, total: int, done: int, shown: bool = True) -> None:
        self.bar = tqdm(total=total, initial=done, desc=f"{name} {epoch}/{epochs}", leave=False,
                        disable=None if shown else True, file=sys.stderr, dynamic_ncols=True)
        self._last = 0.0

    def update(self, totals: EpochTotals, lr: float) -> None:
        """Advance one minibatch; the running sums are read (a device sync) only when shown."""
        self.bar.update()
        now = time.perf_counter()
        if not self.bar.disable and now - self._last >= self._REFRESH_S:
            self._last = now
            self.bar.set_postfix(loss=f"{float(totals.loss_sum) / totals.count:.4f}",
                                 acc=f"{100.0 * int(totals.correct) / totals.count:.1f}%", lr=f"{lr:.4g}",
                                 img_s=f"{totals.count / totals.seconds:,.0f}", refresh=False)

    def close(self) -> None:
        self.bar.close()


class MetricsLog:
    """``metrics.csv`` in the run's folder (rewritten whole, so a resumed run's file stays exact),
    and TensorBoard scalars there when tensorboard is installed."""

    def __init__(self, run_dir: Path, epochs_done: int) -> None:
        self.csv_path = run_dir / "metrics.csv"
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # optional
            self._tensorboard = None
        else:
            self._tensorboard = SummaryWriter(str(run_dir / "tensorboard"), purge_step=epochs_done + 1)

    def write(self, history: Sequence[EpochRecord]) -> None:
        temporary = self.csv_path.with_suffix(".csv.tmp")
        with open(temporary, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=[f.name for f in dataclasses.fields(EpochRecord)])
            writer.writeheader()
            writer.writerows(record.as_dict() for record in history)
        os.replace(temporary, self.csv_path)
        if self._tensorboard is not None:
            latest = history[-1]
            for key, value in latest.as_dict().items():
                if key != "epoch":
                    self._tensorboard.add_scalar(key, value, latest.epoch)
            self._tensorboard.flush()

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()


def summary_table(histories: Mapping[str, Sequence[EpochRecord]]) -> str:
    """Final and best held-out accuracy of every run, side by side."""
    names = list(histories)
    width = max(14, *(len(name) + 2 for name in names))
    best = [max(h, key=lambda record: record.val_acc) for h in histories.values()]
    rows = [
        ("held-out acc", [f"{h[-1].val_acc:.2f}%" for h in histories.values()]),
        ("best (epoch)", [f"{record.val_acc:.2f}% ({record.epoch})" for record in best]),
        ("train loss", [f"{h[-1].train_loss:.4f}" for h in histories.values()]),
        ("train time", [f"{sum(r.seconds for r in h):.1f} s" for h in histories.values()]),
    ]
    lines = [f"{'':<14}" + "".join(f"{name:>{width}}" for name in names)]
    lines += [f"{label:<14}" + "".join(f"{cell:>{width}}" for cell in cells) for label, cells in rows]
    return "\n".join(lines)


def plot_curves(histories: Mapping[str, Sequence[EpochRecord]], path: Path) -> None:
    """PNG with training loss and held-out accuracy per epoch, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, (loss_axes, acc_axes) = plt.subplots(1, 2, figsize=(10, 4))
    for name, history in histories.items():
        epochs = [r.epoch for r in history]
        loss_axes.plot(epochs, [r.train_loss for r in history], label=name)
        acc_axes.plot(epochs, [r.val_acc for r in history], label=name)
    loss_axes.set(title="training loss", xlabel="epoch", yscale="log")
    acc_axes.set(title="held-out accuracy (%)", xlabel="epoch")
    for axes in (loss_axes, acc_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    temporary = path.with_suffix(".tmp.png")
    figure.savefig(temporary, dpi=100)
    plt.close(figure)
    os.replace(temporary, path)

"""One optimizer's training run: epochs of minibatches, evaluation, checkpoints, interruption."""

from __future__ import annotations

import contextlib
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn

from lookaround_fused.distributed import is_main_process, save_on_rank0
from lookaround_fused.train.batchnorm import recomputed_batchnorm
from lookaround_fused.train.checkpoint import FILE_NAME, FORMAT_VERSION
from lookaround_fused.train.config import TrainConfig
from lookaround_fused.train.data import ImageData, Loaders
from lookaround_fused.train.errors import UsageError
from lookaround_fused.train.methods import METHODS, ForwardBackward, TrainingMethod, autocast
from lookaround_fused.train.models import build_model
from lookaround_fused.train.parallel import synchronize_batchnorm
from lookaround_fused.train.reporting import EpochProgress, EpochRecord, EpochTotals, MetricsLog, epoch_line
from lookaround_fused.train.schedule import build_scheduler

AUTOCAST_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class StopSignal:
    """Records SIGTERM/SIGINT instead of dying, so the loop can checkpoint and exit cleanly."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def agreed(self, device: torch.device) -> bool:
        """Whether to stop now. Under torch.distributed a signal to any rank stops every rank at the
        same step (otherwise they would wait in different collectives): a collective, call it on every rank."""
        if dist.is_initialized():
            signum = torch.tensor(self.signum or 0, device=device)
            dist.all_reduce(signum, op=dist.ReduceOp.MAX)
            self.signum = int(signum) or None
        return self.signum is not None


@contextlib.contextmanager
def catch_stop_signals() -> Iterator[StopSignal]:
    """Within the block SIGTERM and SIGINT set ``.signum`` on the yielded object."""
    stop = StopSignal()
    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@dataclass
class RunOutcome:
    """The epochs a run has finished, and whether a signal stopped it before the last."""

    history: list[EpochRecord] = field(default_factory=list)
    stopped_by: int | None = None  # the signal that interrupted the run


class TrainingRun:
    """Trains one method from scratch or from a checkpoint; :meth:`train` does the epochs."""

    def __init__(self, cfg: TrainConfig, name: str, data: ImageData, device: torch.device, run_dir: Path,
                 checkpoint: dict[str, Any] | None) -> None:
        self.cfg, self.name, self.device, self.run_dir = cfg, name, device, run_dir
        method_cls = METHODS[name]
        self.loaders = Loaders(data, cfg, cfg.augment[: method_cls.num_views(cfg)], device)

        torch.manual_seed(cfg.seed)  # every method starts from the same initial weights
        memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        model = build_model(cfg.model, data.num_classes, cfg.image_size)
        self.model: nn.Module = model.to(device, memory_format=memory_format)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
        self.autocast_dtype = AUTOCAST_DTYPES[cfg.amp]
        forward = torch.compile(self.model) if cfg.compile else self.model
        run = ForwardBackward(forward, self.autocast_dtype, self.scaler, device)
        # Created after the model has its device and memory format: Lookaround aliases the parameters.
        self.method: TrainingMethod = method_cls(self.model, cfg, run)
        if cfg.sync_bn:
            synchronize_batchnorm(self.model, self.method.optimizer, cfg.distributed)
        self.scheduler = build_scheduler(self.method.optimizer, cfg, self.loaders.steps_per_epoch, swa=name == "swa")

        self.epoch, self.batch, self.totals = 0, 0, EpochTotals()
        self.history: list[EpochRecord] = []
        if checkpoint is not None:
            self._restore(checkpoint)

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "format_version": FORMAT_VERSION,
            "optimizer": self.name,
            "config": self.cfg.fingerprint(),
            "finished": self.epoch >= self.cfg.epochs,
            "epoch": self.epoch,
            "batch": self.batch,
            "totals": self.totals.state_dict(),
            "history": [record.as_dict() for record in self.history],
            "model": self.model.state_dict(),
            "method": self.method.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
        }

    def _restore(self, state: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.method.load_state_dict(state["method"])  # after the model: Lookaround restores every branch
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["rng"]["torch"])
            if "cuda" in state["rng"] and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
            self.epoch, self.batch = state["epoch"], state["batch"]
            self.totals = EpochTotals(**state["totals"])
            self.history = [EpochRecord(**record) for record in state["history"]]
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            reason = str(error).splitlines()[0]
            raise UsageError(f"checkpoint for {self.name} does not fit this run ({reason})") from None

    def save(self) -> None:
        """Write the checkpoint (every rank builds the state: gathering branch-parallel's is a collective)."""
        save_on_rank0(self._state(), self.run_dir / FILE_NAME)

    # ------------------------------------------------------------------ training
    def train(self, stop: StopSignal) -> RunOutcome:
        """Train until the last epoch or a stop signal; checkpoints after every epoch and when stopped.

        Under torchrun every rank trains and evaluates; rank 0 reports and writes the files.
        """
        log = MetricsLog(self.run_dir, len(self.history)) if is_main_process() else None
        try:
            while self.epoch < self.cfg.epochs:
                if not self._train_epoch(stop):
                    self.save()
                    return RunOutcome(self.history, stop.signum)
                self.history.append(self._finish_epoch())
                if log is not None:
                    log.write(self.history)
                    print(epoch_line(self.name, self.cfg.epochs, self.history[-1]), flush=True)
                self.save()
                if stop.agreed(self.device):
                    return RunOutcome(self.history, stop.signum)
        finally:
            if log is not None:
                log.close()
        return RunOutcome(self.history)

    def _train_epoch(self, stop: StopSignal) -> bool:
        """The rest of the current epoch's minibatches; False if a stop signal cut it short."""
        steps = self.loaders.steps_per_epoch
        progress = EpochProgress(self.name, self.epoch + 1, self.cfg.epochs, steps, self.batch,
                                 shown=is_main_process())
        self.model.train()
        try:
            started = time.perf_counter() - self.totals.seconds
            for views, labels in self.loaders.train_batches(self.epoch, self.batch):
                stats = self.method.train_minibatch(views, labels)
                self.scheduler.step()
                self.batch += 1
                self.totals.add(stats)
                self.totals.seconds = time.perf_counter() - started
                progress.update(self.totals, self._lr())
                if stop.agreed(self.device) and self.batch < steps:
                    return False
        finally:
            progress.close()
        return True

    def _finish_epoch(self) -> EpochRecord:
        self.method.end_epoch(self.epoch)
        val_loss, val_acc = self.evaluate()
        totals = self.totals
        record = EpochRecord(
            epoch=self.epoch + 1,
            train_loss=float(totals.loss_sum) / totals.count,
            train_acc=100.0 * int(totals.correct) / totals.count,
            val_loss=val_loss,
            val_acc=val_acc,
            lr=self._lr(),
            images_per_s=totals.count / totals.seconds,
            seconds=totals.seconds,
        )
        self.epoch, self.batch, self.totals = self.epoch + 1, 0, EpochTotals()
        return record

    def _lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Held-out loss and accuracy (%) of the method's evaluation weights (averaged, for Lookaround)."""
        with self.method.evaluation_weights(), self._batchnorm_for_evaluation():
            self.model.eval()
            loss_sum, correct, count = torch.zeros((), device=self.device), torch.zeros((), device=self.device), 0
            for images, labels in self.loaders.val_batches():
                with autocast(self.device, self.autocast_dtype):
                    logits = self.model(images)
                loss_sum += nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
                correct += (logits.argmax(dim=1) == labels).sum()
                count += len(labels)
            self.model.train()
        return float(loss_sum) / count, 100.0 * float(correct) / count

    def _batchnorm_for_evaluation(self) -> contextlib.AbstractContextManager[None]:
        if not self.method.recomputes_batchnorm():
            return contextlib.nullcontext()
        inputs = (view for views, _ in self.loaders.bn_batches(self.epoch, self.cfg.bn_batches) for view in views)
        return recomputed_batchnorm(self.model, inputs)

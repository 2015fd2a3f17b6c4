"""Command line of ``lookaround-train``: flags to a config, then each optimizer's run and the comparison."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from lookaround_fused.backends import BACKEND_NAMES, resolve_backend
from lookaround_fused.distributed import is_main_process
from lookaround_fused.train.augment import default_pipelines, parse_pipelines
from lookaround_fused.train.checkpoint import FILE_NAME, check_compatible, read_checkpoint
from lookaround_fused.train.config import (
    AMP_MODES, BN_MODES, DISTRIBUTED_MODES, OPTIMIZERS, RECIPES, SCHEDULES, TrainConfig,
)
from lookaround_fused.train.data import load_image_data
from lookaround_fused.train.errors import UsageError
from lookaround_fused.train.loop import TrainingRun, catch_stop_signals
from lookaround_fused.train.models import SMALL_CNN, model_names
from lookaround_fused.train.parallel import torchrun_job
from lookaround_fused.train.reporting import EpochRecord, plot_curves, summary_table

PROG = "lookaround-train"
DEFAULT_OUT = Path("runs/lookaround-train")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit code 2, through main()
        raise UsageError(message)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default only where it has one (None: the help says; False: off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


def _number(kind: Callable[[str], Any], minimum: float, inclusive: bool = True) -> Callable[[str], Any]:
    expected = f"expected {kind.__name__} {'>=' if inclusive else '>'} {minimum}"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{expected}, got {text!r}") from None
        if value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"{expected}, got {text!r}")
        return value

    return parse


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    positive_int, count = _number(int, 1), _number(int, 0)
    positive, non_negative = _number(float, 0.0, inclusive=False), _number(float, 0.0)
    parser = _Parser(
        prog=PROG,
        description="Train an image classifier with Lookaround and its baselines, and compare them. "
        "Without arguments: a small CNN on scikit-learn's digits, Lookaround vs SGD, in a few minutes on CPU.",
        formatter_class=_HelpFormatter,
    )
    add = parser.add_argument_group("data").add_argument
    add("--dataset", choices=list(RECIPES), help="default: imagefolder with --data, else digits")
    add("--data", type=Path, help="folder with train/ and val/ class folders, or holding cifar-10-batches-py/ "
        "or cifar-100-python/")
    add("--image-size", type=_number(int, 8), help="default: the dataset's (digits 16, CIFAR 32, folders 224)")
    add("--augment", help="one pipeline per branch, comma-separated; ops joined by '+' "
        "(none, flip, rotate, autoaugment, randaugment, trivialaugment); default: the dataset's recipe")
    add("--independent-batches", action="store_true",
        help="each branch shuffles on its own (the reference code) instead of all seeing one minibatch")
    add("--workers", type=count, default=min(8, os.cpu_count() or 1), help="DataLoader worker processes")

    add = parser.add_argument_group("model and optimizers").add_argument
    add("--model", default=SMALL_CNN, help=f"{SMALL_CNN} or a torchvision classification model name")
    add("--optimizer", default="lookaround,sgd", help=f"comma-separated runs to compare: {', '.join(OPTIMIZERS)}")
    add("--epochs", type=positive_int, help="default: the dataset's recipe (digits 20, CIFAR 200, folders 90)")
    add("--batch-size", type=positive_int, default=128, help="images per minibatch (every branch sees them)")
    add("--lr", type=positive, default=0.1, help="peak learning rate")
    add("--momentum", type=non_negative, default=0.9, help="SGD momentum (every method)")
    add("--weight-decay", type=non_negative, default=5e-4, help="coupled L2, as torch.optim.SGD")
    add("--nesterov", action="store_true", help="Nesterov momentum")
    add("--warmup-epochs", type=count, default=1, help="linear warm-up from lr / steps")
    add("--schedule", choices=SCHEDULES, help="after warm-up; default: the dataset's recipe")
    add("--milestones", type=_int_list, help="multistep epochs, comma-separated; default: the recipe's")
    add("--gamma", type=positive, help="multistep factor; default: the recipe's")
    add("--min-lr", type=non_negative, default=1e-5, help="end of the cosine schedule")
    add("--num-branches", type=positive_int, default=3, help="Lookaround's d")
    add("--average-every", type=positive_int, default=5, help="Lookaround's k")
    add("--backend", choices=BACKEND_NAMES, default="auto", help="Lookaround backend")
    add("--equal-steps", action=argparse.BooleanOptionalAction, default=True,
        help="baselines take one step per branch view, as many gradient steps as Lookaround (the paper's protocol)")
    add("--lookahead-k", type=positive_int, default=5, help="Lookahead: steps between syncs")
    add("--lookahead-alpha", type=_number(float, 0.0, inclusive=False), default=0.5,
        help="Lookahead: slow weights move this fraction towards the fast ones")
    add("--swa-start", type=count, help="epoch from which SWA averages; default: 75%% of --epochs")
    add("--swa-lr", type=positive, default=0.05,
        help="SWA: the lr while averaging, reached by a one-epoch cosine anneal")

    add = parser.add_argument_group("BatchNorm and evaluation").add_argument
    add("--bn", choices=BN_MODES, default="recompute",
        help="running statistics of the averaged weights: shared (one set, every branch updates it), "
        "recompute (over --bn-batches before each evaluation), average (per branch, averaged with the weights)")
    add("--bn-batches", type=positive_int, default=32, help="training batches for --bn recompute")

    add = parser.add_argument_group("speed").add_argument
    add("--amp", choices=AMP_MODES, default="none", help="autocast dtype (fp16 adds a GradScaler)")
    add("--channels-last", action="store_true", help="channels_last memory format for model and inputs")
    add("--compile", action="store_true", help="torch.compile the model")
    add("--device", default="auto", help="auto, cpu, cuda or cuda:N")

    add = parser.add_argument_group("several processes (start with torchrun)").add_argument
    add("--distributed", choices=DISTRIBUTED_MODES, default="none",
        help="replicated: every rank trains every branch on its shard of each minibatch; branch-parallel: one "
        "group of ranks per branch (the number of processes a multiple of --num-branches), weights averaged "
        "across groups every --average-every steps. Lookaround only; each rank uses cuda:LOCAL_RANK, or the CPU")
    add("--sync-bn", action="store_true",
        help="SyncBatchNorm: batch statistics over the ranks that train the same branch (GPUs only)")

    add = parser.add_argument_group("output").add_argument
    add("--seed", type=count, default=42, help="initial weights, data order and augmentation")
    add("--out", type=Path, help=f"output folder (default {DEFAULT_OUT})")
    add("--resume", type=Path, metavar="OUT",
        help="continue the runs whose checkpoints are in this output folder (bitwise as if never stopped)")
    return parser


def parse_config(argv: Sequence[str] | None) -> TrainConfig:
    """Flags to a validated config; bad input raises :class:`UsageError`."""
    args = build_parser().parse_args(argv)
    dataset = args.dataset or ("imagefolder" if args.data else "digits")
    if dataset == "digits" and args.data is not None:
        raise UsageError("--data is for --dataset cifar10, cifar100 or imagefolder (digits ship with scikit-learn)")
    recipe = RECIPES[dataset]
    optimizers = tuple(name.strip() for name in args.optimizer.split(","))
    for name in optimizers:
        if name not in OPTIMIZERS:
            raise UsageError(f"unknown optimizer {name!r} (known: {', '.join(OPTIMIZERS)})")
    if len(set(optimizers)) != len(optimizers):
        raise UsageError(f"--optimizer {args.optimizer!r} names a run twice")
    if args.model not in model_names():
        raise UsageError(f"unknown model {args.model!r} (known: {', '.join(model_names())})")
    if args.augment is None:
        augment = default_pipelines(recipe, args.num_branches)
    else:
        augment = parse_pipelines(args.augment)
        if len(augment) != args.num_branches:
            raise UsageError(f"--augment gives {len(augment)} pipelines for --num-branches {args.num_branches}")
    epochs = args.epochs or recipe.epochs
    swa_start = (3 * epochs) // 4 if args.swa_start is None else args.swa_start
    if "swa" in optimizers and swa_start >= epochs:
        raise UsageError(f"--swa-start {swa_start} leaves no epoch to average (--epochs {epochs})")
    if args.resume is not None and args.out is not None and args.out != args.resume:
        raise UsageError("--resume OUT continues in OUT: leave out --out or give the same folder")
    _check_distributed_flags(args, optimizers)
    return TrainConfig(
        dataset=dataset, data_dir=args.data, image_size=args.image_size or recipe.image_size, model=args.model,
        optimizers=optimizers, epochs=epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, nesterov=args.nesterov, warmup_epochs=args.warmup_epochs,
        schedule=args.schedule or recipe.schedule,
        milestones=recipe.milestones if args.milestones is None else args.milestones,
        gamma=args.gamma or recipe.gamma, min_lr=args.min_lr, num_branches=args.num_branches,
        average_every=args.average_every, backend=args.backend, augment=augment,
        independent_batches=args.independent_batches, equal_steps=args.equal_steps, lookahead_k=args.lookahead_k,
        lookahead_alpha=args.lookahead_alpha, swa_start=swa_start, swa_lr=args.swa_lr, bn=args.bn,
        bn_batches=args.bn_batches, amp=args.amp, channels_last=args.channels_last, compile=args.compile,
        device=args.device, distributed=args.distributed, sync_bn=args.sync_bn, workers=args.workers, seed=args.seed,
        out_dir=args.resume or args.out or DEFAULT_OUT, resume=args.resume is not None,
    )


def _check_distributed_flags(args: argparse.Namespace, optimizers: tuple[str, ...]) -> None:
    if args.distributed == "none":
        if args.sync_bn:
            raise UsageError("--sync-bn synchronizes BatchNorm across processes: it needs --distributed")
        return
    if optimizers != ("lookaround",):
        raise UsageError(f"--distributed trains Lookaround only: give --optimizer lookaround, not {args.optimizer!r}")
    if args.device != "auto":
        raise UsageError("--distributed gives each rank its device (cuda:LOCAL_RANK, or the CPU): leave out --device")


def resolve_device(cfg: TrainConfig) -> torch.device:
    """The training device of a single process, checked to exist and to run the chosen Lookaround backend."""
    if cfg.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(cfg.device)
        except RuntimeError:
            raise UsageError(f"unknown device {cfg.device!r}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"--device {cfg.device}: CUDA is not available here")
    check_backend(cfg, device)
    return device


def check_backend(cfg: TrainConfig, device: torch.device) -> None:
    """Raise :class:`UsageError` unless the chosen Lookaround backend runs on ``device``."""
    if "lookaround" in cfg.optimizers:
        try:
            resolve_backend(cfg.backend, device)
        except RuntimeError as error:
            raise UsageError(str(error)) from None


def load_checkpoints(cfg: TrainConfig) -> dict[str, dict[str, Any] | None]:
    """Each run's checkpoint to continue from (None: start afresh), all checked before anything runs.

    Without --resume an unfinished checkpoint in the output folder is an error, not
    something to overwrite.
    """
    found: dict[str, dict[str, Any] | None] = {}
    for name in cfg.optimizers:
        path = cfg.out_dir / name / FILE_NAME
        if not path.exists():
            found[name] = None
            continue
        state = read_checkpoint(path)
        if cfg.resume:
            check_compatible(state, path, cfg, name)
            found[name] = state
        elif not state.get("finished"):
            raise UsageError(f"{path} holds an unfinished run: continue it with --resume {cfg.out_dir} or delete it")
        else:
            found[name] = None
    if cfg.resume and not any(found.values()):
        raise UsageError(f"no checkpoint to resume in {cfg.out_dir} (looked for */{FILE_NAME})")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (2 for bad input, 128 + signal when interrupted)."""
    try:
        return _run(argv)
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)


def _run(argv: Sequence[str] | None) -> int:
    cfg = parse_config(argv)
    if cfg.distributed == "none":
        return _train(cfg, resolve_device(cfg))
    with torchrun_job(cfg) as device:
        check_backend(cfg, device)
        return _train(cfg, device)


def _train(cfg: TrainConfig, device: torch.device) -> int:
    """Every run of ``cfg`` on ``device``; under torchrun only rank 0 prints and writes files."""
    data = load_image_data(cfg)
    checkpoints = load_checkpoints(cfg)
    histories: dict[str, list[EpochRecord]] = {}
    with catch_stop_signals() as stop:
        for name in cfg.optimizers:
            run_dir = cfg.out_dir / name
            run = TrainingRun(cfg, name, data, device, run_dir, checkpoints[name])
            run_dir.mkdir(parents=True, exist_ok=True)
            outcome = run.train(stop)
            histories[name] = outcome.history
            if outcome.stopped_by is not None:
                if is_main_process():
                    print(f"{PROG}: stopped by signal {outcome.stopped_by}; checkpoint in {run_dir}; "
                          f"continue with --resume {cfg.out_dir}", file=sys.stderr)
                return 128 + outcome.stopped_by
    if not is_main_process():
        return 0
    plot_path = cfg.out_dir / "curves.png"
    plot_curves(histories, plot_path)
    print(summary_table(histories))
    print(f"metrics: {cfg.out_dir}/<optimizer>/metrics.csv  plot: {plot_path}")
    return 0

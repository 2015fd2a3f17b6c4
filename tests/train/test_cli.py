"""The command end to end on the embedded digits, and every kind of bad input."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from lookaround_fused.train import main
from lookaround_fused.train.cli import parse_config


def test_compares_lookaround_and_sgd_side_by_side(tiny, tmp_path: Path, capsys) -> None:
    """The default command on the embedded digits, made smaller (8x8 images, 2 epochs)."""
    out = tmp_path / "out"
    assert main(tiny("--epochs", "2", "--augment", "none,autoaugment,randaugment", digits=True)) == 0

    lines = capsys.readouterr().out.splitlines()
    table = lines[lines.index(next(line for line in lines if line.split() == ["lookaround", "sgd"])):]
    held_out = [float(cell.rstrip("%")) for cell in table[1].split()[2:]]
    assert table[1].startswith("held-out acc") and all(30.0 < accuracy <= 100.0 for accuracy in held_out)
    for name, accuracy in zip(("lookaround", "sgd"), held_out):
        with open(out / name / "metrics.csv") as file:
            rows = list(csv.DictReader(file))
        assert [row["epoch"] for row in rows] == ["1", "2"]
        assert float(rows[-1]["val_acc"]) == pytest.approx(accuracy, abs=0.005)
        assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_defaults_are_the_papers_recipe() -> None:
    cfg = parse_config([])
    assert (cfg.dataset, cfg.model, cfg.optimizers) == ("digits", "small_cnn", ("lookaround", "sgd"))
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.nesterov, cfg.batch_size) == (0.1, 0.9, 5e-4, False, 128)
    assert (cfg.num_branches, cfg.average_every, cfg.warmup_epochs, cfg.seed, cfg.equal_steps) == (3, 5, 1, 42, True)
    cifar100 = parse_config(["--dataset", "cifar100", "--data", "x"])
    assert (cifar100.epochs, cifar100.schedule, cifar100.gamma) == (200, "multistep", 0.2)
    assert cifar100.milestones == (60, 120, 160)
    assert cifar100.augment == ("flip+rotate", "autoaugment+rotate", "randaugment+rotate")
    imagenet = parse_config(["--data", "x"])
    assert (imagenet.dataset, imagenet.image_size, imagenet.epochs) == ("imagefolder", 224, 90)
    assert imagenet.milestones == (30, 60)


@pytest.fixture
def checkpointed(tiny, tmp_path: Path) -> Path:
    """An output folder holding a finished one-epoch Lookaround run."""
    assert main(tiny("--epochs", "1", "--optimizer", "lookaround")) == 0
    return tmp_path / "out"


def _empty_data_folder(root: Path) -> Path:
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
    return root / "images"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


BAD_INPUT = {
    # id: (flags, words of the one-line error, what is in the output folder first)
    "missing-folder": (lambda tmp: ["--data", str(tmp / "missing")], "does not exist", None),
    "empty-folder": (lambda tmp: ["--data", str(_empty_data_folder(tmp))], "no images", None),
    "no-train-split": (lambda tmp: ["--data", str(tmp)], "no train/ folder", None),
    "no-cifar": (lambda tmp: ["--dataset", "cifar10", "--data", str(tmp)], "no cifar10 data", None),
    "unknown-model": (lambda tmp: ["--model", "resnet9000"], "unknown model 'resnet9000'", None),
    "unknown-augmentation": (lambda tmp: ["--augment", "flip,mixup,flip"], "unknown augmentation 'mixup'", None),
    "pipelines-vs-branches": (lambda tmp: ["--augment", "flip,flip"], "2 pipelines for --num-branches 3", None),
    "unknown-optimizer": (lambda tmp: ["--optimizer", "lookaround,adam"], "unknown optimizer 'adam'", None),
    "bad-number": (lambda tmp: ["--epochs", "0"], "argument --epochs: expected int >= 1, got '0'", None),
    "other-model": (lambda tmp: ["--resume", str(tmp / "out"), "--model", "resnet18"],
                    "was made with --model small_cnn, not resnet18", "finished run"),
    "truncated-checkpoint": (lambda tmp: ["--resume", str(tmp / "out")], "damaged or not a checkpoint", "truncated"),
    "nothing-to-resume": (lambda tmp: ["--resume", str(tmp / "out"), "--optimizer", "sgd"], "no checkpoint to resume",
                          "finished run"),
}


@pytest.mark.parametrize("flags, message, files", BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_is_one_line_exit_2_and_overwrites_nothing(flags, message, files, tmp_path, capsys, request,
                                                             tiny) -> None:
    out = tmp_path / "out"
    if files:
        request.getfixturevalue("checkpointed")
        if files == "truncated":
            _truncate(out / "lookaround" / "checkpoint.pt")
        capsys.readouterr()
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}

    assert main(tiny(*flags(tmp_path))) == 2

    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1 and message in captured.err, captured.err
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before


def test_unfinished_run_is_not_overwritten_by_a_fresh_one(tiny, tmp_path, capsys, stop_at) -> None:
    stop_at("lookaround", 3)
    assert main(tiny("--epochs", "1", "--optimizer", "lookaround")) == 128 + 15
    checkpoint = tmp_path / "out" / "lookaround" / "checkpoint.pt"
    saved = checkpoint.read_bytes()
    capsys.readouterr()

    assert main(tiny("--epochs", "1", "--optimizer", "lookaround")) == 2
    assert "holds an unfinished run: continue it with --resume" in capsys.readouterr().err
    assert checkpoint.read_bytes() == saved

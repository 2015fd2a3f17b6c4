"""Checkpoints: an interrupted and resumed run ends bitwise where the uninterrupted run ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import lookaround_fused
from lookaround_fused.train import main

WALL_CLOCK = {"seconds", "images_per_s"}  # the only figures allowed to differ


def _checkpoint(out: Path, name: str) -> dict[str, Any]:
    return torch.load(out / name / "checkpoint.pt", weights_only=True)


def _assert_identical(a: Any, b: Any, where: str = "checkpoint") -> None:
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        keys = a.keys() - WALL_CLOCK
        assert keys == b.keys() - WALL_CLOCK, where
        for key in keys:
            _assert_identical(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_identity_check_compares_tensors_bitwise() -> None:
    state = {"model": {"w": torch.ones(3)}, "history": [{"val_acc": 50.0, "seconds": 1.0}]}
    _assert_identical(state, {"model": {"w": torch.ones(3)}, "history": [{"val_acc": 50.0, "seconds": 9.0}]})
    one_ulp_off = torch.ones(3)
    one_ulp_off[1] = one_ulp_off[1].nextafter(torch.tensor(2.0))
    with pytest.raises(AssertionError):
        _assert_identical(state, {"model": {"w": one_ulp_off}, "history": state["history"]})


RESUMED = [
    # optimizer, flags, minibatch during which SIGTERM arrives (8 minibatches per epoch)
    ("lookaround", ["--bn", "average"], 11),  # mid-cycle (k = 5): the branches differ
    ("lookaround", ["--bn", "recompute", "--independent-batches", "--amp", "bf16"], 6),
    ("lookahead", ["--bn", "shared"], 7),
    ("swa", ["--swa-start", "1"], 13),
    ("sgd", ["--no-equal-steps", "--amp", "bf16"], 9),  # right after an epoch boundary
]


@pytest.mark.parametrize("optimizer, flags, stop_minibatch", RESUMED, ids=[f"{o}-{n}" for o, _, n in RESUMED])
def test_resumed_run_equals_uninterrupted_run(optimizer, flags, stop_minibatch, tiny, tmp_path, stop_at) -> None:
    common = ["--epochs", "2", "--optimizer", optimizer, *flags]
    assert main(tiny(*common, out=tmp_path / "straight")) == 0
    uninterrupted = _checkpoint(tmp_path / "straight", optimizer)

    stop_at(optimizer, stop_minibatch)
    assert main(tiny(*common, out=tmp_path / "stopped")) == 128 + signal.SIGTERM
    stopped = _checkpoint(tmp_path / "stopped", optimizer)
    assert (stopped["epoch"], stopped["batch"], stopped["finished"]) == divmod(stop_minibatch, 8) + (False,)

    # A worker process where the first part had none: augmentation does not depend on workers.
    assert main(tiny(*common, "--resume", str(tmp_path / "stopped"), "--workers", "1", out=tmp_path / "stopped")) == 0
    _assert_identical(_checkpoint(tmp_path / "stopped", optimizer), uninterrupted)


def test_ctrl_c_checkpoints_and_resume_loses_nothing(tiny, tmp_path) -> None:
    """A real Ctrl-C: SIGINT to the command's whole process group, DataLoader workers included."""
    common = tiny("--epochs", "6", "--optimizer", "lookaround", "--workers", "1")
    env = {**os.environ, "PYTHONPATH": str(Path(lookaround_fused.__file__).parents[1])}
    command = subprocess.Popen([sys.executable, "-m", "lookaround_fused.train", *common], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    assert "epoch   1/6" in command.stdout.readline()  # mid-run from here on
    os.killpg(command.pid, signal.SIGINT)
    _, err = command.communicate(timeout=120)

    assert command.returncode == 128 + signal.SIGINT, err
    assert f"continue with --resume {tmp_path / 'out'}" in err
    assert not _checkpoint(tmp_path / "out", "lookaround")["finished"]
    assert main([*common, "--resume", str(tmp_path / "out")]) == 0
    assert main(tiny("--epochs", "6", "--optimizer", "lookaround", out=tmp_path / "straight")) == 0
    _assert_identical(_checkpoint(tmp_path / "out", "lookaround"), _checkpoint(tmp_path / "straight", "lookaround"))

"""``--distributed``: the command under torchrun's environment, 2 gloo processes on CPU."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lookaround_fused
from lookaround_fused.distributed import DataShard
from lookaround_fused.train import main
from lookaround_fused.train.data import MinibatchSampler

TIMEOUT_S = 120  # a hung collective fails the test instead of hanging it


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_ranks(world_size: int, args: list[str]) -> list[subprocess.Popen]:
    """``python -m lookaround_fused.train ARGS`` as the ranks torchrun would start."""
    port = _free_port()
    common = {**os.environ, "PYTHONPATH": str(Path(lookaround_fused.__file__).parents[1]), "MASTER_ADDR": "127.0.0.1",
              "MASTER_PORT": str(port), "WORLD_SIZE": str(world_size), "LOCAL_WORLD_SIZE": str(world_size)}
    return [
        subprocess.Popen([sys.executable, "-m", "lookaround_fused.train", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**common, "RANK": str(rank), "LOCAL_RANK": str(rank)})
        for rank in range(world_size)
    ]


def _wait(ranks: list[subprocess.Popen]) -> list[tuple[int, str]]:
    """Exit status and stderr of every rank; kills them all if one outlives the timeout."""
    try:
        errors = [rank.communicate(timeout=TIMEOUT_S)[1] for rank in ranks]
        return [(rank.returncode, err) for rank, err in zip(ranks, errors)]
    finally:
        for rank in ranks:
            if rank.poll() is None:
                rank.kill()
                rank.communicate()


def _checkpoint(out: Path) -> dict:
    return torch.load(out / "lookaround" / "checkpoint.pt", weights_only=True)


def test_ranks_take_interleaved_shards_of_the_global_minibatch() -> None:
    def batches(shard: DataShard) -> list[list[int]]:
        sampler = MinibatchSampler(20, 8, num_views=2, independent=False, seed=1, shard=shard)
        return [[indices[0] for _, _, indices in batch] for batch in sampler]

    whole = batches(DataShard(1, 0))
    first, second = batches(DataShard(2, 0)), batches(DataShard(2, 1))
    assert [a + b for a, b in zip(first, second)] != whole  # interleaved, not halves
    assert [sorted(a + b) for a, b in zip(first, second)] == [sorted(batch) for batch in whole]
    assert [batch[0::2] for batch in whole] == first


def test_branch_parallel_on_two_ranks_equals_one_process(tiny, tmp_path: Path) -> None:
    """d = 2 on 2 ranks: each rank trains one branch on the whole minibatch, as one process does."""
    flags = ["--epochs", "1", "--optimizer", "lookaround", "--num-branches", "2", "--augment", "none,flip",
             "--bn", "average"]  # average: the statistics travel with the weights (buffers_to_average)
    ranks = _start_ranks(2, tiny(*flags, "--distributed", "branch-parallel", out=tmp_path / "ranks", digits=True))
    assert main(tiny(*flags, out=tmp_path / "single", digits=True)) == 0
    for status, err in _wait(ranks):
        assert status == 0, err

    spread, single = _checkpoint(tmp_path / "ranks"), _checkpoint(tmp_path / "single")
    spread_optimizer, single_optimizer = spread["method"]["optimizer"], single["method"]["optimizer"]
    assert spread["finished"] and spread_optimizer["lookaround"] == single_optimizer["lookaround"]
    for index, entry in single_optimizer["state"].items():
        for key in ("branch_weights", "momentum_buffer"):
            torch.testing.assert_close(spread_optimizer["state"][index][key], entry[key], rtol=0, atol=1e-5)
    # Rank 0's BatchNorm statistics are branch 0's, kept by one process as [mean, var, count] per layer.
    rank0 = [t for key, t in spread["model"].items() if key.endswith(("running_mean", "running_var"))]
    branch0 = [t for i, t in enumerate(single["method"]["branch_bn"]["sets"][0]) if i % 3 != 2]
    torch.testing.assert_close(rank0, branch0, rtol=0, atol=1e-5)


def test_replicated_stops_every_rank_on_one_signal_and_resumes_in_one_process(tiny, tmp_path: Path) -> None:
    out = tmp_path / "out"
    flags = tiny("--epochs", "3", "--optimizer", "lookaround", "--num-branches", "2", "--augment", "none,flip",
                 "--bn", "shared", out=out, digits=True)
    ranks = _start_ranks(2, [*flags, "--distributed", "replicated"])
    assert "epoch   1/3" in ranks[0].stdout.readline()
    ranks[1].send_signal(signal.SIGTERM)  # one rank only: the other must stop at the same step, not hang
    for status, err in _wait(ranks):
        assert status == 128 + signal.SIGTERM, err
    stopped = _checkpoint(out)
    assert not stopped["finished"] and stopped["epoch"] >= 1

    assert main([*flags, "--resume", str(out)]) == 0
    resumed = _checkpoint(out)
    assert resumed["finished"] and [record["epoch"] for record in resumed["history"]] == [1, 2, 3]


def test_branch_parallel_needs_a_world_size_that_is_a_multiple_of_the_branches(tiny, tmp_path: Path) -> None:
    for status, err in _wait(_start_ranks(2, tiny("--optimizer", "lookaround", "--distributed", "branch-parallel",
                                                  digits=True))):
        assert status == 2 and "multiple of num_branches=3" in err, err


@pytest.mark.parametrize("flags, words", [
    (["--distributed", "replicated"], "--distributed trains Lookaround only"),
    (["--sync-bn"], "it needs --distributed"),
    (["--distributed", "replicated", "--optimizer", "lookaround", "--device", "cpu"], "leave out --device"),
    (["--distributed", "replicated", "--optimizer", "lookaround"], "needs the environment torchrun sets"),
])
def test_distributed_flags_that_do_not_fit(flags, words, tiny, capsys, monkeypatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    assert main(tiny(*flags, digits=True)) == 2
    assert words in capsys.readouterr().err

"""Distributed Lookaround (gloo, CPU, 2-4 processes) against a single process on the same data.

Workers are forked from a server that has imported torch once, so a launch costs
well under a second; every launch has a deadline, so a hang fails instead of blocking.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import torch.distributed as dist
from torch import nn

from lookaround_fused import Lookaround
from lookaround_fused.distributed import (
    BranchLayout,
    BranchParallelLookaround,
    DataShard,
    ReplicatedLookaround,
    data_shard,
    save_on_rank0,
)

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["torch", "torch._dynamo", "lookaround_fused.distributed"])

GLOBAL_BATCH = 8
HYPERPARAMETERS = dict(lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True, average_every=3, backend="eager")
STEPS = 6


# ------------------------------------------------------------------ launching
@dataclass
class Outcome:
    exitcodes: list[int | None]
    seconds: list[float]  # from the start until each rank had exited (or was killed)
    results: dict[int, Any] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)


def _worker(rank: int, world_size: int, directory: str, timeout_s: float, scenario: Callable, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{directory}/store", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s))
    try:
        torch.save(scenario(rank, *args), f"{directory}/{rank}.result")
    except BaseException:
        Path(f"{directory}/{rank}.error").write_text(traceback.format_exc())
        os._exit(1)  # no teardown: the peers may be gone
    dist.destroy_process_group()


def _run(scenario: Callable, world_size: int, *args: Any, deadline_s: float = 60, timeout_s: float = 20) -> Outcome:
    """Run ``scenario(rank, *args)`` on ``world_size`` gloo ranks; kill whatever is left at the deadline."""
    with tempfile.TemporaryDirectory() as directory:
        processes = [_CONTEXT.Process(target=_worker, args=(rank, world_size, directory, timeout_s, scenario, args))
                     for rank in range(world_size)]
        started = time.monotonic()
        for process in processes:
            process.start()
        seconds = []
        for process in processes:
            process.join(max(0.0, started + deadline_s - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
            seconds.append(time.monotonic() - started)
        outcome = Outcome([p.exitcode for p in processes], seconds)
        for rank in range(world_size):
            if os.path.exists(f"{directory}/{rank}.error"):
                outcome.errors[rank] = Path(f"{directory}/{rank}.error").read_text()
            if os.path.exists(f"{directory}/{rank}.result"):
                outcome.results[rank] = torch.load(f"{directory}/{rank}.result", weights_only=False)
    return outcome


def _launch(scenario: Callable, world_size: int, *args: Any) -> list[Any]:
    """Results of every rank of a run that must succeed."""
    outcome = _run(scenario, world_size, *args)
    for rank, error in outcome.errors.items():
        pytest.fail(f"rank {rank} failed:\n{error}")
    assert outcome.exitcodes == [0] * world_size, f"exit codes {outcome.exitcodes} after {outcome.seconds} s"
    return [outcome.results[rank] for rank in range(world_size)]


# ------------------------------------------------------------ model and data
def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def _train(optimizer: Lookaround, model: nn.Module, steps: range, shard: DataShard = DataShard(1, 0),
           scaler: torch.amp.GradScaler | None = None, overflow_at: tuple[int, int] | None = None) -> None:
    """Fused-style steps on this shard of each global minibatch; branch b sees augmentation b.

    ``overflow_at=(step, branch)`` makes that branch's loss infinite at that step.
    """
    for step in steps:
        generator = torch.Generator().manual_seed(1000 + step)
        x = torch.randn(GLOBAL_BATCH, 6, generator=generator).chunk(shard.count)[shard.index]
        y = torch.randint(0, 3, (GLOBAL_BATCH,), generator=generator).chunk(shard.count)[shard.index]
        for branch in optimizer.branches():
            loss = nn.functional.cross_entropy(model(x * (1 + 0.25 * branch) + 0.1 * branch), y)
            if (step, branch) == overflow_at:
                loss = loss * float("inf")
            (loss if scaler is None else scaler.scale(loss)).backward()
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)
            scaler.update()
        optimizer.zero_grad()


def _single_process(num_branches: int, steps: range, *, state: dict | None = None, **train: Any) -> Lookaround:
    model = _model()
    optimizer = Lookaround(model.parameters(), num_branches=num_branches, **HYPERPARAMETERS)
    if state is not None:
        optimizer.load_state_dict(state)
    _train(optimizer, model, steps, **train)
    return optimizer


def _weights(optimizer: Lookaround) -> torch.Tensor:
    """Every branch's weights, ``[branches, N]``."""
    (flat,) = optimizer.flat_groups
    return flat.weights.clone()


def _assert_fp32_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def _scaler() -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cpu", init_scale=2.0**8)


# ------------------------------------------------------------------ replicated
def _replicated_scenario(rank: int, checkpoint: str) -> dict[str, Any]:
    """Steps 0-3, a checkpoint, then steps 4-5 in a fresh model and optimizer loaded from it."""
    model = _model()
    optimizer = ReplicatedLookaround(model.parameters(), num_branches=3, **HYPERPARAMETERS)
    optimizer.traffic.reset()
    shard = data_shard("replicated", 3)
    _train(optimizer, model, range(4), shard)
    traffic = optimizer.traffic.counts()
    save_on_rank0(optimizer.state_dict(), checkpoint)

    model = _model()
    resumed = ReplicatedLookaround(model.parameters(), num_branches=3, **HYPERPARAMETERS)
    resumed.load_state_dict(torch.load(checkpoint, weights_only=True))
    _train(resumed, model, range(4, STEPS), shard)
    return {"weights": _weights(resumed), "traffic": traffic}


@pytest.fixture(scope="module")
def replicated_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], Path]:
    checkpoint = tmp_path_factory.mktemp("replicated") / "checkpoint.pt"
    return _launch(_replicated_scenario, 2, str(checkpoint)), checkpoint


def test_replicated_two_ranks_equal_one_process_on_the_global_batch(replicated_run):
    results, _ = replicated_run
    expected = _weights(_single_process(3, range(STEPS)))
    for result in results:
        _assert_fp32_close(result["weights"], expected)
    assert torch.equal(results[0]["weights"], results[1]["weights"])


def test_replicated_averages_gradients_with_one_all_reduce_per_flat_buffer_and_step(replicated_run):
    results, _ = replicated_run
    numel = sum(p.numel() for p in _model().parameters())
    for result in results:
        assert set(result["traffic"]) == {"gradients"}
        assert result["traffic"]["gradients"].calls == 4
        assert result["traffic"]["gradients"].bytes == 4 * 3 * numel * 4  # steps * branches * numel * fp32


def test_replicated_checkpoint_resumes_in_one_process(replicated_run):
    _, checkpoint = replicated_run
    state = torch.load(checkpoint, weights_only=True)
    resumed = _single_process(3, range(4, STEPS), state=state)
    _assert_fp32_close(_weights(resumed), _weights(_single_process(3, range(STEPS))))


# ------------------------------------------------------------- branch-parallel
def _branch_parallel_scenario(rank: int, start: str, checkpoint: str) -> dict[str, Any]:
    """From a single-process checkpoint taken after steps 0-1: steps 2-3, a checkpoint, then steps 4-6,
    all under GradScaler, with an overflow in branch 1 at step 4."""
    model, statistics = _model(), torch.zeros(2)  # statistics: stands for BatchNorm running stats
    optimizer = BranchParallelLookaround(model.parameters(), num_branches=2, buffers_to_average=[statistics],
                                         **HYPERPARAMETERS)
    branch = optimizer.layout.branch
    statistics.fill_(10.0 * (branch + 1))
    optimizer.load_state_dict(torch.load(start, weights_only=True))
    shard, scaler = data_shard("branch-parallel", 2), _scaler()
    _train(optimizer, model, range(2, 4), shard, scaler)
    save_on_rank0(optimizer.state_dict(), checkpoint)
    _train(optimizer, model, range(4, 7), shard, scaler, overflow_at=(4, 1))
    averaged_at_steps = statistics.clone()
    statistics.fill_(float(branch))
    with optimizer.averaged():
        averaged = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        statistics_inside = statistics.clone()
    return {"branch": branch, "weights": _weights(optimizer), "averaged": averaged, "scale": scaler.get_scale(),
            "last_step_averaged": optimizer.last_step_averaged,
            "statistics": (averaged_at_steps, statistics_inside, statistics.clone())}


@pytest.fixture(scope="module")
def branch_parallel_run(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("branch_parallel")
    start, checkpoint = directory / "start.pt", directory / "checkpoint.pt"
    torch.save(_single_process(2, range(2), scaler=_scaler()).state_dict(), start)
    return _launch(_branch_parallel_scenario, 2, str(start), str(checkpoint)), start, checkpoint


def _single_process_continuation(start: Path) -> Lookaround:
    """What the branch-parallel scenario computes, in one process."""
    scaler = _scaler()
    optimizer = _single_process(2, range(2, 7), state=torch.load(start, weights_only=True), scaler=scaler,
                                overflow_at=(4, 1))
    assert scaler.get_scale() == 2.0**7  # the overflow was seen and the step skipped
    return optimizer


def test_branch_parallel_two_ranks_equal_one_process_with_the_same_branch_data(branch_parallel_run):
    results, start, _ = branch_parallel_run
    expected = _weights(_single_process_continuation(start))
    assert sorted(result["branch"] for result in results) == [0, 1]
    for result in results:
        _assert_fp32_close(result["weights"][0], expected[result["branch"]])
    # Step 4 was skipped on both ranks (else branch 0 would differ), so step 6 is the 6th applied step and
    # ends with an average (k=3), after which both ranks hold the same weights.
    assert all(result["last_step_averaged"] for result in results)
    assert torch.equal(results[0]["weights"], results[1]["weights"])


def test_branch_parallel_overflow_lowers_the_loss_scale_of_its_own_group_only(branch_parallel_run):
    results, _, _ = branch_parallel_run
    scales = {result["branch"]: result["scale"] for result in results}
    assert scales == {0: 2.0**8, 1: 2.0**7}


def test_branch_parallel_averaged_loads_the_mean_of_all_branches(branch_parallel_run):
    results, start, _ = branch_parallel_run
    expected = _weights(_single_process_continuation(start)).mean(0)
    for result in results:
        _assert_fp32_close(result["averaged"], expected)


def test_branch_parallel_averages_the_given_buffers_with_the_weights(branch_parallel_run):
    results, _, _ = branch_parallel_run
    for result in results:
        at_steps, inside_averaged, after = result["statistics"]
        assert at_steps.tolist() == [15.0, 15.0]  # the mean of 10 and 20, from the averages
        assert inside_averaged.tolist() == [0.5, 0.5]  # the mean of 0 and 1
        assert after.tolist() == [float(result["branch"])] * 2  # restored on exit


def test_branch_parallel_checkpoint_resumes_in_one_process(branch_parallel_run):
    _, start, checkpoint = branch_parallel_run
    state = torch.load(checkpoint, weights_only=True)
    assert state["lookaround"]["num_branches"] == 2 and state["lookaround"]["updates"] == 8
    resumed = _single_process(2, range(4, 7), state=state, scaler=_scaler(), overflow_at=(4, 1))
    _assert_fp32_close(_weights(resumed), _weights(_single_process_continuation(start)))


def _four_rank_scenario(rank: int) -> dict[str, Any]:
    model = _model()
    optimizer = BranchParallelLookaround(model.parameters(), num_branches=2, **HYPERPARAMETERS)
    optimizer.traffic.reset()
    _train(optimizer, model, range(STEPS), data_shard("branch-parallel", 2))
    traffic = optimizer.traffic.counts()
    return {"branch": optimizer.layout.branch, "weights": _weights(optimizer), "traffic": traffic,
            "state": optimizer.state_dict()}


def test_branch_parallel_two_branches_on_four_ranks_equal_one_process():
    results = _launch(_four_rank_scenario, 4)
    reference = _single_process(2, range(STEPS))
    expected, expected_state = _weights(reference), reference.state_dict()
    numel = expected.shape[1]
    for rank, result in enumerate(results):
        assert result["branch"] == rank // 2
        _assert_fp32_close(result["weights"][0], expected[result["branch"]])
        # Gradients within the branch every step; weights across branches at the 2 averages (k=3).
        assert {label: (c.calls, c.bytes) for label, c in result["traffic"].items()} == {
            "gradients": (STEPS, STEPS * numel * 4), "weights": (2, 2 * numel * 4)}
        state = result["state"]
        assert state["lookaround"] == expected_state["lookaround"]
        for index, entry in expected_state["state"].items():
            assert state["state"][index].keys() == entry.keys()
            assert torch.equal(state["state"][index]["momentum_ready"], entry["momentum_ready"])
            _assert_fp32_close(state["state"][index]["branch_weights"], entry["branch_weights"])
            _assert_fp32_close(state["state"][index]["momentum_buffer"], entry["momentum_buffer"])


def test_branch_parallel_needs_a_world_size_that_is_a_multiple_of_the_branches():
    with pytest.raises(ValueError, match="multiple of num_branches=3.*got 4 processes"):
        BranchLayout(world_size=4, rank=0, num_branches=3)
    layout = BranchLayout(world_size=6, rank=3, num_branches=3)
    assert layout.branch_groups() == [[0, 1], [2, 3], [4, 5]]
    assert layout.peer_groups() == [[0, 2, 4], [1, 3, 5]]
    assert (layout.branch, layout.rank_in_group) == (1, 1)


# ------------------------------------------------------------------- failures
COLLECTIVE_TIMEOUT_S = 4


def _failing_scenario(rank: int, failure: str) -> None:
    """Rank 1 dies (``"exit"``) or stops answering (``"hang"``, then exits) at step 2; rank 0 trains on."""
    model = _model()
    optimizer = ReplicatedLookaround(model.parameters(), num_branches=2, **HYPERPARAMETERS)
    for step in range(1000):
        if rank == 1 and step == 2:
            if failure == "hang":
                time.sleep(2 * COLLECTIVE_TIMEOUT_S)
            os._exit(3)
        _train(optimizer, model, range(step, step + 1), data_shard("replicated", 2))


@pytest.mark.parametrize("failure, message", [("exit", "remote worker"), ("hang", "Timed out")])
def test_a_failed_rank_makes_the_others_raise_instead_of_hanging(failure, message):
    outcome = _run(_failing_scenario, 2, failure, deadline_s=30, timeout_s=COLLECTIVE_TIMEOUT_S)
    assert outcome.exitcodes == [1, 3], outcome.exitcodes
    assert message in outcome.errors[0]
    assert outcome.seconds[0] < 3 * COLLECTIVE_TIMEOUT_S

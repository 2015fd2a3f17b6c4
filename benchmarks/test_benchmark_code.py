"""The benchmark's own arithmetic and contenders (untimed; ``pytest benchmarks/``)."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.__main__ import main
from benchmarks.catalog import contender_specs
from benchmarks.contender import Problem
from benchmarks.memory import state_in_parameter_copies, storage_bytes
from benchmarks.parameter_sets import ParameterSet, model_parameter_set, synthetic_parameter_set
from benchmarks.roofline import Bandwidth, outer_iteration_bytes, roofline_ms
from benchmarks.timing import Timing, TimingConfig, time_call

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TINY = ParameterSet("tiny", (torch.Size([7, 3]), torch.Size([1000]), torch.Size([5])))
SPECS = [spec for spec in contender_specs() if spec.unavailable_reason(DEVICE) is None]


def test_issue_3_roofline_arithmetic():
    # ResNet-50, d=3, fp32: 20 bytes per element and branch.
    assert outer_iteration_bytes(25_557_032, 3, 4) == 20 * 3 * 25_557_032
    assert roofline_ms(1_533_421_920, 47.0) == pytest.approx(32.626, abs=1e-3)
    one_ms = Timing((1.0,), 1)
    bandwidth = Bandwidth(numel=10**6, add=one_ms, copy=one_ms, element_size=4)
    assert bandwidth.add_gigabytes_per_second == pytest.approx(12.0)  # 12 bytes per element in 1 ms
    assert bandwidth.copy_gigabytes_per_second == pytest.approx(8.0)
    assert outer_iteration_bytes(10, 2, 2) == 200  # bf16: 10 bytes per element and branch


@pytest.mark.parametrize("name, tensors, numel", [("resnet18", 62, 11_689_512), ("resnet50", 161, 25_557_032),
                                                  ("vit_b_16", 152, 86_567_656)])
def test_model_parameter_sets_match_torchvision(name, tensors, numel):
    parameters = model_parameter_set(name)
    assert (parameters.num_tensors, parameters.numel) == (tensors, numel)


def test_synthetic_parameter_set_has_exactly_n_elements():
    parameters = synthetic_parameter_set(10**6)
    assert parameters.name == "N=1e6"
    assert parameters.numel == 10**6
    assert [s.numel() for s in parameters.shapes] == [2**18] * 3 + [10**6 - 3 * 2**18]


def test_timing_statistics():
    timing = Timing((4.0, 1.0, 100.0, 2.0, 3.0), 1)
    assert timing.median == 3.0
    assert timing.quartiles == (2.0, 4.0)
    assert timing.relative_spread == pytest.approx(2 / 3)
    assert timing.divided(2).median == 1.5


def test_time_call_warms_up_then_takes_the_samples():
    calls = []
    timing = time_call(lambda: calls.append(1), torch.device("cpu"), TimingConfig(warmup=2, repeats=3,
                                                                                  min_sample_ms=0.0))
    assert len(calls) == 2 + 3
    assert len(timing.samples_ms) == 3 and timing.calls_per_sample == 1


def test_storage_bytes_counts_views_once():
    buffer = torch.zeros(3, 100)
    assert storage_bytes([buffer, buffer[0], buffer[1, 10:20], torch.zeros(5)]) == 4 * 300 + 4 * 5


@pytest.fixture(scope="module")
def cycled() -> dict:
    """Every contender after one cycle (k=2) from the same distinct branch weights: final weights, state."""
    problem = Problem(TINY, num_branches=3, average_every=2, device=DEVICE)
    results = {}
    for spec in SPECS:
        contender = spec.build(problem)
        for branch, weights in enumerate(contender.branch_weights()):
            for w in weights:
                w.add_(0.25 * branch)
        contender.run_cycle()
        final = torch.stack([torch.cat([w.flatten() for w in weights]) for weights in contender.branch_weights()])
        results[spec.key] = final, state_in_parameter_copies(contender.state_tensors(), problem.parameter_bytes)
    return results


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.key)
def test_contender_computes_the_same_cycle_as_eager_lookaround(cycled, spec):
    final, _ = cycled[spec.key]
    expected, _ = cycled["lookaround-eager"]
    # The branches started 0.25 apart: only the average at the cycle's end makes them equal.
    assert torch.equal(final, final[:1].expand_as(final))
    torch.testing.assert_close(final, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.key)
def test_state_memory_in_parameter_copies(cycled, spec):
    _, state = cycled[spec.key]
    assert state == {"3d": 9.0, "2d+1": 7.0}[spec.state_formula]


def test_command_writes_consistent_results_and_compares_them(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--quick", "--sections", "numel-sweep", "--contenders", "lookaround-eager", "--out", str(out)]) == 0
    report = capsys.readouterr().out
    results = json.loads((out / "benchmark.json").read_text())
    assert [problem["numel"] for problem in results["numel-sweep"]] == [10**4, 10**5, 10**6]
    for problem in results["numel-sweep"]:
        assert problem["bytes_per_iteration"] == 20 * 3 * problem["numel"]
        assert problem["roofline_ms"] == pytest.approx(
            problem["bytes_per_iteration"] / (problem["bandwidth"]["add_GBps"] * 1e6))
        (row,) = problem["rows"]
        assert row["contender"] == "lookaround-eager"
        assert row["x_roofline"] == pytest.approx(row["median_ms"] / problem["roofline_ms"])
        assert row["timing"]["q1_ms"] <= row["median_ms"] <= row["timing"]["q3_ms"]
    assert "N=1e5" in report and results["machine"]["torch_threads"] == torch.get_num_threads()

    assert main(["--compare", str(out / "benchmark.json"), str(out / "benchmark.json")]) == 0
    comparison = capsys.readouterr().out
    assert "numel-sweep/N=1e6/lookaround-eager" in comparison
    ratios = [line.split("|")[-2].strip() for line in comparison.splitlines() if line.startswith("| numel")]
    assert ratios == ["1.000"] * 6  # roofline and lookaround-eager at three sizes

"""The benchmark run: each section measured in turn, returned as JSON-ready results."""

from __future__ import annotations

import gc
from typing import Callable

import torch

from lookaround_fused import available_backends

from .catalog import contender_specs
from .contender import ContenderSpec, Problem
from .end_to_end import measure_training_iteration
from .launches import profile_device_work
from .memory import state_in_parameter_copies
from .parameter_sets import ParameterSet, model_parameter_set, synthetic_parameter_set
from .roofline import measure_bandwidth, outer_iteration_bytes, roofline_ms
from .settings import Settings
from .timing import time_call

#: Sections in the order they run, as ``--sections`` names them.
SECTIONS = ("parameter-sets", "numel-sweep", "branch-sweep", "end-to-end")


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    """Whether contender ``key`` is named by one of ``patterns`` (a key or a key prefix such as ``lookaround-``)."""
    return any(key.startswith(pattern) for pattern in patterns)


class Suite:
    """Runs the sections of one benchmark on one device.

    Args:
        settings: what to measure (a mode of :data:`benchmarks.settings.MODES`).
        device, dtype: where and in which precision the parameters live.
        contenders: key prefixes to restrict the run to; ``None`` runs every available one.
        log: receives a line per measurement as the run progresses.
    """

    def __init__(self, settings: Settings, device: torch.device, dtype: torch.dtype,
                 contenders: tuple[str, ...] | None, log: Callable[[str], None]) -> None:
        self.settings, self.device, self.dtype, self.log = settings, device, dtype, log
        self.unavailable: dict[str, str] = {}
        self.specs: list[ContenderSpec] = []
        for spec in contender_specs():
            if (contenders is not None and not _matches(spec.key, contenders)) or _matches(spec.key, settings.excluded):
                continue
            reason = spec.unavailable_reason(device)
            if reason is None:
                self.specs.append(spec)
            else:
                self.unavailable[spec.key] = reason

    def run(self, sections: tuple[str, ...], results: dict, on_section: Callable[[dict], None]) -> None:
        """Add every section in ``sections`` to ``results``, calling ``on_section(results)`` after each.

        ``results`` also receives the contenders measured and those that could not run here.
        """
        runners = {"parameter-sets": self.parameter_sets, "numel-sweep": self.numel_sweep,
                   "branch-sweep": self.branch_sweep, "end-to-end": self.end_to_end}
        results["contenders"] = {spec.key: {"description": spec.description, "state_formula": spec.state_formula}
                                 for spec in self.specs}
        results["unavailable"] = self.unavailable
        for section in SECTIONS:
            if section in sections:
                results[section] = runners[section]()
                on_section(results)

    # ---------------------------------------------------------------- sections
    def parameter_sets(self) -> list[dict]:
        """Every contender on each model's parameter set: the roofline table."""
        return [self._measure_problem("parameter-sets", self._problem(model_parameter_set(name)), self.specs,
                                      profile=self.device.type == "cuda")
                for name in self.settings.parameter_sets]

    def numel_sweep(self) -> list[dict]:
        """Cost against the number of elements, ``d`` fixed."""
        specs = self._sweep_specs()
        return [self._measure_problem("numel-sweep", self._problem(synthetic_parameter_set(numel)), specs)
                for numel in self.settings.numel_sweep]

    def branch_sweep(self) -> list[dict]:
        """Cost against the number of branches on one model's parameter set."""
        specs = self._sweep_specs()
        parameters = model_parameter_set(self.settings.branch_sweep_set)
        return [self._measure_problem("branch-sweep", self._problem(parameters, num_branches), specs)
                for num_branches in self.settings.branch_sweep]

    def end_to_end(self) -> list[dict]:
        """A training iteration of real models with SGD and with Lookaround's fastest backend here."""
        batch = self.settings.end_to_end_cuda if self.device.type == "cuda" else self.settings.end_to_end_cpu
        optimizers = ("sgd-fused", f"lookaround-{available_backends(self.device)[0]}")
        rows = []
        for model in self.settings.end_to_end_models:
            for optimizer in optimizers:
                row = measure_training_iteration(model, optimizer, self.device, batch, self.settings.num_branches,
                                                 self.settings.average_every, self.settings.end_to_end_repeats)
                self.log(f"[end-to-end {model}] {optimizer:<18} {row['median_ms']:9.1f} ms/iteration, "
                         f"optimizer {100 * row['optimizer_share']:.1f}%")
                rows.append(row)
                gc.collect()
        return rows

    # ------------------------------------------------------------ measurement
    def _problem(self, parameters: ParameterSet, num_branches: int | None = None) -> Problem:
        return Problem(parameters, num_branches or self.settings.num_branches, self.settings.average_every,
                       self.device, self.dtype)

    def _sweep_specs(self) -> list[ContenderSpec]:
        return [spec for spec in self.specs if _matches(spec.key, self.settings.sweep_contenders)]

    def _measure_problem(self, section: str, problem: Problem, specs: list[ContenderSpec],
                         profile: bool = False) -> dict:
        """The add_ bandwidth, the roofline and every contender on one problem."""
        label = problem.parameters.name if section != "branch-sweep" else f"d={problem.num_branches}"
        bandwidth = measure_bandwidth(problem.numel, self.device, self.dtype, self.settings.timing)
        iteration_bytes = outer_iteration_bytes(problem.numel, problem.num_branches, self.dtype.itemsize)
        floor_ms = roofline_ms(iteration_bytes, bandwidth.add_gigabytes_per_second)
        self.log(f"[{section} {label}] {problem.parameters.num_tensors} tensors, {problem.numel:,} elements, "
                 f"d={problem.num_branches}: add_ {bandwidth.add_gigabytes_per_second:.1f} GB/s, "
                 f"roofline {floor_ms:.3f} ms")
        rows = []
        for spec in specs:
            row = self._measure_contender(spec, problem, profile)
            if "median_ms" in row:
                row["x_roofline"] = row["median_ms"] / floor_ms
                self.log(f"[{section} {label}] {spec.key:<18} {row['median_ms']:9.3f} ms  x{row['x_roofline']:.2f}")
            else:
                self.log(f"[{section} {label}] {spec.key:<18} failed: {row['error']}")
            rows.append(row)
        return {"section": section, "label": label, "parameter_set": problem.parameters.name,
                "numel": problem.numel, "tensors": problem.parameters.num_tensors, "dtype": str(self.dtype),
                "num_branches": problem.num_branches, "average_every": problem.average_every,
                "bandwidth": bandwidth.to_json(), "bytes_per_iteration": iteration_bytes, "roofline_ms": floor_ms,
                "rows": rows}

    def _measure_contender(self, spec: ContenderSpec, problem: Problem, profile: bool) -> dict:
        """ms per outer iteration, state memory and (on a GPU, if asked) device work of one contender."""
        try:
            contender = spec.build(problem)
            per_iteration = time_call(contender.run_cycle, self.device, self.settings.timing).divided(
                problem.average_every)
            row = {"contender": spec.key, "median_ms": per_iteration.median, "timing": per_iteration.to_json(),
                   "state_x_params": state_in_parameter_copies(contender.state_tensors(), problem.parameter_bytes)}
            if profile:
                row["device_work"] = profile_device_work(contender.run_cycle, self.device).to_json(
                    calls=problem.average_every)
        # A contender that cannot run here (no compiler for torch.compile, out of memory) is reported, not fatal.
        except Exception as error:  # noqa: BLE001
            row = {"contender": spec.key, "error": f"{type(error).__name__}: {error}"}
        finally:
            contender = None
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        return row

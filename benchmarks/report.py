"""Human-readable tables of a results file (Markdown, so they paste into a README as they are)."""

from __future__ import annotations

from typing import Sequence

REFERENCE = "reference"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table; the first column left-aligned, the others right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]

    def line(cells: Sequence[str]) -> str:
        padded = [str(cell).ljust(width) if i == 0 else str(cell).rjust(width)
                  for i, (cell, width) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(":" + "-" * (w + 1) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def _ms(value: float) -> str:
    return f"{value:.3g}" if value < 1 else f"{value:.1f}"


def problem_heading(problem: dict) -> str:
    bandwidth = problem["bandwidth"]
    return (f"{problem['label']}: {problem['tensors']} tensors, {problem['numel']:,} elements "
            f"({problem['dtype'].removeprefix('torch.')}), d={problem['num_branches']}, "
            f"k={problem['average_every']}; in-place add_ {bandwidth['add_GBps']:.1f} GB/s "
            f"(copy_ {bandwidth['copy_GBps']:.1f} GB/s); roofline {_ms(problem['roofline_ms'])} ms per outer iteration")


def problem_table(problem: dict, contenders: dict) -> str:
    """One problem's contenders: time, spread, distance to the roofline and to the reference, memory."""
    timed = [row for row in problem["rows"] if "median_ms" in row]
    reference = next((row["median_ms"] for row in timed if row["contender"] == REFERENCE), None)
    profiled = any("device_work" in row for row in timed)
    headers = ["contender", "ms / outer iteration", "spread (IQR)", "x roofline", "speed-up vs reference",
               "GB/s", "state (x params)"] + (["kernels / iteration"] if profiled else [])
    rows = [["roofline", _ms(problem["roofline_ms"]), "", "1.00", "", f"{problem['bandwidth']['add_GBps']:.1f}", "",
             *([""] if profiled else [])]]
    for row in timed:
        timing = row["timing"]
        formula = contenders[row["contender"]]["state_formula"]
        rows.append([
            row["contender"], _ms(row["median_ms"]),
            f"{100 * (timing['q3_ms'] - timing['q1_ms']) / row['median_ms']:.1f}%",
            f"{row['x_roofline']:.2f}",
            f"{reference / row['median_ms']:.2f}x" if reference else "",
            f"{problem['bytes_per_iteration'] / (row['median_ms'] * 1e6):.1f}",
            f"{row['state_x_params']:.2f} ({formula})",
            *([f"{row['device_work']['kernels_per_call']:.1f}"] if profiled else []),
        ])
    rows += [[row["contender"], "failed", row["error"], "", "", "", ""] + ([""] if profiled else [])
             for row in problem["rows"] if "error" in row]
    return markdown_table(headers, rows)


def sweep_table(problems: list[dict], parameter: str) -> str:
    """ms per outer iteration (and multiple of the roofline) against the swept parameter."""
    contenders = list(dict.fromkeys(row["contender"] for problem in problems for row in problem["rows"]))
    headers = [parameter, "tensors", "roofline ms", *contenders]
    rows = []
    for problem in problems:
        by_contender = {row["contender"]: row for row in problem["rows"]}
        cells = []
        for key in contenders:
            row = by_contender.get(key, {})
            cells.append(f"{_ms(row['median_ms'])} (x{row['x_roofline']:.2f})" if "median_ms" in row else "-")
        rows.append([problem["label"], str(problem["tensors"]), _ms(problem["roofline_ms"]), *cells])
    return markdown_table(headers, rows)


def end_to_end_table(rows: list[dict]) -> str:
    headers = ["model", "optimizer", "batch", "ms / outer iteration", "forward+backward ms", "optimizer ms",
               "optimizer share"]
    return markdown_table(headers, [
        [row["model"], row["optimizer"], f"{row['batch']}x{row['image_size']}px", _ms(row["median_ms"]),
         _ms(row["forward_backward"]["median_ms"]), _ms(row["optimizer_time"]["median_ms"]),
         f"{100 * row['optimizer_share']:.1f}%"]
        for row in rows])


def format_report(results: dict) -> str:
    """Every table of a results file, with the machine it was measured on."""
    machine = results["machine"]
    gpu = f", GPU {machine['gpu']}" if machine["gpu"] else ""
    parts = [f"Measured {machine['date']} on {machine['cpu']} ({machine['torch_threads']} torch threads{gpu}), "
             f"torch {machine['versions']['torch']}, load average {machine['load_average'][0]:.2f} at the start; "
             f"command: {results['command']}"]
    for problem in results.get("parameter-sets", ()):
        parts += [problem_heading(problem), problem_table(problem, results["contenders"])]
    if results.get("numel-sweep"):
        parts += ["Scaling with the number of elements (ms per outer iteration, multiple of the roofline)",
                  sweep_table(results["numel-sweep"], "N")]
    if results.get("branch-sweep"):
        first = results["branch-sweep"][0]
        parts += [f"Scaling with the number of branches on {first['parameter_set']} (ms per outer iteration)",
                  sweep_table(results["branch-sweep"], "d")]
    if results.get("end-to-end"):
        parts += ["One training iteration (d forward+backward passes and d branch updates)",
                  end_to_end_table(results["end-to-end"])]
    parts += [f"Not run here: {key}: {reason}" for key, reason in results["unavailable"].items()]
    return "\n\n".join(parts) + "\n"

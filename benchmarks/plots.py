"""PNG figures of a results file (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)


def _timed(problem: dict) -> dict[str, float]:
    return {row["contender"]: row["median_ms"] for row in problem["rows"] if "median_ms" in row}


def plot_roofline(problems: list[dict], path: Path) -> None:
    """Multiple of the roofline per contender, grouped by parameter set (log scale; 1 is the floor)."""
    contenders = list(dict.fromkeys(key for problem in problems for key in _timed(problem)))
    figure, axes = plt.subplots(figsize=(4.0 + 0.25 * len(problems) * len(contenders), 4.5))
    width = 0.8 / len(contenders)
    for i, key in enumerate(contenders):
        ratios = [_timed(problem).get(key, float("nan")) / problem["roofline_ms"] for problem in problems]
        axes.bar([p + (i - (len(contenders) - 1) / 2) * width for p in range(len(problems))], ratios, width,
                 label=key)
    axes.axhline(1.0, color="black", linewidth=1, linestyle="--", label="roofline")
    axes.set_yscale("log")
    axes.set_xticks(range(len(problems)), [f"{p['label']}\n{p['numel'] / 1e6:.1f}M" for p in problems])
    axes.set_ylabel("time / roofline (lower is better)")
    first = problems[0]
    axes.set_title(f"ms per outer iteration over the bandwidth floor (d={first['num_branches']}, "
                   f"k={first['average_every']})")
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _sweep(axes: plt.Axes, problems: list[dict], x: list[float], xlabel: str) -> None:
    contenders = list(dict.fromkeys(key for problem in problems for key in _timed(problem)))
    for key in contenders:
        axes.plot(x, [_timed(problem).get(key, float("nan")) for problem in problems], marker="o", label=key)
    axes.plot(x, [problem["roofline_ms"] for problem in problems], color="black", linestyle="--", label="roofline")
    axes.set_xlabel(xlabel)
    axes.set_ylabel("ms per outer iteration")
    axes.legend(fontsize="small")
    axes.grid(True, which="both", alpha=0.3)


def plot_scaling(numel_sweep: list[dict], branch_sweep: list[dict], path: Path) -> None:
    """Cost against N (log-log) and against d, side by side (either may be empty)."""
    panels = [sweep for sweep in (numel_sweep, branch_sweep) if sweep]
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    panel = iter(axes[0])
    if numel_sweep:
        ax = next(panel)
        _sweep(ax, numel_sweep, [p["numel"] for p in numel_sweep], "parameters N (elements)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"scaling with N (d={numel_sweep[0]['num_branches']})")
    if branch_sweep:
        ax = next(panel)
        _sweep(ax, branch_sweep, [p["num_branches"] for p in branch_sweep], "branches d")
        ax.set_title(f"scaling with d ({branch_sweep[0]['parameter_set']})")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_end_to_end(rows: list[dict], path: Path) -> None:
    """Stacked forward+backward and optimizer milliseconds per outer iteration."""
    labels = [f"{row['model']}\n{row['optimizer']}" for row in rows]
    compute = [row["forward_backward"]["median_ms"] for row in rows]
    optimizer = [row["optimizer_time"]["median_ms"] for row in rows]
    figure, axes = plt.subplots(figsize=(max(6.0, 1.5 * len(rows)), 4.5))
    axes.bar(labels, compute, label="forward+backward")
    axes.bar(labels, optimizer, bottom=compute, label="optimizer")
    for i, row in enumerate(rows):
        axes.annotate(f"{100 * row['optimizer_share']:.1f}%", (i, compute[i] + optimizer[i]), ha="center",
                      va="bottom", fontsize="small")
    axes.set_ylabel("ms per outer iteration")
    axes.set_title(f"training iteration, batch {rows[0]['batch']}x{rows[0]['image_size']}px "
                   f"(label: optimizer share)")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_plots(results: dict, folder: Path) -> list[Path]:
    """Every figure the results have data for; returns the files written."""
    written = []
    if results.get("parameter-sets"):
        written.append(folder / "roofline.png")
        plot_roofline(results["parameter-sets"], written[-1])
    if results.get("numel-sweep") or results.get("branch-sweep"):
        written.append(folder / "scaling.png")
        plot_scaling(results.get("numel-sweep", []), results.get("branch-sweep", []), written[-1])
    if results.get("end-to-end"):
        written.append(folder / "end_to_end.png")
        plot_end_to_end(results["end-to-end"], written[-1])
    return written

"""``--compare A.json B.json``: the ratio of every median two runs share."""

from __future__ import annotations

from .report import markdown_table
from .results import median_ms_by_measurement


def _describe(name: str, results: dict) -> str:
    machine = results["machine"]
    gpu = f", {machine['gpu']}" if machine["gpu"] else ""
    return (f"{name}: {machine['date']}, {machine['cpu']}{gpu}, {machine['torch_threads']} threads, "
            f"torch {machine['versions']['torch']}, commit {machine['git_commit']}: {results['command']}")


def comparison_table(first: dict, second: dict) -> str:
    """Medians of A and B side by side with B/A (below 1: B is faster), for the measurements in both."""
    a, b = median_ms_by_measurement(first), median_ms_by_measurement(second)
    shared = [name for name in a if name in b]
    rows = [[name, f"{a[name]:.4g}", f"{b[name]:.4g}", f"{b[name] / a[name]:.3f}"] for name in shared]
    lines = [_describe("A", first), _describe("B", second), "",
             markdown_table(["measurement", "A ms", "B ms", "B / A"], rows)]
    only_a, only_b = len(a) - len(shared), len(b) - len(shared)
    if only_a or only_b:
        lines.append(f"\n{only_a} measurement(s) only in A, {only_b} only in B (not compared).")
    return "\n".join(lines) + "\n"

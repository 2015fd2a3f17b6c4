"""The results file: writing, reading, and the flat view that comparisons use."""

from __future__ import annotations

import json
from pathlib import Path

SCHEMA_VERSION = 1
#: Sections whose entries are one problem each (a parameter set, a size, a number of branches).
PROBLEM_SECTIONS = ("parameter-sets", "numel-sweep", "branch-sweep")


def write_results(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"schema_version": SCHEMA_VERSION, **results}, indent=1) + "\n")


def load_results(path: Path) -> dict:
    """A results file written by :func:`write_results`; ``ValueError`` for anything else."""
    results = json.loads(Path(path).read_text())
    if not isinstance(results, dict) or results.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path} is not a benchmark results file of schema version {SCHEMA_VERSION}")
    return results


def median_ms_by_measurement(results: dict) -> dict[str, float]:
    """Every median in ``results`` under a stable name, e.g. ``parameter-sets/resnet50/lookaround-cpp``."""
    medians = {}
    for section in PROBLEM_SECTIONS:
        for problem in results.get(section, ()):
            prefix = f"{section}/{problem['label']}"
            medians[f"{prefix}/roofline"] = problem["roofline_ms"]
            for row in problem["rows"]:
                if "median_ms" in row:
                    medians[f"{prefix}/{row['contender']}"] = row["median_ms"]
    for row in results.get("end-to-end", ()):
        prefix = f"end-to-end/{row['model']}/{row['optimizer']}"
        medians[prefix] = row["median_ms"]
        medians[f"{prefix}/optimizer"] = row["optimizer_time"]["median_ms"]
    return medians

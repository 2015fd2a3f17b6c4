"""``python -m benchmarks``: measure, print the tables, write JSON and PNG plots; or compare two runs."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from .compare import comparison_table
from .machine import describe_machine
from .report import format_report
from .results import load_results, write_results
from .settings import MODES
from .suite import SECTIONS, Suite

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Lookaround's backends against the memory-bandwidth roofline and the usual alternatives.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="a smoke run in well under a minute (small sizes, few repetitions)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="more sizes and repetitions (tens of minutes on a 2-core CPU)")
    mode.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"), type=Path,
                      help="print the B/A ratio of every measurement two results files share, and exit")
    mode.add_argument("--report", metavar="RESULTS.json", type=Path,
                      help="print the tables of a results file (also of a run cut short), and exit")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device of the parameters (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=_DTYPES, default="float32", help="parameter dtype (default float32)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch CPU threads (default: torch's, %(default)s here)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), metavar="SECTION",
                        help=f"what to measure, of: {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--contenders", nargs="+", metavar="KEY",
                        help="only these contenders (keys or prefixes, e.g. lookaround- sgd-fused reference)")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks"),
                        help="folder for benchmark.json and the plots (default %(default)s)")
    return parser.parse_args(argv)


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parse_args(argv)
    if args.compare:
        print(comparison_table(*(load_results(path) for path in args.compare)), end="")
        return 0
    if args.report:
        print(format_report(load_results(args.report)), end="")
        return 0

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    mode = args.mode or "default"
    settings = MODES[mode]
    started = time.perf_counter()
    results = {
        "command": shlex.join(["python", "-m", "benchmarks", *argv]),
        "mode": mode,
        "machine": describe_machine(device),
        "settings": dataclasses.asdict(settings),
    }
    json_path = args.out / "benchmark.json"

    def save(results: dict) -> None:
        # After every section, so that a run cut short (a time limit, say) keeps what it measured.
        results["machine"]["load_average_end"] = os.getloadavg()
        results["wall_seconds"] = time.perf_counter() - started
        write_results(results, json_path)

    suite = Suite(settings, device, _DTYPES[args.dtype], tuple(args.contenders) if args.contenders else None, _log)
    suite.run(tuple(args.sections), results, on_section=save)
    print(format_report(results), end="")
    written = [json_path]
    if importlib.util.find_spec("matplotlib") is None:
        _log("matplotlib is not installed: no plots")
    else:
        from .plots import write_plots

        written += write_plots(results, args.out)
    _log(f"{results['wall_seconds']:.0f} s; wrote " + ", ".join(map(str, written)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

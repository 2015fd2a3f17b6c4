"""Benchmarks of Lookaround's backends against the memory-bandwidth limit and the usual alternatives.

Run ``python -m benchmarks --help`` for the command, ``pytest benchmarks/ --benchmark-only`` for the
pytest-benchmark suite, and ``bash benchmarks/gpu_check.sh`` for the one-shot check on a GPU machine.
"""

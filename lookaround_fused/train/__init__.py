"""The ``lookaround-train`` command: Lookaround and its baselines on image classification.

Run ``lookaround-train --help`` (or ``python -m lookaround_fused.train --help``) for the flags.
"""

from lookaround_fused.train.cli import main

__all__ = ["main"]

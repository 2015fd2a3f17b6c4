"""Triton backend: a flat group's whole Lookaround step in one kernel launch.

Runs on CUDA devices, and on CPU tensors in Triton's interpreter
(``TRITON_INTERPRET=1`` set before triton is imported), which is how the tests
exercise the kernels without a GPU. This module does not import Triton (the
launcher does, on first use), so a missing Triton is reported by
:meth:`TritonBackend.unavailable_reason` instead of failing the import.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from ...flat import FlatGroup
from ..base import Backend, StepPlan

__all__ = ["TritonBackend"]

# The spellings Triton accepts as true for TRITON_INTERPRET.
_TRUE_VALUES = ("1", "true", "on", "yes", "y")


class TritonBackend(Backend):
    """Fused Triton kernels: no host synchronisation, no recompilation when hyperparameters change."""

    name = "triton"

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str | None:
        if importlib.util.find_spec("triton") is None:
            return "Triton is not installed (pip install triton)"
        if device.type == "cuda":
            return None
        if device.type != "cpu":
            return f"Triton kernels run on CUDA devices, not on {device.type}"
        if os.environ.get("TRITON_INTERPRET", "").lower() not in _TRUE_VALUES:
            return ("Triton needs a CUDA device; CPU tensors run only in Triton's interpreter, "
                    "enabled by setting TRITON_INTERPRET=1 before triton is imported")
        from .launcher import INTERPRETED

        if not INTERPRETED:
            return "TRITON_INTERPRET=1 was set after the Triton kernels were compiled; set it before importing triton"
        return None

    def step(self, flat: FlatGroup, plan: StepPlan) -> None:
        from .launcher import launch_step

        launch_step(flat, plan)

    def mean(self, flat: FlatGroup, out: torch.Tensor) -> None:
        from .launcher import launch_mean

        launch_mean(flat, out)

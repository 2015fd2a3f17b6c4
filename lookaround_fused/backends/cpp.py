"""C++ backend: the compiled CPU and CUDA kernels of ``csrc/`` (see ``lookaround_fused._extension``)."""

from __future__ import annotations

import torch

from .. import _extension
from ..flat import FlatGroup
from .base import Backend, StepPlan

#: Elements per CUDA thread block; a CPU step walks whole parameters and splits columns itself.
CUDA_TILE = 4096


class CppBackend(Backend):
    """One kernel call per flat group and step, with the average fused into the update."""

    name = "cpp"

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str | None:
        if device.type not in ("cpu", "cuda"):
            return f"no C++ kernels for {device.type} tensors"
        try:
            extension = _extension.load()
        except RuntimeError as error:
            return str(error)
        if device.type == "cuda" and not extension.has_cuda:
            problem = _extension.cuda_toolchain_problem() or "rebuild it where nvcc is found (CUDA_HOME)"
            return f"the lookaround extension was built without CUDA kernels: {problem}"
        return None

    def step(self, flat: FlatGroup, plan: StepPlan) -> None:
        if flat.momentum is None and any(plan.param_groups[g]["momentum"] != 0 for g in set(flat.group_indices)):
            raise ValueError("a param group uses momentum but the flat group has no momentum buffers")
        average_on_device = isinstance(plan.average, torch.Tensor)
        _extension.load().step(
            weights=flat.weights,
            grads=flat.grads,
            momentum=flat.momentum,
            tiles=flat.tiles(CUDA_TILE if flat.device.type == "cuda" else max(flat.numel, 1)),
            hyperparameters=flat.hyperparameter_table(plan.param_groups),
            param_group=flat.param_group_index(),
            has_grad=flat.has_grad_mask(),
            momentum_ready=flat.momentum_ready,
            branch_begin=plan.branches.start,
            branch_end=plan.branches.stop,
            grad_scale=plan.grad_scale,
            found_inf=plan.found_inf,
            average=average_on_device or bool(plan.average),
            average_flag=plan.average if average_on_device else None,
        )

    def mean(self, flat: FlatGroup, out: torch.Tensor) -> None:
        _extension.load().mean(flat.weights, out)

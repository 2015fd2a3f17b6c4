"""Pure-PyTorch backend: the oracle every other backend is tested against.

Written for clarity, not speed: the update follows ``torch.optim.SGD``'s
single-tensor code line by line, in the math dtype, over runs of adjacent
parameters that share a param group and a momentum state (one run per group in
the common case). It reads flags and ``found_inf`` on the host, which
synchronises with a GPU; the fused backends do not.
"""

from __future__ import annotations

from typing import Iterator

import torch

from ..flat import FlatGroup, math_dtype
from .base import Backend, StepPlan


def _runs(flat: FlatGroup, branch: int, ready: list[bool]) -> Iterator[tuple[int, int, int, bool]]:
    """Maximal ``(start, end, group, momentum_ready)`` column runs of parameters with gradients."""
    run = None
    for i in range(flat.num_params):
        if not flat.has_grad[branch][i]:
            if run is not None:
                yield run
                run = None
            continue
        start, end = flat.offsets[i], flat.offsets[i] + flat.numels[i]
        key = (flat.group_indices[i], ready[i])
        if run is not None and run[1] == start and run[2:] == key:
            run = (run[0], end, *key)
        else:
            if run is not None:
                yield run
            run = (start, end, *key)
    if run is not None:
        yield run


def _sgd(weights: torch.Tensor, grad: torch.Tensor, momentum_buffer: torch.Tensor | None, ready: bool,
         group: dict, grad_scale: torch.Tensor | None) -> None:
    """One ``torch.optim.SGD`` step of a 1-D slice, computed in the math dtype, stored in place."""
    dtype = math_dtype(weights.dtype)
    param = weights.to(dtype)
    grad = grad.to(dtype)
    if grad_scale is not None:
        grad = grad / grad_scale.to(dtype)
    if group["maximize"]:
        grad = -grad
    if group["weight_decay"] != 0:
        grad = grad.add(param, alpha=group["weight_decay"])
    if group["momentum"] != 0:
        if ready:
            buf = momentum_buffer.to(dtype).mul_(group["momentum"]).add_(grad, alpha=1 - group["dampening"])
        else:
            buf = grad.clone()
        momentum_buffer.copy_(buf)
        grad = grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
    lr = group["lr"]
    param = param.add(grad, alpha=-(lr.item() if isinstance(lr, torch.Tensor) else lr))
    weights.copy_(param)


class EagerBackend(Backend):
    """Reference implementation with ordinary PyTorch operations; runs anywhere."""

    name = "eager"

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str | None:
        return None

    def step(self, flat: FlatGroup, plan: StepPlan) -> None:
        if plan.found_inf is not None and bool(plan.found_inf):
            return
        for branch in plan.branches:
            ready = flat.momentum_ready[branch].tolist()
            for start, end, group_index, is_ready in _runs(flat, branch, ready):
                group = plan.param_groups[group_index]
                momentum = flat.momentum[branch, start:end] if group["momentum"] != 0 else None
                _sgd(flat.weights[branch, start:end], flat.grads[branch, start:end], momentum, is_ready,
                     group, plan.grad_scale)
        if bool(plan.average):
            mean = torch.empty(flat.numel, device=flat.device, dtype=math_dtype(flat.dtype))
            self._mean_into(flat, mean)
            flat.weights.copy_(mean.expand_as(flat.weights))

    def mean(self, flat: FlatGroup, out: torch.Tensor) -> None:
        if out.dtype == math_dtype(flat.dtype):
            self._mean_into(flat, out)
        else:
            mean = torch.empty(flat.numel, device=flat.device, dtype=math_dtype(flat.dtype))
            self._mean_into(flat, mean)
            out.copy_(mean)

    @staticmethod
    def _mean_into(flat: FlatGroup, out: torch.Tensor) -> None:
        out.copy_(flat.weights[0])
        for branch in range(1, flat.num_branches):
            out.add_(flat.weights[branch])
        out.div_(flat.num_branches)

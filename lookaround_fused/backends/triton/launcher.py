"""Grids and launches of the Triton kernels for one flat group.

One launch per call: :func:`launch_step` runs one program per row of the chunk
table ``flat.tiles(block)`` for every branch at once; :func:`launch_mean` one
program per ``block`` columns. Nothing here reads device memory on the host.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import triton
from triton.runtime.interpreter import InterpretedFunction

from ...flat import FlatGroup, math_dtype
from ..base import StepPlan
from .kernels import lookaround_mean_kernel, lookaround_step_kernel

#: Whether the kernels run in Triton's interpreter (TRITON_INTERPRET=1 when triton was imported).
INTERPRETED = isinstance(lookaround_step_kernel, InterpretedFunction)

# On a GPU a block of a few thousand elements keeps every SM busy on small parameters and
# needs no autotuning (which in-place kernels forbid). The interpreter runs programs one
# after another in Python and pays for every lane of a block, used or not: it gets blocks
# just large enough for the work, up to 65536 (about 0.1 s per 1e6 elements there).
_GPU_BLOCK = 2048
_GPU_NUM_WARPS = 8
_INTERPRETER_MAX_BLOCK = 65536


def block_size(largest: int) -> int:
    """Elements per program for work items of at most ``largest`` elements."""
    if not INTERPRETED:
        return _GPU_BLOCK
    return min(_INTERPRETER_MAX_BLOCK, triton.next_power_of_2(max(largest, 1)))


def alignment(flat: FlatGroup) -> int:
    """Elements, up to one 16-byte vector, that divide every parameter's size.

    Parameters lie back to back, so this divides every parameter offset, every
    tile start and length (blocks are powers of two no smaller than it) and ``N``.
    """
    return math.gcd(max(1, 16 // flat.weights.element_size()), *flat.numels)


class _Neutral(NamedTuple):
    """Device scalars standing in for an absent grad scale or found_inf, and for a host-known average flag."""

    grad_scale: torch.Tensor
    found_inf: torch.Tensor
    off: torch.Tensor
    on: torch.Tensor


@functools.cache
def _neutral(device: torch.device) -> _Neutral:
    # Created once per device, so a step never copies a host value to the device.
    return _Neutral(
        grad_scale=torch.ones((), dtype=torch.float32, device=device),
        found_inf=torch.zeros((), dtype=torch.float32, device=device),
        off=torch.zeros((), dtype=torch.uint8, device=device),
        on=torch.ones((), dtype=torch.uint8, device=device),
    )


def _as_bytes(flags: torch.Tensor) -> torch.Tensor:
    """A bool tensor as uint8 without a copy (Triton loads bytes on every version)."""
    return flags.view(torch.uint8) if flags.dtype == torch.bool else flags


def launch_step(flat: FlatGroup, plan: StepPlan) -> None:
    """Update ``plan.branches`` of ``flat`` and average if asked, in one kernel launch."""
    block = block_size(max(flat.numels))
    tiles = flat.tiles(block)
    if tiles.shape[0] == 0:
        return
    neutral = _neutral(flat.device)
    if isinstance(plan.average, torch.Tensor):
        average = _as_bytes(plan.average)
    else:
        average = neutral.on if plan.average else neutral.off
    has_momentum = flat.momentum is not None
    hyper = flat.hyperparameter_table(plan.param_groups)
    lookaround_step_kernel[(tiles.shape[0],)](
        flat.weights, flat.grads, flat.momentum if has_momentum else flat.weights,
        tiles, flat.param_group_index(), hyper, hyper.stride(0),
        _as_bytes(flat.has_grad_mask()), _as_bytes(flat.momentum_ready), flat.num_params,
        flat.weights.stride(0), flat.grads.stride(0),
        neutral.grad_scale if plan.grad_scale is None else plan.grad_scale,
        neutral.found_inf if plan.found_inf is None else plan.found_inf,
        average,
        plan.branches.start, plan.branches.stop,
        NUM_BRANCHES=flat.num_branches, BLOCK=block, ALIGNMENT=alignment(flat), HAS_MOMENTUM=has_momentum,
        FMA_IN_FP64=INTERPRETED,
        num_warps=_GPU_NUM_WARPS,
    )


def launch_mean(flat: FlatGroup, out: torch.Tensor) -> None:
    """Write the mean of ``flat``'s branches into ``out`` (storage or math dtype) in one launch."""
    if out.shape != (flat.numel,) or not out.is_contiguous() or out.device != flat.device:
        raise ValueError(f"out must be a contiguous [{flat.numel}] tensor on {flat.device}, "
                         f"got {list(out.shape)} on {out.device}")
    if out.dtype not in (flat.dtype, math_dtype(flat.dtype)):
        raise ValueError(f"out must be {flat.dtype} or {math_dtype(flat.dtype)}, got {out.dtype}")
    if flat.numel == 0:
        return
    block = block_size(flat.numel)
    lookaround_mean_kernel[(triton.cdiv(flat.numel, block),)](
        flat.weights, out, flat.numel, flat.weights.stride(0),
        NUM_BRANCHES=flat.num_branches, BLOCK=block, ALIGNMENT=alignment(flat), num_warps=_GPU_NUM_WARPS,
    )

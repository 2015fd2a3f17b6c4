"""Flat multi-branch storage for the parameters of one device and dtype.

Every branch's weights, gradients and momentum live in ``[branches, N]`` buffers;
each parameter owns the same ``[offset, offset + numel)`` column range in every
row. The model's parameters are views of one row (the *active* branch), so
switching branches rebinds views and copies nothing.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

#: Columns of :meth:`FlatGroup.hyperparameter_table`, in order.
HYPERPARAMETERS = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize")


def math_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the update is computed in for parameters stored as ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class FlatGroup:
    """Branch weights, gradients and momentum of parameters sharing a device and dtype.

    Args:
        params: the parameters, all on one device with one floating dtype, each
            dense in memory (any stride order, so channels_last is kept).
        group_indices: for each parameter, the index of its param group.
        num_branches: rows of every buffer.

    Attributes:
        weights: ``[branches, N]`` branch weights; row ``b`` of parameter ``i`` is
            ``weights[b, offsets[i]:offsets[i] + numels[i]]``.
        grads: ``[branches, N]`` branch gradients, valid where ``has_grad`` says so.
            Its rows share memory (stride 0) until :meth:`separate_branch_gradients`;
            kernels must index rows with ``grads.stride(0)``.
        momentum: ``[branches, N]`` momentum buffers, or ``None`` until a group
            with nonzero momentum needs them.
        momentum_ready: ``[branches, P]`` bool on the device: branch ``b`` of
            parameter ``i`` has a momentum buffer (kept on the device because
            a step skipped by gradient scaling must not set it).
        has_grad: host ``[branches][P]`` flags: branch ``b`` of parameter ``i``
            has a gradient (``torch.optim.SGD`` skips parameters without one).
    """

    def __init__(self, params: Sequence[torch.Tensor], group_indices: Sequence[int], num_branches: int) -> None:
        first = params[0]
        self.device, self.dtype = first.device, first.dtype
        self.num_branches = num_branches
        self.params = list(params)
        self.group_indices = list(group_indices)
        self.numels = [p.numel() for p in params]
        self.offsets = [sum(self.numels[:i]) for i in range(len(params))]
        numel = sum(self.numels)
        self._shapes = [(p.size(), p.stride()) for p in params]

        self.weights = torch.empty((num_branches, numel), device=self.device, dtype=self.dtype)
        # The drop-in style holds one branch's gradient at a time, so all rows start as
        # one shared row (stride 0): optimizer memory stays at the reference code's 2d+1.
        self._grad_storage = torch.empty(numel, device=self.device, dtype=self.dtype)
        self.grads = self._grad_storage.expand(num_branches, numel)
        self.momentum: torch.Tensor | None = None
        self.momentum_ready = torch.zeros((num_branches, len(params)), device=self.device, dtype=torch.bool)
        self.has_grad = [bytearray(len(params)) for _ in range(num_branches)]

        self._weight_views = [self._views(self.weights[b]) for b in range(num_branches)]
        self._grad_views = [self._views(self.grads[b]) for b in range(num_branches)]
        for b in range(num_branches):
            torch._foreach_copy_(self._weight_views[b], [p.detach() for p in params])

        self._hyper_key: tuple | None = None
        self._hyper: torch.Tensor | None = None
        self._mask_key: bytes | None = None
        self._mask: torch.Tensor | None = None
        self._tiles: dict[int, torch.Tensor] = {}
        self._param_groups_tensor: torch.Tensor | None = None
        self._all_ready = False
        self._ready_rows: set[int] = set()

    def _views(self, row: torch.Tensor) -> list[torch.Tensor]:
        return [self.param_view(row, i) for i in range(len(self.params))]

    def param_view(self, row: torch.Tensor, index: int) -> torch.Tensor:
        """Parameter ``index``'s part of a ``[N]`` row, shaped and strided like the parameter."""
        size, stride = self._shapes[index]
        return row[self.offsets[index] : self.offsets[index] + self.numels[index]].as_strided(size, stride)

    @property
    def num_params(self) -> int:
        return len(self.params)

    @property
    def numel(self) -> int:
        return self.weights.shape[1]

    # ----------------------------------------------------------------- binding
    def weight_view(self, branch: int, index: int) -> torch.Tensor:
        """Parameter ``index`` of ``branch``, shaped and strided like the parameter."""
        return self._weight_views[branch][index]

    def grad_view(self, branch: int, index: int) -> torch.Tensor:
        return self._grad_views[branch][index]

    def bind_weights(self, branch: int) -> None:
        """Make every parameter a view of ``branch``'s weights."""
        for p, view in zip(self.params, self._weight_views[branch]):
            p.data = view

    def bind_grads(self, branch: int) -> None:
        """Give every parameter ``branch``'s gradient view, or ``None`` where it has none."""
        flags = self.has_grad[branch]
        for i, (p, view) in enumerate(zip(self.params, self._grad_views[branch])):
            p.grad = view if flags[i] else None

    def bind_weights_to(self, row: torch.Tensor) -> None:
        """Make every parameter a view of a ``[N]`` buffer outside the branches."""
        for p, view in zip(self.params, self._views(row)):
            p.data = view

    def broken_alias(self, branch: int) -> str | None:
        """Describe the first parameter that is no longer a view of ``branch``, if any."""
        for i, (p, view) in enumerate(zip(self.params, self._weight_views[branch])):
            if p.data_ptr() == view.data_ptr() and p.dtype == self.dtype and p.stride() == view.stride():
                continue
            if p.dtype != self.dtype or p.device != self.device:
                what = f"it is now {p.dtype} on {p.device}, the optimizer holds {self.dtype} on {self.device}"
            elif p.stride() != view.stride():
                what = f"its memory layout changed (strides {tuple(view.stride())} -> {tuple(p.stride())})"
            else:
                what = "its data was replaced by another tensor"
            return f"parameter of shape {list(p.shape)} no longer aliases the optimizer's branch storage: {what}"
        return None

    def collect_grads(self, branch: int) -> None:
        """Record which parameters have gradients and bring foreign ones into ``branch``'s row.

        A gradient that autograd allocated (after ``zero_grad(set_to_none=True)``)
        is copied into the flat buffer once; later accumulation then happens in place.
        """
        flags = self.has_grad[branch]
        views = self._grad_views[branch]
        destinations, sources = [], []
        for i, p in enumerate(self.params):
            grad = p.grad
            if grad is None:
                flags[i] = 0
                continue
            if grad.is_sparse:
                raise RuntimeError("Lookaround does not support sparse gradients")
            if grad.shape != p.shape or grad.dtype != self.dtype or grad.device != self.device:
                raise RuntimeError(
                    f"gradient of shape {list(grad.shape)} ({grad.dtype}, {grad.device}) does not match its "
                    f"parameter of shape {list(p.shape)} ({self.dtype}, {self.device})"
                )
            flags[i] = 1
            if grad.data_ptr() != views[i].data_ptr() or grad.stride() != views[i].stride():
                destinations.append(views[i])
                sources.append(grad)
        if destinations:
            torch._foreach_copy_(destinations, sources)

    def clear_grads(self, set_to_none: bool) -> None:
        """``zero_grad`` for every branch: forget them, or zero the ones that exist."""
        if set_to_none:
            for flags in self.has_grad:
                flags[:] = bytes(len(flags))
        else:
            self._grad_storage.zero_()

    def separate_branch_gradients(self) -> None:
        """Give every branch its own gradient row: the fused style holds all of them at once."""
        if self.grads.stride(0) == 0 and self.num_branches > 1:
            self._grad_storage = torch.empty_like(self.weights)
            self.grads = self._grad_storage
            self._grad_views = [self._views(self.grads[b]) for b in range(self.num_branches)]
            # The new rows hold nothing yet; the model's current gradients are collected again.
            self.clear_grads(set_to_none=True)

    # ------------------------------------------------------ backend resources
    def ensure_momentum(self) -> torch.Tensor:
        if self.momentum is None:
            self.momentum = torch.zeros_like(self.weights)
        return self.momentum

    def mark_momentum_ready(self, branches: range, momentum_on: Sequence[bool], found_inf: torch.Tensor | None) -> None:
        """After a step: branches of parameters that had a gradient and use momentum now have a buffer."""
        if self._all_ready or not any(momentum_on):
            return
        updated = self.has_grad_mask()[branches.start : branches.stop]
        updated = updated & torch.tensor(momentum_on, dtype=torch.bool).to(self.device, non_blocking=True)
        if found_inf is not None:
            updated = updated & (found_inf == 0)
        self.momentum_ready[branches.start : branches.stop] |= updated
        # Rows known, without reading the device, to be all set need no more bookkeeping.
        if found_inf is None and all(momentum_on):
            self._ready_rows.update(b for b in branches if all(self.has_grad[b]))
        self._all_ready = len(self._ready_rows) == self.num_branches

    def set_momentum_ready(self, index: int, ready: torch.Tensor) -> None:
        """Set parameter ``index``'s per-branch momentum flags (when loading a checkpoint)."""
        self.momentum_ready[:, index] = ready.to(self.device)
        self._ready_rows.clear()
        self._all_ready = False

    def has_grad_mask(self) -> torch.Tensor:
        """``has_grad`` as a ``[branches, P]`` bool tensor on the device (cached)."""
        key = b"".join(bytes(flags) for flags in self.has_grad)
        if key != self._mask_key:
            mask = torch.tensor([list(flags) for flags in self.has_grad], dtype=torch.bool)
            self._mask = mask.to(self.device, non_blocking=True)
            self._mask_key = key
        return self._mask

    def param_group_index(self) -> torch.Tensor:
        """Index of each parameter's group, ``[P]`` int32 on the device."""
        if self._param_groups_tensor is None:
            self._param_groups_tensor = torch.tensor(self.group_indices, dtype=torch.int32, device=self.device)
        return self._param_groups_tensor

    def hyperparameter_table(self, param_groups: Sequence[Mapping[str, Any]]) -> torch.Tensor:
        """Hyperparameters of every param group as a ``[groups, 6]`` tensor on the device.

        Columns follow :data:`HYPERPARAMETERS` (booleans as 0/1) in the math dtype.
        Rebuilt only when a value changes; a tensor ``lr`` is copied on the device
        every call, so reading it never synchronises with the host.
        """
        key = tuple(
            tuple(None if isinstance(group[name], torch.Tensor) else float(group[name]) for name in HYPERPARAMETERS)
            for group in param_groups
        )
        if key != self._hyper_key:
            host = [[0.0 if value is None else value for value in row] for row in key]
            self._hyper = torch.tensor(host, dtype=math_dtype(self.dtype)).to(self.device, non_blocking=True)
            self._hyper_key = key
        for g, group in enumerate(param_groups):
            if isinstance(group["lr"], torch.Tensor):
                self._hyper[g, 0].copy_(group["lr"], non_blocking=True)
        return self._hyper

    def tiles(self, block: int) -> torch.Tensor:
        """Work items of at most ``block`` elements that never cross a parameter.

        Returns an int64 ``[T, 3]`` tensor on the device of ``(start, length,
        parameter index)`` rows, the chunk table a kernel launches one program per
        row of. Cached per block size.
        """
        if block not in self._tiles:
            rows = [
                (offset + start, min(block, numel - start), index)
                for index, (offset, numel) in enumerate(zip(self.offsets, self.numels))
                for start in range(0, numel, block)
            ]
            self._tiles[block] = torch.tensor(rows, dtype=torch.int64, device=self.device).reshape(-1, 3)
        return self._tiles[block]

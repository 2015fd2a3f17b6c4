"""The Lookaround optimizer (Zhang et al., NeurIPS 2023) over flat branch buffers."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Any, Callable, Iterable, Iterator

import torch
from torch.optim import Optimizer

from .backends import BACKEND_NAMES, Backend, StepPlan, resolve_backend
from .flat import FlatGroup

_FORMAT_VERSION = 1
_DEFAULT_NUM_BRANCHES = 3
_DEFAULT_AVERAGE_EVERY = 5


def _validate_hyperparameters(group: dict[str, Any]) -> None:
    lr = group["lr"]
    if isinstance(lr, torch.Tensor):
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if lr.requires_grad:
            raise ValueError("Tensor lr must not require grad")
    if lr < 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")
    if group["momentum"] < 0.0:
        raise ValueError(f"Invalid momentum value: {group['momentum']}")
    if group["weight_decay"] < 0.0:
        raise ValueError(f"Invalid weight_decay value: {group['weight_decay']}")
    if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")


def _is_dense(p: torch.Tensor) -> bool:
    """Whether ``p``'s elements fill ``numel`` consecutive memory slots (in any dimension order)."""
    expected = 1
    for size, stride in sorted(zip(p.shape, p.stride()), key=lambda pair: pair[1]):
        if size != 1:
            if stride != expected:
                return False
            expected *= size
    return True


def _validate_parameter(p: torch.Tensor) -> None:
    if p.is_complex():
        raise ValueError(
            f"Lookaround does not support complex parameters (got {p.dtype}, shape {list(p.shape)}); "
            "register torch.view_as_real(p) instead"
        )
    if not p.is_floating_point():
        raise ValueError(f"Lookaround can only optimize floating point parameters, got {p.dtype}")
    if p.is_sparse or not _is_dense(p):
        raise ValueError(f"Lookaround needs dense parameters; got one of shape {list(p.shape)} "
                         f"with strides {tuple(p.stride())}")


def _resolve_alias(name: str, value: int | None, alias: str, alias_value: int | None, default: int) -> int:
    if value is not None and alias_value is not None and value != alias_value:
        raise ValueError(f"{name}={value} and its alias {alias}={alias_value} disagree; pass only one of them")
    resolved = value if value is not None else alias_value if alias_value is not None else default
    if isinstance(resolved, bool) or not isinstance(resolved, int) or resolved < 1:
        raise ValueError(f"Invalid {name}: {resolved!r} (must be an integer >= 1)")
    return resolved


class Lookaround(Optimizer):
    r"""Lookaround: ``num_branches`` SGD-momentum branches, averaged every ``average_every`` steps.

    Every branch is a full copy of the parameters with its own momentum. An
    *around* step updates each branch with ``torch.optim.SGD``'s rule from that
    branch's gradient; after every ``average_every`` around steps all branches
    are replaced by their mean (momentum is kept per branch). The branches live
    in flat ``[num_branches, N]`` buffers per device and dtype and the model's
    parameters are views of one branch, so switching branches copies nothing.
    Create the optimizer after the model has its final device, dtype and memory
    format; moving or casting the model afterwards raises an error at the next
    call instead of silently training copies.

    Two ways to drive it::

        # fused (recommended): every branch sees the same minibatch
        for x, y in loader:
            for b in opt.branches():     # the model holds branch b
                loss_fn(model(augment[b](x)), y).backward()
            opt.step()                   # updates every branch; the model holds branch 0
            opt.zero_grad()

        # drop-in for the reference code: one branch per call of step()
        for x, y in loader:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()                   # updates the active branch, loads the next one

    Right after an average every branch, and so the model, holds the mean;
    ``with opt.averaged():`` loads the mean at any other time (for evaluation).

    Args:
        params: parameters or param groups, as for any ``torch.optim.Optimizer``.
        lr: learning rate (float or 1-element tensor).
        momentum: momentum factor.
        dampening: dampening for momentum.
        weight_decay: coupled L2 penalty, as in ``torch.optim.SGD``.
        nesterov: use Nesterov momentum.
        maximize: maximize the objective instead of minimizing it.
        num_branches: ``d``, the number of branches (alias ``head_num``). Default 3.
        average_every: ``k``, around steps per branch between two averages
            (alias ``frequence``). Default 5.
        backend: ``"auto"``, ``"triton"``, ``"cpp"`` or ``"eager"``.

    The optimizer unscales gradients itself under ``torch.amp.GradScaler``; a
    step with an overflow changes no weight, momentum buffer or counter.
    """

    _step_supports_amp_scaling = True

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float | torch.Tensor = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        *,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        maximize: bool = False,
        num_branches: int | None = None,
        average_every: int | None = None,
        head_num: int | None = None,
        frequence: int | None = None,
        backend: str = "auto",
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize)
        _validate_hyperparameters(defaults)
        self.num_branches = _resolve_alias("num_branches", num_branches, "head_num", head_num, _DEFAULT_NUM_BRANCHES)
        self.average_every = _resolve_alias("average_every", average_every, "frequence", frequence,
                                            _DEFAULT_AVERAGE_EVERY)
        if backend not in BACKEND_NAMES:
            raise ValueError(f"Invalid backend: {backend!r}; expected one of {', '.join(map(repr, BACKEND_NAMES))}")
        self._backend_name = backend
        self._flats: list[FlatGroup] | None = None
        super().__init__(params, defaults)
        # Branch updates done so far; a device tensor once a GradScaler step left the host unable to know.
        self._updates: int | torch.Tensor = 0
        self._active = 0
        self._fused_step_pending = False
        self._averaged = False
        self._grad_scaler_seen = False
        self._overflow_revealed = False
        self._build_storage()

    # ------------------------------------------------------------------ storage
    def _build_storage(self, saved: dict[int, dict[str, Any]] | None = None) -> None:
        """Lay out every parameter in flat buffers, one per (device, dtype)."""
        buckets: dict[tuple[torch.device, torch.dtype], list[tuple[int, int, torch.Tensor]]] = defaultdict(list)
        index = 0
        for group_index, group in enumerate(self.param_groups):
            for p in group["params"]:
                buckets[(p.device, p.dtype)].append((index, group_index, p))
                index += 1
        self._flats, self._backends, self._slots = [], [], [None] * index
        for members in buckets.values():
            flat = FlatGroup([p for _, _, p in members], [g for _, g, _ in members], self.num_branches)
            for local, (global_index, _, _) in enumerate(members):
                self._slots[global_index] = (len(self._flats), local)
            self._flats.append(flat)
            self._backends.append(resolve_backend(self._backend_name, flat.device))
        if saved:
            for global_index, state in saved.items():
                self._load_param_state(global_index, state)
        for flat in self._flats:
            flat.bind_weights(self._active)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group; its parameters join the flat buffers with every branch set to their value."""
        params = param_group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        for p in params:
            _validate_parameter(p)
        super().add_param_group(param_group)
        try:
            _validate_hyperparameters(self.param_groups[-1])
        except ValueError:
            self.param_groups.pop()
            raise
        if self._flats is not None:
            if self._fused_step_pending or self._averaged:
                self.param_groups.pop()
                raise RuntimeError("add_param_group() cannot run between branches() and step() or inside averaged()")
            self._check_aliasing()
            saved = {i: self._param_state(i) for i in range(len(self._slots))}
            self._build_storage(saved)

    def _param_state(self, index: int) -> dict[str, Any]:
        flat, local = self._flat_and_local(index)
        views = [flat.weight_view(b, local) for b in range(self.num_branches)]
        state = {
            "branch_weights": torch.stack(views),
            "momentum_ready": flat.momentum_ready[:, local].clone(),
        }
        if flat.momentum is not None and bool(state["momentum_ready"].any()):
            state["momentum_buffer"] = torch.stack([flat.param_view(flat.momentum[b], local)
                                                    for b in range(self.num_branches)])
        return state

    def _load_param_state(self, index: int, state: dict[str, Any]) -> None:
        flat, local = self._flat_and_local(index)
        for b in range(self.num_branches):
            flat.weight_view(b, local).copy_(state["branch_weights"][b])
        flat.set_momentum_ready(local, state["momentum_ready"])
        if state.get("momentum_buffer") is not None:
            momentum = flat.ensure_momentum()
            for b in range(self.num_branches):
                flat.param_view(momentum[b], local).copy_(state["momentum_buffer"][b])

    def _flat_and_local(self, index: int) -> tuple[FlatGroup, int]:
        flat_index, local = self._slots[index]
        return self._flats[flat_index], local

    def _check_aliasing(self) -> None:
        if self._averaged:
            raise RuntimeError("Lookaround cannot step or switch branches inside `with optimizer.averaged():`")
        for flat in self._flats:
            problem = flat.broken_alias(self._active)
            if problem is not None:
                raise RuntimeError(
                    f"Lookaround: {problem}. Moving or casting the model (model.to(), .half(), ...) or replacing "
                    "parameter data after creating the optimizer detaches the model from it. Create Lookaround "
                    "after the model has its final device, dtype and memory format; to keep the training state, "
                    "load this optimizer's state_dict() into a new one."
                )

    def _activate(self, branch: int) -> None:
        """Record the active branch's gradients, then load ``branch`` (weights and gradients) into the model."""
        for flat in self._flats:
            flat.collect_grads(self._active)
            flat.bind_weights(branch)
            flat.bind_grads(branch)
        self._active = branch

    # ------------------------------------------------------------ training API
    def branches(self) -> Iterator[int]:
        """Iterate over the branches, loading each into the model in turn.

        Inside the loop body for ``b`` the model's parameters are branch ``b``'s
        weights and ``backward()`` accumulates branch ``b``'s gradients. After
        the loop, :meth:`step` updates every branch at once. Looping again
        before ``step()`` accumulates more gradients into every branch.
        """
        self._check_aliasing()
        if self._active != 0 and not self._fused_step_pending:
            raise RuntimeError(
                f"branches() needs every branch at the same step, but drop-in style step() calls left branch "
                f"{self._active} active; call step() {self.num_branches - self._active} more time(s) first"
            )
        for flat in self._flats:
            flat.separate_branch_gradients()
        for branch in range(self.num_branches):
            self._activate(branch)
            yield branch
        for flat in self._flats:
            flat.collect_grads(self._active)
        if self._grad_scaler_seen and self.num_branches > 1:
            self._reveal_hidden_overflow()
        self._fused_step_pending = True

    @contextlib.contextmanager
    def averaged(self) -> Iterator[None]:
        """Load the mean of the branches into the model for the duration of the block.

        The branches are not changed; on exit the model holds the active branch
        again, and changes made to the parameters inside the block are discarded.
        """
        self._check_aliasing()
        means = []
        for flat, backend in zip(self._flats, self._backends):
            mean = torch.empty(flat.numel, device=flat.device, dtype=flat.dtype)
            backend.mean(flat, mean)
            flat.bind_weights_to(mean)
            means.append(mean)
        self._averaged = True
        try:
            yield
        finally:
            self._averaged = False
            for flat in self._flats:
                flat.bind_weights(self._active)

    @property
    def flat_groups(self) -> tuple[FlatGroup, ...]:
        """The flat buffers, one per (device, dtype), for tooling such as collectives and benchmarks."""
        return tuple(self._flats)

    @property
    def updates(self) -> int | torch.Tensor:
        """Branch updates applied so far (``num_branches`` per fused step); a device tensor after a GradScaler step."""
        return self._updates

    @property
    def active_branch(self) -> int:
        """The branch whose weights the model's parameters currently are."""
        return self._active

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update the branches from their gradients; average them when a cycle ends.

        After a ``branches()`` loop every branch is updated and the model then
        holds branch 0. Otherwise (drop-in style) the active branch is updated
        from the model's gradients and the next branch is loaded into the model.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_aliasing()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        fused = self._fused_step_pending
        if fused:
            branches = range(self.num_branches)
            for flat in self._flats:
                flat.collect_grads(self._active)
            if found_inf is not None and self.num_branches > 1:
                if grad_scale is None:
                    raise RuntimeError(
                        "GradScaler.unscale_(optimizer) only reaches the model's current gradients, which are one "
                        "branch's; with branches() let the optimizer unscale (call scaler.step(optimizer) directly)"
                    )
                if not self._overflow_revealed:
                    for found in self._hidden_overflows():
                        found_inf = found_inf + found.to(found_inf.device)
        else:
            branches = range(self._active, self._active + 1)
            for flat in self._flats:
                flat.collect_grads(self._active)
            if found_inf is not None:
                # One branch per call, as the reference code under GradScaler: a skipped call does not rotate.
                if bool(found_inf):
                    return loss
                found_inf = None
        self._overflow_revealed = False
        self._grad_scaler_seen |= found_inf is not None
        if any(any(flat.has_grad[b]) for flat in self._flats for b in branches):
            self._update(branches, grad_scale, found_inf)
        elif not fused:
            return loss  # nothing to update: the drop-in rotation does not advance either

        self._fused_step_pending = False
        if fused:
            self._activate(0)
        else:
            self._active = (self._active + 1) % self.num_branches
            for flat in self._flats:
                flat.bind_weights(self._active)
        return loss

    def _update(self, branches: range, grad_scale: torch.Tensor | None, found_inf: torch.Tensor | None) -> None:
        """Run the backends over every flat group and advance the update counter."""
        updates_after = self._updates + len(branches)
        average = updates_after % (self.num_branches * self.average_every) == 0
        if found_inf is not None:
            average = average & (found_inf == 0)
        for flat, backend in zip(self._flats, self._backends):
            self._step_flat(flat, backend, branches, average, grad_scale, found_inf)
        self._updates = updates_after if found_inf is None else self._updates + len(branches) * (found_inf == 0).long()

    def _step_flat(self, flat: FlatGroup, backend: Backend, branches: range, average: bool | torch.Tensor,
                   grad_scale: torch.Tensor | None, found_inf: torch.Tensor | None) -> None:
        def on_device(t: torch.Tensor | None) -> torch.Tensor | None:
            return t if t is None else t.to(flat.device, non_blocking=True)

        momentum_on = [self.param_groups[g]["momentum"] != 0 for g in flat.group_indices]
        if any(momentum_on):
            flat.ensure_momentum()
        plan = StepPlan(branches=branches, average=on_device(average) if isinstance(average, torch.Tensor) else average,
                        param_groups=self.param_groups, grad_scale=on_device(grad_scale),
                        found_inf=on_device(found_inf))
        backend.step(flat, plan)
        flat.mark_momentum_ready(branches, momentum_on, plan.found_inf)

    def _hidden_overflows(self) -> Iterator[torch.Tensor]:
        """Per flat group, a device flag: a branch other than the model's current one has a non-finite gradient.

        GradScaler checks only the model's gradients, which are the active branch's.
        """
        for flat in self._flats:
            grads = [flat.grad_view(b, i) for b in range(self.num_branches) if b != self._active
                     for i in range(flat.num_params) if flat.has_grad[b][i]]
            if grads:
                found = torch.zeros((), device=flat.device, dtype=torch.float32)
                torch._amp_foreach_non_finite_check_and_unscale_(grads, found, torch.ones((), device=flat.device))
                yield found

    def _reveal_hidden_overflow(self) -> None:
        """Make an overflow in any branch visible to GradScaler, so that it also lowers its scale.

        The overflow flag is written, on the device, into one element of a model
        gradient; that step is skipped whatever happens, so the value is never applied.
        """
        found = sum(flag.to(self._flats[0].device) for flag in self._hidden_overflows())
        carrier = next((p.grad for flat in self._flats for p in flat.params if p.grad is not None), None)
        if isinstance(found, torch.Tensor) and carrier is not None:
            element = carrier.as_strided((1,), (1,))
            element.copy_(torch.where(found.to(element.device) > 0, float("inf"), element))
            self._overflow_revealed = True

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of every branch (and of the model)."""
        for flat in self._flats:
            if not set_to_none:
                flat.collect_grads(self._active)  # zeroing keeps which gradients exist
            flat.clear_grads(set_to_none)
            flat.bind_grads(self._active)

    # -------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Every branch's weights and momentum, hyperparameters, counters and the active branch.

        The layout is per parameter (as ``[num_branches, *shape]`` tensors), so it
        does not depend on flat offsets, the backend or the device, and it loads
        with ``torch.load(..., weights_only=True)``.
        """
        param_groups, index = [], 0
        for group in self.param_groups:
            packed = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in group.items() if k != "params"}
            packed["params"] = list(range(index, index + len(group["params"])))
            index += len(group["params"])
            param_groups.append(packed)
        return {
            "state": {i: self._param_state(i) for i in range(index)},
            "param_groups": param_groups,
            "lookaround": {
                "format_version": _FORMAT_VERSION,
                "num_branches": self.num_branches,
                "average_every": self.average_every,
                "updates": int(self._updates),
                "active_branch": self._active,
            },
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the model then holds the saved active branch.

        Everything is validated before anything changes: a state dict of another
        model, another number of branches or a damaged one raises ``ValueError``
        and leaves the optimizer and the model as they were.
        """
        meta, groups, states = self._validate_state_dict(state_dict)
        self._check_aliasing()
        for group, saved in zip(self.param_groups, groups):
            group.update({k: v for k, v in saved.items() if k != "params"})
        for index, state in states.items():
            self._load_param_state(index, state)
        for flat in self._flats:
            flat.clear_grads(set_to_none=True)
        self.average_every = meta["average_every"]
        self._updates = meta["updates"]
        self._active = meta["active_branch"]
        self._fused_step_pending = False
        for flat in self._flats:
            flat.bind_weights(self._active)
            flat.bind_grads(self._active)

    def _validate_state_dict(self, state_dict: Any) -> tuple[dict, list, dict]:
        try:
            return self._check_state_dict(state_dict)
        except (TypeError, KeyError, AttributeError, IndexError) as error:
            raise ValueError(f"Cannot load Lookaround state dict: malformed entry ({error!r})") from None

    def _check_state_dict(self, state_dict: Any) -> tuple[dict, list, dict]:
        def fail(problem: str) -> ValueError:
            return ValueError(f"Cannot load Lookaround state dict: {problem}")

        if not isinstance(state_dict, dict) or not {"state", "param_groups", "lookaround"} <= state_dict.keys():
            raise fail("expected a dict with 'state', 'param_groups' and 'lookaround' entries "
                       "(is this a Lookaround.state_dict()?)")
        meta, groups, states = state_dict["lookaround"], state_dict["param_groups"], state_dict["state"]
        if not isinstance(meta, dict) or meta.get("format_version") != _FORMAT_VERSION:
            raise fail(f"unknown format version {meta.get('format_version') if isinstance(meta, dict) else None!r}")
        if meta.get("num_branches") != self.num_branches:
            raise fail(f"it has {meta.get('num_branches')} branches, this optimizer has {self.num_branches}")
        for key, bound in (("average_every", None), ("updates", None), ("active_branch", self.num_branches)):
            value = meta.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (bound and value >= bound):
                raise fail(f"invalid {key} {value!r}")
        if meta["average_every"] < 1:
            raise fail("average_every must be >= 1")
        if meta["updates"] % self.num_branches != meta["active_branch"]:
            raise fail(f"active_branch {meta['active_branch']} does not follow from {meta['updates']} updates")
        if not isinstance(groups, list) or len(groups) != len(self.param_groups):
            raise fail(f"it has {len(groups) if isinstance(groups, list) else '?'} parameter groups, "
                       f"this optimizer has {len(self.param_groups)}")
        index = 0
        for g, (group, saved) in enumerate(zip(self.param_groups, groups)):
            if not isinstance(saved, dict) or len(saved.get("params", ())) != len(group["params"]):
                raise fail(f"parameter group {g} has a different number of parameters")
            try:
                _validate_hyperparameters({**group, **{k: v for k, v in saved.items() if k != "params"}})
            except (ValueError, TypeError, KeyError) as error:
                raise fail(f"parameter group {g}: {error}") from None
            index += len(group["params"])
        if not isinstance(states, dict) or set(states) != set(range(index)):
            raise fail(f"expected state for parameters 0..{index - 1}")
        for i in range(index):
            flat, local = self._flat_and_local(i)
            expected = (self.num_branches, *flat.params[local].shape)
            state = states[i]
            if not isinstance(state, dict):
                raise fail(f"state of parameter {i} is not a dict")
            for key in ("branch_weights", "momentum_buffer"):
                tensor = state.get(key)
                if key == "momentum_buffer" and tensor is None:
                    continue
                if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != expected \
                        or not tensor.is_floating_point():
                    shape = list(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                    raise fail(f"{key} of parameter {i} is {shape}, expected a floating tensor of shape "
                               f"{list(expected)}")
            ready = state.get("momentum_ready")
            if not isinstance(ready, torch.Tensor) or ready.dtype != torch.bool or tuple(ready.shape) != expected[:1]:
                raise fail(f"momentum_ready of parameter {i} must be a bool tensor of shape [{self.num_branches}]")
            if bool(ready.any()) and state.get("momentum_buffer") is None:
                raise fail(f"parameter {i} has momentum state but no momentum_buffer")
        return meta, groups, states

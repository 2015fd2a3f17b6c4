"""Backend registry and selection.

Backends are imported lazily, so a missing Triton or C++ toolchain only matters
to the backend that needs it.
"""

from __future__ import annotations

import importlib
import warnings

import torch

from .base import Backend, StepPlan

__all__ = ["Backend", "StepPlan", "BACKEND_NAMES", "available_backends", "resolve_backend"]

_IMPLEMENTATIONS = {
    "triton": "lookaround_fused.backends.triton:TritonBackend",
    "cpp": "lookaround_fused.backends.cpp:CppBackend",
    "eager": "lookaround_fused.backends.eager:EagerBackend",
}
#: Every name ``backend=`` accepts.
BACKEND_NAMES = ("auto", *_IMPLEMENTATIONS)
_AUTO_ORDER = {"cuda": ("triton", "cpp", "eager"), "cpu": ("cpp", "eager")}
_warned_fallbacks: set[str] = set()


def _load(name: str) -> type[Backend] | str:
    """The backend class, or why it cannot be imported."""
    module_name, class_name = _IMPLEMENTATIONS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except (ImportError, OSError, RuntimeError) as error:
        return f"{type(error).__name__}: {error}"
    return getattr(module, class_name)


def _unavailable_reason(name: str, device: torch.device) -> str | None:
    backend = _load(name)
    return backend if isinstance(backend, str) else backend.unavailable_reason(device)


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Names of the backends that can run on ``device``, fastest first."""
    device = torch.device(device)
    order = _AUTO_ORDER.get(device.type, ("eager",))
    return [name for name in order if _unavailable_reason(name, device) is None]


def resolve_backend(name: str, device: torch.device) -> Backend:
    """An instance of backend ``name`` for tensors on ``device``.

    ``"auto"`` picks the fastest available one and warns once per device type
    when it has to fall back to ``"eager"``. An explicit name that cannot run
    raises ``RuntimeError`` saying why.
    """
    if name not in BACKEND_NAMES:
        raise ValueError(f"Invalid backend: {name!r}; expected one of {', '.join(map(repr, BACKEND_NAMES))}")
    if name != "auto":
        reason = _unavailable_reason(name, device)
        if reason is not None:
            raise RuntimeError(f"backend={name!r} cannot run on {device}: {reason}")
        return _load(name)()
    reasons = []
    for candidate in _AUTO_ORDER.get(device.type, ("eager",)):
        reason = _unavailable_reason(candidate, device)
        if reason is None:
            if candidate == "eager" and reasons and device.type not in _warned_fallbacks:
                _warned_fallbacks.add(device.type)
                warnings.warn(
                    f"Lookaround falls back to the slow eager backend on {device.type}: " + "; ".join(reasons),
                    RuntimeWarning,
                    stacklevel=3,
                )
            return _load(candidate)()
        reasons.append(f"{candidate} unavailable ({reason})")
    raise AssertionError("the eager backend is always available")

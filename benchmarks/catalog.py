"""Every contender the suite knows, with what it is and whether it can run on a device."""

from __future__ import annotations

from functools import partial

import torch

from lookaround_fused.backends import BACKEND_NAMES, resolve_backend

from .baselines import CompiledFlatUpdate, ReferenceLoop, TorchSGDPerBranch
from .contender import ContenderSpec
from .lookaround_contenders import LookaroundKernel, LookaroundOptimizer

#: Lookaround's backends in the order tables list them.
LOOKAROUND_BACKENDS = tuple(name for name in BACKEND_NAMES if name != "auto")


def backend_unavailable_reason(backend: str, device: torch.device) -> str | None:
    """Why Lookaround's ``backend`` cannot run on ``device`` (the registry's own message), or ``None``."""
    try:
        resolve_backend(backend, device)
    except RuntimeError as error:
        return str(error)
    return None


def contender_specs() -> list[ContenderSpec]:
    """Lookaround per backend (whole optimizer call, then the kernel alone), then the baselines."""
    specs = []
    for backend in LOOKAROUND_BACKENDS:
        available = partial(backend_unavailable_reason, backend)
        specs += [
            ContenderSpec(f"lookaround-{backend}", f"Lookaround(backend={backend!r}): branches() loop + step()",
                          partial(LookaroundOptimizer, backend=backend), available),
            ContenderSpec(f"kernel-{backend}", f"{backend} backend's step(flat, plan) alone",
                          partial(LookaroundKernel, backend=backend), available),
        ]
    return specs + [
        ContenderSpec("reference", "reference code's approach: per-parameter functional SGD, Python-loop average",
                      ReferenceLoop, state_formula="2d+1"),
        ContenderSpec("sgd-fused", "torch.optim.SGD(fused=True) per branch + foreach average",
                      partial(TorchSGDPerBranch, implementation="fused")),
        ContenderSpec("sgd-foreach", "torch.optim.SGD(foreach=True) per branch + foreach average",
                      partial(TorchSGDPerBranch, implementation="foreach")),
        ContenderSpec("compiled-flat", "torch.compile of an eager update over flat [d, N] buffers, average fused",
                      CompiledFlatUpdate),
    ]

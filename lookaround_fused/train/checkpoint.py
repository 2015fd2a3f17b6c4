"""Checkpoint files: read with torch.load(weights_only=True) and checked against the config.

A checkpoint holds only tensors, numbers, strings, lists and dicts, so loading one cannot
run code. Writing goes through lookaround_fused.distributed.checkpoint.save_on_rank0
(a temporary file renamed over the old one, so an interruption leaves it intact).
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from lookaround_fused.train.config import TrainConfig
from lookaround_fused.train.errors import UsageError

FORMAT_VERSION = 1
FILE_NAME = "checkpoint.pt"

# Flags whose name is not the config field's name with dashes.
_FLAG_NAMES = {"data_dir": "--data"}


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path``; a missing, truncated or foreign file is a :class:`UsageError`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"checkpoint {path} does not exist") from None
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(f"checkpoint {path} is damaged or not a checkpoint ({reason})") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise UsageError(f"{path} is not a lookaround-train checkpoint (format {FORMAT_VERSION})")
    return state


def check_compatible(state: dict[str, Any], path: Path, cfg: TrainConfig, optimizer: str) -> None:
    """Raise :class:`UsageError` unless ``state`` was made by the run ``cfg`` describes for ``optimizer``."""
    if state["optimizer"] != optimizer:
        raise UsageError(f"checkpoint {path} is of a {state['optimizer']} run, not {optimizer}")
    saved, current = state["config"], cfg.fingerprint()
    for key, value in current.items():
        if saved.get(key) != value:
            flag = _FLAG_NAMES.get(key, "--" + key.replace("_", "-"))
            raise UsageError(f"checkpoint {path} was made with {flag} {saved.get(key)}, not {value}")

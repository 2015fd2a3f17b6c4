"""Lookaround optimizer for PyTorch with flat multi-branch buffers and fused backends."""

from .backends import available_backends
from .optimizer import Lookaround

__all__ = ["Lookaround", "available_backends"]
__version__ = "0.1.0"

"""Which implementation runs an op: the CUDA extension, Triton, or the reference.

Default order on a CUDA tensor: the compiled extension, then Triton, then the
reference. CPU tensors use the reference, except that Triton may be forced when
``TRITON_INTERPRET=1`` (that is how the Triton kernels are tested without a GPU).
Force a backend with ``PYSTEER_BACKEND=cuda|triton|reference``,
:func:`set_backend`, or the :func:`use_backend` context manager.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
from types import ModuleType
from typing import Iterator, Optional

import torch

from ..errors import BackendUnavailableError

BACKENDS = ("cuda", "triton", "reference")
_forced: Optional[str] = None


def _check_name(name: Optional[str]) -> Optional[str]:
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    return name


def set_backend(name: Optional[str]) -> None:
    """Force every op onto one backend (``None`` restores automatic choice)."""
    global _forced
    _forced = _check_name(name)


def forced_backend() -> Optional[str]:
    return _forced or _check_name(os.environ.get("PYSTEER_BACKEND") or None)


@contextlib.contextmanager
def use_backend(name: Optional[str]) -> Iterator[None]:
    global _forced
    previous, _forced = _forced, _check_name(name)
    try:
        yield
    finally:
        _forced = previous


@functools.lru_cache(maxsize=None)
def _import(name: str) -> "ModuleType | str":
    """The backend's module, or the reason it cannot be imported."""
    module = {"cuda": "pysteer.ops.cuda_backend", "triton": "pysteer.triton_kernels",
              "reference": "pysteer.ops.reference"}[name]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        return str(exc)


def _unavailable_reason(name: str, device: torch.device) -> Optional[str]:
    if name == "cuda" and device.type != "cuda":
        return f"the CUDA backend runs on CUDA tensors only (got a {device.type} tensor)"
    if name == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return (f"the Triton backend needs CUDA tensors (got {device.type}); set TRITON_INTERPRET=1 "
                f"before importing triton to run it in the interpreter")
    module = _import(name)
    return module if isinstance(module, str) else None


def available_backends(device: "torch.device | str" = "cuda") -> dict[str, Optional[str]]:
    """For each backend, ``None`` if it can run on ``device``, else the reason it cannot."""
    device = torch.device(device)
    return {name: _unavailable_reason(name, device) for name in BACKENDS}


def backend_for(device: torch.device) -> ModuleType:
    """The module implementing the ops for tensors on ``device``."""
    forced = forced_backend()
    if forced is not None:
        reason = _unavailable_reason(forced, device)
        if reason is not None:
            raise BackendUnavailableError(f"backend {forced!r} was requested but cannot run: {reason}")
        return _import(forced)
    order = ("cuda", "triton", "reference") if device.type == "cuda" else ("reference",)
    for name in order:
        if _unavailable_reason(name, device) is None:
            return _import(name)
    raise BackendUnavailableError("no backend can run; this is a bug")  # reference always imports


def active_backend_name(device: "torch.device | str") -> str:
    module = backend_for(torch.device(device))
    return {_import(n): n for n in BACKENDS if not isinstance(_import(n), str)}[module]

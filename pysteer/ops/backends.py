"""Which implementation runs an op: a declared registry, resolved once per device.

Each backend declares what it can run (:data:`REGISTRY`): the device types it runs on,
the float dtypes it takes per op and the largest top-k ``k``; whether its module
imports is found out the first time it is needed. Backends are plain launchers; the
op layer (:mod:`pysteer.ops`) validates a call and then takes its implementation
from :func:`launcher`, which decides:

1. The requested backend, by precedence: the op's ``backend=`` argument, then the
   context (:func:`use_backend`, :func:`set_backend`; per thread and asyncio task),
   then ``PYSTEER_BACKEND``, then automatic choice.
2. The order to try, :data:`BACKENDS` (cuda → triton → reference) from the requested
   backend on, keeping those that run natively on the device. Automatic choice starts
   at the first that does: the extension on a CUDA tensor, the reference elsewhere.
   Triton runs on CPU tensors only through its interpreter (``TRITON_INTERPRET=1``
   when triton is imported, how the kernels are tested without a GPU), so it is used
   there only when requested.
3. The first backend in that order that takes *this call*: one whose dtypes or
   ``k`` limit exclude it is skipped, requested or not; the reference takes every call.
   A requested backend that cannot run on the device at all (no CUDA tensor, the
   module does not import) is a :class:`BackendUnavailableError` saying why.

Decisions are cached per (requested backend, device) and per call signature (op,
device, dtypes, ``k``). ``PYSTEER_BACKEND`` is read at the first resolution and again
only by :func:`reload_environment`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import os
from dataclasses import dataclass, field
from types import ModuleType
from typing import Callable, Iterator, Mapping, Optional

import torch

from ..errors import BackendUnavailableError

BACKENDS = ("cuda", "triton", "reference")
OPS = ("sparse_steer_", "dense_steer_", "encode_topk", "sparse_decode")
ENVIRONMENT_VARIABLE = "PYSTEER_BACKEND"

_FLOATS = frozenset({torch.float32, torch.float16, torch.bfloat16})


def _every_op(dtypes: frozenset) -> Mapping[str, frozenset]:
    return {op: dtypes for op in OPS}


_ANY_FLOAT = _every_op(_FLOATS)


@dataclass(frozen=True)
class Backend:
    """What one backend can run; the registry, not the backend, decides the fallback.

    ``devices`` maps a device type to the float dtypes each op takes there (``None``:
    every device, every dtype); ``interpreted`` does the same for device types it runs
    on only when its module says ``INTERPRETED``. ``max_topk_k`` bounds ``encode_topk``'s k.
    """

    name: str
    module_name: str
    requirement: str  # what it runs on, for the error when it cannot
    devices: Optional[Mapping[str, Mapping[str, frozenset]]]
    interpreted: Mapping[str, Mapping[str, frozenset]] = field(default_factory=dict)
    max_topk_k: Optional[int] = None

    def module(self) -> "ModuleType | str":
        """The module of launchers, or the reason it does not import."""
        return _import(self.module_name)

    def runs_natively_on(self, device_type: str) -> bool:
        return self.devices is None or device_type in self.devices

    def _dtypes_on(self, device_type: str) -> Optional[Mapping[str, frozenset]]:
        if self.devices is None:
            return _ANY_FLOAT
        if device_type in self.devices:
            return self.devices[device_type]
        if device_type in self.interpreted and getattr(self.module(), "INTERPRETED", False):
            return self.interpreted[device_type]
        return None

    def unavailable_reason(self, device: torch.device) -> Optional[str]:
        """``None`` if this backend can run on ``device``, else why not."""
        might_run = self.runs_natively_on(device.type) or device.type in self.interpreted
        module = self.module() if might_run else None
        if isinstance(module, str):
            return module
        if self._dtypes_on(device.type) is None:
            return f"{self.requirement}; got a {device.type} tensor"
        return None

    def takes(self, op: str, device_type: str, dtypes: tuple, k: Optional[int]) -> bool:
        """Whether this one call (its float dtypes and top-k ``k``) is within the declared limits."""
        supported = self._dtypes_on(device_type)[op]
        within_k = k is None or self.max_topk_k is None or k <= self.max_topk_k
        return within_k and all(dtype in supported for dtype in dtypes)


REGISTRY: Mapping[str, Backend] = {
    "cuda": Backend("cuda", "pysteer.ops.cuda_backend", "the CUDA backend runs on CUDA tensors only",
                    devices={"cuda": _ANY_FLOAT},
                    max_topk_k=256),  # the fused kernel's per-row top-k buffers
    "triton": Backend("triton", "pysteer.triton_kernels",
                      "the Triton backend needs CUDA tensors, or TRITON_INTERPRET=1 set before "
                      "triton is imported to run it in the interpreter",
                      devices={"cuda": _ANY_FLOAT},
                      # The interpreter runs kernels in numpy, which has no bf16.
                      interpreted={"cpu": _every_op(frozenset({torch.float32, torch.float16}))},
                      max_topk_k=256),  # the top-k lives in one tile of next_pow2(k) columns
    "reference": Backend("reference", "pysteer.ops.reference", "", devices=None),
}

_context_backend: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar(
    "pysteer_backend", default=None)


@functools.cache
def _import(module_name: str) -> "ModuleType | str":
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        return str(exc)


@functools.cache
def _environment_backend() -> Optional[str]:
    name = os.environ.get(ENVIRONMENT_VARIABLE) or None
    if name is not None and name not in REGISTRY:
        raise ValueError(f"{ENVIRONMENT_VARIABLE}={name!r} is not a backend; "
                         f"expected one of {', '.join(BACKENDS)} (or unset for automatic choice)")
    return name


def reload_environment() -> None:
    """Re-read ``PYSTEER_BACKEND`` and forget every cached decision."""
    for cached in (_environment_backend, _candidates, _plan):
        cached.cache_clear()


def _check_name(name: Optional[str]) -> Optional[str]:
    if name is not None and name not in REGISTRY:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    return name


def set_backend(name: Optional[str]) -> None:
    """Request one backend for every op in the current context (``None``: back to
    ``PYSTEER_BACKEND`` or automatic choice). Other threads keep their own choice."""
    _context_backend.set(_check_name(name))


@contextlib.contextmanager
def use_backend(name: Optional[str]) -> Iterator[None]:
    """Request ``name`` for the ops run inside the block, in this thread or task only."""
    token = _context_backend.set(_check_name(name))
    try:
        yield
    finally:
        _context_backend.reset(token)


def requested_backend(backend: Optional[str] = None) -> Optional[str]:
    """The requested backend by precedence (argument, context, environment); ``None``: automatic."""
    return backend or _context_backend.get() or _environment_backend()


@functools.cache
def _candidates(requested: Optional[str], device: torch.device) -> tuple[Backend, ...]:
    """The backends calls on ``device`` may use, in the order they are tried."""
    if requested is not None:
        reason = REGISTRY[_check_name(requested)].unavailable_reason(device)
        if reason is not None:
            raise BackendUnavailableError(f"backend {requested!r} was requested but cannot run: {reason}")
    native = [REGISTRY[name] for name in BACKENDS if REGISTRY[name].runs_natively_on(device.type)
              and REGISTRY[name].unavailable_reason(device) is None]
    if requested is None:
        return tuple(native)
    later = BACKENDS[BACKENDS.index(requested) + 1:]
    return (REGISTRY[requested],) + tuple(b for b in native if b.name in later)


@functools.cache
def _plan(requested: Optional[str], op: str, device: torch.device, dtypes: tuple,
          k: Optional[int]) -> tuple[str, Callable]:
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; expected one of {', '.join(OPS)}")
    for backend in _candidates(requested, device):
        if backend.takes(op, device.type, dtypes, k):
            return backend.name, getattr(backend.module(), op)
    raise BackendUnavailableError(f"no backend takes {op} on {device} for {dtypes}, k={k}; "
                                  "this is a bug: the reference takes every call")


def launcher(op: str, device: torch.device, *dtypes: torch.dtype, k: Optional[int] = None,
             backend: Optional[str] = None) -> Callable:
    """The function that runs ``op`` for a validated call on ``device`` whose float
    operands have ``dtypes`` (and top-k ``k``), under the precedence above."""
    return _plan(requested_backend(backend), op, device, dtypes, k)[1]


def resolve(op: str, device: "torch.device | str", *dtypes: torch.dtype, k: Optional[int] = None,
            backend: Optional[str] = None) -> str:
    """The name of the backend :func:`launcher` picks for this call."""
    return _plan(requested_backend(backend), op, torch.device(device), dtypes, k)[0]


def check_backend(device: "torch.device | str", backend: Optional[str] = None) -> str:
    """The backend ops on ``device`` will prefer, by the current precedence; raises
    :class:`BackendUnavailableError` (saying why) when the requested one cannot run there.
    Meant for attach time, before any forward pass; a call beyond the backend's limits
    (a large top-k k) still falls back at run time."""
    return _candidates(requested_backend(backend), torch.device(device))[0].name


active_backend_name = check_backend


def backend_for(device: "torch.device | str") -> ModuleType:
    """The module of the backend ops on ``device`` prefer (see :func:`check_backend`)."""
    return REGISTRY[check_backend(device)].module()


def available_backends(device: "torch.device | str" = "cuda") -> dict[str, Optional[str]]:
    """For each backend, ``None`` if it can run on ``device``, else the reason it cannot."""
    device = torch.device(device)
    return {name: REGISTRY[name].unavailable_reason(device) for name in BACKENDS}

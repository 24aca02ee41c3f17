"""Per-request steering inside transformers' continuous batching engine.

transformers' ``ContinuousBatchingManager`` packs the tokens of many requests into one
``[1, tokens]`` step — prefill chunks and decode tokens side by side, requests joining and
leaving between steps — over a paged KV cache. Every step its batch IO object lays the
step out (``prepare_batch_tensors``: which request owns which tokens, at which positions).
:class:`ContinuousSteering` reads that same layout, just before the engine does, and writes
one configuration row per token into a preallocated buffer, which the steered layers'
plan uses as is (:meth:`pysteer.patching.SteeringState.set_packed_rows`): the same plan and
ops as ``Steering.generate``, no second steering path.

Per step this costs one small host list and one host→device copy into a static buffer —
the engine itself builds several such index tensors per step the same way — and no
device→host sync.
Each request's position rule (``prompt`` / ``generated`` / ``all``) is applied on the host,
where the engine already knows every token's position and every request's prompt length.

Every spec the engine offers is attached as ONE steering (:meth:`pysteer.Steering.of_specs`):
global row = spec offset + configuration row; a request with a ``scale`` ≠ 1 borrows a spare
row, filled in place with the scaled coefficients. Adding or removing a spec rebuilds that
steering at the next step boundary, in the engine's own thread (a removed spec stays attached
until its last request ends). Specs are held by content digest, names only point at them.

Two engine features are switched off because they would be wrong with steering: prefix
sharing (a KV block computed under one request's steering must not be reused by another's)
and async batching (two steps in flight would need two row buffers; CUDA only). With CUDA
graphs on, every step plans (a step with no steered token runs the op on −1 rows rather than
skipping it, so the captured graph is the same), and a rebuild drops the captured graphs.

    engine = SteeredEngine(model, {"formal": spec}, generation_config=gc, cb_config=cb)
    with engine:
        outputs = engine.generate([ids_a, ids_b], [RequestSteering("formal", row=1), None])
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import threading
from collections import Counter
from dataclasses import dataclass, fields
from typing import Any, Iterable, Mapping, Optional, Sequence

import torch
from torch import nn

from ..errors import SteeringSpecError
from ..patching.attach import Steering, check_spec_fits
from ..spec import SteeringSpec

logger = logging.getLogger(__name__)

__all__ = ["RequestSteering", "SteeringRequestError", "ContinuousSteering", "SteeredEngine", "spec_digest"]


class SteeringRequestError(SteeringSpecError):
    """A request's steering cannot run (unknown spec, row out of range, bad scale, no spare row).
    ``status`` is the HTTP status a server answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RequestSteering:
    """Which steering one request runs under: the registered spec ``spec`` (a name), its
    configuration ``row``, and ``scale`` (every coefficient of that row times ``scale``)."""

    spec: str
    row: int = 0
    scale: float = 1.0

    @classmethod
    def parse(cls, value: Any) -> Optional["RequestSteering"]:
        """From a request body's field: None (unsteered), a spec name, or
        ``{"spec": NAME, "row": INT, "scale": NUMBER}`` (``name`` is accepted for ``spec``)."""
        if value is None or isinstance(value, RequestSteering):
            return value
        if isinstance(value, str):
            return cls(value)
        if not isinstance(value, dict):
            raise SteeringRequestError(f"steering must be a spec name or an object "
                                       f"{{\"spec\": NAME, \"row\": INT, \"scale\": NUMBER}}, got {value!r}")
        unknown = sorted(set(value) - {"spec", "name", "row", "scale"})
        if unknown:
            raise SteeringRequestError(f"unknown steering field(s) {unknown}; use spec, row, scale")
        name = value.get("spec", value.get("name"))
        if not isinstance(name, str) or not name:
            raise SteeringRequestError("steering.spec must name a spec (a non-empty string)")
        row, scale = value.get("row", 0), value.get("scale", 1.0)
        if isinstance(row, bool) or not isinstance(row, int):
            raise SteeringRequestError(f"steering.row must be an integer, got {row!r}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise SteeringRequestError(f"steering.scale must be a finite number, got {scale!r}")
        return cls(name, row, float(scale))


def spec_digest(spec: SteeringSpec) -> str:
    """A content digest of a spec: positions and every intervention's fields and tensors (and,
    for an SAE it encodes in full, that SAE's weights). Equal content → equal digest."""
    h = hashlib.sha256(spec.positions.encode())

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(value, (list, tuple)):
            for item in value:
                feed(item)
        elif isinstance(value, (int, float, str, bool)) or value is None:
            h.update(repr(value).encode())
        elif hasattr(value, "__dict__"):  # an SAE: its tensors decide what a full encode does
            for key in sorted(vars(value)):
                if isinstance(vars(value)[key], (torch.Tensor, int, float, str)):
                    h.update(key.encode())
                    feed(vars(value)[key])
        else:
            h.update(repr(value).encode())

    for iv in spec.interventions:
        h.update(type(iv).__name__.encode())
        for f in fields(iv):
            h.update(f.name.encode())
            feed(getattr(iv, f.name))
    return h.hexdigest()[:16]


@dataclass
class _Request:
    digest: str
    row: int
    scale: float
    prompt_length: int
    positions: str
    slot_key: Optional[tuple] = None


class ContinuousSteering:
    """The steering side of a continuous-batching engine: the specs it offers, which request
    uses which configuration, and the per-token rows of each packed step.

    Thread-safe: requests are registered from server threads, steps run in the engine's
    thread; spec changes take effect at the next step boundary.
    """

    def __init__(self, model: nn.Module, specs: Optional[Mapping[str, SteeringSpec]] = None,
                 spare_rows: int = 16) -> None:
        self.model = model
        self.spare_rows = int(spare_rows)
        self._lock = threading.RLock()
        self._names: dict[str, str] = {}           # name -> digest
        self._specs: dict[str, SteeringSpec] = {}  # digest -> spec (offered, or still in use)
        self._users: Counter = Counter()           # digest -> requests in flight
        self._requests: dict[str, _Request] = {}
        self._slots: dict[tuple, list] = {}        # (digest, row, scale) -> [slot, users]
        self._slot_rows: dict[tuple, int] = {}     # slot key -> its global row in the current steering
        self._steering: Optional[Steering] = None
        self._layout: list[str] = []               # digests, in the attached steering's group order
        self._dirty = False
        self._buffer: Optional[torch.Tensor] = None
        self._graphs = False
        self._io: Any = None
        self.steps = 0
        for name, spec in (specs or {}).items():
            self.add_spec(name, spec)

    # ---------------------------------------------------------------- specs
    def add_spec(self, name: str, spec: SteeringSpec) -> str:
        """Offer ``spec`` as ``name`` (from the next step on); returns its digest. A spec made
        for another model raises :class:`SteeringSpecError` and changes nothing."""
        if not isinstance(name, str) or not name:
            raise SteeringRequestError("a spec name must be a non-empty string")
        check_spec_fits(spec, self.model)
        digest = spec_digest(spec)
        with self._lock:
            if name in self._names and self._names[name] != digest:
                raise SteeringRequestError(f"a different spec is already named {name!r}: remove it first", 409)
            self._names[name] = digest
            if digest not in self._specs:
                self._specs[digest] = spec
                self._dirty = True
        return digest

    def remove_spec(self, name: str) -> None:
        """Stop offering ``name``; requests already running with it finish unchanged."""
        with self._lock:
            if name not in self._names:
                raise SteeringRequestError(f"no spec is named {name!r}", 404)
            del self._names[name]
            self._dirty = True

    def specs(self) -> dict[str, dict]:
        """name -> {digest, n_configs, positions, layers} of every offered spec."""
        with self._lock:
            return {name: {"digest": d, "n_configs": self._specs[d].n_configs,
                           "positions": self._specs[d].positions, "layers": self._specs[d].layers}
                    for name, d in self._names.items()}

    # ------------------------------------------------------------- requests
    def register(self, request_id: str, steering: "RequestSteering | dict | str | None",
                 prompt_length: int) -> None:
        """Record how request ``request_id`` is steered (None: not at all). Raises
        :class:`SteeringRequestError` — before anything reaches the engine — for an unknown
        spec, a row out of range, a non-finite scale, or no free spare row."""
        steering = RequestSteering.parse(steering)
        if steering is None:
            return
        with self._lock:
            digest = self._names.get(steering.spec)
            if digest is None:
                offered = ", ".join(sorted(self._names)) or "none"
                raise SteeringRequestError(f"unknown steering spec {steering.spec!r} (offered: {offered})", 404)
            spec = self._specs[digest]
            if not 0 <= steering.row < spec.n_configs:
                raise SteeringRequestError(f"steering row {steering.row} is out of range: spec "
                                           f"{steering.spec!r} has {spec.n_configs} configuration(s)")
            if request_id in self._requests:
                raise SteeringRequestError(f"request id {request_id!r} is already in flight", 409)
            request = _Request(digest, steering.row, steering.scale, int(prompt_length), spec.positions)
            if steering.scale != 1.0:
                key = (digest, steering.row, steering.scale)
                if key not in self._slots:
                    used = {slot for slot, _ in self._slots.values()}
                    free = next((s for s in range(self.spare_rows) if s not in used), None)
                    if free is None:
                        raise SteeringRequestError(f"all {self.spare_rows} spare rows hold other scaled "
                                                   f"configurations in flight; retry later", 429)
                    self._slots[key] = [free, 0]
                self._slots[key][1] += 1
                request.slot_key = key
            self._requests[request_id] = request
            self._users[digest] += 1

    def release(self, request_id: str) -> None:
        """Forget a finished, failed or cancelled request (idempotent)."""
        with self._lock:
            request = self._requests.pop(request_id, None)
            if request is None:
                return
            self._users[request.digest] -= 1
            if self._users[request.digest] <= 0:
                del self._users[request.digest]
                if request.digest not in self._names.values():
                    self._dirty = True  # a removed spec's last request: detach it at the next step
            if request.slot_key is not None:
                entry = self._slots[request.slot_key]
                entry[1] -= 1
                if entry[1] <= 0:
                    del self._slots[request.slot_key]
                    self._slot_rows.pop(request.slot_key, None)

    def in_flight(self) -> int:
        with self._lock:
            return len(self._requests)

    # ------------------------------------------------------- engine hook-up
    def install(self, manager: Any) -> None:
        """Hook into ``manager`` (a ``ContinuousBatchingManager``, not yet started): every
        batch processor it creates gets its per-step layout read and its finished requests
        released. Turns off prefix sharing and async batching (see the module docstring)."""
        config = manager.continuous_batching_config
        if config.allow_block_sharing:
            logger.info("pysteer: prefix sharing is off (KV blocks differ between steerings)")
        config.allow_block_sharing = False
        manager._use_prefix_sharing = False
        if config.use_async_batching:
            logger.info("pysteer: async batching is off (one packed row buffer per step)")
        config.use_async_batching = False
        self._graphs = any(config.cuda_graph_booleans) if hasattr(config, "cuda_graph_booleans") else False
        create = manager._create_batch_processor

        def create_steered() -> Any:
            processor = create()
            self._hook(processor)
            return processor

        manager._create_batch_processor = create_steered
        if getattr(manager, "batch_processor", None) is not None:
            self._hook(manager.batch_processor)

    def _hook(self, processor: Any) -> None:
        if getattr(processor, "_pysteer_hooked", False):
            return
        io, scheduler = processor.inputs_and_outputs, processor.scheduler
        if not hasattr(io, "position_ids"):
            raise SteeringSpecError("pysteer needs the synchronous batching IO (use_async_batching=False)")
        self._io = io
        self._buffer = torch.full((processor.cache.max_batch_tokens,), -1, dtype=torch.int32,
                                  device=processor.model_device)
        prepare, finish, clear = io.prepare_batch_tensors, scheduler.finish_request, scheduler.clear_cancelled_requests

        def prepare_steered(requests_in_batch, logits_processors, use_decode_fast_path, num_q_tokens,
                            max_kv_read, use_padding):
            self._before_step(requests_in_batch, num_q_tokens)  # before: it advances position_offset
            return prepare(requests_in_batch, logits_processors, use_decode_fast_path, num_q_tokens,
                           max_kv_read, use_padding)

        def finish_steered(request_id: str) -> None:
            finish(request_id)
            self.release(request_id)

        def clear_steered() -> list:
            states = clear()
            for state in states:
                self.release(state.request_id)
            return states

        io.prepare_batch_tensors = prepare_steered
        scheduler.finish_request = finish_steered
        scheduler.clear_cancelled_requests = clear_steered
        processor._pysteer_hooked = True

    # ------------------------------------------------------------- per step
    def _before_step(self, requests_in_batch: Sequence[Any], num_q_tokens: int) -> None:
        """Rows per token of the step about to be laid out, into the static buffer."""
        with self._lock:
            if self._dirty:
                self._rebuild()
            steering = self._steering
            if steering is None:
                return
            for key, (slot, _) in self._slots.items():
                if key not in self._slot_rows:
                    digest, row, scale = key
                    group = self._layout.index(digest)
                    self._slot_rows[key] = steering.set_spare_row(
                        slot, group, [scale * iv.coefficients[row] for iv in self._specs[digest].interventions])
            rows: list[int] = []
            for future in requests_in_batch:
                state, count = future.state, future.query_length
                request = self._requests.get(state.request_id)
                if request is None:  # unsteered, or the engine's own warmup requests
                    rows.extend([-1] * count)
                    continue
                row = self._global_row(steering, request)
                if request.positions == "all":
                    rows.extend([row] * count)
                    continue
                # Token i of this chunk sits at position position_offset + i; below the
                # request's prompt length it is prompt.
                in_prompt = min(max(request.prompt_length - state.position_offset, 0), count)
                if request.positions == "prompt":
                    rows.extend([row] * in_prompt + [-1] * (count - in_prompt))
                else:
                    rows.extend([-1] * in_prompt + [row] * (count - in_prompt))
        real = len(rows)
        rows.extend([-1] * (num_q_tokens - real))  # the engine's padding tokens
        steered = [i for i, r in enumerate(rows) if r >= 0]
        buffer = self._buffer[:num_q_tokens]
        buffer.copy_(torch.tensor(rows, dtype=torch.int32), non_blocking=True)
        steered_tokens = None
        if steering.state.wants_steered_tokens and not self._graphs and len(steered) < len(rows):
            steered_tokens = torch.tensor(steered, dtype=torch.long).to(buffer.device, non_blocking=True)
        # Under CUDA graphs the captured step must be the same whether or not a token is steered.
        steering.state.set_packed_rows(buffer, skip=not steered and not self._graphs, steered_tokens=steered_tokens)
        self.steps += 1

    def _global_row(self, steering: Steering, request: _Request) -> int:
        if request.slot_key is not None:
            return self._slot_rows[request.slot_key]
        return steering.row_offsets[self._layout.index(request.digest)] + request.row

    def _rebuild(self) -> None:
        """Attach exactly the specs offered or in use, as one steering (engine thread only)."""
        wanted = [d for d in self._specs if d in self._names.values() or self._users[d] > 0]
        for digest in [d for d in self._specs if d not in wanted]:
            del self._specs[digest]
        self._dirty = False
        if wanted == self._layout and self._steering is not None:
            return
        if self._steering is not None:
            self._steering.detach()
            self._steering = None
        self._layout, self._slot_rows = wanted, {}
        if wanted:
            self._steering = Steering.of_specs(self.model, [self._specs[d] for d in wanted], self.spare_rows)
        if self._graphs and self._io is not None:
            # Captured graphs hold the old steering's buffers: capture again on next use.
            self._io.graphs = type(self._io.graphs)()
        logger.info("pysteer: %d spec(s) attached", len(wanted))

    def detach(self) -> None:
        with self._lock:
            if self._steering is not None:
                self._steering.detach()
                self._steering = None
                self._layout = []
                self._dirty = bool(self._specs)


class SteeredEngine:
    """transformers' continuous-batching manager with :class:`ContinuousSteering` installed.

    ``submit`` adds one request (steering checked first: a bad one raises and nothing is
    queued); ``generate`` runs a list of requests to completion and returns their new tokens
    in order. Use as a context manager (start … drain and stop). Under tensor parallelism
    every rank runs the same calls (transformers' own rule): request ids are numbered in
    call order, so each rank knows each request's steering.
    """

    def __init__(self, model: nn.Module, specs: Optional[Mapping[str, SteeringSpec]] = None, *,
                 generation_config: Any = None, cb_config: Any = None, spare_rows: int = 16) -> None:
        self.model = model
        self.steering = ContinuousSteering(model, specs, spare_rows)
        self.manager = model.init_continuous_batching(generation_config=generation_config,
                                                      continuous_batching_config=cb_config)
        self.steering.install(self.manager)
        self._ids = itertools.count()

    def start(self) -> "SteeredEngine":
        self.manager.start()
        return self

    def stop(self, drain: bool = True, timeout: Optional[float] = None) -> None:
        """Stop the engine: with ``drain``, requests in flight finish first."""
        if self.manager.is_running():
            self.manager.stop(block=True, timeout=timeout, hard_stop=not drain)
        self.manager.destroy()
        self.steering.detach()

    def __enter__(self) -> "SteeredEngine":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def submit(self, input_ids: Iterable[int], steering: "RequestSteering | dict | str | None" = None, *,
               max_new_tokens: Optional[int] = None, streaming: bool = False,
               request_id: Optional[str] = None, **kwargs: Any) -> str:
        """Queue one request; returns its id. Raises :class:`SteeringRequestError` for a bad steering."""
        ids = [int(t) for t in input_ids]
        request_id = request_id or f"pysteer_{next(self._ids)}"
        self.steering.register(request_id, steering, len(ids))
        try:
            queued = self.manager.add_request(ids, request_id=request_id, max_new_tokens=max_new_tokens,
                                              streaming=streaming, **kwargs)
        except BaseException:
            self.steering.release(request_id)
            raise
        if queued is None and self.manager.is_tp_driver:
            self.steering.release(request_id)
            raise RuntimeError("the engine is not accepting requests (stopping or stopped)")
        return request_id

    def generate(self, inputs: Sequence[Iterable[int]],
                 steerings: "Optional[Sequence[RequestSteering | dict | str | None]]" = None, *,
                 max_new_tokens: Optional[int] = None, timeout: float = 600.0) -> list[list[int]]:
        """Every request to completion; the new tokens of each, in the order given."""
        steerings = [None] * len(inputs) if steerings is None else list(steerings)
        if len(steerings) != len(inputs):
            raise SteeringSpecError(f"{len(inputs)} inputs but {len(steerings)} steerings")
        ids = [self.submit(x, s, max_new_tokens=max_new_tokens) for x, s in zip(inputs, steerings)]
        results = collect(self.manager, ids, timeout)
        return [results[i].generated_tokens for i in ids]


def collect(manager: Any, request_ids: Sequence[str], timeout: float = 600.0) -> dict:
    """Wait for every request in ``request_ids`` to finish; a failed one raises."""
    import time

    wanted, results = set(request_ids), {}
    deadline = time.monotonic() + timeout
    while wanted - set(results):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(wanted - set(results))} request(s) did not finish in {timeout}s")
        result = manager.get_result(timeout=0.5)
        if result is None:
            if not manager.is_running():
                raise RuntimeError("the continuous batching engine stopped before every request finished")
            continue
        if result.request_id in wanted and result.is_finished():
            if result.error is not None:
                raise RuntimeError(f"request {result.request_id} failed: {result.error}")
            results[result.request_id] = result
    return results

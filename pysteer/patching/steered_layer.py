"""The module that replaces a decoder layer, and the per-forward steering state.

``SteeredLayer`` runs the original layer, then edits its output hidden states in
place with the fused ops — no forward hooks. Its interventions hold their tensors as
non-persistent buffers already in the layer's device and dtype, so the hot path does
no conversion, no host sync and no validation beyond tensor metadata.

Which token uses which configuration row is decided once per forward pass
(:meth:`SteeringState.plan`), by the lowest steered layer, and shared by every steered
layer of that pass. The position rule (``positions="prompt" | "generated"``) reads the
position ids the model passes its layers — device tensors, so no host sync and no graph
break under ``torch.compile``. Where the host already knows the answer for free (the
rows the caller marked unsteered; a dynamic KV cache's length, which is a tensor shape),
the plan uses it to skip work: a call in which no token is steered launches no op, and a
TopK SAE encodes only the tokens that are steered.

A serving engine that packs the tokens of many requests into one step (transformers'
continuous batching, :mod:`pysteer.serving.continuous`) knows each token's configuration
from its own request layout: it hands the state that per-token row index for the step
(:meth:`SteeringState.set_packed_rows`) and the plan uses it as is — the same plan, the
same ops, no second steering path. Several specs attached as one steering
(:meth:`pysteer.Steering.of_specs`) each read their own rows out of one global index
through the state's ``group_maps``, gathered once per pass.

A NaN in one hidden row stays in that row: every op works row by row, so the other
rows come back exactly as they would without it.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence

import torch
from torch import Tensor, nn
from transformers.cache_utils import Cache

from .. import ops
from ..errors import SteeringSpecError
from ..spec import DenseIntervention, SparseIntervention
from .families import layer_hidden


class ForwardPlan(NamedTuple):
    """What one forward pass steers: ``row_index`` [tokens] int32 (configuration per token,
    −1 = left alone) and, when the host knows that only some tokens can be steered,
    ``steered_tokens`` (their flat indices; None = any token may be). A steering of several
    specs also carries ``group_rows`` [groups, tokens] int32: each spec's own row per token
    (−1 where the token uses another spec or none)."""

    row_index: Tensor
    steered_tokens: Optional[Tensor]
    group_rows: Optional[Tensor] = None

    def rows_for(self, group: int) -> Tensor:
        """The row index an intervention of spec ``group`` reads."""
        return self.row_index if self.group_rows is None else self.group_rows[group]


_NO_PLAN = object()  # no plan for the current pass yet (None means "nothing is steered")


class SteeringState:
    """Which configuration each batch row uses, which positions are steered, and the plan
    of the pass in flight.

    ``rows`` [B] holds a configuration index per batch row (−1: leave the row alone);
    ``None`` means every row uses configuration 0. With ``positions`` ``prompt`` or
    ``generated``, ``prompt_lengths`` ([B] or one for all) separates the two: a token whose
    position id is below its row's prompt length is prompt, the rest generated. Position
    ids count real tokens (``generate`` starts every left-padded row at 0), so these are
    the rows' unpadded prompt lengths; ``prompt_width`` is the padded width, which a
    dynamic cache's length is compared with to skip work on the host.
    """

    def __init__(self, n_configs: int, positions: str = "all") -> None:
        self.n_configs = n_configs
        self.positions = positions
        self.enabled = True
        self.rows: Optional[Tensor] = None            # int32 [B] on the model's device
        self.host_rows: Optional[list[int]] = None    # the same, on the host
        self.prompt_lengths: Optional[Tensor] = None  # int64 [B] or [1] on the model's device
        self.prompt_width: Optional[int] = None
        self.first_layer = self.last_layer = -1       # set by Steering: who plans, who clears
        self.wants_steered_tokens = False             # set by Steering: some intervention encodes the full SAE
        # Set by Steering.of_specs: group_maps[g, 1 + r] = spec g's own row for global row r
        # (−1: another spec's row), column 0 = −1 for unsteered tokens; mixed_positions: the
        # specs' position rules when they differ (only a packing engine can apply them).
        self.group_maps: Optional[Tensor] = None
        self.mixed_positions: Optional[list[str]] = None
        # Set per step by a packing engine (set_packed_rows): the step's rows per token.
        self.packed_rows: Optional[Tensor] = None
        self.packed_tokens: Optional[Tensor] = None
        self.packed_skip = False
        self._plan: Any = _NO_PLAN

    def set_rows(self, rows: "Sequence[int] | Tensor | None", device: torch.device) -> None:
        if rows is None:
            self.rows = self.host_rows = None
            return
        host = torch.as_tensor(rows).detach().cpu()
        if host.ndim != 1 or host.dtype.is_floating_point or host.dtype == torch.bool:
            raise SteeringSpecError(f"rows must be a 1-D list of configuration indices, got {rows!r}")
        bad = host[(host < -1) | (host >= self.n_configs)]
        if bad.numel():
            raise SteeringSpecError(f"row configuration {int(bad[0])} is out of range: the spec has "
                                    f"{self.n_configs} configuration(s); use -1 for an unsteered row")
        self.host_rows = host.tolist()
        self.rows = host.to(device=device, dtype=torch.int32)

    def set_prompt_length(self, lengths: "int | Sequence[int] | Tensor | None", device: torch.device,
                          width: Optional[int] = None) -> None:
        """Prompt length per row (one int: every row); ``width``: the padded prompt width."""
        if lengths is None:
            self.prompt_lengths, self.prompt_width = None, None
            return
        host = torch.as_tensor(lengths).detach().cpu()
        if host.dtype.is_floating_point or host.dtype == torch.bool or host.ndim > 1 or (host < 0).any():
            raise SteeringSpecError(f"prompt lengths must be non-negative ints (one, or one per row), "
                                    f"got {lengths!r}")
        self.prompt_lengths = host.reshape(-1).to(device=device, dtype=torch.long)
        self.prompt_width = int(host.max()) if width is None else int(width)

    def set_packed_rows(self, row_index: Optional[Tensor], skip: bool = False,
                        steered_tokens: Optional[Tensor] = None) -> None:
        """The next passes' configuration per token, from an engine that packs many requests
        into one [1, tokens] step: ``row_index`` [tokens] int32 on the model's device, −1 for a
        token left alone (unsteered request, a position its spec does not steer, padding).
        The engine has already applied each request's position rule, so ``positions`` and the
        prompt lengths are not consulted. ``skip``: the engine knows no token is steered (no
        op is launched — only where no CUDA graph is being captured); ``steered_tokens``: the
        flat indices of the steered tokens when known on the host. ``None`` ends packed mode.
        """
        self.packed_rows, self.packed_skip, self.packed_tokens = row_index, skip, steered_tokens

    # ------------------------------------------------------------------ the plan of a pass
    def plan(self, layer_index: int, batch: int, seq: int, position_ids: Optional[Tensor],
             cache: Optional[Cache], device: torch.device) -> Optional[ForwardPlan]:
        """The pass's plan, made by its lowest steered layer and reused by the others (the
        highest clears it); None when no token of this call is steered."""
        if layer_index == self.first_layer or self._plan is _NO_PLAN:
            self._plan = self._make_plan(layer_index, batch, seq, position_ids, cache, device)
        plan = self._plan
        if layer_index == self.last_layer:
            self._plan = _NO_PLAN
        if plan is not None and plan.row_index.shape[0] != batch * seq:
            raise SteeringSpecError(f"layer {layer_index} got {batch}×{seq} tokens but this pass's lowest "
                                    f"steered layer planned {plan.row_index.shape[0]}")
        return plan

    def _make_plan(self, layer_index: int, batch: int, seq: int, position_ids: Optional[Tensor],
                   cache: Optional[Cache], device: torch.device) -> Optional[ForwardPlan]:
        if self.packed_rows is not None:
            if self.packed_rows.shape[0] != batch * seq:
                raise SteeringSpecError(f"the engine packed rows for {self.packed_rows.shape[0]} tokens but "
                                        f"layer {layer_index} got {batch}×{seq}")
            if self.packed_skip:
                return None
            return self._with_groups(ForwardPlan(self.packed_rows, self.packed_tokens))
        if self.mixed_positions is not None:
            raise SteeringSpecError(f"the attached specs steer different positions ({self.mixed_positions}): "
                                    f"only an engine that packs per-token rows (pysteer.serving) can mix them")
        plan = self._padded_batch_plan(layer_index, batch, seq, position_ids, cache, device)
        return None if plan is None else self._with_groups(plan)

    def _with_groups(self, plan: ForwardPlan) -> ForwardPlan:
        """Each spec's own rows of a steering of several specs: one gather per pass."""
        if self.group_maps is None:
            return plan
        return plan._replace(group_rows=self.group_maps.index_select(1, (plan.row_index + 1).long()))

    def _padded_batch_plan(self, layer_index: int, batch: int, seq: int, position_ids: Optional[Tensor],
                           cache: Optional[Cache], device: torch.device) -> Optional[ForwardPlan]:
        host_rows = self.host_rows
        if host_rows is not None:
            if len(host_rows) != batch:
                raise SteeringSpecError(f"rows names {len(host_rows)} batch rows but the batch has {batch}")
            if all(r < 0 for r in host_rows):
                return None
        whole_call_kept = self.positions == "all"
        if not whole_call_kept:
            if self.prompt_lengths is None:
                raise SteeringSpecError(f"positions={self.positions!r} needs the prompt length: use "
                                        f"Steering.generate(...) or Steering.set_prompt_length(n)")
            span = self._host_span(layer_index, seq, cache)
            if span is not None:
                prompt_only, generated_only = span
                if (prompt_only and self.positions == "generated") or (generated_only and self.positions == "prompt"):
                    return None
                whole_call_kept = generated_only if self.positions == "generated" else prompt_only
        per_row = torch.zeros(batch, dtype=torch.int32, device=device) if self.rows is None else self.rows
        index = per_row.unsqueeze(1).expand(batch, seq)
        if not whole_call_kept:
            index = torch.where(self._kept_positions(batch, seq, position_ids), index, -1)
        steered_tokens = None
        if self.wants_steered_tokens and whole_call_kept and host_rows is not None and min(host_rows) < 0:
            # Only some rows are steered and the host knows which: a TopK SAE need not
            # encode the others (built on the host, so no sync).
            steered_tokens = torch.tensor([b * seq + t for b, r in enumerate(host_rows) if r >= 0
                                           for t in range(seq)], dtype=torch.long).to(device, non_blocking=True)
        return ForwardPlan(index.reshape(-1).to(torch.int32).contiguous(), steered_tokens)

    def _host_span(self, layer_index: int, seq: int, cache: Optional[Cache]) -> Optional[tuple[bool, bool]]:
        """(the call holds only prompt positions, only generated ones), when the host knows the
        call's padded positions for free; None when only the device knows."""
        if self.prompt_width is None or torch.compiler.is_compiling():
            return None
        # No cache: nothing came before this call. A dynamic cache's length is an int (a
        # shape); a static cache's is a tensor, which only the device knows.
        start = 0 if cache is None else cache.get_seq_length(layer_index)
        if not isinstance(start, int):
            return None
        return start + seq <= self.prompt_width, start >= self.prompt_width

    def _kept_positions(self, batch: int, seq: int, position_ids: Optional[Tensor]) -> Tensor:
        if position_ids is None:
            raise SteeringSpecError(f"positions={self.positions!r} needs the position ids the model passes "
                                    f"its decoder layers, and this model passed none")
        lengths = self.prompt_lengths
        if lengths.shape[0] not in (1, batch):
            raise SteeringSpecError(f"the prompt lengths name {lengths.shape[0]} rows but the batch has {batch}")
        in_prompt = position_ids.reshape(-1, seq) < lengths.unsqueeze(1)
        keep = in_prompt if self.positions == "prompt" else ~in_prompt
        return keep.expand(batch, seq)


class _CompiledSparse(nn.Module):
    group = 0  # which spec of a steering of several specs (Steering.of_specs) this belongs to

    def __init__(self, iv: SparseIntervention, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        as_weight = dict(device=device, dtype=dtype)
        buffers = {"coeffs": iv.coefficients.to(device=device, dtype=torch.float32),
                   "enc_rows": iv.enc_rows.to(**as_weight), "enc_bias": iv.enc_bias.to(**as_weight),
                   "threshold": iv.threshold.to(device=device, dtype=torch.float32),
                   "dec_rows": iv.dec_rows.to(**as_weight),
                   "input_offset": iv.input_offset.to(**as_weight),
                   "edit_modes": torch.tensor([int(e) for e in iv.edits], dtype=torch.int8, device=device)}
        self.arch = iv.arch
        if self.arch.needs_full_encode:
            sae = iv.sae
            self.k = int(sae.k)
            # slot_of[f]: f's column among the selected features, or n_selected (a spare
            # column that is dropped) — maps the top-k's indices to slots without a
            # [tokens, k, features] comparison.
            slot_of = torch.full((sae.d_sae,), iv.width, dtype=torch.long)
            slot_of[torch.tensor(iv.features, dtype=torch.long)] = torch.arange(iv.width)
            buffers.update(w_enc=sae.W_enc.to(**as_weight), b_enc=sae.b_enc.to(**as_weight),
                           slot_of=slot_of.to(device))
            if sae.feature_scale is not None:
                buffers["feature_scale"] = sae.feature_scale.to(device=device, dtype=torch.float32)
        for name, tensor in buffers.items():
            self.register_buffer(name, tensor.contiguous(), persistent=False)
        if not hasattr(self, "feature_scale"):
            self.feature_scale = None
        # Validate the weights once here; each call then only checks the hidden states.
        empty = torch.empty(0, self.dec_rows.shape[1], device=device, dtype=dtype)
        ops.check_sparse_steer_args(empty, torch.empty(0, dtype=torch.int32, device=device),
                                    self.coeffs, self.enc_rows, self.enc_bias, self.threshold,
                                    self.dec_rows, self.input_offset, self.edit_modes)

    def set_coefficients(self, table: Tensor) -> None:
        _write_table(self, table)

    def apply_(self, hidden: Tensor, plan: ForwardPlan) -> None:
        acts = self._selected_activations(hidden, plan.steered_tokens) if self.arch.needs_full_encode else None
        ops.launch_sparse_steer_(hidden, plan.rows_for(self.group), self.coeffs, self.enc_rows, self.enc_bias,
                                 self.threshold, self.dec_rows, self.input_offset, self.edit_modes, acts)

    def _selected_activations(self, hidden: Tensor, steered_tokens: Optional[Tensor]) -> Tensor:
        """The selected features' activations [tokens, S] fp32 from the exact top-k (whether a
        feature is active depends on all d_sae pre-activations), encoding only
        ``steered_tokens`` when given (the other rows' activations are never read)."""
        x = hidden if steered_tokens is None else hidden.index_select(0, steered_tokens)
        values, indices = ops.encode_topk(x, self.w_enc, self.b_enc, self.input_offset, self.feature_scale, self.k)
        width = self.coeffs.shape[1]
        slots = self.slot_of.index_select(0, indices.reshape(-1)).view_as(indices)
        acts = values.new_zeros(x.shape[0], width + 1).scatter_add_(1, slots, values.relu())[:, :width]
        if steered_tokens is None:
            return acts.contiguous()
        return values.new_zeros(hidden.shape[0], width).index_copy_(0, steered_tokens, acts)


class _CompiledDense(nn.Module):
    group = 0  # which spec of a steering of several specs (Steering.of_specs) this belongs to

    def __init__(self, iv: DenseIntervention, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("coeffs", iv.coefficients.to(device=device, dtype=torch.float32), persistent=False)
        self.register_buffer("directions", iv.directions.to(device=device, dtype=dtype).contiguous(),
                             persistent=False)
        self.register_buffer("dense_modes", torch.tensor([int(e) for e in iv.edits], dtype=torch.int8,
                                                         device=device), persistent=False)
        # Validate once here; each call then only checks the hidden states.
        ops.check_dense_steer_args(torch.empty(0, self.directions.shape[1], device=device, dtype=dtype),
                                   torch.empty(0, dtype=torch.int32, device=device), self.coeffs,
                                   self.directions, self.dense_modes)

    def set_coefficients(self, table: Tensor) -> None:
        _write_table(self, table)

    def apply_(self, hidden: Tensor, plan: ForwardPlan) -> None:
        ops.launch_dense_steer_(hidden, plan.rows_for(self.group), self.coeffs, self.directions, self.dense_modes)


def _write_table(compiled: nn.Module, table: Tensor) -> None:
    """New coefficients into the same buffer (captured CUDA graphs and compiled code stay
    valid); a table with another number of rows needs a new buffer."""
    if tuple(table.shape) == tuple(compiled.coeffs.shape):
        compiled.coeffs.copy_(table)
    else:
        compiled.coeffs = table.to(device=compiled.coeffs.device, dtype=torch.float32).contiguous()


def compile_intervention(iv: Any, device: torch.device, dtype: torch.dtype) -> nn.Module:
    if isinstance(iv, SparseIntervention):
        return _CompiledSparse(iv, device, dtype)
    return _CompiledDense(iv, device, dtype)


def find_cache(args: tuple, kwargs: dict[str, Any]) -> Optional[Cache]:
    """The KV cache among a decoder layer's arguments: families pass it by keyword or by
    position (GPT-2), so look for it by type."""
    return next((a for a in (*args, *kwargs.values()) if isinstance(a, Cache)), None)


class SteeredLayer(nn.Module):
    """Wraps a decoder layer: ``out = layer(...)``, then steer ``out``'s hidden states in place."""

    def __init__(self, layer: nn.Module, layer_index: int, interventions: Sequence[nn.Module],
                 state: SteeringState) -> None:
        super().__init__()
        self.layer = layer
        self.layer_index = layer_index
        self.interventions = nn.ModuleList(interventions)
        self.state = state

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self.state.enabled:  # Steering.unsteered(): the plain layer, nothing launched
            return self.layer(*args, **kwargs)
        incoming = args[0] if args else kwargs["hidden_states"]
        batch, seq = incoming.shape[:2]
        # Planned before the layer runs: a dynamic cache's length is read before it grows.
        plan = self.state.plan(self.layer_index, batch, seq, kwargs.get("position_ids"),
                               find_cache(args, kwargs), incoming.device)
        out = self.layer(*args, **kwargs)
        if plan is None:
            return out
        hidden = layer_hidden(out)
        steered = hidden
        if hidden.requires_grad or not hidden.is_contiguous():
            # The op edits in place and is inference-only: work on a detached contiguous copy
            # rather than rewrite a tensor autograd may have saved.
            steered = hidden.detach().clone(memory_format=torch.contiguous_format)
        flat = steered.view(batch * seq, steered.shape[-1])
        for intervention in self.interventions:
            intervention.apply_(flat, plan)
        if steered is hidden:
            return out
        return (steered,) + tuple(out[1:]) if isinstance(out, tuple) else steered

"""The module that replaces a decoder layer, and the per-forward steering state.

``SteeredLayer`` runs the original layer, then edits its output hidden states in
place with the fused ops — no forward hooks. Its interventions hold their tensors as
non-persistent buffers already in the layer's device and dtype, so the hot path does
no conversion, no host sync and no validation beyond tensor metadata.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn
from transformers.cache_utils import Cache

from .. import ops
from ..errors import SteeringSpecError
from ..spec import DenseIntervention, SparseIntervention
from .families import layer_hidden


class SteeringState:
    """Which configuration each batch row uses, and which positions are steered.

    ``rows`` [B] holds a configuration index per batch row (-1: leave the row alone);
    ``None`` means every row uses configuration 0. With ``positions`` ``prompt`` or
    ``generated``, ``prompt_length`` (the padded prompt length) separates the two:
    absolute positions below it are prompt, the rest generated.
    """

    def __init__(self, n_configs: int, positions: str = "all") -> None:
        self.n_configs = n_configs
        self.positions = positions
        self.prompt_length: Optional[int] = None
        self.rows: Optional[Tensor] = None  # int32 [B] on the model's device

    def set_rows(self, rows: "Sequence[int] | Tensor | None", device: torch.device) -> None:
        if rows is None:
            self.rows = None
            return
        host = torch.as_tensor(rows).detach().cpu()
        if host.ndim != 1 or host.dtype.is_floating_point or host.dtype == torch.bool:
            raise SteeringSpecError(f"rows must be a 1-D list of configuration indices, got {rows!r}")
        bad = host[(host < -1) | (host >= self.n_configs)]
        if bad.numel():
            raise SteeringSpecError(f"row configuration {int(bad[0])} is out of range: the spec has "
                                    f"{self.n_configs} configuration(s); use -1 for an unsteered row")
        self.rows = host.to(device=device, dtype=torch.int32)

    def set_prompt_length(self, prompt_length: Optional[int]) -> None:
        if prompt_length is not None and (not isinstance(prompt_length, int) or prompt_length < 0):
            raise SteeringSpecError(f"prompt_length must be a non-negative int, got {prompt_length!r}")
        self.prompt_length = prompt_length

    def row_index(self, batch: int, seq: int, start: int, device: torch.device) -> Tensor:
        """Per-token configuration index [batch·seq] int32 for tokens at positions start..start+seq."""
        if self.rows is None:
            per_row = torch.zeros(batch, dtype=torch.int32, device=device)
        elif self.rows.shape[0] != batch:
            raise SteeringSpecError(f"rows names {self.rows.shape[0]} batch rows but the batch has {batch}")
        else:
            per_row = self.rows
        index = per_row.unsqueeze(1).expand(batch, seq)
        if self.positions != "all":
            if self.prompt_length is None:
                raise SteeringSpecError(f"positions={self.positions!r} needs the prompt length: use "
                                        f"Steering.generate(...) or Steering.set_prompt_length(n)")
            position = torch.arange(start, start + seq, device=device)
            in_prompt = position < self.prompt_length
            keep = in_prompt if self.positions == "prompt" else ~in_prompt
            index = torch.where(keep.unsqueeze(0), index, -1)
        return index.reshape(-1).to(torch.int32).contiguous()


class _CompiledSparse(nn.Module):
    def __init__(self, iv: SparseIntervention, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        as_weight = dict(device=device, dtype=dtype)
        buffers = {"coeffs": iv.coefficients.to(device=device, dtype=torch.float32),
                   "enc_rows": iv.enc_rows.to(**as_weight), "enc_bias": iv.enc_bias.to(**as_weight),
                   "threshold": iv.threshold.to(device=device, dtype=torch.float32),
                   "dec_rows": iv.dec_rows.to(**as_weight),
                   "input_offset": iv.input_offset.to(**as_weight),
                   "edit_modes": torch.tensor([int(e) for e in iv.edits], dtype=torch.int8, device=device)}
        self.topk = iv.architecture == "topk"
        if self.topk:
            sae = iv.sae
            self.k = int(sae.k)
            buffers.update(w_enc=sae.W_enc.to(**as_weight), b_enc=sae.b_enc.to(**as_weight),
                           features=torch.tensor(iv.features, dtype=torch.long, device=device))
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

    def apply_(self, hidden: Tensor, row_index: Tensor) -> None:
        acts = None
        if self.topk:
            # Whether a feature is active depends on all d_sae pre-activations: take the
            # exact top-k, then read the selected features' activations out of it.
            values, indices = ops.encode_topk(hidden, self.w_enc, self.b_enc, self.input_offset,
                                              self.feature_scale, self.k)
            match = indices.unsqueeze(-1) == self.features
            acts = (values.relu().unsqueeze(-1) * match).sum(dim=1)
        ops.launch_sparse_steer_(hidden, row_index, self.coeffs, self.enc_rows, self.enc_bias,
                                 self.threshold, self.dec_rows, self.input_offset, self.edit_modes, acts)


class _CompiledDense(nn.Module):
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

    def apply_(self, hidden: Tensor, row_index: Tensor) -> None:
        ops.launch_dense_steer_(hidden, row_index, self.coeffs, self.directions, self.dense_modes)


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

    def _cache_start(self, args: tuple, kwargs: dict[str, Any]) -> int:
        """Tokens already cached at this layer = absolute position of this call's first token."""
        if self.state.positions == "all":
            return 0
        cache = find_cache(args, kwargs)
        return 0 if cache is None else int(cache.get_seq_length(self.layer_index))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        start = self._cache_start(args, kwargs)  # read before the layer appends to its cache
        out = self.layer(*args, **kwargs)
        hidden = layer_hidden(out)
        steered = hidden
        if hidden.requires_grad or not hidden.is_contiguous():
            # The op edits in place and is inference-only: work on a detached contiguous copy
            # rather than rewrite a tensor autograd may have saved.
            steered = hidden.detach().clone(memory_format=torch.contiguous_format)
        batch, seq, d_model = steered.shape
        flat = steered.view(batch * seq, d_model)
        row_index = self.state.row_index(batch, seq, start, steered.device)
        for intervention in self.interventions:
            intervention.apply_(flat, row_index)
        if steered is hidden:
            return out
        return (steered,) + tuple(out[1:]) if isinstance(out, tuple) else steered

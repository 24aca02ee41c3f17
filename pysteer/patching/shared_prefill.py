"""Prefill each distinct prompt once below the first steered layer, then generate the whole batch.

The tuner generates q candidates × P prompts in one batch: every prompt appears q
times, steered differently. Steering at layer L cannot change layers 0..L−1, so their
work on the prompt — hidden states and keys/values — is the same for all q copies
(and, with ``positions="generated"``, the whole prompt pass is). On a compute-bound
device that repeated prefill is a large share of the generation.

:func:`generate_with_shared_prefill` therefore

1. runs the U distinct prompts through layers 0..L−1 once (a forward pass stopped
   after layer L−1), keeping each layer's output and keys/values;
2. swaps layers 0..L−1 for :class:`_ReplayLayer` s, which answer the *first* call —
   the batch's prefill — with those results gathered to the B rows (and write the
   keys/values into the generation's cache), then put the real layer back, so the
   decode steps run with nothing added per token;
3. runs ``model.generate`` on the full batch (and restores the layers if it fails
   before the prefill).

Positions follow ``generate``'s own rule (cumulative attention mask − 1), so the
replayed states are what the batch's prefill would compute, up to floating-point
summation order.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn
from transformers.cache_utils import DynamicCache

from ..models import positions_from_mask
from .families import decoder_layers
from .steered_layer import find_cache

__all__ = ["shared_prefill_depth", "can_share_prefill", "generate_with_shared_prefill"]

# generate() options under which the first forward call is not the plain prefill of
# the given rows (beams and returned sequences repeat rows; a given cache is not ours).
_UNSUPPORTED = ("past_key_values", "cache_implementation", "inputs_embeds", "assistant_model",
                "prompt_lookup_num_tokens")


class _StopForward(Exception):
    """Raised after the last shared layer: the rest of the forward pass is not needed."""


class _ReplayLayer(nn.Module):
    """Answers the batch's prefill with precomputed results, then puts ``layer`` back in
    ``layers`` (decoders iterate over a copy or by key, so the swap is safe mid-forward)."""

    def __init__(self, layers: nn.ModuleList, index: int, output: Any, keys: Optional[torch.Tensor],
                 values: Optional[torch.Tensor], rows: torch.Tensor, seq_len: int) -> None:
        super().__init__()
        self.layer, self.index, self._layers = layers[index], index, [layers]  # list: not a submodule
        self._output, self._keys, self._values = output, keys, values
        self._rows, self._seq_len = rows, seq_len

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        expected = (self._rows.numel(), self._seq_len)
        if tuple(hidden_states.shape[:2]) != expected:
            raise RuntimeError(f"shared prefill: layer {self.index}'s first call has shape "
                               f"{tuple(hidden_states.shape[:2])}, expected the prefill {expected}")
        self._layers[0][self.index] = self.layer
        cache = find_cache(args, kwargs)
        if cache is not None and self._keys is not None:
            cache.update(self._keys.index_select(0, self._rows), self._values.index_select(0, self._rows),
                         self.index)
        hidden = self._output[0] if isinstance(self._output, tuple) else self._output
        hidden = hidden.index_select(0, self._rows)
        return (hidden,) + tuple(self._output[1:]) if isinstance(self._output, tuple) else hidden


def shared_prefill_depth(steering: Any) -> int:
    """How many layers' prompt work is the same for every configuration: the first steered
    layer, or all layers when only generated positions are steered."""
    n_layers = len(decoder_layers(steering.model))
    if steering.spec.positions == "generated":
        return n_layers
    return min(steering.spec.layers)


def _distinct_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(first row of each distinct (prompt, mask) [U], which distinct prompt each row is [B])."""
    key = torch.cat([input_ids, attention_mask.to(input_ids.dtype)], dim=1)
    index_of: dict[tuple, int] = {}
    firsts, owner = [], []
    for row, prompt in enumerate(map(tuple, key.tolist())):
        if prompt not in index_of:
            index_of[prompt] = len(firsts)
            firsts.append(row)
        owner.append(index_of[prompt])
    return torch.tensor(firsts, device=input_ids.device), torch.tensor(owner, device=input_ids.device)


def can_share_prefill(input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor],
                      generate_kwargs: dict[str, Any]) -> bool:
    """Whether :func:`generate_with_shared_prefill` applies to this ``generate`` call."""
    if attention_mask is None or input_ids.ndim != 2 or input_ids.shape[0] < 2:
        return False
    if any(generate_kwargs.get(k) is not None for k in _UNSUPPORTED) or generate_kwargs.get("use_cache") is False:
        return False
    return int(generate_kwargs.get("num_beams") or 1) == 1 and \
        int(generate_kwargs.get("num_return_sequences") or 1) == 1


@torch.no_grad()
def generate_with_shared_prefill(steering: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                                 **generate_kwargs: Any) -> Optional[torch.Tensor]:
    """``model.generate`` on the batch with the shared prompt layers computed once per
    distinct prompt; None when nothing can be shared (every row distinct, or steering at
    layer 0) — the caller then generates normally."""
    model = steering.model
    depth = shared_prefill_depth(steering)
    firsts, owner = _distinct_rows(input_ids, attention_mask)
    if depth == 0 or firsts.numel() == input_ids.shape[0]:
        return None
    layers = decoder_layers(model)
    ids, mask = input_ids.index_select(0, firsts), attention_mask.index_select(0, firsts)
    positions = positions_from_mask(mask)
    outputs: dict[int, Any] = {}

    def keep(index: int):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            outputs[index] = output
            if index == depth - 1:
                raise _StopForward
        return hook

    cache = DynamicCache(config=model.config)
    handles = [layers[i].register_forward_hook(keep(i)) for i in range(depth)]
    saved_rows = steering.state.rows
    try:
        steering.set_rows(None)  # the distinct prompts' pass; no steered layer is reached before depth
        steering.set_prompt_length(int(input_ids.shape[1]))
        model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
              use_cache=True)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
        steering.state.rows = saved_rows
    originals = {i: layers[i] for i in range(depth)}
    try:
        for i in range(depth):
            kv = cache.layers[i] if i < len(cache.layers) else None
            keys = getattr(kv, "keys", None) if kv is not None else None
            values = getattr(kv, "values", None) if kv is not None else None
            layers[i] = _ReplayLayer(layers, i, outputs[i], keys, values, owner, int(input_ids.shape[1]))
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)
    finally:
        for i, original in originals.items():
            layers[i] = original

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

Scoring the responses under the unsteered model (the tuner's perplexity) needs the
same prompts run unsteered through *every* layer: :func:`run_distinct_prompts` with
``every_layer`` does that once and both uses share it. And since layers 0..L−1 are
unsteered, the states a steered generation feeds into layer L for its response tokens
are the unsteered model's too: :func:`forward_from_layer` runs only layers L.. on them.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn
from transformers.cache_utils import DynamicCache

from ..models import positions_from_mask
from .capture import StopForward
from .families import decoder_layers, layer_hidden
from .steered_layer import find_cache

__all__ = ["shared_prefill_depth", "can_share_prefill", "DistinctPrompts", "run_distinct_prompts",
           "generate_with_shared_prefill", "forward_from_layer"]

# generate() options under which the first forward call is not the plain prefill of
# the given rows (beams and returned sequences repeat rows; a given cache is not ours).
_UNSUPPORTED = ("past_key_values", "cache_implementation", "inputs_embeds", "assistant_model",
                "prompt_lookup_num_tokens")


class _ReplayLayer(nn.Module):
    """Answers the batch's prefill with precomputed results, then puts ``layer`` back in
    ``layers`` (decoders iterate over a copy or by key, so the swap is safe mid-forward).
    ``output`` (the layer's recorded output) and ``keys``/``values`` hold one row per
    distinct prompt; ``rows`` [B] gathers them to the batch."""

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
        hidden = layer_hidden(self._output).index_select(0, self._rows)
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


@dataclass
class DistinctPrompts:
    """The unsteered pass over a batch's distinct prompts (left-padded to the batch width).

    ``owner`` [B] maps each batch row to its distinct prompt; ``outputs`` holds the
    outputs of layers 0..depth−1 (what :class:`_ReplayLayer` hands the batch's prefill);
    ``cache`` the keys/values of the layers that ran. With ``every_layer`` the pass ran
    the whole model and ``next_logprobs`` [U, V] is the log-distribution of each prompt's
    next token — all the unsteered model's prompt work that perplexity scoring needs.
    """

    owner: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor
    depth: int
    outputs: dict[int, Any]
    cache: DynamicCache
    next_logprobs: Optional[torch.Tensor] = None

    def cache_for(self, prompt_index: torch.Tensor, copy_cache: bool = True) -> DynamicCache:
        """The prompts' cache with one row per entry of ``prompt_index``: a copy, or with
        ``copy_cache=False`` this very cache, reordered (when it is used once)."""
        cache = copy.deepcopy(self.cache) if copy_cache else self.cache
        cache.reorder_cache(prompt_index)
        return cache


@torch.no_grad()
def run_distinct_prompts(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                         depth: int, every_layer: bool = False, steering: Any = None) -> DistinctPrompts:
    """Run each distinct prompt of the batch once, unsteered (under ``steering.unsteered()``
    when one is attached), keeping the outputs of layers 0..depth−1: the pass stops there,
    or with ``every_layer`` runs the whole model, which also gives each prompt's next-token
    log-distribution."""
    layers = decoder_layers(model)
    firsts, owner = _distinct_rows(input_ids, attention_mask)
    ids, mask = input_ids.index_select(0, firsts), attention_mask.index_select(0, firsts)
    outputs: dict[int, Any] = {}

    def keep(index: int):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            outputs[index] = output
            if index == depth - 1 and not every_layer:
                raise StopForward
        return hook

    cache = DynamicCache(config=model.config)
    handles = [layers[i].register_forward_hook(keep(i)) for i in range(depth)]
    next_logprobs = None
    try:
        with steering.unsteered() if steering is not None else contextlib.nullcontext():
            result = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask),
                           cache=cache, use_cache=True, logits_to_keep=1)
        next_logprobs = torch.log_softmax(result.logits[:, -1].float(), dim=-1)
    except StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return DistinctPrompts(owner=owner, mask=mask, lengths=mask.sum(1), depth=depth, outputs=outputs,
                           cache=cache, next_logprobs=next_logprobs)


@torch.no_grad()
def generate_with_shared_prefill(steering: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                                 prompts: Optional[DistinctPrompts] = None,
                                 **generate_kwargs: Any) -> Optional[torch.Tensor]:
    """``model.generate`` on the batch with the shared prompt layers computed once per
    distinct prompt (from ``prompts`` when given, else by a pass stopped after the last
    shared layer); None when there is nothing to gain — every row distinct and no
    ``prompts`` given, or steering at layer 0 — and the caller then generates normally."""
    model = steering.model
    if prompts is None:
        if shared_prefill_depth(steering) == 0 or _distinct_rows(input_ids, attention_mask)[0].numel() == \
                input_ids.shape[0]:
            return None
        prompts = run_distinct_prompts(model, input_ids, attention_mask, depth=shared_prefill_depth(steering),
                                       steering=steering)
    if prompts.depth == 0:
        return None
    layers = decoder_layers(model)
    replays = {i: _ReplayLayer(layers, i, prompts.outputs[i], *_cached(prompts.cache, i), prompts.owner,
                               int(input_ids.shape[1]))
               for i in range(prompts.depth)}
    originals = {i: layers[i] for i in replays}
    try:
        for i, replay in replays.items():
            layers[i] = replay
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)
    finally:
        for i, original in originals.items():
            layers[i] = original


def _cached(cache: DynamicCache, index: int) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(keys, values) of layer ``index`` in ``cache``, or (None, None) if it holds none."""
    kv = cache.layers[index] if index < len(cache.layers) else None
    return getattr(kv, "keys", None), getattr(kv, "values", None)


class _FixedOutputLayer(nn.Module):
    """Returns ``hidden`` in the structure of ``like`` (a recorded output of the same layer)."""

    def __init__(self, hidden: torch.Tensor, like: Any) -> None:
        super().__init__()
        self._hidden, self._like = hidden, like

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if tuple(hidden_states.shape[:2]) != tuple(self._hidden.shape[:2]):
            raise RuntimeError(f"forward_from_layer: the pass has shape {tuple(hidden_states.shape[:2])}, "
                               f"the given states {tuple(self._hidden.shape[:2])}")
        return (self._hidden,) + tuple(self._like[1:]) if isinstance(self._like, tuple) else self._hidden


@torch.no_grad()
def forward_from_layer(model: nn.Module, start: int, hidden: torch.Tensor, output_like: dict[int, Any],
                       **forward_kwargs: Any) -> Any:
    """``model(**forward_kwargs)`` with ``hidden`` [B, T, d] as the output of layer start−1:
    layers 0..start−1 are skipped (each stands in with ``hidden``, shaped like its recorded
    output in ``output_like``), so only layers start.. run. Their caches are left as given."""
    layers = decoder_layers(model)
    originals = {i: layers[i] for i in range(start)}
    try:
        for i in range(start):
            layers[i] = _FixedOutputLayer(hidden, output_like[i])
        return model(**forward_kwargs)
    finally:
        for i, original in originals.items():
            layers[i] = original

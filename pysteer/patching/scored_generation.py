"""Steered greedy generation scored under the unsteered model, sharing the work the two have
in common (the engine behind :meth:`pysteer.Steering.generate_configs`).

The perplexity of a response r_0..r_{n−1} (its generated tokens before the first end of
sequence) is exp(−(1/n) Σ_t log p(r_t | prompt, r_<t)) under the unsteered model.

- each distinct prompt runs once, unsteered, through the whole model
  (:func:`.shared_prefill.run_distinct_prompts`); its keys/values serve the scoring and
  its layers below the first steered one L replay the generation's prefill;
- the generation never steers layers 0..L−1, so the states it feeds into layer L for the
  response tokens are the unsteered model's: they are kept, and only layers L.. run again,
  from each prompt's cache (:func:`.shared_prefill.forward_from_layer`);
- a (prompt, response) pair is scored once however many rows produced it.
"""

from __future__ import annotations

import math
import time
from typing import Any, Optional

import torch

from ..models import token_logprobs
from .families import decoder_layers, layer_hidden
from .shared_prefill import (DistinctPrompts, forward_from_layer, generate_with_shared_prefill,
                             run_distinct_prompts, shared_prefill_depth)


class PhaseClock:
    """Adds the seconds since the last lap to ``timings[name]`` (nothing when timings is None)."""

    def __init__(self, device: torch.device, timings: Optional[dict]) -> None:
        self.device, self.timings = device, timings
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        if self.timings is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # kernels run asynchronously
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - self.last
        self.last = now


def response_length(tokens: list[int], eos: "set[int]") -> int:
    """Generated tokens before the first end-of-sequence token."""
    return next((t for t, token in enumerate(tokens) if token in eos), len(tokens))


@torch.no_grad()
def generate_and_score(steering: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                       max_new_tokens: int, pad_token_id: int, eos_token_ids: "set[int]",
                       score_batch_size: Optional[int] = None, timings: Optional[dict] = None,
                       generate_kwargs: Optional[dict] = None) -> tuple[torch.Tensor, list[float]]:
    """Greedy generation of one left-padded batch, steered with the rows already set on
    ``steering``: (output ids [B, W + n], perplexity under the unsteered model of each row's
    new tokens before the first of ``eos_token_ids``; NaN when there are none).

    ``timings``, a dict, accumulates the seconds spent in each part: ``prompt_pass_s``,
    ``generate_s`` (the steered prefill above the shared layers, and the decoding) and
    ``score_s``."""
    model = steering.model
    width = int(input_ids.shape[1])
    first_steered = min(steering.spec.layers)
    clock = PhaseClock(input_ids.device, timings)
    steering.set_prompt_length(attention_mask.sum(1), width=width)
    distinct = run_distinct_prompts(model, input_ids, attention_mask, depth=shared_prefill_depth(steering),
                                    every_layer=True, steering=steering)
    clock.lap("prompt_pass_s")
    fed: list[torch.Tensor] = []  # layer L's input at each decode step: [B, 1, d]
    hook = None
    if first_steered > 0:
        def keep(module, args, output):
            fed.append(layer_hidden(output).detach())
        hook = decoder_layers(model)[first_steered - 1].register_forward_hook(keep)
    kwargs = dict(generate_kwargs or {}, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_token_id)
    try:
        out = generate_with_shared_prefill(steering, input_ids, attention_mask, prompts=distinct, **kwargs)
        if out is None:  # steered from layer 0: no prompt layer is shared
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    finally:
        if hook is not None:
            hook.remove()
    new = out[:, width:]
    if first_steered > 0 and len(fed) != max(new.shape[1] - 1, 0):
        raise RuntimeError(f"expected {new.shape[1] - 1} decode steps at layer {first_steered - 1}, "
                           f"saw {len(fed)}: the replayed prefill reached the real layer")
    clock.lap("generate_s")
    lengths = [response_length(row, eos_token_ids) for row in new.tolist()]
    perplexities = _generated_perplexity(steering, distinct, new, lengths, fed, first_steered, score_batch_size)
    clock.lap("score_s")
    return out, perplexities


def _generated_perplexity(steering: Any, distinct: DistinctPrompts, new: torch.Tensor, lengths: list[int],
                          fed: list[torch.Tensor], first_steered: int,
                          score_batch_size: Optional[int]) -> list[float]:
    """Perplexity of each row's first ``lengths`` new tokens under the unsteered model, from
    the prompts' unsteered pass and, when layers below the steered ones exist, the states
    the generation fed into layer ``first_steered``."""
    model = steering.model
    owner = distinct.owner
    owner_of, tokens_of = owner.tolist(), new.tolist()  # on the host once, not per row
    token_lp: dict[int, list[float]] = {}
    first_of: dict[tuple, int] = {}
    for row, n in enumerate(lengths):
        if n:
            first_of.setdefault((owner_of[row], tuple(tokens_of[row][:n])), row)
    scored = list(first_of.values())
    if scored:  # log p(r_0 | prompt) from the prompt pass, gathered at once (one device sync)
        index = torch.tensor(scored, device=new.device)
        first = distinct.next_logprobs[owner.index_select(0, index), new.index_select(0, index)[:, 0]]
        token_lp = {row: [value] for row, value in zip(scored, first.double().cpu().tolist())}
    later = [row for row in scored if lengths[row] > 1]
    step = len(later) if score_batch_size is None else max(int(score_batch_size), 1)
    with steering.unsteered():
        for start in range(0, len(later), step):
            chunk = torch.tensor(later[start:start + step], device=new.device)
            width = max(lengths[r] for r in later[start:start + step]) - 1  # tokens fed: r_0..r_{n−2}
            prompt_of = owner.index_select(0, chunk)
            ids = new.index_select(0, chunk)[:, :width]
            resp_mask = (torch.arange(width, device=new.device).unsqueeze(0)
                         < torch.tensor([lengths[r] - 1 for r in chunk.tolist()], device=new.device).unsqueeze(1))
            kwargs = dict(input_ids=ids, use_cache=True, cache=distinct.cache_for(prompt_of),
                          attention_mask=torch.cat([distinct.mask.index_select(0, prompt_of),
                                                    resp_mask.long()], 1),
                          position_ids=distinct.lengths.index_select(0, prompt_of).unsqueeze(1)
                          + torch.arange(width, device=new.device))
            if first_steered > 0:
                hidden = torch.cat(fed[:width], dim=1).index_select(0, chunk)
                logits = forward_from_layer(model, first_steered, hidden, distinct.outputs, **kwargs).logits
            else:
                logits = model(**kwargs).logits
            targets = new.index_select(0, chunk)[:, 1:width + 1]
            lp = token_logprobs(logits, targets).double().cpu()
            for i, row in enumerate(chunk.tolist()):
                token_lp[row].extend(lp[i, :lengths[row] - 1].tolist())
    out = []
    for row, n in enumerate(lengths):
        if not n:
            out.append(float("nan"))
            continue
        values = token_lp[first_of[(owner_of[row], tuple(tokens_of[row][:n]))]]
        out.append(math.exp(-sum(values) / len(values)))
    return out

"""Greedy generation of responses for evaluation, optionally steered per batch row."""

from __future__ import annotations

import math
import time
from typing import Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from ..models import decode_new_tokens, encode_prompts
from .errors import EvaluationError


@torch.no_grad()
def generate_responses(model, tokenizer, prompts: Sequence[str], *, steering=None,
                       rows: "Union[int, Sequence[int], None]" = None, max_new_tokens: int = 64,
                       chat: bool = True, batch_size: Optional[int] = None,
                       progress: bool = False) -> list[str]:
    """Greedy responses to ``prompts`` (the new tokens only, decoded without special tokens).

    Prompts go in left-padded batches of ``batch_size`` (None: one batch). With
    ``steering`` (an attached :class:`pysteer.Steering`) each batch runs through
    ``steering.generate`` so the prompt length and the per-row configurations are set:
    ``rows`` gives one configuration index per prompt (−1: unsteered), an int gives the
    same one to all, and None means configuration 0 for all. Many tuner candidates can
    thus share one batched generation: repeat the prompts once per candidate and give
    each copy its candidate's row.
    """
    prompts, rows, size = _check_generation_args(prompts, rows, steering, max_new_tokens, batch_size)
    if not prompts:
        return []
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    responses: list[str] = []
    starts = range(0, len(prompts), size)
    for start in tqdm(starts, desc="generating", unit="batch", disable=not progress or len(starts) < 2):
        batch = encode_prompts(tokenizer, prompts[start:start + size], chat=chat, device=device)
        kwargs = dict(attention_mask=batch["attention_mask"], max_new_tokens=max_new_tokens,
                      do_sample=False, pad_token_id=pad_id)
        if steering is None:
            out = model.generate(batch["input_ids"], **kwargs)
        else:
            out = steering.generate(batch["input_ids"], rows=rows[start:start + size], **kwargs)
        responses.extend(decode_new_tokens(tokenizer, out, batch["input_ids"].shape[1]))
    return responses


@torch.no_grad()
def generate_with_perplexity(model, tokenizer, prompts: Sequence[str], *, steering,
                             rows: "Union[int, Sequence[int], None]" = None, max_new_tokens: int = 64,
                             chat: bool = True, batch_size: Optional[int] = None,
                             score_batch_size: Optional[int] = None,
                             timings: Optional[dict] = None) -> tuple[list[str], list[float]]:
    """Steered greedy responses (as :func:`generate_responses`) and the perplexity of each
    under the *unsteered* model, sharing the work the two have in common.

    The perplexity of a response r_0..r_{n−1} (its generated tokens before the first end
    of sequence) is exp(−(1/n) Σ_t log p(r_t | prompt, r_<t)) under the unsteered model.
    Three things make it cheap next to the generation (see :mod:`pysteer.patching.shared_prefill`):

    - each distinct prompt runs once, unsteered, through the whole model; its keys/values
      serve the perplexity and its layers below the first steered one L replay the
      generation's prefill;
    - the generation never steers layers 0..L−1, so the states it feeds into layer L for
      the response tokens are the unsteered model's: they are kept, and only layers L..
      run again, from each prompt's cache;
    - a (prompt, response) pair is scored once however many rows produced it.

    Empty responses get NaN. ``score_batch_size`` rows are scored per forward pass (None: all).
    ``timings``, a dict, accumulates the seconds spent in each part: ``prompt_pass_s``,
    ``generate_s`` (the steered prefill above the shared layers, and the decoding) and
    ``score_s``.
    """
    if steering is None:
        raise EvaluationError("generate_with_perplexity needs an attached steering (pysteer.steer(model, spec)); "
                              "without one use generate_responses and response_perplexity")
    prompts, rows, size = _check_generation_args(prompts, rows, steering, max_new_tokens, batch_size)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    responses: list[str] = []
    perplexities: list[float] = []
    for start in range(0, len(prompts), size):
        batch = encode_prompts(tokenizer, prompts[start:start + size], chat=chat, device=device)
        steering.set_rows(rows[start:start + size])
        out, values = generate_ids_with_perplexity(
            steering, batch["input_ids"], batch["attention_mask"], max_new_tokens=max_new_tokens,
            pad_token_id=pad_id, eos_token_ids=_eos_ids(model, tokenizer), score_batch_size=score_batch_size,
            timings=timings)
        responses.extend(decode_new_tokens(tokenizer, out, batch["input_ids"].shape[1]))
        perplexities.extend(values)
    return responses, perplexities


@torch.no_grad()
def generate_ids_with_perplexity(steering, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                                 max_new_tokens: int, pad_token_id: int, eos_token_ids: "set[int]",
                                 score_batch_size: Optional[int] = None,
                                 timings: Optional[dict] = None) -> tuple[torch.Tensor, list[float]]:
    """:func:`generate_with_perplexity` on one left-padded batch of token ids, steered with
    the rows already set on ``steering``: (greedy output ids [B, W + n], perplexity per row
    of its new tokens before the first of ``eos_token_ids``)."""
    from ..patching.families import decoder_layers, layer_hidden
    from ..patching.shared_prefill import generate_with_shared_prefill, run_distinct_prompts

    model = steering.model
    width = int(input_ids.shape[1])
    first_steered = min(steering.spec.layers)
    clock = _Clock(input_ids.device, timings)
    steering.set_prompt_length(width)
    distinct = run_distinct_prompts(steering, input_ids, attention_mask, every_layer=True)
    clock.lap("prompt_pass_s")
    fed: list[torch.Tensor] = []  # layer L's input at each decode step: [B, 1, d]
    hook = None
    if first_steered > 0:
        def keep(module, args, output):
            fed.append(layer_hidden(output).detach())
        hook = decoder_layers(model)[first_steered - 1].register_forward_hook(keep)
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_token_id)
    try:
        out = generate_with_shared_prefill(steering, input_ids, attention_mask, prompts=distinct, **kwargs)
        if out is None:  # steered from layer 0: no prompt layer is shared
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    finally:
        if hook is not None:
            hook.remove()
    new = out[:, width:]
    if first_steered > 0 and len(fed) != max(new.shape[1] - 1, 0):
        raise EvaluationError(f"expected {new.shape[1] - 1} decode steps at layer {first_steered - 1}, "
                              f"saw {len(fed)}: the replayed prefill reached the real layer")
    clock.lap("generate_s")
    lengths = [_response_length(row, eos_token_ids) for row in new.tolist()]
    perplexities = _generated_perplexity(steering, distinct, new, lengths, fed, first_steered, score_batch_size)
    clock.lap("score_s")
    return out, perplexities


class _Clock:
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


def _check_generation_args(prompts, rows, steering, max_new_tokens, batch_size):
    """(prompts as a list, one configuration row per prompt, batch size) or EvaluationError."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if max_new_tokens < 1:
        raise EvaluationError(f"max_new_tokens must be ≥ 1, got {max_new_tokens}")
    if rows is not None and steering is None:
        raise EvaluationError("rows were given but no steering: attach one with pysteer.steer(model, spec)")
    if isinstance(rows, int):
        rows = [rows] * len(prompts)
    elif rows is None:
        rows = [0] * len(prompts)
    rows = [int(r) for r in rows]
    if len(rows) != len(prompts):
        raise EvaluationError(f"rows has {len(rows)} entries for {len(prompts)} prompts (one per prompt)")
    size = max(len(prompts), 1) if batch_size is None else int(batch_size)
    if size < 1:
        raise EvaluationError(f"batch_size must be ≥ 1, got {batch_size}")
    return prompts, rows, size


def _eos_ids(model, tokenizer) -> set[int]:
    """The token ids that end a response: generate's, else the tokenizer's."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    if configured is None:
        configured = tokenizer.eos_token_id
    if configured is None:
        return set()
    return {int(configured)} if isinstance(configured, int) else {int(i) for i in configured}


def _response_length(tokens: list[int], eos: set[int]) -> int:
    """Generated tokens before the first end-of-sequence token."""
    return next((t for t, token in enumerate(tokens) if token in eos), len(tokens))


def _generated_perplexity(steering, distinct, new: torch.Tensor, lengths: list[int], fed: list[torch.Tensor],
                          first_steered: int, score_batch_size: Optional[int]) -> list[float]:
    """Perplexity of each row's first ``lengths`` new tokens under the unsteered model, from
    the prompts' unsteered pass and, when layers below the steered ones exist, the states
    the generation fed into layer ``first_steered`` (:func:`generate_with_perplexity`)."""
    from ..patching.shared_prefill import forward_from_layer
    from .metrics import token_logprobs

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
    saved = (steering.state.rows, steering.state.prompt_length)
    try:
        for start in range(0, len(later), step):
            chunk = torch.tensor(later[start:start + step], device=new.device)
            width = max(lengths[r] for r in later[start:start + step]) - 1  # tokens fed: r_0..r_{n−2}
            prompt_of = owner.index_select(0, chunk)
            ids = new.index_select(0, chunk)[:, :width]
            resp_mask = (torch.arange(width, device=new.device).unsqueeze(0)
                         < torch.tensor([lengths[r] - 1 for r in chunk.tolist()], device=new.device).unsqueeze(1))
            kwargs = dict(input_ids=ids, use_cache=True, past_key_values=distinct.cache_for(prompt_of),
                          attention_mask=torch.cat([distinct.mask.index_select(0, prompt_of),
                                                    resp_mask.long()], 1),
                          position_ids=distinct.lengths.index_select(0, prompt_of).unsqueeze(1)
                          + torch.arange(width, device=new.device))
            steering.set_rows([-1] * chunk.numel())
            steering.set_prompt_length(0)
            if first_steered > 0:
                hidden = torch.cat(fed[:width], dim=1).index_select(0, chunk)
                logits = forward_from_layer(model, first_steered, hidden, distinct.outputs, **kwargs).logits
            else:
                logits = model(**kwargs).logits
            targets = new.index_select(0, chunk)[:, 1:width + 1]
            lp = token_logprobs(logits, targets).double().cpu()
            for i, row in enumerate(chunk.tolist()):
                token_lp[row].extend(lp[i, :lengths[row] - 1].tolist())
    finally:
        steering.state.rows, steering.state.prompt_length = saved
    out = []
    for row, n in enumerate(lengths):
        if not n:
            out.append(float("nan"))
            continue
        values = token_lp[first_of[(owner_of[row], tuple(tokens_of[row][:n]))]]
        out.append(math.exp(-sum(values) / len(values)))
    return out

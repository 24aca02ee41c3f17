"""Greedy generation of text responses for evaluation: prompts in, decoded responses out.

The steered execution itself — rows, prompt lengths, many configurations in one batch on
one distinct-prompt prefill, scoring under the unsteered model — is
:class:`pysteer.Steering`'s (:meth:`~pysteer.Steering.generate` and
:meth:`~pysteer.Steering.generate_configs`); these functions tokenize, batch and decode.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from ..models import decode_new_tokens, encode_prompts
from ..patching.attach import generation_eos_ids
from ..patching.scored_generation import generate_and_score, response_length
from .errors import EvaluationError

# The token-level engine, under the name evaluation has always exported.
generate_ids_with_perplexity = generate_and_score


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
    same one to all, and None means configuration 0 for all. To answer the same prompts
    under several configurations, use :func:`generate_for_configs`.
    """
    prompts, rows, size = _check_generation_args(prompts, rows, steering, max_new_tokens, batch_size)
    if not prompts:
        return []
    device = next(model.parameters()).device
    responses: list[str] = []
    starts = range(0, len(prompts), size)
    for start in tqdm(starts, desc="generating", unit="batch", disable=not progress or len(starts) < 2):
        batch = encode_prompts(tokenizer, prompts[start:start + size], chat=chat, device=device)
        kwargs = dict(attention_mask=batch["attention_mask"], max_new_tokens=max_new_tokens,
                      do_sample=False, pad_token_id=_pad_id(tokenizer))
        if steering is None:
            out = model.generate(batch["input_ids"], **kwargs)
        else:
            out = steering.generate(batch["input_ids"], rows=rows[start:start + size], **kwargs)
        responses.extend(decode_new_tokens(tokenizer, out, batch["input_ids"].shape[1]))
    return responses


@torch.no_grad()
def generate_for_configs(model, tokenizer, prompts: Sequence[str], *, steering, configs: Sequence[int],
                         score: bool = False, max_new_tokens: int = 64, chat: bool = True,
                         batch_size: Optional[int] = None, score_batch_size: Optional[int] = None,
                         timings: Optional[dict] = None, return_ids: bool = False):
    """Every configuration in ``configs`` (−1: unsteered) answers every prompt, in one
    batched generation per ``batch_size`` prompts (:meth:`pysteer.Steering.generate_configs`):
    (responses[i][p], perplexities[i][p] under the unsteered model when ``score``, else None).
    With ``return_ids`` a third item comes too: ids[i][p], the response's new token ids
    before the first end of sequence (the tokens the perplexity is of).
    """
    if steering is None:
        raise EvaluationError("generate_for_configs needs an attached steering (pysteer.steer(model, spec))")
    prompts, _, size = _check_generation_args(prompts, None, steering, max_new_tokens, batch_size)
    configs = [int(c) for c in configs]
    if not configs:
        raise EvaluationError("configs is empty: name at least one configuration row (−1: unsteered)")
    device = next(model.parameters()).device
    responses: list[list[str]] = [[] for _ in configs]
    perplexities: Optional[list[list[float]]] = [[] for _ in configs] if score else None
    ids: list[list[tuple[int, ...]]] = [[] for _ in configs]
    eos = generation_eos_ids(model, tokenizer)
    for start in range(0, len(prompts), size):
        batch = encode_prompts(tokenizer, prompts[start:start + size], chat=chat, device=device)
        out = steering.generate_configs(batch["input_ids"], batch["attention_mask"], configs,
                                        max_new_tokens=max_new_tokens, pad_token_id=_pad_id(tokenizer),
                                        score=score, eos_token_ids=eos,
                                        score_batch_size=score_batch_size, timings=timings)
        width = batch["input_ids"].shape[1]
        for i in range(len(configs)):
            responses[i].extend(decode_new_tokens(tokenizer, out.tokens[i], width))
            if score:
                perplexities[i].extend(out.perplexities[i])
            if return_ids:
                ids[i].extend(_response_ids(out.tokens[i], width, eos))
    return (responses, perplexities, ids) if return_ids else (responses, perplexities)


@torch.no_grad()
def generate_with_perplexity(model, tokenizer, prompts: Sequence[str], *, steering,
                             rows: "Union[int, Sequence[int], None]" = None, max_new_tokens: int = 64,
                             chat: bool = True, batch_size: Optional[int] = None,
                             score_batch_size: Optional[int] = None,
                             timings: Optional[dict] = None, return_ids: bool = False):
    """Steered greedy responses (as :func:`generate_responses`, one row per prompt) and the
    perplexity of each under the *unsteered* model, sharing the work the two have in common
    (:mod:`pysteer.patching.scored_generation`). Empty responses get NaN.
    ``score_batch_size`` rows are scored per forward pass (None: all); ``timings``, a dict,
    accumulates the seconds of ``prompt_pass_s``, ``generate_s`` and ``score_s``. With
    ``return_ids`` a third item comes too: each response's new token ids before the first
    end of sequence.
    """
    if steering is None:
        raise EvaluationError("generate_with_perplexity needs an attached steering (pysteer.steer(model, spec)); "
                              "without one use generate_responses and response_perplexity")
    prompts, rows, size = _check_generation_args(prompts, rows, steering, max_new_tokens, batch_size)
    device = next(model.parameters()).device
    responses: list[str] = []
    perplexities: list[float] = []
    ids: list[tuple[int, ...]] = []
    eos = generation_eos_ids(model, tokenizer)
    for start in range(0, len(prompts), size):
        batch = encode_prompts(tokenizer, prompts[start:start + size], chat=chat, device=device)
        steering.set_rows(rows[start:start + size])
        out, values = generate_and_score(
            steering, batch["input_ids"], batch["attention_mask"], max_new_tokens=max_new_tokens,
            pad_token_id=_pad_id(tokenizer), eos_token_ids=eos,
            score_batch_size=score_batch_size, timings=timings)
        responses.extend(decode_new_tokens(tokenizer, out, batch["input_ids"].shape[1]))
        perplexities.extend(values)
        if return_ids:
            ids.extend(_response_ids(out, batch["input_ids"].shape[1], eos))
    return (responses, perplexities, ids) if return_ids else (responses, perplexities)


def _response_ids(output_ids: torch.Tensor, width: int, eos: "set[int]") -> list[tuple[int, ...]]:
    """Each row's new tokens [B, W + n] → its response ids before the first end of sequence."""
    return [tuple(row[:response_length(row, eos)]) for row in output_ids[:, width:].tolist()]


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


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

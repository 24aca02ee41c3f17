"""Greedy generation of responses for evaluation, optionally steered per batch row."""

from __future__ import annotations

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
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        return []
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
    size = len(prompts) if batch_size is None else int(batch_size)
    if size < 1:
        raise EvaluationError(f"batch_size must be ≥ 1, got {batch_size}")
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

"""Residual-stream collection and streaming SAE feature statistics.

Two pieces, both with a bounded memory footprint:

- :func:`iter_activations` / :func:`collect_activations`: run prompts through the
  model in batches and keep the residual stream *after* decoder layer ℓ (the output of
  ``decoder_layers(model)[ℓ]``, what an SAE on ``blocks.ℓ.hook_resid_post`` reads) at
  chosen positions: ``"last"`` (last prompt token of each left-padded row), ``"keyword"``
  (the last token of a keyword appended to each prompt) or ``"all"`` (every non-pad
  token). Only the chosen positions are kept — [tokens, D] per layer, never the
  whole [batch, seq, D] stack — and the forward pass stops after the deepest layer.

- :class:`FeatureStats`: streams token chunks through an SAE and accumulates, per
  group (``"with"``/``"without"``, ``"follow"``/``"violate"``, ...), per feature i::

      n_g            tokens seen in group g
      sum[g, i]    = Σ_t f_i(x_t)                    mean[g, i] = sum[g, i] / n_g
      fires[g, i]  = Σ_t 1[f_i(x_t) > threshold]     fire_rate[g, i] = fires / n_g
      max[g, i]    = max_t f_i(x_t)

  and, for aligned pairs (a_p, b_p), with Δ_i^p = f_i(a_p) − f_i(b_p)::

      pos[i] = Σ_p 1[Δ_i^p > τ],  neg[i] = Σ_p 1[Δ_i^p < −τ],  delta_sum[i] = Σ_p Δ_i^p

  The tokens × d_sae activation matrix is never formed: the SAE's architecture
  (:meth:`pysteer.sae.Architecture.feature_blocks`) yields activations in blocks of about
  ``token_chunk`` × ``feature_chunk`` — feature blocks where each feature depends on its
  own pre-activation alone (standard, JumpReLU), whole rows of fewer tokens where all
  features compete (TopK, through the fused :func:`pysteer.ops.encode_topk`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..sae import SAE, load_sae
from ..patching import decoder_layers
from ..patching.capture import residuals_after
from ..models import encode_prompts

POSITIONS = ("last", "keyword", "all")

__all__ = ["POSITIONS", "ActivationBatch", "iter_activations", "collect_activations",
           "FeatureStats", "format_prompts", "keyword_positions"]


def format_prompts(tokenizer, prompts: Sequence[str], chat: bool = True) -> list[str]:
    """The exact texts fed to the model: the chat template with the generation prompt, or raw."""
    if chat and getattr(tokenizer, "chat_template", None):
        return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                              add_generation_prompt=True) for p in prompts]
    return list(prompts)


def keyword_positions(tokenizer, texts: Sequence[str], keyword: str, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor, chat: bool) -> torch.Tensor:
    """Index (in the left-padded batch) of the token that ends the last ``keyword`` in each text.

    Found through the tokenizer's character offsets, so it works with or without a chat
    template after the keyword.
    """
    positions = []
    for row, text in enumerate(texts):
        end = text.rfind(keyword)
        if end < 0:
            raise ValueError(f"keyword {keyword!r} does not occur in prompt {row}: {text[:80]!r}")
        end += len(keyword)
        enc = tokenizer(text, add_special_tokens=not chat, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        hits = [i for i, (a, b) in enumerate(offsets) if a < end <= b or (b == end and b > a)]
        if not hits:
            raise ValueError(f"could not locate the keyword {keyword!r} among the tokens of prompt {row}")
        n_real = int(attention_mask[row].sum())
        if len(offsets) != n_real:
            raise RuntimeError(f"prompt {row}: re-tokenising gave {len(offsets)} tokens, the batch "
                               f"has {n_real}")
        positions.append(input_ids.shape[1] - n_real + hits[-1])  # left padding
    return torch.tensor(positions, dtype=torch.long)


@dataclass
class ActivationBatch:
    """One batch of captured residuals: ``hidden[layer]`` [t, D] and ``example`` [t] (prompt index)."""

    hidden: dict[int, torch.Tensor]
    example: torch.Tensor


def iter_activations(model: nn.Module, tokenizer, prompts: Sequence[str], layers: Sequence[int],
                     position: str = "last", *, keyword: Optional[str] = None, chat: bool = True,
                     batch_size: int = 8, progress: bool = True,
                     desc: str = "collecting") -> Iterator[ActivationBatch]:
    """Yield the residual after each layer in ``layers`` at ``position``, one batch at a time.

    ``position``: ``"last"`` → one row per prompt (the last prompt token; with ``chat`` that
    is the end of the generation prompt, Stolfo et al.'s read-out), ``"keyword"`` → one row
    per prompt at the last token of ``keyword`` (appended as ``prompt + "\\n" + keyword``
    unless the prompt already ends with it), ``"all"`` → every non-pad token.
    Hidden states come back as fp32 on the model's device.
    """
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {', '.join(POSITIONS)}, got {position!r}")
    if position == "keyword" and not keyword:
        raise ValueError("position='keyword' needs keyword=")
    if isinstance(prompts, str):
        prompts = [prompts]
    layers = [int(layer) for layer in layers]
    if not layers:
        raise ValueError("give at least one layer")
    n_layers = len(decoder_layers(model))
    layers = [layer % n_layers if layer < 0 else layer for layer in layers]
    device = next(model.parameters()).device
    if position == "keyword":
        prompts = [p if p.rstrip().endswith(keyword) else f"{p}\n{keyword}" for p in prompts]
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, unit="batch"):
        chunk = list(prompts[start:start + batch_size])
        batch = encode_prompts(tokenizer, chunk, chat=chat, device=device)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        store = residuals_after(model, ids, mask, layers)
        rows = torch.arange(len(chunk), device=device)
        if position == "last":
            index = (rows, torch.full_like(rows, ids.shape[1] - 1))
            example = rows.cpu() + start
        elif position == "keyword":
            texts = format_prompts(tokenizer, chunk, chat)
            cols = keyword_positions(tokenizer, texts, keyword, ids.cpu(), mask.cpu(), chat).to(device)
            index = (rows, cols)
            example = rows.cpu() + start
        else:
            index = torch.nonzero(mask.bool(), as_tuple=True)
            example = index[0].cpu() + start
        yield ActivationBatch({layer: store[layer][index].float() for layer in layers}, example)


def collect_activations(model: nn.Module, tokenizer, prompts: Sequence[str], layers: Sequence[int],
                        position: str = "last", **kwargs) -> dict[int, torch.Tensor]:
    """All of :func:`iter_activations` concatenated: ``{layer: [rows, D]}`` fp32 on CPU."""
    parts: dict[int, list] = {}
    for batch in iter_activations(model, tokenizer, prompts, layers, position, **kwargs):
        for layer, hidden in batch.hidden.items():
            parts.setdefault(layer, []).append(hidden.cpu())
    return {layer: torch.cat(chunks) for layer, chunks in parts.items()}


# --------------------------------------------------------------- feature statistics
class FeatureStats:
    """Per-group, per-feature SAE statistics accumulated chunk by chunk (see module doc).

    ``update(hidden [T, D], group)`` adds tokens to a group; ``update_pairs(a [P, D],
    b [P, D])`` adds aligned pairs. Working memory is about ``token_chunk × feature_chunk``
    floats (a few of them); the state is O(groups × d_sae).
    """

    def __init__(self, sae: "SAE | str", groups: Sequence[str] = ("with", "without"), *,
                 threshold: float = 0.0, tau: float = 0.0, token_chunk: int = 2048,
                 feature_chunk: int = 4096, device: "torch.device | str | None" = None) -> None:
        sae = load_sae(sae)
        self.device = torch.device(device) if device is not None else sae.device
        self.sae = sae.to(device=self.device) if sae.device != self.device else sae
        if not groups or len(set(groups)) != len(groups):
            raise ValueError(f"groups must be distinct names, got {list(groups)}")
        if token_chunk < 1 or feature_chunk < 1:
            raise ValueError("token_chunk and feature_chunk must be positive")
        self.groups = list(groups)
        self.threshold, self.tau = float(threshold), float(tau)
        self.token_chunk, self.feature_chunk = int(token_chunk), int(feature_chunk)
        G, F = len(self.groups), sae.d_sae
        zeros = lambda: torch.zeros(G, F, dtype=torch.float64, device=self.device)  # noqa: E731
        self.count = torch.zeros(G, dtype=torch.long)
        self.sum, self.fires = zeros(), zeros()
        self.max = torch.full((G, F), float("-inf"), dtype=torch.float32, device=self.device)
        self.n_pairs = 0
        self.pos = torch.zeros(F, dtype=torch.float64, device=self.device)
        self.neg, self.delta_sum = torch.zeros_like(self.pos), torch.zeros_like(self.pos)

    @property
    def d_sae(self) -> int:
        return self.sae.d_sae

    def _blocks(self, x: torch.Tensor) -> Iterator[tuple[int, int, torch.Tensor]]:
        return self.sae.arch.feature_blocks(self.sae, x, self.feature_chunk)

    def _token_step(self) -> int:
        return self.sae.arch.block_tokens(self.sae, self.token_chunk, self.feature_chunk)

    # ------------------------------------------------------------------ updates
    def _group(self, group: "str | int") -> int:
        if isinstance(group, int):
            return group
        if group not in self.groups:
            raise KeyError(f"unknown group {group!r}; this FeatureStats has {self.groups}")
        return self.groups.index(group)

    def update(self, hidden: torch.Tensor, group: "str | int") -> None:
        """Add the tokens ``hidden`` [T, D] (residuals at the SAE's hook) to ``group``."""
        if hidden.ndim != 2 or hidden.shape[1] != self.sae.d_in:
            raise ValueError(f"hidden must be [tokens, {self.sae.d_in}], got {tuple(hidden.shape)}")
        g = self._group(group)
        step = self._token_step()
        with torch.no_grad():
            for t0 in range(0, hidden.shape[0], step):
                x = hidden[t0:t0 + step].to(self.device)
                self.count[g] += x.shape[0]
                for f0, f1, acts in self._blocks(x):
                    # fp32 within a block, fp64 across blocks: no fp64 copy of the block
                    self.sum[g, f0:f1] += acts.sum(0)
                    # int32 sum: a plain bool sum would widen the block to int64
                    self.fires[g, f0:f1] += (acts > self.threshold).sum(0, dtype=torch.int32)
                    self.max[g, f0:f1] = torch.maximum(self.max[g, f0:f1], acts.amax(0))

    def update_pairs(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Add aligned pairs: Δ_i^p = f_i(a_p) − f_i(b_p), counted against ±τ."""
        if a.shape != b.shape or a.ndim != 2 or a.shape[1] != self.sae.d_in:
            raise ValueError(f"pairs must be two [P, {self.sae.d_in}] tensors, got "
                             f"{tuple(a.shape)} and {tuple(b.shape)}")
        step = self._token_step()
        with torch.no_grad():
            for p0 in range(0, a.shape[0], step):
                xa, xb = a[p0:p0 + step].to(self.device), b[p0:p0 + step].to(self.device)
                self.n_pairs += xa.shape[0]
                blocks = ((f0, f1, fa.sub_(fb)) for (f0, f1, fa), (_, _, fb)
                          in zip(self._blocks(xa), self._blocks(xb)))
                for f0, f1, delta in blocks:
                    self.pos[f0:f1] += (delta > self.tau).sum(0, dtype=torch.int32)
                    self.neg[f0:f1] += (delta < -self.tau).sum(0, dtype=torch.int32)
                    self.delta_sum[f0:f1] += delta.sum(0)

    # ------------------------------------------------------------------ results
    def _n(self, g: int) -> float:
        n = int(self.count[g])
        if n == 0:
            raise ValueError(f"group {self.groups[g]!r} has seen no tokens")
        return float(n)

    def mean(self, group: "str | int") -> torch.Tensor:
        """mean[g] [F] fp32: average activation of each feature over the group's tokens."""
        g = self._group(group)
        return (self.sum[g] / self._n(g)).float().cpu()

    def fire_rate(self, group: "str | int") -> torch.Tensor:
        """Fraction of the group's tokens on which each feature exceeds ``threshold`` [F]."""
        g = self._group(group)
        return (self.fires[g] / self._n(g)).float().cpu()

    def maximum(self, group: "str | int") -> torch.Tensor:
        g = self._group(group)
        self._n(g)
        return self.max[g].cpu()

    def consistency(self) -> torch.Tensor:
        """s_i = (pos_i − neg_i) / P: the thresholded per-pair consistency score [F]."""
        if self.n_pairs == 0:
            raise ValueError("no pairs were added (update_pairs)")
        return ((self.pos - self.neg) / self.n_pairs).float().cpu()

    def mean_delta(self) -> torch.Tensor:
        if self.n_pairs == 0:
            raise ValueError("no pairs were added (update_pairs)")
        return (self.delta_sum / self.n_pairs).float().cpu()

    def state_nbytes(self) -> int:
        """Bytes of accumulated state (independent of the number of tokens)."""
        tensors = (self.sum, self.fires, self.max, self.pos, self.neg, self.delta_sum)
        return sum(t.numel() * t.element_size() for t in tensors)

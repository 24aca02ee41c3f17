"""Streaming residual activations into a fixed-size shuffling buffer.

An *activation source* yields chunks ``{layer: [t_j, D]}`` (chunk ``j`` is always the
same rows, so a stream can restart at any chunk): :class:`ModelActivationSource` runs
groups of documents through the model and keeps the residual stream after each
requested decoder layer (the output of ``decoder_layers(model)[ℓ]``, what an SAE on
``blocks.ℓ.hook_resid_post`` reads) at every non-pad token, optionally without each
document's first token (BOS / attention sink: its norm is tens of times the others').
One forward pass serves every layer and stops after the deepest one.

:class:`ShuffleBuffer` fills ``capacity`` rows per layer from the source, permutes
them with a generator seeded by ``(seed, fill)``, serves ``capacity // batch_size``
batches and refills. Its whole position is ``(chunk, offset)`` at the start of the
current fill plus the fill and batch numbers, so a checkpoint stores four integers and
a resumed run rebuilds the same fill and the same batches. Memory: the buffer
(``capacity × D`` per layer) plus the unused tail of one chunk — never the corpus.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Protocol, Sequence

import torch
from torch import nn

from ..patching import decoder_layers
from ..patching.capture import residuals_after
from .errors import TrainingError

__all__ = ["ActivationSource", "ModelActivationSource", "SyntheticSource", "ShuffleBuffer",
           "BufferState", "collect_tokens"]


class ActivationSource(Protocol):
    layers: list[int]
    d_in: int

    def chunks(self, start: int = 0) -> Iterator[dict[int, torch.Tensor]]:
        """Chunks ``start``, ``start + 1``, …: ``{layer: [t, D]}`` fp32, the same rows every time."""


# ------------------------------------------------------------------ model residuals

class ModelActivationSource:
    """Residuals of ``model`` after ``layers`` on the documents of ``corpus`` (one split).

    Chunk ``j`` is documents ``[j·docs_per_chunk, (j+1)·docs_per_chunk)`` of the split,
    tokenized (≤ ``max_tokens`` each), right-padded (so positions start at 0 in every
    row without position ids) and run in one forward pass; its rows are every non-pad
    token in document order, minus each document's first token when ``skip_first``.
    ``cycle`` wraps around the corpus forever (training); without it the stream ends.
    """

    def __init__(self, model: nn.Module, tokenizer, corpus, layers: Sequence[int], *,
                 split: str = "train", docs_per_chunk: int = 16, max_tokens: int = 256,
                 skip_first: bool = True, cycle: bool = True,
                 device: "torch.device | str | None" = None):
        n_layers = len(decoder_layers(model))
        self.layers = sorted({int(layer) for layer in layers})
        if not self.layers:
            raise ValueError("give at least one layer")
        for layer in self.layers:
            if not 0 <= layer < n_layers:
                raise IndexError(f"layer {layer} is out of range: the model has {n_layers} decoder layers")
        from ..patching import model_facts
        self.d_in = model_facts(model)["hidden_size"]
        self.model, self.tokenizer, self.corpus = model, tokenizer, corpus
        self.split, self.docs_per_chunk, self.max_tokens = split, docs_per_chunk, max_tokens
        self.skip_first, self.cycle = skip_first, cycle
        self.device = device if device is not None else next(model.parameters()).device

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ``input_ids`` and ``attention_mask`` [n, L] for ``texts``."""
        rows = self.tokenizer(list(texts), add_special_tokens=self.corpus.add_special_tokens,
                              truncation=True, max_length=self.max_tokens)["input_ids"]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, :len(row)] = 1
        return ids, mask

    def token_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Which positions become rows: non-pad, and not position 0 when ``skip_first``."""
        keep = mask.bool().clone()
        if self.skip_first:
            keep[:, 0] = False
        return keep

    @torch.no_grad()
    def forward(self, texts: Sequence[str]) -> dict[int, torch.Tensor]:
        ids, mask = self.encode(texts)
        ids, mask = ids.to(self.device), mask.to(self.device)
        store = residuals_after(self.model, ids, mask, self.layers)
        keep = self.token_mask(mask)
        return {layer: store[layer][keep].float() for layer in self.layers}

    def chunks(self, start: int = 0) -> Iterator[dict[int, torch.Tensor]]:
        texts = self.corpus.texts(self.split, start=start * self.docs_per_chunk, cycle=self.cycle)
        while True:
            group = [t for _, t in zip(range(self.docs_per_chunk), texts)]
            if not group:
                return
            yield self.forward(group)
            if len(group) < self.docs_per_chunk:
                return


# ----------------------------------------------------------------- synthetic source
class SyntheticSource:
    """``x = codes @ dictionary + noise``: a known sparse dictionary, for tests and benchmarks.

    ``dictionary`` [F_true, D] has unit rows; each token activates ``k_true`` atoms
    chosen uniformly, with magnitudes ``|N(0, 1)| + 0.5``; ``noise`` is the std of
    Gaussian noise. Chunk ``j`` is drawn from a generator seeded by ``(seed, j)``.
    """

    def __init__(self, d_in: int, n_atoms: int, k_true: int, *, chunk_tokens: int = 512,
                 noise: float = 0.01, seed: int = 0, layers: Sequence[int] = (0,),
                 offset: float = 1.0, dictionary_seed: int = 1234):
        gen = torch.Generator().manual_seed(dictionary_seed)
        dictionary = torch.randn(n_atoms, d_in, generator=gen)
        self.dictionary = dictionary / dictionary.norm(dim=-1, keepdim=True)
        self.mean = offset * torch.randn(d_in, generator=gen) / d_in ** 0.5
        self.layers, self.d_in = list(layers), d_in
        self.k_true, self.chunk_tokens, self.noise, self.seed = k_true, chunk_tokens, noise, seed

    def chunk(self, j: int) -> dict[int, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + j)
        n, f = self.chunk_tokens, self.dictionary.shape[0]
        index = torch.rand(n, f, generator=gen).argsort(dim=-1)[:, :self.k_true]
        values = torch.randn(n, self.k_true, generator=gen).abs() + 0.5
        codes = torch.zeros(n, f).scatter_(1, index, values)
        x = codes @ self.dictionary + self.mean + self.noise * torch.randn(n, self.d_in, generator=gen)
        return {layer: x for layer in self.layers}

    def chunks(self, start: int = 0) -> Iterator[dict[int, torch.Tensor]]:
        j = start
        while True:
            yield self.chunk(j)
            j += 1


# ------------------------------------------------------------------ shuffling buffer
@dataclass
class BufferState:
    """Where the stream stands: the fill in progress started at ``(chunk, offset)``."""

    chunk: int = 0
    offset: int = 0
    fill: int = 0
    batch: int = 0  # batches of this fill already served

    def to_dict(self) -> dict:
        return dict(chunk=self.chunk, offset=self.offset, fill=self.fill, batch=self.batch)


class ShuffleBuffer:
    """``capacity`` rows per layer, shuffled per fill, served as ``batch_size`` batches.

    ``next_batch()`` → ``{layer: [batch_size, D]}``; ``state`` is what a checkpoint
    stores to resume at the next batch (see the module docstring). ``peak_rows`` records
    the most activation rows per layer ever held (buffer + pending chunk tail).
    """

    def __init__(self, source: ActivationSource, capacity: int, batch_size: int, seed: int = 0,
                 state: Optional[BufferState] = None, device: "torch.device | str" = "cpu"):
        if batch_size <= 0 or capacity < batch_size:
            raise ValueError(f"the buffer capacity ({capacity}) must be at least one batch ({batch_size})")
        self.source, self.batch_size, self.seed, self.device = source, batch_size, seed, device
        self.capacity = capacity - capacity % batch_size  # whole batches only
        self.state = BufferState(**(state.to_dict() if state else {}))
        self.data: Optional[dict[int, torch.Tensor]] = None
        self.perm: Optional[torch.Tensor] = None
        self._chunks: Optional[Iterator] = None
        self._pending: Optional[dict[int, torch.Tensor]] = None
        self._pending_at = (self.state.chunk, self.state.offset)  # stream position of _pending[0]
        self.peak_rows = 0
        self.chunks_read = 0

    @property
    def batches_per_fill(self) -> int:
        return self.capacity // self.batch_size

    def _next_chunk(self) -> Optional[dict[int, torch.Tensor]]:
        if self._chunks is None:
            self._chunks = self.source.chunks(self.state.chunk)
        chunk = next(self._chunks, None)
        self.chunks_read += chunk is not None
        return chunk

    def _fill(self) -> None:
        """Fill from the stream position in ``state`` (``state.batch`` is kept: resume skips)."""
        chunk_index, offset = self.state.chunk, self.state.offset
        if self._pending is None:  # fresh or resumed: recompute the chunk the fill starts in
            self._pending = self._next_chunk()
            if self._pending is None:
                raise TrainingError("the activation source is empty")
            self._pending = {layer: rows[offset:] for layer, rows in self._pending.items()}
        if self.data is None:
            d_in = next(iter(self._pending.values())).shape[1]
            self.data = {layer: torch.empty(self.capacity, d_in, device=self.device)
                         for layer in self._pending}
        filled = 0
        while filled < self.capacity:
            if self._pending is None:
                self._pending = self._next_chunk()
                if self._pending is None:
                    raise TrainingError(f"the activation source ran out after {filled} of "
                                     f"{self.capacity} rows of a buffer fill; use a cycling source "
                                     f"or a smaller buffer")
                chunk_index, offset = chunk_index + 1, 0
            n = next(iter(self._pending.values())).shape[0]
            take = min(n, self.capacity - filled)
            for layer, rows in self._pending.items():
                self.data[layer][filled:filled + take] = rows[:take]
            self.peak_rows = max(self.peak_rows, self.capacity + n)
            filled += take
            if take == n:
                self._pending = None
            else:
                self._pending = {layer: rows[take:] for layer, rows in self._pending.items()}
                offset += take
        if self._pending is None:  # the fill ended exactly at a chunk boundary
            chunk_index, offset = chunk_index + 1, 0
        self._next_start = (chunk_index, offset if self._pending is not None else 0)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.state.fill)
        self.perm = torch.randperm(self.capacity, generator=gen).to(self.device)

    def next_batch(self) -> dict[int, torch.Tensor]:
        if self.perm is None:
            self._fill()
        if self.state.batch >= self.batches_per_fill:  # (a checkpoint may sit at a fill's end)
            chunk, offset = self._next_start
            self.state = BufferState(chunk, offset, self.state.fill + 1, 0)
            self._fill()
        rows = self.perm[self.state.batch * self.batch_size:(self.state.batch + 1) * self.batch_size]
        self.state.batch += 1
        return {layer: data[rows] for layer, data in self.data.items()}

    def ensure_filled(self) -> dict[int, torch.Tensor]:
        """The current fill's rows (filled now if needed), e.g. to estimate statistics."""
        if self.perm is None:
            self._fill()
        return self.data


def collect_tokens(source: ActivationSource, n_tokens: int, progress: bool = False,
                   desc: str = "held-out activations") -> dict[int, torch.Tensor]:
    """The first ``n_tokens`` rows per layer of a (finite or cycling) source, on CPU."""
    from tqdm.auto import tqdm

    parts: dict[int, list] = {layer: [] for layer in source.layers}
    total = 0
    with tqdm(total=n_tokens, unit="tok", desc=desc, disable=not progress) as bar:
        for chunk in source.chunks(0):
            take = min(n_tokens - total, next(iter(chunk.values())).shape[0])
            for layer, rows in chunk.items():
                parts[layer].append(rows[:take].cpu())
            total += take
            bar.update(take)
            if total >= n_tokens:
                break
    if total == 0:
        raise TrainingError("the evaluation source yielded no tokens")
    return {layer: torch.cat(rows) for layer, rows in parts.items()}

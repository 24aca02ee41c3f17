"""Concise-SAE: bidirectional SAE features from self-written contrastive pairs (arXiv 2505.16505).

1. The model writes its own pairs: for topic p, a text that follows the instruction
   (``FOLLOW_TEMPLATE``) and one that ignores it (``VIOLATE_TEMPLATE``).
2. A keyword summarising the instruction (e.g. ``"Lowercase"``) is appended to each
   text; the SAE latents f_i [F] are read at the keyword's last token, whose residual
   pools the whole text through attention (which suppresses token-level noise).
3. Per pair p and latent i, Δ_i^p = f_i(follow_p) − f_i(violate_p), and the thresholded
   consistency score over P pairs is::

       s_i = (1/P) Σ_p 1[Δ_i^p > τ] − (1/P) Σ_p 1[Δ_i^p < −τ]        ∈ [−1, 1]

4. The top ``k`` (15) latents by s_i are *supportive*, the bottom ``k`` *opposing*
   (ties broken by the mean Δ). The result is a :class:`SparseIntervention` with 2k
   ``add`` edits and an initial coefficient row (+c supportive, −c opposing), ready for
   the tuner, plus per-latent statistics (mean/max activation on follow and violate
   texts) for the tuner's bounds, saved as ``discovery.json`` next to the spec.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..models import decode_new_tokens, encode_prompts
from ..sae import SAE, load_sae
from ..spec import SparseIntervention, SteeringSpec
from .collect import FeatureStats, iter_activations
from .diff_in_means import _facts
from .prompts import FOLLOW_TEMPLATE, TOPICS, VARIANTS, VIOLATE_TEMPLATE, sample
from .saif import DISCOVERY_JSON, _rank

__all__ = ["ConciseResult", "concise", "write_pairs", "default_keyword"]


def default_keyword(instruction: str) -> str:
    """``"Lowercase"`` for the built-in instruction name ``"lowercase"``; otherwise ask."""
    name = instruction.strip().lower()
    if name in VARIANTS:
        return name.capitalize()
    raise ValueError(f"give a keyword that summarises the instruction {instruction!r} "
                     f"(e.g. keyword='Lowercase')")


def _instruction_text(instruction: str) -> str:
    name = instruction.strip().lower()
    return VARIANTS[name][0] if name in VARIANTS else instruction.strip()


def write_pairs(model: nn.Module, tokenizer, instruction: str, topics: Optional[Sequence[str]] = None,
                n_pairs: int = 16, *, max_new_tokens: int = 48, batch_size: int = 8,
                do_sample: bool = False, seed: int = 0, progress: bool = True) -> list[tuple[str, str]]:
    """The model's own (follow, violate) texts for ``n_pairs`` topics (unsteered ``generate``)."""
    text = _instruction_text(instruction)
    chosen = sample(topics or TOPICS, n_pairs, seed)
    requests = [t.format(topic=topic, instruction=text) for topic in chosen
                for t in (FOLLOW_TEMPLATE, VIOLATE_TEMPLATE)]
    device = next(model.parameters()).device
    outputs: list[str] = []
    torch.manual_seed(seed)
    for start in tqdm(range(0, len(requests), batch_size), desc="writing pairs", unit="batch",
                      disable=not progress):
        batch = encode_prompts(tokenizer, requests[start:start + batch_size], device=device)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                 pad_token_id=tokenizer.pad_token_id)
        outputs += [o.strip() for o in decode_new_tokens(tokenizer, out, batch["input_ids"].shape[1])]
    return list(zip(outputs[0::2], outputs[1::2]))


@dataclass
class ConciseResult:
    """Supportive + opposing latents, their initial coefficients, and the ranking statistics."""

    supportive: list[int]
    opposing: list[int]
    coefficient: float
    consistency: torch.Tensor  # s_i [F]
    mean_delta: torch.Tensor  # [F]
    stats: FeatureStats  # groups "follow", "violate"
    sae: SAE
    layer: int
    instruction: str
    keyword: str
    pairs: list[tuple[str, str]]
    tau: float
    model: dict[str, Any] = field(default_factory=dict)

    @property
    def features(self) -> list[int]:
        return self.supportive + self.opposing

    @property
    def initial_coefficients(self) -> torch.Tensor:
        """[1, 2k]: +c for supportive latents, −c for opposing ones."""
        c = self.coefficient
        return torch.tensor([[c] * len(self.supportive) + [-c] * len(self.opposing)])

    def spec(self, coefficients: Any = None, positions: str = "all") -> SteeringSpec:
        """2k ``add`` edits; ``coefficients`` [C, 2k] overrides the initial row."""
        table = self.initial_coefficients if coefficients is None else coefficients
        iv = SparseIntervention.from_sae(self.sae, self.features, table, "add", layer=self.layer)
        meta = {"method": "concise_sae", "instruction": self.instruction, "keyword": self.keyword,
                "layer": self.layer, "n_supportive": len(self.supportive),
                "n_opposing": len(self.opposing), "tau": self.tau, "n_pairs": len(self.pairs)}
        return SteeringSpec([iv], positions=positions, model=dict(self.model), metadata=meta)

    def table(self) -> list[dict[str, Any]]:
        """Per selected latent: role, s_i, mean Δ, mean/max activation on follow and violate texts."""
        mean_f, mean_v = self.stats.mean("follow"), self.stats.mean("violate")
        max_f, max_v = self.stats.maximum("follow"), self.stats.maximum("violate")
        rows = []
        for role, features in (("supportive", self.supportive), ("opposing", self.opposing)):
            for f in features:
                rows.append({"feature": f, "role": role, "consistency": float(self.consistency[f]),
                             "mean_delta": float(self.mean_delta[f]), "mean_follow": float(mean_f[f]),
                             "mean_violate": float(mean_v[f]), "max_follow": float(max_f[f]),
                             "max_violate": float(max_v[f])})
        return rows

    def to_json(self) -> dict[str, Any]:
        return {"method": "concise_sae", "instruction": self.instruction, "keyword": self.keyword,
                "layer": self.layer, "tau": self.tau, "coefficient": self.coefficient,
                "n_pairs": len(self.pairs), "features": self.table(),
                "pairs": [{"follow": a, "violate": b} for a, b in self.pairs]}

    def save(self, path: "str | Path", overwrite: bool = False) -> Path:
        """The spec directory plus ``discovery.json`` (statistics, pairs)."""
        return self.spec().save(path, overwrite=overwrite,
                                extra_files={DISCOVERY_JSON: json.dumps(self.to_json(), indent=2)})


def concise(model: nn.Module, tokenizer, sae: "SAE | str", instruction: str,
            keyword: Optional[str] = None, *, pairs: Optional[Sequence[tuple[str, str]]] = None,
            n_pairs: int = 16, topics: Optional[Sequence[str]] = None, layer: Optional[int] = None,
            k: int = 15, tau: float = 0.0, coefficient: float = 4.0, max_new_tokens: int = 48,
            chat: bool = False, batch_size: int = 8, progress: bool = True, seed: int = 0,
            token_chunk: int = 2048, feature_chunk: int = 4096) -> ConciseResult:
    """Rank ``sae``'s latents by follow/violate consistency at the keyword (see module doc).

    ``pairs``: your own (follow, violate) texts; otherwise the model writes ``n_pairs``.
    The texts are read raw (``chat=False``: they are documents, not requests) with
    ``"\\n" + keyword`` appended. ``layer`` defaults to the SAE's hook layer.
    """
    sae = load_sae(sae)
    layer = sae.hook_layer if layer is None else int(layer)
    if layer is None:
        raise ValueError("the SAE's hook_name names no layer; pass layer=")
    if 2 * k > sae.d_sae:
        raise ValueError(f"k={k} supportive + {k} opposing latents exceed d_sae={sae.d_sae}")
    keyword = keyword or default_keyword(instruction)
    if pairs is None:
        pairs = write_pairs(model, tokenizer, instruction, topics, n_pairs,
                            max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
                            progress=progress)
    pairs = [(str(a), str(b)) for a, b in pairs]
    if not pairs:
        raise ValueError("no contrastive pairs")
    stats = FeatureStats(sae, ("follow", "violate"), tau=tau, token_chunk=token_chunk,
                         feature_chunk=feature_chunk, device=next(model.parameters()).device)
    kwargs = dict(position="keyword", keyword=keyword, chat=chat, batch_size=batch_size,
                  progress=progress)
    hidden = {}
    for group, texts in (("follow", [a for a, _ in pairs]), ("violate", [b for _, b in pairs])):
        parts = [batch.hidden[layer].cpu() for batch in
                 iter_activations(model, tokenizer, texts, [layer], desc=f"Concise {group}", **kwargs)]
        hidden[group] = torch.cat(parts)  # [P, D]: one row per text, small
        stats.update(hidden[group], group)
    stats.update_pairs(hidden["follow"], hidden["violate"])
    s, delta = stats.consistency(), stats.mean_delta()
    supportive = _rank(s, delta)[:k].tolist()
    taken = set(supportive)
    opposing = [f for f in _rank(-s, -delta).tolist() if f not in taken][:k]
    return ConciseResult(supportive, opposing, float(coefficient), s, delta, stats, sae, layer,
                         instruction, keyword, list(pairs), float(tau), _facts(model))

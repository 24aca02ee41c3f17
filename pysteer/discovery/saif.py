"""SAIF: SAE latents that carry one instruction (arXiv 2502.11356).

For V linguistic variants of an instruction (rephrasings, translations) and N pieces of
content, build prompts with the instruction *after* the content (the placement SAIF
found to work better) and the same content alone; read the SAE latents f_i [F] at the
final token (with the chat template: the end of the generation prompt). Then, per
latent i::

    consistency_i = (1/|W|) Σ_{x ∈ W} 1[f_i(x) > θ]        W: prompts with the instruction
    sensitivity_i = mean_{x ∈ W} f_i(x) − mean_{x ∈ W̄} f_i(x)   W̄: the same content without it
    score_i       = consistency_i · max(sensitivity_i, 0)

Keep the top ``n_features`` (~15) latents by score and steer with the weighted sum of
their decoder rows: an ``add`` edit per latent with coefficient
w_i = strength · score_i / Σ_{j ∈ top} score_j, i.e. h' = h + Σ_i w_i·W_dec[i].
Statistics stream through :class:`~pysteer.discovery.collect.FeatureStats`, so the SAE's
width does not bound the number of prompts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from ..sae import SAE, load_sae
from ..spec import SparseIntervention, SteeringSpec
from .collect import FeatureStats, iter_activations
from .diff_in_means import _facts
from .prompts import BASE_QUERIES, instruction_variants, sample, with_instruction

__all__ = ["SaifResult", "saif", "saif_scores"]

DISCOVERY_JSON = "discovery.json"


def saif_scores(stats: FeatureStats, with_group: str = "with",
                without_group: str = "without") -> dict[str, torch.Tensor]:
    """consistency, sensitivity and score [F] from accumulated statistics (see module doc)."""
    consistency = stats.fire_rate(with_group)
    sensitivity = stats.mean(with_group) - stats.mean(without_group)
    return {"consistency": consistency, "sensitivity": sensitivity,
            "score": consistency * sensitivity.clamp(min=0)}


@dataclass
class SaifResult:
    """Top latents, their weights and the per-latent statistics they were ranked by."""

    features: list[int]
    weights: torch.Tensor  # [S]
    scores: dict[str, torch.Tensor]  # consistency, sensitivity, score: [F] each
    mean_with: torch.Tensor  # [F]
    mean_without: torch.Tensor  # [F]
    sae: SAE
    layer: int
    instruction: str
    variants: list[str]
    model: dict[str, Any] = field(default_factory=dict)

    def spec(self, strength: Optional[float] = None, positions: str = "all") -> SteeringSpec:
        """``add`` edits with coefficients ``weights`` (rescaled to sum to ``strength`` if given)."""
        weights = self.weights
        if strength is not None:
            weights = weights * (float(strength) / float(weights.sum()))
        iv = SparseIntervention.from_sae(self.sae, self.features, weights.unsqueeze(0), "add",
                                         layer=self.layer)
        meta = {"method": "saif", "instruction": self.instruction, "layer": self.layer,
                "n_variants": len(self.variants)}
        return SteeringSpec([iv], positions=positions, model=dict(self.model), metadata=meta)

    def table(self) -> list[dict[str, Any]]:
        """One row per selected latent: index, weight and its statistics."""
        return [{"feature": f, "weight": float(w), "score": float(self.scores["score"][f]),
                 "consistency": float(self.scores["consistency"][f]),
                 "sensitivity": float(self.scores["sensitivity"][f]),
                 "mean_with": float(self.mean_with[f]), "mean_without": float(self.mean_without[f])}
                for f, w in zip(self.features, self.weights)]

    def save(self, path: "str | Path", strength: Optional[float] = None, overwrite: bool = False) -> Path:
        """The spec directory plus ``discovery.json`` (the selected latents' statistics)."""
        doc = {"method": "saif", "instruction": self.instruction, "layer": self.layer,
               "variants": self.variants, "features": self.table()}
        return self.spec(strength).save(path, overwrite=overwrite,
                                        extra_files={DISCOVERY_JSON: json.dumps(doc, indent=2)})


def saif(model: nn.Module, tokenizer, sae: "SAE | str", instruction: str, *,
         variants: Optional[Sequence[str]] = None, contents: Optional[Sequence[str]] = None,
         n_contents: Optional[int] = 8, layer: Optional[int] = None, n_features: int = 15,
         strength: float = 8.0, threshold: float = 0.0, placement: str = "after", chat: bool = True,
         batch_size: int = 8, progress: bool = True, seed: int = 0, token_chunk: int = 2048,
         feature_chunk: int = 4096) -> SaifResult:
    """Rank ``sae``'s latents for ``instruction`` and return the top ``n_features`` (module doc).

    ``variants``: the instruction's variants (default: built-in rephrasings/translations
    or frames, see :func:`~pysteer.discovery.prompts.instruction_variants`); ``contents``:
    the content the instruction follows (default: ``n_contents`` built-in queries).
    ``layer`` defaults to the SAE's hook layer.
    """
    sae = load_sae(sae)
    layer = sae.hook_layer if layer is None else int(layer)
    if layer is None:
        raise ValueError("the SAE's hook_name names no layer; pass layer=")
    texts = instruction_variants(instruction, variants)
    bases = sample(contents or BASE_QUERIES, n_contents if contents is None else None, seed)
    withs = [with_instruction(b, v, placement) for v in texts for b in bases]
    if n_features > sae.d_sae:
        raise ValueError(f"n_features={n_features} exceeds the SAE's d_sae={sae.d_sae}")
    stats = FeatureStats(sae, ("with", "without"), threshold=threshold, token_chunk=token_chunk,
                         feature_chunk=feature_chunk, device=next(model.parameters()).device)
    kwargs = dict(position="last", chat=chat, batch_size=batch_size, progress=progress)
    for group, prompts in (("with", withs), ("without", bases)):
        for batch in iter_activations(model, tokenizer, prompts, [layer], desc=f"SAIF {group}", **kwargs):
            stats.update(batch.hidden[layer], group)
    scores = saif_scores(stats)
    # Ties (e.g. several zero scores) fall back to sensitivity, so the order is meaningful.
    order = _rank(scores["score"], scores["sensitivity"])
    top = order[:n_features].tolist()
    top_scores = scores["score"][top]
    if float(top_scores.sum()) > 0:
        weights = strength * top_scores / top_scores.sum()
    else:  # nothing responds to the instruction: equal weights, flagged by the zero scores
        weights = torch.full((len(top),), strength / len(top))
    return SaifResult(top, weights.float(), scores, stats.mean("with"), stats.mean("without"), sae,
                      layer, instruction, texts, _facts(model))


def _rank(primary: torch.Tensor, secondary: torch.Tensor) -> torch.Tensor:
    """Indices sorted by ``primary`` descending, ties broken by ``secondary`` descending."""
    order = torch.argsort(secondary, descending=True, stable=True)
    return order[torch.argsort(primary[order], descending=True, stable=True)]

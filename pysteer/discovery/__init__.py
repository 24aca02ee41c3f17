"""Finding what to steer: difference-in-means vectors, SAIF latents, Concise-SAE latents.

- :mod:`.collect`: residual capture at chosen layers/positions; streaming SAE statistics.
- :mod:`.diff_in_means`: Stolfo et al.'s instruction vectors, layer search, compose, transfer.
- :mod:`.saif`: latents consistent across an instruction's variants and sensitive to it.
- :mod:`.concise`: latents separating self-written follow/violate pairs at a keyword.
"""

from .collect import ActivationBatch, FeatureStats, collect_activations, iter_activations
from .concise import ConciseResult, concise, write_pairs
from .diff_in_means import (DiffMeanResult, EvaluationScorer, LayerScore, LayerSearch, compose, diff_in_means,
                            evaluation_scorer, instruction_vectors, layer_search, transfer)
from .saif import SaifResult, saif, saif_scores

__all__ = ["ActivationBatch", "FeatureStats", "collect_activations", "iter_activations",
           "ConciseResult", "concise", "write_pairs", "DiffMeanResult", "EvaluationScorer", "LayerScore", "LayerSearch",
           "compose", "diff_in_means", "evaluation_scorer", "instruction_vectors", "layer_search",
           "transfer", "SaifResult", "saif", "saif_scores"]

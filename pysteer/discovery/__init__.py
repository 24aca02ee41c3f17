"""Finding what to steer: difference-in-means vectors, SAIF latents, Concise-SAE latents.

- :mod:`.collect`: residual capture at chosen layers/positions; streaming SAE statistics.
- :mod:`.diff_in_means`: Stolfo et al.'s instruction vectors, layer search, compose, transfer.
- :mod:`.saif`: latents consistent across an instruction's variants and sensitive to it.
- :mod:`.concise`: latents separating self-written follow/violate pairs at a keyword.

Names are imported on first use (:mod:`pysteer._lazy`).
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    ".collect": ("ActivationBatch", "FeatureStats", "collect_activations", "iter_activations"),
    ".concise": ("ConciseResult", "concise", "write_pairs"),
    ".diff_in_means": ("DiffMeanResult", "EvaluationScorer", "LayerScore", "LayerSearch", "compose",
                       "diff_in_means", "evaluation_scorer", "instruction_vectors", "answer_vectors", "next_token_vectors",
                       "layer_search", "transfer"),
    ".saif": ("SaifResult", "saif", "saif_scores"),
})

if TYPE_CHECKING:
    from .collect import ActivationBatch, FeatureStats, collect_activations, iter_activations
    from .concise import ConciseResult, concise, write_pairs
    from .diff_in_means import (DiffMeanResult, EvaluationScorer, LayerScore, LayerSearch, answer_vectors,
                                compose, diff_in_means, evaluation_scorer, instruction_vectors, layer_search,
                                next_token_vectors, transfer)
    from .saif import SaifResult, saif, saif_scores

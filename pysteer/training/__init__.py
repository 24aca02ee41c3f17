"""Training TopK SAEs on a model's residual stream (``pysteer train-sae``).

    corpus.py       text sources: the model's own chat transcripts, or user files; held-out split
    activations.py  residuals after decoder layers, streamed into a shuffling buffer
    trainer.py      the TopK SAE, its loss and step, metrics, folding the input scale
    loop.py         the loop over steps, resumable checkpoints, saving in the sae-lens format
    cli.py          ``pysteer train-sae``

Names are imported on first use (:mod:`pysteer._lazy`).
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    ".activations": ("BufferState", "ModelActivationSource", "ShuffleBuffer", "SyntheticSource",
                     "collect_tokens"),
    ".config": ("TrainConfig",),
    ".corpus": ("SelfChatCorpus", "TextFileCorpus", "is_heldout", "self_chat_prompts"),
    ".errors": ("TrainingError",),
    ".loop": ("check_outputs", "evaluate_sae", "hook_name", "sae_dir", "train_saes"),
    ".trainer": ("TopKTrainer", "geometric_median", "reconstruction_metrics"),
})

if TYPE_CHECKING:
    from .activations import (BufferState, ModelActivationSource, ShuffleBuffer, SyntheticSource,
                              collect_tokens)
    from .config import TrainConfig
    from .corpus import SelfChatCorpus, TextFileCorpus, is_heldout, self_chat_prompts
    from .errors import TrainingError
    from .loop import check_outputs, evaluate_sae, hook_name, sae_dir, train_saes
    from .trainer import TopKTrainer, geometric_median, reconstruction_metrics

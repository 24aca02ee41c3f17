"""Training TopK SAEs on a model's residual stream (``pysteer train-sae``).

    corpus.py       text sources: the model's own chat transcripts, or user files; held-out split
    activations.py  residuals after decoder layers, streamed into a shuffling buffer
    trainer.py      the TopK SAE, its loss and step, metrics, folding the input scale
    loop.py         the loop over steps, resumable checkpoints, saving in the sae-lens format
    cli.py          ``pysteer train-sae``
"""

from .activations import (BufferState, ModelActivationSource, ShuffleBuffer, SyntheticSource,
                          collect_tokens)
from .corpus import SelfChatCorpus, TextFileCorpus, is_heldout, self_chat_prompts
from .errors import TrainingError
from .loop import check_outputs, evaluate_sae, hook_name, sae_dir, train_saes
from .trainer import TopKTrainer, TrainConfig, geometric_median, reconstruction_metrics

__all__ = ["SelfChatCorpus", "TextFileCorpus", "is_heldout", "self_chat_prompts",
           "ModelActivationSource", "SyntheticSource", "ShuffleBuffer", "BufferState",
           "collect_tokens", "TopKTrainer", "TrainConfig", "geometric_median",
           "reconstruction_metrics", "train_saes", "check_outputs", "evaluate_sae", "hook_name",
           "sae_dir", "TrainingError"]

"""Tiny randomly initialised models of every supported family, and a steering spec for them."""

from __future__ import annotations

import torch
import transformers as tf

from pysteer import SparseIntervention, SteeringSpec
from pysteer.sae import random_sae

VOCAB, WIDTH, LAYERS, STEERED_LAYER = 96, 48, 3, 1

_COMMON = dict(vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=80, num_hidden_layers=LAYERS,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
               pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
               initializer_range=0.2)  # peaked logits: greedy decoding has no near-ties

FAMILIES = {
    "llama": lambda: tf.LlamaForCausalLM(tf.LlamaConfig(**_COMMON)),
    "mistral": lambda: tf.MistralForCausalLM(tf.MistralConfig(**_COMMON, sliding_window=None)),
    "qwen2": lambda: tf.Qwen2ForCausalLM(tf.Qwen2Config(**_COMMON)),
    "qwen3": lambda: tf.Qwen3ForCausalLM(tf.Qwen3Config(**_COMMON, head_dim=12)),
    "gemma2": lambda: tf.Gemma2ForCausalLM(tf.Gemma2Config(**_COMMON, head_dim=12, sliding_window=16)),
    "gemma3_text": lambda: tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(**_COMMON, head_dim=12, sliding_window=16)),
    "phi3": lambda: tf.Phi3ForCausalLM(tf.Phi3Config(**_COMMON)),
    "gpt2": lambda: tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=VOCAB, n_embd=WIDTH, n_layer=LAYERS, n_head=4,
                                                     n_positions=128, pad_token_id=0, bos_token_id=1,
                                                     eos_token_id=2, initializer_range=0.2)),
}


def tiny_model(family: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = FAMILIES[family]()
    model.generation_config.pad_token_id = 0
    return model.eval()


def tiny_spec(n_configs: int = 1, positions: str = "all", strength: float = 8.0) -> SteeringSpec:
    """A random-SAE spec with ``n_configs`` clearly different configurations."""
    sae = random_sae(WIDTH, 67, "jumprelu", seed=7)
    features = [2, 11, 30, 45, 66]
    table = torch.stack([strength * (c + 1) * torch.tensor([1.0, -1.0, 0.5, 1.0, -0.5]) * (-1) ** c
                         for c in range(n_configs)])
    iv = SparseIntervention.from_sae(sae, features, table, ["add", "add", "set", "scale", "add"],
                                     layer=STEERED_LAYER)
    return SteeringSpec([iv], positions=positions)


def prompts(seed: int = 1, lengths=(5, 9, 7)) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=gen) for n in lengths]


def left_pad(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, width - len(seq):] = seq
        mask[row, width - len(seq):] = 1
    return ids, mask


_TOKENIZER: list = []  # SmolLM2's tokenizer, loaded once per test session (~10 s)


def tiny_chat_model(seed: int = 0):
    """(tiny random Llama, SmolLM2's real tokenizer and chat template): text in, text out, fast."""
    from pysteer.models import load_tokenizer

    if not _TOKENIZER:
        _TOKENIZER.append(load_tokenizer())
    tokenizer = _TOKENIZER[0]
    torch.manual_seed(seed)
    config = tf.LlamaConfig(**dict(_COMMON, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                   bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    model = tf.LlamaForCausalLM(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer

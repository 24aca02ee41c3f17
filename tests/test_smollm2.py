"""The embedded default model, SmolLM2-135M-Instruct, steered end to end (CPU, fp32)."""

import torch

import pysteer
from pysteer.models import encode_prompts
from pysteer.patching import decoder_layers
from pysteer.sae import random_sae

LAYER = 12
PROMPTS = ["Name a colour.", "Write one sentence about the moon and the stars at night.",
           "What is two plus two?"]
NEW_TOKENS = 8


def _spec(n_configs=1, positions="all"):
    sae = random_sae(576, 1000, "jumprelu", seed=11)
    table = torch.tensor([[12.0, -6.0, 8.0], [-10.0, 9.0, 0.0], [4.0, 4.0, 4.0]])[:n_configs]
    iv = pysteer.SparseIntervention.from_sae(sae, [5, 99, 512], table, ["add", "add", "set"], layer=LAYER)
    return pysteer.SteeringSpec([iv], positions=positions)


def _generate(model, batch, steering=None, rows=None, use_cache=True):
    kwargs = dict(attention_mask=batch["attention_mask"], max_new_tokens=NEW_TOKENS,
                  min_new_tokens=NEW_TOKENS, do_sample=False, use_cache=use_cache)
    ids = batch["input_ids"]
    with torch.no_grad():
        out = steering.generate(ids, rows=rows, **kwargs) if steering else model.generate(ids, **kwargs)
    return out[:, ids.shape[1]:]


def test_loads_offline_as_llama(smollm2):
    model, tokenizer = smollm2
    assert model.config.model_type == "llama" and model.config.hidden_size == 576
    assert len(decoder_layers(model)) == 30 and tokenizer.padding_side == "left"


def test_detach_restores_bit_identical_logits(smollm2):
    model, tokenizer = smollm2
    batch = encode_prompts(tokenizer, PROMPTS)
    with torch.no_grad():
        before = model(**batch).logits
        with pysteer.steer(model, _spec()):
            steered = model(**batch).logits
        after = model(**batch).logits
    assert torch.equal(before, after)
    assert (steered - before).abs().max() > 1e-2


def test_cache_and_batch_and_rows(smollm2):
    model, tokenizer = smollm2
    batch = encode_prompts(tokenizer, PROMPTS)
    with pysteer.steer(model, _spec(n_configs=3)) as steering:
        cached = _generate(model, batch, steering, rows=[0, 1, 2])
        uncached = _generate(model, batch, steering, rows=[0, 1, 2], use_cache=False)
        assert torch.equal(cached, uncached)
        for row, prompt in enumerate(PROMPTS):  # each row generated alone, with its configuration
            single = encode_prompts(tokenizer, [prompt])
            assert torch.equal(_generate(model, single, steering, rows=[row])[0], cached[row])
        same_config = _generate(model, batch, steering, rows=[1, 1, 1])
        assert torch.equal(same_config[1], cached[1])
        unsteered_row = _generate(model, batch, steering, rows=[-1, 1, 2])
    plain = _generate(model, batch)
    assert torch.equal(unsteered_row[0], plain[0])
    assert not torch.equal(cached, plain)


def test_generated_only_keeps_the_first_token(smollm2):
    """With positions='generated' the prefill is untouched, so the first new token is unchanged."""
    model, tokenizer = smollm2
    batch = encode_prompts(tokenizer, PROMPTS)
    plain = _generate(model, batch)
    with pysteer.steer(model, _spec(positions="generated")) as steering:
        steered = _generate(model, batch, steering)
    assert torch.equal(steered[:, 0], plain[:, 0])
    assert not torch.equal(steered, plain)

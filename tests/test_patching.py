"""Layer swap on every supported family: identity after detach, generate with/without cache,
left-padded batches, per-row configurations and position masks."""

import math

import pytest
import torch

import pysteer
from pysteer.patching import SteeredLayer, decoder_layers
from model_zoo import FAMILIES, STEERED_LAYER, left_pad, prompts, tiny_model, tiny_spec

NEW_TOKENS = 6


def greedy(model, ids, mask, steering=None, rows=None, use_cache=True):
    kwargs = dict(attention_mask=mask, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                  do_sample=False, use_cache=use_cache, pad_token_id=0)
    with torch.no_grad():
        out = steering.generate(ids, rows=rows, **kwargs) if steering else model.generate(ids, **kwargs)
    return out[:, ids.shape[1]:]


def alone(seq):
    return seq.unsqueeze(0), torch.ones(1, len(seq), dtype=torch.long)


@pytest.fixture(params=sorted(FAMILIES))
def model(request):
    return tiny_model(request.param)


def test_swap_and_detach_restore_bit_identical_logits(model):
    ids, mask = left_pad(prompts())
    original_layer = decoder_layers(model)[STEERED_LAYER]
    with torch.no_grad():
        before = model(ids, attention_mask=mask).logits
        with pysteer.steer(model, tiny_spec()):
            assert isinstance(decoder_layers(model)[STEERED_LAYER], SteeredLayer)
            steered = model(ids, attention_mask=mask).logits
        after = model(ids, attention_mask=mask).logits
    assert decoder_layers(model)[STEERED_LAYER] is original_layer
    assert torch.equal(before, after)
    assert not torch.allclose(before, steered)  # steering really changed the model


@pytest.mark.parametrize("positions", ["all", "generated", "prompt"])
def test_generate_with_and_without_cache_agree(model, positions):
    ids, mask = left_pad(prompts())
    with pysteer.steer(model, tiny_spec(positions=positions)) as steering:
        cached = greedy(model, ids, mask, steering, use_cache=True)
        uncached = greedy(model, ids, mask, steering, use_cache=False)
    assert torch.equal(cached, uncached)


def test_left_padded_batch_rows_equal_each_row_alone(model):
    seqs = prompts()
    ids, mask = left_pad(seqs)
    with pysteer.steer(model, tiny_spec()) as steering:
        batch = greedy(model, ids, mask, steering)
        singles = [greedy(model, *alone(s), steering)[0] for s in seqs]
    unsteered = greedy(model, ids, mask)
    for row, single in enumerate(singles):
        assert torch.equal(batch[row], single)
    assert not torch.equal(batch, unsteered)


def test_rows_with_different_configurations_equal_each_configuration_alone(model):
    seqs = prompts(lengths=(6, 6, 6, 6))
    ids, mask = left_pad(seqs)
    rows = [0, 1, -1, 2]
    with pysteer.steer(model, tiny_spec(n_configs=3)) as steering:
        mixed = greedy(model, ids, mask, steering, rows=rows)
        per_config = {c: greedy(model, ids, mask, steering, rows=[c] * len(seqs)) for c in (0, 1, 2)}
    unsteered = greedy(model, ids, mask)
    for row, config in enumerate(rows):
        expected = unsteered[row] if config < 0 else per_config[config][row]
        assert torch.equal(mixed[row], expected)
    assert len({tuple(per_config[c][0].tolist()) for c in per_config}) > 1  # configs differ


def test_generated_only_steers_exactly_the_generated_positions(model):
    seqs = prompts()
    ids, mask = left_pad(seqs)
    prompt_length = ids.shape[1]
    full = torch.cat([ids, torch.randint(3, 90, (ids.shape[0], 4))], dim=1)
    full_mask = torch.cat([mask, torch.ones(ids.shape[0], 4, dtype=torch.long)], dim=1)
    with torch.no_grad():
        plain = model(full, attention_mask=full_mask).logits
        with pysteer.steer(model, tiny_spec(positions="generated"), prompt_length=prompt_length):
            steered = model(full, attention_mask=full_mask).logits
        with pysteer.steer(model, tiny_spec(positions="prompt"), prompt_length=prompt_length):
            prompt_only = model(full, attention_mask=full_mask).logits
    real = mask.bool()  # pad positions attend to nothing real; their logits are meaningless
    assert torch.equal(steered[:, :prompt_length][real], plain[:, :prompt_length][real])
    assert (steered[:, prompt_length:] - plain[:, prompt_length:]).abs().amax(-1).min() > 1e-4
    assert (prompt_only[:, prompt_length - 1] - plain[:, prompt_length - 1]).abs().max() > 1e-4


def test_several_layers_and_dense_interventions_compose(model):
    spec = tiny_spec()
    direction = torch.randn(spec.d_model)
    dense = pysteer.DenseIntervention(0, direction / direction.norm(), [[3.0]], "project")
    both = pysteer.SteeringSpec(spec.interventions + [dense])
    ids, mask = left_pad(prompts())
    with torch.no_grad():
        with pysteer.steer(model, both):
            assert isinstance(decoder_layers(model)[0], SteeredLayer)
            logits_both = model(ids, attention_mask=mask).logits
        with pysteer.steer(model, spec):
            logits_sparse = model(ids, attention_mask=mask).logits
    assert not torch.allclose(logits_both, logits_sparse)
    assert not any(isinstance(layer, SteeredLayer) for layer in decoder_layers(model))


@pytest.mark.parametrize("positions", ["all", "prompt", "generated"])
def test_repeated_prompts_share_the_prefill_below_the_steered_layer(model, positions):
    """q candidates × P prompts: the layers below the first steered one see each distinct
    prompt once, and the generated tokens and scores equal an ordinary generation."""
    seqs = prompts(lengths=(5, 8))
    ids, mask = left_pad(seqs)
    q = 3
    ids, mask = ids.repeat(q, 1), mask.repeat(q, 1)
    rows = [c for c in range(q) for _ in seqs]
    prefill_batches, decode_steps = [], []
    hook = decoder_layers(model)[0].register_forward_hook(
        lambda module, args, out: (prefill_batches if args[0].shape[1] > 1 else decode_steps).append(args[0].shape[0]))
    kwargs = dict(attention_mask=mask, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                  pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    try:
        with torch.no_grad(), pysteer.steer(model, tiny_spec(n_configs=q, positions=positions)) as steering:
            shared = steering.generate(ids, rows=rows, **kwargs)
            assert prefill_batches == [len(seqs)]               # each distinct prompt once
            assert decode_steps == [q * len(seqs)] * (NEW_TOKENS - 1)   # then the real layer decodes
            plain = steering.generate(ids, rows=rows, share_prefill=False, **kwargs)
            assert prefill_batches == [len(seqs), q * len(seqs)]
    finally:
        hook.remove()
    assert torch.equal(shared.sequences, plain.sequences)
    torch.testing.assert_close(torch.stack(shared.scores), torch.stack(plain.scores), rtol=1e-4, atol=1e-4)
    assert len({tuple(shared.sequences[c * len(seqs)].tolist()) for c in range(q)}) > 1  # rows differ
    assert all(not isinstance(m, type(None)) and type(m).__name__ != "_ReplayLayer"
               for m in decoder_layers(model))                  # the real layers are back


def _unsteered_perplexity(model, prompt, new_tokens):
    """Oracle: exp(mean −log p) of ``new_tokens`` after ``prompt``, one unpadded unsteered pass."""
    ids = torch.cat([prompt, new_tokens]).unsqueeze(0)
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    nll = -sum(logprobs[len(prompt) - 1 + t, token] for t, token in enumerate(new_tokens.tolist()))
    return float(torch.exp(nll / len(new_tokens)))


@pytest.mark.parametrize("positions", ["all", "prompt", "generated"])
def test_generation_with_perplexity_equals_generation_then_an_unpadded_oracle(model, positions):
    """q candidates × P prompts: the tokens are an ordinary generation's, and each row's
    perplexity — scored from the prompt pass and the states the generation fed into the
    steered layer — equals one unsteered pass over prompt + response; the prompts ran once."""
    from pysteer.evaluation import generate_ids_with_perplexity

    seqs = prompts(lengths=(5, 8))
    ids, mask = left_pad(seqs)
    q = 3
    ids, mask = ids.repeat(q, 1), mask.repeat(q, 1)
    rows = [c for c in range(q) for _ in seqs]
    first_layer_batches = []
    hook = decoder_layers(model)[0].register_forward_hook(
        lambda module, args, out: first_layer_batches.append(tuple(args[0].shape[:2])))
    try:
        with torch.no_grad(), pysteer.steer(model, tiny_spec(n_configs=q, positions=positions)) as steering:
            steering.set_rows(rows)
            out, perplexities = generate_ids_with_perplexity(steering, ids, mask, max_new_tokens=NEW_TOKENS,
                                                             pad_token_id=0, eos_token_ids={2})
            assert steering.state.rows.tolist() == rows  # restored after the unsteered passes
            hook.remove()
            ordinary = steering.generate(ids, rows=rows, attention_mask=mask, max_new_tokens=NEW_TOKENS,
                                         do_sample=False, pad_token_id=0, share_prefill=False)
    finally:
        hook.remove()
    assert first_layer_batches[0] == (len(seqs), ids.shape[1])  # each distinct prompt once, unsteered
    assert (len(ids), ids.shape[1]) not in first_layer_batches[1:]  # the batch's prefill was replayed
    assert torch.equal(out, ordinary)
    width, scored = ids.shape[1], 0
    for row, value in enumerate(perplexities):
        new = out[row, width:]
        n = next((t for t, token in enumerate(new.tolist()) if token == 2), len(new))  # cut at EOS
        if n == 0:
            assert math.isnan(value)  # an empty response has no perplexity
            continue
        scored += 1
        assert value == pytest.approx(_unsteered_perplexity(model, seqs[row % len(seqs)], new[:n]), rel=1e-4)
    assert scored >= len(rows) // 2
    assert len({round(v, 6) for v in perplexities if not math.isnan(v)}) > len(seqs)  # candidates differ

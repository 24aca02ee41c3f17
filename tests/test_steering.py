"""`Steering` as the one owner of steered execution: the per-forward plan, `unsteered()`,
in-place coefficient updates, n configurations in one generation, TopK encoding only the
steered tokens, and a compiled static-cache decode step without graph breaks."""

import pytest
import torch
import transformers as tf

import pysteer
from pysteer import ops
from pysteer.patching import decoder_layers
from pysteer.patching.steered_layer import SteeringState
from pysteer.sae import random_sae
from model_zoo import STEERED_LAYER, WIDTH, left_pad, prompts, tiny_model, tiny_spec

NEW_TOKENS = 5
GREEDY = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)


@pytest.fixture
def launches(monkeypatch):
    """Counts every op the steered layers launch, and the rows each TopK encode sees."""
    counts = {"sparse": 0, "dense": 0, "encode_rows": []}

    def counting(name, original):
        def run(*args, **kwargs):
            if name == "encode":
                counts["encode_rows"].append(int(args[0].shape[0]))
            else:
                counts[name] += 1
            return original(*args, **kwargs)
        return run

    monkeypatch.setattr(ops, "launch_sparse_steer_", counting("sparse", ops.launch_sparse_steer_))
    monkeypatch.setattr(ops, "launch_dense_steer_", counting("dense", ops.launch_dense_steer_))
    monkeypatch.setattr(ops, "encode_topk", counting("encode", ops.encode_topk))
    return counts


def topk_spec(n_configs=1, positions="all", layer=STEERED_LAYER, k=6):
    sae = random_sae(WIDTH, 40, "topk", k=k, seed=3)
    table = torch.stack([3.0 * (c + 1) * torch.tensor([1.0, -1.0, 2.0]) for c in range(n_configs)])
    iv = pysteer.SparseIntervention.from_sae(sae, [1, 17, 33], table, ["add", "set", "scale"], layer=layer)
    return pysteer.SteeringSpec([iv], positions=positions)


def two_layer_spec(positions="all"):
    direction = torch.randn(WIDTH, generator=torch.Generator().manual_seed(5))
    dense = pysteer.DenseIntervention(2, direction / direction.norm(), [[3.0]], "add")
    return pysteer.SteeringSpec([tiny_spec(positions=positions).interventions[0], dense], positions=positions)


def test_no_op_is_launched_under_unsteered(launches):
    model = tiny_model("llama")
    ids, mask = left_pad(prompts())
    with torch.no_grad():
        plain = model.generate(ids, attention_mask=mask, **GREEDY)
        for spec in (two_layer_spec(), topk_spec()):
            with pysteer.steer(model, spec) as steering:
                with steering.unsteered():
                    out = steering.generate(ids, attention_mask=mask, **GREEDY)
                assert launches == {"sparse": 0, "dense": 0, "encode_rows": []}
                assert torch.equal(out, plain)
                steered = steering.generate(ids, attention_mask=mask, **GREEDY)  # on again after the block
            assert launches["sparse"] > 0 and not torch.equal(steered, plain)
            launches.update(sparse=0, dense=0, encode_rows=[])


def test_the_plan_is_made_once_per_forward_and_shared_by_every_steered_layer(monkeypatch):
    made = []
    original = SteeringState._make_plan
    monkeypatch.setattr(SteeringState, "_make_plan", lambda self, *a: made.append(a[0]) or original(self, *a))
    model = tiny_model("qwen2")
    ids, mask = left_pad(prompts())
    with torch.no_grad(), pysteer.steer(model, two_layer_spec()) as steering:
        steering.generate(ids, attention_mask=mask, share_prefill=False, **GREEDY)
    assert made == [STEERED_LAYER] * NEW_TOKENS  # one plan a pass (prefill + decode steps), by the lowest layer


@pytest.mark.parametrize("positions", ["all", "prompt", "generated"])
def test_set_coefficients_writes_the_same_buffers_and_equals_a_fresh_attach(positions):
    model = tiny_model("gemma2")
    ids, mask = left_pad(prompts())
    spec = tiny_spec(n_configs=2, positions=positions)
    other = [-0.5 * spec.interventions[0].coefficients.flip(0)]
    with torch.no_grad():
        with pysteer.steer(model, spec.with_coefficients(other)) as fresh:
            expected = fresh.generate(ids, rows=[0, 1, 0], attention_mask=mask, **GREEDY)
        with pysteer.steer(model, spec) as steering:
            compiled = decoder_layers(model)[STEERED_LAYER].interventions[0]
            buffers = {name: buf for name, buf in compiled.named_buffers()}
            before = steering.generate(ids, rows=[0, 1, 0], attention_mask=mask, **GREEDY)
            steering.set_coefficients(other)
            after = steering.generate(ids, rows=[0, 1, 0], attention_mask=mask, **GREEDY)
            assert all(buf is buffers[name] for name, buf in compiled.named_buffers())  # nothing re-copied
            assert torch.equal(compiled.coeffs, other[0])
            with pytest.raises(pysteer.SteeringSpecError, match="NaN"):
                steering.set_coefficients([torch.full_like(other[0], float("nan"))])
            with pytest.raises(pysteer.SteeringSpecError, match="set_rows"):  # rows name config 1
                steering.set_coefficients([other[0][:1]])
            assert torch.equal(compiled.coeffs, other[0])  # nothing was changed
    assert torch.equal(after, expected) and not torch.equal(before, after)


def test_generate_configs_equals_each_configuration_alone():
    model = tiny_model("phi3")
    ids, mask = left_pad(prompts())
    spec = tiny_spec(n_configs=3)
    with torch.no_grad(), pysteer.steer(model, spec) as steering:
        out = steering.generate_configs(ids, mask, [2, -1, 0], **GREEDY)
        alone = {c: steering.generate(ids, rows=[c] * len(ids), attention_mask=mask, **GREEDY) for c in (2, -1, 0)}
        scored = steering.generate_configs(ids, mask, [2, -1, 0], score=True, **GREEDY)
    assert out.tokens.shape[:2] == (3, len(ids)) and out.perplexities is None
    for i, c in enumerate((2, -1, 0)):
        assert torch.equal(out.tokens[i], alone[c])
        assert torch.equal(scored.tokens[i], alone[c])
    assert len(scored.perplexities) == 3 and all(len(p) == len(ids) for p in scored.perplexities)
    # The unsteered configuration's responses are the model's own: the lowest perplexity.
    mean = [sum(p) / len(p) for p in scored.perplexities]
    assert mean[1] < min(mean[0], mean[2])


def test_topk_encodes_only_the_steered_tokens(launches):
    model = tiny_model("llama")
    ids, mask = left_pad(prompts())
    batch, width = ids.shape
    with torch.no_grad():
        with pysteer.steer(model, topk_spec(positions="generated")) as steering:
            steering.generate(ids, attention_mask=mask, share_prefill=False, **GREEDY)
        # The prompt pass steers nothing under "generated": no encode at all; each decode step
        # encodes its batch·1 tokens.
        assert launches["encode_rows"] == [batch] * (NEW_TOKENS - 1)
        launches["encode_rows"].clear()
        with pysteer.steer(model, topk_spec(n_configs=2)) as steering:
            mixed = steering.generate(ids, rows=[1, -1, 0], attention_mask=mask, share_prefill=False, **GREEDY)
            alone = [steering.generate(ids[b:b + 1], rows=[r], attention_mask=mask[b:b + 1], **GREEDY)
                     for b, r in enumerate([1, -1, 0])]
        assert launches["encode_rows"][0] == 2 * width  # the unsteered row is not encoded
        assert launches["encode_rows"][1:NEW_TOKENS] == [2] * (NEW_TOKENS - 1)
    plain = model.generate(ids[1:2], attention_mask=mask[1:2], **GREEDY)
    assert torch.equal(alone[1], plain)
    for b in range(batch):
        row = mixed[b][mask[b].bool().tolist() + [True] * NEW_TOKENS]  # drop the left padding
        assert torch.equal(row, alone[b][0][-row.shape[0]:])


def test_topk_steering_equals_the_full_sae_edit_by_hand():
    """The slot table and the steered-token subset against the edit written out from the
    SAE's own full encode: h + Σ_i (edit(f_i, c_i) − f_i)·W_dec[i]."""
    model = tiny_model("mistral")
    spec = topk_spec(n_configs=2)
    iv = spec.interventions[0]
    ids, mask = left_pad(prompts())
    captured = {}
    layer = decoder_layers(model)[STEERED_LAYER]
    hook = layer.register_forward_hook(lambda m, a, out: captured.setdefault("h", out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        model(ids, attention_mask=mask)
    hook.remove()
    h = captured["h"].reshape(-1, WIDTH)
    rows = torch.tensor([1, -1, 0]).repeat_interleave(ids.shape[1])
    acts = iv.sae.encode(h)[:, iv.features]
    expected = h.clone()
    for t in range(h.shape[0]):
        if rows[t] < 0:
            continue
        c = iv.coefficients[rows[t]]
        edited = torch.stack([acts[t, 0] + c[0], c[1], acts[t, 2] * c[2]])
        expected[t] += (edited - acts[t]) @ iv.dec_rows
    out = {}
    with torch.no_grad(), pysteer.steer(model, spec, rows=[1, -1, 0]):
        hook = decoder_layers(model)[STEERED_LAYER].register_forward_hook(lambda m, a, o: out.setdefault("h", o[0] if isinstance(o, tuple) else o))
        model(ids, attention_mask=mask)
        hook.remove()
    torch.testing.assert_close(out["h"].reshape(-1, WIDTH), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("positions", ["all", "prompt", "generated"])
def test_compiled_static_cache_decode_step_has_no_graph_break_or_recompile(positions):
    from torch._dynamo.testing import CompileCounter
    from torch._dynamo.utils import counters

    model = tiny_model("llama")
    prompt = torch.tensor([[5, 9, 14, 3, 22, 7]])
    width = prompt.shape[1]
    spec = topk_spec(positions=positions) if positions == "all" else two_layer_spec(positions)
    torch._dynamo.reset()
    counters.clear()
    backend = CompileCounter()
    with torch.no_grad(), pysteer.steer(model, spec) as steering:
        steering.set_prompt_length(width)

        def decode(cache, n_steps, step):
            tokens, logits = [], []
            nxt = None
            out = model(input_ids=prompt, cache=cache, use_cache=True)  # eager prefill
            nxt = out.logits[:, -1:].argmax(-1)
            for i in range(n_steps):
                position = torch.tensor([[width + i]])
                logit = step(nxt, position, cache)
                logits.append(logit)
                nxt = logit[:, -1:].argmax(-1)
                tokens.append(nxt)
            return torch.cat(tokens, 1), torch.cat(logits, 1)

        def step(ids, position_ids, cache):
            return model(input_ids=ids, position_ids=position_ids, cache=cache, use_cache=True).logits

        compiled = torch.compile(step, backend=backend, fullgraph=True)
        make_cache = lambda: tf.StaticCache(config=model.config, max_cache_len=width + 8)  # noqa: E731
        eager_tokens, eager_logits = decode(make_cache(), 5, step)
        tokens, logits = decode(make_cache(), 5, compiled)
        with steering.unsteered():
            _, unsteered_logits = decode(make_cache(), 5, step)
    assert backend.frame_count == 1  # compiled once, reused at every later position: no recompile
    assert not counters["graph_break"]
    assert torch.equal(tokens, eager_tokens)
    torch.testing.assert_close(logits, eager_logits, rtol=1e-5, atol=1e-5)
    # Steering acted (on the decode steps, or with "prompt" through the prefill's cache).
    assert not torch.allclose(logits, unsteered_logits)


def test_a_backend_that_cannot_run_fails_at_attach_before_any_layer_runs(monkeypatch):
    from pysteer.errors import BackendUnavailableError

    model = tiny_model("llama")
    ran = []
    decoder_layers(model)[0].register_forward_hook(lambda *a: ran.append(1))
    with ops.use_backend("cuda"), pytest.raises(BackendUnavailableError, match="CUDA"):
        pysteer.steer(model, tiny_spec())
    assert not ran and not any(type(layer).__name__ == "SteeredLayer" for layer in decoder_layers(model))

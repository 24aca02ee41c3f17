"""Per-request steering inside transformers' continuous batching engine (pysteer.serving.continuous).

Oracle: every request of a mixed run (configurations of three specs with the three position
rules, scaled rows, unsteered requests; prompts longer than the step so prefill is chunked;
different lengths so requests leave mid-flight) must give the same greedy tokens as (a) the
same request alone through the same engine and (b) ``Steering.generate`` of that one
configuration. Tokens are compared exactly: the tiny models' logits are peaked (no near-ties),
and SmolLM2's greedy tokens are compared over a short horizon (see its test).
"""

import pytest
import torch
from transformers import GenerationConfig
from transformers.generation.configuration_utils import ContinuousBatchingConfig

import pysteer
from pysteer import ops
from pysteer.sae import random_sae
from pysteer.serving.continuous import collect
from pysteer.serving import ContinuousSteering, RequestSteering, SteeredEngine, SteeringRequestError, spec_digest
from conftest import requires_cuda
from model_zoo import WIDTH, prompts, tiny_model, tiny_spec

NEW = 6


def engine_configs(max_new_tokens=NEW, max_batch_tokens=16):
    # A 16-token step: a 13-token prompt shares its step with others' chunks and decode tokens.
    return dict(generation_config=GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=-1,
                                                   pad_token_id=0),
                cb_config=ContinuousBatchingConfig(num_blocks=64, page_size=16, max_batch_tokens=max_batch_tokens))


def mixed_specs():
    return {"all": tiny_spec(3, "all"), "prompt": tiny_spec(2, "prompt", strength=6.0),
            "generated": tiny_spec(2, "generated")}


MIX = [RequestSteering("all", 2), None, RequestSteering("prompt", 1), RequestSteering("generated", 0),
       RequestSteering("all", 1, scale=0.5), RequestSteering("generated", 1), {"spec": "prompt", "row": 0},
       "all"]


def reference(model, specs, prompt, steering, new_tokens):
    """The request through Steering.generate (one configuration, scaled), or plain generate."""
    ids = torch.tensor([prompt])
    # No end-of-sequence, as in the engine (eos_token_id=-1); min_new_tokens would instead
    # mask the EOS logit and change the argmax.
    greedy = dict(max_new_tokens=new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None)
    steering = RequestSteering.parse(steering)
    with torch.no_grad():
        if steering is None:
            return model.generate(ids, **greedy)[0, len(prompt):].tolist()
        spec = specs[steering.spec].configuration(steering.row)
        spec = spec.with_coefficients([steering.scale * iv.coefficients for iv in spec.interventions])
        with pysteer.steer(model, spec) as attached:
            return attached.generate(ids, **greedy)[0, len(prompt):].tolist()


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_mixed_run_equals_each_request_alone_and_steering_generate(family):
    model = tiny_model(family)
    specs = mixed_specs()
    inputs = [p.tolist() for p in prompts(lengths=(5, 9, 13, 7, 11, 6, 12, 8))]
    new = [NEW, 3, NEW, 4, NEW, 2, 5, NEW]  # requests leave at different steps
    with SteeredEngine(model, specs, **engine_configs()) as engine:
        ids = [engine.submit(x, s, max_new_tokens=n) for x, s, n in zip(inputs, MIX, new)]
        results = collect(engine.manager, ids)
        mixed = [results[i].generated_tokens for i in ids]
        steps = engine.steering.steps
        alone = [engine.generate([x], [s], max_new_tokens=n)[0] for x, s, n in zip(inputs, MIX, new)]
        assert engine.steering.in_flight() == 0  # every finished request was released
    assert steps < sum(len(x) + n for x, n in zip(inputs, new)) / 4  # they really shared steps
    for x, s, n, got, solo in zip(inputs, MIX, new, mixed, alone):
        assert got == solo == reference(model, specs, x, s, n), (s, got, solo)
    plain = [reference(model, specs, x, None, n) for x, n in zip(inputs, new)]
    assert sum(got != p for got, p in zip(mixed, plain)) >= 5  # the steering acted
    assert mixed[3][0] == plain[3][0]  # "generated": the prompt pass, hence the first token, is unsteered


def test_smollm2_mixed_run_equals_alone_and_steering_generate(smollm2):
    model, tokenizer = smollm2
    d = model.config.hidden_size
    sae = random_sae(d, 64, "jumprelu", seed=3)
    table = torch.tensor([[60.0, -40.0, 3.0], [-50.0, 50.0, 2.0]])  # strong enough to change greedy tokens
    iv = pysteer.SparseIntervention.from_sae(sae, [3, 17, 40], table, ["add", "add", "scale"], layer=12)
    specs = {"all": pysteer.SteeringSpec([iv], positions="all"),
             "generated": pysteer.SteeringSpec([iv], positions="generated")}
    texts = ["The capital of France is", "Write one sentence about the sea.", "List three colours:",
             "def add(a, b):"]
    inputs = [tokenizer(t)["input_ids"] for t in texts]
    mix = [RequestSteering("all", 0), None, RequestSteering("generated", 1), RequestSteering("all", 1, 0.5)]
    new = 5
    with SteeredEngine(model, specs, **engine_configs(new, max_batch_tokens=24)) as engine:
        mixed = engine.generate(inputs, mix, max_new_tokens=new)
        alone = [engine.generate([x], [s], max_new_tokens=new)[0] for x, s in zip(inputs, mix)]
    for x, s, got, solo in zip(inputs, mix, mixed, alone):
        assert got == solo == reference(model, specs, x, s, new), (s, got, solo)
    plain = [reference(model, specs, x, None, new) for x in inputs]
    assert mixed[1] == plain[1] and sum(got != p for got, p in zip(mixed, plain)) >= 2  # the steering acted


def test_specs_added_and_removed_while_running_and_bad_steering_is_refused_before_queueing():
    model = tiny_model("llama")
    specs = mixed_specs()
    inputs = [p.tolist() for p in prompts(lengths=(5, 9, 7))]
    with SteeredEngine(model, {"all": specs["all"]}, spare_rows=1, **engine_configs()) as engine:
        first = engine.submit(inputs[0], RequestSteering("all", 1), max_new_tokens=NEW)
        engine.steering.add_spec("late", specs["prompt"])   # offered from the next step on
        engine.steering.remove_spec("all")                  # the running request keeps it
        second = engine.submit(inputs[1], RequestSteering("late", 1), max_new_tokens=NEW)
        refused = {
            "unknown steering spec 'all'": ("all", 404),
            "row 5 is out of range": ({"spec": "late", "row": 5}, 400),
            "finite number": ({"spec": "late", "scale": float("nan")}, 400),
            "unknown steering field": ({"spec": "late", "rows": 1}, 400),
        }
        for message, (steering, status) in refused.items():
            with pytest.raises(SteeringRequestError, match=message) as caught:
                engine.submit(inputs[2], steering)
            assert caught.value.status == status
        scaled = engine.submit(inputs[2], {"spec": "late", "row": 0, "scale": 2.0}, max_new_tokens=NEW)
        with pytest.raises(SteeringRequestError, match="spare rows") as caught:  # the one spare row is taken
            engine.submit(inputs[2], {"spec": "late", "row": 1, "scale": 3.0})
        assert caught.value.status == 429
        results = collect(engine.manager, [first, second, scaled])
        with pytest.raises(pysteer.SteeringSpecError, match="d_model"):  # a spec for another model
            other = pysteer.SteeringSpec([pysteer.DenseIntervention(1, torch.ones(WIDTH + 1) / 7, [[1.0]], "add")])
            engine.steering.add_spec("other", other)
        assert set(engine.steering.specs()) == {"late"}
        after = engine.generate([inputs[0]], max_new_tokens=NEW)[0]  # the removed spec is detached by now
        assert engine.steering._layout == [spec_digest(specs["prompt"])]
    assert results[first].generated_tokens == reference(model, specs, inputs[0], RequestSteering("all", 1), NEW)
    late = {"late": specs["prompt"]}
    assert results[second].generated_tokens == reference(model, late, inputs[1], RequestSteering("late", 1), NEW)
    assert results[scaled].generated_tokens == reference(model, late, inputs[2], RequestSteering("late", 0, 2.0), NEW)
    assert after == reference(model, specs, inputs[0], None, NEW)


def test_specs_are_held_by_content_and_unsteered_steps_launch_no_op(monkeypatch):
    model = tiny_model("llama")
    spec = tiny_spec(2)
    continuous = ContinuousSteering(model, {"a": spec, "b": tiny_spec(2)})  # equal content, two names
    assert continuous.specs()["a"]["digest"] == continuous.specs()["b"]["digest"] == spec_digest(spec)
    assert spec_digest(spec) != spec_digest(tiny_spec(2, strength=7.0))
    launched = []
    monkeypatch.setattr(ops, "launch_sparse_steer_", lambda *a, **k: launched.append(1))
    with SteeredEngine(model, {"a": spec, "b": tiny_spec(2)}, **engine_configs()) as engine:
        engine.generate([p.tolist() for p in prompts()], max_new_tokens=3)
        assert len(engine.steering._layout) == 1  # one attached group for the two names
    assert engine.steering.steps > 0 and not launched


def test_of_specs_steers_each_row_as_its_own_spec_alone():
    """Two specs with a set edit (no neutral coefficient) in one steering: rows of spec 0,
    spec 1 and −1 in one padded batch equal each spec attached alone."""
    model = tiny_model("phi3")
    a, b = tiny_spec(2), tiny_spec(3, strength=5.0)
    ids = torch.stack([p for p in prompts(lengths=(7, 7, 7, 7))])
    greedy = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        with pysteer.Steering.of_specs(model, [a, b]) as both:
            assert both.row_offsets == [0, 2]
            out = both.generate(ids, rows=[1, 2 + 2, -1, 2 + 0], **greedy)
        expected = []
        for row, (spec, r) in enumerate([(a, 1), (b, 2), (None, 0), (b, 0)]):
            if spec is None:
                expected.append(model.generate(ids[row:row + 1], **greedy))
                continue
            with pysteer.steer(model, spec.configuration(r)) as alone:
                expected.append(alone.generate(ids[row:row + 1], **greedy))
    assert torch.equal(out, torch.cat(expected))
    with pytest.raises(pysteer.SteeringSpecError, match="different positions"):
        with torch.no_grad(), pysteer.Steering.of_specs(model, [a, tiny_spec(1, "prompt")]) as mixed:
            mixed.generate(ids, rows=[0, 1, 2, 0], **greedy)


@requires_cuda
def test_mixed_run_under_the_engines_cuda_graphs_equals_eager():
    """With the engine's CUDA graphs on, steering is captured rather than a reason to turn them
    off: the same mixed run gives the same tokens as with graphs off (and as each request
    alone), and adding a spec mid-run (which drops the captured graphs) still steers."""
    model = tiny_model("llama").cuda()
    specs = mixed_specs()
    inputs = [p.tolist() for p in prompts(lengths=(5, 9, 13, 7, 11, 6, 12, 8))]
    runs = {}
    for graphs in (False, True):
        configs = engine_configs()
        configs["cb_config"].use_cuda_graph = graphs
        with SteeredEngine(model, specs, **configs) as engine:
            runs[graphs] = engine.generate(inputs, MIX, max_new_tokens=NEW)
            engine.steering.add_spec("late", tiny_spec(1, "all", strength=5.0))
            runs[graphs, "late"] = engine.generate(inputs[:2], ["late", None], max_new_tokens=NEW)
    assert runs[True] == runs[False]
    assert runs[True, "late"] == runs[False, "late"]
    plain = [reference(model, specs, x, None, NEW) for x in inputs[:1]]
    assert runs[True, "late"][0] != plain[0]

"""Discovery methods against planted answers, FeatureStats against brute force, SmolLM2 end to end.

The planted model is honest about what it is: a tiny random Llama whose decoder layer
``PLANT_LAYER`` is wrapped so that its output gains α·u at every position at or after a
*trigger* token (one of the instruction's tokens) — a stand-in for "the model represents
the instruction along u". Each method must find u (diff in means) or the SAE latent
whose encoder reads u (SAIF, Concise-SAE) among random ones.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import pysteer  # noqa: E402
from model_zoo import WIDTH, tiny_chat_model  # noqa: E402
from pysteer.discovery import (FeatureStats, collect_activations, compose, concise, diff_in_means,  # noqa: E402
                               evaluation_scorer, instruction_vectors, layer_search, saif, transfer)
from pysteer.discovery.cli import register  # noqa: E402
from pysteer.evaluation import builtin_prompts  # noqa: E402
from pysteer.discovery.diff_in_means import LayerScore  # noqa: E402
from pysteer.models import decode_new_tokens, encode_prompts  # noqa: E402
from pysteer.patching import decoder_layers  # noqa: E402
from pysteer.sae import SAE, random_sae  # noqa: E402

PLANT_LAYER = 1
ALPHA = 150.0
CONTENTS = ["Describe the sea.", "Tell me about trains.", "Explain how rain forms.",
            "Describe a busy market.", "Write about winter.", "Explain what a computer does."]
INSTRUCTION = "Respond entirely in zyxwv lowercase."
VARIANTS = ["Respond entirely in zyxwv lowercase.", "Write zyxwv, lowercase only.",
            "Escribe zyxwv en minúsculas.", "Réponds zyxwv en minuscules."]


# ------------------------------------------------------------------ planted model
class PlantedLayer(nn.Module):
    """Wraps a decoder layer: output += α·u at positions at/after any trigger token."""

    def __init__(self, layer: nn.Module, plants: list) -> None:
        super().__init__()
        self.layer, self.plants = layer, plants  # plants: [(direction [D], trigger ids set)]
        self.input_ids = None

    def forward(self, hidden_states, *args, **kwargs):
        out = self.layer(hidden_states, *args, **kwargs)
        hidden = out[0] if isinstance(out, tuple) else out
        ids = self.input_ids
        if ids is not None and ids.shape[1] == hidden.shape[1]:
            for direction, triggers in self.plants:
                hit = torch.isin(ids, torch.tensor(sorted(triggers)))
                seen = hit.long().cumsum(1).clamp(max=1).to(hidden.dtype)  # causal: at/after
                hidden = hidden + ALPHA * seen[..., None] * direction
        return (hidden,) + tuple(out[1:]) if isinstance(out, tuple) else hidden


def planted_model(plants_text: list, exclude_text: list, seed: int = 0):
    """(model, tokenizer, directions): each plant = text whose distinctive tokens trigger it."""
    model, tokenizer = tiny_chat_model(seed)
    background = set()
    for text in exclude_text:
        for chat in (True, False):
            background |= set(encode_prompts(tokenizer, [text], chat=chat)["input_ids"][0].tolist())
    gen = torch.Generator().manual_seed(seed + 100)
    directions, plants = [], []
    for texts in plants_text:
        ids = set()
        for text in texts:
            ids |= set(tokenizer(text, add_special_tokens=False)["input_ids"])
        triggers = ids - background
        assert triggers, f"no distinctive tokens in {texts}"
        u = torch.randn(WIDTH, generator=gen)
        for prev in directions:  # orthogonal plants, so each has its own latent
            u = u - (u @ prev) * prev
        u = u / u.norm()
        directions.append(u)
        plants.append((u, triggers))
    layers = decoder_layers(model)
    wrapper = PlantedLayer(layers[PLANT_LAYER], plants)
    layers[PLANT_LAYER] = wrapper

    def remember_ids(module, args, kwargs):
        wrapper.input_ids = kwargs.get("input_ids", args[0] if args else None)
    model.register_forward_pre_hook(remember_ids, with_kwargs=True)
    return model, tokenizer, directions


def planted_sae(directions: list, features: list, d_sae: int = 256, bias: float = -5.0) -> SAE:
    """A random SAE whose latent features[j] reads (and writes) directions[j]."""
    sae = random_sae(WIDTH, d_sae, "standard", seed=3)
    for u, f in zip(directions, features):
        sae.W_enc[:, f] = u
        sae.W_dec[f] = u
        sae.b_enc[f] = bias
    sae.hook_name = f"blocks.{PLANT_LAYER}.hook_resid_post"
    return sae


def layer_output(model, batch, layer: int) -> torch.Tensor:
    """Output of decoder layer ``layer`` [B, T, D] via a plain forward hook (independent of
    pysteer.discovery; ``output_hidden_states`` records the inner layer, before any wrapper)."""
    got = {}
    handle = decoder_layers(model)[layer].register_forward_hook(
        lambda m, a, out: got.setdefault("h", out[0] if isinstance(out, tuple) else out))
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        handle.remove()
    return got["h"].double()


@pytest.fixture(scope="module")
def instr_model():
    return planted_model([[INSTRUCTION] + VARIANTS], CONTENTS)


# ------------------------------------------------------------------ diff in means
def test_diff_in_means_recovers_planted_direction(instr_model):
    model, tokenizer, (u_star,) = instr_model
    results = instruction_vectors(model, tokenizer, INSTRUCTION, [PLANT_LAYER, 2],
                                  base_prompts=CONTENTS, progress=False)
    res = results[PLANT_LAYER]
    assert res.n_pairs == len(CONTENTS)
    assert float(res.direction @ u_star) > 0.99
    assert abs(float(res.direction.norm()) - 1) < 1e-5
    assert res.model["hidden_size"] == WIDTH


def test_answer_vectors_match_the_formula_by_hand(instr_model):
    """v = mean over pairs of (mean residual over R(a)'s tokens − over a's), each read after its
    chat-templated question, from a plain forward hook; an answer with no token is left out."""
    from pysteer.discovery import answer_vectors
    from pysteer.evaluation.metrics import prompt_token_ids

    model, tokenizer, _ = instr_model
    questions = ["Describe the sea.", "Tell me about trees.", "Say nothing."]
    answers = ["The Sea is Blue, and Deep.", "Trees Grow TALL.", "   "]
    res = answer_vectors(model, tokenizer, questions, answers, str.lower, [PLANT_LAYER], instruction="lower")
    res = res[PLANT_LAYER]

    def answer_mean(question, answer):
        prompt = prompt_token_ids(tokenizer, question, True)
        ids = torch.tensor([prompt + tokenizer(answer, add_special_tokens=False)["input_ids"]])
        return layer_output(model, {"input_ids": ids}, PLANT_LAYER)[0, len(prompt):].mean(0)
    v = torch.stack([answer_mean(q, a.lower()) - answer_mean(q, a) for q, a in zip(questions[:2], answers[:2])]).mean(0)
    assert res.n_pairs == 2 and res.read_out == "answers"
    assert torch.allclose(res.vector.double(), v, atol=1e-4)
    assert res.spec("add", 3.0, positions="prompt").metadata["read_out"] == "answers"
    with pytest.raises(ValueError, match="changes none"):
        answer_vectors(model, tokenizer, questions[:1], ["already lowercase."], str.lower, [PLANT_LAYER])
    with pytest.raises(ValueError, match="aligned"):
        answer_vectors(model, tokenizer, questions, answers[:2], str.lower, [PLANT_LAYER])


def test_next_token_vectors_match_the_formula_by_hand(instr_model):
    """v = mean over answers with a comma of (mean residual at the positions whose next token
    has no comma − at those whose next token has one); the residual predicting answer token j
    is the one at position len(prompt) + j − 1, read by a plain forward hook."""
    from pysteer.discovery import next_token_vectors
    from pysteer.evaluation.metrics import prompt_token_ids

    model, tokenizer, _ = instr_model
    questions = ["Describe the sea.", "Tell me about trees.", "Say hello."]
    answers = ["The sea is blue, deep, and cold.", "Trees grow tall", "Hello, friend"]
    has_comma = lambda piece: "," in piece  # noqa: E731
    res = next_token_vectors(model, tokenizer, questions, answers, has_comma, [PLANT_LAYER], instruction="no_comma")
    res = res[PLANT_LAYER]

    diffs = []
    for question, answer in zip(questions, answers):
        prompt = prompt_token_ids(tokenizer, question, True)
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        hidden = layer_output(model, {"input_ids": torch.tensor([prompt + answer_ids])}, PLANT_LAYER)[0]
        comma = [hidden[len(prompt) + j - 1] for j, i in enumerate(answer_ids) if "," in tokenizer.decode([i])]
        other = [hidden[len(prompt) + j - 1] for j, i in enumerate(answer_ids) if "," not in tokenizer.decode([i])]
        if comma and other:
            diffs.append(torch.stack(other).mean(0) - torch.stack(comma).mean(0))
    assert len(diffs) == 2                              # the answer without a comma is left out
    assert res.n_pairs == 2 and res.read_out == "next-token"
    assert torch.allclose(res.vector.double(), torch.stack(diffs).mean(0).double(), atol=1e-4)
    with pytest.raises(ValueError, match="nothing to read"):
        next_token_vectors(model, tokenizer, questions[1:2], answers[1:2], has_comma, [PLANT_LAYER])
    with pytest.raises(ValueError, match="aligned"):
        next_token_vectors(model, tokenizer, questions, answers[:2], has_comma, [PLANT_LAYER])
    with pytest.raises(ValueError, match="at least one layer"):
        next_token_vectors(model, tokenizer, questions, answers, has_comma, [])


def test_projection_form_matches_paper_formula(instr_model):
    """z̄, u from raw hidden states; steered layer output equals h + (z̄ − h·u)·u."""
    model, tokenizer, _ = instr_model
    withs = [f"{c}\n{INSTRUCTION}" for c in CONTENTS]
    res = diff_in_means(model, tokenizer, withs, CONTENTS, [PLANT_LAYER], progress=False)[PLANT_LAYER]

    def last_hidden(prompts):
        return layer_output(model, encode_prompts(tokenizer, prompts), PLANT_LAYER)[:, -1]
    x_w, x_wo = last_hidden(withs), last_hidden(CONTENTS)
    v = (x_w - x_wo).mean(0)
    u = v / v.norm()
    z_bar = float((x_w @ u).mean())
    assert torch.allclose(res.direction.double(), u, atol=1e-5)
    assert res.z_bar == pytest.approx(z_bar, rel=1e-5, abs=1e-5)

    batch = encode_prompts(tokenizer, ["Describe a forest.", "Hi"])
    h = layer_output(model, batch, PLANT_LAYER)
    with pysteer.steer(model, res.spec(mode="project")):
        steered = layer_output(model, batch, PLANT_LAYER)
    expected = h + (z_bar - h @ u)[..., None] * u
    assert torch.allclose(steered, expected, atol=1e-4)
    assert torch.allclose(steered @ u, torch.full(steered.shape[:2], z_bar, dtype=torch.float64), atol=1e-4)
    add = res.spec(mode="add", coefficient=2.5)
    assert add.interventions[0].coefficients.item() == 2.5
    assert res.spec(mode="add").interventions[0].coefficients.item() == pytest.approx(res.norm)


def test_layer_search_disqualifies_degenerate_layers(instr_model):
    model, tokenizer, _ = instr_model
    seen = []

    def scorer(model_, tokenizer_, spec, validation):  # layer 2 best but degenerate
        if spec is None:
            return LayerScore(0.1, 0.0)
        layer = spec.interventions[0].layer
        seen.append(layer)
        return {0: (0.3, 0.0), 1: (0.6, 0.1), 2: {"accuracy": 0.9, "degenerate_rate": 0.5}}[layer]

    search = layer_search(model, tokenizer, INSTRUCTION, ["v"], scorer, candidate_layers=[0, 1, 2],
                          base_prompts=CONTENTS, progress=False)
    assert seen == [0, 1, 2]
    assert search.scores[2].disqualified and not search.scores[1].disqualified
    assert search.best_layer == 1 and search.baseline.accuracy == 0.1
    spec = search.spec()
    assert spec.layers == [1] and "layer_search" in spec.metadata


def test_layer_search_picks_a_coefficient_per_layer_in_one_scoring_call(instr_model):
    model, tokenizer, _ = instr_model
    calls = []

    class GridScorer:  # accuracy grows with |c| but |c| ≥ 2 × default degenerates at layer 1
        def __call__(self, model_, tokenizer_, spec, validation):
            return LayerScore(0.0, 0.0)

        def score_configs(self, model_, tokenizer_, spec, validation):
            iv = spec.interventions[0]
            calls.append((iv.layer, spec.n_configs))
            coefs = iv.coefficients[:, 0].tolist()
            return [LayerScore(abs(c) / (1 + abs(c)),
                               0.5 if (iv.layer == 1 and abs(c) >= 2 * abs(coefs[0]) - 1e-6) else 0.0)
                    for c in coefs]

    search = layer_search(model, tokenizer, INSTRUCTION, ["v"], GridScorer(), candidate_layers=[0, 1],
                          base_prompts=CONTENTS, mode="add", scales=[1, 2, 4], progress=False)
    assert calls == [(0, 3), (1, 3)]                      # one scoring call per layer, 3 rows each
    norms = {layer: search.results[layer].norm for layer in (0, 1)}
    assert search.scores[1].coefficient == pytest.approx(norms[1])   # 2×, 4× degenerate at layer 1
    assert [s.disqualified for s in search.grid[1]] == [False, True, True]
    assert search.scores[0].coefficient == pytest.approx(4 * norms[0])
    chosen = search.spec().interventions[0]
    assert chosen.coefficients.item() == pytest.approx(search.scores[search.best_layer].coefficient)


def test_layer_search_disqualifies_coefficients_whose_perplexity_exceeds_the_bound(instr_model):
    model, tokenizer, _ = instr_model

    class PerplexityScorer:  # IFR and perplexity both grow with the coefficient; baseline ppl 2
        def __call__(self, model_, tokenizer_, spec, validation):
            return LayerScore(0.0, 0.0, perplexity=2.0)

        def score_configs(self, model_, tokenizer_, spec, validation):
            scales = [c / spec.interventions[0].coefficients[0, 0].item()
                      for c in spec.interventions[0].coefficients[:, 0].tolist()]
            return [LayerScore(0.1 * s, 0.0, perplexity=2.0 * s) for s in scales]

    search = layer_search(model, tokenizer, INSTRUCTION, ["v"], PerplexityScorer(), candidate_layers=[0],
                          base_prompts=CONTENTS, mode="add", scales=[1, 1.5, 2, 4], max_perplexity_ratio=1.5,
                          progress=False)
    assert [s.disqualified for s in search.grid[0]] == [False, False, True, True]   # ppl 2, 3 | 4, 8
    assert search.scores[0].coefficient == pytest.approx(1.5 * search.results[0].norm)
    with pytest.raises(ValueError, match="reports perplexity"):
        layer_search(model, tokenizer, INSTRUCTION, ["v"], lambda *a: LayerScore(0.0, 0.0), candidate_layers=[0],
                     base_prompts=CONTENTS, max_perplexity_ratio=1.5, progress=False)


def test_evaluation_scorer_rows_equal_one_spec_at_a_time():
    model, tokenizer = tiny_chat_model(0)
    validation = builtin_prompts("train", ["punctuation:no_comma"])[:3]
    direction = torch.nn.functional.normalize(torch.randn(model.config.hidden_size,
                                                          generator=torch.Generator().manual_seed(0)), dim=0)
    coefficients = [0.0, 4.0, 40.0]
    scorer = evaluation_scorer(max_new_tokens=6, batch_size=3)
    spec = pysteer.SteeringSpec([pysteer.DenseIntervention(1, direction, [[c] for c in coefficients], "add")])
    together = scorer.score_configs(model, tokenizer, spec, validation)
    alone = [scorer(model, tokenizer, pysteer.SteeringSpec([pysteer.DenseIntervention(1, direction, [[c]], "add")]),
                    validation) for c in coefficients]
    assert together == alone
    assert together[0] == scorer(model, tokenizer, None, validation)   # c = 0 is the unsteered model


def test_compose_and_transfer(instr_model, tmp_path):
    model, tokenizer, _ = instr_model
    res = instruction_vectors(model, tokenizer, INSTRUCTION, [0, 2], base_prompts=CONTENTS[:3],
                              progress=False)
    both = compose(res[0].spec("add", 3.0), res[2].spec("project"))
    assert both.layers == [0, 2] and len(both.interventions) == 2
    batch = encode_prompts(tokenizer, ["Describe the sea."])
    kwargs = dict(attention_mask=batch["attention_mask"], max_new_tokens=4, do_sample=False)
    with torch.no_grad():
        plain = model.generate(batch["input_ids"], **kwargs)
        with pysteer.steer(model, both) as s:
            steered = s.generate(batch["input_ids"], **kwargs)
    assert steered.shape == plain.shape
    # transfer to another model of the same width but a different name and depth
    target, _ = tiny_chat_model(seed=5)
    target.config.num_hidden_layers = 3
    moved = transfer(both, target)
    assert moved.model["hidden_size"] == WIDTH and moved.metadata["transferred_from"] == both.model
    with pysteer.steer(target, moved):
        pass
    with pytest.raises(pysteer.SteeringSpecError, match="width"):
        transfer(both, {"hidden_size": WIDTH + 1, "num_hidden_layers": 3})
    deeper = transfer(both, {"hidden_size": WIDTH, "num_hidden_layers": 5, "name": "deep"}, "relative")
    assert deeper.layers == [0, 4]
    moved.save(tmp_path / "moved")
    assert pysteer.SteeringSpec.load(tmp_path / "moved").metadata["transferred_from"]["hidden_size"] == WIDTH


# ------------------------------------------------------------------ SAIF
def test_saif_recovers_planted_latent(instr_model, tmp_path):
    model, tokenizer, (u_star,) = instr_model
    planted = 137
    sae = planted_sae([u_star], [planted])
    result = saif(model, tokenizer, sae, INSTRUCTION, variants=VARIANTS, contents=CONTENTS,
                  n_features=15, strength=6.0, progress=False, token_chunk=5, feature_chunk=50)
    assert result.features[0] == planted
    assert len(result.features) == 15
    assert result.scores["consistency"][planted] == 1.0
    assert float(result.weights.sum()) == pytest.approx(6.0, rel=1e-5)
    assert result.weights[0] == result.weights.max()
    path = result.save(tmp_path / "saif")
    doc = json.loads((path / "discovery.json").read_text())
    assert doc["features"][0]["feature"] == planted
    spec = pysteer.SteeringSpec.load(path)
    assert spec.interventions[0].features == result.features and spec.metadata["method"] == "saif"


# ------------------------------------------------------------------ Concise-SAE
def test_concise_recovers_planted_supportive_and_opposing():
    follow = ["the quiet river hums softly", "a quiet hill, softly green", "quiet snow falls softly",
              "softly the quiet lamps glow", "quiet cats sleep softly"]
    violate = ["THE LOUD RIVER ROARS", "A LOUD HILL, BRIGHT GREEN", "LOUD SNOW FALLS HARD",
               "THE LOUD LAMPS BLAZE", "LOUD CATS SHOUT"]
    model, tokenizer, (u_f, u_v) = planted_model([follow, violate], ["Lowercase", "\n"], seed=1)
    sup, opp = 21, 200
    sae = planted_sae([u_f, u_v], [sup, opp])
    result = concise(model, tokenizer, sae, "Write in lowercase.", "Lowercase",
                     pairs=list(zip(follow, violate)), k=15, tau=ALPHA / 2, coefficient=3.0,
                     progress=False, feature_chunk=64)
    assert result.supportive[0] == sup and result.opposing[0] == opp
    assert result.consistency[sup] == 1.0 and result.consistency[opp] == -1.0
    assert len(result.features) == 30 and not set(result.supportive) & set(result.opposing)
    row = result.initial_coefficients[0]
    assert row[:15].eq(3.0).all() and row[15:].eq(-3.0).all()
    table = {r["feature"]: r for r in result.table()}
    assert table[sup]["mean_follow"] > table[sup]["mean_violate"] + ALPHA / 2
    spec = result.spec()
    assert spec.n_configs == 1 and spec.interventions[0].width == 30


# ------------------------------------------------------------------ FeatureStats
@pytest.mark.parametrize("arch", ["standard", "jumprelu", "topk"])
def test_feature_stats_equal_brute_force(arch):
    sae = random_sae(24, 97, arch, k=9, seed=4)
    gen = torch.Generator().manual_seed(0)
    xs = {"a": torch.randn(41, 24, generator=gen), "b": torch.randn(23, 24, generator=gen)}
    pa, pb = torch.randn(17, 24, generator=gen), torch.randn(17, 24, generator=gen)
    stats = FeatureStats(sae, ("a", "b"), threshold=0.05, tau=0.1, token_chunk=6, feature_chunk=13)
    for name, x in xs.items():
        stats.update(x[:30], name)  # two updates per group: accumulation across calls
        stats.update(x[30:], name)
    stats.update_pairs(pa, pb)
    for name, x in xs.items():
        dense = sae.encode(x)
        assert torch.allclose(stats.mean(name), dense.mean(0), atol=1e-5)
        assert torch.allclose(stats.fire_rate(name), (dense > 0.05).float().mean(0))
        assert torch.allclose(stats.maximum(name), dense.amax(0), atol=1e-5)
        assert int(stats.count[stats.groups.index(name)]) == len(x)
    delta = sae.encode(pa) - sae.encode(pb)
    expected = ((delta > 0.1).float().mean(0) - (delta < -0.1).float().mean(0))
    assert torch.allclose(stats.consistency(), expected)
    assert torch.allclose(stats.mean_delta(), delta.mean(0), atol=1e-5)
    with pytest.raises(KeyError, match="unknown group"):
        stats.update(pa, "c")
    with pytest.raises(ValueError, match=r"\[tokens, 24\]"):
        stats.update(torch.zeros(3, 5), "a")


@pytest.mark.parametrize("arch", ["standard", "jumprelu", "topk"])
def test_feature_stats_count_zeros_alike_for_every_architecture(arch):
    """Below a negative threshold a zero activation fires, whether ReLU, the jump or the
    top-k made it zero: one definition, f_i > threshold, for every architecture."""
    sae = random_sae(24, 97, arch, k=9, seed=4)
    x = torch.randn(19, 24, generator=torch.Generator().manual_seed(1))
    stats = FeatureStats(sae, ("a",), threshold=-0.01, token_chunk=4, feature_chunk=13)
    stats.update(x, "a")
    assert torch.equal(stats.fire_rate("a"), (sae.encode(x) > -0.01).float().mean(0))
    assert torch.equal(stats.fire_rate("a"), torch.ones(97))


def test_feature_stats_memory_is_bounded():
    """Small version of bench/bench_collect_memory.py: RSS peak ≪ the dense tokens × d_sae."""
    from bench_collect_memory import peak_rss_delta, run_stats
    if peak_rss_delta(lambda: None)[0] is None:
        pytest.skip("needs Linux /proc/self/clear_refs to measure peak RSS")
    sae = random_sae(16, 16384, "standard", seed=0)
    cpu = torch.device("cpu")
    run_stats(sae, 64, 64, cpu, token_chunk=256, feature_chunk=4096)  # warm up allocator/kernels
    tokens = 6000
    peak, stats = peak_rss_delta(lambda: run_stats(sae, tokens, 1024, cpu, token_chunk=256,
                                                   feature_chunk=4096))
    dense = tokens * sae.d_sae * 4  # 393 MB
    assert int(stats.count.sum()) == tokens
    # working set: a 256 × 4096 fp32 block (4 MiB) and its masks; allow allocator slack
    assert peak < dense / 10, f"peak RSS grew by {peak / 2**20:.0f} MiB"
    assert stats.state_nbytes() == 2 * 16384 * (8 + 8 + 4) + 3 * 16384 * 8  # O(groups × d_sae)


# ------------------------------------------------------------------ collection
def test_collect_positions_match_hidden_states(instr_model):
    model, tokenizer, _ = instr_model
    prompts = ["Describe the sea.", "A longer prompt about forests and trees."]
    got = collect_activations(model, tokenizer, prompts, [0], "last", progress=False)[0]
    batch = encode_prompts(tokenizer, prompts)
    hs = layer_output(model, batch, 0).float()
    assert torch.allclose(got, hs[:, -1], atol=1e-6)
    every = collect_activations(model, tokenizer, prompts, [0], "all", progress=False)[0]
    assert every.shape[0] == int(batch["attention_mask"].sum())
    assert torch.allclose(every, hs[batch["attention_mask"].bool()], atol=1e-6)
    kw = collect_activations(model, tokenizer, prompts, [0], "keyword", keyword="Lowercase",
                             chat=True, progress=False)[0]
    kb = encode_prompts(tokenizer, [p + "\nLowercase" for p in prompts])
    khs = layer_output(model, kb, 0).float()
    # the chat template's end-of-turn tokens follow the keyword: the keyword is not the last token
    ends = [tokenizer.decode(kb["input_ids"][r]).rfind("Lowercase") for r in range(2)]
    assert all(e > 0 for e in ends)
    matches = [(khs[r] - kw[r]).abs().amax(-1).argmin().item() for r in range(2)]
    for r, pos in enumerate(matches):
        assert tokenizer.decode(kb["input_ids"][r, :pos + 1]).endswith("Lowercase")
    assert decoder_layers(model)[0]._forward_hooks == {}  # hooks removed


# ------------------------------------------------------------------ CLI
def _parser():
    parser = argparse.ArgumentParser(prog="pysteer")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_parses_and_refuses_existing_out(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    args = _parser().parse_args(["discover", "diff-means", "--instruction", "x", "--layer", "3",
                                 "--out", str(tmp_path / "out")])
    assert args.method == "diff-means" and args.layer == 3 and args.mode == "project"
    with pytest.raises(FileExistsError, match="--overwrite"):
        args.run(args)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    args = _parser().parse_args(["discover", "concise", "--instruction", "lowercase", "--keyword",
                                 "Lowercase", "--sae", "s", "--out", "o", "--tau", "0.5"])
    assert args.tau == 0.5 and args.keyword == "Lowercase"
    with pytest.raises(SystemExit):
        _parser().parse_args(["discover", "saif", "--out", "o"])  # --instruction is required


def test_cli_layer_search_scores_layers_on_train_prompts_only(tmp_path, monkeypatch):
    """The layer a user gets is chosen on train prompts: the held-out ones stay unseen."""
    dim = sys.modules["pysteer.discovery.diff_in_means"]  # the package exports a function of that name
    model, tokenizer = tiny_chat_model(0)
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    seen, search = [], dim.layer_search

    def spy(model, tokenizer, instruction, validation, *args, **kwargs):
        seen.extend(validation)
        return search(model, tokenizer, instruction, validation, *args, **kwargs)

    monkeypatch.setattr(dim, "layer_search", spy)
    args = _parser().parse_args(["discover", "diff-means", "--instruction", "lowercase", "--layers", "0", "1",
                                 "--model", str(tmp_path / "tiny"), "--n-prompts", "2", "--n-validation", "3",
                                 "--max-new-tokens", "3", "--quiet", "--out", str(tmp_path / "dm")])
    assert args.run(args) == 0
    assert len(seen) == 3 and {p.split for p in seen} == {"train"}
    assert pysteer.SteeringSpec.load(tmp_path / "dm").layers[0] in (0, 1)


# ------------------------------------------------------------------ SmolLM2 end to end
def _changes_output(model, tokenizer, spec, prompt="Describe the sea.") -> tuple[str, str]:
    batch = encode_prompts(tokenizer, [prompt])
    kwargs = dict(attention_mask=batch["attention_mask"], max_new_tokens=8, do_sample=False)
    with torch.no_grad():
        plain = model.generate(batch["input_ids"], **kwargs)
        with pysteer.steer(model, spec) as s:
            steered = s.generate(batch["input_ids"], **kwargs)
    n = batch["input_ids"].shape[1]
    return decode_new_tokens(tokenizer, plain, n)[0], decode_new_tokens(tokenizer, steered, n)[0]


def test_smollm2_end_to_end_each_method(smollm2, tmp_path):
    model, tokenizer = smollm2
    layer = 20
    res = instruction_vectors(model, tokenizer, "Use only lowercase letters.", [layer], n_prompts=4,
                              batch_size=4, progress=False)[layer]
    plain, steered = _changes_output(model, tokenizer, res.spec("add", 4 * res.norm))
    assert plain != steered

    sae = random_sae(576, 2048, "standard", seed=0)
    sae.hook_name = f"blocks.{layer}.hook_resid_post"
    sae.save(tmp_path / "sae")
    # a random SAE's latents mean nothing: steer hard enough (relative to the residual's
    # instruction-sized differences, ‖v‖) that generation must change
    s_res = saif(model, tokenizer, str(tmp_path / "sae"), "lowercase", n_contents=2, progress=False,
                 strength=12 * res.norm)
    plain, steered = _changes_output(model, tokenizer, s_res.save(tmp_path / "saif") and
                                     pysteer.SteeringSpec.load(tmp_path / "saif"))
    assert plain != steered and len(s_res.features) == 15

    c_res = concise(model, tokenizer, sae, "lowercase", n_pairs=2, max_new_tokens=12,
                    coefficient=2 * res.norm,
                    progress=False)
    assert len(c_res.pairs) == 2 and all(isinstance(t, str) for p in c_res.pairs for t in p)
    c_res.save(tmp_path / "concise")
    spec = pysteer.SteeringSpec.load(tmp_path / "concise")
    assert spec.interventions[0].width == 30
    plain, steered = _changes_output(model, tokenizer, spec)
    assert plain != steered
    doc = json.loads((tmp_path / "concise" / "discovery.json").read_text())
    assert len(doc["features"]) == 30 and doc["keyword"] == "Lowercase"


def test_builtin_discovery_queries_share_no_request_with_held_out_prompts():
    """Discovery must not see a held-out prompt's content before it is evaluated on it."""
    from pysteer.discovery.prompts import BASE_QUERIES
    from pysteer.evaluation import builtin_prompts

    held_out = {p.base_prompt for p in builtin_prompts("heldout")}
    assert held_out and not held_out & set(BASE_QUERIES)

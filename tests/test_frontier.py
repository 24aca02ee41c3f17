"""The IFR–quality frontier: one batched sweep equals a generation per strength; the bounds
and the operating point; the ``pysteer frontier`` command."""

from __future__ import annotations

import json
import math

import pytest
import torch

import pysteer
from model_zoo import STEERED_LAYER, WIDTH, tiny_chat_model
from pysteer import DenseIntervention, SteeringSpec
from pysteer.cli import main
from pysteer.evaluation import builtin_prompts, generate_responses, score_responses
from pysteer.experiment import ExperimentError
from pysteer.experiment.frontier import (Frontier, FrontierPoint, QualityBounds, best_point, operating_point, scaled,
                                         sign_test, sweep)

LOWERCASE = "change_case:english_lowercase"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: a second thread only waits (see test_experiment.py)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def chat():
    return tiny_chat_model(0)


def _spec():
    u = torch.randn(WIDTH, generator=torch.Generator().manual_seed(11))
    return SteeringSpec([DenseIntervention(STEERED_LAYER, u / u.norm(), [[6.0]], "add")])


def test_sweep_equals_one_generation_per_strength(chat):
    model, tokenizer = chat
    prompts = builtin_prompts("heldout", [LOWERCASE])[:3]
    texts = [p.base_prompt for p in prompts]
    strengths = [0.0, 1.0, 4.0]
    frontier = sweep(model, tokenizer, _spec(), prompts, strengths, max_new_tokens=6, keep_responses=True)
    plain = generate_responses(model, tokenizer, texts, max_new_tokens=6)
    assert frontier.unsteered.responses == plain and frontier.unsteered.strength is None
    assert frontier.unsteered.outcomes["ppl_ratio"] == frontier.unsteered.outcomes["ppl_ratio_instructed"] == 1.0
    for s, point in zip(strengths, frontier.points):
        assert point.strength == s
        with pysteer.steer(model, scaled(_spec(), s)) as steering:
            alone = generate_responses(model, tokenizer, texts, steering=steering, rows=0, max_new_tokens=6)
        assert point.responses == alone, s
        report = score_responses(prompts, alone, instruction_in_prompt=False)
        assert point.outcomes["ifr_loose"] == report.ifr_loose
        assert point.outcomes["degenerate_rate"] == report.degenerate_rate
    assert frontier.points[0].responses == plain            # strength 0 of an add edit is no edit
    assert frontier.points[0].outcomes["ppl_ratio"] == pytest.approx(1.0)
    assert frontier.points[2].responses != plain            # and the strong one shows
    assert scaled(_spec(), 2.5).interventions[0].coefficients.item() == pytest.approx(15.0)
    # round trip through JSON keeps every number
    again = Frontier.from_json(json.loads(json.dumps(frontier.to_json())))
    assert [p.outcomes for p in again.points] == [{k: p.outcomes[k] for k in again.points[0].outcomes}
                                                  for p in frontier.points]


def test_bad_sweeps_are_refused(chat):
    model, tokenizer = chat
    prompts = builtin_prompts("heldout", [LOWERCASE])[:1]
    for strengths, match in (([], "at least one"), ([1.0, -1.0], "≥ 0"), ([1.0, 1.0], "distinct"),
                             ([math.nan], "finite")):
        with pytest.raises(ExperimentError, match=match):
            sweep(model, tokenizer, _spec(), prompts, strengths)
    two = _spec().with_coefficients([torch.tensor([[1.0], [2.0]])])
    with pytest.raises(ExperimentError, match="one configuration"):
        sweep(model, tokenizer, two, prompts, [1.0])
    with pytest.raises(ExperimentError, match="at least one prompt"):
        sweep(model, tokenizer, _spec(), [], [1.0])


def _point(strength, ifr, degenerate=0.0, ratio=1.0, n=20):
    """A point on n prompts whose first round(ifr·n) pass: two such points disagree only on the
    prompts between their pass counts, all in the higher one's favour."""
    passes = round(ifr * n)
    return FrontierPoint(strength, {"ifr_loose": ifr, "degenerate_rate": degenerate, "ppl_ratio_instructed": ratio,
                                    "ppl_ratio": None if ratio is None else 3 * ratio,
                                    "followed_loose": [True] * passes + [False] * (n - passes)})


def test_operating_point_is_the_best_point_within_the_bounds():
    base = _point(None, 0.1)
    frontier = Frontier([_point(0.5, 0.3), _point(1.0, 0.6), _point(1.5, 0.6), _point(2.0, 0.9, ratio=1.6),
                         _point(3.0, 1.0, degenerate=0.2), _point(4.0, 1.0, ratio=None)], base, [], False, 8)
    bounds = QualityBounds()
    assert operating_point(frontier, bounds).strength == 1.0          # tie at 0.6: the gentler edit
    assert bounds.failures(frontier.points[3].outcomes) == ["perplexity"]
    assert bounds.failures(frontier.points[4].outcomes) == ["degenerate"]
    assert bounds.failures(frontier.points[5].outcomes) == ["perplexity"]  # no ratio: not acceptable
    assert operating_point(frontier, QualityBounds(max_ppl_ratio=2.0)).strength == 2.0
    # the sent-prompt reference is 3x here: nothing is within 1.5
    assert operating_point(frontier, QualityBounds(reference="sent")) is None
    assert QualityBounds().constraints() == {"degenerate_rate": ("<=", 0.1), "ppl_ratio_instructed": ("<=", 1.5)}
    # the tuner's constraints take the same relative degenerate limit as holds()
    assert QualityBounds().constraints({"degenerate_rate": 0.25})["degenerate_rate"] == ("<=", 0.25)
    assert QualityBounds().constraints({"degenerate_rate": 0.05})["degenerate_rate"] == ("<=", 0.1)
    # the degenerate limit is the looser of the bound and the unsteered model's own rate
    loops = _point(None, 0.1, degenerate=0.15)
    assert bounds.failures(frontier.points[4].outcomes, loops.outcomes) == ["degenerate"]   # 0.2 > 0.15
    assert bounds.holds(_point(1.0, 0.3, degenerate=0.15).outcomes, loops.outcomes)
    assert not bounds.holds(_point(1.0, 0.3, degenerate=0.15).outcomes)
    assert operating_point(Frontier([_point(1.0, 0.5, degenerate=0.15)], loops, [], False, 8), bounds).strength == 1.0
    # a point within the bounds that does not beat the unsteered model is no operating point
    assert operating_point(Frontier(frontier.points, _point(None, 0.6), [], False, 8), bounds) is None
    assert operating_point(Frontier(frontier.points, _point(None, 0.3), [], False, 8), bounds).strength == 1.0
    assert best_point({12: Frontier([_point(1.0, 0.5)], _point(None, 0.6), [], False, 8),
                       15: Frontier([_point(2.0, 0.5)], _point(None, 0.2), [], False, 8)}, bounds)[0] == 15
    with pytest.raises(ExperimentError, match="reference"):
        QualityBounds(reference="model")
    with pytest.raises(ExperimentError, match="max_ppl_ratio"):
        QualityBounds(max_ppl_ratio=math.inf)


def test_sign_test_by_hand():
    # b prompts pass only steered, c only unsteered: P(X >= b), X ~ Binomial(b + c, 1/2)
    assert sign_test([True] * 5 + [False] * 5, [False] * 10) == pytest.approx(1 / 32)
    assert sign_test([True, True, True, False, True], [False, False, False, True, True]) == pytest.approx(5 / 16)
    assert sign_test([True, False], [True, False]) == 1.0                    # no prompt differs
    assert sign_test([False] * 4, [True] * 4) == 1.0                          # all losses
    with pytest.raises(ExperimentError, match="pairs prompts"):
        sign_test([True], [True, False])


def test_a_gain_that_chance_gives_is_no_operating_point():
    base = _point(None, 0.0)
    one_prompt, four, five = _point(0.5, 0.05), _point(1.0, 0.2), _point(2.0, 0.25)
    # one prompt of 20 (p = 1/2) or four (p = 1/16) is what chance gives; five (p = 1/32) is not
    assert operating_point(Frontier([one_prompt, four], base, [], False, 8)) is None
    assert operating_point(Frontier([one_prompt, four, five], base, [], False, 8)).strength == 2.0
    # gains and losses on different prompts: +2 net from 4 wins and 2 losses (p = 11/32)
    mixed = FrontierPoint(1.0, {**four.outcomes, "followed_loose": [True] * 4 + [False] * 16})
    swapped = FrontierPoint(None, {**base.outcomes, "ifr_loose": 0.1,
                                   "followed_loose": [False] * 4 + [True] * 2 + [False] * 14})
    assert sign_test(mixed.outcomes["followed_loose"], swapped.outcomes["followed_loose"]) == pytest.approx(11 / 32)
    assert operating_point(Frontier([mixed], swapped, [], False, 8)) is None
    # significance 1 takes any gain; a point without per-prompt outcomes cannot be tested
    assert operating_point(Frontier([one_prompt], base, [], False, 8), significance=1).strength == 0.5
    bare = FrontierPoint(0.5, {k: v for k, v in one_prompt.outcomes.items() if k != "followed_loose"})
    with pytest.raises(ExperimentError, match="per-prompt outcomes"):
        operating_point(Frontier([bare], base, [], False, 8))
    with pytest.raises(ExperimentError, match="significance"):
        operating_point(Frontier([one_prompt], base, [], False, 8), significance=0)


def test_frontier_cli_writes_json_and_plot(chat, tmp_path, capsys):
    model, tokenizer = chat
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    _spec().save(tmp_path / "spec")
    out = tmp_path / "front"
    argv = ["frontier", "--model", str(tmp_path / "tiny"), "--steering", str(tmp_path / "spec"), "--type",
            "lowercase", "--n-prompts", "2", "--strengths", "0", "2", "--max-new-tokens", "4", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    doc = json.loads((out / "frontier.json").read_text())
    assert [p["strength"] for p in doc["points"]] == [0.0, 2.0] and len(doc["prompt_keys"]) == 2
    assert doc["split"] == "heldout" and doc["bounds"]["ratio_outcome"] == "ppl_ratio_instructed"
    assert len(doc["points"][1]["responses"]) == 2 and (out / "frontier.png").stat().st_size > 0
    assert "operating point (the best within the bounds that beats the unsteered model, sign test p <= 0.05)" in printed
    assert doc["significance"] == 0.05 and len(doc["points"][1]["followed_loose"]) == 2
    best = operating_point(Frontier.from_json(doc))
    assert doc["operating_point"] == (None if best is None else best.strength)
    # what a user saved is not replaced without --overwrite; a bad strength fails before the model loads
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(argv[:-2] + ["--out", str(tmp_path / "o2"), "--strengths", "-1"])
    assert "0 or more" in capsys.readouterr().err and not (tmp_path / "o2").exists()

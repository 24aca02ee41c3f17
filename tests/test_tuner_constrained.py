"""The tuner's goals beyond one reward: outcome constraints, several objectives, grouped spaces.

Synthetic objectives on small boxes (no model, except one check that a grouped space
steers a real model exactly as the full space does): each test runs in a few seconds.
"""

from __future__ import annotations

import json

import pytest
import torch

from model_zoo import STEERED_LAYER, WIDTH, tiny_chat_model
from pysteer import SparseIntervention, SteeringSpec
from pysteer.sae import random_sae
from pysteer.tuner import (AcquisitionOptions, BatchedObjective, Box, GroupedSearchSpace, History, TunerError,
                           grouped_search_space, pareto_mask, search_space, tune)

CHEAP = AcquisitionOptions(num_restarts=2, raw_samples=64, mc_samples=32, maxiter=30)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BOUND = {"r2": ("<=", 0.5)}


def disc_problem(X: torch.Tensor) -> list[dict]:
    """Maximise f = x0 + x1 on [0, 1]² subject to r2 = x0² + x1² ≤ 0.5.

    Unconstrained optimum (1, 1), f = 2, r2 = 2: infeasible. Constrained optimum
    (0.5, 0.5), f = 1 (the disc's edge closest to the gradient direction)."""
    return [{"reward": float(x.sum()), "f": float(x.sum()), "r2": float((x * x).sum())} for x in X]


def unit2() -> Box:
    return Box([0.0, 0.0], [1.0, 1.0])


# ----------------------------------------------------------------------------- constraints


def test_constrained_tuning_finds_best_feasible_point(tmp_path):
    # 6 rounds × q 4 = 24 evaluations; seeds 0-3 reached f = 0.9975 / 0.9972 / 0.9987 / 0.9971 in development.
    result = tune(disc_problem, unit2(), tmp_path / "c", rounds=6, q=4, seed=0, progress=False,
                  options=CHEAP, objective="f", constraints=BOUND)
    best = result.best
    assert result.feasible and best.feasible is True
    assert best.outcome("r2") <= 0.5
    assert best.outcome("f") == pytest.approx(1.0, abs=0.03)  # the known constrained optimum
    assert best.proposer == "qLogNEI"  # found by the constrained acquisition, not by Sobol
    sobol_best = max(r.reward for r in result.history.records if r.round == 0 and r.feasible)
    assert best.reward > sobol_best
    # The same problem tuned on the plain reward (= f) returns an infeasible point.
    plain = tune(disc_problem, unit2(), tmp_path / "plain", rounds=6, q=4, seed=0, progress=False, options=CHEAP)
    assert plain.best.metrics["r2"] > 0.5 and plain.best.reward > 1.2
    png = (tmp_path / "c" / "reward.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 2000


def test_a_constrained_outcome_a_candidate_did_not_produce_makes_it_infeasible(tmp_path):
    """Strong steering can leave nothing to score (every response empty: no perplexity ratio).
    That candidate is infeasible and the run goes on; an unmeasured objective is still an error."""
    def sometimes_unscored(X):
        return [{**res, "r2": None if float(x[0]) > 0.8 else res["r2"]} for x, res in zip(X, disc_problem(X))]

    result = tune(sometimes_unscored, unit2(), tmp_path / "c", rounds=3, q=4, seed=0, progress=False,
                  options=CHEAP, objective="f", constraints=BOUND)
    unscored = [r for r in result.history.records if r.metrics["r2"] is None]
    assert unscored and all(r.feasible is False and r.violation > 0 for r in unscored)
    assert result.feasible and result.best.metrics["r2"] is not None
    with pytest.raises(TunerError, match="objective must be measured"):
        tune(lambda X: [{"f": None, "r2": 0.1} for _ in X], unit2(), tmp_path / "o", rounds=1, q=2, seed=0,
             progress=False, options=CHEAP, objective="f", constraints=BOUND)


def test_history_round_trips_feasibility_and_goal(tmp_path):
    result = tune(disc_problem, unit2(), tmp_path / "c", rounds=2, q=4, seed=1, progress=False,
                  options=CHEAP, objective="f", constraints=BOUND)
    doc = json.loads((tmp_path / "c" / "history.json").read_text())
    assert doc["goal"] == {"objectives": ["f"], "constraints": [{"outcome": "r2", "op": "<=", "bound": 0.5}],
                           "ref_point": None}
    assert doc["best_feasible"] is True and doc["best"]["feasible"] is True
    for rec in doc["records"]:
        assert rec["feasible"] == (rec["metrics"]["r2"] <= 0.5)
        assert (rec["violation"] == 0.0) == rec["feasible"]
        assert rec["reward"] == rec["metrics"]["f"]  # the objective, kept with the other outcomes
    loaded = History.load(tmp_path / "c" / "history.json")
    assert loaded.goal.to_dict() == result.history.goal.to_dict()
    assert [r.feasible for r in loaded.records] == [r.feasible for r in result.history.records]
    assert [r.violation for r in loaded.records] == [r.violation for r in result.history.records]
    assert loaded.best() == result.best
    # An unconstrained run's file has none of these keys: its format is unchanged.
    tune(disc_problem, unit2(), tmp_path / "plain", rounds=1, q=2, seed=1, progress=False)
    plain = json.loads((tmp_path / "plain" / "history.json").read_text())
    assert "goal" not in plain and "best_feasible" not in plain
    assert not {"feasible", "violation"} & set(plain["records"][0])


def test_no_feasible_candidate_is_flagged_not_hidden(tmp_path):
    impossible = {"r2": ("<=", -1.0)}  # r2 ≥ 0 everywhere
    with pytest.warns(UserWarning, match="least-violating"):
        result = tune(disc_problem, unit2(), tmp_path / "x", rounds=1, q=4, seed=0, progress=False,
                      objective="f", constraints=impossible)
    assert not result.feasible and result.pareto == []
    records = result.history.records
    assert all(r.feasible is False for r in records)
    assert result.best.violation == min(r.violation for r in records)
    doc = json.loads((tmp_path / "x" / "history.json").read_text())
    assert doc["best_feasible"] is False and doc["best"]["feasible"] is False


def test_resume_with_another_goal_is_refused(tmp_path):
    out = tmp_path / "c"
    tune(disc_problem, unit2(), out, rounds=1, q=2, seed=0, progress=False, objective="f", constraints=BOUND)
    for kwargs in ({"objective": "f", "constraints": {"r2": ("<=", 0.4)}},  # another bound
                   {"objective": "f", "constraints": {"r2": (">=", 0.5)}},  # another direction
                   {"objective": "f"},                                      # the bounds dropped
                   {}):                                                     # the plain reward
        with pytest.raises(TunerError, match="goal"):
            tune(disc_problem, unit2(), out, rounds=2, q=2, seed=0, progress=False, options=CHEAP, **kwargs)
    resumed = tune(disc_problem, unit2(), out, rounds=2, q=2, seed=0, progress=False, options=CHEAP,
                   objective="f", constraints=BOUND)
    assert resumed.history.rounds_done == 2
    # A saved plain-reward run is not resumed under bounds either.
    tune(disc_problem, unit2(), tmp_path / "p", rounds=1, q=2, seed=0, progress=False)
    with pytest.raises(TunerError, match="goal"):
        tune(disc_problem, unit2(), tmp_path / "p", rounds=2, q=2, seed=0, progress=False,
             objective="f", constraints=BOUND)


def test_bad_goals_are_refused(tmp_path):
    with pytest.raises(TunerError, match="'<=' or '>='"):
        tune(disc_problem, unit2(), tmp_path / "a", rounds=1, q=2, progress=False, constraints={"r2": ("<", 1)})
    with pytest.raises(TunerError, match="returned no 'ppl_ratio'"):
        tune(disc_problem, unit2(), tmp_path / "b", rounds=1, q=2, progress=False, objective="f",
             constraints={"ppl_ratio": ("<=", 1.5)})
    with pytest.raises(TunerError, match="ref_point"):
        tune(disc_problem, unit2(), tmp_path / "c", rounds=1, q=2, progress=False, objective="f",
             ref_point={"f": 0.0})


# ----------------------------------------------------------------------------- multi-objective


def front_problem(X: torch.Tensor) -> list[dict]:
    """Maximise f1 = x0 and minimise loss = 1 − (1 − x0²)(1 − x1/2) on [0, 1]².

    The Pareto front is x1 = 0: loss = f1², f1 ∈ [0, 1]; with the reference point
    (f1 = 0, loss = 1) its hypervolume is ∫₀¹ (1 − t²) dt = 2/3."""
    return [{"f1": float(x[0]), "loss": 1.0 - float((1 - x[0] ** 2) * (1 - 0.5 * x[1]))} for x in X]


def hypervolume_2d(points: list[tuple[float, float]]) -> float:
    """Area dominated by maximised points (a, b) above the reference (0, 0)."""
    area, height = 0.0, 0.0
    for a, b in sorted(points, key=lambda p: -p[0]):
        if b > height:
            area, height = area + a * (b - height), b
    return area


def test_multi_objective_recovers_known_pareto_front(tmp_path):
    # 4 rounds × q 4 = 16 evaluations; seeds 0-2 reached 0.937 / 0.936 / 0.934 of the true hypervolume.
    out = tmp_path / "mo"
    result = tune(front_problem, unit2(), out, rounds=4, q=4, seed=0, progress=False, options=CHEAP,
                  objective=["f1", "-loss"], ref_point={"f1": 0.0, "loss": 1.0})
    front = [(r.outcome("f1"), r.outcome("loss")) for r in result.pareto]
    assert len(front) >= 6
    assert all(pareto_mask([(a, -b) for a, b in front]))  # mutually non-dominated
    evaluated = [(r.outcome("f1"), -r.outcome("loss")) for r in result.history.records]
    for a, b in front:  # ... and no evaluated point dominates any of them
        assert not any(x >= a and y >= -b and (x > a or y > -b) for x, y in evaluated)
    near = [loss - f1 ** 2 <= 0.05 for f1, loss in front]
    assert sum(near) >= len(front) - 1  # on the analytic front (loss ≥ f1² everywhere)
    ratio = hypervolume_2d([(a, 1.0 - b) for a, b in front]) / (2.0 / 3.0)
    assert ratio >= 0.9
    assert any(r.proposer == "qLogNEHVI" for r in result.pareto)
    saved = json.loads((out / "pareto.json").read_text())
    assert [(p["round"], p["index"]) for p in saved["pareto"]] == [(r.round, r.index) for r in result.pareto]
    assert saved["pareto"][0]["objectives"].keys() == {"f1", "loss"}
    history = json.loads((out / "history.json").read_text())
    assert history["pareto"] == [[r.round, r.index] for r in result.pareto]
    assert (out / "reward.png").read_bytes().startswith(PNG_MAGIC)


# ----------------------------------------------------------------------------- grouped space


def _template() -> SteeringSpec:
    """Two interventions: supportive (+) and opposing (−) features, one set, one ablated."""
    sae = random_sae(WIDTH, 64, "jumprelu", seed=3)
    a = SparseIntervention.from_sae(sae, [1, 5, 9, 20, 33], [[0.5, -0.25, 1.5, -2.0, 0.0]],
                                    ["add", "add", "set", "add", "ablate"], layer=STEERED_LAYER)
    other = random_sae(WIDTH, 64, "jumprelu", seed=4)  # (one SAE's tensors twice: spec.save refuses them)
    b = SparseIntervention.from_sae(other, [2, 7, 11], [[0.75, -1.0, 3.0]], ["add", "add", "add"],
                                    layer=STEERED_LAYER + 1)
    return SteeringSpec([a, b])


def _tables_equal(x: list[torch.Tensor], y: list[torch.Tensor]) -> bool:
    return len(x) == len(y) and all(torch.equal(a, b) for a, b in zip(x, y))


def test_grouped_space_maps_to_the_full_space_spec():
    template = _template()
    full = search_space(template)
    space = grouped_search_space(template, groups="sign")
    assert isinstance(space, GroupedSearchSpace) and space.d == 2 and full.d == 7
    assert space.names == ["group:supportive[4]", "group:opposing[3]"]
    assert space.lower.tolist() == [0.0, 0.0] and space.upper.tolist() == [2.0, 2.0]
    assert space.vector().tolist() == [1.0, 1.0]  # template scales: the template is s = 1
    assert _tables_equal(space.tables(space.vector()), full.tables(full.vector()))
    S = torch.tensor([[0.3, 1.7], [2.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    expanded = space.expand(S)
    assert _tables_equal(space.tables(S), full.tables(expanded))
    grouped_spec, full_spec = space.spec_for(S), full.spec_for(expanded)
    assert _tables_equal([iv.coefficients for iv in grouped_spec.interventions],
                         [iv.coefficients for iv in full_spec.interventions])
    assert grouped_spec.interventions[0].coefficients[:, 4].tolist() == [0.0] * 3  # ablated: the template's
    assert expanded[0].tolist() == pytest.approx([0.3 * 0.5, 1.7 * -0.25, 0.3 * 1.5, 1.7 * -2.0,
                                                  0.3 * 0.75, 1.7 * -1.0, 0.3 * 3.0])
    # Statistics scales: sign(c) · the full box's reference, so s = 1 is the full box's edge.
    stats = {"layer": STEERED_LAYER, "features": {"1": {"max": 3.0}, "5": {"max": 2.0}, "20": {"mean": 0.5}}}
    full_s, space_s = search_space(template, stats), grouped_search_space(template, stats, groups="intervention")
    assert space_s.names == [f"group:L{STEERED_LAYER}#0[4]", f"group:L{STEERED_LAYER + 1}#1[3]"]
    ones = space_s.expand(torch.ones(1, 2))[0]
    assert ones[[0, 1, 3]].tolist() == [3.0, -2.0, -2.0]  # ±a_max, −4·a_mean
    assert ones[[0, 1, 3]].tolist() == [full_s.upper[0].item(), full_s.lower[1].item(), full_s.lower[3].item()]
    assert _tables_equal(space_s.tables(S[:, :2]), full_s.tables(space_s.expand(S[:, :2])))
    assert grouped_search_space(template, groups="all").d == 1
    with pytest.raises(TunerError, match="groups"):
        grouped_search_space(template, groups="layer")
    with pytest.raises(TunerError, match=r"\[q, 2\]"):
        space.tables(torch.zeros(2, 7))


def test_grouped_space_plugs_into_tune(tmp_path):
    template = _template()
    space = grouped_search_space(template, groups="sign")
    target = torch.tensor([0.6, 1.4], dtype=torch.float64)

    def objective(X):  # the tuner sees strengths; the score is over the expanded coefficients
        full = space.expand(X)
        goal = space.expand(target.unsqueeze(0))[0]
        return [{"reward": -float(((x - goal) ** 2).sum())} for x in full]

    result = tune(objective, space, tmp_path / "g", rounds=2, q=3, seed=0, progress=False, options=CHEAP,
                  initial=space.vector().unsqueeze(0))
    best = SteeringSpec.load(tmp_path / "g" / "best_spec")
    want = space.tables(torch.tensor([result.best.candidate], dtype=torch.float64))
    assert _tables_equal([iv.coefficients for iv in best.interventions], want)
    doc = json.loads((tmp_path / "g" / "history.json").read_text())
    assert doc["settings"]["space"]["kind"] == "grouped" and doc["box"]["names"] == space.names
    # Another parametrisation with the same box (other scales) is not resumed.
    other = grouped_search_space(template, {"layer": STEERED_LAYER, "features": {"1": {"max": 3.0}}},
                                 groups="sign", strength=(0.0, 2.0))
    assert other.same_as(space)
    with pytest.raises(TunerError, match="parametrisation"):
        tune(objective, other, tmp_path / "g", rounds=3, q=3, seed=0, progress=False, options=CHEAP)


def test_grouped_space_steers_the_model_as_the_full_space():
    model, tokenizer = tiny_chat_model(0)
    from pysteer.evaluation import builtin_prompts

    prompts = builtin_prompts("train")[::40][:2]
    sae = random_sae(WIDTH, 64, "jumprelu", seed=3)
    template = SteeringSpec([SparseIntervention.from_sae(sae, [1, 5, 9], [[2.0, -3.0, 4.0]], ["add", "add", "add"],
                                                         layer=STEERED_LAYER)])
    space, full = grouped_search_space(template), search_space(template)
    S = torch.tensor([[0.5, 2.0], [1.5, 0.0]], dtype=torch.float64)
    grouped = BatchedObjective(model, tokenizer, space, prompts, max_new_tokens=6).evaluate(S)
    plain = BatchedObjective(model, tokenizer, full, prompts, max_new_tokens=6).evaluate(space.expand(S))
    assert [r["responses"] for r in grouped] == [r["responses"] for r in plain]
    assert grouped[0]["responses"] != grouped[1]["responses"]


# ----------------------------------------------------------------------------- CLI


def test_cli_tunes_under_bounds_in_a_grouped_space(tmp_path, capsys):
    import argparse

    from pysteer.tuner.cli import register

    model, tokenizer = tiny_chat_model(0)
    model_dir = tmp_path / "tiny"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    sae = random_sae(WIDTH, 64, "jumprelu", seed=3)
    SteeringSpec([SparseIntervention.from_sae(sae, [1, 5, 9], [[2.0, -3.0, 4.0]], ["add", "add", "add"],
                                              layer=STEERED_LAYER)]).save(tmp_path / "template")
    parser = argparse.ArgumentParser(prog="pysteer")
    register(parser.add_subparsers(dest="command", required=True))
    argv = ["tune", "--steering", str(tmp_path / "template"), "--out", str(tmp_path / "out"),
            "--model", str(model_dir), "--instruction", "change_case:english_lowercase", "--rounds", "2",
            "--q", "2", "--minibatch", "2", "--max-new-tokens", "4", "--restarts", "2", "--raw-samples", "32",
            "--quiet", "--space", "grouped", "--objective", "ifr_loose", "--max-degenerate", "0.5"]
    args = parser.parse_args(argv)
    assert args.run(args) == 0
    assert "subject to degenerate_rate <= 0.5" in capsys.readouterr().out
    history = History.load(tmp_path / "out" / "history.json")
    assert history.box.names == ["group:supportive[2]", "group:opposing[1]"]
    assert history.goal.objectives == ["ifr_loose"] and str(history.goal.constraints[0]) == "degenerate_rate <= 0.5"
    assert all(r.feasible == (r.metrics["degenerate_rate"] <= 0.5) for r in history.records)
    args = parser.parse_args(argv + ["--min-rr", "0.9"])  # another goal: refused before the model loads
    with pytest.raises(TunerError, match="goal"):
        args.run(args)
    for bad, message in ((["--max-degenerate", "1.5"], "argument --max-degenerate: must be between 0 and 1"),
                         (["--multi-objective", "ifr_loose"], "argument --multi-objective: expected two or more")):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(argv + bad)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err

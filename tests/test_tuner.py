"""The BoTorch tuner: search box, BO loop (optimum, determinism, resume), objectives, CLI."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from model_zoo import STEERED_LAYER, WIDTH, tiny_chat_model
from pysteer import SparseIntervention, SteeringSpec, steer
from pysteer.sae import random_sae
from pysteer.tuner import (AcquisitionOptions, BatchedObjective, Box, History, SequentialObjective,
                           TunerError, load_stats, search_space, tune)
import pysteer.fileio
from pysteer.fileio import write_json_atomic

CHEAP = AcquisitionOptions(num_restarts=2, raw_samples=32, mc_samples=32, maxiter=20)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OPTIMUM = torch.tensor([0.3, -1.2, 1.5, 0.7], dtype=torch.float64)


def quadratic(X: torch.Tensor) -> list[dict]:
    """reward(x) = −|x − x*|², maximum 0 at x* = OPTIMUM."""
    return [{"reward": -float(((x - OPTIMUM) ** 2).sum()), "distance": float((x - OPTIMUM).norm())}
            for x in X]


def box4() -> Box:
    return Box([-2.0] * 4, [2.0] * 4)


# ----------------------------------------------------------------------------- BO loop


def test_bo_reaches_known_optimum_and_plots(tmp_path):
    # Budget: 8 rounds × q 4 = 32 evaluations (a Sobol round of 4, then 7 qLogNEI rounds).
    # Seeds 0–5 reached −0.006, −0.053, −0.026, −0.004, −0.031, −0.040 in development.
    result = tune(quadratic, box4(), tmp_path / "run", rounds=8, q=4, seed=0, progress=False,
                  options=AcquisitionOptions(num_restarts=4, raw_samples=128, mc_samples=64, maxiter=50))
    assert result.best.reward >= -0.05
    assert result.history.rounds_done == 8 and len(result.history.records) == 32
    sobol_best = max(r.reward for r in result.history.records if r.round == 0)
    assert result.best.reward > sobol_best + 0.2  # the GP rounds did the work
    png = (tmp_path / "run" / "reward.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 2000
    doc = json.loads((tmp_path / "run" / "history.json").read_text())
    assert doc["rounds_done"] == 8 and doc["seed"] == 0 and doc["box"]["lower"] == [-2.0] * 4
    assert doc["best"]["reward"] == result.best.reward
    assert {r["proposer"] for r in doc["records"]} == {"sobol", "qLogNEI"}
    assert all("distance" in r["metrics"] for r in doc["records"])
    assert not (tmp_path / "run" / "best_spec").exists()  # a plain Box has no spec to write


def _candidates(history: History) -> list[list[float]]:
    return [r.candidate for r in history.records]


def test_same_seed_same_history(tmp_path):
    a = tune(quadratic, box4(), tmp_path / "a", rounds=3, q=3, seed=5, progress=False, options=CHEAP)
    b = tune(quadratic, box4(), tmp_path / "b", rounds=3, q=3, seed=5, progress=False, options=CHEAP)
    c = tune(quadratic, box4(), tmp_path / "c", rounds=3, q=3, seed=6, progress=False, options=CHEAP)
    assert _candidates(a.history) == _candidates(b.history)  # bit-identical, GP rounds included
    assert [r.reward for r in a.history.records] == [r.reward for r in b.history.records]
    assert _candidates(a.history) != _candidates(c.history)


class Interrupted(RuntimeError):
    pass


class FlakyObjective:
    """The quadratic, but raising when round ``fail_at`` starts (a killed run); records rounds."""

    def __init__(self, fail_at=None):
        self.fail_at, self.rounds = fail_at, []

    def set_round(self, r):
        if r == self.fail_at:
            raise Interrupted(f"killed at round {r}")
        self.rounds.append(r)

    def __call__(self, X):
        return quadratic(X)


def test_resume_after_interruption(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        tune(FlakyObjective(fail_at=3), box4(), out, rounds=5, q=3, seed=1, progress=False, options=CHEAP)
    saved = History.load(out / "history.json")  # complete and readable after the crash
    assert saved.rounds_done == 3 and len(saved.records) == 9
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp file left behind
    assert (out / "reward.png").read_bytes().startswith(PNG_MAGIC)

    objective = FlakyObjective()
    resumed = tune(objective, box4(), out, rounds=5, q=3, seed=1, progress=False, options=CHEAP)
    assert objective.rounds == [3, 4]  # continued at round 3, did not start over
    assert resumed.history.rounds_done == 5 and len(resumed.history.records) == 15
    straight = tune(quadratic, box4(), tmp_path / "straight", rounds=5, q=3, seed=1, progress=False,
                    options=CHEAP)
    assert _candidates(resumed.history) == _candidates(straight.history)  # as if never interrupted

    # A finished run asked for more rounds extends itself; other settings are refused.
    more = FlakyObjective()
    tune(more, box4(), out, rounds=6, q=3, seed=1, progress=False, options=CHEAP)
    assert more.rounds == [5]
    with pytest.raises(TunerError, match="seed"):
        tune(quadratic, box4(), out, rounds=6, q=3, seed=2, progress=False, options=CHEAP)
    with pytest.raises(TunerError, match="box"):
        tune(quadratic, Box([-1.0] * 4, [1.0] * 4), out, rounds=6, q=3, seed=1, progress=False)
    with pytest.raises(FileExistsError):
        tune(quadratic, box4(), out, rounds=6, q=3, seed=1, resume=False, progress=False)


def test_history_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "history.json"
    write_json_atomic(path, {"round": 1})

    def crash(fd):  # the new document is written to the temp file, then the "crash"
        raise KeyboardInterrupt

    monkeypatch.setattr(pysteer.fileio.os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        write_json_atomic(path, {"round": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"round": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"]


def test_tune_refuses_foreign_directory_and_bad_objective(tmp_path):
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="history.json"):
        tune(quadratic, box4(), tmp_path / "user", rounds=1, q=2, progress=False)
    assert (tmp_path / "user" / "notes.txt").read_text() == "mine"
    with pytest.raises(TunerError, match="list of 2"):
        tune(lambda X: [{"reward": 0.0}], box4(), tmp_path / "bad", rounds=1, q=2, progress=False)
    with pytest.raises(TunerError, match="non-finite"):
        tune(lambda X: [{"reward": math.nan}] * len(X), box4(), tmp_path / "nan", rounds=1, q=2,
             progress=False)


# ----------------------------------------------------------------------------- search box


def _spec(edits=("add", "add", "set", "scale", "ablate")) -> SteeringSpec:
    sae = random_sae(WIDTH, 64, "jumprelu", seed=3)
    iv = SparseIntervention.from_sae(sae, [1, 5, 9, 20, 33][:len(edits)], [[0.5, -0.5, 1.0, 1.0, 0.0][:len(edits)]],
                                     list(edits), layer=STEERED_LAYER)
    return SteeringSpec([iv])


def test_search_space_bounds_from_stats_and_overrides():
    spec = _spec()
    stats = {"layer": STEERED_LAYER, "features": {"1": {"mean": 0.5, "max": 3.0}, "5": {"mean_activation": 0.25},
                                                  "9": {"max": 2.0}}}
    space = search_space(spec, stats)
    assert space.names == [f"L{STEERED_LAYER}/f1/add", f"L{STEERED_LAYER}/f5/add",
                           f"L{STEERED_LAYER}/f9/set", f"L{STEERED_LAYER}/f20/scale"]  # ablate left out
    assert space.lower.tolist() == [-3.0, -1.0, 0.0, 0.0]   # ±max, ±4·mean, [0, max], [0, scale_max]
    assert space.upper.tolist() == [3.0, 1.0, 2.0, 4.0]
    assert space.sources == ["stats:max", "stats:mean", "stats:max", "scale_max"]
    no_stats = search_space(spec)
    assert no_stats.lower.tolist() == [-8.0, -8.0, 0.0, 0.0] and no_stats.sources[0] == "default"
    user = search_space(spec, bounds=(-1.0, 2.0), overrides={f"L{STEERED_LAYER}/f9/set": (0.0, 5.0)})
    assert user.lower.tolist() == [-1.0, -1.0, 0.0, -1.0] and user.upper.tolist() == [2.0, 2.0, 5.0, 2.0]
    # The parallel-list form and a per-layer file give the same table.
    lists = load_stats({"layers": {str(STEERED_LAYER): {"features": [1, 9], "mean": [0.5, 0.1], "max": [3.0, 2.0]}}})
    assert lists[(STEERED_LAYER, 1)] == {"mean": 0.5, "max": 3.0}
    discovery = load_stats({"layer": 2, "features": [{"feature": 1, "role": "supportive", "mean_follow": 0.2,
                                                     "mean_violate": 0.5, "max_follow": 2.0, "max_violate": 1.0}]})
    assert discovery == {(2, 1): {"mean": 0.5, "max": 2.0}}  # discovery.json: the larger group counts
    with pytest.raises(TunerError, match="names no coordinate"):
        search_space(spec, overrides={"L9/f1/add": (0, 1)})
    with pytest.raises(TunerError, match="below upper"):
        search_space(spec, bounds=(1.0, 1.0))
    with pytest.raises(TunerError, match="not found"):
        search_space(spec, "/nonexistent/stats.json")


def test_search_space_maps_vectors_to_tables():
    spec = _spec()
    space = search_space(spec)
    X = torch.tensor([[1.0, 2.0, 3.0, 0.5], [-1.0, -2.0, 0.0, 2.0]], dtype=torch.float64)
    multi = space.spec_for(X)
    assert multi.n_configs == 2
    table = multi.interventions[0].coefficients
    assert table[:, :4].tolist() == X.float().tolist()
    assert table[:, 4].tolist() == [0.0, 0.0]  # the ablated column keeps the template's value
    assert space.vector(multi, row=1).tolist() == X[1].tolist()
    assert space.vector().tolist() == [0.5, -0.5, 1.0, 1.0]  # the template's row 0
    with pytest.raises(TunerError, match=r"\[q, 4\]"):
        space.tables(torch.zeros(2, 3))


# ----------------------------------------------------------------------------- objectives


@pytest.fixture(scope="module")
def chat():
    model, tokenizer = tiny_chat_model(0)
    from pysteer.evaluation import builtin_prompts

    prompts = builtin_prompts("train")[::20][:4]  # four instruction types
    return model, tokenizer, prompts


def _candidates_for(space, q, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return space.unnormalize(torch.rand(q, space.d, dtype=torch.float64, generator=gen))


def test_batched_evaluation_equals_sequential(chat):
    model, tokenizer, prompts = chat
    space = search_space(_spec(("add", "add", "set", "scale")))
    X = _candidates_for(space, 3)
    X[2] = 0.0  # the null candidate (scale 0 still changes the output): distinct configurations
    batched = BatchedObjective(model, tokenizer, space, prompts, max_new_tokens=8).evaluate(X)
    sequential = SequentialObjective(model, tokenizer, space, prompts, max_new_tokens=8).evaluate(X)
    assert len(batched) == len(sequential) == 3
    for b, s in zip(batched, sequential):
        assert b["responses"] == s["responses"]
        # Perplexity (inside OQ) sums in another order when the batch differs: float noise only.
        assert b["reward"] == pytest.approx(s["reward"], rel=1e-6)
        for key in ("ifr_loose", "rr", "oq"):
            assert b[key] == pytest.approx(s[key], rel=1e-6)
    # The candidates steer differently, so the equality above is not vacuous.
    assert len({tuple(r["responses"]) for r in batched}) > 1


def test_an_open_objective_attaches_once_and_later_rounds_copy_no_weights(chat, monkeypatch):
    import importlib

    from pysteer.patching import SteeredLayer, decoder_layers

    attach = importlib.import_module("pysteer.patching.attach")  # the module: pysteer.patching.attach is the function

    model, tokenizer, prompts = chat
    space = search_space(_spec(("add", "add", "set", "scale")))
    compiled_calls = []
    original = attach.compile_intervention
    monkeypatch.setattr(attach, "compile_intervention", lambda *a: compiled_calls.append(1) or original(*a))
    objective = BatchedObjective(model, tokenizer, space, prompts[:2], max_new_tokens=4)
    with objective:
        first = objective.evaluate(_candidates_for(space, 3, seed=1))
        layer = decoder_layers(model)[STEERED_LAYER]
        buffers = dict(layer.interventions[0].named_buffers())
        second = objective.evaluate(_candidates_for(space, 3, seed=2))
        assert decoder_layers(model)[STEERED_LAYER] is layer  # the same steered layer, still attached
        assert all(buf is buffers[name] for name, buf in layer.interventions[0].named_buffers())
        fewer = objective.evaluate(_candidates_for(space, 2, seed=3))  # another q: only coeffs is new
        assert all(buf is buffers[name] for name, buf in layer.interventions[0].named_buffers() if name != "coeffs")
    assert compiled_calls == [1]  # one attach for the three rounds
    assert not isinstance(decoder_layers(model)[STEERED_LAYER], SteeredLayer)  # closed: detached
    assert len(first) == len(second) == 3 and len(fewer) == 2
    # Writing new tables in place gives what a fresh attach gives.
    fresh = BatchedObjective(model, tokenizer, space, prompts[:2], max_new_tokens=4).evaluate(_candidates_for(space, 3, seed=2))
    assert [r["responses"] for r in fresh] == [r["responses"] for r in second]
    assert not isinstance(decoder_layers(model)[STEERED_LAYER], SteeredLayer)  # not opened: detached after


def test_minibatches_cycle_reproducibly(chat):
    model, tokenizer, prompts = chat
    objective = BatchedObjective(model, tokenizer, _spec(("add", "add")), prompts, minibatch=2, seed=3)
    seen = []
    for r in range(2):  # one epoch: every prompt once
        objective.set_round(r)
        seen += [p.key for p in objective.current_prompts()]
    assert sorted(seen) == sorted(p.key for p in prompts)
    objective.set_round(1)
    again = [p.key for p in objective.current_prompts()]
    assert again == seen[2:]


def test_best_spec_loads_and_steers(chat, tmp_path):
    model, tokenizer, prompts = chat
    space = search_space(_spec(("add", "add", "set", "scale")))
    objective = BatchedObjective(model, tokenizer, space, prompts[:2], max_new_tokens=6)
    result = tune(objective, space, tmp_path / "run", rounds=2, q=2, seed=0, progress=False,
                  initial=space.vector().unsqueeze(0), options=CHEAP, settings=objective.describe())
    assert [r.proposer for r in result.history.records] == ["template", "sobol", "qLogNEI", "qLogNEI"]
    best = SteeringSpec.load(tmp_path / "run" / "best_spec")
    assert best.n_configs == 1
    assert best.metadata["tuner"]["reward"] == result.best.reward
    assert best.interventions[0].coefficients[0].tolist() == torch.tensor(result.best.candidate).float().tolist()
    # Steering generate with the loaded spec reproduces the best candidate's recorded responses.
    from pysteer.evaluation import generate_responses

    with steer(model, best) as steering:
        texts = generate_responses(model, tokenizer, [p.prompt for p in prompts[:2]], steering=steering,
                                   rows=0, max_new_tokens=6)
    assert texts == result.best.metrics["responses"]
    assert texts != generate_responses(model, tokenizer, [p.prompt for p in prompts[:2]], max_new_tokens=6)


# ----------------------------------------------------------------------------- CLI


def test_cli_tune_runs_and_resumes(chat, tmp_path, capsys):
    from pysteer.tuner.cli import register

    model, tokenizer, _ = chat
    model_dir = tmp_path / "tiny"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    _spec(("add", "add", "ablate")).save(tmp_path / "template")
    parser = argparse.ArgumentParser(prog="pysteer")
    register(parser.add_subparsers(dest="command", required=True))
    argv = ["tune", "--steering", str(tmp_path / "template"), "--out", str(tmp_path / "out"),
            "--model", str(model_dir), "--instruction", "change_case:english_lowercase", "--rounds", "2",
            "--q", "2", "--minibatch", "2", "--max-new-tokens", "4", "--bounds=-3,3",
            "--weights", "ifr=1,rr=0.2,oq=0.3", "--restarts", "2", "--raw-samples", "32", "--quiet"]
    args = parser.parse_args(argv)
    assert args.run(args) == 0
    assert "best reward" in capsys.readouterr().out
    history = History.load(tmp_path / "out" / "history.json")
    assert history.rounds_done == 2 and history.box.lower.tolist() == [-3.0, -3.0]
    assert history.settings["weights"] == {"ifr": 1.0, "rr": 0.2, "oq": 0.3}
    assert history.settings["instructions"] == ["change_case:english_lowercase"]
    SteeringSpec.load(tmp_path / "out" / "best_spec")

    args = parser.parse_args(argv[:argv.index("--rounds") + 1] + ["3"] + argv[argv.index("--rounds") + 2:])
    assert args.run(args) == 0  # resumes: one more round
    assert History.load(tmp_path / "out" / "history.json").rounds_done == 3

    for bad, message in ((["--weights", "ifr=x"], "argument --weights: 'ifr=x' is not NAME=NUMBER"),
                         (["--bounds=3,-3"], "argument --bounds: LO must be below HI")):
        with pytest.raises(SystemExit) as exit_info:  # refused while parsing: status 2, the flag named
            parser.parse_args(argv + bad)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    args = parser.parse_args(argv + ["--prompts", str(tmp_path / "nope.jsonl")])
    with pytest.raises(TunerError, match="no such file"):
        args.run(args)

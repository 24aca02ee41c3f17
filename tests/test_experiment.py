"""The experiment pipeline behind ``pysteer demo`` and the report: types, targets, evaluate, run, CLI."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import pysteer
from model_zoo import STEERED_LAYER, WIDTH, tiny_chat_model
from pysteer import DenseIntervention, SparseIntervention, SteeringSpec
from pysteer.cli import main
from pysteer.discovery.concise import _instruction_text
from pysteer.discovery.prompts import VARIANTS, instruction_variants
from pysteer.evaluation import builtin_prompts, generate_responses, response_perplexity, score_responses
from pysteer.evaluation.metrics import perplexity_ratio
from pysteer.experiment import (INSTRUCTION_TYPES, TYPE_NAMES, Budget, ExperimentError, discovery_queries,
                                evaluate, get_type, run_experiment, stack_specs, targets, write_report)
from pysteer.experiment import pipeline
from pysteer.experiment.frontier import REPORT_BOUNDS, Frontier, operating_point
from pysteer.experiment.names import UNTUNED
from pysteer.experiment.report import format_markdown
from pysteer.sae import random_sae

TOY = Budget(n_pairs=2, n_contents=2, pair_max_new_tokens=6, tune_rounds=2, tune_q=2, tune_minibatch=2,
             tune_max_new_tokens=4, tune_restarts=2, tune_raw_samples=32, eval_max_new_tokens=6, n_heldout=3,
             batch_size=2, strengths=(0.5, 1.0), validation=2)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny models' matmuls are far too small for two threads, which on a busy CPU only
    wait for each other (10-30x slower here); restored for the other test modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def chat():
    return tiny_chat_model(0)


def _sae(tmp_path=None):
    sae = random_sae(WIDTH, 64, "standard", seed=3)
    sae.hook_name = f"blocks.{STEERED_LAYER}.hook_resid_post"
    return sae if tmp_path is None else pysteer.load_sae(sae.save(tmp_path / "sae"))


# ----------------------------------------------------------------------------- instruction table


def test_instruction_table_matches_builtin_prompts():
    assert TYPE_NAMES == ("lowercase", "uppercase", "json", "bullets", "no_comma", "short", "french", "keyword")
    for itype in INSTRUCTION_TYPES:
        prompts = builtin_prompts("all", [itype.instruction_id])
        assert len(prompts) == 30
        # the text discovery uses is one of the phrasings the type is evaluated with, verbatim
        hits = [p for p in prompts if p.prompt == f"{p.base_prompt} {itype.instruction_text}"]
        assert hits, itype.name
        variants = itype.variants()
        assert len(variants) >= 6 and len(set(variants)) == len(variants)
        if isinstance(itype.saif_variants, str):
            assert variants == VARIANTS[itype.saif_variants]
        # SAIF takes our variants as given; Concise-SAE writes its pairs with our text, not a built-in one
        assert instruction_variants(itype.instruction_text, variants) == variants
        assert _instruction_text(itype.instruction_text) == itype.instruction_text
    queries = discovery_queries()
    held_out = {p.base_prompt for p in builtin_prompts("heldout")}
    assert len(queries) >= 20 and not set(queries) & held_out
    assert "Explain why people keep pets." in held_out  # the built-in queries hold it: it was removed


# ----------------------------------------------------------------------------- targets


def _rows(cells):
    """Rows from {type: (unsteered no-instr, {method: steered no-instr}, instr, {method: instr+steer})},
    each cell (ifr_loose, degenerate_rate, ppl_ratio_instructed)."""
    rows = []
    for name, (base, steered, instr, both) in cells.items():
        for setting, unsteered, by_method in (("no_instruction", base, steered), ("instruction", instr, both)):
            for method, (ifr, degenerate, ratio) in [("unsteered", unsteered), *by_method.items()]:
                rows.append({"type": name, "setting": setting, "method": method, "steered": method != "unsteered",
                             "ifr_loose": ifr, "degenerate_rate": degenerate, "ppl_ratio_instructed": ratio,
                             "ppl_ratio": None if ratio is None else 2 * ratio})
    return rows


def test_targets_rules_on_hand_made_numbers():
    within = (0.1, 0.0, 1.0)  # no gain, within the bounds
    cells = {f"t{i}": [(0.1, 0.0, 1.0), {"m1": within, "m2": within, UNTUNED: (0.9, 0.5, 1.0)},
                       (0.5, 0.0, 1.0), {"m1": (0.5, 0.0, 1.0), "m2": (0.5, 0.0, 1.0)}] for i in range(8)}
    # (a): gain 0.3 − 0.1 (< 0.2 in floats) at exactly the bounds passes; the best method per type counts
    cells["t0"][1]["m1"] = (0.3, 0.10, 1.5)
    cells["t1"][1].update(m1=(0.9, 0.0, 1.51), m2=(0.35, 0.0, 1.2))     # m1 over the ratio; m2 passes
    cells["t2"][1].update(m1=(0.9, 0.11, 1.0), m2=(0.2, 0.0, 1.0))      # m1 degenerate; m2 gains 0.1 only
    cells["t3"][1]["m1"] = (0.9, 0.0, None)                             # every response empty: no ratio
    # (b): t0 is not eligible (the instruction alone ≥ 0.9); +0.1 passes, +0.09 does not
    cells["t0"][2:] = ((0.95, 0.0, 1.0), {"m1": (1.0, 0.0, 1.0), "m2": (1.0, 0.0, 1.0)})
    cells["t1"][3]["m2"] = (0.6, 0.0, 1.0)
    cells["t2"][3]["m1"] = (0.59, 0.0, 1.0)
    cells["t3"][3]["m1"] = (0.9, 0.5, 9.0)                              # (b) judges IFR only
    # (c): t4's untuned vector is within the bounds and beats m1 there
    cells["t4"][1][UNTUNED] = (0.25, 0.0, 1.0)
    cells["t4"][1]["m2"] = (0.25, 0.0, 1.0)                            # ties the untuned vector: passes
    found = targets(_rows(cells))
    a, b, c = found["a"], found["b"], found["c"]
    assert a["passed_types"] == ["t0", "t1"] and a["status"] == "missed" and a["of"] == 8
    assert a["per_type"]["t0"]["gain"] == pytest.approx(0.2) and a["per_type"]["t1"]["method"] == "m2"
    assert a["per_type"]["t2"]["short_by"] == pytest.approx(0.1)          # m2's 0.1 within the bounds
    assert a["per_type"]["t3"]["by_method"]["m1"]["failed"] == ["perplexity"]
    assert a["per_type"]["t2"]["by_method"]["m1"]["failed"] == ["degenerate"]
    assert a["per_type"]["t5"]["best_gain_within_bounds"] == pytest.approx(0.0)
    assert UNTUNED not in found["methods"]
    assert b["eligible_types"] == 7 and "t0" not in b["per_type"]
    assert b["passed_types"] == ["t1", "t3"] and b["status"] == "missed"
    assert b["per_type"]["t2"]["short_by"] == pytest.approx(0.01)
    assert c["failed"] == ["t4/m1"] and c["status"] == "missed" and c["of"] == 16
    assert c["per_point"]["t0/m1"]["untuned_value"] == pytest.approx(0.1)  # outside the bounds: not steering
    assert c["per_point"]["t0/m1"]["value"] == pytest.approx(0.3)

    cells["t4"][1]["m1"] = (0.5, 0.0, 1.0)
    cells["t6"][1]["m1"] = (0.5, 0.0, 1.0)
    cells["t5"][3]["m1"] = (0.8, 0.0, 1.0)
    found = targets(_rows(cells))
    assert [found[k]["status"] for k in "abc"] == ["met", "met", "met"]

    two = {name: cells[name] for name in ("t0", "t5")}  # e.g. the demo: too few types to decide
    partial = targets(_rows(two))
    assert partial["a"]["status"] == "undecided" and partial["a"]["passed"] == 1 and partial["a"]["evaluated"] == 2
    assert partial["b"]["status"] == "undecided" and partial["c"]["status"] == "undecided"


# ----------------------------------------------------------------------------- evaluate


def _specs():
    sae = _sae()
    sae.b_enc[17] = 6.0  # always active: scaling it (sparse_b) moves the residual, scale 1 does not
    gen = torch.Generator().manual_seed(5)
    u = torch.randn(WIDTH, generator=gen)
    project = SteeringSpec([DenseIntervention(STEERED_LAYER, u / u.norm(), [[12.0]], "project")])
    add = SteeringSpec([SparseIntervention.from_sae(sae, [3, 17, 40], [[9.0, -6.0, 7.0]], "add")])
    mixed = SteeringSpec([SparseIntervention.from_sae(sae, [5, 17, 60], [[8.0, 3.0, -9.0]],
                                                      ["add", "scale", "add"])])
    return {"dm": project, "sparse_a": add, "sparse_b": mixed}


def test_stack_specs_only_groups_exact_edits():
    specs = _specs()
    sae = _sae()
    specs["set"] = SteeringSpec([SparseIntervention.from_sae(sae, [1], [[4.0]], "set")])
    specs["dense_add"] = SteeringSpec([DenseIntervention(0, torch.eye(WIDTH)[:2], [[1.0, 2.0]], "add")])
    groups = stack_specs(specs)
    assert [names for _, names in groups] == [["dm"], ["set"], ["sparse_a", "sparse_b", "dense_add"]]
    stacked = groups[-1][0]
    assert stacked.n_configs == 3 and len(stacked.interventions) == 3
    # config 1 is sparse_b's row; the others sit at their neutral coefficients (add 0, scale 1)
    assert stacked.interventions[0].coefficients.tolist() == [[9.0, -6.0, 7.0], [0.0] * 3, [0.0] * 3]
    assert stacked.interventions[1].coefficients.tolist() == [[0.0, 1.0, 0.0], [8.0, 3.0, -9.0], [0.0, 1.0, 0.0]]
    assert stacked.interventions[2].coefficients.tolist() == [[0.0, 0.0], [0.0, 0.0], [1.0, 2.0]]


def test_evaluate_equals_plain_and_single_spec_generation(chat):
    model, tokenizer = chat
    specs = _specs()
    result = evaluate(model, tokenizer, specs, "lowercase", TOY)
    assert result["stacks"] == [["dm"], ["sparse_a", "sparse_b"]]  # the two sparse specs share generations
    prompts = builtin_prompts("heldout", ["change_case:english_lowercase"])[:TOY.n_heldout]
    assert result["prompt_keys"] == [p.key for p in prompts]
    kwargs = dict(max_new_tokens=TOY.eval_max_new_tokens, batch_size=TOY.batch_size)
    for key, with_instruction in (("no_instruction", False), ("instruction", True)):
        texts = [p.text(with_instruction) for p in prompts]
        cells = result["settings"][key]
        plain = generate_responses(model, tokenizer, texts, **kwargs)
        assert cells["unsteered"]["responses"] == plain
        for method, spec in specs.items():
            with pysteer.steer(model, spec) as steering:
                alone = generate_responses(model, tokenizer, texts, steering=steering, rows=0, **kwargs)
            assert cells[method]["responses"] == alone, (key, method)
            assert alone != plain, (key, method)  # the steering shows, so the equality is not vacuous
            report = score_responses(prompts, alone, model=model, tokenizer=tokenizer,
                                     instruction_in_prompt=with_instruction)
            assert cells[method]["ifr_loose"] == report.ifr_loose and cells[method]["oq"] == pytest.approx(report.oq)
            assert cells[method]["mean_perplexity"] == pytest.approx(report.mean_perplexity, rel=1e-4)
            # both ratios: the median over prompts against the unsteered responses, under the
            # prompt sent and under the prompt with the instruction (the same when it was sent)
            for ratio, scored_under in (("ppl_ratio", texts), ("ppl_ratio_instructed", [p.prompt for p in prompts])):
                mine = response_perplexity(model, tokenizer, scored_under, alone)
                base = response_perplexity(model, tokenizer, scored_under, plain)
                assert cells[method][ratio] == pytest.approx(perplexity_ratio(mine, base), rel=1e-4), (key, ratio)
            assert cells["unsteered"]["ppl_ratio_instructed"] == pytest.approx(1.0)
        # the examples: the best and the worst case, the same prompts for every label
        examples = cells["dm"]["examples"]
        assert [e["case"] for e in examples] == ["best", "worst"]
        keys = [p.key for p in prompts]
        for label, cell in cells.items():
            assert [e["key"] for e in cell["examples"]] == [e["key"] for e in examples]
            for e in cell["examples"]:
                assert e["prompt"] == texts[keys.index(e["key"])]
                assert e["response"] == cell["responses"][keys.index(e["key"])]
    # nothing stays attached: the model is as before
    assert generate_responses(model, tokenizer, [prompts[0].prompt], max_new_tokens=6) == \
        [result["settings"]["instruction"]["unsteered"]["responses"][0]]


# ----------------------------------------------------------------------------- run + report


def test_run_experiment_writes_specs_that_load_back(chat, tmp_path):
    model, tokenizer = chat
    sae = _sae(tmp_path)
    out = tmp_path / "run"
    result = run_experiment(model, tokenizer, ["lowercase"], ["diff-means", "saif", "concise"], sae, TOY, out,
                            progress=False)
    assert sorted(p.name for p in (out / "lowercase").iterdir()) == ["concise", "concise.tuning", "diff-means",
                                                                     "saif", UNTUNED]
    assert (out / "frontier.png").stat().st_size > 0
    loaded = {m: SteeringSpec.load(out / "lowercase" / m) for m in [*result.methods, UNTUNED]}
    dm = loaded["diff-means"]
    assert dm.interventions[0].edits[0].name == "ADD"
    # its coefficient is the operating strength (chosen on the train frontier) times ‖v‖
    point = dm.metadata["operating_point"]
    assert set(point["train_frontiers"]) == {str(dm.layers[0])}
    train = Frontier.from_json(point["train_frontiers"][str(dm.layers[0])])
    assert train.max_new_tokens == TOY.eval_max_new_tokens and len(train.prompt_keys) == TOY.validation
    chosen = operating_point(train)                    # beats the unsteered model, or no steering at all
    assert point["strength"] == (0.0 if chosen is None else chosen.strength) and point["steers"] == (chosen is not None)
    assert dm.interventions[0].coefficients.item() == pytest.approx(point["strength"] * dm.metadata["norm"], rel=1e-5)
    untuned = loaded[UNTUNED]
    assert untuned.interventions[0].edits[0].name == "PROJECT" and untuned.layers == dm.layers
    assert untuned.interventions[0].coefficients.item() == pytest.approx(untuned.metadata["z_bar"], rel=1e-5)
    assert loaded["saif"].metadata["method"] == "saif" and len(loaded["saif"].metadata["discovery"]["features"]) == 15
    tuned = loaded["concise"]
    assert tuned.interventions[0].width == 30 and "tuner" in tuned.metadata
    history = json.loads((out / "lowercase" / "concise.tuning" / "history.json").read_text())
    assert history["rounds_done"] == TOY.tune_rounds and history["settings"]["instruction_in_prompt"] is False
    assert history["records"][0]["proposer"] == "template"
    assert len(history["records"][0]["candidate"]) == 2          # the grouped space: supportive, opposing
    assert history["goal"]["objectives"] == ["ifr_loose"]
    # the tuner's degenerate constraint is the chooser's: the looser of the bound and the
    # unsteered model's own rate on the tuner's prompts, answered at the tuner's length
    train = builtin_prompts("train", [get_type("lowercase").instruction_id])
    own = score_responses(train, generate_responses(model, tokenizer, [p.text(False) for p in train],
                                                    max_new_tokens=TOY.tune_max_new_tokens),
                          instruction_in_prompt=False).degenerate_rate
    assert history["settings"]["unsteered_degenerate_rate"] == pytest.approx(own)
    bounds = {c["outcome"]: c["bound"] for c in history["goal"]["constraints"]}
    assert bounds == {"degenerate_rate": pytest.approx(max(REPORT_BOUNDS.max_degenerate, own)),
                      "ppl_ratio_instructed": pytest.approx(REPORT_BOUNDS.max_ppl_ratio)}
    # the tuner's best (feasible, else least violating) candidate, at the strength its train
    # frontier chose, is what was saved and evaluated
    best = SteeringSpec.load(out / "lowercase" / "concise.tuning" / "best_spec")
    strength = tuned.metadata["operating_point"]["strength"]
    assert set(tuned.metadata["operating_point"]["train_frontiers"]) == {"concise"}
    assert torch.allclose(tuned.interventions[0].coefficients, strength * best.interventions[0].coefficients)
    assert set(result.timings["lowercase"]["discover"]) == set(result.methods)
    assert result.timings["lowercase"]["tune"].keys() == {"concise"} and result.timings["lowercase"]["eval"] > 0

    doc = json.loads((out / "results.json").read_text())
    assert len(doc["rows"]) == 2 * (1 + 4) and doc["targets"]["methods"] == ["diff-means", "saif", "concise"]
    frontiers = doc["evaluations"]["lowercase"]["frontiers"]
    assert list(frontiers) == ["diff-means", "saif", "concise"]
    for frontier in frontiers.values():
        assert [p["strength"] for p in frontier["points"]] == list(TOY.strengths)
        assert frontier["unsteered"]["ppl_ratio_instructed"] == pytest.approx(1.0)
        assert frontier["prompt_keys"] == doc["evaluations"]["lowercase"]["prompt_keys"]
    markdown = (out / "results.md").read_text()
    assert "| lowercase | no instruction + steering | concise |" in markdown and "## Targets" in markdown
    assert "## Frontiers" in markdown and "### lowercase: saif" in markdown
    with pytest.raises(FileExistsError, match="overwrite"):
        run_experiment(model, tokenizer, ["lowercase"], ["diff-means"], sae, TOY, out, progress=False)
    with pytest.raises(ExperimentError, match="no SAE at layer"):
        run_experiment(model, tokenizer, ["lowercase"], ["saif"], sae, TOY, tmp_path / "x", layers=0, progress=False)

    # back from JSON, and carried over into a run of another type
    back = pipeline.ExperimentResult.from_json(doc)
    assert back.to_json()["rows"] == doc["rows"] and back.to_json()["targets"] == doc["targets"]
    later = dataclasses.replace(back, types=[get_type("no_comma")], evaluations={"no_comma": back.evaluations["lowercase"]},
                                spec_paths={"no_comma": {}}, timings={"no_comma": back.timings["lowercase"]},
                                layers={"no_comma": back.layers["lowercase"]})
    merged = later.carry_over(back, "earlier/results.json")
    assert [t.name for t in merged.types] == ["lowercase", "no_comma"]
    assert merged.carried == {"lowercase": "earlier/results.json"}
    assert merged.evaluations["lowercase"] is back.evaluations["lowercase"]
    assert "Carried over unchanged from an earlier run: lowercase" in format_markdown(merged.to_json())
    with pytest.raises(ExperimentError, match="seed"):
        dataclasses.replace(later, seed=1).carry_over(back, "earlier/results.json")

    # write_report: JSON without the responses, markdown with the examples side by side
    written = write_report(result, tmp_path / "r" / "results.json", tmp_path / "r" / "results.md", responses=False)
    cell = written["evaluations"]["lowercase"]["settings"]["no_instruction"]["saif"]
    assert "responses" not in cell and len(cell["examples"]) == 2
    assert json.loads((tmp_path / "r" / "results.json").read_text())["rows"] == written["rows"]
    table = (tmp_path / "r" / "results.md").read_text()
    header = f"| case | prompt | unsteered | diff-means | saif | concise | {UNTUNED} |"
    assert table.count(header) == 2 and "Describe the sun." in table


def test_diff_means_chooses_between_the_prompt_and_the_answer_read_out(chat):
    """With ``answer_layers`` a type with a rewrite rule gets a second candidate, the vector
    read from answers on the prompt's positions at c = the prompt read-out's ‖v_ℓ‖; its train
    frontier is recorded beside the prompt read-out's, and the spec is the chosen one's."""
    model, tokenizer = chat
    budget = dataclasses.replace(TOY, answer_layers=(STEERED_LAYER,), strengths=(0.5, 8.0))
    spec = pipeline.find_spec("diff-means", model, tokenizer, "lowercase", layer=STEERED_LAYER, budget=budget,
                              progress=False)
    point = spec.metadata["operating_point"]
    key = f"answers, layer {STEERED_LAYER}"
    assert set(point["train_frontiers"]) == {str(STEERED_LAYER), key}
    assert Frontier.from_json(point["train_frontiers"][key]).label == key
    prompt_norm = spec.metadata["unit"]["prompt_read_out_norm"] if "unit" in spec.metadata else spec.metadata["norm"]
    assert spec.interventions[0].coefficients.item() == pytest.approx(prompt_norm, rel=1e-5)
    answers = pipeline._answer_specs(model, tokenizer, get_type("lowercase"), [STEERED_LAYER], [],
                                     pipeline.instruction_vectors(model, tokenizer, get_type("lowercase").instruction_text,
                                                                  [STEERED_LAYER], discovery_queries(),
                                                                  n_prompts=budget.n_pairs, progress=False),
                                     budget)[key]
    assert answers.positions == "prompt" and answers.metadata["read_out"] == "answers"
    assert answers.interventions[0].coefficients.item() == pytest.approx(
        answers.metadata["unit"]["prompt_read_out_norm"], rel=1e-5)
    chosen_answers = spec.metadata["read_out"] == "answers"
    assert spec.positions == ("prompt" if chosen_answers else "all")
    if chosen_answers:
        assert torch.allclose(spec.interventions[0].directions, answers.interventions[0].directions)
    # a type without a rule gets the prompt read-out only
    json_spec = pipeline.find_spec("diff-means", model, tokenizer, "json", layer=STEERED_LAYER, budget=budget,
                                   progress=False)
    assert set(json_spec.metadata["operating_point"]["train_frontiers"]) == {str(STEERED_LAYER)}


def test_a_type_that_forbids_tokens_gets_the_next_token_candidate(chat, monkeypatch):
    """With ``next_token_layers``, no commas (which forbids a token) gets the vector read where the
    model's answers write a comma next, at every position and c = NEXT_TOKEN_UNIT·‖v‖; when the answers
    write no comma there is nothing to read and no such candidate."""
    model, tokenizer = chat
    budget = dataclasses.replace(TOY, next_token_layers=(STEERED_LAYER,), strengths=(0.5, 8.0))
    itype, key = get_type("no_comma"), f"next token, layer {STEERED_LAYER}"
    monkeypatch.setattr(pipeline, "generate_responses",
                        lambda model, tokenizer, questions, **kw: ["Yes, the sea is deep, and wide."] * len(questions))
    specs = pipeline._answer_specs(model, tokenizer, itype, [], [STEERED_LAYER], {}, budget)
    assert set(specs) == {key}
    read = specs[key]
    assert read.positions == "all" and read.metadata["read_out"] == "next-token"
    assert read.interventions[0].coefficients.item() == pytest.approx(pipeline.NEXT_TOKEN_UNIT * read.metadata["norm"],
                                                                      rel=1e-5)
    spec = pipeline.find_spec("diff-means", model, tokenizer, itype, layer=STEERED_LAYER, budget=budget,
                              progress=False)
    assert set(spec.metadata["operating_point"]["train_frontiers"]) == {str(STEERED_LAYER), key}
    monkeypatch.setattr(pipeline, "generate_responses",
                        lambda model, tokenizer, questions, **kw: ["The sea is deep."] * len(questions))
    assert pipeline._answer_specs(model, tokenizer, itype, [], [STEERED_LAYER], {}, budget) == {}


# ----------------------------------------------------------------------------- CLI


def test_demo_cli_refuses_existing_out_and_missing_sae(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["demo", "--out", str(out), "--sae", str(tmp_path / "nope")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"

    assert main(["demo", "--out", str(tmp_path / "new"), "--sae", str(tmp_path / "nope")]) == 2
    assert f"{tmp_path / 'nope'}: no such SAE directory" in capsys.readouterr().err
    # the shipped SAE missing (as before the package ships one): the message names where it belongs
    import pysteer.models
    monkeypatch.setattr(pysteer.models, "SHIPPED_SAE_DIR", tmp_path / "saes")
    assert main(["demo", "--out", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "saes" / "index.json") in err and "--sae" in err
    (tmp_path / "saes").mkdir()
    (tmp_path / "saes" / "index.json").write_text(json.dumps({"default_layer": 1, "layers": [1]}))
    assert main(["demo", "--out", str(tmp_path / "new")]) == 2
    assert f"{tmp_path / 'saes' / 'layer_1'}: missing" in capsys.readouterr().err
    _sae().save(tmp_path / "saes" / "layer_1")
    assert pysteer.models.shipped_sae().hook_layer == STEERED_LAYER
    assert not (tmp_path / "new").exists()  # nothing was written by the failed runs


def test_demo_cli_refuses_a_budget_layer_the_model_lacks(chat, tmp_path, capsys):
    """The demo budget reads no commas' next-token vector at layer 27: on a smaller model that is
    refused, naming the layer, before the model loads; a type without forbidden tokens runs on."""
    model, tokenizer = chat
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    base = ["demo", "--model", str(tmp_path / "tiny"), "--methods", "diff-means", "--layer", str(STEERED_LAYER),
            "--out", str(tmp_path / "out"), "--quiet"]
    assert main([*base, "--types", "no_comma"]) == 2
    err = capsys.readouterr().err
    assert "--budget demo: diff-means reads the next token at layer 27" in err and "decoder layers" in err
    assert not (tmp_path / "out").exists()


def test_demo_cli_end_to_end_on_a_tiny_model(chat, tmp_path, capsys, monkeypatch):
    model, tokenizer = chat
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    monkeypatch.setitem(pipeline.BUDGETS, "demo", lambda: TOY)
    sae = _sae(tmp_path)
    argv = ["demo", "--model", str(tmp_path / "tiny"), "--sae", sae.source, "--out", str(tmp_path / "out"),
            "--methods", "diff-means", "saif", "--types", "uppercase", "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "uppercase  diff-means" in printed
    assert "[uppercase] best case, without the instruction" in printed and "\n  saif " in printed
    assert f"{tmp_path / 'out' / 'uppercase' / 'diff-means'}" in printed
    SteeringSpec.load(tmp_path / "out" / "uppercase" / "saif")
    assert (tmp_path / "out" / "results.md").is_file()

"""The content types the report adds to its six formats: a response language (``french``)
and a keyword to include (``keyword``) — their checkers, prompts, resolving and a tiny run;
and the rewrite rules of the types that have one."""

from __future__ import annotations

import pytest
import torch

import pysteer
from model_zoo import STEERED_LAYER, WIDTH, tiny_chat_model
from pysteer.cli import main
from pysteer.evaluation import builtin_prompts, check_instruction
from pysteer.experiment import TYPE_NAMES, get_type, pipeline, resolve_instruction, resolve_types
from pysteer.experiment.pipeline import Budget, discovery_queries
from pysteer.sae import random_sae

NEW = ("french", "keyword")
FRENCH = ("Le soleil est une étoile qui nous donne de la lumière et de la chaleur. "
          "Il se lève le matin et se couche le soir.")
ENGLISH = "The sun is a star that gives us light and warmth. It rises in the morning and sets at night."


@pytest.mark.parametrize("loose", [False, True])
def test_response_language_checker(loose):
    fr = {"language": "fr"}
    assert check_instruction("language:response_language", fr, FRENCH, loose=loose)
    assert not check_instruction("language:response_language", fr, ENGLISH, loose=loose)
    assert not check_instruction("language:response_language", fr, "   ", loose=loose)  # empty never follows
    # English then one French line: strict fails; loose follows, since the variant "without the
    # first line" is "Merci beaucoup !", whose language cannot be told, and that passes (IFEval)
    mixed = f"{ENGLISH}\nMerci beaucoup !"
    assert check_instruction("language:response_language", fr, mixed, loose=loose) is loose
    framed = f"Sure! Here is my answer, as you asked for it, and I hope that it is the one you want:\n{FRENCH}"
    assert check_instruction("language:response_language", fr, framed, loose=True)


@pytest.mark.parametrize("loose", [False, True])
def test_keyword_existence_checker(loose):
    kw = {"keywords": ["garden"]}
    assert check_instruction("keywords:existence", kw, "My Garden is full of roses.", loose=loose)
    assert check_instruction("keywords:existence", kw, "I love gardening.", loose=loose)  # IFEval: a regex, no word boundary
    assert not check_instruction("keywords:existence", kw, "The park is full of roses.", loose=loose)
    assert not check_instruction("keywords:existence", {"keywords": ["garden", "rose"]}, "A garden.", loose=loose)


def test_keyword_loose_differs_from_strict_only_through_the_variants():
    kw = {"keywords": ["garden"]}
    only_first_line = "A garden.\nThe rest says nothing."
    assert check_instruction("keywords:existence", kw, only_first_line)
    # loose = any of the 8 variants: the full response is one of them, so loose ⊇ strict
    assert check_instruction("keywords:existence", kw, only_first_line, loose=True)


@pytest.mark.parametrize("name", NEW)
def test_new_types_have_train_and_heldout_prompts(name):
    itype = get_type(name)
    train, heldout = builtin_prompts("train", [itype.instruction_id]), builtin_prompts("heldout", [itype.instruction_id])
    assert (len(train), len(heldout)) == (20, 10)
    assert not {p.base_prompt for p in train} & {p.base_prompt for p in heldout}
    # no held-out request reaches discovery
    assert not set(discovery_queries()) & {p.base_prompt for p in heldout}
    expected = {"french": {"language": "fr"}, "keyword": {"keywords": ["garden"]}}[name]
    for p in train + heldout:
        assert p.kwargs == [expected] and p.prompt.startswith(p.base_prompt + " ")
    # discovery's text is one of the phrasings evaluated, verbatim
    assert any(p.prompt == f"{p.base_prompt} {itype.instruction_text}" for p in train)
    if name == "keyword":  # the word is no base request's: an unsteered answer does not hold it by asking
        assert not any("garden" in p.base_prompt.lower() for p in train + heldout)
        assert all("garden" in v for v in itype.variants())
    variants = itype.variants()
    assert len(variants) == 8 and len(set(variants)) == 8


def test_new_types_resolve_through_the_one_rule():
    assert TYPE_NAMES[-2:] == NEW
    assert [t.name for t in resolve_types(list(NEW))] == list(NEW)
    for name in NEW:
        itype = get_type(name)
        for spelling in (name, f" {name.upper()} ", itype.instruction_id):
            got = resolve_instruction(spelling)
            assert (got.name, got.text, got.instruction_id, got.keyword) == \
                (name, itype.instruction_text, itype.instruction_id, itype.keyword)
            assert list(got.variants) == itype.variants()


TOY = Budget(n_pairs=2, n_contents=2, pair_max_new_tokens=6, tune_rounds=2, tune_q=2, tune_minibatch=2,
             tune_max_new_tokens=4, tune_restarts=2, tune_raw_samples=32, eval_max_new_tokens=6, n_heldout=3,
             batch_size=2)


def test_demo_runs_the_new_types_on_a_tiny_model(tmp_path, capsys, monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model's matmuls only wait for each other on two threads
    try:
        model, tokenizer = tiny_chat_model(0)
        model.save_pretrained(tmp_path / "tiny")
        tokenizer.save_pretrained(tmp_path / "tiny")
        monkeypatch.setitem(pipeline.BUDGETS, "demo", lambda: TOY)
        sae = random_sae(WIDTH, 64, "standard", seed=3)
        sae.hook_name = f"blocks.{STEERED_LAYER}.hook_resid_post"
        sae = pysteer.load_sae(sae.save(tmp_path / "sae"))
        argv = ["demo", "--model", str(tmp_path / "tiny"), "--sae", sae.source, "--out", str(tmp_path / "out"),
                "--methods", "saif", "--types", *NEW, "--quiet"]
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    for name in NEW:
        assert f"\n{name:<8} saif " in printed and f"[{name}] best case, with the instruction" in printed
        pysteer.SteeringSpec.load(tmp_path / "out" / name / "saif")
    assert (tmp_path / "out" / "results.json").is_file()


def test_rewrite_rules_make_an_answer_pass_its_checker_and_keep_its_words():
    answer = "The Sun, a star, is Bright. It gives us light, and warmth."
    ruled = {t.name: t.rewrite for t in pysteer.experiment.INSTRUCTION_TYPES if t.rewrite}
    assert ruled == {"lowercase": "lower", "uppercase": "upper", "no_comma": "drop_commas"}
    for name in ruled:
        itype = get_type(name)
        kwargs = builtin_prompts("train", [itype.instruction_id])[0].kwargs[0]
        rewritten = itype.rewrite_answer(answer)
        assert not check_instruction(itype.instruction_id, kwargs, answer, loose=False)
        assert check_instruction(itype.instruction_id, kwargs, rewritten, loose=False)
        assert rewritten.lower().replace(",", "").split() == answer.lower().replace(",", "").split()
    with pytest.raises(pysteer.experiment.ExperimentError, match="no rewrite rule"):
        get_type("json").rewrite_answer(answer)
    with pytest.raises(pysteer.experiment.ExperimentError, match="unknown rewrite"):
        pysteer.experiment.InstructionType("x", "punctuation:no_comma", "No commas.", None, "Commas", "shout")


def test_forbidden_token_test_agrees_with_the_checker():
    """A text made of pieces passes no commas' checker exactly when no piece is forbidden."""
    forbidding = {t.name: t.forbidden for t in pysteer.experiment.INSTRUCTION_TYPES if t.forbidden}
    assert forbidding == {"no_comma": "comma"}
    itype = get_type("no_comma")
    kwargs = builtin_prompts("train", [itype.instruction_id])[0].kwargs[0]
    for pieces in (["The", " sun", ",", " a", " star"], ["The", " sun", " is", " bright", "."],
                   ["Yes", ",\"", " he", " said"], ["1", ",", "000"]):
        text = "".join(pieces)
        assert check_instruction(itype.instruction_id, kwargs, text, loose=False) == \
            (not any(itype.forbids(p) for p in pieces)), pieces
    with pytest.raises(pysteer.experiment.ExperimentError, match="forbids no tokens"):
        get_type("json").forbids(",")
    with pytest.raises(pysteer.experiment.ExperimentError, match="unknown forbidden token test"):
        pysteer.experiment.InstructionType("x", "punctuation:no_comma", "No commas.", None, "Commas", forbidden="dots")

"""Instruction-following evaluation: checkers, prompt files, IFR / RR / OQ, generation, CLI."""

import argparse
import json
import math

import pytest
import torch

import pysteer
from pysteer.evaluation import (INSTRUCTIONS, CheckerUnavailableError, EvalPrompt, EvaluationError,
                                PromptFileError, builtin_prompts, check_instruction, degeneration,
                                generate_responses, ifbench_prompts, is_refusal_or_empty,
                                load_prompts_jsonl, response_perplexity, reward, score_responses,
                                stopword_language)
from pysteer.evaluation import cli as eval_cli
from pysteer.cliargs import UsageError
from pysteer.evaluation.ifbench import ifbench_checkers_available, ifbench_instruction_ids
from pysteer.evaluation.text import count_sentences

from model_zoo import tiny_chat_model, tiny_spec

LT, AL = "less than", "at least"

# instruction id -> (kwargs, a response that follows it, a response that does not)
CASES = {
    "change_case:english_lowercase": ({}, "the moon is a rock that orbits the earth.", "The moon is a rock."),
    "change_case:english_capital": ({}, "THE MOON IS A ROCK THAT ORBITS THE EARTH.", "THE MOON is a rock."),
    "change_case:capital_word_frequency": ({"capital_frequency": 2, "capital_relation": AL},
                                           "The MOON is VERY bright.", "The MOON is bright."),
    "detectable_format:json_format": ({}, '```json\n{"moon": "rock", "distance_km": 384400}\n```',
                                      "moon: rock, distance: far"),
    "detectable_format:number_bullet_lists": ({"num_bullets": 3}, "* one\n* two\n- three",
                                              "* one\n* two\n* three\n* four"),
    "detectable_format:multiple_sections": ({"section_spliter": "Section", "num_sections": 2},
                                            "Section 1\nThe moon.\nSection 2\nThe sun.",
                                            "Section 1\nThe moon and the sun."),
    "detectable_format:title": ({}, "<<Ode to the Moon>>\nThe moon shines.", "Ode to the Moon\nIt shines."),
    "detectable_format:number_highlighted_sections": ({"num_highlights": 2},
                                                      "The *moon* is a *rock*.", "The *moon* is a rock."),
    "detectable_format:constrained_response": ({}, "My answer is yes.", "Yes, definitely."),
    "combination:two_responses": ({}, "The moon is a rock.\n******\nThe moon is a satellite.",
                                  "The moon is a rock.\n******\nThe moon is a rock."),
    "combination:repeat_prompt": ({"prompt_to_repeat": "Describe the moon."},
                                  "Describe the moon. The moon is a rock.", "The moon is a rock."),
    "language:response_language": ({"language": "fr"}, "La lune est une pierre qui tourne autour de la terre.",
                                    "The moon is a rock that goes around the earth."),
    "length_constraints:number_sentences": ({"num_sentences": 3, "relation": LT},
                                            "The moon is a rock. It is bright.",
                                            "The moon is a rock. It is bright. It is far. It is old."),
    "length_constraints:number_words": ({"num_words": 5, "relation": AL},
                                        "The moon is a bright rock.", "The moon shines."),
    "length_constraints:number_paragraphs": ({"num_paragraphs": 2}, "The moon.\n***\nThe sun.",
                                             "The moon.\n***\nThe sun.\n***\nThe stars."),
    "length_constraints:nth_paragraph_first_word": (
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
        "First the moon rose.\n\nThen the sun set.", "First the moon rose.\n\nAfter that the sun set."),
    "keywords:existence": ({"keywords": ["moon", "rock"]}, "The Moon is a rock.", "The moon is bright."),
    "keywords:frequency": ({"keyword": "moon", "frequency": 2, "relation": AL},
                           "The moon, oh moon.", "The moon is bright."),
    "keywords:forbidden_words": ({"forbidden_words": ["rock", "stone"]},
                                 "The moon is rocky and bright.", "The moon is a Rock."),
    "keywords:letter_frequency": ({"letter": "z", "let_frequency": 2, "let_relation": LT},
                                  "The moon is lazy.", "Zigzag lazily."),
    "punctuation:no_comma": ({}, "The moon is a rock and it is bright.", "The moon, a rock, is bright."),
    "startend:end_checker": ({"end_phrase": "Any other questions?"},
                             "The moon is a rock. Any other questions?\n",
                             "Any other questions? The moon is a rock."),
    "startend:start_checker": ({"start_phrase": "Well"}, "Well, the moon is a rock.", "The moon, well, is a rock."),
    "startend:quotation": ({}, '"The moon is a rock."', 'The moon is a "rock".'),
    "detectable_content:postscript": ({"postscript_marker": "P.S."}, "The moon is a rock.\n\nP.S. It is bright.",
                                      "The moon is a rock. PS it is bright."),
    "detectable_content:number_placeholders": ({"num_placeholders": 2}, "Dear [name], meet me at [place].",
                                               "Dear [name], meet me at the park."),
}


def test_every_checker_has_cases():
    assert set(CASES) == set(INSTRUCTIONS)


@pytest.mark.parametrize("instruction_id", sorted(CASES))
def test_checker_pass_and_fail(instruction_id):
    kwargs, good, bad = CASES[instruction_id]
    assert check_instruction(instruction_id, kwargs, good) is True
    assert check_instruction(instruction_id, kwargs, bad) is False
    assert check_instruction(instruction_id, kwargs, "   ") is False   # empty never follows


def test_relations_and_kwargs_from_json():
    # IFBench-style JSON writes counts as floats and pads kwargs with nulls.
    kwargs = {"num_words": 3.0, "relation": LT, "keywords": None}
    assert check_instruction("length_constraints:number_words", kwargs, "Two words")
    assert not check_instruction("length_constraints:number_words", kwargs, "Now three words")


def test_sentence_splitter_ignores_abbreviations_and_decimals():
    assert count_sentences("Dr. Smith measured 3.5 m. He was e.g. happy! Was he?") == 3


def test_stopword_language_detector():
    assert stopword_language("La lune est une pierre et elle tourne autour de la terre.") == "fr"
    assert stopword_language("Der Mond ist ein Stein und er ist nicht weit.") == "de"
    assert stopword_language("El sol es una estrella y la luna no es una estrella.") == "es"
    assert stopword_language("The moon is a rock and it is bright.") == "en"
    assert stopword_language("12345 !!!") is None


def test_strict_vs_loose():
    # A chatty first line breaks JSON strictly; loose scoring drops it.
    response = 'Sure, here is the JSON:\n{"moon": "rock"}'
    assert not check_instruction("detectable_format:json_format", {}, response)
    assert check_instruction("detectable_format:json_format", {}, response, loose=True)
    # Markdown emphasis breaks the quotation check strictly; loose removes the asterisks.
    emphasised = '**"The moon is a rock."**'
    assert not check_instruction("startend:quotation", {}, emphasised)
    assert check_instruction("startend:quotation", {}, emphasised, loose=True)
    prompt = EvalPrompt("k", "Describe the moon. Wrap it in JSON.", "Describe the moon.",
                        ["detectable_format:json_format"], [{}])
    report = score_responses([prompt], [response])
    assert (report.ifr_strict, report.ifr_loose) == (0.0, 1.0)
    assert report.scores[0].per_instruction == {"detectable_format:json_format": False}
    assert report.per_type["detectable_format:json_format"] == {"ifr_strict": 0.0, "ifr_loose": 1.0, "n": 1}


def test_checker_errors_name_the_problem():
    with pytest.raises(EvaluationError, match="did you mean change_case:english_lowercase"):
        check_instruction("change_case:english_lowercas", {}, "x")
    with pytest.raises(EvaluationError, match=r"missing \['num_words'\]"):
        check_instruction("length_constraints:number_words", {"relation": LT}, "x")
    with pytest.raises(EvaluationError, match="unknown argument"):
        check_instruction("punctuation:no_comma", {"comma": 1}, "x")
    with pytest.raises(EvaluationError, match="relation 'at most'"):
        check_instruction("length_constraints:number_words", {"num_words": 3, "relation": "at most"}, "x y")


def test_ifbench_prompts_and_checkers():
    prompts = ifbench_prompts(limit=5)
    assert len(prompts) == 5 and len(ifbench_prompts()) == 294
    ids = ifbench_instruction_ids()
    assert "count:keywords_multiple" in ids and len(ids) >= 50
    assert all(i in ids for p in ifbench_prompts() for i in p.instruction_ids)
    first = prompts[0]
    if ifbench_checkers_available() is None:
        assert isinstance(check_instruction(first.instruction_ids[0], first.kwargs[0], "text",
                                            prompt=first.prompt), bool)
    else:   # offline: spaCy's model and NLTK's data would be downloaded at import
        with pytest.raises(CheckerUnavailableError, match="cannot run here"):
            check_instruction(first.instruction_ids[0], first.kwargs[0], "text", prompt=first.prompt)


def test_refusal_and_empty_detection():
    for text in ["", "  \n ", "I'm sorry, but I can't help with that.", "I cannot write that.",
                 "As an AI language model, I do not have opinions.", "I apologize, but no."]:
        assert is_refusal_or_empty(text), text
    for text in ["The moon is a rock.", "Sorry to hear that! Here are three tips: rest, water, sleep.",
                 "The moon is bright. " * 12 + "I can't say more about it."]:
        assert not is_refusal_or_empty(text), text


def test_degeneration():
    loop = degeneration("the moon is bright and " * 10)
    assert loop["repetition"] > 0.8 and loop["is_degenerate"]
    assert degeneration("a" + "!" * 30)["is_degenerate"]                 # one character, repeated
    assert degeneration("moon \ufffd\ufffd\ufffd \x00 rock")["is_degenerate"]  # broken text
    fine = degeneration("The moon orbits the Earth every 27 days and reflects sunlight.\n\n---\n")
    assert fine == {"repetition": 0.0, "longest_run": 2, "broken": 0.0, "is_degenerate": False}


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_load_prompts_jsonl(tmp_path):
    rows = [{"key": 3, "prompt": "Describe the moon. No commas.", "instruction_id_list": ["punctuation:no_comma"],
             "kwargs": [{"num_words": None}], "base_prompt": "Describe the moon."},
            {"prompt": "Say hi in JSON.", "instruction_id_list": ["detectable_format:json_format"], "kwargs": [{}]}]
    prompts = load_prompts_jsonl(_write(tmp_path / "p.jsonl", [json.dumps(r) for r in rows] + [""]))
    assert [p.key for p in prompts] == ["3", "2"]           # a missing key becomes the line number
    assert prompts[0].kwargs == [{}] and prompts[0].base_prompt == "Describe the moon."
    assert prompts[1].base_prompt == ""
    with pytest.raises(EvaluationError, match="no base_prompt"):
        prompts[1].text(instruction_in_prompt=False)


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "x", "instruction_id_list": ["punctuation:no_comma"]', "not valid JSON"),
    ('{"instruction_id_list": ["punctuation:no_comma"]}', "missing field 'prompt'"),
    ('{"prompt": "x", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}, {}]}', "one per"),
    ('{"prompt": "x", "instruction_id_list": ["no:such_thing"], "kwargs": [{}]}', "unknown instruction"),
    ('["prompt"]', "expected a JSON object"),
])
def test_load_prompts_jsonl_errors_name_file_and_line(tmp_path, line, message):
    good = '{"prompt": "Describe the moon.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}'
    path = _write(tmp_path / "bad.jsonl", [good, line])
    with pytest.raises(PromptFileError, match=rf"bad\.jsonl:2: .*{message}"):
        load_prompts_jsonl(path)
    with pytest.raises(PromptFileError, match="no such prompt file"):
        load_prompts_jsonl(tmp_path / "missing.jsonl")


def test_builtin_prompts_splits_are_disjoint():
    train, heldout, every = builtin_prompts("train"), builtin_prompts("heldout"), builtin_prompts("all")
    assert len(train) + len(heldout) == len(every) and len({p.key for p in every}) == len(every)
    assert not {p.base_prompt for p in train} & {p.base_prompt for p in heldout}
    types = {p.instruction_ids[0] for p in every}
    assert len(types) >= 6
    for instruction_id in types:
        by_type = builtin_prompts("all", [instruction_id])
        assert {p.split for p in by_type} == {"train", "heldout"} and len(by_type) >= 20
    for p in every:   # the instruction comes after the content, and the arguments fit the checker
        assert p.prompt.startswith(p.base_prompt + " ") and len(p.prompt) > len(p.base_prompt) + 10
        check_instruction(p.instruction_ids[0], p.kwargs[0], "some response")
    with pytest.raises(EvaluationError, match="split must be"):
        builtin_prompts("test")
    with pytest.raises(EvaluationError, match="no instruction"):
        builtin_prompts("all", ["keywords:frequency"])


def _prompts(n):
    return [EvalPrompt(f"k{i}", f"Request {i}. Use no commas.", f"Request {i}.", ["punctuation:no_comma"], [{}])
            for i in range(n)]


def test_reward_is_monotone_in_ifr():
    follows, violates = "The moon is a bright rock in the night sky.", "The moon, a rock, is bright."
    rewards = []
    for k in range(5):
        report = score_responses(_prompts(4), [follows] * k + [violates] * (4 - k))
        assert report.ifr_loose == k / 4 and report.rr == 1.0 and report.oq == 1.0
        rewards.append(reward(report))
    assert all(a < b for a, b in zip(rewards, rewards[1:]))
    assert rewards[-1] == pytest.approx(1.0 + 0.5 + 0.5)
    assert reward(report, {"ifr": 1.0}) == 1.0
    with pytest.raises(EvaluationError, match="unknown"):
        reward(report, {"fluency": 1.0})


def test_oq_counts_empty_and_degenerate_responses():
    report = score_responses(_prompts(4), ["The moon is a rock.", "", "I'm sorry, I cannot.", "rock " * 40])
    assert report.rr == 0.5 and report.degenerate_rate == 0.25
    assert report.oq == pytest.approx(0.5)          # refusal is fluent text; empty and looping are not
    assert report.mean_perplexity is None


@pytest.fixture(scope="module")
def tiny():
    return tiny_chat_model(0)


def test_perplexity_finite_and_lower_for_own_greedy_text(tiny):
    model, tokenizer = tiny
    prompts = [p.prompt for p in builtin_prompts("train")[::40]]
    own = generate_responses(model, tokenizer, prompts, max_new_tokens=16)
    ids = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in own]
    gen = torch.Generator().manual_seed(0)
    shuffled = [tokenizer.decode([i[j] for j in torch.randperm(len(i), generator=gen).tolist()]) for i in ids]
    ppl_own = response_perplexity(model, tokenizer, prompts, own, batch_size=2)
    ppl_shuffled = response_perplexity(model, tokenizer, prompts, shuffled, batch_size=3)
    assert all(math.isfinite(v) and v > 1 for v in ppl_own + ppl_shuffled)
    assert sum(map(math.log, ppl_own)) < sum(map(math.log, ppl_shuffled))
    # batching (right padding) does not change a response's perplexity
    alone = response_perplexity(model, tokenizer, prompts[:1], own[:1])
    assert alone[0] == pytest.approx(ppl_own[0], rel=1e-4)
    assert math.isnan(response_perplexity(model, tokenizer, prompts[:1], [""])[0])


def test_perplexity_shares_each_prompt_and_matches_an_unpadded_oracle(tiny):
    """Several responses per prompt (the tuner's q candidates), batches that cut across
    prompt groups: every value equals exp(mean −log p) from one unpadded forward pass."""
    from pysteer.evaluation.metrics import prompt_token_ids
    model, tokenizer = tiny
    prompts = [p.prompt for p in builtin_prompts("train")[::50]][:3]
    answers = ["The moon is a rock.", "hello there, friend", "1 2 3", "Sure! Here it is", "1 2 3"]
    pairs = [(p, a) for a in answers for p in prompts]          # candidate-major, as the tuner
    got = response_perplexity(model, tokenizer, [p for p, _ in pairs], [a for _, a in pairs], batch_size=5)
    for (prompt, answer), value in zip(pairs, got):
        p_ids = prompt_token_ids(tokenizer, prompt, True)
        r_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + r_ids])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        nll = -sum(logprobs[len(p_ids) - 1 + t, r] for t, r in enumerate(r_ids)) / len(r_ids)
        assert value == pytest.approx(math.exp(nll.item()), rel=1e-4)


def test_generate_and_score_with_steering(tiny):
    model, tokenizer = tiny
    prompts = builtin_prompts("heldout")[::20][:4]
    texts = [p.prompt for p in prompts]
    plain = generate_responses(model, tokenizer, texts, max_new_tokens=10)
    spec = tiny_spec(n_configs=2, positions="generated")
    with pysteer.steer(model, spec) as steering:
        unsteered = generate_responses(model, tokenizer, texts, steering=steering, rows=-1, max_new_tokens=10)
        steered = generate_responses(model, tokenizer, texts, steering=steering, rows=[0, 1, 0, 1],
                                     max_new_tokens=10, batch_size=3)
        report = score_responses(prompts, steered, model=model, tokenizer=tokenizer, steering=steering)
        assert steering.state.rows.tolist() == [1] and steering.state.prompt_lengths is not None  # restored
    assert unsteered == plain and steered != plain
    detached = score_responses(prompts, steered, model=model, tokenizer=tokenizer)
    assert [s.perplexity for s in report.scores] == [s.perplexity for s in detached.scores]
    assert all(s.perplexity is not None and s.perplexity > 1 for s in report.scores)
    assert report.n == 4 and 0.0 <= report.oq <= 1.0 and set(report.per_type) == {p.instruction_ids[0] for p in prompts}
    json.dumps(report.to_dict())


def _parser():
    parser = argparse.ArgumentParser(prog="pysteer")
    eval_cli.register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_eval_end_to_end(tiny, tmp_path, capsys):
    model, tokenizer = tiny
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    spec_dir = tmp_path / "spec"
    tiny_spec(n_configs=2).save(spec_dir)
    out = tmp_path / "report.json"
    argv = ["eval", "--prompts", "builtin", "--split", "heldout", "--limit", "2", "--model", str(tmp_path / "model"),
            "--steering", str(spec_dir), "--config", "1", "--max-new-tokens", "6", "--no-instruction",
            "--out", str(out)]
    args = _parser().parse_args(argv)
    assert args.run(args) == 0
    printed = capsys.readouterr().out
    assert "overall" in printed and "RR" in printed and "OQ" in printed
    saved = json.loads(out.read_text())
    assert saved["settings"]["config"] == 1 and len(saved["responses"]) == 2
    assert saved["responses"][0]["prompt"] == builtin_prompts("heldout")[0].base_prompt
    assert set(saved["report"]) >= {"ifr_strict", "ifr_loose", "rr", "oq", "per_type", "scores"}
    with pytest.raises(FileExistsError, match="--overwrite"):
        args.run(_parser().parse_args(argv))
    bad = _parser().parse_args(argv[:-2] + ["--config", "5", "--out", str(tmp_path / "other.json")])
    with pytest.raises(UsageError, match="--config 5 is out of range"):
        bad.run(bad)


def test_cli_eval_fails_before_loading_a_model(tmp_path):
    no_base = _write(tmp_path / "p.jsonl", ['{"prompt": "Hi. No commas.", "instruction_id_list": '
                                            '["punctuation:no_comma"], "kwargs": [{}]}'])
    args = _parser().parse_args(["eval", "--prompts", str(no_base), "--no-instruction", "--model", "/nonexistent"])
    with pytest.raises(EvaluationError, match="no base_prompt"):
        args.run(args)
    if ifbench_checkers_available() is not None:
        args = _parser().parse_args(["eval", "--prompts", "ifbench", "--limit", "3", "--model", "/nonexistent"])
        with pytest.raises(CheckerUnavailableError, match="IFBench"):
            args.run(args)


def test_generate_with_perplexity_gives_the_generation_and_times_its_parts(tiny):
    from pysteer.evaluation import generate_with_perplexity

    model, tokenizer = tiny
    texts = [p.prompt for p in builtin_prompts("heldout")[::30]][:3]
    rows = [0, 1, -1] * len(texts)
    timings = {}
    with pysteer.steer(model, tiny_spec(n_configs=2)) as steering:
        expected = generate_responses(model, tokenizer, texts * 3, steering=steering, rows=rows, max_new_tokens=8)
        responses, perplexities = generate_with_perplexity(model, tokenizer, texts * 3, steering=steering,
                                                           rows=rows, max_new_tokens=8, batch_size=5,
                                                           timings=timings)
        with pytest.raises(EvaluationError, match="rows has 2 entries"):
            generate_with_perplexity(model, tokenizer, texts, steering=steering, rows=[0, 1])
    assert responses == expected
    assert all(math.isfinite(v) and v > 1 for v in perplexities)
    # Unsteered rows (−1) score like the unsteered model's own greedy text: a lower perplexity.
    unsteered = [v for v, r in zip(perplexities, rows) if r == -1]
    assert max(unsteered) < min(v for v, r in zip(perplexities, rows) if r == 1)
    assert set(timings) == {"prompt_pass_s", "generate_s", "score_s"} and all(v > 0 for v in timings.values())
    with pytest.raises(EvaluationError, match="needs an attached steering"):
        generate_with_perplexity(model, tokenizer, texts, steering=None)


def test_generate_with_perplexity_when_layer_0_is_steered():
    """No layer below the steered one: the responses' states are not reused, and the
    perplexity still equals an unpadded unsteered pass over prompt + response."""
    from model_zoo import left_pad, prompts, tiny_model
    from pysteer.evaluation import generate_ids_with_perplexity

    model = tiny_model("llama")
    seqs = prompts(lengths=(4, 7))
    ids, mask = left_pad(seqs)
    ids, mask = ids.repeat(2, 1), mask.repeat(2, 1)
    direction = torch.randn(model.config.hidden_size)
    spec = pysteer.SteeringSpec([pysteer.DenseIntervention(0, direction / direction.norm(), [[4.0], [-4.0]], "add")])
    with pysteer.steer(model, spec) as steering:
        steering.set_rows([0, 0, 1, 1])
        out, values = generate_ids_with_perplexity(steering, ids, mask, max_new_tokens=5, pad_token_id=0,
                                                   eos_token_ids=set())
    for row, value in enumerate(values):
        full = torch.cat([seqs[row % 2], out[row, ids.shape[1]:]]).unsqueeze(0)
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=full).logits[0].double(), -1)
        start = len(seqs[row % 2])
        nll = -sum(logprobs[start - 1 + t, full[0, start + t]] for t in range(5)) / 5
        assert value == pytest.approx(math.exp(float(nll)), rel=1e-4)

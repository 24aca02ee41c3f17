"""The degeneration detector against hand labels, and one minimal case per error class found.

tests/data/degeneration_labels.jsonl: responses of SmolLM2-135M-Instruct (unsteered and
steered), each labelled degenerate or not by reading it (reports/smollm2/degeneration_labels.py
measures the detector on it; reports/smollm2/degeneration.json has the numbers before and
after the fixes below). Each error class the labels showed gets a hand-written case here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pysteer.evaluation import degeneration

LABELS = Path(__file__).resolve().parent / "data" / "degeneration_labels.jsonl"
# The after-fix numbers on the labelled file (precision 0.984, recall 0.854), rounded down to 0.05.
PRECISION_FLOOR, RECALL_FLOOR = 0.95, 0.85


def _rows() -> list[dict]:
    with open(LABELS, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_labelled_file_is_complete():
    rows = _rows()
    assert len(rows) >= 80 and len({r["id"] for r in rows}) == len(rows)
    assert sum(r["degenerate"] for r in rows) >= 25 and sum(not r["degenerate"] for r in rows) >= 40
    fields = {"id", "source", "prompt", "instruction_id", "instruction_in_prompt", "steered", "response",
              "degenerate", "category", "kind", "why"}
    assert all(fields <= set(r) for r in rows)
    assert all(r["category"] == "good" for r in rows if not r["degenerate"])
    assert all(r["category"] in ("loop", "broken") and r["why"] for r in rows if r["degenerate"])
    good_kinds = {r["kind"] for r in rows if not r["degenerate"]}
    assert {"french", "list", "json", "one_liner"} <= good_kinds


def test_precision_and_recall_on_the_labelled_file():
    tp = fp = fn = 0
    for row in _rows():
        flagged = degeneration(row["response"])["is_degenerate"]
        tp += flagged and row["degenerate"]
        fp += flagged and not row["degenerate"]
        fn += not flagged and row["degenerate"]
    assert tp / (tp + fp) >= PRECISION_FLOOR
    assert tp / (tp + fn) >= RECALL_FLOOR


# ------------------------------------------------------------------ the error classes found
def test_loop_after_a_good_opening_is_caught_in_the_second_half():
    # The whole-text n-gram rate is diluted by the good opening (0.47 here); greedy loops
    # run to the end, so the second half repeats earlier text almost entirely.
    text = ("Owls are nocturnal birds of prey with large eyes, soft feathers and a keen sense of hearing. "
            + "I'm here to help with anything. " * 4)
    verdict = degeneration(text)
    assert verdict["repetition"] > 0.5 and verdict["is_degenerate"]


def test_list_repeating_one_item_under_changing_numbers():
    # "1. x / 2. x / 3. x": each n-gram holds a different number, so nothing repeated before.
    text = "En français, cette liste est:\n\n" + "".join(f"{i}. **Bien sûr**\n" for i in range(1, 7))
    assert degeneration(text)["is_degenerate"]
    numbered = "1. Snow forms when water freezes in clouds.\n" + "".join(
        f"{i}. The process is a natural cycle.\n" for i in range(2, 6))
    assert degeneration(numbered)["is_degenerate"]


def test_sub_word_unit_glued_into_a_loop():
    # "BUSBUSBUS…" is one word (no n-gram repeats) and no single character repeats.
    verdict = degeneration("FUSBUSI, FALT " + "BUS" * 20)
    assert verdict["longest_run"] >= 20 and verdict["is_degenerate"]


def test_markup_tokens_repeated_without_words():
    # "* * * …": the words are too few for n-grams, and "*" and " " are rule characters.
    assert degeneration("The *S *sing *S" + " *" * 40)["is_degenerate"]
    assert degeneration(' "' + '  "' * 30)["is_degenerate"]


def test_markup_without_content():
    # Irregular bullet markers with nothing in them: no unit repeats ten times back to back.
    text = "- ***\n- **\n- **\n\n- **\n- **\n\n- **\n\n- **\n\n- **\n\n-"
    verdict = degeneration(text)
    assert verdict["broken"] > 0.5 and verdict["is_degenerate"]


def test_whitespace_filler_after_one_character():
    # A quote and then spaces to the token limit: not indentation, so the run counts.
    verdict = degeneration(' "' + " " * 60)
    assert verdict["longest_run"] >= 60 and verdict["is_degenerate"]


def test_glued_nonsense_letters_are_broken():
    # 40 letters with no space, digit or case change: no word of any language is that long.
    verdict = degeneration("Als Büeil famiepiqtorvanelsukidrobatenmuflorikasquend ufiki.")
    assert verdict["broken"] > 0.02 and verdict["is_degenerate"]


# ----------------------------------------------- what must stay readable (no new false positives)
@pytest.mark.parametrize("text", [
    # JSON whose records share their keys
    json.dumps([{"name": n, "age": 20 + i, "city": c} for i, (n, c) in
                enumerate(zip(["Ana", "Ben", "Cleo", "Dan", "Eve"], ["Paris", "Lyon", "Nice", "Lille", "Metz"]))],
               indent=4),
    json.dumps([{"id": i, "done": False} for i in range(10)]),
    '```json\n{\n  "ok": true\n}\n```',
    # lists repeat their markers, tables their separators
    "* Apples\n* Pears\n* Plums\n\n* * *\n\nThat is all.",
    "| Planet | Moons |\n| --- | --- |\n| Mercury | 0 |\n| Venus | 0 |\n| Earth | 1 |\n| Mars | 2 |",
    "\n".join(f"{i}. Add the {w}." for i, w in enumerate(["flour", "sugar", "eggs", "milk", "butter"], 1)),
    "\n".join(f"- **{k}**: {v}" for k, v in [("Name", "Ana"), ("Age", "30"), ("City", "Paris"), ("Job", "Nurse")]),
    # code: indentation, long identifiers, repeated structure
    "class P:\n    def get_a(self):\n        return self.a\n\n    def get_b(self):\n        return self.b\n",
    "Use AbstractSingletonProxyFactoryBean in Spring.",
    # French, short answers, numbers
    "Le soleil est une étoile. Il se lève à l'est et se couche à l'ouest. Sa lumière met huit minutes à "
    "nous parvenir.",
    "Snow is formed when water evaporates, and snow is formed when water evaporates.",
    "Forever.",
    "A quintillion is 1,000,000,000,000,000,000.",
    "Count with me: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12.",
])
def test_readable_structures_stay_readable(text):
    assert not degeneration(text)["is_degenerate"], degeneration(text)

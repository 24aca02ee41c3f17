"""A no-comma vector read where the model is about to write a comma, TRAIN prompts only (nothing
held out is read).

``run.py``'s answer read-out averages the residual over a whole answer: dropping the commas
changes a few tokens of sixty, so for no commas it reads almost nothing. This reads the residual
where the decision is made instead. In the model's own answers to the discovery queries, the
residual at position t predicts token t+1; per answer, v_answer = mean over the positions whose
next token is not a comma − mean over those whose next token is one, and v = the mean over the
answers that have a comma (:func:`pysteer.discovery.next_token_vectors`, which this probe's
first version computed inline). Added as ``h + s·‖v‖·u`` — pushed away from "a comma comes next" — at
layers 15-24, judged by the report's rule on no commas' 20 train prompts without the instruction,
at 64 tokens:

    python reports/smollm2/tried/response-contrast-on-train/next_token.py   # ~15 min on 2 CPU cores

Writes ``next_token.json`` and ``next_token.md`` next to this file. They were measured before the
operating point's rule took the sign test (:data:`pysteer.experiment.frontier.SIGNIFICANCE`): the
strengths they mark are the best within the bounds with any gain, and their points carry no
per-prompt outcomes. ``next_token_fine.py`` ran with the test.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pysteer.discovery import next_token_vectors
from pysteer.evaluation import builtin_prompts
from pysteer.experiment import get_type
from pysteer.experiment.pipeline import Budget
from pysteer.models import load_model
from run import own_answers  # run.py put tried/ on sys.path
from train_log import TrainLog

HERE = Path(__file__).resolve().parent
RUNS = [(layer, positions, (0.25, 0.5, 1.0, 1.5, 2.0, 3.0)) for positions in ("all", "generated")
        for layer in (15, 18, 21, 24)]


def has_comma(piece: str) -> bool:
    return "," in piece


def probe(runs, stem: str) -> None:
    """The no-comma next-token vector at each (layer, positions, strengths) of ``runs``; writes STEM.json/.md."""
    torch.manual_seed(0)
    budget = Budget.report()
    model, tokenizer = load_model(device="cpu")
    log = TrainLog("A no-comma vector read where a comma comes next, on train prompts (20, no instruction, "
                   "64 tokens)", runs=[list(map(str, run)) for run in runs])
    questions, own = own_answers(model, tokenizer, budget)
    vectors = next_token_vectors(model, tokenizer, questions, own, has_comma,
                                 sorted({layer for layer, _, _ in runs}), instruction="no_comma")
    train = builtin_prompts("train", [get_type("no_comma").instruction_id])[:budget.validation]
    log.sweep_runs(model, tokenizer, vectors, train, runs, budget.eval_max_new_tokens,
                   HERE / f"{stem}.json", HERE / f"{stem}.md")

def main() -> int:
    probe(RUNS, "next_token")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

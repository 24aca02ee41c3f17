"""A difference in means read from *answers*, measured on TRAIN prompts only (nothing held out is read).

Stolfo et al.'s vector is read at the last prompt token: what changes in the residual when the
instruction is in the prompt. On this model that vector moves lowercase, uppercase, JSON and
bullets only where the answers degenerate (layers 9-27, ``tried/late-layers-on-train/``). This
asks a different question: what changes in the residual while the model *reads an answer that
complies* instead of its own answer. The model's unsteered answers to the discovery queries
(never a held-out request) are rewritten by rule into complying ones — ``text.lower()``,
``text.upper()``, the first three sentences as ``*`` bullets, ``{"answer": ...}`` — and
v = mean over pairs of (mean residual over the complying answer's tokens − the same over the
original's), both read after the chat-templated question without the instruction
(:func:`pysteer.discovery.answer_vectors`, which this probe's first version computed inline). It is then
added as ``h + s·‖v‖·u`` at every position and judged by the report's rule
(:func:`pysteer.experiment.frontier.best_point`) on each type's 20 train prompts without the
instruction, at 64 tokens:

    python reports/smollm2/tried/response-contrast-on-train/run.py     # ~10 min on 2 CPU cores

Writes ``train_frontiers.json`` and ``results.md`` next to this file.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import torch

from pysteer.discovery import answer_vectors
from pysteer.evaluation import builtin_prompts, generate_responses
from pysteer.experiment import get_type
from pysteer.experiment.frontier import sweep
from pysteer.experiment.pipeline import Budget, discovery_queries
from pysteer.models import load_model

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from train_log import TrainLog  # noqa: E402
LAYERS = (12, 15, 18)
STRENGTHS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
N_PAIRS = 32


def bullets(text: str) -> str:
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]
    return "\n".join(f"* {s}" for s in sentences[:3])


REWRITES = {"lowercase": str.lower, "uppercase": str.upper, "bullets": bullets,
            "json": lambda text: json.dumps({"answer": text.split("\n")[0].strip()})}


def own_answers(model, tokenizer, budget: Budget) -> tuple[list[str], list[str]]:
    """The first ``N_PAIRS`` discovery queries and the model's unsteered answers to them."""
    questions = discovery_queries()[:N_PAIRS]
    return questions, generate_responses(model, tokenizer, questions, max_new_tokens=budget.eval_max_new_tokens,
                                         batch_size=16)


def main() -> int:
    torch.manual_seed(0)
    budget = Budget.report()
    model, tokenizer = load_model(device="cpu")
    log = TrainLog("A difference in means read from rewritten answers, on train prompts (20 per type, no "
                   "instruction, 64 tokens)", layers=list(LAYERS), strengths=list(STRENGTHS), n_pairs=N_PAIRS)
    questions, own = own_answers(model, tokenizer, budget)
    for name, rewrite in REWRITES.items():
        itype = get_type(name)
        train = builtin_prompts("train", [itype.instruction_id])[:budget.validation]
        vectors = answer_vectors(model, tokenizer, questions, own, rewrite, LAYERS, instruction=name)
        for layer in LAYERS:
            frontier = sweep(model, tokenizer, vectors[layer].spec("add"), train, STRENGTHS,
                             max_new_tokens=budget.eval_max_new_tokens, label=f"layer {layer}")
            log.add(f"{name}/layer {layer}", f"{name}: layer {layer}, ‖v‖ = {vectors[layer].norm:.1f}", frontier,
                    vector_norm=vectors[layer].norm)
    log.write(HERE / "train_frontiers.json", HERE / "results.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Diff-means at later layers, measured on TRAIN prompts only (nothing held out is read).

Target (a) is missed by one type, and the report steers every type at layer 15. Stolfo et
al. choose the layer per instruction, and SAIF reads its features from the last layers for
keyword inclusion, where a direction can reach the unembedding of a word almost directly.
The layer searches so far (``layer_search.py``: 9-21 on four types; the earlier report: 12,
15, 18) never went past layer 21 and never searched the keyword, French or bullets types.
This script asks whether a later layer's vector would give the six types that do not pass
an operating point, by the report's own rule (:func:`pysteer.experiment.frontier.best_point`)
on each type's 20 train prompts sent without the instruction, answered at 64 tokens, over
the report's strengths (``h + s·‖v_ℓ‖·u``):

    python reports/smollm2/tried/late-layers-on-train/run.py     # ~15 min on 2 CPU cores (861 s)

Writes ``train_frontiers.json`` and ``results.md`` next to this file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from pysteer.discovery import instruction_vectors
from pysteer.evaluation import builtin_prompts
from pysteer.experiment import get_type
from pysteer.experiment.frontier import sweep
from pysteer.experiment.pipeline import Budget, discovery_queries
from pysteer.models import load_model

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from train_log import TrainLog  # noqa: E402
LAYERS = (18, 21, 24, 27)
TYPES = ("keyword", "french", "bullets", "json", "lowercase", "uppercase")  # the six that miss (a)


def layer_frontiers(model, tokenizer, name: str, layers, strengths, budget: Budget):
    """Yield (layer, train frontier, ‖v_ℓ‖) for one type's vectors."""
    itype = get_type(name)
    train = builtin_prompts("train", [itype.instruction_id])[:budget.validation]
    vectors = instruction_vectors(model, tokenizer, itype.instruction_text, list(layers), discovery_queries(),
                                  n_prompts=budget.n_pairs, batch_size=budget.batch_size, progress=False)
    for layer in layers:
        frontier = sweep(model, tokenizer, vectors[layer].spec("add"), train, strengths,
                         max_new_tokens=budget.eval_max_new_tokens, label=f"layer {layer}")
        yield layer, frontier, vectors[layer].norm


def main() -> int:
    torch.manual_seed(0)
    budget = Budget.report()
    model, tokenizer = load_model(device="cpu")
    log = TrainLog("Diff-means at later layers, on train prompts (20 per type, no instruction, 64 tokens)",
                   layers=list(LAYERS))
    for name in TYPES:
        for layer, frontier, norm in layer_frontiers(model, tokenizer, name, LAYERS, budget.strengths, budget):
            log.add(f"{name}/layer {layer}", f"{name}: layer {layer}", frontier, vector_norm=norm)
    log.write(HERE / "train_frontiers.json", HERE / "results.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

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

import json
import time
from pathlib import Path

import torch

from pysteer.discovery import instruction_vectors
from pysteer.evaluation import builtin_prompts
from pysteer.experiment import get_type
from pysteer.experiment.frontier import REPORT_BOUNDS, best_point, format_frontier, sweep
from pysteer.experiment.pipeline import Budget, discovery_queries
from pysteer.models import load_model

HERE = Path(__file__).resolve().parent
LAYERS = (18, 21, 24, 27)
TYPES = ("keyword", "french", "bullets", "json", "lowercase", "uppercase")  # the six that miss (a)


def layer_frontiers(model, tokenizer, name: str, layers, strengths, budget: Budget):
    """Yield (layer, train frontier, operating strength or None, ‖v_ℓ‖) for one type's vectors."""
    itype = get_type(name)
    train = builtin_prompts("train", [itype.instruction_id])[:budget.validation]
    vectors = instruction_vectors(model, tokenizer, itype.instruction_text, list(layers), discovery_queries(),
                                  n_prompts=budget.n_pairs, batch_size=budget.batch_size, progress=False)
    for layer in layers:
        frontier = sweep(model, tokenizer, vectors[layer].spec("add"), train, strengths,
                         max_new_tokens=budget.eval_max_new_tokens, label=f"layer {layer}")
        _, point = best_point({layer: frontier}, REPORT_BOUNDS)
        yield layer, frontier, None if point is None else point.strength, vectors[layer].norm


def main() -> int:
    torch.manual_seed(0)
    budget = Budget.report()
    model, tokenizer = load_model(device="cpu")
    doc, lines = {"bounds": REPORT_BOUNDS.to_json(), "layers": list(LAYERS), "frontiers": {}}, []
    start = time.perf_counter()
    for name in TYPES:
        for layer, frontier, chosen, norm in layer_frontiers(model, tokenizer, name, LAYERS, budget.strengths, budget):
            doc["frontiers"][f"{name}/layer {layer}"] = {**frontier.to_json(), "operating_strength": chosen,
                                                          "vector_norm": norm}
            table = format_frontier(frontier, chosen=0.0 if chosen is None else chosen)
            lines += [f"### {name}: layer {layer} (operating point: {'none' if chosen is None else chosen})", "",
                      "```", table, "```", ""]
            print(f"{name} layer {layer}: {chosen}  [{time.perf_counter() - start:.0f} s]\n{table}", flush=True)
    doc["seconds"] = round(time.perf_counter() - start, 1)
    (HERE / "train_frontiers.json").write_text(json.dumps(doc, indent=1))
    (HERE / "results.md").write_text("# Diff-means at later layers, on train prompts (20 per type, no instruction, "
                                     "64 tokens)\n\n`>` the operating point by the report's rule, `*` within the "
                                     "bounds.\n\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

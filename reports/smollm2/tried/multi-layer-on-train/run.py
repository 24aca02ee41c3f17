"""Diff-means spread over several layers, measured on TRAIN prompts only (nothing held out is read).

Every single-layer vector tried (layers 9-27) moves the six types that miss target (a) only
where the answers degenerate. A common remedy in the activation-addition literature is to add
a smaller share of each layer's own vector at several layers, so that no single residual is
pushed far off its distribution. Here layer ℓ in a set of n layers gets ``s·‖v_ℓ‖·u_ℓ / n``
(one spec, n dense interventions, one strength scaling them all), judged by the report's rule
(:func:`pysteer.experiment.frontier.best_point`) on each type's 20 train prompts sent without the
instruction, answered at 64 tokens:

    python reports/smollm2/tried/multi-layer-on-train/run.py     # ~15 min on 2 CPU cores

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
from pysteer.spec import SteeringSpec

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from train_log import TrainLog  # noqa: E402
LAYER_SETS = ((12, 15, 18), (9, 12, 15, 18, 21))
STRENGTHS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
TYPES = ("keyword", "french", "bullets", "json", "lowercase", "uppercase")  # the six that miss (a)


def spread_spec(vectors, layers) -> SteeringSpec:
    """One configuration adding ``‖v_ℓ‖/n · u_ℓ`` at each of the n ``layers``."""
    parts = [vectors[layer].spec("add", vectors[layer].norm / len(layers)) for layer in layers]
    return SteeringSpec([p.interventions[0] for p in parts], "all", dict(parts[0].model),
                        {"method": "diff_in_means", "layers": list(layers), "share": 1 / len(layers)})


def main() -> int:
    torch.manual_seed(0)
    budget = Budget.report()
    model, tokenizer = load_model(device="cpu")
    all_layers = sorted({layer for layers in LAYER_SETS for layer in layers})
    log = TrainLog("Diff-means spread over several layers, on train prompts (20 per type, no instruction, "
                   "64 tokens)", layer_sets=[list(s) for s in LAYER_SETS], strengths=list(STRENGTHS))
    for name in TYPES:
        itype = get_type(name)
        train = builtin_prompts("train", [itype.instruction_id])[:budget.validation]
        vectors = instruction_vectors(model, tokenizer, itype.instruction_text, all_layers, discovery_queries(),
                                      n_prompts=budget.n_pairs, batch_size=budget.batch_size, progress=False)
        for layers in LAYER_SETS:
            label = "layers " + ",".join(map(str, layers))
            frontier = sweep(model, tokenizer, spread_spec(vectors, layers), train, STRENGTHS,
                             max_new_tokens=budget.eval_max_new_tokens, label=label)
            log.add(f"{name}/{label}", f"{name}: {label}", frontier)
    log.write(HERE / "train_frontiers.json", HERE / "results.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

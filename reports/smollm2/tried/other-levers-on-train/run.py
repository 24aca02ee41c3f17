"""Two levers the report does not use, measured on TRAIN prompts only (nothing held out is read).

Target (a) is missed by one type: no frontier point of lowercase, uppercase, JSON, bullets,
French or keyword gains within the bounds. This script asks whether either of two other
levers would have found one, by the report's own operating-point rule
(:func:`pysteer.experiment.frontier.best_point`) on each type's 20 train prompts sent
without the instruction, answered at 64 tokens:

- ``dm-prompt``: the diff-means vector of the report (layer 15, ``h + s·‖v‖·u``) applied to
  the prompt's positions only (``positions="prompt"``): the generated tokens are not edited,
  so the text might loop less; larger strengths, as the edit reaches the answer only
  through the cache.
- ``saif-activation-units``: SAIF's latents with coefficients in the latents' own units,
  each one's sensitivity (mean activation with the instruction minus without). SAIF's
  default total coefficient of 8 adds an edit of norm ~2.5 at layer 15, where the diff-means
  vector's norm is 52-62; in these units the edit's norm is 10-12 at s = 1.

    python reports/smollm2/tried/other-levers-on-train/run.py     # ~20 min on 2 CPU cores

Writes ``train_frontiers.json`` and ``results.md`` next to this file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from pysteer.discovery import instruction_vectors, saif
from pysteer.discovery.prompts import sample
from pysteer.evaluation import builtin_prompts
from pysteer.experiment import TYPE_NAMES, get_type
from pysteer.experiment.frontier import REPORT_BOUNDS, best_point, format_frontier, sweep
from pysteer.experiment.pipeline import Budget, discovery_queries
from pysteer.models import load_model, shipped_sae
from pysteer.spec import SparseIntervention, SteeringSpec

HERE = Path(__file__).resolve().parent
LAYER = 15
LEVERS = {"dm-prompt": (1.0, 2.0, 3.0, 4.0, 6.0, 8.0), "saif-activation-units": (0.5, 1.0, 2.0, 3.0, 4.0)}


def lever_specs(model, tokenizer, sae, itype, budget: Budget) -> dict[str, SteeringSpec]:
    """Each lever's spec at strength 1, discovered exactly as the report discovers its methods."""
    vector = instruction_vectors(model, tokenizer, itype.instruction_text, [LAYER], discovery_queries(),
                                 n_prompts=budget.n_pairs, batch_size=budget.batch_size, progress=False)[LAYER]
    found = saif(model, tokenizer, sae, itype.instruction_text, variants=itype.variants(),
                 contents=sample(discovery_queries(), budget.n_contents, 0), layer=LAYER,
                 batch_size=budget.batch_size, progress=False)
    sensitivity = found.scores["sensitivity"][torch.tensor(found.features)].float()
    iv = SparseIntervention.from_sae(sae, found.features, sensitivity.unsqueeze(0), "add", layer=LAYER)
    return {"dm-prompt": vector.spec("add", positions="prompt"),
            "saif-activation-units": SteeringSpec([iv], model=dict(found.spec().model))}


def main() -> int:
    torch.manual_seed(0)
    budget = Budget.report()
    model, tokenizer = load_model(device="cpu")
    sae = shipped_sae(LAYER, device="cpu")
    doc, lines = {"bounds": REPORT_BOUNDS.to_json(), "layer": LAYER, "frontiers": {}}, []
    start = time.perf_counter()
    for name in TYPE_NAMES:
        itype = get_type(name)
        train = builtin_prompts("train", [itype.instruction_id])[:budget.validation]
        for lever, spec in lever_specs(model, tokenizer, sae, itype, budget).items():
            frontier = sweep(model, tokenizer, spec, train, LEVERS[lever], max_new_tokens=budget.eval_max_new_tokens,
                             label=lever)
            _, point = best_point({lever: frontier}, REPORT_BOUNDS)
            chosen = None if point is None else point.strength
            doc["frontiers"][f"{name}/{lever}"] = {**frontier.to_json(), "operating_strength": chosen}
            lines += [f"### {name}: {lever} (operating point: {'none' if chosen is None else chosen})", "",
                      "```", format_frontier(frontier, chosen=0.0 if chosen is None else chosen), "```", ""]
            print(f"{name} {lever}: {chosen}", flush=True)
    doc["seconds"] = round(time.perf_counter() - start, 1)
    (HERE / "train_frontiers.json").write_text(json.dumps(doc, indent=1))
    (HERE / "results.md").write_text("# Other levers, on train prompts (20 per type, no instruction, 64 tokens)\n\n"
                                     "`>` the operating point by the report's rule, `*` within the bounds.\n\n"
                                     + "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

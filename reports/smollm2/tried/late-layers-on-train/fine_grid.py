"""A finer strength grid where run.py's frontiers cross the bounds (TRAIN prompts only):
keyword at layers 24 and 27 between s = 1 and 1.5, French at layer 18 between 0.5 and 1.

    python reports/smollm2/tried/late-layers-on-train/fine_grid.py   # ~3 min; prints the frontiers

Its output is in results.md ("Finer grid").
"""

from __future__ import annotations

import torch
from run import layer_frontiers
from train_log import TrainLog  # run.py put tried/ on sys.path

from pysteer.experiment.pipeline import Budget
from pysteer.models import load_model

FINE = (("keyword", (24, 27), (1.1, 1.2, 1.3, 1.4)), ("french", (18,), (0.6, 0.7, 0.8, 0.9)))


def main() -> int:
    torch.manual_seed(0)
    budget = Budget.report()
    model, tokenizer = load_model(device="cpu")
    log = TrainLog("Diff-means at later layers, a finer grid")  # printed, not written
    for name, layers, strengths in FINE:
        for layer, frontier, norm in layer_frontiers(model, tokenizer, name, layers, strengths, budget):
            log.add(f"{name}/layer {layer}", f"{name} layer {layer}", frontier, vector_norm=norm)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

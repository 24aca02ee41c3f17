"""Evidence for where SmolLM2-135M-Instruct's SAEs go: Stolfo et al.'s layer search.

For each instruction type of the report, the difference-in-means vector v_ℓ is
computed at every candidate layer from (base, base + instruction) pairs, added alone
(no instruction in the prompt) at c = s·‖v_ℓ‖ for each scale s to the *train* prompts
of that type, and scored by IFR (loose); a coefficient whose outputs degenerate
(> 20 %) is disqualified and a layer scores its best qualified coefficient. (At the
paper's single coefficient — the projection form with z̄ — every layer scored 0 on the
case instructions for this 135M model, which tells nothing apart; hence the scales.)
The layers that win, and where steering works at all, are where the shipped SAEs go.

    python reports/smollm2/layer_search.py          # ~10 min on 2 CPU cores

Writes reports/smollm2/layer_search.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import torch

from pysteer.discovery import evaluation_scorer, layer_search
from pysteer.evaluation import builtin_prompts
from pysteer.fileio import write_json_atomic
from pysteer.models import load_model

HERE = Path(__file__).resolve().parent
# instruction text used for the (base, base + instruction) pairs → the IFEval id scored
TYPES = {
    "Use only lowercase letters in your response.": "change_case:english_lowercase",
    "Respond using only uppercase letters.": "change_case:english_capital",
    "Respond only with a JSON object.": "detectable_format:json_format",
    "Write your response without using a single comma.": "punctuation:no_comma",
}


def _decisive(scores: dict) -> bool:
    """A type tells layers apart only if its qualified layers do not all score the same
    (all-zero types pick the first layer by the tie rule, which is no evidence)."""
    qualified = {round(v["accuracy"], 9) for v in scores.values() if not v["disqualified"]}
    return len(qualified) > 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[6, 9, 12, 15, 18, 21, 24])
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    ap.add_argument("--n-validation", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--out", default=str(HERE / "layer_search.json"))
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model, tokenizer = load_model()
    scorer = evaluation_scorer(max_new_tokens=args.max_new_tokens, batch_size=args.n_validation)
    rows, wins = [], collections.Counter()  # wins: only types whose layers score differently
    for instruction, iid in TYPES.items():
        start = time.perf_counter()
        validation = builtin_prompts("train", [iid])[:args.n_validation]
        search = layer_search(model, tokenizer, instruction, validation, scorer, candidate_layers=args.layers,
                              mode="add", scales=args.scales, batch_size=16, progress=False, seed=0)
        scores = {str(k): vars(v) for k, v in search.scores.items()}
        grid = {str(k): [vars(v) for v in tried] for k, tried in search.grid.items()}
        rows.append({"instruction": instruction, "instruction_id": iid, "best_layer": search.best_layer,
                     "baseline": vars(search.baseline) if search.baseline else None, "scores": scores,
                     "grid": grid,
                     "seconds": round(time.perf_counter() - start, 1)})
        decisive = _decisive(scores)
        rows[-1]["decisive"] = decisive
        if decisive:
            wins[search.best_layer] += 1
        print(f"{iid}: best layer {search.best_layer}; "
              + ", ".join(f"{k}:{v['accuracy']:.1f}{'x' if v['disqualified'] else ''}" for k, v in scores.items()),
              flush=True)
    doc = {"model": "SmolLM2-135M-Instruct", "method": "difference in means, add form at c = scale x |v|, no "
           "instruction in the prompt, IFR loose on train prompts, best qualified scale per layer; x = every "
           "scale disqualified (degenerate > 0.2)", "candidate_layers": args.layers, "scales": args.scales, "n_validation": args.n_validation,
           "max_new_tokens": args.max_new_tokens, "types": rows, "wins": dict(wins)}
    write_json_atomic(args.out, doc)
    print(f"wins per layer: {dict(wins)}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How well :func:`pysteer.evaluation.degeneration` agrees with hand labels.

tests/data/degeneration_labels.jsonl holds responses of SmolLM2-135M-Instruct (greedy,
64 new tokens: unsteered, and steered by difference in means, SAIF and Concise-SAE,
some at strong coefficients), each labelled by reading it: ``degenerate`` (a loop,
or broken/unreadable text) or not (a readable answer, even a wrong, short or
instruction-ignoring one), with a ``category`` (loop / broken / good) and a ``kind``
(french, list, json, one_liner, prose, code, uppercase, lowercase, markup, foreign).

This script runs the detector on every response and writes precision, recall and F1
of ``is_degenerate`` against the labels (positive = degenerate), the confusion counts,
the results per category and per kind, and the misclassified ids, to
reports/smollm2/degeneration.json under the key given by ``--stage`` (the other
stages already in the file are kept, so "before" and "after" a detector change sit
side by side)::

    python reports/smollm2/degeneration_labels.py --stage before   # with the old detector
    python reports/smollm2/degeneration_labels.py                  # --stage after

Needs no model: a fraction of a second.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from pysteer.evaluation import degeneration

ROOT = Path(__file__).resolve().parents[2]
LABELS = ROOT / "tests" / "data" / "degeneration_labels.jsonl"
OUT = Path(__file__).resolve().parent / "degeneration.json"


def load_labels(path: Path = LABELS) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def measure(rows: list[dict]) -> dict:
    tp = fp = fn = tn = 0
    groups: dict[str, dict[str, dict]] = {"per_category": defaultdict(lambda: {"n": 0, "flagged": 0, "correct": 0}),
                                          "per_kind": defaultdict(lambda: {"n": 0, "degenerate": 0, "tp": 0,
                                                                           "fp": 0, "fn": 0, "tn": 0})}
    false_positives, false_negatives = [], []
    for row in rows:
        verdict = degeneration(row["response"])
        flagged, truth = bool(verdict["is_degenerate"]), bool(row["degenerate"])
        cell = ("tp" if flagged else "fn") if truth else ("fp" if flagged else "tn")
        tp, fp, fn, tn = tp + (cell == "tp"), fp + (cell == "fp"), fn + (cell == "fn"), tn + (cell == "tn")
        category = groups["per_category"][row["category"]]
        category["n"] += 1
        category["flagged"] += flagged
        category["correct"] += flagged == truth
        kind = groups["per_kind"][row["kind"]]
        kind["n"] += 1
        kind["degenerate"] += truth
        kind[cell] += 1
        if flagged != truth:
            entry = {"id": row["id"], "category": row["category"], "kind": row["kind"],
                     "signals": {k: (round(v, 3) if isinstance(v, float) else v)
                                 for k, v in verdict.items() if k != "is_degenerate"}}
            (false_positives if flagged else false_negatives).append(entry)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = (2 * precision * recall / (precision + recall)) if precision and recall else 0.0
    for category in groups["per_category"].values():
        category["accuracy"] = category["correct"] / category["n"]
    for kind in groups["per_kind"].values():
        kind["accuracy"] = (kind["tp"] + kind["tn"]) / kind["n"]
    return {"n": len(rows), "n_degenerate": tp + fn, "n_good": fp + tn,
            "precision": precision, "recall": recall, "f1": f1,
            "accuracy": (tp + tn) / len(rows) if rows else None,
            "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
            "per_category": dict(sorted(groups["per_category"].items())),
            "per_kind": dict(sorted(groups["per_kind"].items())),
            "false_positives": false_positives, "false_negatives": false_negatives,
            "misclassified": [e["id"] for e in false_positives + false_negatives]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", default="after", help="key to write the results under (default: after)")
    parser.add_argument("--labels", type=Path, default=LABELS)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    doc = json.loads(args.out.read_text()) if args.out.is_file() else {}
    result = measure(load_labels(args.labels))
    doc["labels"] = str(args.labels.relative_to(ROOT)) if args.labels.is_relative_to(ROOT) else str(args.labels)
    doc[args.stage] = result
    args.out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"{args.stage}: n={result['n']} precision={result['precision']:.3f} recall={result['recall']:.3f} "
          f"f1={result['f1']:.3f} confusion={result['confusion']}")
    return result


if __name__ == "__main__":
    main()

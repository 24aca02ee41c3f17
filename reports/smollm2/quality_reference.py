"""Which perplexity reference should the quality bound use? Evidence from the hand labels.

For every labelled response (tests/data/degeneration_labels.jsonl) whose prompt is a
built-in held-out prompt p (so its EvalPrompt is known: ``p.prompt`` carries the
instruction, ``p.base_prompt`` does not), with ``sent`` the text that was sent and
``ref`` the unsteered model's own greedy response (64 new tokens) to ``sent``, two
ratios of perplexities under the UNSTEERED model::

    ratio_sent       = ppl(response | sent)     / ppl(ref | sent)
    ratio_instructed = ppl(response | p.prompt) / ppl(ref | p.prompt)

(the two coincide when the instruction was sent). For the bound 1.5 (a response passes
when its ratio ≤ 1.5) it reports, per reference: the share of good (non-degenerate)
responses that pass, the share of degenerate ones it rejects, the share of good
responses that follow their instruction (IFEval loose, :func:`score_responses`) that
pass, and the medians per category — overall, for steered responses alone, and for the
responses generated without the instruction in the prompt (where the references differ).

The references are the unsteered responses already recorded — reports/smollm2/results.json
(``unsteered``) and the unsteered rows of the labels — keyed by the sent text; any sent
prompt without one is generated (``--regenerate``: generate every reference afresh).

    python reports/smollm2/quality_reference.py     # ~1–2 min on 2 CPU cores

Writes reports/smollm2/quality_reference.json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from pysteer.evaluation import builtin_prompts, generate_responses, response_perplexity, score_responses
from pysteer.models import load_model

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
LABELS = ROOT / "tests" / "data" / "degeneration_labels.jsonl"
RESULTS = HERE / "results.json"
OUT = HERE / "quality_reference.json"
BOUND = 1.5
MAX_NEW_TOKENS = 64


def recorded_references(rows: list[dict], held: dict) -> dict[str, str]:
    """sent text -> the unsteered greedy response already recorded for it."""
    refs: dict[str, str] = {}
    if RESULTS.is_file():
        for evaluation in json.loads(RESULTS.read_text())["evaluations"].values():
            for setting, labels in evaluation["settings"].items():
                for key, response in zip(evaluation["prompt_keys"], labels["unsteered"]["responses"]):
                    refs.setdefault(held[key].text(setting == "instruction"), response)
    for row in rows:
        if not row["steered"]:
            refs.setdefault(row["prompt"], row["response"])
    return refs


def _share(flags: list[bool]) -> dict:
    return {"share": sum(flags) / len(flags) if flags else None, "n": len(flags)}


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(values) if values else None


def summarise(items: list[dict], ratio: str) -> dict:
    good = [i for i in items if not i["degenerate"]]
    bad = [i for i in items if i["degenerate"]]
    following = [i for i in good if i["followed_loose"]]
    passes = lambda i: i[ratio] is not None and i[ratio] <= BOUND  # noqa: E731
    categories = sorted({i["category"] for i in items})
    return {"good_pass": _share([passes(i) for i in good]),
            "degenerate_rejected": _share([not passes(i) for i in bad]),
            "good_following_pass": _share([passes(i) for i in following]),
            "good_not_following_pass": _share([passes(i) for i in good if not i["followed_loose"]]),
            "median_per_category": {c: _median([i[ratio] for i in items if i["category"] == c]) for c in categories},
            "median_good_following": _median([i[ratio] for i in following])}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--regenerate", action="store_true", help="generate every reference afresh")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.time()
    held = {p.key: p for p in builtin_prompts("heldout")}
    with open(LABELS, encoding="utf-8") as f:
        rows = [r for r in map(json.loads, filter(str.strip, f)) if r.get("prompt_key") in held]
    model, tokenizer = load_model()
    model.eval()
    refs = {} if args.regenerate else recorded_references(rows, held)
    missing = sorted({r["prompt"] for r in rows} - set(refs))
    if missing:
        refs.update(zip(missing, generate_responses(model, tokenizer, missing, max_new_tokens=MAX_NEW_TOKENS,
                                                    batch_size=args.batch_size)))
    sent = [r["prompt"] for r in rows]
    instructed = [held[r["prompt_key"]].prompt for r in rows]
    responses = [r["response"] for r in rows]
    references = [refs[s] for s in sent]

    def ppl(prompts, texts):
        return response_perplexity(model, tokenizer, prompts, texts, batch_size=args.batch_size)

    # Each distinct (prompt, text) pair is scored once.
    pairs = sorted(set(zip(sent, responses)) | set(zip(sent, references)) | set(zip(instructed, responses))
                   | set(zip(instructed, references)))
    values = dict(zip(pairs, ppl([p for p, _ in pairs], [t for _, t in pairs])))
    items = []
    for row, s, i, response, ref in zip(rows, sent, instructed, responses, references):
        prompt = held[row["prompt_key"]]
        score = score_responses([prompt], [response]).scores[0]

        def ratio(context):
            num, den = values[(context, response)], values[(context, ref)]
            return num / den if math.isfinite(num) and math.isfinite(den) and den > 0 else None

        items.append({"id": row["id"], "degenerate": row["degenerate"], "category": row["category"],
                      "kind": row["kind"], "steered": row["steered"],
                      "instruction_in_prompt": row["instruction_in_prompt"],
                      "followed_loose": score.followed_loose, "followed_strict": score.followed_strict,
                      "ppl_sent": values[(s, response)], "ppl_ref_sent": values[(s, ref)],
                      "ppl_instructed": values[(i, response)], "ppl_ref_instructed": values[(i, ref)],
                      "ratio_sent": ratio(s), "ratio_instructed": ratio(i)})
    subsets = {"all": items, "steered": [i for i in items if i["steered"]],
               "without_instruction": [i for i in items if not i["instruction_in_prompt"]],
               "steered_without_instruction": [i for i in items if i["steered"] and not i["instruction_in_prompt"]]}
    doc = {"bound": BOUND, "labels": str(LABELS.relative_to(ROOT)), "n": len(items),
           "references": {"recorded": len({s for s in sent} - set(missing)), "generated": len(missing)},
           "summary": {name: {"n": len(subset), "ratio_sent": summarise(subset, "ratio_sent"),
                              "ratio_instructed": summarise(subset, "ratio_instructed")}
                       for name, subset in subsets.items()},
           "items": items, "seconds": round(time.time() - start, 1)}
    args.out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    for name, block in doc["summary"].items():
        for ref in ("ratio_sent", "ratio_instructed"):
            s = block[ref]
            print(f"{name:28s} {ref:17s} good pass {s['good_pass']['share']:.2f} (n={s['good_pass']['n']})  "
                  f"degenerate rejected {s['degenerate_rejected']['share']:.2f} (n={s['degenerate_rejected']['n']})  "
                  f"following pass {s['good_following_pass']['share'] if s['good_following_pass']['n'] else float('nan'):.2f}"
                  f" (n={s['good_following_pass']['n']})")
    print(f"wrote {args.out} in {doc['seconds']} s")
    return doc


if __name__ == "__main__":
    main()

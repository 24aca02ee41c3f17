"""The issue's targets, and the results written as JSON and as a markdown report.

Targets, per method, over the report's six instruction types (IFR = IFR loose on the
held-out prompts):

(a) *steering alone*: on at least 3 of the 6 types, steering without the instruction
    raises IFR by ≥ 0.2 (absolute) over the unsteered model without the instruction,
    while its degenerate rate is ≤ 0.10 and its responses' mean perplexity (under the
    unsteered model) is ≤ 1.5 × that of the unsteered responses;
(b) *steering with the instruction*: on at least 4 of the 6 types, instruction +
    steering reaches at least the IFR of the instruction alone.

A target is ``met`` once enough types pass, ``missed`` once too few types are left to
pass, and ``undecided`` in between (fewer than six types evaluated, e.g. the demo).
Comparisons allow 1e-9 of rounding: IFRs are fractions k/n, and 0.3 − 0.1 < 0.2 in floats.

The example outputs shown (console and report) are chosen by :func:`choose_examples`:
per type and setting, the best and the worst case for steering by the per-response reward.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Optional

from ..evaluation.defaults import DEFAULT_WEIGHTS
from ..fileio import write_json_atomic, write_text_atomic
from .names import UNSTEERED

__all__ = ["TARGETS", "targets", "write_report", "format_markdown", "response_score", "choose_examples"]

N_TYPES = 6          # the issue counts passes out of the report's six types
MIN_GAIN = 0.2       # (a): IFR gain of steering alone over no instruction
MAX_DEGENERATE = 0.10
MAX_PPL_RATIO = 1.5
NEED_A, NEED_B = 3, 4
EPS = 1e-9
TARGETS = {
    "a": f"steering without the instruction raises IFR (loose) by >= {MIN_GAIN} over no instruction, with "
         f"degenerate rate <= {MAX_DEGENERATE:.2f} and perplexity <= {MAX_PPL_RATIO}x the unsteered "
         f"responses', on >= {NEED_A} of the {N_TYPES} types",
    "b": f"instruction + steering reaches at least the IFR (loose) of the instruction alone on >= {NEED_B} "
         f"of the {N_TYPES} types",
}


def _rows(result: Any) -> list[dict[str, Any]]:
    """Rows from an ExperimentResult, its ``to_json()`` dict, or a list of rows."""
    if hasattr(result, "rows") and callable(result.rows):
        return result.rows()
    if isinstance(result, Mapping):
        return list(result["rows"])
    return list(result)


def _known(value: Optional[float]) -> bool:
    return value is not None and math.isfinite(value)


def _verdict(per_type: dict[str, dict], need: int) -> dict[str, Any]:
    passed = [name for name, check in per_type.items() if check["passed"]]
    left = max(0, N_TYPES - len(per_type))  # types not evaluated could still pass
    status = "met" if len(passed) >= need else "missed" if len(passed) + left < need else "undecided"
    return {"status": status, "passed": len(passed), "need": need, "of": N_TYPES,
            "evaluated": len(per_type), "passed_types": passed, "per_type": per_type}


def _steering_alone(base: Mapping, steered: Mapping) -> dict[str, Any]:
    gain = steered["ifr_loose"] - base["ifr_loose"]
    ppl, base_ppl = steered["mean_perplexity"], base["mean_perplexity"]
    # Without a perplexity on either side (all responses empty) the rule cannot hold.
    ratio = ppl / base_ppl if _known(ppl) and _known(base_ppl) and base_ppl > 0 else None
    failed = [name for name, ok in (("gain", gain >= MIN_GAIN - EPS),
                                    ("degenerate", steered["degenerate_rate"] <= MAX_DEGENERATE + EPS),
                                    ("perplexity", ratio is not None and ratio <= MAX_PPL_RATIO + EPS)) if not ok]
    return {"ifr_unsteered": base["ifr_loose"], "ifr_steered": steered["ifr_loose"], "gain": gain,
            "degenerate_rate": steered["degenerate_rate"], "perplexity_unsteered": base_ppl,
            "perplexity_steered": ppl, "perplexity_ratio": ratio, "passed": not failed, "failed": failed}


def _with_instruction(alone: Mapping, both: Mapping) -> dict[str, Any]:
    delta = both["ifr_loose"] - alone["ifr_loose"]
    return {"ifr_instruction": alone["ifr_loose"], "ifr_instruction_steered": both["ifr_loose"],
            "delta": delta, "passed": delta >= -EPS}


def targets(result: Any) -> dict[str, Any]:
    """Targets (a) and (b) per method: status, passes, and every type's numbers."""
    rows = _rows(result)
    index = {(r["type"], r["setting"], r["method"]): r for r in rows}
    types = list(dict.fromkeys(r["type"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows if r["steered"]))
    out: dict[str, Any] = {"criteria": dict(TARGETS), "methods": {}}
    for method in methods:
        a, b = {}, {}
        for name in types:
            a[name] = _steering_alone(index[(name, "no_instruction", "unsteered")],
                                      index[(name, "no_instruction", method)])
            b[name] = _with_instruction(index[(name, "instruction", "unsteered")],
                                        index[(name, "instruction", method)])
        out["methods"][method] = {"a": _verdict(a, NEED_A), "b": _verdict(b, NEED_B)}
    return out


# ---------------------------------------------------------------------------- examples
def response_score(score: Any) -> dict[str, Any]:
    """One response's verdicts (from a :class:`~pysteer.evaluation.ResponseScore`) and its
    ``reward``, w_ifr·[followed, loose] + w_rr·[responded] + w_oq·q_n with the tuner's default
    weights: the term whose mean over a cell's responses is the cell's reward."""
    w = DEFAULT_WEIGHTS
    return {"followed": bool(score.followed_loose), "responded": bool(score.responded),
            "degenerate": bool(score.degenerate), "quality": round(float(score.quality), 4),
            "reward": round(w["ifr"] * score.followed_loose + w["rr"] * score.responded + w["oq"] * score.quality, 4)}


def choose_examples(settings: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, list[tuple[str, int]]]:
    """The example outputs to show, as ``{setting: [("best", i), ("worst", j)]}`` (prompt indices).

    ``settings`` is :func:`~.pipeline.evaluate`'s: per setting, cells by label (``unsteered``
    and each method) whose ``scores`` hold each response's ``reward``. A prompt's steered
    reward is the mean over the methods; the best case has the highest, the worst the lowest
    (ties: the larger gain, resp. loss, over the unsteered response, then the earlier
    prompt). Each pick prefers a prompt no earlier pick showed, so two settings show four
    different prompts when there are four.
    """
    chosen: dict[str, list[tuple[str, int]]] = {}
    shown: set[int] = set()
    for key, cells in settings.items():
        steered = [label for label in cells if label != UNSTEERED] or list(cells)
        n = len(cells[steered[0]]["scores"])

        def reward(labels: list[str], i: int) -> float:
            return sum(cells[label]["scores"][i]["reward"] for label in labels) / len(labels)

        base = [reward([UNSTEERED], i) if UNSTEERED in cells else 0.0 for i in range(n)]
        ranked = sorted(range(n), key=lambda i: (-reward(steered, i), -(reward(steered, i) - base[i]), i))
        worst_first = sorted(range(n), key=lambda i: (reward(steered, i), reward(steered, i) - base[i], i))
        picks: list[tuple[str, int]] = []
        for case, order in (("best", ranked), ("worst", worst_first)):
            taken = {i for _, i in picks}
            candidates = [i for i in order if i not in taken] or order
            fresh = [i for i in candidates if i not in shown]
            if candidates:
                picks.append((case, (fresh or candidates)[0]))
        shown.update(i for _, i in picks)
        chosen[key] = picks
    return chosen


# ---------------------------------------------------------------------------- markdown
def _num(value: Optional[float], digits: int = 2) -> str:
    return f"{value:.{digits}f}" if _known(value) else "n/a"


def _cell_text(text: str, limit: int = 300) -> str:
    """A response inside a markdown table cell: one line, pipes escaped, shortened."""
    text = text.strip()
    if len(text) > limit:
        text = text[:limit].rstrip() + " …"
    return (text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "").replace("\n", " ⏎ ")
            or "*(empty)*")


SETTING_NAMES = {("no_instruction", False): "no instruction", ("no_instruction", True): "no instruction + steering",
                 ("instruction", False): "instruction", ("instruction", True): "instruction + steering"}


def format_markdown(doc: Mapping[str, Any], title: str = "Instruction following with steering") -> str:
    """The report as markdown, from :meth:`ExperimentResult.to_json` 's dict."""
    budget, model = doc["budget"], doc.get("model") or {}
    lines = [f"# {title}", "",
             f"Model: {model.get('name') or 'unknown'}; methods: {', '.join(doc['methods'])}; "
             f"layers: {', '.join(f'{t} {l}' for t, l in doc['layers'].items())}; seed {doc['seed']}.",
             f"Held-out prompts: {budget['n_heldout']} per type, greedy, {budget['eval_max_new_tokens']} new "
             f"tokens. Concise-SAE tuned for {budget['tune_rounds']} rounds × q {budget['tune_q']} on "
             f"{budget['tune_minibatch']} train prompts per round, without the instruction.",
             "IFR = instruction-following rate (loose and strict), RR = response rate, OQ = output quality, "
             "ppl = mean perplexity of the responses under the unsteered model.", "",
             "## Results", "",
             "| type | setting | method | IFR loose | IFR strict | RR | OQ | degenerate | ppl |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in doc["rows"]:
        lines.append(f"| {r['type']} | {SETTING_NAMES[(r['setting'], r['steered'])]} | {r['method']} | "
                     f"{_num(r['ifr_loose'])} | {_num(r['ifr_strict'])} | {_num(r['rr'])} | {_num(r['oq'])} | "
                     f"{_num(r['degenerate_rate'])} | {_num(r['mean_perplexity'], 1)} |")
    lines += ["", "## Targets", ""]
    found = doc["targets"]
    for key in ("a", "b"):
        lines.append(f"**({key})** {found['criteria'][key]}.")
        lines.append("")
        for method, verdicts in found["methods"].items():
            v = verdicts[key]
            lines.append(f"- {method}: **{v['status']}** — {v['passed']} of {v['evaluated']} evaluated types pass "
                         f"(need {v['need']} of {v['of']})" + (f": {', '.join(v['passed_types'])}" if v['passed_types'] else ""))
        lines.append("")
        if key == "a":
            lines += ["| method | type | IFR no instr. | + steering | gain | degenerate | ppl ratio | passes |",
                      "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
            for method, verdicts in found["methods"].items():
                for name, c in verdicts["a"]["per_type"].items():
                    lines.append(f"| {method} | {name} | {_num(c['ifr_unsteered'])} | {_num(c['ifr_steered'])} | "
                                 f"{c['gain']:+.2f} | {_num(c['degenerate_rate'])} | {_num(c['perplexity_ratio'])} | "
                                 f"{'yes' if c['passed'] else 'no (' + ', '.join(c['failed']) + ')'} |")
        else:
            lines += ["| method | type | IFR instr. | + steering | change | passes |",
                      "| --- | --- | ---: | ---: | ---: | --- |"]
            for method, verdicts in found["methods"].items():
                for name, c in verdicts["b"]["per_type"].items():
                    lines.append(f"| {method} | {name} | {_num(c['ifr_instruction'])} | "
                                 f"{_num(c['ifr_instruction_steered'])} | {c['delta']:+.2f} | "
                                 f"{'yes' if c['passed'] else 'no'} |")
        lines.append("")
    lines += ["## Example outputs", "",
              "Per type and setting, the prompt where steering's responses score best and the one where "
              "they score worst (mean per-response reward over the methods).", ""]
    for name, evaluation in doc["evaluations"].items():
        for key, with_instruction in (("no_instruction", False), ("instruction", True)):
            cells = evaluation["settings"][key]
            labels = list(cells)
            lines += [f"### {name}: {'with' if with_instruction else 'without'} the instruction", "",
                      "| case | prompt | " + " | ".join(labels) + " |", "| --- " * (len(labels) + 2) + "|"]
            for i, example in enumerate(cells[labels[0]]["examples"]):
                lines.append(f"| {example.get('case', '')} | {_cell_text(example['prompt'])} | "
                             + " | ".join(_cell_text(cells[label]["examples"][i]["response"]) for label in labels)
                             + " |")
            lines.append("")
    lines += ["## Steering specs and timings", "",
              "| type | method | spec | discover (s) | tune (s) |", "| --- | --- | --- | ---: | ---: |"]
    for name, paths in doc["spec_paths"].items():
        timing = doc["timings"][name]
        for method, path in paths.items():
            tune = timing["tune"].get(method)
            lines.append(f"| {name} | {method} | `{path}` | {timing['discover'][method]:.1f} | "
                         f"{'' if tune is None else f'{tune:.1f}'} |")
    totals = doc["total_seconds"]
    evals = ", ".join(f"{n} {t['eval']:.1f} s" for n, t in doc["timings"].items())
    lines += ["", f"Evaluation: {evals}. "
              f"Totals: discover {totals['discover']:.1f} s, tune {totals['tune']:.1f} s, "
              f"eval {totals['eval']:.1f} s.", ""]
    return "\n".join(lines)


def write_report(result: Any, json_path: "str | Path", md_path: "str | Path", *, responses: bool = True,
                 title: str = "Instruction following with steering") -> dict[str, Any]:
    """Write ``result`` (an ExperimentResult) as JSON (every response unless ``responses``
    is False) and as a markdown report; both atomically. Returns the JSON document."""
    doc = result.to_json(responses=responses)
    write_json_atomic(json_path, doc, ensure_ascii=False)
    write_text_atomic(md_path, format_markdown(doc, title))
    return doc

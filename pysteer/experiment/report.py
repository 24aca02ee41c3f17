"""The targets, and the results written as JSON and as a markdown report.

Targets over the report's instruction types (IFR = IFR loose on the held-out prompts), each
judged per type for the *best* of the methods (diff-means, SAIF, Concise-SAE + BO, each at
its operating point chosen on train prompts); "within the bounds" means
:data:`~.frontier.REPORT_BOUNDS`: degenerate rate ≤ 0.10 and the perplexity ratio to the
unsteered model's own responses, both scored under the prompt *with* the instruction
(``ppl_ratio_instructed``), ≤ 1.5.

(a) *steering alone*: on at least 3 types, steering without the instruction raises IFR by
    ≥ 0.2 over the unsteered model without the instruction, within the bounds;
(b) *instruction + steering*: on at least 3 of the types where the instruction alone scores
    below 0.9, instruction + steering beats the instruction alone by ≥ 0.1;
(c) *tuning adds*: for every type and method, the operating point is at least as good as the
    untuned difference-in-means vector (:data:`~.names.UNTUNED`) under the same bounds, where a
    point outside the bounds is worth what not steering is (the unsteered IFR): a user would
    not ship it.

A target is ``met`` once enough types pass, ``missed`` once too few are left to pass, and
``undecided`` in between (a run of fewer types than the report's, e.g. the demo). Each
verdict says by how much a type misses. Comparisons allow 1e-9 of rounding: IFRs are
fractions k/n, and 0.3 − 0.1 < 0.2 in floats.

The example outputs shown (console and report) are chosen by :func:`choose_examples`:
per type and setting, the best and the worst case for steering by the per-response reward.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Optional

from ..evaluation.defaults import DEFAULT_WEIGHTS
from ..fileio import write_json_atomic, write_text_atomic
from .frontier import REPORT_BOUNDS, SIGNIFICANCE, Frontier, format_frontier
from .instructions import TYPE_NAMES
from .names import UNSTEERED, UNTUNED

__all__ = ["TARGETS", "targets", "write_report", "format_markdown", "response_score", "choose_examples"]

N_TYPES = len(TYPE_NAMES)   # the report's types
MIN_GAIN = 0.2              # (a): IFR gain of steering alone over no instruction
MIN_GAIN_B = 0.1            # (b): IFR gain of instruction + steering over the instruction alone
B_BELOW = 0.9               # (b) counts the types where the instruction alone scores below this
NEED_A = NEED_B = 3
EPS = 1e-9
_BOUNDS_TEXT = (f"degenerate rate <= {REPORT_BOUNDS.max_degenerate:.2f} and {REPORT_BOUNDS.ratio_outcome} "
                f"<= {REPORT_BOUNDS.max_ppl_ratio}")
TARGETS = {
    "a": f"steering without the instruction raises IFR (loose) by >= {MIN_GAIN} over no instruction, with "
         f"{_BOUNDS_TEXT}, on >= {NEED_A} types (best method per type)",
    "b": f"instruction + steering beats the instruction alone by >= {MIN_GAIN_B} IFR (loose) on >= {NEED_B} of "
         f"the types where the instruction alone scores below {B_BELOW} (best method per type)",
    "c": f"every method's operating point is at least as good as the untuned difference-in-means vector "
         f"({UNTUNED}) without the instruction, under the same bounds ({_BOUNDS_TEXT}; a point outside them "
         f"counts as not steering)",
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


def _verdict(per_type: dict[str, dict], need: int, eligible: Optional[int] = None,
             of: int = N_TYPES) -> dict[str, Any]:
    """met / missed / undecided from the per-type checks; ``eligible``: types that could
    still count once the rest are run (default: every type not evaluated yet)."""
    passed = [name for name, check in per_type.items() if check["passed"]]
    left = max(0, of - len(per_type)) if eligible is None else eligible
    status = "met" if len(passed) >= need else "missed" if len(passed) + left < need else "undecided"
    return {"status": status, "passed": len(passed), "need": need, "of": of,
            "evaluated": len(per_type), "passed_types": passed, "per_type": per_type}


def _steering_alone(base: Mapping, steered: Mapping) -> dict[str, Any]:
    gain = steered["ifr_loose"] - base["ifr_loose"]
    failed = (["gain"] if gain < MIN_GAIN - EPS else []) + REPORT_BOUNDS.failures(steered)
    return {"ifr_unsteered": base["ifr_loose"], "ifr_steered": steered["ifr_loose"], "gain": gain,
            "degenerate_rate": steered["degenerate_rate"], "ppl_ratio": steered.get("ppl_ratio"),
            "ppl_ratio_instructed": steered.get("ppl_ratio_instructed"), "passed": not failed, "failed": failed}


def _best(checks: Mapping[str, dict], passed_key: str, score_key: str) -> tuple[str, dict]:
    """The method whose check passes (else scores highest): the type's best method."""
    return max(checks.items(), key=lambda item: (item[1][passed_key], item[1][score_key]))


def _value_under_bounds(base: Mapping, point: Mapping) -> float:
    return point["ifr_loose"] if REPORT_BOUNDS.holds(point) else base["ifr_loose"]


def targets(result: Any) -> dict[str, Any]:
    """Targets (a), (b), (c): status, passes, and every type's numbers (best method per type)."""
    rows = _rows(result)
    index = {(r["type"], r["setting"], r["method"]): r for r in rows}
    types = list(dict.fromkeys(r["type"] for r in rows))
    methods = [m for m in dict.fromkeys(r["method"] for r in rows if r["steered"]) if m != UNTUNED]
    a, b, c = {}, {}, {}
    for name in types:
        base, instr = index[(name, "no_instruction", UNSTEERED)], index[(name, "instruction", UNSTEERED)]
        alone = {m: _steering_alone(base, index[(name, "no_instruction", m)]) for m in methods}
        best, check = _best(alone, "passed", "gain")
        within = [m for m, ch in alone.items() if not REPORT_BOUNDS.failures(index[(name, "no_instruction", m)])]
        best_within = max((alone[m]["gain"] for m in within), default=None)
        a[name] = {**check, "method": best, "best_gain_within_bounds": best_within,
                   "short_by": None if check["passed"] else round(MIN_GAIN - (best_within or 0.0), 4),
                   "by_method": alone}
        if instr["ifr_loose"] < B_BELOW - EPS:
            deltas = {m: index[(name, "instruction", m)]["ifr_loose"] - instr["ifr_loose"] for m in methods}
            best_b = max(deltas, key=deltas.get)
            b[name] = {"ifr_instruction": instr["ifr_loose"], "ifr_instruction_steered": instr["ifr_loose"] +
                       deltas[best_b], "delta": deltas[best_b], "method": best_b, "by_method": deltas,
                       "passed": deltas[best_b] >= MIN_GAIN_B - EPS,
                       "short_by": None if deltas[best_b] >= MIN_GAIN_B - EPS else round(MIN_GAIN_B - deltas[best_b], 4)}
        if (name, "no_instruction", UNTUNED) in index:
            baseline = _value_under_bounds(base, index[(name, "no_instruction", UNTUNED)])
            for m in methods:
                value = _value_under_bounds(base, index[(name, "no_instruction", m)])
                c[f"{name}/{m}"] = {"type": name, "method": m, "value": value, "untuned_value": baseline,
                                    "delta": value - baseline, "passed": value >= baseline - EPS}
    # (b) can only count types the instruction alone leaves below 0.9; a run of fewer types
    # stays undecided while an unevaluated type could still count.
    verdict_b = _verdict(b, NEED_B, eligible=max(0, N_TYPES - len(types)), of=N_TYPES)
    verdict_b["eligible_types"] = len(b)
    n_c = len(c)
    failed_c = [k for k, v in c.items() if not v["passed"]]
    verdict_c = {"status": ("met" if not failed_c and len(types) >= N_TYPES else "missed" if failed_c
                            else "undecided"),
                 "passed": n_c - len(failed_c), "of": n_c, "failed": failed_c, "per_point": c}
    return {"criteria": dict(TARGETS), "bounds": REPORT_BOUNDS.to_json(), "methods": methods,
            "a": _verdict(a, NEED_A), "b": verdict_b, "c": verdict_c}


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
def _num(value: Optional[float], digits: int = 2, blank: str = "n/a") -> str:
    return f"{value:.{digits}f}" if _known(value) else blank


def _signed(value: Optional[float], blank: str = "n/a") -> str:
    return f"{value:+.2f}" if _known(value) else blank


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
             *([f"Carried over unchanged from an earlier run: {', '.join(sorted(set(doc['carried'])))} "
                f"(from {', '.join(sorted(set(doc['carried'].values())))}); the other types were run now."]
               if doc.get("carried") else []),
             "IFR = instruction-following rate (loose and strict), RR = response rate, OQ = output quality, "
             "ppl = mean perplexity of the responses under the unsteered model; ppl/instr and ppl/sent = median "
             "over prompts of the response's perplexity over the unsteered response's, both under the prompt with "
             f"the instruction, resp. the prompt sent. Bounds: {_BOUNDS_TEXT}. Each method is evaluated at its "
             f"operating point: the strength with the highest IFR within the bounds (the degenerate limit there "
             f"being the looser of the bound and the unsteered model's own rate) that beats the unsteered model "
             f"by more than chance (one-sided sign test over the prompts, p <= {SIGNIFICANCE:g}) "
             f"on {budget['validation']} train prompts without the instruction, answered at "
             f"{budget['eval_max_new_tokens']} tokens, or strength 0 (no steering) when none does; {UNTUNED} is the "
             "plain difference-in-means vector (projection at z̄, nothing chosen).", "",
             "## Results", "",
             "| type | setting | method | IFR loose | IFR strict | RR | OQ | degenerate | ppl | ppl/instr | ppl/sent |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in doc["rows"]:
        lines.append(f"| {r['type']} | {SETTING_NAMES[(r['setting'], r['steered'])]} | {r['method']} | "
                     f"{_num(r['ifr_loose'])} | {_num(r['ifr_strict'])} | {_num(r['rr'])} | {_num(r['oq'])} | "
                     f"{_num(r['degenerate_rate'])} | {_num(r['mean_perplexity'], 1)} | "
                     f"{_num(r.get('ppl_ratio_instructed'))} | {_num(r.get('ppl_ratio'))} |")
    lines += ["", "## Targets", ""]
    found = doc["targets"]
    for key in ("a", "b"):
        v = found[key]
        lines += [f"**({key})** {found['criteria'][key]}: **{v['status']}**, {v['passed']} type(s) pass "
                  f"(need {v['need']})" + (f": {', '.join(v['passed_types'])}" if v["passed_types"] else "") + ".", ""]
        if key == "a":
            lines += ["| type | best method | IFR no instr. | + steering | gain | degenerate | ppl/instr | ppl/sent | "
                      "passes | best gain within bounds | short by |",
                      "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
            for name, c in v["per_type"].items():
                lines.append(f"| {name} | {c['method']} | {_num(c['ifr_unsteered'])} | {_num(c['ifr_steered'])} | "
                             f"{c['gain']:+.2f} | {_num(c['degenerate_rate'])} | {_num(c['ppl_ratio_instructed'])} | "
                             f"{_num(c['ppl_ratio'])} | {'yes' if c['passed'] else 'no (' + ', '.join(c['failed']) + ')'} | "
                             f"{_signed(c['best_gain_within_bounds'], 'none')} | {_num(c['short_by'], blank='')} |")
        else:
            lines += [f"Eligible (instruction alone below {B_BELOW}): {v['eligible_types']} type(s).", "",
                      "| type | best method | IFR instr. | + steering | change | passes | short by |",
                      "| --- | --- | ---: | ---: | ---: | --- | ---: |"]
            for name, c in v["per_type"].items():
                lines.append(f"| {name} | {c['method']} | {_num(c['ifr_instruction'])} | "
                             f"{_num(c['ifr_instruction_steered'])} | {c['delta']:+.2f} | "
                             f"{'yes' if c['passed'] else 'no'} | {_num(c['short_by'], blank='')} |")
        lines.append("")
    v = found["c"]
    lines += [f"**(c)** {found['criteria']['c']}: **{v['status']}**, {v['passed']} of {v['of']} operating points.", "",
              f"| type | method | value under bounds | {UNTUNED} | difference |", "| --- | --- | ---: | ---: | ---: |"]
    for c in v["per_point"].values():
        lines.append(f"| {c['type']} | {c['method']} | {_num(c['value'])} | {_num(c['untuned_value'])} | "
                     f"{c['delta']:+.2f} |")
    lines += ["", "## Frontiers", "",
              "Held-out IFR without the instruction over each method's sweep of strengths (one batched generation "
              "per sweep); `>` marks the operating point chosen on train prompts, `*` the points within the bounds. "
              "Plot: `frontier.png`.", ""]
    for name, evaluation in doc["evaluations"].items():
        points = evaluation.get("operating_points", {})
        for method, frontier in evaluation.get("frontiers", {}).items():
            point = points.get(method, {})
            lines += [f"### {name}: {method} (operating strength {point.get('strength')}; "
                      f"{point.get('chosen_by', '')})",
                      "", "```", format_frontier(Frontier.from_json(frontier), REPORT_BOUNDS, point.get("strength")),
                      "```", ""]
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
            lines.append(f"| {name} | {method} | `{path}` | {_num(timing['discover'].get(method), 1, '')} | "
                         f"{_num(tune, 1, '')} |")
    totals = doc["total_seconds"]
    evals = ", ".join(f"{n} {t['eval']:.1f} s" for n, t in doc["timings"].items())
    lines += ["", f"Evaluation: {evals}. "
              f"Totals: discover {totals['discover']:.1f} s, tune {totals['tune']:.1f} s, "
              f"held-out frontiers {totals.get('frontier', 0.0):.1f} s, eval {totals['eval']:.1f} s.", ""]
    return "\n".join(lines)


def write_report(result: Any, json_path: "str | Path", md_path: "str | Path", *, responses: bool = True,
                 title: str = "Instruction following with steering") -> dict[str, Any]:
    """Write ``result`` (an ExperimentResult) as JSON (every response unless ``responses``
    is False) and as a markdown report; both atomically. Returns the JSON document."""
    doc = result.to_json(responses=responses)
    write_json_atomic(json_path, doc, ensure_ascii=False)
    write_text_atomic(md_path, format_markdown(doc, title))
    return doc

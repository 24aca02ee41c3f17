"""The IFR–quality frontier of a steering spec: its outcomes over a sweep of strengths.

A sweep scales the spec's coefficients by each strength s — configuration s is
s·x₀, x₀ the spec's row 0 in the tuner's coordinates (:func:`pysteer.tuner.search_space`)
— and measures every strength in ONE batched generation, row (s, p) steered by
configuration s through the fused op's per-row coefficient tables. The measurements are
the tuner's own (:class:`pysteer.tuner.BatchedObjective`), so a frontier point and a
tuning candidate mean the same thing:

    ifr_loose, ifr_strict, rr, degenerate_rate              over the P prompts
    ppl_ratio            = median_p ppl(r_sp | sent_p)  / ppl(ref_p | sent_p)
    ppl_ratio_instructed = median_p ppl(r_sp | instr_p) / ppl(ref_p | instr_p)

all perplexities under the unsteered model, ref_p its own greedy response to the sent
prompt. The unsteered model itself is the point ``unsteered`` (its reference responses
scored as a candidate's; both ratios 1 by construction).

:class:`QualityBounds` says which points are acceptable (degenerate rate and one of the
two ratios); :func:`operating_point` is the strength with the highest IFR among them that
beats the unsteered model by more than chance — a one-sided exact sign test on the prompts
where the two disagree (:func:`sign_test`), at ``SIGNIFICANCE`` — or none (do not steer).
Operating points are chosen on *train* prompts; a held-out frontier is only reported.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from .errors import ExperimentError

__all__ = ["QualityBounds", "REPORT_BOUNDS", "RATIO_OUTCOMES", "DEFAULT_STRENGTHS", "SIGNIFICANCE", "FrontierPoint",
           "Frontier", "sweep", "scaled", "sign_test", "best_point", "operating_point", "plot_frontiers",
           "format_frontier"]

# The two perplexity references (see the module docstring), by the name the CLI uses.
RATIO_OUTCOMES = {"instructed": "ppl_ratio_instructed", "sent": "ppl_ratio"}
DEFAULT_STRENGTHS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
_POINT_KEYS = ("ifr_loose", "ifr_strict", "rr", "oq", "degenerate_rate", "ppl_ratio", "ppl_ratio_instructed",
               "followed_loose")
# A strength is only worth steering with when its train gain is unlikely to be chance: the
# operating points whose train gain was one or two prompts of 20 did not hold on held-out
# prompts (reports/smollm2/README.md: no commas' Concise-SAE point gave 0.5 in one environment
# and 0.1 in another; French's gave 0.0, bullets' 0.1 with 20 % degenerate answers).
SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class QualityBounds:
    """A point is acceptable when its degenerate rate ≤ ``max_degenerate`` and its
    perplexity ratio (``reference``: "instructed" or "sent") ≤ ``max_ppl_ratio``.
    A point without a ratio (every response empty) is not acceptable. Given the
    ``unsteered`` model's outcomes on the same prompts, the degenerate limit is the looser
    of ``max_degenerate`` and the model's own rate: steering is not blamed for loops the
    model writes unsteered (the ratio is relative to the model by construction)."""

    max_degenerate: float = 0.10
    max_ppl_ratio: float = 1.5
    reference: str = "instructed"

    def __post_init__(self) -> None:
        if self.reference not in RATIO_OUTCOMES:
            raise ExperimentError(f"the perplexity reference must be one of {sorted(RATIO_OUTCOMES)}, "
                                  f"got {self.reference!r}")
        for name in ("max_degenerate", "max_ppl_ratio"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ExperimentError(f"QualityBounds.{name} must be a finite number ≥ 0, got {value!r}")

    @property
    def ratio_outcome(self) -> str:
        return RATIO_OUTCOMES[self.reference]

    def degenerate_limit(self, unsteered: Optional[Mapping[str, Any]] = None) -> float:
        own = 0.0 if unsteered is None else float(unsteered["degenerate_rate"])
        return max(float(self.max_degenerate), own)

    def failures(self, outcomes: Mapping[str, Any], unsteered: Optional[Mapping[str, Any]] = None) -> list[str]:
        """The bounds ``outcomes`` misses: "degenerate" and/or "perplexity"."""
        ratio = outcomes.get(self.ratio_outcome)
        failed = []
        if outcomes["degenerate_rate"] > self.degenerate_limit(unsteered) + 1e-9:
            failed.append("degenerate")
        if ratio is None or not math.isfinite(ratio) or ratio > self.max_ppl_ratio + 1e-9:
            failed.append("perplexity")
        return failed

    def holds(self, outcomes: Mapping[str, Any], unsteered: Optional[Mapping[str, Any]] = None) -> bool:
        return not self.failures(outcomes, unsteered)

    def constraints(self, unsteered: Optional[Mapping[str, Any]] = None) -> dict[str, tuple[str, float]]:
        """The same bounds as the tuner's ``constraints=``; given the ``unsteered`` model's
        outcomes on the tuner's prompts, with the same relative degenerate limit as :meth:`holds`."""
        return {"degenerate_rate": ("<=", self.degenerate_limit(unsteered)),
                self.ratio_outcome: ("<=", float(self.max_ppl_ratio))}

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio_outcome": self.ratio_outcome}


# The report's and the demo's bound. The reference is the instructed one: an answer that
# does what the instruction asks (one sentence, no commas, French) is improbable to the
# model when it was not told the instruction, so the sent-prompt reference punishes the very
# thing steering is for (reports/smollm2/quality_reference.json measures both).
REPORT_BOUNDS = QualityBounds()


@dataclass
class FrontierPoint:
    strength: Optional[float]  # None: the unsteered model
    outcomes: dict[str, Any]
    responses: list[str] = field(default_factory=list)

    def to_json(self, responses: bool = False) -> dict[str, Any]:
        doc = {"strength": self.strength, **{k: self.outcomes.get(k) for k in _POINT_KEYS}}
        if responses:
            doc["responses"] = list(self.responses)
        return doc


@dataclass
class Frontier:
    """One spec's sweep: ``points`` by strength and the ``unsteered`` point, on ``prompt_keys``."""

    points: list[FrontierPoint]
    unsteered: FrontierPoint
    prompt_keys: list[str]
    instruction_in_prompt: bool
    max_new_tokens: int
    label: str = ""

    def to_json(self, responses: bool = False) -> dict[str, Any]:
        return {"label": self.label, "instruction_in_prompt": self.instruction_in_prompt,
                "max_new_tokens": self.max_new_tokens, "prompt_keys": list(self.prompt_keys),
                "unsteered": self.unsteered.to_json(responses),
                "points": [p.to_json(responses) for p in self.points]}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "Frontier":
        def point(d: Mapping[str, Any]) -> FrontierPoint:
            return FrontierPoint(d["strength"], {k: d.get(k) for k in _POINT_KEYS}, list(d.get("responses", [])))
        return cls([point(p) for p in doc["points"]], point(doc["unsteered"]), list(doc["prompt_keys"]),
                   bool(doc["instruction_in_prompt"]), int(doc["max_new_tokens"]), doc.get("label", ""))


def scaled(spec, strength: float):
    """``spec`` (one configuration) with every tunable coefficient times ``strength`` — the
    configuration a sweep's point ``strength`` is steered by — keeping its metadata."""
    from ..tuner import search_space

    space = search_space(spec)
    out = space.spec_for(float(strength) * space.vector().unsqueeze(0))
    out.metadata = dict(spec.metadata)
    return out


def _check_strengths(strengths: Sequence[float]) -> list[float]:
    values = [float(s) for s in strengths]
    if not values:
        raise ExperimentError("a sweep needs at least one strength")
    if any(not math.isfinite(s) or s < 0 for s in values):
        raise ExperimentError(f"strengths must be finite and ≥ 0, got {list(strengths)}")
    if len(set(values)) != len(values):
        raise ExperimentError(f"strengths must be distinct, got {list(strengths)}")
    return values


def sweep(model, tokenizer, spec, prompts: Sequence[Any], strengths: Sequence[float] = DEFAULT_STRENGTHS, *,
          instruction_in_prompt: bool = False, max_new_tokens: int = 64, batch_size: Optional[int] = None,
          label: str = "", keep_responses: bool = False) -> Frontier:
    """``spec`` (one configuration) at every strength on ``prompts`` (:class:`EvalPrompt` s), in
    one batched generation per ``batch_size`` prompts (default: all at once)."""
    import torch

    from ..tuner import BatchedObjective, search_space

    if spec.n_configs != 1:
        raise ExperimentError(f"a sweep scales one configuration; the spec has {spec.n_configs}")
    values = _check_strengths(strengths)
    prompts = list(prompts)
    if not prompts:
        raise ExperimentError("a sweep needs at least one prompt")
    space = search_space(spec)
    if space.d == 0:
        raise ExperimentError("the spec has no coefficient a strength could scale (only ablations)")
    X = torch.stack([s * space.vector() for s in values])
    objective = BatchedObjective(model, tokenizer, space, prompts, max_new_tokens=max_new_tokens,
                                 instruction_in_prompt=instruction_in_prompt, keep_responses=True,
                                 batch_size=len(prompts) if batch_size is None else batch_size)
    results = objective.evaluate(X)
    unsteered = objective.reference_result()
    keep = (lambda r: r["responses"]) if keep_responses else (lambda r: [])
    return Frontier([FrontierPoint(s, r, keep(r)) for s, r in zip(values, results)],
                    FrontierPoint(None, unsteered, keep(unsteered)), [str(p.key) for p in prompts],
                    instruction_in_prompt, int(max_new_tokens), label)


def sign_test(steered: Sequence[bool], unsteered: Sequence[bool]) -> float:
    """One-sided exact sign test that ``steered`` follows more often than ``unsteered`` on the
    same prompts (per-prompt pass flags, aligned): with b prompts passed only steered and c only
    unsteered, P(X ≥ b) for X ~ Binomial(b + c, 1/2) — the chance of a gain this large if
    steering changed which prompts pass at random. 1 when no prompt differs."""
    if len(steered) != len(unsteered):
        raise ExperimentError(f"a sign test pairs prompts: got {len(steered)} and {len(unsteered)} outcomes")
    wins = sum(bool(s) and not bool(u) for s, u in zip(steered, unsteered))
    losses = sum(bool(u) and not bool(s) for s, u in zip(steered, unsteered))
    n = wins + losses
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n


def _beats(point: FrontierPoint, unsteered: FrontierPoint, significance: float) -> bool:
    if point.outcomes["ifr_loose"] <= unsteered.outcomes["ifr_loose"]:
        return False
    if significance >= 1:
        return True
    flags, base = point.outcomes.get("followed_loose"), unsteered.outcomes.get("followed_loose")
    if flags is None or base is None:
        raise ExperimentError("a frontier point without per-prompt outcomes (followed_loose; frontiers saved "
                              "before they were recorded) cannot be tested against chance: sweep it again, or "
                              "pass significance=1 to compare IFRs only")
    return sign_test(flags, base) <= significance


def best_point(frontiers: Mapping[Any, Frontier], bounds: QualityBounds = REPORT_BOUNDS,
               significance: float = SIGNIFICANCE) -> tuple[Any, Optional[FrontierPoint]]:
    """The (key, point) with the highest IFR (loose) within ``bounds`` (relative to each
    frontier's unsteered point, :class:`QualityBounds`) over several frontiers (e.g. one per
    layer), among the points that beat their frontier's unsteered IFR with a :func:`sign_test`
    p ≤ ``significance`` (1: any gain) — steering that does no better than no steering, or
    better by what chance gives, is not worth its quality cost; ties → the smaller strength
    (the gentlest edit that does as well), then the earlier frontier.
    ``(None, None)`` when no point qualifies: the operating point is not to steer."""
    if not (isinstance(significance, (int, float)) and 0 < significance <= 1):
        raise ExperimentError(f"significance must be in (0, 1], got {significance!r}")
    acceptable = [(key, p) for key, frontier in frontiers.items() for p in frontier.points
                  if bounds.holds(p.outcomes, frontier.unsteered.outcomes)
                  and _beats(p, frontier.unsteered, significance)]
    if not acceptable:
        return None, None
    return max(acceptable, key=lambda item: (item[1].outcomes["ifr_loose"], -item[1].strength))


def operating_point(frontier: Frontier, bounds: QualityBounds = REPORT_BOUNDS,
                    significance: float = SIGNIFICANCE) -> Optional[FrontierPoint]:
    """The point of one frontier :func:`best_point` picks; None when none qualifies."""
    return best_point({None: frontier}, bounds, significance)[1]


# ---------------------------------------------------------------------------- showing it
def _num(value: Optional[float], digits: int = 2) -> str:
    return f"{value:.{digits}f}" if value is not None and math.isfinite(value) else "n/a"


def format_frontier(frontier: Frontier, bounds: QualityBounds = REPORT_BOUNDS,
                    chosen: Optional[float] = None) -> str:
    """A text table of the sweep: strength, IFR loose/strict, degenerate rate, both ratios;
    ``*`` marks points within ``bounds``, ``>`` the chosen strength (0: the unsteered row)."""
    lines = [f"{'':2s}{'strength':>8s}  {'IFR':>5s} {'strict':>6s}  {'degen':>5s}  {'ppl/instr':>9s} {'ppl/sent':>8s}"]
    for point in [frontier.unsteered] + frontier.points:
        o = point.outcomes
        mark = (">" if chosen is not None and (point.strength or 0.0) == chosen else " ") + \
               ("*" if point.strength is not None and bounds.holds(o, frontier.unsteered.outcomes) else " ")
        name = "none" if point.strength is None else f"{point.strength:g}"
        lines.append(f"{mark}{name:>8s}  {_num(o['ifr_loose']):>5s} {_num(o['ifr_strict']):>6s}  "
                     f"{_num(o['degenerate_rate']):>5s}  {_num(o.get('ppl_ratio_instructed')):>9s} "
                     f"{_num(o.get('ppl_ratio')):>8s}")
    return "\n".join(lines)


def plot_frontiers(frontiers: Mapping[str, Mapping[str, Frontier]], path: "str | Path",
                   bounds: QualityBounds = REPORT_BOUNDS, chosen: Optional[Mapping[str, Mapping[str, float]]] = None,
                   title: str = "") -> Path:
    """One panel per type (``frontiers[type][method]``): IFR against the bound's perplexity
    ratio, each method's sweep a line through its strengths, the marker's fill saying whether
    the point's degenerate rate is within the bound; the unsteered model a black star, the
    bound a dashed line, the chosen strength circled."""
    import matplotlib

    matplotlib.use("Agg", force=False)  # no display; a no-op if a backend is already set up
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    types = list(frontiers)
    if not types:
        raise ExperimentError("nothing to plot: no frontier")
    columns = min(4, len(types))
    rows = math.ceil(len(types) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(max(5.0, 3.6 * columns), 3.4 * rows), dpi=110, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    key = bounds.ratio_outcome
    try:
        for n, name in enumerate(types):
            ax = axes[n // columns][n % columns]
            base = next(iter(frontiers[name].values())).unsteered.outcomes  # every sweep's unsteered point is the same
            for m, (method, frontier) in enumerate(frontiers[name].items()):
                color = colors[m % len(colors)]
                xs = [p.outcomes.get(key) for p in frontier.points]
                ys = [p.outcomes["ifr_loose"] for p in frontier.points]
                shown = [(x, y, p) for x, y, p in zip(xs, ys, frontier.points) if x is not None and math.isfinite(x)]
                ax.plot([x for x, _, _ in shown], [y for _, y, _ in shown], color=color, lw=1, alpha=0.7,
                        label=method)
                for x, y, p in shown:
                    ok = p.outcomes["degenerate_rate"] <= bounds.degenerate_limit(frontier.unsteered.outcomes) + 1e-9
                    ax.scatter([x], [y], s=18, color=color if ok else "none", edgecolors=color, zorder=3)
                    if chosen and chosen.get(name, {}).get(method) == p.strength:
                        ax.scatter([x], [y], s=90, facecolors="none", edgecolors="black", zorder=4)
            ax.scatter([1.0], [base["ifr_loose"]], marker="*", s=80, color="black", zorder=5, label="unsteered")
            ax.axvline(bounds.max_ppl_ratio, color="gray", ls="--", lw=1)
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())  # 1, 1.5, 2 rather than 10^0 and 7×10^-1
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_ylim(-0.03, 1.03)
            ax.set_title(name, fontsize=9)
            ax.set_xlabel(f"{key} (log)", fontsize=8)
            ax.set_ylabel("IFR (loose)", fontsize=8)
            ax.tick_params(labelsize=7)
            if n == 0:
                ax.legend(fontsize=6, loc="best")
        for n in range(len(types), rows * columns):
            axes[n // columns][n % columns].axis("off")
        fig.suptitle((title + "\n" if title else "") + f"IFR against {key}; filled: degenerate ≤ "
                     f"{bounds.max_degenerate:g}; dashed: ratio bound {bounds.max_ppl_ratio:g}; circled: chosen",
                     fontsize=8 if columns == 1 else 9)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path

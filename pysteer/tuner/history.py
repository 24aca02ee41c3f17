"""The tuner's history file and its plot.

``history.json`` holds everything needed to understand and to resume a run: the
settings (seed, q, initial design size), the box, and one record per evaluated
candidate (round, index in the round, how it was proposed, the candidate, its reward
and metrics). A run with a non-default :class:`~pysteer.tuner.outcomes.Goal` (outcome
constraints, several objectives) also stores the goal, each record's feasibility and
violation, whether the best record is feasible, and (multi-objective) the Pareto set;
the default run's file is unchanged. It is rewritten after every round through a temporary file and
``os.replace``, so a crash leaves either the previous complete file or the new one,
never a half-written one.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..fileio import read_json_object, write_json_atomic
from .bounds import Box, TunerError
from .outcomes import Goal, pareto_mask

HISTORY_FORMAT, HISTORY_VERSION = "pysteer.tuner.history", 1


@dataclass
class Record:
    """One evaluated candidate."""

    round: int
    index: int  # position within its round
    proposer: str  # "sobol" | "template" | "qLogNEI" | "qLogNEHVI"
    candidate: list[float]  # [d], in the box's units
    reward: float  # the objective's "reward"; with a Goal: its (first) objective, signed to maximise
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # wall-clock of the round's evaluation, shared by its candidates
    feasible: Optional[bool] = None  # every outcome bound met (None: the run has no bounds)
    violation: Optional[float] = None  # Σ relative amounts by which bounds are missed (0 if feasible)

    def outcome(self, name: str) -> float:
        """A measured outcome: a metric, or the reward itself; NaN for one the candidate did not
        produce (nothing to score)."""
        if name in self.metrics:
            value = self.metrics[name]
            return math.nan if value is None else float(value)
        if name == "reward":
            return self.reward
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        for key in ("feasible", "violation"):  # absent in unconstrained runs: their file is as before
            if doc[key] is None:
                del doc[key]
        return doc


@dataclass
class History:
    seed: int
    q: int
    n_init: int
    box: Box
    records: list[Record] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # acquisition options, surrogate, objective info
    goal: Goal = field(default_factory=Goal)

    @property
    def rounds_done(self) -> int:
        return 1 + max((r.round for r in self.records), default=-1)

    def feasible_records(self) -> list[Record]:
        return [r for r in self.records if r.feasible is not False]

    def best(self) -> Optional[Record]:
        """The feasible record with the highest reward (the earliest one on ties); when no
        record is feasible, the least-violating one (then the highest reward) — check
        :meth:`best_is_feasible`. Without bounds every record is feasible."""
        pool = self.feasible_records()
        if pool:
            key = lambda r: r.reward  # noqa: E731
        else:
            pool = self.records
            key = lambda r: (-(r.violation or 0.0), r.reward)  # noqa: E731
        best = None
        for r in pool:
            if best is None or key(r) > key(best):
                best = r
        return best

    def best_is_feasible(self) -> bool:
        return bool(self.feasible_records())

    def pareto(self) -> list[Record]:
        """The feasible records no other feasible record dominates in the goal's (signed)
        objectives, in evaluation order; [] when none is feasible. With one objective: the best."""
        pool = self.feasible_records()
        if not pool:
            return []
        if not self.goal.multi:
            return [self.best()]
        points = [self.goal.signed({n: r.outcome(n) for n in self.goal.outcomes}) for r in pool]
        return [r for r, keep in zip(pool, pareto_mask(points)) if keep]

    def to_dict(self) -> dict[str, Any]:
        best = self.best()
        doc = {"format": HISTORY_FORMAT, "version": HISTORY_VERSION, "seed": self.seed, "q": self.q,
               "n_init": self.n_init, "rounds_done": self.rounds_done, "box": self.box.to_dict(),
               "settings": self.settings,
               "best": None if best is None else best.to_dict(),
               "records": [r.to_dict() for r in self.records]}
        if not self.goal.is_default:
            doc["goal"] = self.goal.to_dict()
            doc["best_feasible"] = self.best_is_feasible() if self.records else None
            if self.goal.multi:
                doc["pareto"] = [[r.round, r.index] for r in self.pareto()]
        return doc

    def save(self, path: Path) -> None:
        write_json_atomic(path, self.to_dict(), allow_nan=False)

    @classmethod
    def load(cls, path: Path) -> "History":
        doc = read_json_object(path, TunerError)
        if doc.get("format") != HISTORY_FORMAT:
            raise TunerError(f"{path}: not a pysteer tuner history (no \"format\": \"{HISTORY_FORMAT}\")")
        if doc.get("version") != HISTORY_VERSION:
            raise TunerError(f"{path}: history version {doc.get('version')!r} is not supported")
        try:
            records = [Record(**r) for r in doc["records"]]
            return cls(int(doc["seed"]), int(doc["q"]), int(doc["n_init"]), Box.from_dict(doc["box"]),
                       records, doc.get("settings") or {}, Goal.from_dict(doc.get("goal")))
        except (KeyError, TypeError, ValueError) as exc:
            raise TunerError(f"{path}: malformed history ({exc})") from None


def json_safe(value: Any) -> Any:
    """Metrics → plain JSON (tensors → lists, non-finite floats → None, objects → str)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist"):  # tensors, numpy arrays and scalars
        return json_safe(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def _frontier_axes(history: History) -> Optional[tuple[str, float, str, float, Optional[float]]]:
    """(y outcome, its sign, x outcome, its sign, bound on x or None) of the frontier panel:
    the first objective against the second (multi-objective) or against the first bound's outcome."""
    goal = history.goal
    names, signs = goal.names_signs
    if goal.multi:
        bound = next((c.bound for c in goal.constraints if c.outcome == names[1]), None)
        return names[0], signs[0], names[1], signs[1], bound
    other = [c for c in goal.constraints if c.outcome != names[0]]
    if not other:
        return None
    c = other[0]
    return names[0], signs[0], c.outcome, (-1.0 if c.op == "<=" else 1.0), c.bound


def _plot_frontier(ax, history: History, axes: tuple[str, float, str, float, Optional[float]]) -> None:
    y_name, y_sign, x_name, x_sign, bound = axes
    pts = [(r.outcome(x_name), r.outcome(y_name), r.feasible is not False) for r in history.records
           if math.isfinite(r.outcome(x_name)) and math.isfinite(r.outcome(y_name))]
    feas = [(x, y) for x, y, ok in pts if ok]
    infeas = [(x, y) for x, y, ok in pts if not ok]
    if feas:
        ax.scatter(*zip(*feas), s=16, color="tab:blue", alpha=0.8, label="feasible")
    if infeas:
        ax.scatter(*zip(*infeas), s=18, marker="x", color="tab:red", alpha=0.7, label="infeasible")
    if feas:  # the feasible points' 2-d frontier, as a step line in the better-first order
        mask = pareto_mask([(x_sign * x, y_sign * y) for x, y in feas])
        front = sorted((p for p, keep in zip(feas, mask) if keep), key=lambda p: x_sign * p[0], reverse=True)
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black", lw=1.4,
                label="frontier")
    if bound is not None:
        ax.axvline(bound, color="tab:gray", ls="--", lw=1, label=f"bound {bound:g}")
    ax.set_xlabel(x_name + (" (lower is better)" if x_sign < 0 else ""))
    ax.set_ylabel(y_name + (" (lower is better)" if y_sign < 0 else ""))
    ax.set_title("frontier of the evaluated candidates", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot_history(history: History, path: Path) -> Path:
    """``reward.png``: every candidate as a dot at its round, and the best-so-far line; with
    outcome bounds or several objectives also the frontier (objective against quality, or
    objective against objective), feasible and infeasible candidates marked."""
    import matplotlib

    matplotlib.use("Agg", force=False)  # no display; a no-op if a backend is already set up
    import matplotlib.pyplot as plt

    frontier = None if history.goal.is_default else _frontier_axes(history)
    fig, axs = plt.subplots(1, 2 if frontier else 1, figsize=(11 if frontier else 6, 3.6), dpi=110,
                            squeeze=False)
    ax = axs[0][0]
    try:
        colors = {"sobol": "tab:gray", "template": "tab:green", "qLogNEI": "tab:blue", "qLogNEHVI": "tab:purple"}
        for proposer in sorted({r.proposer for r in history.records}):
            pts = [r for r in history.records if r.proposer == proposer]
            ok = [r for r in pts if r.feasible is not False]
            bad = [r for r in pts if r.feasible is False]
            color = colors.get(proposer, "tab:orange")
            ax.scatter([r.round for r in ok], [r.reward for r in ok], s=14, alpha=0.7, color=color, label=proposer)
            if bad:
                ax.scatter([r.round for r in bad], [r.reward for r in bad], s=14, alpha=0.7, facecolors="none",
                           edgecolors=color, label=f"{proposer} (infeasible)")
        best, line = -math.inf, []
        for rnd in range(history.rounds_done):
            best = max([best] + [r.reward for r in history.records if r.round == rnd and r.feasible is not False])
            line.append(best if math.isfinite(best) else math.nan)  # nothing feasible yet: no line
        ax.plot(range(len(line)), line, color="tab:red", lw=1.8,
                label="best so far" + ("" if history.goal.is_default else " (feasible)"))
        ax.set_xlabel("round")
        ax.set_ylabel("reward" if history.goal.is_default else history.goal.objectives[0])
        saas = ", SAASBO" if history.settings.get("surrogate") == "saasbo" else ""
        ax.set_title(f"pysteer tune: q={history.q}, seed={history.seed}, d={history.box.d}{saas}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        if frontier:
            _plot_frontier(axs[0][1], history, frontier)
        fig.tight_layout()
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
    return path

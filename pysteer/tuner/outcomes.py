"""What a tuning run optimises: one objective under outcome bounds, or several objectives.

An objective's result dict per candidate holds named outcomes (``"reward"``,
``"ifr_loose"``, ``"degenerate_rate"``, ...). A :class:`Goal` names which of them matter:

    Goal()                                          maximise "reward" (the default, unconstrained)
    Goal(["ifr_loose"], {"degenerate_rate": ("<=", 0.1), "rr": (">=", 0.9)})
                                                    maximise IFR subject to the bounds
    Goal(["ifr_loose", "-degenerate_rate"], ...)    the Pareto set of both (a leading '-' minimises)

A candidate is *feasible* when every bound holds on its measured outcomes. Its
violation is the sum over bounds of how far it misses, each divided by the bound's
scale ``max(|bound|, 1e-6)`` so that bounds in different units add up:

    slack_c(y)     = bound − y_c  ("<=")   or   y_c − bound  (">=")     feasible: slack ≥ 0
    violation(y)   = Σ_c max(0, −slack_c(y)) / max(|bound_c|, 1e-6)

The best record is the feasible one with the highest (first) objective; when none is
feasible it is the least-violating one, and the run says so (``TuneResult.feasible``,
``"best_feasible": false`` in the history) rather than passing it off as feasible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

from .bounds import TunerError

OPS = ("<=", ">=")
ConstraintsArg = Optional[Mapping[str, Union[tuple[str, float], Sequence[Any]]]]


@dataclass(frozen=True)
class Constraint:
    """``outcome op bound``, e.g. ``degenerate_rate <= 0.1``."""

    outcome: str
    op: str
    bound: float

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise TunerError(f"constraint on {self.outcome!r}: the operator must be '<=' or '>=', got {self.op!r}")
        if not math.isfinite(self.bound):
            raise TunerError(f"constraint on {self.outcome!r}: the bound must be finite, got {self.bound}")

    def slack(self, value: float) -> float:
        """≥ 0 when ``value`` meets the bound (how far inside it), < 0 when it misses."""
        return self.bound - value if self.op == "<=" else value - self.bound

    def violation(self, value: float) -> float:
        return max(0.0, -self.slack(value)) / max(abs(self.bound), 1e-6)

    def missed_value(self) -> float:
        """What a candidate that produced no value (nothing to score: every response empty)
        counts as: outside the bound by the bound's own width, so the record is infeasible and
        the GP learns that this region fails, without an infinity in its data."""
        width = max(abs(self.bound), 1.0)
        return self.bound + width if self.op == "<=" else self.bound - width

    def __str__(self) -> str:
        return f"{self.outcome} {self.op} {self.bound:g}"


def _split_sign(name: str) -> tuple[str, float]:
    name = str(name).strip()
    if name.startswith("-"):
        return name[1:].strip(), -1.0
    return name.lstrip("+").strip(), 1.0


@dataclass
class Goal:
    """Objectives (maximised; ``"-name"`` minimises ``name``), outcome constraints, reference point.

    ``ref_point`` (multi-objective only) maps each objective's outcome name to the value,
    in the outcome's own units, below which (above which, for a minimised one) a
    candidate adds no hypervolume. Default: per round, BoTorch's
    ``infer_reference_point`` on the feasible evaluations' objectives (their nadir moved
    10% of the range further out), so every evaluated point counts.
    """

    objectives: list[str] = field(default_factory=lambda: ["reward"])
    constraints: list[Constraint] = field(default_factory=list)
    ref_point: Optional[dict[str, float]] = None

    def __post_init__(self) -> None:
        if isinstance(self.objectives, str):
            self.objectives = [self.objectives]
        self.objectives = [str(o).strip() for o in self.objectives]
        names = self.names_signs[0]
        if not names or any(not n for n in names):
            raise TunerError(f"objectives must be non-empty outcome names, got {self.objectives}")
        if len(set(names)) != len(names):
            raise TunerError(f"objectives name an outcome twice: {self.objectives}")
        seen = set()
        for c in self.constraints:
            if (c.outcome, c.op) in seen:
                raise TunerError(f"two '{c.op}' constraints on {c.outcome!r}")
            seen.add((c.outcome, c.op))
        if self.ref_point is not None:
            if not self.multi:
                raise TunerError("ref_point is for multi-objective tuning (two or more objectives)")
            missing = set(names) - set(self.ref_point)
            extra = set(self.ref_point) - set(names)
            if missing or extra:
                raise TunerError(f"ref_point must give a value for each objective {names}, "
                                 f"got {sorted(self.ref_point)}")
            self.ref_point = {k: float(v) for k, v in self.ref_point.items()}
            if not all(math.isfinite(v) for v in self.ref_point.values()):
                raise TunerError(f"ref_point values must be finite, got {self.ref_point}")

    @classmethod
    def make(cls, objective: Union[str, Sequence[str], None] = None, constraints: ConstraintsArg = None,
             ref_point: Optional[Mapping[str, float]] = None) -> "Goal":
        """``tune``'s arguments → a Goal; ``constraints`` as ``{"rr": (">=", 0.9), ...}``."""
        parsed = []
        for name, rule in (constraints or {}).items():
            try:
                op, bound = rule
                parsed.append(Constraint(str(name), str(op), float(bound)))
            except (TypeError, ValueError) as exc:
                if isinstance(exc, TunerError):
                    raise
                raise TunerError(f"constraint on {name!r} must be (op, bound), e.g. ('<=', 0.1); "
                                 f"got {rule!r}") from None
        objectives = ["reward"] if objective is None else ([objective] if isinstance(objective, str)
                                                           else list(objective))
        return cls(objectives, parsed, None if ref_point is None else dict(ref_point))

    # ------------------------------------------------------------------ shape
    @property
    def names_signs(self) -> tuple[list[str], list[float]]:
        pairs = [_split_sign(o) for o in self.objectives]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1

    @property
    def is_default(self) -> bool:
        """The historical mode: maximise ``reward``, no constraints (one GP on the reward)."""
        return self.objectives == ["reward"] and not self.constraints

    @property
    def outcomes(self) -> list[str]:
        """Every outcome the GP models, objectives first, each once."""
        names = list(self.names_signs[0])
        for c in self.constraints:
            if c.outcome not in names:
                names.append(c.outcome)
        return names

    @property
    def acquisition(self) -> str:
        return "qLogNEHVI" if self.multi else "qLogNEI"

    # ------------------------------------------------------------------ per record
    def values(self, outcomes: Mapping[str, Any], where: str) -> dict[str, float]:
        """The modelled outcomes of one result, checked present and finite."""
        out = {}
        for name in self.outcomes:
            if name not in outcomes:
                raise TunerError(f"{where}: the objective returned no {name!r} (needed by "
                                 f"{'the objective' if name in self.names_signs[0] else 'a constraint'}); "
                                 f"it returned {sorted(outcomes)}")
            value = outcomes[name]
            value = math.nan if value is None else float(value)
            if not math.isfinite(value):
                bound = next((c for c in self.constraints if c.outcome == name), None)
                if bound is None or name in self.names_signs[0]:
                    raise TunerError(f"{where}: outcome {name!r} is not finite ({value}); an objective "
                                     f"must be measured for every candidate")
                value = bound.missed_value()
            out[name] = value
        return out

    def violation(self, values: Mapping[str, float]) -> float:
        return sum(c.violation(values[c.outcome]) for c in self.constraints)

    def feasible(self, values: Mapping[str, float]) -> bool:
        return all(c.slack(values[c.outcome]) >= 0 for c in self.constraints)

    def signed(self, values: Mapping[str, float]) -> list[float]:
        """The objectives as quantities to maximise."""
        names, signs = self.names_signs
        return [s * values[n] for n, s in zip(names, signs)]

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        return {"objectives": list(self.objectives),
                "constraints": [{"outcome": c.outcome, "op": c.op, "bound": c.bound} for c in self.constraints],
                "ref_point": self.ref_point}

    @classmethod
    def from_dict(cls, doc: Optional[Mapping[str, Any]]) -> "Goal":
        if not doc:
            return cls()
        return cls(list(doc.get("objectives") or ["reward"]),
                   [Constraint(c["outcome"], c["op"], float(c["bound"])) for c in doc.get("constraints") or []],
                   doc.get("ref_point"))

    def describe(self) -> str:
        text = (" and ".join(self.objectives) if self.multi else self.objectives[0])
        bounds = ", ".join(str(c) for c in self.constraints)
        return f"{'Pareto set of ' if self.multi else 'maximise '}{text}" + (f" subject to {bounds}" if bounds else "")


def pareto_mask(points: Sequence[Sequence[float]]) -> list[bool]:
    """Which points [n, k] (all maximised) no other point dominates (≥ everywhere, > somewhere).

    Duplicates of a non-dominated point are all kept."""
    mask = []
    for i, p in enumerate(points):
        dominated = any(all(a >= b for a, b in zip(o, p)) and any(a > b for a, b in zip(o, p))
                        for j, o in enumerate(points) if j != i)
        mask.append(not dominated)
    return mask

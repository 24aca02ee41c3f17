"""The search box over a steering spec's coefficients.

The tuner searches one flat vector ``x`` [d]: every tunable coefficient of one
configuration row of a spec, intervention by intervention, column by column.
Ablated features are left out (their coefficient is ignored by the op), so ``d`` is
the number of columns whose value matters. :class:`SearchSpace` maps a batch of
vectors ``X`` [q, d] back to one coefficient table [q, width] per intervention, i.e. to
a spec with q configuration rows.

Bounds per coordinate, when activation statistics of the features are known
(``a_max``: the feature's largest activation, ``a_mean``: its mean activation):

    add    [-m·a, +m·a]   a = a_max, m = add_max_multiple (default 1)
                          or a = a_mean, m = add_mean_multiple (default 4) without a_max
    set    [0, a_max]     (or [0, add_mean_multiple·a_mean])
    scale  [0, scale_max] (a multiplier: needs no statistics; default 4)

Without statistics (or for dense directions) :data:`DEFAULT_BOUNDS` apply. A uniform
``bounds=(lo, hi)`` replaces every range; ``overrides`` replaces single coordinates
by name (``"L15/f123/add"``) or index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch

from ..errors import PysteerError
from ..fileio import read_json_object
from ..ops.modes import DenseEdit, FeatureEdit
from ..spec import SparseIntervention, SteeringSpec

# (lo, hi) per edit when no statistics are given. Residual norms of small LMs are
# O(1..100) and SAE decoder rows are unit-norm, so ±8 moves a feature by a fraction
# of the residual: visible, rarely degenerate.
DEFAULT_BOUNDS: dict[str, tuple[float, float]] = {
    "add": (-8.0, 8.0), "set": (0.0, 8.0), "scale": (0.0, 4.0),
    "dense_add": (-8.0, 8.0), "dense_project": (-8.0, 8.0),
}


class TunerError(PysteerError, ValueError):
    """Bad tuner input: bounds, statistics, history files, objectives."""


@dataclass
class Box:
    """A box ``lower[j] <= x[j] <= upper[j]`` over ``d`` named coordinates (float64)."""

    lower: torch.Tensor
    upper: torch.Tensor
    names: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # why each range is what it is

    def __post_init__(self) -> None:
        self.lower = torch.as_tensor(self.lower, dtype=torch.float64).flatten().clone()
        self.upper = torch.as_tensor(self.upper, dtype=torch.float64).flatten().clone()
        d = self.lower.numel()
        if self.upper.numel() != d or d == 0:
            raise TunerError(f"bounds: lower has {d} entries, upper {self.upper.numel()}; need the "
                             f"same positive number")
        self.names = list(self.names) or [f"x{j}" for j in range(d)]
        self.sources = list(self.sources) or ["user"] * d
        if len(self.names) != d or len(self.sources) != d:
            raise TunerError(f"bounds: {d} coordinates but {len(self.names)} names / "
                             f"{len(self.sources)} sources")
        if not (torch.isfinite(self.lower).all() and torch.isfinite(self.upper).all()):
            raise TunerError("bounds must be finite")
        bad = torch.nonzero(self.lower >= self.upper).flatten().tolist()
        if bad:
            j = bad[0]
            raise TunerError(f"bounds of {self.names[j]}: lower {self.lower[j].item():g} must be "
                             f"below upper {self.upper[j].item():g}")

    @property
    def d(self) -> int:
        return self.lower.numel()

    @property
    def bounds(self) -> torch.Tensor:
        """[2, d] in BoTorch's layout."""
        return torch.stack([self.lower, self.upper])

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.lower) / (self.upper - self.lower)

    def unnormalize(self, u: torch.Tensor) -> torch.Tensor:
        return self.lower + u * (self.upper - self.lower)

    def clip(self, x: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(x.to(torch.float64), self.upper), self.lower)

    def to_dict(self) -> dict[str, Any]:
        return {"names": self.names, "lower": self.lower.tolist(), "upper": self.upper.tolist(),
                "sources": self.sources}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "Box":
        return cls(doc["lower"], doc["upper"], doc.get("names") or [], doc.get("sources") or [])

    def same_as(self, other: "Box") -> bool:
        return (self.names == other.names and torch.equal(self.lower, other.lower)
                and torch.equal(self.upper, other.upper))


@dataclass(frozen=True)
class Coordinate:
    """Column ``column`` of intervention ``intervention``'s coefficient table."""

    intervention: int
    column: int
    name: str
    edit: str


class SearchSpace(Box):
    """A :class:`Box` over a template spec's tunable coefficients, and the way back to specs."""

    def __init__(self, template: SteeringSpec, coords: Sequence[Coordinate], lower, upper,
                 sources: Sequence[str]) -> None:
        self.template = template
        self.coords = list(coords)
        super().__init__(lower, upper, [c.name for c in coords], list(sources))

    def tables(self, X: torch.Tensor) -> list[torch.Tensor]:
        """``X`` [q, d] → one fp32 table [q, width_i] per intervention.

        Columns that are not tuned (ablate edits) keep the template's row-0 value.
        """
        X = torch.as_tensor(X, dtype=torch.float64)
        if X.ndim == 1:
            X = X.unsqueeze(0)
        if X.ndim != 2 or X.shape[1] != self.d:
            raise TunerError(f"candidates must be [q, {self.d}], got {tuple(X.shape)}")
        tables = [iv.coefficients[:1].double().repeat(X.shape[0], 1) for iv in self.template.interventions]
        for j, c in enumerate(self.coords):
            tables[c.intervention][:, c.column] = X[:, j]
        return [t.float() for t in tables]

    def spec_for(self, X: torch.Tensor) -> SteeringSpec:
        """The template with one configuration row per candidate in ``X`` [q, d]."""
        return self.template.with_coefficients(self.tables(X))

    def vector(self, spec: Optional[SteeringSpec] = None, row: int = 0) -> torch.Tensor:
        """Row ``row`` of ``spec`` (default: the template) as a flat vector [d] (float64)."""
        spec = spec or self.template
        return torch.tensor([float(spec.interventions[c.intervention].coefficients[row, c.column])
                             for c in self.coords], dtype=torch.float64)


# ------------------------------------------------------------------------ statistics

FeatureStatsTable = dict[tuple[Optional[int], int], dict[str, float]]
_MEAN_KEYS, _MAX_KEYS = ("mean", "mean_activation", "mean_act"), ("max", "max_activation", "max_act")


def _pick(entry: Mapping[str, Any], keys: Sequence[str]) -> Optional[float]:
    """The first of ``keys`` present; else the largest per-group value (``mean_follow``,
    ``mean_violate``, ... as pysteer's discovery writes them)."""
    for key in keys:
        if key in entry and entry[key] is not None:
            return float(entry[key])
    prefix = keys[0] + "_"
    groups = [float(v) for k, v in entry.items() if k.startswith(prefix) and isinstance(v, (int, float))]
    return max(groups) if groups else None


def _entry_stats(entry: Mapping[str, Any]) -> dict[str, float]:
    stats = {}
    for name, keys in (("mean", _MEAN_KEYS), ("max", _MAX_KEYS)):
        if (value := _pick(entry, keys)) is not None:
            stats[name] = value
    return stats


def _parse_layer_block(block: Any, layer: Optional[int], where: str) -> FeatureStatsTable:
    out: FeatureStatsTable = {}
    if not isinstance(block, Mapping):
        raise TunerError(f"{where}: expected an object of feature statistics")
    feats = block.get("features", block)
    if isinstance(feats, list) and all(isinstance(e, Mapping) for e in feats):
        # discovery's table: [{"feature": 123, "mean_follow": .., "max_follow": .., ...}, ...]
        for i, entry in enumerate(feats):
            if "feature" not in entry:
                raise TunerError(f"{where}: features[{i}] has no 'feature' index")
            out[(layer, int(entry["feature"]))] = _entry_stats(entry)
        return out
    if isinstance(feats, list):  # parallel lists: features, mean, max
        for key_set in (_MEAN_KEYS, _MAX_KEYS):
            for key in key_set:
                if key in block and len(block[key]) != len(feats):
                    raise TunerError(f"{where}: {key!r} has {len(block[key])} values for "
                                     f"{len(feats)} features")
        columns = {name: next((block[k] for k in keys if k in block), None)
                   for name, keys in (("mean", _MEAN_KEYS), ("max", _MAX_KEYS))}
        for i, f in enumerate(feats):
            out[(layer, int(f))] = {name: float(values[i]) for name, values in columns.items()
                                    if values is not None and values[i] is not None}
        return out
    if not isinstance(feats, Mapping):
        raise TunerError(f"{where}: 'features' must be a list or an object")
    for f, entry in feats.items():
        if f == "layer":
            continue
        try:
            index = int(f)
        except ValueError:
            raise TunerError(f"{where}: feature key {f!r} is not an integer") from None
        if not isinstance(entry, Mapping):
            raise TunerError(f"{where}: statistics of feature {f} must be an object with mean/max")
        out[(layer, index)] = _entry_stats(entry)
    return out


def load_stats(source: Union[str, Path, Mapping[str, Any]]) -> FeatureStatsTable:
    """Feature activation statistics → ``{(layer or None, feature): {"mean": .., "max": ..}}``.

    Accepted JSON forms (``mean``/``max`` may also be spelled ``mean_activation``/``max_activation``)::

        {"layer": 15, "features": {"123": {"mean": 0.8, "max": 4.1}, ...}}
        {"layer": 15, "features": [123, ...], "mean": [0.8, ...], "max": [4.1, ...]}
        {"layer": 15, "features": [{"feature": 123, "mean_follow": 0.8, "max_violate": 4.1, ...}]}
        {"layers": {"15": <any form above>, ...}}

Per-group values (``mean_<group>``, ``max_<group>``: discovery's ``discovery.json``)
count by their largest.

    ``layer`` may be omitted: the statistics then apply to the feature at any layer.
    """
    where = str(source) if not isinstance(source, Mapping) else "<stats>"
    doc = source if isinstance(source, Mapping) else read_json_object(source, TunerError)
    if "layers" in doc:
        out: FeatureStatsTable = {}
        for layer, block in doc["layers"].items():
            out.update(_parse_layer_block(block, int(layer), f"{where} (layer {layer})"))
        return out
    layer = doc.get("layer")
    return _parse_layer_block(doc, None if layer is None else int(layer), where)


def _lookup(stats: Optional[FeatureStatsTable], layer: int, feature: int) -> dict[str, float]:
    if not stats:
        return {}
    return stats.get((layer, feature)) or stats.get((None, feature)) or {}


# ------------------------------------------------------------------------ building


def search_space(template: SteeringSpec, stats: Union[None, str, Path, Mapping, FeatureStatsTable] = None, *,
                 bounds: Optional[tuple[float, float]] = None,
                 overrides: Optional[Mapping[Union[str, int], tuple[float, float]]] = None,
                 add_max_multiple: float = 1.0, add_mean_multiple: float = 4.0,
                 scale_max: float = 4.0,
                 defaults: Optional[Mapping[str, tuple[float, float]]] = None) -> SearchSpace:
    """The box over ``template``'s tunable coefficients (see the module docstring)."""
    if stats is not None and not (isinstance(stats, dict) and all(isinstance(k, tuple) for k in stats)):
        stats = load_stats(stats)
    table = {**DEFAULT_BOUNDS, **(defaults or {})}
    coords, lower, upper, sources = [], [], [], []
    for n, iv in enumerate(template.interventions):
        for col in range(iv.width):
            if isinstance(iv, SparseIntervention):
                edit = FeatureEdit(iv.edits[col])
                if edit == FeatureEdit.ABLATE:
                    continue  # the op ignores the coefficient: nothing to tune
                name = f"L{iv.layer}/f{iv.features[col]}/{edit.name.lower()}"
                lo, hi, why = _sparse_range(edit, _lookup(stats, iv.layer, iv.features[col]), table,
                                            add_max_multiple, add_mean_multiple, scale_max)
            else:
                edit_name = "dense_" + DenseEdit(iv.edits[col]).name.lower()
                name = f"L{iv.layer}/d{col}/{edit_name[6:]}"
                (lo, hi), why = table[edit_name], "default"
            coords.append(Coordinate(n, col, name, edit_name if not isinstance(iv, SparseIntervention)
                                     else edit.name.lower()))
            lower.append(lo), upper.append(hi), sources.append(why)
    if not coords:
        raise TunerError("the template spec has no tunable coefficient (every feature is ablated)")
    if bounds is not None:
        lo, hi = float(bounds[0]), float(bounds[1])
        lower, upper, sources = [lo] * len(coords), [hi] * len(coords), ["user"] * len(coords)
    for key, (lo, hi) in (overrides or {}).items():
        names = [c.name for c in coords]
        if isinstance(key, int):
            if not 0 <= key < len(coords):
                raise TunerError(f"bounds override index {key} is out of range (0..{len(coords) - 1})")
            j = key
        elif key in names:
            j = names.index(key)
        else:
            raise TunerError(f"bounds override {key!r} names no coordinate; the names are e.g. "
                             f"{names[:3]}")
        lower[j], upper[j], sources[j] = float(lo), float(hi), "user"
    return SearchSpace(template, coords, lower, upper, sources)


def _sparse_range(edit: FeatureEdit, stats: dict[str, float], table, add_max_multiple: float,
                  add_mean_multiple: float, scale_max: float) -> tuple[float, float, str]:
    a_max, a_mean = stats.get("max"), stats.get("mean")
    usable = lambda v: v is not None and math.isfinite(v) and v > 0  # noqa: E731
    if edit == FeatureEdit.SCALE:
        return 0.0, float(scale_max), "scale_max"
    if usable(a_max):
        ref, why = (add_max_multiple * a_max, "stats:max") if edit == FeatureEdit.ADD else (a_max, "stats:max")
    elif usable(a_mean):
        ref, why = add_mean_multiple * a_mean, "stats:mean"
    else:
        lo, hi = table["add" if edit == FeatureEdit.ADD else "set"]
        return float(lo), float(hi), "default"
    return (-ref, ref, why) if edit == FeatureEdit.ADD else (0.0, ref, why)


# ------------------------------------------------------------------------ grouped (low-dimensional)

GROUPINGS = ("sign", "intervention", "all")


class GroupedSearchSpace(SearchSpace):
    """One strength per feature group times fixed per-feature scales: a box of k ≪ d dims.

    Coordinate j of the full space (group g(j), scale b_j) gets

        x_full[j] = s[g(j)] · b_j                           expand: [q, k] → [q, d]

    and every table and spec is the full space's for ``expand(S)``, so a grouped candidate
    steers exactly as the full candidate it expands to. ``vector(spec)`` goes back by least
    squares per group, s_g = Σ_j∈g x_j b_j / Σ_j∈g b_j² (exact when the spec's row is on the
    grouped subspace, e.g. the template under template scales: s = 1).
    """

    def __init__(self, full: SearchSpace, group_of: Sequence[int], labels: Sequence[str],
                 scales: torch.Tensor, lower, upper, sources: Sequence[str]) -> None:
        self.full = full
        self.template, self.coords = full.template, full.coords
        self.group_of = torch.as_tensor(list(group_of), dtype=torch.long)
        self.labels = list(labels)
        self.scales = torch.as_tensor(scales, dtype=torch.float64).flatten().clone()
        if self.group_of.numel() != full.d or self.scales.numel() != full.d:
            raise TunerError(f"grouped space: {full.d} coordinates but {self.group_of.numel()} group "
                             f"indices and {self.scales.numel()} scales")
        counts = torch.bincount(self.group_of, minlength=len(self.labels)).tolist()
        Box.__init__(self, lower, upper, [f"group:{g}[{n}]" for g, n in zip(self.labels, counts)], list(sources))

    def expand(self, X: torch.Tensor) -> torch.Tensor:
        """Strengths ``X`` [q, k] (or [k]) → full coefficient vectors [q, d] (float64)."""
        X = torch.as_tensor(X, dtype=torch.float64)
        if X.ndim == 1:
            X = X.unsqueeze(0)
        if X.ndim != 2 or X.shape[1] != self.d:
            raise TunerError(f"candidates must be [q, {self.d}], got {tuple(X.shape)}")
        return X[:, self.group_of] * self.scales

    def tables(self, X: torch.Tensor) -> list[torch.Tensor]:
        return self.full.tables(self.expand(X))

    def vector(self, spec: Optional[SteeringSpec] = None, row: int = 0) -> torch.Tensor:
        x = self.full.vector(spec, row)
        out = torch.zeros(self.d, dtype=torch.float64)
        for g in range(self.d):
            b = self.scales[self.group_of == g]
            norm = float((b * b).sum())
            out[g] = float((x[self.group_of == g] * b).sum()) / norm if norm > 0 else 0.0
        return out

    def describe(self) -> dict[str, Any]:
        """What defines the parametrisation (saved in the history; resuming checks it)."""
        return {"kind": "grouped", "groups": self.labels, "coordinates": self.full.names,
                "group_of": self.group_of.tolist(), "scales": self.scales.tolist()}


def grouped_search_space(template: Union[SteeringSpec, SearchSpace],
                         stats: Union[None, str, Path, Mapping, FeatureStatsTable] = None, *,
                         groups: Union[str, Sequence[Any]] = "sign",
                         strength: Optional[tuple[float, float]] = None,
                         **full_kwargs: Any) -> GroupedSearchSpace:
    """A :class:`GroupedSearchSpace` over ``template``'s tunable coefficients.

    ``groups``: ``"sign"`` — supportive (template coefficient ≥ 0) and opposing (< 0);
    ``"intervention"`` — one strength per intervention (``L<layer>#<n>``); ``"all"`` — one
    strength; or a label per full coordinate. Empty groups are dropped.

    Scales b_j: with activation statistics for the coordinate (the full space's range came
    from them), sign(c_j) · the full range's reference (a_max, or add_mean_multiple·a_mean),
    so s = 1 reaches the full box's edge; otherwise the template's own coefficient c_j, so
    s = 1 is the template (a zero coefficient then stays zero). Strength bounds
    (``strength`` overrides): [0, 1] for a group whose scales all come from statistics,
    else [0, 2] (the template in the middle). ``full_kwargs`` go to :func:`search_space`.
    """
    full = template if isinstance(template, SearchSpace) else search_space(template, stats, **full_kwargs)
    c = full.vector()
    from_stats = [src.startswith("stats:") for src in full.sources]
    sign = torch.where(c < 0, -1.0, 1.0).to(torch.float64)
    scales = torch.where(torch.tensor(from_stats), sign * full.upper.abs(), c)
    if isinstance(groups, str):
        if groups == "sign":
            per = ["supportive" if float(v) >= 0 else "opposing" for v in c]
        elif groups == "intervention":
            per = [f"L{full.template.interventions[k.intervention].layer}#{k.intervention}" for k in full.coords]
        elif groups == "all":
            per = ["all"] * full.d
        else:
            raise TunerError(f"groups must be one of {GROUPINGS} or a label per coordinate, got {groups!r}")
    else:
        per = [str(g) for g in groups]
        if len(per) != full.d:
            raise TunerError(f"groups: {len(per)} labels for {full.d} coordinates ({full.names[:3]}...)")
    labels = list(dict.fromkeys(per))  # first-seen order
    group_of = [labels.index(p) for p in per]
    lower, upper, sources = [], [], []
    for g in range(len(labels)):
        all_stats = all(s for s, k in zip(from_stats, group_of) if k == g)
        lo, hi = strength if strength is not None else (0.0, 1.0 if all_stats else 2.0)
        lower.append(float(lo)), upper.append(float(hi))
        sources.append("user" if strength is not None else ("strength:stats" if all_stats else "strength:template"))
    return GroupedSearchSpace(full, group_of, labels, scales, lower, upper, sources)

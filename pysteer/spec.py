"""Steering specs: what to edit, where, and how hard — with one row per configuration.

A :class:`SteeringSpec` holds interventions on one or several decoder layers:

- :class:`SparseIntervention`: selected SAE features, an edit per feature (add,
  set/clamp, scale, ablate) and a coefficient table ``[C, S]``.
- :class:`DenseIntervention`: dense directions ``[K, D]``, an edit per direction (add
  ``c·u`` or Stolfo's projection ``h + (z̄ − h·u)·u``) and a table ``[C, K]``.

Row ``c`` of every table is configuration ``c``; a batch can carry several
configurations at once (see :class:`pysteer.patching.SteeringState`). ``positions``
says which tokens are steered: ``all``, ``prompt`` or ``generated``.

On disk a spec is a directory with ``steering.json`` (human-readable) and
``steering.safetensors`` (every tensor); :meth:`SteeringSpec.load` gives back exactly
what :meth:`SteeringSpec.save` wrote. Sparse interventions store only the selected
features' encoder/decoder slices and the SAE's width, so a spec is small and needs no
SAE to run — except for SAEs whose features compete over the whole SAE (TopK,
``Architecture.needs_full_encode``): those keep the SAE's directory path and reload it.

Spec algebra: :func:`neutral_coefficient` (the coefficient at which an edit does
nothing, exactly), :meth:`SteeringSpec.neutral_rows`, :meth:`SteeringSpec.configuration`
and :func:`stack_specs` (several specs as one multi-configuration spec).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .errors import SAEFormatError, SteeringSpecError
from .fileio import read_json_object, save_tensors, staged_directory
from .ops.modes import DenseEdit, FeatureEdit
from .sae import SAE, Architecture, architecture_named, feature_indices, integer_index, load_sae

POSITIONS = ("all", "prompt", "generated")
SPEC_JSON = "steering.json"
SPEC_TENSORS = "steering.safetensors"
SPEC_FILES = (SPEC_JSON, SPEC_TENSORS)  # what SteeringSpec.save writes, and so may overwrite
SPARSE_TENSORS = ("enc_rows", "enc_bias", "threshold", "dec_rows", "input_offset")
FORMAT_VERSION = 1


def _coefficient_table(values: Any, width: int, what: str) -> torch.Tensor:
    table = torch.as_tensor(values, dtype=torch.float32).detach().cpu()
    if table.ndim == 1:
        table = table.unsqueeze(0)
    if table.ndim != 2 or table.shape[1] != width:
        raise SteeringSpecError(f"{what}: coefficients must be [configs, {width}] (one column per "
                                f"{'feature' if 'sparse' in what else 'direction'}), got {tuple(table.shape)}")
    if table.shape[0] < 1:
        raise SteeringSpecError(f"{what}: the coefficient table needs at least one row")
    if not torch.isfinite(table).all():
        bad = torch.nonzero(~torch.isfinite(table))[0].tolist()
        raise SteeringSpecError(f"{what}: coefficient [{bad[0]}, {bad[1]}] is NaN or infinite")
    return table.contiguous()


def _integer_at_least(value: Any, name: str, minimum: int, what: str) -> int:
    try:
        value = integer_index(value, f"the {name}")
    except ValueError as exc:
        raise SteeringSpecError(f"{what}: {exc}") from None
    if value < minimum:
        raise SteeringSpecError(f"{what}: the {name} must be at least {minimum}, got {value}")
    return value


def _features(features: Any, d_sae: Optional[int], what: str) -> list[int]:
    """Distinct valid feature indices: one feature takes one edit (two would silently add up)."""
    try:
        index = feature_indices(features)
    except ValueError as exc:
        raise SteeringSpecError(f"{what}: {exc}") from None
    if not index:
        raise SteeringSpecError(f"{what}: select at least one feature")
    seen: set[int] = set()
    for feature in index:
        if feature in seen:
            raise SteeringSpecError(f"{what}: feature {feature} is listed twice; list each feature "
                                    f"once, with one edit and one coefficient column")
        seen.add(feature)
        if feature < 0 or (d_sae is not None and feature >= d_sae):
            sae = f"an SAE with d_sae={d_sae}" if d_sae is not None else "an SAE"
            raise SteeringSpecError(f"{what}: feature index {feature} is out of range for {sae}")
    return index


def _edits(edits: Any, width: int, parse, what: str) -> list:
    if isinstance(edits, (str, int)):
        edits = [edits] * width
    edits = [parse(e) for e in edits]
    if len(edits) != width:
        raise SteeringSpecError(f"{what}: {len(edits)} edits given for {width} entries")
    return edits


def _edit_counts(edits: Sequence[Any]) -> str:
    """"add×5, project×1": what the edits do, without listing every feature."""
    counts: dict[str, int] = {}
    for edit in edits:
        name = getattr(edit, "name", str(edit)).lower()
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{name}×{n}" for name, n in counts.items())


def _first(items: Sequence[Any], n: int = 6) -> str:
    shown = ", ".join(str(x) for x in items[:n])
    return f"[{shown}{', …' if len(items) > n else ''}]"


@dataclass(repr=False)
class SparseIntervention:
    """Edit selected SAE features at one layer.

    ``enc_rows``/``dec_rows`` [S, D], ``enc_bias`` [S], ``threshold`` [S] fp32,
    ``input_offset`` [D]: the selected slices of the SAE (see :class:`pysteer.SAE`);
    ``d_sae``: the SAE's width, which the features must fit (None when unknown, e.g. a
    spec saved before it was recorded). Build one with :meth:`from_sae`.
    """

    layer: int
    features: list[int]
    edits: list[FeatureEdit]
    coefficients: torch.Tensor
    enc_rows: torch.Tensor
    enc_bias: torch.Tensor
    threshold: torch.Tensor
    dec_rows: torch.Tensor
    input_offset: torch.Tensor
    architecture: str = "standard"
    sae: Optional[SAE] = None  # the whole SAE; required when arch.needs_full_encode (TopK)
    sae_path: Optional[str] = None
    d_sae: Optional[int] = None

    @classmethod
    def from_sae(cls, sae: Union[SAE, str, os.PathLike, Any], features: Sequence[int],
                 coefficients: Any, edits: Any = "add", layer: Optional[int] = None) -> "SparseIntervention":
        sae_path = str(sae) if isinstance(sae, (str, os.PathLike)) else None
        sae = load_sae(sae)
        index = sae.check_features(features)
        if layer is None:
            layer = sae.hook_layer
            if layer is None:
                raise SteeringSpecError(f"{sae.source}: the SAE's hook_name does not name a layer; "
                                        f"pass layer=")
        arch = sae.arch
        return cls(layer, index.tolist(), edits, coefficients,
                   sae.W_enc[:, index].t().contiguous(), sae.b_enc[index].contiguous(),
                   arch.feature_thresholds(sae, index), sae.W_dec[index].contiguous(),
                   sae.input_offset.contiguous(), sae.architecture,
                   sae if arch.needs_full_encode else None,
                   sae_path or (None if sae.source.startswith("<") else sae.source), sae.d_sae)

    def __post_init__(self) -> None:
        what = f"sparse intervention at layer {self.layer}"
        self.layer = _integer_at_least(self.layer, "layer", 0, what)
        try:
            arch = self.arch
        except SAEFormatError as exc:
            raise SteeringSpecError(f"{what}: {exc}") from None
        if self.d_sae is not None:
            self.d_sae = _integer_at_least(self.d_sae, "d_sae", 1, what)
        if self.sae is not None:
            self._check_sae(what)
        elif arch.needs_full_encode:
            raise SteeringSpecError(f"{what}: {arch.name} SAE features compete over the whole SAE, "
                                    f"so the intervention needs the SAE itself (sae=...)")
        self.features = _features(self.features, self.d_sae, what)
        width = len(self.features)
        self.coefficients = _coefficient_table(self.coefficients, width, what)
        self.edits = _edits(self.edits, width, FeatureEdit.parse, what)

    def _check_sae(self, what: str) -> None:
        """The whole SAE matches the slices: same architecture, width and d_model."""
        sae = self.sae
        if sae.arch is not self.arch:
            raise SteeringSpecError(f"{what}: the intervention is {self.architecture!r} but its SAE "
                                    f"{sae.source} is {sae.architecture!r}")
        if self.d_sae is None:
            self.d_sae = sae.d_sae
        elif self.d_sae != sae.d_sae:
            raise SteeringSpecError(f"{what}: made for an SAE with d_sae={self.d_sae}, but its SAE "
                                    f"{sae.source} has d_sae={sae.d_sae}")
        if sae.d_in != self.d_model:
            raise SteeringSpecError(f"{what}: steers d_model={self.d_model}, but its SAE "
                                    f"{sae.source} reads d_in={sae.d_in}")

    @property
    def arch(self) -> Architecture:
        return architecture_named(self.architecture)

    @property
    def d_model(self) -> int:
        return self.dec_rows.shape[1]

    @property
    def width(self) -> int:
        return len(self.features)

    def __repr__(self) -> str:
        sae = f", sae={self.sae_path!r}" if self.sae_path else ""
        return (f"SparseIntervention(layer={self.layer}, {self.architecture}, {self.width} feature(s) "
                f"{_first(self.features)}, {_edit_counts(self.edits)}, "
                f"{self.coefficients.shape[0]} config(s), d_sae={self.d_sae}{sae})")


@dataclass(repr=False)
class DenseIntervention:
    """Add or project dense directions ``directions`` [K, D] at one layer."""

    layer: int
    directions: torch.Tensor
    coefficients: Any
    edits: Any = "add"

    def __post_init__(self) -> None:
        what = f"dense intervention at layer {self.layer}"
        self.layer = _integer_at_least(self.layer, "layer", 0, what)
        directions = torch.as_tensor(self.directions).detach()
        if directions.ndim == 1:
            directions = directions.unsqueeze(0)
        if directions.ndim != 2 or not directions.is_floating_point():
            raise SteeringSpecError(f"{what}: directions must be a float [K, d_model] tensor")
        if not torch.isfinite(directions).all():
            raise SteeringSpecError(f"{what}: directions contain NaN or infinite values")
        self.directions = directions.contiguous()
        width = directions.shape[0]
        self.coefficients = _coefficient_table(self.coefficients, width, what)
        self.edits = _edits(self.edits, width, DenseEdit.parse, what)
        for i, edit in enumerate(self.edits):
            norm = float(directions[i].float().norm())
            if edit == DenseEdit.PROJECT and abs(norm - 1.0) > 1e-3:
                raise SteeringSpecError(f"{what}: direction {i} has norm {norm:.4g}; the projection "
                                        f"form needs a unit vector (divide by its norm)")

    @property
    def d_model(self) -> int:
        return self.directions.shape[1]

    @property
    def width(self) -> int:
        return self.directions.shape[0]

    def __repr__(self) -> str:
        return (f"DenseIntervention(layer={self.layer}, {self.width} direction(s) of d_model "
                f"{self.d_model}, {_edit_counts(self.edits)}, {self.coefficients.shape[0]} config(s))")


Intervention = Union[SparseIntervention, DenseIntervention]


@dataclass(repr=False)
class SteeringSpec:
    """Interventions + which positions they apply to + the model they were made for."""

    interventions: list[Intervention]
    positions: str = "all"
    model: dict[str, Any] = field(default_factory=dict)  # hidden_size, num_hidden_layers, name
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.interventions, (SparseIntervention, DenseIntervention)):
            self.interventions = [self.interventions]
        if not self.interventions:
            raise SteeringSpecError("a steering spec needs at least one intervention")
        if self.positions not in POSITIONS:
            raise SteeringSpecError(f"positions must be one of {', '.join(POSITIONS)}, got {self.positions!r}")
        configs = {iv.coefficients.shape[0] for iv in self.interventions}
        if len(configs) != 1:
            raise SteeringSpecError(f"every intervention needs the same number of configurations "
                                    f"(coefficient rows), got {sorted(configs)}")
        widths = {iv.d_model for iv in self.interventions}
        if len(widths) != 1:
            raise SteeringSpecError(f"interventions disagree on d_model: {sorted(widths)}")

    def __repr__(self) -> str:
        name = self.model.get("name")
        head = (f"SteeringSpec(positions={self.positions!r}, {self.n_configs} config(s)"
                + (f", model={name!r}" if name else ""))
        if len(self.interventions) == 1:
            return f"{head}, {self.interventions[0]!r})"
        body = "".join(f"\n  {iv!r}," for iv in self.interventions)
        return f"{head},{body}\n)"

    @property
    def n_configs(self) -> int:
        return self.interventions[0].coefficients.shape[0]

    @property
    def d_model(self) -> int:
        return self.interventions[0].d_model

    @property
    def layers(self) -> list[int]:
        return sorted({iv.layer for iv in self.interventions})

    def with_coefficients(self, tables: Sequence[torch.Tensor]) -> "SteeringSpec":
        """A copy whose interventions use the given coefficient tables (one per intervention)."""
        if len(tables) != len(self.interventions):
            raise SteeringSpecError(f"{len(tables)} tables for {len(self.interventions)} interventions")
        return SteeringSpec([dataclasses.replace(iv, coefficients=t) for iv, t in
                             zip(self.interventions, tables)], self.positions, dict(self.model),
                            dict(self.metadata))

    def configuration(self, c: int) -> "SteeringSpec":
        """Configuration ``c`` alone: a one-row copy (this spec itself if it has only that row)."""
        if not 0 <= c < self.n_configs:
            raise SteeringSpecError(f"configuration {c} is out of range: the spec has {self.n_configs}")
        if self.n_configs == 1:
            return self
        return self.with_coefficients([iv.coefficients[c:c + 1] for iv in self.interventions])

    def neutral_rows(self, n: int) -> Optional[list[torch.Tensor]]:
        """Per intervention, a table [n, width] of coefficients at which it leaves the residual
        bit-identical (:func:`neutral_coefficient`); None if some edit has no such coefficient."""
        tables = []
        for iv in self.interventions:
            neutral = [neutral_coefficient(edit) for edit in iv.edits]
            if None in neutral:
                return None
            tables.append(torch.tensor(neutral, dtype=torch.float32).repeat(n, 1))
        return tables

    # ------------------------------------------------------------------- file form
    def save(self, path: "str | os.PathLike", overwrite: bool = False, *,
             extra_files: Optional[Mapping[str, str]] = None) -> Path:
        """Write ``path/steering.json`` + ``path/steering.safetensors`` (atomically).

        ``extra_files``: ``{name: text}`` written beside them in the same step (e.g. a
        discovery record); they belong to the spec, so a later overwrite may replace them.
        ``overwrite=True`` replaces a directory holding only these files and refuses one
        holding anything else, naming it (see :func:`pysteer.fileio.staged_directory`).
        """
        extra_files = dict(extra_files or {})
        for name in extra_files:
            if name in SPEC_FILES or Path(name).name != name or name.startswith("."):
                raise SteeringSpecError(f"extra file {name!r}: give a plain file name other than "
                                        f"{' and '.join(SPEC_FILES)}")
        tensors: dict[str, torch.Tensor] = {}
        entries = []
        for n, iv in enumerate(self.interventions):
            prefix = f"{n}."
            tensors[prefix + "coefficients"] = iv.coefficients
            if isinstance(iv, SparseIntervention):
                for name in SPARSE_TENSORS:
                    tensors[prefix + name] = getattr(iv, name)
                if iv.arch.needs_full_encode and iv.sae_path is None:
                    raise SteeringSpecError(f"a {iv.architecture} intervention can only be saved when "
                                            f"its SAE was loaded from a directory (the spec records "
                                            f"that path)")
                entries.append({"kind": "sparse", "layer": iv.layer, "features": iv.features,
                                "edits": [e.name.lower() for e in iv.edits],
                                "architecture": iv.architecture, "sae_path": iv.sae_path,
                                "d_sae": iv.d_sae})
            else:
                tensors[prefix + "directions"] = iv.directions
                entries.append({"kind": "dense", "layer": iv.layer,
                                "edits": [e.name.lower() for e in iv.edits]})
        doc = {"format": "pysteer.steering", "version": FORMAT_VERSION, "positions": self.positions,
               "model": self.model, "metadata": self.metadata, "interventions": entries}
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        with staged_directory(path, overwrite, owns={*SPEC_FILES, *extra_files}) as staging:
            save_tensors(staging / SPEC_TENSORS, tensors)
            (staging / SPEC_JSON).write_text(json.dumps(doc, indent=2))
            for name, text in extra_files.items():
                (staging / name).write_text(text)
        return Path(path)

    @classmethod
    def load(cls, path: "str | os.PathLike", saes: Optional[dict[str, SAE]] = None) -> "SteeringSpec":
        """Read a spec written by :meth:`save`, checking each intervention against its SAE's
        width. ``saes`` maps a recorded ``sae_path`` (TopK) to an already loaded SAE."""
        path = Path(path)
        json_path, tensor_path = path / SPEC_JSON, path / SPEC_TENSORS
        for needed in (json_path, tensor_path):
            if not needed.is_file():
                raise SteeringSpecError(f"{needed}: missing (a steering spec is a directory holding "
                                        f"{SPEC_JSON} and {SPEC_TENSORS})")
        doc = read_json_object(json_path, SteeringSpecError)
        if doc.get("format") != "pysteer.steering":
            raise SteeringSpecError(f"{json_path}: not a pysteer steering file (no \"format\": "
                                    f"\"pysteer.steering\")")
        if doc.get("version") != FORMAT_VERSION:
            raise SteeringSpecError(f"{json_path}: format version {doc.get('version')!r} is not "
                                    f"supported (this pysteer reads version {FORMAT_VERSION})")
        try:
            tensors = load_file(str(tensor_path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise SteeringSpecError(f"{tensor_path}: cannot read ({exc}); the file may be truncated") from None

        def tensor(key: str) -> torch.Tensor:
            if key not in tensors:
                raise SteeringSpecError(f"{tensor_path}: missing tensor {key!r}")
            return tensors[key]

        interventions = [_read_intervention(entry, n, tensor, saes or {}, json_path, tensor_path)
                         for n, entry in enumerate(_require_list(doc, "interventions", json_path))]
        return cls(interventions, doc.get("positions", "all"), doc.get("model") or {},
                   doc.get("metadata") or {})


def _require_list(doc: dict, key: str, where: Path) -> list:
    value = doc.get(key)
    if not isinstance(value, list):
        raise SteeringSpecError(f"{where}: {key!r} must be a list")
    return value


def _read_intervention(entry: Any, n: int, tensor, saes: Mapping[str, SAE], json_path: Path,
                       tensor_path: Path) -> Intervention:
    """Intervention ``n`` of a spec file; any fault is a SteeringSpecError naming the file,
    the intervention and the value."""
    where = f"{json_path}: intervention {n}"
    if not isinstance(entry, dict):
        raise SteeringSpecError(f"{where} must be a JSON object, got {type(entry).__name__}")
    try:
        kind, layer, edits = entry["kind"], entry["layer"], entry["edits"]
        features = entry["features"] if kind == "sparse" else None
    except KeyError as exc:
        raise SteeringSpecError(f"{where} is missing key {exc}") from None
    if kind == "dense":
        make, args = DenseIntervention, (layer, tensor(f"{n}.directions"), tensor(f"{n}.coefficients"), edits)
    elif kind == "sparse":
        arrays = {name: tensor(f"{n}.{name}") for name in SPARSE_TENSORS}
        if isinstance(features, list):
            _check_sparse_shapes(arrays, len(features), tensor_path, n)
        architecture, sae_path = entry.get("architecture", "standard"), entry.get("sae_path")
        try:
            needs_sae = architecture_named(architecture).needs_full_encode
        except SAEFormatError as exc:
            raise SteeringSpecError(f"{where}: {exc}") from None
        sae = (saes.get(sae_path) or _load_whole_sae(sae_path, architecture, json_path)) if needs_sae else None
        make, args = SparseIntervention, (layer, features, edits, tensor(f"{n}.coefficients"),
                                          *arrays.values(), architecture, sae, sae_path, entry.get("d_sae"))
    else:
        raise SteeringSpecError(f"{where} has unknown kind {kind!r}")
    try:
        return make(*args)
    except (TypeError, ValueError) as exc:  # SteeringSpecError included: say which file
        raise SteeringSpecError(f"{where}: {exc}") from None


def _check_sparse_shapes(arrays: dict[str, torch.Tensor], width: int, where: Path, n: int) -> None:
    d_model = arrays["input_offset"].shape[-1] if arrays["input_offset"].ndim else -1
    expected = {"enc_rows": (width, d_model), "dec_rows": (width, d_model), "enc_bias": (width,),
                "threshold": (width,), "input_offset": (d_model,)}
    for name, shape in expected.items():
        got = tuple(arrays[name].shape)
        if got != shape:
            raise SteeringSpecError(f"{where}: tensor '{n}.{name}' has shape {got}, expected {shape}")


def _load_whole_sae(sae_path: Optional[str], architecture: str, where: Path) -> SAE:
    if not sae_path:
        raise SteeringSpecError(f"{where}: a {architecture} intervention records no sae_path; pass saes=")
    try:
        return load_sae(sae_path)
    except SAEFormatError as exc:
        raise SteeringSpecError(f"{where}: cannot load the {architecture} SAE it needs: {exc}") from None


# ------------------------------------------------------------------------ spec algebra
def neutral_coefficient(edit: "FeatureEdit | DenseEdit") -> Optional[float]:
    """The coefficient at which an edit leaves the residual bit-identical, or None.

    Sparse add 0: f' − f = 0 exactly; sparse scale 1: f·1 − f = 0 exactly; dense add 0.
    Set, ablate and the projection change h whatever the coefficient.
    """
    if isinstance(edit, FeatureEdit):
        return {FeatureEdit.ADD: 0.0, FeatureEdit.SCALE: 1.0}.get(edit)
    return 0.0 if edit == DenseEdit.ADD else None


def stack_specs(specs: Mapping[str, SteeringSpec]) -> list[tuple[SteeringSpec, list[str]]]:
    """Group named specs into as few attachable specs as is exact: [(spec, names)].

    Specs whose every edit has a neutral coefficient (:meth:`SteeringSpec.neutral_rows`)
    and that steer the same positions become ONE spec whose configuration m applies spec
    m's row 0 and sets every other spec's interventions to their neutral coefficients —
    which leave the residual bit-identical, so row m is exactly spec m alone. Any other
    spec (e.g. the projection) stands alone, with its row 0.
    """
    groups: list[tuple[SteeringSpec, list[str]]] = []
    by_positions: dict[str, list[str]] = {}
    for name, spec in specs.items():
        if spec.neutral_rows(1) is not None:
            by_positions.setdefault(spec.positions, []).append(name)
        else:
            groups.append((spec.configuration(0), [name]))
    for positions, names in by_positions.items():
        if len(names) == 1:
            groups.append((specs[names[0]].configuration(0), names))
            continue
        interventions = []
        for m, name in enumerate(names):
            spec = specs[name]
            for iv, table in zip(spec.interventions, spec.neutral_rows(len(names))):
                table[m] = iv.coefficients[0]
                interventions.append(dataclasses.replace(iv, coefficients=table))
        metadata = {"method": "stacked", "configs": names}
        groups.append((SteeringSpec(interventions, positions, dict(specs[names[0]].model), metadata), names))
    return groups

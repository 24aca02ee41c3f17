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
features' encoder/decoder slices, so a spec is small and needs no SAE to run — except
for TopK SAEs, whose features compete in a top-k over the whole SAE: those keep the
SAE's directory path and reload it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .errors import SAEFormatError, SteeringSpecError
from .fileio import read_json_object, save_tensors, staged_directory
from .ops.modes import DenseEdit, FeatureEdit
from .sae import SAE, load_sae

POSITIONS = ("all", "prompt", "generated")
SPEC_JSON = "steering.json"
SPEC_TENSORS = "steering.safetensors"
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


def _edits(edits: Any, width: int, parse, what: str) -> list:
    if isinstance(edits, (str, int)):
        edits = [edits] * width
    edits = [parse(e) for e in edits]
    if len(edits) != width:
        raise SteeringSpecError(f"{what}: {len(edits)} edits given for {width} entries")
    return edits


@dataclass
class SparseIntervention:
    """Edit selected SAE features at one layer.

    ``enc_rows``/``dec_rows`` [S, D], ``enc_bias`` [S], ``threshold`` [S] fp32,
    ``input_offset`` [D]: the selected slices of the SAE (see :class:`pysteer.SAE`).
    Build one with :meth:`from_sae`.
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
    sae: Optional[SAE] = None  # the whole SAE; required for topk
    sae_path: Optional[str] = None

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
        width = index.numel()
        what = f"sparse intervention at layer {layer}"
        threshold = sae.threshold[index].float() if sae.threshold is not None else torch.zeros(width)
        return cls(int(layer), index.tolist(), _edits(edits, width, FeatureEdit.parse, what),
                   _coefficient_table(coefficients, width, what),
                   sae.W_enc[:, index].t().contiguous(), sae.b_enc[index].contiguous(), threshold,
                   sae.W_dec[index].contiguous(), sae.input_offset.contiguous(), sae.architecture,
                   sae if sae.architecture == "topk" else None, sae_path or
                   (sae.source if sae.source != "<memory>" and not sae.source.startswith("<") else None))

    def __post_init__(self) -> None:
        what = f"sparse intervention at layer {self.layer}"
        width = len(self.features)
        self.coefficients = _coefficient_table(self.coefficients, width, what)
        self.edits = _edits(self.edits, width, FeatureEdit.parse, what)
        if self.architecture == "topk" and self.sae is None:
            raise SteeringSpecError(f"{what}: TopK SAE features compete in a top-k over the whole "
                                    f"SAE, so the intervention needs the SAE itself (sae=...)")

    @property
    def d_model(self) -> int:
        return self.dec_rows.shape[1]

    @property
    def width(self) -> int:
        return len(self.features)


@dataclass
class DenseIntervention:
    """Add or project dense directions ``directions`` [K, D] at one layer."""

    layer: int
    directions: torch.Tensor
    coefficients: Any
    edits: Any = "add"

    def __post_init__(self) -> None:
        what = f"dense intervention at layer {self.layer}"
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


Intervention = Union[SparseIntervention, DenseIntervention]


@dataclass
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

    # ------------------------------------------------------------------- file form
    def save(self, path: "str | os.PathLike", overwrite: bool = False) -> Path:
        """Write ``path/steering.json`` + ``path/steering.safetensors`` (atomically)."""
        tensors: dict[str, torch.Tensor] = {}
        entries = []
        for n, iv in enumerate(self.interventions):
            prefix = f"{n}."
            tensors[prefix + "coefficients"] = iv.coefficients
            if isinstance(iv, SparseIntervention):
                for name in ("enc_rows", "enc_bias", "threshold", "dec_rows", "input_offset"):
                    tensors[prefix + name] = getattr(iv, name)
                if iv.architecture == "topk" and iv.sae_path is None:
                    raise SteeringSpecError("a TopK intervention can only be saved when its SAE was "
                                            "loaded from a directory (the spec records that path)")
                entries.append({"kind": "sparse", "layer": iv.layer, "features": iv.features,
                                "edits": [e.name.lower() for e in iv.edits],
                                "architecture": iv.architecture, "sae_path": iv.sae_path})
            else:
                tensors[prefix + "directions"] = iv.directions
                entries.append({"kind": "dense", "layer": iv.layer,
                                "edits": [e.name.lower() for e in iv.edits]})
        doc = {"format": "pysteer.steering", "version": FORMAT_VERSION, "positions": self.positions,
               "model": self.model, "metadata": self.metadata, "interventions": entries}
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        with staged_directory(path, overwrite) as staging:
            save_tensors(staging / SPEC_TENSORS, tensors)
            (staging / SPEC_JSON).write_text(json.dumps(doc, indent=2))
        return Path(path)

    @classmethod
    def load(cls, path: "str | os.PathLike", saes: Optional[dict[str, SAE]] = None) -> "SteeringSpec":
        """Read a spec written by :meth:`save`. ``saes`` maps a TopK ``sae_path`` to a loaded SAE."""
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

        interventions: list[Intervention] = []
        for n, entry in enumerate(_require_list(doc, "interventions", json_path)):
            try:
                kind, layer, edits = entry["kind"], int(entry["layer"]), entry["edits"]
                if kind == "sparse":
                    features = [int(f) for f in entry["features"]]
                    architecture = entry.get("architecture", "standard")
                    sae = None
                    if architecture == "topk":
                        sae_path = entry.get("sae_path")
                        sae = (saes or {}).get(sae_path) or _load_topk_sae(sae_path, json_path)
                    iv: Intervention = SparseIntervention(
                        layer, features, edits, tensor(f"{n}.coefficients"), tensor(f"{n}.enc_rows"),
                        tensor(f"{n}.enc_bias"), tensor(f"{n}.threshold"), tensor(f"{n}.dec_rows"),
                        tensor(f"{n}.input_offset"), architecture, sae, entry.get("sae_path"))
                    _check_sparse_shapes(iv, tensor_path, n)
                elif kind == "dense":
                    iv = DenseIntervention(layer, tensor(f"{n}.directions"), tensor(f"{n}.coefficients"), edits)
                else:
                    raise SteeringSpecError(f"{json_path}: intervention {n} has unknown kind {kind!r}")
            except KeyError as exc:
                raise SteeringSpecError(f"{json_path}: intervention {n} is missing key {exc}") from None
            except (TypeError, ValueError) as exc:
                if isinstance(exc, SteeringSpecError):
                    raise
                raise SteeringSpecError(f"{json_path}: intervention {n}: {exc}") from None
            interventions.append(iv)
        return cls(interventions, doc.get("positions", "all"), doc.get("model") or {},
                   doc.get("metadata") or {})


def _require_list(doc: dict, key: str, where: Path) -> list:
    value = doc.get(key)
    if not isinstance(value, list):
        raise SteeringSpecError(f"{where}: {key!r} must be a list")
    return value


def _check_sparse_shapes(iv: SparseIntervention, where: Path, n: int) -> None:
    width, d_model = iv.width, iv.dec_rows.shape[-1]
    expected = {"enc_rows": (width, d_model), "dec_rows": (width, d_model), "enc_bias": (width,),
                "threshold": (width,), "input_offset": (d_model,)}
    for name, shape in expected.items():
        got = tuple(getattr(iv, name).shape)
        if got != shape:
            raise SteeringSpecError(f"{where}: tensor '{n}.{name}' has shape {got}, expected {shape}")


def _load_topk_sae(sae_path: Optional[str], where: Path) -> SAE:
    if not sae_path:
        raise SteeringSpecError(f"{where}: a TopK intervention records no sae_path; pass saes=")
    try:
        return load_sae(sae_path)
    except SAEFormatError as exc:
        raise SteeringSpecError(f"{where}: cannot load the TopK SAE it needs: {exc}") from None

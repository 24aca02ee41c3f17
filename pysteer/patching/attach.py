"""Attach a steering spec to a loaded model by swapping its decoder layers; detach restores them.

    with pysteer.steer(model, spec) as steering:
        out = model.generate(**inputs)              # generate works unchanged

    steering = pysteer.attach(model, spec, rows=[0, 1, -1])   # per-row configurations
    ...
    steering.detach()                               # the original modules go back

    steering = pysteer.Steering.of_specs(model, [spec_a, spec_b])  # several specs, one steering

Detaching puts the very same module objects back, so the model's outputs are
bit-identical to before attaching.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import torch
from torch import nn

from .. import ops
from ..errors import SteeringSpecError
from ..spec import SparseIntervention, SteeringSpec
from .families import decoder_layers, model_facts
from .scored_generation import generate_and_score
from .shared_prefill import can_share_prefill, generate_with_shared_prefill
from .steered_layer import SteeredLayer, SteeringState, compile_intervention


def check_spec_fits(spec: SteeringSpec, model: nn.Module) -> dict[str, Any]:
    """Raise :class:`SteeringSpecError` unless ``spec`` can run on ``model``; returns model facts."""
    facts = model_facts(model)
    made_for = spec.model.get("name") or "another model"
    if spec.d_model != facts["hidden_size"]:
        raise SteeringSpecError(f"the spec steers d_model={spec.d_model} (made for {made_for}) but "
                                f"this model ({facts['name'] or facts['model_type']}) has "
                                f"hidden_size={facts['hidden_size']}")
    recorded_layers = spec.model.get("num_hidden_layers")
    if recorded_layers is not None and recorded_layers != facts["num_hidden_layers"]:
        raise SteeringSpecError(f"the spec was made for a model with {recorded_layers} layers "
                                f"({made_for}); this one has {facts['num_hidden_layers']}")
    for layer in spec.layers:
        if not 0 <= layer < facts["num_hidden_layers"]:
            raise SteeringSpecError(f"the spec steers layer {layer}, but the model has "
                                    f"{facts['num_hidden_layers']} layers (0..{facts['num_hidden_layers'] - 1})")
    return facts


@dataclass
class ConfigOutputs:
    """What :meth:`Steering.generate_configs` returns: ``tokens`` [n_configs, prompts, W + new]
    (prompt and new tokens, per configuration) and, when scored, ``perplexities``
    [n_configs][prompts] (of the new tokens under the unsteered model; NaN for none)."""

    tokens: torch.Tensor
    perplexities: Optional[list[list[float]]] = None


class Steering:
    """A spec attached to a model: the one owner of steered execution.

    It sets which configuration each batch row uses (:meth:`set_rows`) and where the prompt
    ends (:meth:`set_prompt_length`), rewrites the coefficient tables in place
    (:meth:`set_coefficients`), switches steering off for unsteered passes
    (:meth:`unsteered`), and runs steered generations — one batch for many configurations
    on one prefill of the distinct prompts (:meth:`generate_configs`). Use as a context
    manager or call :meth:`detach`.
    """

    def __init__(self, model: nn.Module, spec: SteeringSpec,
                 rows: "Sequence[int] | torch.Tensor | None" = None,
                 prompt_length: Optional[int] = None) -> None:
        check_spec_fits(spec, model)
        self.device = next(model.parameters()).device
        ops.check_backend(self.device)  # a backend that cannot run fails here, before any layer runs
        self.model, self.spec = model, spec
        self.state = SteeringState(spec.n_configs, spec.positions)
        layers = decoder_layers(model)
        for index in spec.layers:
            if isinstance(layers[index], SteeredLayer):
                raise SteeringSpecError(f"layer {index} is already steered; detach that steering first")
        by_layer: dict[int, list] = defaultdict(list)
        self._compiled: list[nn.Module] = []  # one per spec intervention, in the spec's order
        param = next(model.parameters())
        for iv in spec.interventions:
            compiled = compile_intervention(iv, param.device, param.dtype)
            self._compiled.append(compiled)
            by_layer[iv.layer].append(compiled)
        self._originals: dict[int, nn.Module] = {}
        for index, compiled in sorted(by_layer.items()):
            self._originals[index] = layers[index]
            layers[index] = SteeredLayer(layers[index], index, compiled, self.state)
        self.state.first_layer, self.state.last_layer = min(by_layer), max(by_layer)
        self.state.wants_steered_tokens = any(iv.arch.needs_full_encode for iv in spec.interventions
                                              if isinstance(iv, SparseIntervention))
        self.set_rows(rows)
        self.set_prompt_length(prompt_length)

    @classmethod
    def of_specs(cls, model: nn.Module, specs: Sequence[SteeringSpec], spare_rows: int = 0) -> "Steering":
        """Several specs attached as ONE steering (one plan per pass, one set of steered layers),
        e.g. every spec a server offers.

        The configurations are numbered globally, spec after spec: spec g's row r is global
        row ``row_offsets[g] + r``; then come ``spare_rows`` rows that :meth:`set_spare_row`
        fills at run time (a request's scaled row). Each intervention keeps its own table
        (padded to a common height); the state's ``group_maps`` turn the global row of each
        token into the row of its own spec, −1 in every other spec, so an edit without a
        neutral coefficient (set, ablate, projection) is still exact. Specs with different
        position rules can only run in packed steps (:mod:`pysteer.serving`), which apply
        each request's rule on the host.
        """
        specs = list(specs)
        if not specs:
            raise SteeringSpecError("of_specs needs at least one spec")
        for spec in specs:
            check_spec_fits(spec, model)
        local_height = max(spec.n_configs for spec in specs) + int(spare_rows)
        interventions, groups = [], []
        for g, spec in enumerate(specs):
            for iv in spec.interventions:
                table = iv.coefficients.new_zeros(local_height, iv.coefficients.shape[1])
                table[:spec.n_configs] = iv.coefficients
                interventions.append(dataclasses.replace(iv, coefficients=table))
                groups.append(g)
        positions = sorted({spec.positions for spec in specs})
        combined = SteeringSpec(interventions, positions[0] if len(positions) == 1 else "all",
                                {}, {"method": "of_specs"})
        steering = cls(model, combined)
        offsets = [0]
        for spec in specs:
            offsets.append(offsets[-1] + spec.n_configs)
        n_global = offsets[-1] + int(spare_rows)
        maps = torch.full((len(specs), n_global + 1), -1, dtype=torch.int32)
        for g, spec in enumerate(specs):
            maps[g, 1 + offsets[g]:1 + offsets[g + 1]] = torch.arange(spec.n_configs, dtype=torch.int32)
        for compiled, g in zip(steering._compiled, groups):
            compiled.group = g
        steering.row_offsets = offsets[:-1]
        steering._spare_base = (offsets[-1], local_height - int(spare_rows))
        steering.state.group_maps = maps.to(steering.device)
        steering.state.mixed_positions = positions if len(positions) > 1 else None
        steering.state.n_configs = n_global
        return steering

    def set_spare_row(self, slot: int, group: int, rows: "Sequence[torch.Tensor]") -> int:
        """Fill spare row ``slot`` of a :meth:`of_specs` steering with one configuration of spec
        ``group`` (``rows``: one coefficient row per intervention of that spec), in place — the
        same buffers, so captured graphs stay valid. Returns the global row to use."""
        base = getattr(self, "_spare_base", None)
        if base is None:
            raise SteeringSpecError("set_spare_row needs a steering made by Steering.of_specs")
        global_base, local_base = base
        local_row = local_base + slot
        if not 0 <= slot < self.state.n_configs - global_base:
            raise SteeringSpecError(f"spare row {slot} is out of range: this steering has "
                                    f"{self.state.n_configs - global_base}")
        own = [c for c in self._compiled if c.group == group]
        if len(rows) != len(own):
            raise SteeringSpecError(f"spec {group} has {len(own)} interventions, got {len(rows)} rows")
        for compiled, row in zip(own, rows):
            compiled.coeffs[local_row].copy_(row)
        column = self.state.group_maps[:, 1 + global_base + slot]
        column.fill_(-1)
        column[group] = local_row
        return global_base + slot

    @property
    def attached(self) -> bool:
        return bool(self._originals)

    def set_rows(self, rows: "Sequence[int] | torch.Tensor | None") -> None:
        """Configuration index per batch row (-1 = unsteered); ``None``: configuration 0 for all."""
        self.state.set_rows(rows, self.device)

    def set_prompt_length(self, prompt_length: "int | Sequence[int] | torch.Tensor | None",
                          width: Optional[int] = None) -> None:
        """Where each row's prompt ends: tokens at position ids below it are 'prompt', the rest
        'generated'. One int for every row (an unpadded batch), or one per row — the rows'
        real prompt lengths in a left-padded batch, whose padded ``width`` may be given too
        (:meth:`generate` sets both from the attention mask)."""
        self.state.set_prompt_length(prompt_length, self.device, width)

    def set_coefficients(self, tables: "Sequence[torch.Tensor] | torch.Tensor") -> None:
        """New coefficient tables (one per intervention, as :meth:`SteeringSpec.with_coefficients`;
        a single tensor for a one-intervention spec), written into the attached buffers: no
        weight is copied or validated again, and a table with the same number of rows keeps
        the very same buffer (so compiled code and captured CUDA graphs stay valid)."""
        if isinstance(tables, torch.Tensor):
            tables = [tables]
        if self.state.group_maps is not None:
            raise SteeringSpecError("a steering of several specs (Steering.of_specs) takes new rows through "
                                    "set_spare_row, not set_coefficients")
        spec = self.spec.with_coefficients(list(tables))  # validates shapes and finiteness
        rows = self.state.host_rows
        if rows is not None and max(rows) >= spec.n_configs:
            raise SteeringSpecError(f"the rows name configuration {max(rows)} but the new tables have "
                                    f"{spec.n_configs}: set_rows(...) first (nothing was changed)")
        for compiled, iv in zip(self._compiled, spec.interventions):
            compiled.set_coefficients(iv.coefficients)
        self.spec = spec
        self.state.n_configs = spec.n_configs

    @contextlib.contextmanager
    def unsteered(self) -> Iterator["Steering"]:
        """Within it the steered layers are the plain layers: nothing is planned or launched."""
        previous, self.state.enabled = self.state.enabled, False
        try:
            yield self
        finally:
            self.state.enabled = previous

    def generate(self, input_ids: torch.Tensor, rows: "Sequence[int] | torch.Tensor | None" = None,
                 share_prefill: bool = True, **generate_kwargs: Any) -> torch.Tensor:
        """``model.generate`` with the prompt lengths (and optionally the rows) set from the inputs.

        When the batch repeats prompts (e.g. one copy per tuner candidate, each with its
        own row) and ``share_prefill``, the layers below the first steered one process
        each distinct prompt once (:mod:`.shared_prefill`); the output is the same.
        """
        self._check_attached()
        if rows is not None:
            self.set_rows(rows)
        mask = generate_kwargs.get("attention_mask")
        width = int(input_ids.shape[1])
        self.set_prompt_length(width if mask is None else mask.sum(1), width=width)
        if share_prefill and can_share_prefill(input_ids, mask, generate_kwargs):
            kwargs = dict(generate_kwargs)
            out = generate_with_shared_prefill(self, input_ids, kwargs.pop("attention_mask"), **kwargs)
            if out is not None:
                return out
        return self.model.generate(input_ids=input_ids, **generate_kwargs)

    @torch.no_grad()
    def generate_configs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         configs: Sequence[int], *, max_new_tokens: int, pad_token_id: int,
                         score: bool = False, eos_token_ids: "Optional[set[int]]" = None,
                         score_batch_size: Optional[int] = None, timings: Optional[dict] = None,
                         **generate_kwargs: Any) -> ConfigOutputs:
        """Greedy responses of every configuration in ``configs`` (−1: unsteered) to every
        prompt of the left-padded batch ``input_ids`` [P, W], in ONE generation of
        len(configs)·P rows (row (i, p) steered by configs[i]) on one prefill of the distinct
        prompts below the first steered layer.

        With ``score``, each response's perplexity under the unsteered model comes too
        (:mod:`.scored_generation`), sharing the prompt pass; ``eos_token_ids`` end the
        scored responses (default: the model's generation config), and ``timings`` (a dict)
        accumulates the seconds of each part.
        """
        self._check_attached()
        configs = [int(c) for c in configs]
        if not configs:
            raise SteeringSpecError("generate_configs needs at least one configuration")
        if generate_kwargs.pop("do_sample", False):
            raise SteeringSpecError("generate_configs decodes greedily (do_sample=False): sampled rows "
                                    "could not be compared across configurations")
        n, prompts = len(configs), int(input_ids.shape[0])
        ids, mask = input_ids.repeat(n, 1), attention_mask.repeat(n, 1)
        self.set_rows([c for c in configs for _ in range(prompts)])
        kwargs = dict(generate_kwargs, max_new_tokens=max_new_tokens, pad_token_id=pad_token_id)
        if not score:
            out = self.generate(ids, attention_mask=mask, do_sample=False, **kwargs)
            return ConfigOutputs(out.view(n, prompts, -1))
        if eos_token_ids is None:
            eos_token_ids = generation_eos_ids(self.model)
        out, perplexities = generate_and_score(self, ids, mask, max_new_tokens=max_new_tokens,
                                               pad_token_id=pad_token_id, eos_token_ids=eos_token_ids,
                                               score_batch_size=score_batch_size, timings=timings,
                                               generate_kwargs=generate_kwargs)
        return ConfigOutputs(out.view(n, prompts, -1),
                             [perplexities[i * prompts:(i + 1) * prompts] for i in range(n)])

    def _check_attached(self) -> None:
        if not self.attached:
            raise SteeringSpecError("this steering was detached")

    def detach(self) -> None:
        """Put the original decoder layers back (idempotent)."""
        if not self._originals:
            return
        layers = decoder_layers(self.model)
        for index, original in self._originals.items():
            current = layers[index]
            if not (isinstance(current, SteeredLayer) and current.layer is original):
                raise SteeringSpecError(f"layer {index} was replaced by something else while steered; "
                                        f"not restoring over it")
            layers[index] = original
        self._originals = {}

    def __enter__(self) -> "Steering":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.detach()


def generation_eos_ids(model: nn.Module, tokenizer: Any = None) -> "set[int]":
    """The token ids that end a response: the model's generation config's, else the tokenizer's."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    if configured is None and tokenizer is not None:
        configured = tokenizer.eos_token_id
    if configured is None:
        return set()
    return {int(configured)} if isinstance(configured, int) else {int(i) for i in configured}


def attach(model: nn.Module, spec: SteeringSpec, rows: "Sequence[int] | torch.Tensor | None" = None,
           prompt_length: Optional[int] = None) -> Steering:
    """Swap the spec's layers in ``model`` for steered ones; returns the handle that detaches."""
    return Steering(model, spec, rows, prompt_length)


steer = attach  # reads better in ``with pysteer.steer(model, spec):``

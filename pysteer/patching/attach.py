"""Attach a steering spec to a loaded model by swapping its decoder layers; detach restores them.

    with pysteer.steer(model, spec) as steering:
        out = model.generate(**inputs)              # generate works unchanged

    steering = pysteer.attach(model, spec, rows=[0, 1, -1])   # per-row configurations
    ...
    steering.detach()                               # the original modules go back

Detaching puts the very same module objects back, so the model's outputs are
bit-identical to before attaching.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Optional, Sequence

import torch
from torch import nn

from ..errors import SteeringSpecError
from ..spec import SteeringSpec
from .families import decoder_layers, model_facts
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


class Steering:
    """A spec attached to a model. Use as a context manager or call :meth:`detach`."""

    def __init__(self, model: nn.Module, spec: SteeringSpec,
                 rows: "Sequence[int] | torch.Tensor | None" = None,
                 prompt_length: Optional[int] = None) -> None:
        check_spec_fits(spec, model)
        self.model, self.spec = model, spec
        self.state = SteeringState(spec.n_configs, spec.positions)
        layers = decoder_layers(model)
        by_layer: dict[int, list] = defaultdict(list)
        for iv in spec.interventions:
            by_layer[iv.layer].append(iv)
        for index in by_layer:
            if isinstance(layers[index], SteeredLayer):
                raise SteeringSpecError(f"layer {index} is already steered; detach that steering first")
        self._originals: dict[int, nn.Module] = {}
        for index, ivs in sorted(by_layer.items()):
            original = layers[index]
            param = next(original.parameters())
            compiled = [compile_intervention(iv, param.device, param.dtype) for iv in ivs]
            self._originals[index] = original
            layers[index] = SteeredLayer(original, index, compiled, self.state)
        self.device = next(model.parameters()).device
        self.set_rows(rows)
        self.set_prompt_length(prompt_length)

    @property
    def attached(self) -> bool:
        return bool(self._originals)

    def set_rows(self, rows: "Sequence[int] | torch.Tensor | None") -> None:
        """Configuration index per batch row (-1 = unsteered); ``None``: configuration 0 for all."""
        self.state.set_rows(rows, self.device)

    def set_prompt_length(self, prompt_length: Optional[int]) -> None:
        """Padded prompt length: positions below it are 'prompt', the rest 'generated'."""
        self.state.set_prompt_length(prompt_length)

    def generate(self, input_ids: torch.Tensor, rows: "Sequence[int] | torch.Tensor | None" = None,
                 share_prefill: bool = True, **generate_kwargs: Any) -> torch.Tensor:
        """``model.generate`` with the prompt length (and optionally the rows) set from the inputs.

        When the batch repeats prompts (e.g. one copy per tuner candidate, each with its
        own row) and ``share_prefill``, the layers below the first steered one process
        each distinct prompt once (:mod:`.shared_prefill`); the output is the same.
        """
        if not self.attached:
            raise SteeringSpecError("this steering was detached")
        if rows is not None:
            self.set_rows(rows)
        self.set_prompt_length(int(input_ids.shape[1]))
        if share_prefill and can_share_prefill(input_ids, generate_kwargs.get("attention_mask"), generate_kwargs):
            kwargs = dict(generate_kwargs)
            out = generate_with_shared_prefill(self, input_ids, kwargs.pop("attention_mask"), **kwargs)
            if out is not None:
                return out
        return self.model.generate(input_ids=input_ids, **generate_kwargs)

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


def attach(model: nn.Module, spec: SteeringSpec, rows: "Sequence[int] | torch.Tensor | None" = None,
           prompt_length: Optional[int] = None) -> Steering:
    """Swap the spec's layers in ``model`` for steered ones; returns the handle that detaches."""
    return Steering(model, spec, rows, prompt_length)


steer = attach  # reads better in ``with pysteer.steer(model, spec):``

"""The usual ways to steer a Hugging Face model, as peers for pysteer's benchmarks.

Both attach a forward hook to one decoder layer on construction and remove it on
``detach()`` / context exit — the same shape as ``pysteer.steer``:

    with DenseHookSteering(model, layer, vector):
        model.generate(...)

- :class:`DenseHookSteering` — the steering-vectors / repeng way: ``h' = h + v``.
- :class:`FullSAEEditing` — the sae-lens way (``use_error_term=True``): run the whole
  SAE on the layer output, edit the selected features, decode, add back the error:

      f  = encode(h)                       all d_sae features   [..., F]
      f' = f, with f'_i = edit(f_i, c_i)   for i ∈ S
      h' = decode(f') + (h − decode(f))

  which equals pysteer's sparse edit exactly (tests/test_bench_baselines.py), at the
  cost of a tokens × d_sae encode and two tokens × d_sae decodes.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from pysteer import SAE, FeatureEdit, load_sae
from pysteer.patching import decoder_layers


def _map_hidden(output: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """Apply ``fn`` to a decoder layer's hidden states (a tensor, or a tuple's first item)."""
    if isinstance(output, tuple):
        return (fn(output[0]),) + tuple(output[1:])
    return fn(output)


class _LayerHook:
    """A forward hook on decoder layer ``layer`` that maps its hidden states; detachable."""

    def __init__(self, model: nn.Module, layer: int) -> None:
        module = decoder_layers(model)[layer]
        self.param = next(module.parameters())
        self._handle = module.register_forward_hook(
            lambda _module, _args, output: _map_hidden(output, self.edit))

    def edit(self, hidden: Tensor) -> Tensor:
        raise NotImplementedError

    @property
    def attached(self) -> bool:
        return self._handle is not None

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.detach()


class DenseHookSteering(_LayerHook):
    """``h' = h + vector`` at every position of decoder layer ``layer``; ``vector`` [D]."""

    def __init__(self, model: nn.Module, layer: int, vector: Tensor) -> None:
        super().__init__(model, layer)
        self.vector = vector.detach().to(device=self.param.device, dtype=self.param.dtype)

    def edit(self, hidden: Tensor) -> Tensor:
        return hidden + self.vector


class FullSAEEditing(_LayerHook):
    """Edit ``features`` [S] of ``sae`` by running the whole SAE on the layer output.

    ``edits``: one of add / set / scale / ablate per feature (or one for all);
    ``coefficients`` [S] (one configuration). Encoding goes through
    :meth:`pysteer.SAE.encode`, so standard, JumpReLU and TopK SAEs all work. The clean
    encode is shared by the edit and the error term (sae-lens runs it twice), which
    makes this baseline slightly kinder than sae-lens itself.
    """

    def __init__(self, model: nn.Module, layer: int, sae: Any, features: Sequence[int],
                 edits: "str | Sequence[str]", coefficients: Any) -> None:
        super().__init__(model, layer)
        sae = load_sae(sae)
        self.sae: SAE = sae.to(device=self.param.device, dtype=sae.dtype)
        self.features = sae.check_features(features).to(self.param.device)
        width = self.features.numel()
        if isinstance(edits, str):
            edits = [edits] * width
        modes = [int(FeatureEdit.parse(e)) for e in edits]
        coefficients = torch.as_tensor(coefficients, dtype=torch.float32).reshape(-1)
        if len(modes) != width or coefficients.numel() != width:
            raise ValueError(f"{width} features need {width} edits and coefficients, got "
                             f"{len(modes)} and {coefficients.numel()}")
        self.modes = torch.tensor(modes, device=self.param.device)
        self.coefficients = coefficients.to(device=self.param.device, dtype=self.sae.dtype)

    def edit_features(self, acts: Tensor) -> Tensor:
        """``acts`` [..., F] with the selected columns edited (a new tensor)."""
        f, c = acts[..., self.features], self.coefficients.expand(*acts.shape[:-1], -1)
        m = self.modes
        new = torch.where(m == FeatureEdit.ADD, f + c,
              torch.where(m == FeatureEdit.SET, c,
              torch.where(m == FeatureEdit.SCALE, f * c, torch.zeros_like(f))))
        edited = acts.clone()
        edited[..., self.features] = new
        return edited

    def edit(self, hidden: Tensor) -> Tensor:
        x = hidden.to(self.sae.dtype)
        acts = self.sae.encode(x)
        error = x - self.sae.decode(acts)
        return (self.sae.decode(self.edit_features(acts)) + error).to(hidden.dtype)

"""Reading the residual stream after chosen decoder layers (for discovery and SAE training).

This is collection, not steering: a temporary forward hook per layer is the simple
tool here, and the forward pass stops after the deepest layer needed, so the layers
above it (and the LM head) cost nothing. Hooks are removed even when the pass is cut.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .families import decoder_layers, layer_hidden


class StopForward(Exception):
    """Raised by a forward hook on the deepest layer a pass needs: the rest is skipped."""


@torch.no_grad()
def residuals_after(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """``{layer: hidden states [B, L, D]}`` output by each decoder layer in ``layers``."""
    blocks = decoder_layers(model)
    for index in layers:
        if not -len(blocks) <= index < len(blocks):
            raise IndexError(f"layer {index} is out of range: the model has {len(blocks)} decoder layers")
    wanted = sorted({index % len(blocks) for index in layers})
    store: dict[int, torch.Tensor] = {}

    def make(index: int):
        def hook(module, args, output):
            store[index] = layer_hidden(output)
            if index == wanted[-1]:
                raise StopForward
        return hook

    handles = [blocks[index].register_forward_hook(make(index)) for index in wanted]
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return {index: store[index % len(blocks)] for index in layers}

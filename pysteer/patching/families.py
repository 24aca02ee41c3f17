"""Where each Hugging Face model family keeps its decoder layers: one table, no per-family code.

Every family listed wraps the residual stream the same way — a ``ModuleList`` of
decoder layers whose output (a tensor, or a tuple whose first item is the tensor) is
the residual stream after that layer, which is what SAEs on ``hook_resid_post``
read. Adding a family is adding a row.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import UnsupportedModelError

# config.model_type -> attribute path from the *ForCausalLM model to its decoder layers
DECODER_LAYERS: dict[str, str] = {
    "llama": "model.layers",
    "mistral": "model.layers",
    "qwen2": "model.layers",
    "qwen3": "model.layers",
    "gemma2": "model.layers",
    "gemma3_text": "model.layers",
    "gemma3": "model.language_model.layers",  # Gemma3ForConditionalGeneration: the text tower
    "phi3": "model.layers",
    "gpt2": "transformer.h",
}


def _model_type(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise UnsupportedModelError(f"{type(model).__name__} has no config.model_type; pysteer "
                                    f"steers Hugging Face causal LMs")
    return model_type


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's decoder layers, found through :data:`DECODER_LAYERS`."""
    model_type = _model_type(model)
    if model_type not in DECODER_LAYERS:
        raise UnsupportedModelError(f"model_type {model_type!r} is not supported; supported "
                                    f"families: {', '.join(sorted(DECODER_LAYERS))}")
    node: Any = model
    for attr in DECODER_LAYERS[model_type].split("."):
        node = getattr(node, attr, None)
        if node is None:
            raise UnsupportedModelError(f"{type(model).__name__} ({model_type}) has no "
                                        f"{DECODER_LAYERS[model_type]}; is it a *ForCausalLM model?")
    if not isinstance(node, nn.ModuleList):
        raise UnsupportedModelError(f"{DECODER_LAYERS[model_type]} of {type(model).__name__} is "
                                    f"not a ModuleList")
    return node


def model_facts(model: nn.Module) -> dict[str, Any]:
    """hidden_size, num_hidden_layers, model_type and name of a loaded model."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(text, "hidden_size", None) or getattr(text, "n_embd", None)
    return {"model_type": _model_type(model), "hidden_size": int(hidden),
            "num_hidden_layers": len(decoder_layers(model)),
            "name": getattr(config, "name_or_path", "") or ""}


def layer_hidden(output: Any) -> Any:
    """The residual stream in a decoder layer's output (a tensor, or a tuple led by one)."""
    return output[0] if isinstance(output, tuple) else output

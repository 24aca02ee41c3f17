"""sae-lens: the SAE edit with the error term, edited on ``hook_sae_acts_post``, three ways.

    f = encode(h);  f'_S = f_S + a;  h' = decode(f') + (h − decode(f))   (use_error_term=True)

- :class:`SaeLensHookPeer` — the sae-lens SAE module itself in a forward hook on the HF
  decoder layer (``h' = sae(h)``), no transformer_lens.
- :class:`SaeLensBridgePeer` — ``SAETransformerBridge.boot_transformers(dir, hf_model=…)``
  (transformer_lens 3's bridge around the HF model; it forces eager attention) with
  ``saes(...)`` + ``hooks(...)``, generating through the bridge.
- :class:`HookedSAETransformerPeer` — ``HookedSAETransformer``: ``from_pretrained`` refuses
  SmolLM2 (not in transformer_lens's official model list), so it is built from
  transformer_lens's own pieces: ``convert_hf_model_config(dir)`` of the HF config,
  ``get_pretrained_state_dict(dir, cfg, hf_model)``, ``load_and_process_state_dict`` (no
  folding/centering, so logits stay comparable). Generation is transformer_lens's.

The wrappers run on copies of the model, so the other rows stay plain HF.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
import warnings
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor

from pysteer.patching import decoder_layers

from .base import Peer, Runner, hf_runner, import_reason

PER_ROW_NOTE = "per-row configurations: the acts hook indexes a [B, 1, S] coefficient table (user code)"


def edit_hook(material, rows: Optional[Tensor]) -> Callable:
    """The ``add`` edit on ``hook_sae_acts_post``: acts [B, T, F] → acts with acts[..., S] += a."""
    features = torch.tensor(material.features, device=material.device)
    amounts = material.sae_coefficients(rows)

    def hook(acts: Tensor, hook=None) -> Tensor:
        acts[..., features] = acts[..., features] + amounts.to(acts.dtype)
        return acts

    return hook


def _config_dir(model) -> str:
    # transformer_lens reads the HF config from a directory; a name containing "llama" or
    # "gemma" sends it down a name-based branch with no config, so the name avoids both.
    path = tempfile.mkdtemp(prefix="peer-hf-config-")
    config = copy.deepcopy(model.config)
    if not config.architectures:
        config.architectures = [type(model).__name__]
    config.save_pretrained(path)
    return path


def _tl_runner(tl, kv_cache: bool = True) -> Runner:
    def generate(ids: Tensor, n: int) -> Tensor:
        out = tl.generate(ids, max_new_tokens=n, stop_at_eos=False, do_sample=False, use_past_kv_cache=kv_cache,
                          verbose=False, return_type="tokens")
        return out[:, ids.shape[1]:]

    return Runner(generate, lambda ids: tl(ids))


class SaeLensHookPeer(Peer):
    name = "sae-lens (HF hook)"
    dist = "sae-lens"
    edit = "sae"
    note = PER_ROW_NOTE

    @classmethod
    def missing(cls) -> Optional[str]:
        return import_reason("sae_lens", cls.dist)

    @contextlib.contextmanager
    def steered(self, rows: Optional[Tensor] = None) -> Iterator[Runner]:
        m = self.material
        sae = m.sae_lens
        sae.hook_sae_acts_post.add_hook(edit_hook(m, rows))

        def forward_hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            new = sae(hidden.to(sae.dtype)).to(hidden.dtype)
            return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

        handle = decoder_layers(m.model)[m.layer].register_forward_hook(forward_hook)
        try:
            yield hf_runner(m.model)
        finally:
            handle.remove()
            sae.reset_hooks()


class SaeLensBridgePeer(SaeLensHookPeer):
    name = "sae-lens (SAETransformerBridge)"
    # transformer_lens 3.9's bridge.generate with use_past_kv_cache=True gives other greedy tokens
    # than the HF model even unsteered (transformers 5.24); without the cache it matches, so the
    # timed row recomputes the whole prefix at every step. SaeLensBridgeCachedPeer checks the other.
    kv_cache = False
    max_timed_batch = 1  # without a cache every step re-runs the prefix: batch 1 shows that cost
    note = ("transformer_lens bridge around a copy of the HF model (eager attention), generate without "
            "KV cache (with it, SmolLM2 and the tests' tiny Llama get other greedy tokens than HF even "
            "unsteered: see the KV-cache row); " + PER_ROW_NOTE)

    @classmethod
    def missing(cls) -> Optional[str]:
        try:
            from sae_lens.analysis.sae_transformer_bridge import SAETransformerBridge  # noqa: F401
        except ImportError as exc:  # it needs transformer-lens >= 3
            return import_reason("sae_lens", cls.dist) or f"no SAETransformerBridge: {exc}"
        return None

    def __init__(self, material) -> None:
        super().__init__(material)
        from sae_lens import SAETransformerBridge

        model = material.model
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.tl = SAETransformerBridge.boot_transformers(
                _config_dir(model), hf_model=copy.deepcopy(model), tokenizer=material.tokenizer,
                device=material.device, dtype=material.dtype)
        self.hook_name = self.tl.get_sae_hook_name(material.sae_lens)

    @contextlib.contextmanager
    def steered(self, rows: Optional[Tensor] = None) -> Iterator[Runner]:
        with self.tl.saes(saes=[self.material.sae_lens], use_error_term=True):
            with self.tl.hooks(fwd_hooks=[(self.hook_name, edit_hook(self.material, rows))]):
                yield _tl_runner(self.tl, self.kv_cache)

    def unsteered(self):
        return contextlib.nullcontext(_tl_runner(self.tl, self.kv_cache))


class SaeLensBridgeCachedPeer(SaeLensBridgePeer):
    """The bridge with its KV cache: checked (and expected to fail), never timed."""

    name = "sae-lens (SAETransformerBridge, KV cache)"
    kv_cache = True
    check_only = True
    note = "bridge.generate(use_past_kv_cache=True): checked, never timed"


class HookedSAETransformerPeer(SaeLensBridgePeer):
    name = "sae-lens (HookedSAETransformer)"
    kv_cache = True
    max_timed_batch = None
    note = ("HookedSAETransformer.from_pretrained refuses a model outside transformer_lens's official list; "
            "built from its config/state-dict converters instead; " + PER_ROW_NOTE)

    @classmethod
    def missing(cls) -> Optional[str]:
        return import_reason("sae_lens", cls.dist)

    def __init__(self, material) -> None:
        Peer.__init__(self, material)
        from sae_lens import HookedSAETransformer
        from transformer_lens import HookedTransformerConfig
        from transformer_lens import loading_from_pretrained as loading

        model = material.model
        directory = _config_dir(model)
        cfg_dict = loading.convert_hf_model_config(directory)
        cfg_dict.update(device=str(material.device), dtype=material.dtype)
        cfg = HookedTransformerConfig(**cfg_dict)
        state = loading.get_pretrained_state_dict(directory, cfg, model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.tl = HookedSAETransformer(cfg, tokenizer=material.tokenizer, move_to_device=False)
            self.tl.load_and_process_state_dict(state, fold_ln=False, center_writing_weights=False,
                                                center_unembed=False)
        self.tl.to(material.device).eval()
        self.hook_name = f"{material.sae_lens.cfg.metadata.hook_name}.hook_sae_acts_post"

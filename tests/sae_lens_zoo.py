"""Random sae-lens SAEs and the feature edit written out by hand: the oracle side of tests."""

from __future__ import annotations

import warnings

import torch

import sae_lens

SAE_LENS_CLASSES = {
    "standard": (sae_lens.StandardSAEConfig, sae_lens.StandardSAE),
    "jumprelu": (sae_lens.JumpReLUSAEConfig, sae_lens.JumpReLUSAE),
    "topk": (sae_lens.TopKSAEConfig, sae_lens.TopKSAE),
}


def random_sae_lens(architecture: str, d_in: int, d_sae: int, seed: int = 0, weight_std: float = 0.3,
                    **cfg_extra):
    """A sae-lens SAE with random weights, ``use_error_term=True``."""
    torch.manual_seed(seed)
    cfg_cls, sae_cls = SAE_LENS_CLASSES[architecture]
    cfg = cfg_cls(d_in=d_in, d_sae=d_sae, dtype="float32", device="cpu", **cfg_extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sae = sae_cls(cfg, use_error_term=True)
    with torch.no_grad():
        sae.W_enc.normal_(0, weight_std)
        sae.W_dec.normal_(0, weight_std)
        sae.b_enc.normal_(0, 0.2)
        sae.b_dec.normal_(0, 0.2)
        if architecture == "jumprelu":
            sae.threshold.uniform_(0.0, 0.4)
    return sae


def edit_by_hand(acts: torch.Tensor, features, edits, coeffs) -> torch.Tensor:
    """The paper's edit on a dense activation tensor: add, set, scale or ablate each feature."""
    edited = acts.clone()
    for column, (feature, edit) in enumerate(zip(features, edits)):
        f, c = acts[..., feature], torch.as_tensor(coeffs[column], dtype=acts.dtype)
        edited[..., feature] = {"add": f + c, "set": c.expand_as(f), "scale": f * c,
                                "ablate": torch.zeros_like(f)}[edit]
    return edited

"""What every peer adapter shares: the steering material, the runner, the peer interface.

A peer steers one decoder layer's output ``h`` [B, T, D] of a Hugging Face model the
way its library does, with what :class:`Material` holds:

    dense   h' = h + s_c · v                 v [D], strengths s [C]   (config c = rows[b])
    sae     f = encode(h);  f'_i = f_i + a_{c,i} for i ∈ S;
            h' = decode(f') + (h − decode(f))  (sae-lens ``use_error_term=True``)
                                              a [C, S]                  (config c = rows[b])

Config 0 is the single configuration; ``rows`` [B] (one config per batch row) is the
multi-configuration case. A peer yields a :class:`Runner` (greedy ``generate`` of n new
tokens, and prompt ``logits``) from ``steered(rows)``; ``unsteered()`` is its own
baseline where it wraps the model (nnsight, transformer_lens), else None.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Optional

import torch
from torch import Tensor, nn


def package_version(dist: str) -> Optional[str]:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass
class Runner:
    """``generate(ids [B, T], n) -> new tokens [B, n]`` (greedy, exactly n); ``logits(ids) -> [B, T, V]``."""

    generate: Callable[[Tensor, int], Tensor]
    logits: Callable[[Tensor], Tensor]


def hf_runner(model: nn.Module) -> Runner:
    """Plain Hugging Face ``generate`` / forward on unpadded prompts (what most peers steer)."""

    def generate(ids: Tensor, n: int) -> Tensor:
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=0, disable_compile=True)
        return out[:, ids.shape[1]:]

    return Runner(generate, lambda ids: model(ids).logits)


@dataclass
class Material:
    """The same steering for every peer.

    ``vector`` [D] and ``strengths`` [C] (dense); ``sae_lens`` a sae-lens SAE hooked at
    ``blocks.{layer}.hook_resid_post`` with ``sae`` its pysteer copy, ``features`` [S],
    ``coefficients`` [C, S] (sae, ``add``). ``tokenizer``: wrappers (nnsight,
    transformer_lens) insist on one, though every prompt here is token ids.
    """

    model: nn.Module
    layer: int
    vector: Tensor
    strengths: Tensor
    sae_lens: Any
    sae: Any
    features: list[int]
    coefficients: Tensor
    tokenizer: Any

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def dense_delta(self, rows: Optional[Tensor], batch: int) -> Tensor:
        """What the dense edit adds: [D] for one configuration, [B, 1, D] per row."""
        v = self.vector.to(self.device, self.dtype)
        if rows is None:
            return v * self.strengths[0].item()
        return (self.strengths.to(v)[rows.to(self.device)][:, None] * v)[:, None, :]

    def sae_coefficients(self, rows: Optional[Tensor]) -> Tensor:
        """The ``add`` amounts on the features: [S] for one configuration, [B, 1, S] per row."""
        a = self.coefficients.to(self.device)
        return a[0] if rows is None else a[rows.to(self.device)][:, None, :]


class Peer:
    """One library's way to steer. Subclasses set the class fields and ``steered``."""

    name: ClassVar[str]
    dist: ClassVar[Optional[str]] = None  # the PyPI distribution whose version the row records
    edit: ClassVar[str] = "dense"  # "dense" | "sae": which pysteer row it must equal
    multi_config: ClassVar[Optional[str]] = None  # None: per-row configs work; else why not
    note: ClassVar[Optional[str]] = None  # how it was installed / run, said in every row
    check_only: ClassVar[bool] = False  # a variant that is checked and reported, not timed
    max_timed_batch: ClassVar[Optional[int]] = None  # checked at every batch, timed only up to this
    reference: ClassVar[bool] = False  # pysteer itself: the others are checked against it

    @classmethod
    def missing(cls) -> Optional[str]:
        """Why this peer cannot run here (not installed, does not import), or None."""
        return None

    def __init__(self, material: Material) -> None:
        self.material = material

    def steered(self, rows: Optional[Tensor] = None) -> "contextlib.AbstractContextManager[Runner]":
        raise NotImplementedError

    def unsteered(self) -> "Optional[contextlib.AbstractContextManager[Runner]]":
        """The peer's own unsteered run, when it wraps the model (else None: plain HF is its baseline)."""
        return None

    def close(self) -> None:
        """Undo whatever the peer did to the model."""


def import_reason(module: str, dist: str, install: Optional[str] = None) -> Optional[str]:
    """None if ``module`` imports; else why (not installed, with ``install``, the command that
    installs it, or the import error)."""
    try:
        __import__(module)
    except ImportError as exc:
        if package_version(dist) is None:
            return f"{dist} is not installed ({install or 'pip install ' + dist})"
        return f"{dist} {package_version(dist)} is installed but does not import: {type(exc).__name__}: {exc}"
    except Exception as exc:  # e.g. an AttributeError from a numpy-2 incompatibility
        return f"{dist} {package_version(dist)} does not import: {type(exc).__name__}: {exc}"
    return None


@contextlib.contextmanager
def nullrunner(runner: Runner) -> Iterator[Runner]:
    yield runner


def word_tokenizer(vocab_size: int):
    """An offline word-level tokenizer ``t0 … t{V-1}`` (pad t0, bos t1, eos t2) for random models."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t3"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="t0", bos_token="t1",
                                        eos_token="t2", unk_token="t3")
    # Saved and reloaded: transformer_lens re-creates tokenizers from their ``name_or_path``.
    import tempfile

    from transformers import AutoTokenizer

    path = tempfile.mkdtemp(prefix="peer-tokenizer-")
    tokenizer.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def random_sae_lens(d_in: int, d_sae: int, layer: int, seed: int = 0, device: "torch.device | str" = "cpu"):
    """A sae-lens JumpReLU SAE with random weights (unit decoder rows), ``use_error_term=True``,
    hooked at ``blocks.{layer}.hook_resid_post`` (the output of decoder layer ``layer``)."""
    import warnings

    import sae_lens

    gen = torch.Generator().manual_seed(seed)
    cfg = sae_lens.JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, dtype="float32", device="cpu")
    cfg.metadata.hook_name = f"blocks.{layer}.hook_resid_post"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sae = sae_lens.JumpReLUSAE(cfg, use_error_term=True)
    w_dec = torch.randn(d_sae, d_in, generator=gen)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    with torch.no_grad():
        sae.W_dec.copy_(w_dec)
        sae.W_enc.copy_(w_dec.T)
        sae.b_enc.copy_(0.1 * torch.randn(d_sae, generator=gen))
        sae.b_dec.zero_()
        sae.threshold.copy_(0.5 * torch.rand(d_sae, generator=gen))
    return sae.to(device)


def make_material(model: nn.Module, layer: int, vector: Tensor, tokenizer: Any, *, d_sae: int,
                  n_features: int = 30, n_configs: int = 8, seed: int = 0) -> Material:
    """The steering every peer gets: ``vector`` at strengths s (s_0 = 1), and a random JumpReLU
    sae-lens SAE of width ``d_sae`` with ``n_features`` features added to (half with positive,
    half with negative amounts in ±[2, 8], as bench_e2e does), ``n_configs`` configurations."""
    import pysteer

    param = next(model.parameters())
    gen = torch.Generator().manual_seed(seed)
    sae_lens = random_sae_lens(vector.numel(), d_sae, layer, seed=seed)
    sae_lens = sae_lens.to(device=param.device, dtype=param.dtype)
    features = torch.randperm(d_sae, generator=gen)[:n_features].tolist()
    signs = torch.tensor([1.0] * (n_features // 2) + [-1.0] * (n_features - n_features // 2))
    coefficients = signs * (2.0 + 6.0 * torch.rand(n_configs, n_features, generator=gen))
    strengths = torch.cat([torch.ones(1), torch.linspace(0.25, 2.0, n_configs)[:n_configs - 1]])
    return Material(model, layer, vector.detach().float(), strengths, sae_lens, pysteer.load_sae(sae_lens),
                    features, coefficients, tokenizer)

"""Sparse autoencoders: one in-memory form, three ways in, one way out.

Ways in: a sae-lens directory (``cfg.json`` + ``sae_weights.safetensors``), an
EleutherAI sparsify directory (``cfg.json`` + ``sae.safetensors``), or a live
``sae_lens.SAE`` object. Way out: the sae-lens directory format, so sae-lens loads
what pysteer saves.

Everything that changes the math but is constant per feature is folded into the
weights at load time (old sae-lens ``scaling_factor``, TopK
``rescale_acts_by_decoder_norm`` for the decode side), so the steering kernels only
ever see ``pre = W_enc·(h − offset) + b_enc``, an activation, and decoder rows.
Per-token normalisations (``layer_norm``, ``constant_norm_rescale``) cannot be
folded and are refused with a clear error rather than steered inexactly.

What differs between architectures (ReLU "standard", "jumprelu", "topk") is asked of an
:class:`Architecture` strategy (``sae.arch``), never tested as a name string.
"""

from __future__ import annotations

import json
import math
import operator
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from .errors import SAEFormatError
from .fileio import read_json_object, save_tensors, staged_directory

SAE_LENS_CFG = "cfg.json"
SAE_LENS_WEIGHTS = "sae_weights.safetensors"
SAE_FILES = (SAE_LENS_CFG, SAE_LENS_WEIGHTS)  # what SAE.save writes, and so may overwrite
SPARSIFY_WEIGHTS = "sae.safetensors"

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "torch.float32": torch.float32, "torch.float16": torch.float16,
           "torch.bfloat16": torch.bfloat16, "float64": torch.float64}


def dtype_from_name(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of float32, float16, bfloat16")
    return _DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# -------------------------------------------------------------------- architectures
class Architecture:
    """What one SAE architecture does differently; callers ask it instead of testing names.

    ``name`` is the sae-lens ``architecture`` string. ``needs_full_encode``: a feature's
    activation depends on all d_sae pre-activations (TopK's competition), so editing or
    measuring any feature needs the full encode; otherwise f_i depends on pre_i alone
    and the features can be computed in independent blocks.
    """

    name: str = ""
    needs_full_encode: bool = False

    def __repr__(self) -> str:
        return f"<SAE architecture {self.name!r}>"

    def check(self, sae: "SAE", where: str) -> None:
        """Raise :class:`SAEFormatError` if ``sae`` lacks what this architecture needs."""

    def activate(self, pre: Tensor, sae: "SAE") -> Tensor:
        """Activations f [..., F] from pre-activations ``pre`` [..., F] (a new tensor)."""
        raise NotImplementedError

    def feature_blocks(self, sae: "SAE", x: Tensor, feature_chunk: int) -> Iterator[tuple[int, int, Tensor]]:
        """(f0, f1, acts [t, f1 − f0] fp32) for the inputs ``x`` [t, D]: every feature, in blocks
        of about ``feature_chunk``, without forming the [t, d_sae] pre-activations at once."""
        raise NotImplementedError

    def block_tokens(self, sae: "SAE", token_chunk: int, feature_chunk: int) -> int:
        """Tokens per :meth:`feature_blocks` call that keep its working set near
        ``token_chunk × feature_chunk`` values."""
        return token_chunk

    def feature_thresholds(self, sae: "SAE", index: Tensor) -> Tensor:
        """θ [S] fp32 of the features ``index``: the sparse kernel computes relu(pre)·(pre > θ)."""
        return torch.zeros(index.numel())

    def read_sae_lens(self, cfg: dict, state: dict[str, Tensor], w_dec: Tensor,
                      cfg_where: str, weights_where: str) -> tuple[dict[str, Any], Tensor]:
        """(the :class:`SAE` fields this architecture reads from a sae-lens config and
        state, the decoder to use)."""
        return {}, w_dec

    def sae_lens_cfg(self, sae: "SAE") -> dict[str, Any]:
        """The ``cfg.json`` keys this architecture adds when saving."""
        return {}

    def random_fields(self, d_sae: int, generator: torch.Generator, k: Optional[int]) -> dict[str, Any]:
        """The extra :class:`SAE` fields of a random SAE (see :func:`random_sae`)."""
        return {}


class _FeatureLocal(Architecture):
    """f_i depends on pre_i alone, so features are computed block by block, exactly."""

    def activate_(self, pre: Tensor, sae: "SAE", features: slice) -> Tensor:
        """``pre`` [..., f1 − f0] of the features ``features`` turned into activations, in place."""
        raise NotImplementedError

    def activate(self, pre: Tensor, sae: "SAE") -> Tensor:
        return self.activate_(pre.clone(), sae, slice(None))

    def feature_blocks(self, sae: "SAE", x: Tensor, feature_chunk: int) -> Iterator[tuple[int, int, Tensor]]:
        centred = x.to(sae.dtype) - sae.input_offset
        for f0 in range(0, sae.d_sae, feature_chunk):
            f1 = min(sae.d_sae, f0 + feature_chunk)
            pre = torch.addmm(sae.b_enc[f0:f1], centred, sae.W_enc[:, f0:f1]).float()
            # In place: the block is the working set, so no second copy of it is made.
            yield f0, f1, self.activate_(pre, sae, slice(f0, f1))


class ReLU(_FeatureLocal):
    """sae-lens "standard": f = relu(pre)."""

    name = "standard"

    def activate_(self, pre: Tensor, sae: "SAE", features: slice) -> Tensor:
        return pre.relu_()


class JumpReLU(_FeatureLocal):
    """f = relu(pre)·(pre > threshold), with a per-feature ``threshold`` [F] kept in fp32."""

    name = "jumprelu"

    def check(self, sae: "SAE", where: str) -> None:
        if sae.threshold is None:
            raise SAEFormatError(f"{where}: a jumprelu SAE needs a 'threshold' tensor")

    def activate_(self, pre: Tensor, sae: "SAE", features: slice) -> Tensor:
        below = pre <= sae.threshold[features]
        return pre.relu_().masked_fill_(below, 0.0)

    def feature_thresholds(self, sae: "SAE", index: Tensor) -> Tensor:
        return sae.threshold[index].float()

    def read_sae_lens(self, cfg, state, w_dec, cfg_where, weights_where):
        if "threshold" in state:
            threshold = state["threshold"].float()
        elif "log_threshold" in state:
            threshold = state["log_threshold"].float().exp()
        else:
            raise SAEFormatError(f"{weights_where}: missing tensor 'threshold' (jumprelu SAE)")
        return {"threshold": threshold}, w_dec

    def random_fields(self, d_sae, generator, k):
        return {"threshold": 0.2 * torch.rand(d_sae, generator=generator)}


class TopK(Architecture):
    """f = relu(topk_k(pre·feature_scale)): the k largest (scaled) pre-activations compete,
    so one feature's activation depends on every other's."""

    name = "topk"
    needs_full_encode = True

    def check(self, sae: "SAE", where: str) -> None:
        if sae.k is None or not (0 < int(sae.k) <= sae.d_sae):
            raise SAEFormatError(f"{where}: a topk SAE needs 0 < k <= d_sae ({sae.d_sae}), got k={sae.k}")

    def activate(self, pre: Tensor, sae: "SAE") -> Tensor:
        scaled = pre * sae.feature_scale if sae.feature_scale is not None else pre
        values, indices = scaled.topk(int(sae.k), dim=-1)
        return torch.zeros_like(scaled).scatter_(-1, indices, values.relu())

    def feature_blocks(self, sae: "SAE", x: Tensor, feature_chunk: int) -> Iterator[tuple[int, int, Tensor]]:
        """One block of all d_sae features, through the fused encode + top-k op."""
        from .ops import encode_topk  # the kernels import nothing of this module; loaded when used
        scale = None if sae.feature_scale is None else sae.feature_scale.float().contiguous()
        values, indices = encode_topk(x.to(sae.dtype).contiguous(), sae.W_enc.contiguous(),
                                      sae.b_enc.contiguous(), sae.input_offset.contiguous(), scale,
                                      int(sae.k))
        # values are already pre·scale, as activate selects
        acts = torch.zeros(x.shape[0], sae.d_sae, device=x.device)
        yield 0, sae.d_sae, acts.scatter_(1, indices, values.relu_())

    def block_tokens(self, sae: "SAE", token_chunk: int, feature_chunk: int) -> int:
        # the one block is [t, d_sae] (and the reference encode forms the pre-activations too)
        return max(1, min(token_chunk, token_chunk * feature_chunk // sae.d_sae))

    def read_sae_lens(self, cfg, state, w_dec, cfg_where, weights_where):
        k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
        if k is None:
            raise SAEFormatError(f"{cfg_where}: missing key 'k' (topk SAE)")
        feature_scale = None
        if cfg.get("rescale_acts_by_decoder_norm", False):
            feature_scale = w_dec.norm(dim=-1)
            w_dec = w_dec / feature_scale[:, None]
        return {"k": k, "feature_scale": feature_scale}, w_dec

    def sae_lens_cfg(self, sae: "SAE") -> dict[str, Any]:
        return {"k": int(sae.k), "rescale_acts_by_decoder_norm": sae.feature_scale is not None}

    def random_fields(self, d_sae, generator, k):
        return {"k": max(1, d_sae // 8) if k is None else k}


ARCHITECTURES: dict[str, Architecture] = {arch.name: arch for arch in (ReLU(), JumpReLU(), TopK())}


def architecture_named(name: Any, where: Optional[str] = None) -> Architecture:
    """The :class:`Architecture` called ``name``; else :class:`SAEFormatError`, prefixed by ``where``."""
    if isinstance(name, str) and name in ARCHITECTURES:
        return ARCHITECTURES[name]
    prefix = f"{where}: " if where else ""
    raise SAEFormatError(f"{prefix}architecture {name!r} is not supported; expected one of "
                         f"{', '.join(ARCHITECTURES)}")


# ------------------------------------------------------------------ feature indices
def integer_index(value: Any, what: str) -> int:
    """``value`` as an int (a Python or NumPy integer, a one-element integer tensor);
    a bool, a float (even 3.0) or a string is a ValueError naming ``what`` and the value."""
    # bool is an int to Python and to operator.index, but True is no feature index
    is_bool = isinstance(value, bool) or (isinstance(value, Tensor) and value.dtype == torch.bool)
    try:
        if not is_bool:
            return operator.index(value)
    except TypeError:
        pass
    shown = value.tolist() if isinstance(value, Tensor) and value.numel() == 1 else value
    raise ValueError(f"{what} is {shown!r} ({type(value).__name__}): it must be an integer index")


def feature_indices(features: Any) -> list[int]:
    """``features`` (a sequence or 1-D tensor of integer indices) as a list of ints;
    ValueError naming the first entry that is not an integer."""
    if isinstance(features, Tensor):
        if features.ndim > 1:
            raise ValueError(f"features must be 1-D, got a tensor of shape {tuple(features.shape)}")
        features = features.reshape(-1)
    elif isinstance(features, (str, bytes)) or not hasattr(features, "__iter__"):
        raise ValueError(f"features must be a sequence of integer indices, got {features!r}")
    return [integer_index(entry, f"features[{n}]") for n, entry in enumerate(features)]


@dataclass(repr=False)
class SAE:
    """A residual-stream SAE in sae-lens orientation.

    W_enc [D, F], b_enc [F], W_dec [F, D], b_dec [D]; ``threshold`` [F] for JumpReLU;
    ``k`` for TopK; ``feature_scale`` [F] multiplies TopK pre-activations before the
    selection (sae-lens ``rescale_acts_by_decoder_norm``), with ``W_dec`` already
    divided by the same norms so that decode needs no scale.

        pre = (x − b_dec·apply_b_dec_to_input) @ W_enc + b_enc
        f   = relu(pre)                       standard
              relu(pre)·(pre > threshold)     jumprelu
              relu(topk_k(pre·feature_scale)) topk
        x̂   = f @ W_dec + b_dec

    ``architecture`` is the sae-lens name; :attr:`arch` is its :class:`Architecture`.
    """

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    architecture: str = "standard"
    threshold: Optional[torch.Tensor] = None
    k: Optional[int] = None
    feature_scale: Optional[torch.Tensor] = None
    apply_b_dec_to_input: bool = True
    hook_name: Optional[str] = None
    model_name: Optional[str] = None
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"

    def __post_init__(self) -> None:
        self.validate()

    def __repr__(self) -> str:
        arch = f"{self.architecture} k={self.k}" if self.k is not None else self.architecture
        facts = [arch, f"d_in={self.d_in}", f"d_sae={self.d_sae}", str(self.dtype).removeprefix("torch."),
                 str(self.device)]
        if self.hook_name:
            facts.append(f"hook={self.hook_name!r}")
        if self.model_name:
            facts.append(f"model={self.model_name!r}")
        if self.source != "<memory>":
            facts.append(f"source={self.source!r}")
        return f"SAE({', '.join(facts)})"

    # ------------------------------------------------------------------ shape facts
    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    @property
    def arch(self) -> Architecture:
        return architecture_named(self.architecture, self.source)

    @property
    def hook_layer(self) -> Optional[int]:
        """The decoder-layer index parsed from ``hook_name`` (``blocks.L.hook_resid_post``)."""
        if not self.hook_name:
            return None
        for part in self.hook_name.split("."):
            if part.isdigit():
                return int(part)
        return None

    @property
    def input_offset(self) -> torch.Tensor:
        """The vector the encoder subtracts from its input (b_dec or zeros)."""
        return self.b_dec if self.apply_b_dec_to_input else torch.zeros_like(self.b_dec)

    def validate(self) -> None:
        where = self.source
        arch = self.arch
        if self.W_enc.ndim != 2:
            raise SAEFormatError(f"{where}: W_enc must be 2-D [d_in, d_sae], got {tuple(self.W_enc.shape)}")
        d_in, d_sae = self.W_enc.shape
        expected = {"b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
        if self.threshold is not None:
            expected["threshold"] = (d_sae,)
        if self.feature_scale is not None:
            expected["feature_scale"] = (d_sae,)
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise SAEFormatError(f"{where}: {name} has shape {got}, expected {shape} "
                                     f"(d_in={d_in}, d_sae={d_sae} from W_enc)")
        arch.check(self, where)
        for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "feature_scale"):
            tensor = getattr(self, name)
            if tensor is not None and not torch.isfinite(tensor).all():
                raise SAEFormatError(f"{where}: {name} contains NaN or infinite values")

    # ------------------------------------------------------------- the full SAE math
    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(self.dtype) - self.input_offset) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense feature activations [..., F] (reference; the steering path never calls it)."""
        return self.arch.activate(self.pre_activations(x), self)

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        return acts.to(self.dtype) @ self.W_dec + self.b_dec

    def to(self, device: "torch.device | str | None" = None, dtype: Optional[torch.dtype] = None) -> "SAE":
        def move(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if t is None else t.to(device=device, dtype=dtype or t.dtype)
        # The JumpReLU threshold stays fp32: in bf16 an O(1) threshold rounds visibly.
        threshold = None if self.threshold is None else self.threshold.to(device=device)
        return SAE(move(self.W_enc), move(self.b_enc), move(self.W_dec), move(self.b_dec),
                   self.architecture, threshold, self.k, move(self.feature_scale),
                   self.apply_b_dec_to_input, self.hook_name, self.model_name,
                   dict(self.metadata), self.source)

    def check_features(self, features: Sequence[int]) -> torch.Tensor:
        """``features`` as a LongTensor [S] of valid indices of this SAE (ValueError for an
        entry that is not an integer, IndexError for one out of range)."""
        index = feature_indices(features)
        if not index:
            raise ValueError("select at least one feature (a 1-D list of indices)")
        bad = next((f for f in index if not 0 <= f < self.d_sae), None)
        if bad is not None:
            raise IndexError(f"feature index {bad} is out of range for {self.source} "
                             f"with d_sae={self.d_sae}")
        return torch.tensor(index, dtype=torch.long)

    # --------------------------------------------------------------------- saving
    def save(self, path: "str | os.PathLike", overwrite: bool = False) -> Path:
        """Write the sae-lens format (``cfg.json`` + ``sae_weights.safetensors``).

        Written to a temporary directory first and moved into place, so an existing
        SAE at ``path`` is never half-overwritten; it is replaced only with
        ``overwrite=True``, and only if the directory holds nothing but these files.
        """
        path = Path(path)
        if self.feature_scale is not None:
            # sae-lens recomputes the scale from the W_dec norms, so store the decoder
            # un-normalised: W_dec·scale has norms equal to scale.
            w_dec = self.W_dec * self.feature_scale[:, None]
        else:
            w_dec = self.W_dec
        tensors = {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": w_dec, "b_dec": self.b_dec}
        if self.threshold is not None:
            tensors["threshold"] = self.threshold
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        metadata = dict(self.metadata)
        metadata.update(hook_name=self.hook_name, model_name=self.model_name)
        cfg: dict[str, Any] = {
            "architecture": self.architecture, "d_in": self.d_in, "d_sae": self.d_sae,
            "dtype": dtype_name(self.dtype), "device": "cpu",
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": "none", "reshape_activations": "none",
            "metadata": metadata,
        }
        cfg.update(self.arch.sae_lens_cfg(self))
        with staged_directory(path, overwrite, owns=SAE_FILES) as staging:
            save_tensors(staging / SAE_LENS_WEIGHTS, tensors)
            (staging / SAE_LENS_CFG).write_text(json.dumps(cfg, indent=2, default=str))
        return path


# ------------------------------------------------------------------------- loading
def load_sae(source: Any, device: "torch.device | str | None" = None,
             dtype: Optional[torch.dtype] = None) -> SAE:
    """Load an SAE from a sae-lens or sparsify directory, or convert a live ``sae_lens.SAE``."""
    if isinstance(source, SAE):
        sae = source
    elif isinstance(source, (str, os.PathLike)):
        sae = _load_directory(Path(source))
    elif _is_sae_lens_object(source):
        sae = _from_sae_lens_object(source)
    else:
        raise TypeError(f"cannot load an SAE from {type(source).__name__}; pass a directory "
                        f"path, a sae_lens.SAE or a pysteer.SAE")
    return sae.to(device=device, dtype=dtype) if (device is not None or dtype is not None) else sae


def _load_directory(path: Path) -> SAE:
    if not path.is_dir():
        raise SAEFormatError(f"{path}: no such SAE directory")
    cfg_path = path / SAE_LENS_CFG
    if not cfg_path.is_file():
        raise SAEFormatError(f"{cfg_path}: missing (an SAE directory holds cfg.json and "
                             f"{SAE_LENS_WEIGHTS} or {SPARSIFY_WEIGHTS})")
    cfg = read_json_object(cfg_path, SAEFormatError)
    if (path / SAE_LENS_WEIGHTS).is_file():
        return _from_sae_lens_dict(cfg, _read_weights(path / SAE_LENS_WEIGHTS), str(path))
    if (path / SPARSIFY_WEIGHTS).is_file():
        return _from_sparsify_dict(cfg, _read_weights(path / SPARSIFY_WEIGHTS), str(path))
    raise SAEFormatError(f"{path}: found cfg.json but neither {SAE_LENS_WEIGHTS} (sae-lens) "
                         f"nor {SPARSIFY_WEIGHTS} (sparsify)")


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SAEFormatError(f"{path}: cannot read safetensors weights ({exc}); the file may be "
                             f"truncated or not a safetensors file") from None


def _require(mapping: dict, key: str, where: str, what: str = "key") -> Any:
    if key not in mapping:
        raise SAEFormatError(f"{where}: missing {what} {key!r}")
    return mapping[key]


def _cfg_int(cfg: dict, key: str, where: str) -> int:
    value = _require(cfg, key, where)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SAEFormatError(f"{where}: {key!r} must be a positive integer, got {value!r}")
    return value


def _from_sae_lens_dict(cfg: dict, state: dict[str, torch.Tensor], where: str) -> SAE:
    cfg_where = f"{where}/{SAE_LENS_CFG}"
    weights_where = f"{where}/{SAE_LENS_WEIGHTS}"
    architecture = cfg.get("architecture")
    activation = cfg.get("activation_fn", cfg.get("activation_fn_str"))
    if architecture is None:  # configs written before sae-lens 6
        architecture = "topk" if activation == "topk" else "standard"
    arch = architecture_named(architecture, cfg_where)
    normalize = cfg.get("normalize_activations", "none") or "none"
    if normalize not in ("none", "expected_average_only_in"):
        raise SAEFormatError(f"{cfg_where}: normalize_activations={normalize!r} rescales every "
                             f"token by its own norm, which the exact sparse edit cannot fold; "
                             f"fold it into the weights first")
    if cfg.get("reshape_activations", "none") not in ("none", None):
        raise SAEFormatError(f"{cfg_where}: reshape_activations={cfg['reshape_activations']!r} "
                             f"(attention-head SAEs) is not supported: pysteer steers the residual stream")
    d_in, d_sae = _cfg_int(cfg, "d_in", cfg_where), _cfg_int(cfg, "d_sae", cfg_where)
    tensors = {name: _require(state, name, weights_where, "tensor")
               for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    _check_shapes(tensors, d_in, d_sae, weights_where)
    w_dec = tensors["W_dec"]
    if "scaling_factor" in state:  # sae-lens < 6 "finetuning_scaling_factor": f·s @ W_dec
        w_dec = w_dec * state["scaling_factor"].to(w_dec.dtype)[:, None]
    fields, w_dec = arch.read_sae_lens(cfg, state, w_dec, cfg_where, weights_where)
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    hook_name = meta.get("hook_name", cfg.get("hook_name", cfg.get("hook_point")))
    model_name = meta.get("model_name", cfg.get("model_name"))
    extra = {key: value for key, value in meta.items() if key not in ("hook_name", "model_name")}
    return SAE(tensors["W_enc"], tensors["b_enc"], w_dec, tensors["b_dec"], architecture,
               apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)), hook_name=hook_name,
               model_name=model_name, metadata=extra, source=where, **fields)


def _from_sparsify_dict(cfg: dict, state: dict[str, torch.Tensor], where: str) -> SAE:
    cfg_where = f"{where}/{SAE_LENS_CFG}"
    weights_where = f"{where}/{SPARSIFY_WEIGHTS}"
    if cfg.get("activation", "topk") != "topk":
        raise SAEFormatError(f"{cfg_where}: sparsify activation {cfg['activation']!r} is not "
                             f"supported (only topk)")
    if cfg.get("transcode", False):
        raise SAEFormatError(f"{cfg_where}: transcoders predict another point of the model; "
                             f"pysteer steers with SAEs only")
    d_in = _cfg_int(cfg, "d_in", cfg_where)
    k = _cfg_int(cfg, "k", cfg_where)
    weight = _require(state, "encoder.weight", weights_where, "tensor")  # [F, D]
    tensors = {"W_enc": weight.t().contiguous(),
               "b_enc": _require(state, "encoder.bias", weights_where, "tensor"),
               "W_dec": _require(state, "W_dec", weights_where, "tensor"),
               "b_dec": _require(state, "b_dec", weights_where, "tensor")}
    d_sae = cfg.get("num_latents") or d_in * cfg.get("expansion_factor", 32)
    _check_shapes(tensors, d_in, d_sae, weights_where)
    # sparsify: pre = relu(W (x − b_dec) + b); the top-k of relu(pre) and relu of the
    # top-k of pre pick the same nonzero values, so the two conventions agree.
    return SAE(tensors["W_enc"], tensors["b_enc"], tensors["W_dec"], tensors["b_dec"], "topk",
               None, k, None, True, cfg.get("hook_name"), cfg.get("model_name"),
               {"format": "sparsify"}, where)


def _check_shapes(tensors: dict[str, torch.Tensor], d_in: int, d_sae: int, where: str) -> None:
    expected = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    for name, shape in expected.items():
        got = tuple(tensors[name].shape)
        if got != shape:
            raise SAEFormatError(f"{where}: tensor {name!r} has shape {got}, but the config says "
                                 f"{shape} (d_in={d_in}, d_sae={d_sae})")


def _is_sae_lens_object(obj: Any) -> bool:
    return all(hasattr(obj, name) for name in ("cfg", "W_enc", "W_dec", "b_dec")) and \
        hasattr(getattr(obj, "cfg"), "to_dict")


def _from_sae_lens_object(sae: Any) -> SAE:
    cfg = sae.cfg.to_dict()
    state = {name: tensor.detach() for name, tensor in sae.state_dict().items()}
    return _from_sae_lens_dict(cfg, state, f"<sae_lens.{type(sae).__name__}>")


def random_sae(d_in: int, d_sae: int, architecture: str = "standard", k: Optional[int] = None,
               seed: int = 0, dtype: torch.dtype = torch.float32,
               apply_b_dec_to_input: bool = True) -> SAE:
    """A random SAE for tests and benchmarks (decoder rows unit-norm, encoder = decoder^T)."""
    gen = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(d_sae, d_in, generator=gen)
    w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True)
    w_enc = w_dec.t().contiguous() + 0.1 * torch.randn(d_in, d_sae, generator=gen) / math.sqrt(d_in)
    b_enc = 0.1 * torch.randn(d_sae, generator=gen)
    b_dec = 0.1 * torch.randn(d_in, generator=gen)
    fields = architecture_named(architecture).random_fields(d_sae, gen, k)
    return SAE(w_enc.to(dtype), b_enc.to(dtype), w_dec.to(dtype), b_dec.to(dtype), architecture,
               apply_b_dec_to_input=apply_b_dec_to_input, **fields)

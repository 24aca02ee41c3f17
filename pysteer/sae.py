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
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .errors import SAEFormatError
from .fileio import read_json_object, save_tensors, staged_directory

ARCHITECTURES = ("standard", "jumprelu", "topk")
SAE_LENS_CFG = "cfg.json"
SAE_LENS_WEIGHTS = "sae_weights.safetensors"
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


@dataclass
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
        if self.architecture not in ARCHITECTURES:
            raise SAEFormatError(f"{where}: architecture {self.architecture!r} is not supported; "
                                 f"expected one of {', '.join(ARCHITECTURES)}")
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
        if self.architecture == "jumprelu" and self.threshold is None:
            raise SAEFormatError(f"{where}: a jumprelu SAE needs a 'threshold' tensor")
        if self.architecture == "topk":
            if self.k is None or not (0 < int(self.k) <= d_sae):
                raise SAEFormatError(f"{where}: a topk SAE needs 0 < k <= d_sae ({d_sae}), got k={self.k}")
        for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "feature_scale"):
            tensor = getattr(self, name)
            if tensor is not None and not torch.isfinite(tensor).all():
                raise SAEFormatError(f"{where}: {name} contains NaN or infinite values")

    # ------------------------------------------------------------- the full SAE math
    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(self.dtype) - self.input_offset) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense feature activations [..., F] (reference; the steering path never calls it)."""
        pre = self.pre_activations(x)
        if self.architecture == "standard":
            return torch.relu(pre)
        if self.architecture == "jumprelu":
            return torch.relu(pre) * (pre > self.threshold)
        scaled = pre * self.feature_scale if self.feature_scale is not None else pre
        values, indices = scaled.topk(int(self.k), dim=-1)
        return torch.zeros_like(scaled).scatter_(-1, indices, values.relu())

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
        index = torch.as_tensor(list(features), dtype=torch.long)
        if index.ndim != 1 or index.numel() == 0:
            raise ValueError("select at least one feature (a 1-D list of indices)")
        bad = index[(index < 0) | (index >= self.d_sae)]
        if bad.numel():
            raise IndexError(f"feature index {int(bad[0])} is out of range for {self.source} "
                             f"with d_sae={self.d_sae}")
        return index

    # --------------------------------------------------------------------- saving
    def save(self, path: "str | os.PathLike", overwrite: bool = False) -> Path:
        """Write the sae-lens format (``cfg.json`` + ``sae_weights.safetensors``).

        Written to a temporary directory first and moved into place, so an existing
        SAE at ``path`` is never half-overwritten; it is replaced only with
        ``overwrite=True``.
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
        if self.architecture == "topk":
            cfg["k"] = int(self.k)
            cfg["rescale_acts_by_decoder_norm"] = self.feature_scale is not None
        with staged_directory(path, overwrite) as staging:
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
    if architecture not in ARCHITECTURES:
        raise SAEFormatError(f"{cfg_where}: architecture {architecture!r} is not supported; "
                             f"expected one of {', '.join(ARCHITECTURES)}")
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
    threshold = None
    if architecture == "jumprelu":
        if "threshold" in state:
            threshold = state["threshold"].float()
        elif "log_threshold" in state:
            threshold = state["log_threshold"].float().exp()
        else:
            raise SAEFormatError(f"{weights_where}: missing tensor 'threshold' (jumprelu SAE)")
    k = feature_scale = None
    if architecture == "topk":
        k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
        if k is None:
            raise SAEFormatError(f"{cfg_where}: missing key 'k' (topk SAE)")
        if cfg.get("rescale_acts_by_decoder_norm", False):
            feature_scale = w_dec.norm(dim=-1)
            w_dec = w_dec / feature_scale[:, None]
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    hook_name = meta.get("hook_name", cfg.get("hook_name", cfg.get("hook_point")))
    model_name = meta.get("model_name", cfg.get("model_name"))
    extra = {key: value for key, value in meta.items() if key not in ("hook_name", "model_name")}
    return SAE(tensors["W_enc"], tensors["b_enc"], w_dec, tensors["b_dec"], architecture,
               threshold, k, feature_scale, bool(cfg.get("apply_b_dec_to_input", True)),
               hook_name, model_name, extra, where)


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
    threshold = 0.2 * torch.rand(d_sae, generator=gen) if architecture == "jumprelu" else None
    if architecture == "topk" and k is None:
        k = max(1, d_sae // 8)
    return SAE(w_enc.to(dtype), b_enc.to(dtype), w_dec.to(dtype), b_dec.to(dtype), architecture,
               threshold, k, None, apply_b_dec_to_input)

"""pysteer's ops: validated entry points over the ``torch.library`` declarations.

Every check here reads only tensor metadata (shape, dtype, device, strides), so the
wrappers add no host synchronisation and stay traceable by ``torch.compile``.
Checks that must read values (coefficients finite, row indices in range, feature
indices in range) run once, on the host, when a steering spec is attached — not per
call.

Each op takes an optional ``backend=`` ("cuda", "triton", "reference"), which beats
:func:`use_backend` / :func:`set_backend`, which beat ``PYSTEER_BACKEND``, which beats
automatic choice; the registry in :mod:`pysteer.ops.backends` picks the implementation
once the call is validated (see there for the fallback rules), and
:func:`check_backend` resolves it ahead of time.

Rows are independent: every output row depends only on its own input row, so a NaN
in one ``hidden`` row of :func:`sparse_steer_` or :func:`dense_steer_` spreads over
that row only, and every other row comes back bit-identical.

Kernel ABI (shared by the reference, Triton and CUDA backends):
  hidden / x       [T, D]  fp32 | fp16 | bf16, contiguous
  weights          enc_rows, dec_rows [S, D], enc_bias [S], input_offset [D],
                   directions [K, D], w_enc [D, F], w_dec [F, D]: same dtype as hidden
  coeffs           [C, S] fp32;  threshold [S] fp32;  feature_acts [T, S] fp32
  row_index        [T] int32, -1 = leave the token alone
  edit_modes       [S] int8 (FeatureEdit); dense_modes [K] int8 (DenseEdit)
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import library
from .backends import (BACKENDS, active_backend_name, available_backends, check_backend, set_backend,
                       use_backend)
from .modes import DenseEdit, FeatureEdit

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

__all__ = ["sparse_steer_", "check_sparse_steer_args", "launch_sparse_steer_",
           "check_dense_steer_args", "launch_dense_steer_", "dense_steer_", "encode_topk", "sparse_decode", "FeatureEdit",
           "DenseEdit", "BACKENDS", "set_backend", "use_backend", "available_backends",
           "active_backend_name", "check_backend", "FLOAT_DTYPES"]


def _run(op, impl, *args):
    """Through the ``torch.library`` op while tracing, so ``torch.compile`` sees it; in eager
    mode straight to its body (``impl``), skipping the dispatcher's per-call Python overhead
    (tens of µs, which would dominate a decode step's steering cost)."""
    if torch.compiler.is_compiling():
        return op(*args)
    return impl(*args)


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def _check_tensor(t: Tensor, name: str, shape: tuple, dtype: torch.dtype, device: torch.device) -> None:
    _check(isinstance(t, Tensor), f"{name} must be a tensor, got {type(t).__name__}")
    _check(t.device == device, f"{name} is on {t.device} but hidden is on {device}")
    _check(t.dtype == dtype, f"{name} must be {dtype}, got {t.dtype}")
    _check(tuple(t.shape) == tuple(shape), f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    _check(t.is_contiguous(), f"{name} must be contiguous")


def _check_hidden(hidden: Tensor, name: str = "hidden") -> None:
    _check(isinstance(hidden, Tensor), f"{name} must be a tensor")
    _check(hidden.ndim == 2, f"{name} must be 2-D [tokens, d_model], got shape {tuple(hidden.shape)}")
    _check(hidden.dtype in FLOAT_DTYPES, f"{name} must be fp32, fp16 or bf16, got {hidden.dtype}")
    _check(hidden.is_contiguous(), f"{name} must be contiguous")


def _check_rows(hidden: Tensor, row_index: Tensor, coeffs: Tensor, width: int) -> None:
    tokens = hidden.shape[0]
    _check_tensor(row_index, "row_index", (tokens,), torch.int32, hidden.device)
    _check(coeffs.ndim == 2 and coeffs.shape[1] == width,
           f"coeffs must be [configs, {width}], got {tuple(coeffs.shape)}")
    _check(coeffs.shape[0] >= 1, "coeffs needs at least one configuration row")
    _check_tensor(coeffs, "coeffs", tuple(coeffs.shape), torch.float32, hidden.device)


def check_sparse_steer_args(hidden: Tensor, row_index: Tensor, coeffs: Tensor, enc_rows: Tensor,
                            enc_bias: Tensor, threshold: Tensor, dec_rows: Tensor,
                            input_offset: Tensor, edit_modes: Tensor,
                            feature_acts: Optional[Tensor] = None) -> None:
    """Every metadata check of :func:`sparse_steer_`; raises ``ValueError`` naming the argument."""
    _check_hidden(hidden)
    d_model, device, dtype = hidden.shape[1], hidden.device, hidden.dtype
    _check(enc_rows.ndim == 2, f"enc_rows must be [features, d_model], got {tuple(enc_rows.shape)}")
    n_sel = enc_rows.shape[0]
    _check(enc_rows.shape[1] == d_model,
           f"the SAE's d_in is {enc_rows.shape[1]} but hidden has d_model={d_model}")
    _check_rows(hidden, row_index, coeffs, n_sel)
    _check_tensor(enc_rows, "enc_rows", (n_sel, d_model), dtype, device)
    _check_tensor(dec_rows, "dec_rows", (n_sel, d_model), dtype, device)
    _check_tensor(enc_bias, "enc_bias", (n_sel,), dtype, device)
    _check_tensor(input_offset, "input_offset", (d_model,), dtype, device)
    _check_tensor(threshold, "threshold", (n_sel,), torch.float32, device)
    _check_tensor(edit_modes, "edit_modes", (n_sel,), torch.int8, device)
    if feature_acts is not None:
        _check_tensor(feature_acts, "feature_acts", (hidden.shape[0], n_sel), torch.float32, device)


def sparse_steer_(hidden: Tensor, row_index: Tensor, coeffs: Tensor, enc_rows: Tensor,
                  enc_bias: Tensor, threshold: Tensor, dec_rows: Tensor, input_offset: Tensor,
                  edit_modes: Tensor, feature_acts: Optional[Tensor] = None, *,
                  backend: Optional[str] = None) -> Tensor:
    """Exact sparse SAE edit, in place: h += Σ_i (edit(f_i, c_i) − f_i)·dec_rows[i].

    See :func:`pysteer.ops.reference.sparse_steer_` for the formula; returns ``hidden``.
    """
    check_sparse_steer_args(hidden, row_index, coeffs, enc_rows, enc_bias, threshold, dec_rows,
                            input_offset, edit_modes, feature_acts)
    return launch_sparse_steer_(hidden, row_index, coeffs, enc_rows, enc_bias, threshold, dec_rows,
                                input_offset, edit_modes, feature_acts, backend=backend)


def launch_sparse_steer_(hidden: Tensor, row_index: Tensor, coeffs: Tensor, enc_rows: Tensor,
                         enc_bias: Tensor, threshold: Tensor, dec_rows: Tensor,
                         input_offset: Tensor, edit_modes: Tensor,
                         feature_acts: Optional[Tensor] = None, *,
                         backend: Optional[str] = None) -> Tensor:
    """:func:`sparse_steer_` for callers that validated the weights once already (a steered
    layer does at attach time): only ``hidden`` is checked against them here."""
    _check_hidden_fits(hidden, dec_rows)
    if hidden.shape[0]:
        _run(library.sparse_steer_op, library.sparse_steer_impl, hidden, row_index, coeffs,
             enc_rows, enc_bias, threshold, dec_rows, input_offset, edit_modes, feature_acts, backend)
    return hidden


def _check_hidden_fits(hidden: Tensor, weights: Tensor) -> None:
    """The per-call check of a steered layer: ``hidden`` matches weights validated earlier.

    Messages are only formatted on failure: this runs for every layer and decode step."""
    if not (hidden.ndim == 2 and hidden.is_contiguous() and hidden.shape[1] == weights.shape[1]):
        raise ValueError(f"hidden must be a contiguous [tokens, {weights.shape[1]}] tensor, "
                         f"got {tuple(hidden.shape)}")
    if hidden.dtype != weights.dtype or hidden.device != weights.device:
        raise ValueError(f"hidden is {hidden.dtype} on {hidden.device} but the steering weights "
                         f"are {weights.dtype} on {weights.device}")


def check_dense_steer_args(hidden: Tensor, row_index: Tensor, coeffs: Tensor, directions: Tensor,
                           dense_modes: Tensor) -> None:
    """Every metadata check of :func:`dense_steer_`; raises ``ValueError`` naming the argument."""
    _check_hidden(hidden)
    _check(directions.ndim == 2 and directions.shape[1] == hidden.shape[1],
           f"directions must be [K, {hidden.shape[1]}], got {tuple(directions.shape)}")
    n_dir = directions.shape[0]
    _check_rows(hidden, row_index, coeffs, n_dir)
    _check_tensor(directions, "directions", (n_dir, hidden.shape[1]), hidden.dtype, hidden.device)
    _check_tensor(dense_modes, "dense_modes", (n_dir,), torch.int8, hidden.device)


def dense_steer_(hidden: Tensor, row_index: Tensor, coeffs: Tensor, directions: Tensor,
                 dense_modes: Tensor, *, backend: Optional[str] = None) -> Tensor:
    """Dense steering in place: add c·u, or project h + (z̄ − h·u)·u; returns ``hidden``."""
    check_dense_steer_args(hidden, row_index, coeffs, directions, dense_modes)
    return launch_dense_steer_(hidden, row_index, coeffs, directions, dense_modes, backend=backend)


def launch_dense_steer_(hidden: Tensor, row_index: Tensor, coeffs: Tensor, directions: Tensor,
                        dense_modes: Tensor, *, backend: Optional[str] = None) -> Tensor:
    """:func:`dense_steer_` for callers that validated the directions once already."""
    _check_hidden_fits(hidden, directions)
    if hidden.shape[0]:
        _run(library.dense_steer_op, library.dense_steer_impl, hidden, row_index, coeffs,
             directions, dense_modes, backend)
    return hidden


def encode_topk(x: Tensor, w_enc: Tensor, b_enc: Tensor, input_offset: Tensor,
                feature_scale: Optional[Tensor], k: int, *,
                backend: Optional[str] = None) -> tuple[Tensor, Tensor]:
    """Fused SAE encode + per-row top-k: (values [T, k] fp32 descending, indices [T, k] int64).

    A k above the chosen backend's limit (256 for the CUDA and Triton kernels) runs on
    the reference (matmul + ``torch.topk``), on the same device."""
    _check_hidden(x, "x")
    _check(w_enc.ndim == 2 and w_enc.shape[0] == x.shape[1],
           f"w_enc must be [{x.shape[1]}, d_sae], got {tuple(w_enc.shape)}")
    d_sae = w_enc.shape[1]
    _check(isinstance(k, int) and 0 < k <= d_sae, f"k must be in 1..{d_sae}, got {k}")
    _check_tensor(w_enc, "w_enc", (x.shape[1], d_sae), x.dtype, x.device)
    _check_tensor(b_enc, "b_enc", (d_sae,), x.dtype, x.device)
    _check_tensor(input_offset, "input_offset", (x.shape[1],), x.dtype, x.device)
    if feature_scale is not None:
        _check_tensor(feature_scale, "feature_scale", (d_sae,), torch.float32, x.device)
    return _run(library.encode_topk_op, library.encode_topk_impl, x, w_enc, b_enc, input_offset,
                feature_scale, k, backend)


def sparse_decode(values: Tensor, indices: Tensor, w_dec: Tensor, bias: Optional[Tensor] = None,
                  residual: Optional[Tensor] = None, *, backend: Optional[str] = None) -> Tensor:
    """out[t] = Σ_j values[t,j]·w_dec[indices[t,j]] (+ bias) (+ residual[t]); −1 indices skipped."""
    _check(w_dec.ndim == 2 and w_dec.dtype in FLOAT_DTYPES,
           f"w_dec must be a 2-D fp32/fp16/bf16 [d_sae, d_model] tensor, got {tuple(w_dec.shape)} {w_dec.dtype}")
    _check(values.ndim == 2, f"values must be [tokens, k], got {tuple(values.shape)}")
    shape = tuple(values.shape)
    _check_tensor(values, "values", shape, torch.float32, w_dec.device)
    _check_tensor(indices, "indices", shape, torch.int64, w_dec.device)
    _check(w_dec.is_contiguous(), "w_dec must be contiguous")
    if bias is not None:
        _check_tensor(bias, "bias", (w_dec.shape[1],), w_dec.dtype, w_dec.device)
    if residual is not None:
        _check_hidden(residual, "residual")
        _check(tuple(residual.shape) == (shape[0], w_dec.shape[1]),
               f"residual must be [{shape[0]}, {w_dec.shape[1]}], got {tuple(residual.shape)}")
        _check(residual.device == w_dec.device, f"residual is on {residual.device}, w_dec on {w_dec.device}")
    return _run(library.sparse_decode_op, library.sparse_decode_impl, values, indices, w_dec,
                bias, residual, backend)

"""CUDA backend: the reference's four ops on the fused kernels of ``pysteer._C``.

Same names, signatures and semantics as :mod:`pysteer.ops.reference`. Each call
passes raw device addresses, sizes, dtype codes and the current stream of the
tensors' device to the extension; outputs and the encode workspace are allocated
here with sizes that depend only on shapes, and nothing syncs with the host, so the
calls can be captured by CUDA graphs.

These are plain launchers: the op layer (pysteer/ops/__init__.py) validates every
call, and the registry (pysteer/ops/backends.py) sends here only what the kernels
take — CUDA tensors, and encode_topk with k <= 256.

Small vectors (biases, thresholds, offsets, scales) go to the kernels in whatever
float dtype they have. Other conversions are no-ops for inputs that follow the op
ABI and one small cast otherwise: ``row_index`` int32, ``coeffs``/``feature_acts``/
``values`` fp32, modes int8, ``indices`` int64, ``dec_rows`` to ``enc_rows``' dtype.
Big operands (hidden, weights) must already be contiguous tensors on one device.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch

try:
    from pysteer import _C
except ImportError as exc:  # pragma: no cover - depends on the build
    raise ImportError(
        "pysteer's CUDA extension (pysteer._C) is not built or failed to load "
        f"({exc}). Build it with a CUDA toolchain (nvcc on PATH or CUDA_HOME set) "
        "by reinstalling: `pip install -e .` (PYSTEER_CUDA_ARCHS selects GPU "
        "architectures). The Triton and pure-PyTorch reference backends work without it."
    ) from exc

__all__ = ["sparse_steer_", "dense_steer_", "encode_topk", "sparse_decode", "DTYPE_CODES",
           "encode_topk_workspace_bytes"]

#: dtype -> code understood by the kernels (csrc/include/pysteer/modes.cuh, DType).
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def _code(t: torch.Tensor) -> int:
    return DTYPE_CODES[t.dtype]


def _small(t: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    """A small operand: cast/copied to ``dtype`` and made contiguous when needed."""
    return None if t is None else t.to(dtype=dtype).contiguous()


def _ptr(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def _vec(t: Optional[torch.Tensor]) -> tuple[Optional[torch.Tensor], int]:
    """A small vector in its own dtype: (contiguous tensor to keep alive, dtype code)."""
    if t is None:
        return None, 0
    return t.contiguous(), _code(t)


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def _on(device: torch.device):
    """Make ``device`` current only when it is not (the common case costs nothing)."""
    if device.index is None or device.index == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(device)


def sparse_steer_(hidden: torch.Tensor, row_index: torch.Tensor, coeffs: torch.Tensor,
                  enc_rows: torch.Tensor, enc_bias: torch.Tensor, threshold: torch.Tensor,
                  dec_rows: torch.Tensor, input_offset: torch.Tensor, edit_modes: torch.Tensor,
                  feature_acts: Optional[torch.Tensor] = None) -> None:
    """h += sum_i (f'_i - f_i) * dec_rows[i] in place, for tokens with row_index >= 0.

    ``hidden`` [T, D] (any leading shape flattening to T rows), ``row_index`` [T],
    ``coeffs`` [C, S], ``enc_rows``/``dec_rows`` [S, D], ``enc_bias``/``threshold``
    [S], ``input_offset`` [D], ``edit_modes`` [S], ``feature_acts`` [T, S] or None.
    """
    dev = hidden.device
    S, D = enc_rows.shape
    T = hidden.numel() // D if D else 0
    if dec_rows.dtype != enc_rows.dtype:
        dec_rows = dec_rows.to(enc_rows.dtype)
    coeffs = _small(coeffs, torch.float32)
    row_index = _small(row_index, torch.int32)
    enc_bias, enc_bias_code = _vec(enc_bias)
    threshold, threshold_code = _vec(threshold)
    input_offset, input_offset_code = _vec(input_offset)
    edit_modes = _small(edit_modes, torch.int8)
    feature_acts = _small(feature_acts, torch.float32)
    with _on(dev):
        _C.sparse_steer(hidden.data_ptr(), row_index.data_ptr(), coeffs.data_ptr(), coeffs.shape[0],
                        enc_rows.data_ptr(), _ptr(enc_bias), enc_bias_code, _ptr(threshold),
                        threshold_code, dec_rows.data_ptr(), _ptr(input_offset), input_offset_code,
                        edit_modes.data_ptr(), _ptr(feature_acts), T, D, S,
                        _code(hidden), _code(enc_rows), _stream(dev))


def dense_steer_(hidden: torch.Tensor, row_index: torch.Tensor, coeffs: torch.Tensor,
                 directions: torch.Tensor, dense_modes: torch.Tensor) -> None:
    """h += sum_k a_k u_k in place; a_k = c_k (add) or c_k - h.u_k (project).

    ``hidden`` [T, D], ``row_index`` [T], ``coeffs`` [C, K], ``directions`` [K, D],
    ``dense_modes`` [K].
    """
    dev = hidden.device
    K, D = directions.shape
    T = hidden.numel() // D if D else 0
    coeffs = _small(coeffs, torch.float32)
    row_index = _small(row_index, torch.int32)
    dense_modes = _small(dense_modes, torch.int8)
    with _on(dev):
        _C.dense_steer(hidden.data_ptr(), row_index.data_ptr(), coeffs.data_ptr(), coeffs.shape[0],
                       directions.data_ptr(), dense_modes.data_ptr(), T, D, K,
                       _code(hidden), _code(directions), _stream(dev))


def encode_topk_workspace_bytes(T: int, D: int, F: int, k: int, weight_dtype: torch.dtype) -> int:
    """Bytes of scratch :func:`encode_topk` needs for these shapes (shape-only)."""
    return _C.encode_topk_workspace_bytes(T, D, F, k, DTYPE_CODES[weight_dtype])


def encode_topk(x: torch.Tensor, w_enc: torch.Tensor, b_enc: torch.Tensor,
                input_offset: torch.Tensor, feature_scale: Optional[torch.Tensor],
                k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of ((x - input_offset) @ w_enc + b_enc) * feature_scale per row.

    ``x`` [T, D], ``w_enc`` [D, F], ``b_enc``/``feature_scale`` [F], ``input_offset``
    [D]. Returns (values [T, k] fp32, indices [T, k] int64), values descending.
    1 <= k <= min(F, 256): the registry sends larger k to the reference.
    """
    dev = x.device
    D, F = w_enc.shape
    lead = x.shape[:-1]
    x = x.contiguous()
    T = x.numel() // D
    b_enc, b_enc_code = _vec(b_enc)
    input_offset, input_offset_code = _vec(input_offset)
    feature_scale, feature_scale_code = _vec(feature_scale)
    w_code = _code(w_enc)
    values = torch.empty((*lead, k), dtype=torch.float32, device=dev)
    indices = torch.empty((*lead, k), dtype=torch.int64, device=dev)
    nbytes = _C.encode_topk_workspace_bytes(T, D, F, k, w_code)
    workspace = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    with _on(dev):
        _C.encode_topk(x.data_ptr(), w_enc.data_ptr(), _ptr(b_enc), b_enc_code, _ptr(input_offset),
                       input_offset_code, _ptr(feature_scale), feature_scale_code, values.data_ptr(), indices.data_ptr(),
                       workspace.data_ptr(), nbytes, T, D, F, k, _code(x), w_code,
                       _stream(dev))
    return values, indices


def sparse_decode(values: torch.Tensor, indices: torch.Tensor, w_dec: torch.Tensor,
                  bias: Optional[torch.Tensor] = None,
                  residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """out[t] = sum_j values[t, j] * w_dec[indices[t, j]] (+ bias) (+ residual[t]).

    ``values``/``indices`` [T, k] (index -1 skipped), ``w_dec`` [F, D], ``bias`` [D],
    ``residual`` [T, D]. Output dtype: ``residual``'s if given, else ``w_dec``'s.
    """
    dev = w_dec.device
    F, D = w_dec.shape
    lead = values.shape[:-1]
    k = values.shape[-1] if values.dim() else 0
    T = values.numel() // k if k else int(torch.Size(lead).numel())
    values = _small(values, torch.float32)
    indices = _small(indices, torch.int64)
    bias, bias_code = _vec(bias)
    if residual is not None:
        residual = residual.contiguous()
        out = torch.empty_like(residual)
    else:
        out = torch.empty((*lead, D), dtype=w_dec.dtype, device=dev)
    with _on(dev):
        _C.sparse_decode(values.data_ptr(), indices.data_ptr(), w_dec.data_ptr(), _ptr(bias), bias_code,
                         _ptr(residual), out.data_ptr(), T, k, F, D, _code(w_dec), _code(out),
                         _stream(dev))
    return out

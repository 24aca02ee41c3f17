"""The ``torch.library`` declarations: one per op, each with a fake implementation.

Each op's body (``*_impl``) takes its launcher from the registry
(:func:`pysteer.ops.backends.launcher`) and runs it; the declared op wraps that body,
and its fake (meta) implementation lets ``torch.compile`` trace through it and CUDA
graphs capture it. The trailing ``backend`` argument is the caller's explicit choice
(``None``: context, environment, automatic), so it survives tracing. Call the
validated wrappers in :mod:`pysteer.ops` rather than ``torch.ops.pysteer.*`` directly.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .backends import launcher


def sparse_steer_impl(hidden: Tensor, row_index: Tensor, coeffs: Tensor, enc_rows: Tensor,
                      enc_bias: Tensor, threshold: Tensor, dec_rows: Tensor, input_offset: Tensor,
                      edit_modes: Tensor, feature_acts: Optional[Tensor],
                      backend: Optional[str] = None) -> None:
    launcher("sparse_steer_", hidden.device, hidden.dtype, backend=backend)(
        hidden, row_index, coeffs, enc_rows, enc_bias, threshold, dec_rows, input_offset,
        edit_modes, feature_acts)


sparse_steer_op = torch.library.custom_op("pysteer::sparse_steer_", sparse_steer_impl,
                                          mutates_args=("hidden",))


@sparse_steer_op.register_fake
def _(hidden, row_index, coeffs, enc_rows, enc_bias, threshold, dec_rows, input_offset,
      edit_modes, feature_acts, backend=None) -> None:
    return None


def dense_steer_impl(hidden: Tensor, row_index: Tensor, coeffs: Tensor, directions: Tensor,
                     dense_modes: Tensor, backend: Optional[str] = None) -> None:
    launcher("dense_steer_", hidden.device, hidden.dtype, backend=backend)(
        hidden, row_index, coeffs, directions, dense_modes)


dense_steer_op = torch.library.custom_op("pysteer::dense_steer_", dense_steer_impl,
                                         mutates_args=("hidden",))


@dense_steer_op.register_fake
def _(hidden, row_index, coeffs, directions, dense_modes, backend=None) -> None:
    return None


def encode_topk_impl(x: Tensor, w_enc: Tensor, b_enc: Tensor, input_offset: Tensor,
                     feature_scale: Optional[Tensor], k: int,
                     backend: Optional[str] = None) -> tuple[Tensor, Tensor]:
    return launcher("encode_topk", x.device, x.dtype, k=k, backend=backend)(
        x, w_enc, b_enc, input_offset, feature_scale, k)


encode_topk_op = torch.library.custom_op("pysteer::encode_topk", encode_topk_impl, mutates_args=())


@encode_topk_op.register_fake
def _(x, w_enc, b_enc, input_offset, feature_scale, k, backend=None):
    rows = x.shape[0]
    return (x.new_empty((rows, k), dtype=torch.float32), x.new_empty((rows, k), dtype=torch.int64))


def sparse_decode_impl(values: Tensor, indices: Tensor, w_dec: Tensor, bias: Optional[Tensor],
                       residual: Optional[Tensor], backend: Optional[str] = None) -> Tensor:
    out_dtype = w_dec.dtype if residual is None else residual.dtype
    return launcher("sparse_decode", w_dec.device, w_dec.dtype, out_dtype, backend=backend)(
        values, indices, w_dec, bias, residual)


sparse_decode_op = torch.library.custom_op("pysteer::sparse_decode", sparse_decode_impl,
                                           mutates_args=())


@sparse_decode_op.register_fake
def _(values, indices, w_dec, bias, residual, backend=None):
    dtype = residual.dtype if residual is not None else w_dec.dtype
    return w_dec.new_empty((values.shape[0], w_dec.shape[1]), dtype=dtype)

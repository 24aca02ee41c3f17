"""The ``torch.library`` declarations: one per op, each with a fake implementation.

The fake (meta) implementations let ``torch.compile`` trace through the ops and CUDA
graphs capture them; the real implementation is looked up per call by
:func:`pysteer.ops.backends.backend_for`. Call the validated wrappers in
:mod:`pysteer.ops` rather than ``torch.ops.pysteer.*`` directly.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .backends import backend_for


@torch.library.custom_op("pysteer::sparse_steer_", mutates_args=("hidden",))
def sparse_steer_op(hidden: Tensor, row_index: Tensor, coeffs: Tensor, enc_rows: Tensor,
                    enc_bias: Tensor, threshold: Tensor, dec_rows: Tensor, input_offset: Tensor,
                    edit_modes: Tensor, feature_acts: Optional[Tensor]) -> None:
    backend_for(hidden.device).sparse_steer_(hidden, row_index, coeffs, enc_rows, enc_bias,
                                             threshold, dec_rows, input_offset, edit_modes,
                                             feature_acts)


@sparse_steer_op.register_fake
def _(hidden, row_index, coeffs, enc_rows, enc_bias, threshold, dec_rows, input_offset,
      edit_modes, feature_acts) -> None:
    return None


@torch.library.custom_op("pysteer::dense_steer_", mutates_args=("hidden",))
def dense_steer_op(hidden: Tensor, row_index: Tensor, coeffs: Tensor, directions: Tensor,
                   dense_modes: Tensor) -> None:
    backend_for(hidden.device).dense_steer_(hidden, row_index, coeffs, directions, dense_modes)


@dense_steer_op.register_fake
def _(hidden, row_index, coeffs, directions, dense_modes) -> None:
    return None


@torch.library.custom_op("pysteer::encode_topk", mutates_args=())
def encode_topk_op(x: Tensor, w_enc: Tensor, b_enc: Tensor, input_offset: Tensor,
                   feature_scale: Optional[Tensor], k: int) -> tuple[Tensor, Tensor]:
    return backend_for(x.device).encode_topk(x, w_enc, b_enc, input_offset, feature_scale, k)


@encode_topk_op.register_fake
def _(x, w_enc, b_enc, input_offset, feature_scale, k):
    rows = x.shape[0]
    return (x.new_empty((rows, k), dtype=torch.float32), x.new_empty((rows, k), dtype=torch.int64))


@torch.library.custom_op("pysteer::sparse_decode", mutates_args=())
def sparse_decode_op(values: Tensor, indices: Tensor, w_dec: Tensor, bias: Optional[Tensor],
                     residual: Optional[Tensor]) -> Tensor:
    return backend_for(w_dec.device).sparse_decode(values, indices, w_dec, bias, residual)


@sparse_decode_op.register_fake
def _(values, indices, w_dec, bias, residual):
    dtype = residual.dtype if residual is not None else w_dec.dtype
    return w_dec.new_empty((values.shape[0], w_dec.shape[1]), dtype=dtype)

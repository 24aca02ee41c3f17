"""Sparse SAE decode, embedding-bag style.

    out[t] = sum_j values[t, j] * w_dec[indices[t, j]]  (+ bias)  (+ residual[t])

Grid (T, D blocks): a program gathers the rows of ``w_dec`` named by one token's k
indices, BLOCK_K at a time, for one BLOCK_D slice of d_model, and accumulates in fp32;
index -1 entries are masked out of the gather. Each w_dec row slice is read once per
token that names it: T * k * D elements in all, the floor for this op.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl


@triton.jit
def _sparse_decode_kernel(val_ptr, idx_ptr, w_ptr, bias_ptr, res_ptr, out_ptr,
                          K, D, stride_v, stride_i, stride_w, stride_r, stride_o,
                          HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                          BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    acc = tl.zeros([BLOCK_D], tl.float32)
    for j0 in range(0, K, BLOCK_K):
        js = j0 + tl.arange(0, BLOCK_K)
        j_ok = js < K
        idx = tl.load(idx_ptr + t * stride_i + js, mask=j_ok, other=-1).to(tl.int64)
        valid = idx >= 0
        v = tl.load(val_ptr + t * stride_v + js, mask=valid, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + idx[:, None] * stride_w + cols[None, :],
                    mask=valid[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(v[:, None] * w, axis=0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        acc = tl.load(res_ptr + t * stride_r + cols, mask=col_ok, other=0.0).to(tl.float32) + acc
    tl.store(out_ptr + t * stride_o + cols, acc.to(out_ptr.dtype.element_ty), mask=col_ok)


def sparse_decode(values: torch.Tensor, indices: torch.Tensor, w_dec: torch.Tensor,
                  bias: Optional[torch.Tensor] = None,
                  residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """out[t] = sum_j values[t, j] * w_dec[indices[t, j]] (+ bias) (+ residual[t]).

    ``values`` [T, k], ``indices`` [T, k] int32/int64 (-1 entries skipped), ``w_dec``
    [F, D], contiguous ``bias`` [D], ``residual`` [T, D]; every 2-D operand with a
    contiguous last dim. Returns out [T, D] in ``residual``'s dtype if given, else
    ``w_dec``'s. Indices must be < F (not checked: no host sync).
    """
    T, K = values.shape
    D = w_dec.shape[1]
    out = torch.empty((T, D), dtype=residual.dtype if residual is not None else w_dec.dtype,
                      device=w_dec.device)
    if T == 0 or D == 0:
        return out
    # Small T: narrow D slices so that enough programs share the gather.
    block_d = min(triton.next_power_of_2(D), 128 if T < 64 else 512)
    block_k = min(max(triton.next_power_of_2(K), 1), 16 if block_d > 128 else 32)
    grid = (T, triton.cdiv(D, block_d))
    _sparse_decode_kernel[grid](
        values, indices, w_dec, bias if bias is not None else out,
        residual if residual is not None else out, out,
        K, D, values.stride(0), indices.stride(0), w_dec.stride(0),
        residual.stride(0) if residual is not None else 0, out.stride(0),
        HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None,
        BLOCK_K=block_k, BLOCK_D=block_d, num_warps=4)
    return out

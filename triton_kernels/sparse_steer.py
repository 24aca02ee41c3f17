"""In-place steering of hidden rows: selected SAE features, or dense directions.

    sparse: f_i = relu(pre_i) * (pre_i > threshold_i),
            pre_i = enc_rows[i] . (h - input_offset) + enc_bias[i]
            h += sum_i (edit(f_i, c[row, i]) - f_i) * dec_rows[i]
    dense:  h += sum_k a_k * u_k,   a_k = c[row, k]              (add)
                                    a_k = c[row, k] - h . u_k    (project)

One program owns BLOCK_T whole rows. When D fits in one block (D <= MAX_SINGLE_PASS_D)
the rows are read from global memory once and kept in registers, and the program
walks the S features (or K directions) one at a time: each feature's change depends
only on its own pre-activation, so encode, edit and decode fuse into one loop and
nothing of size S is ever materialised. Wider rows take two passes over D: first
every pre-activation (or h . u) into a [BLOCK_T, S] accumulator, then the update.
All math is fp32; each steered row is rounded once on store, and rows with
row_index == -1 are never stored, so they stay bit-identical.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

# Widest row kept whole in registers (elements); tests lower it to reach the
# two-pass path at small shapes.
MAX_SINGLE_PASS_D = 8192
# Elements of one register tile [BLOCK_T, BLOCK_D] in the single-pass path.
TILE_ELEMS = 4096

# FeatureEdit codes (pysteer.ops.modes), part of the kernel ABI.
_ADD = tl.constexpr(0)
_SET = tl.constexpr(1)
_SCALE = tl.constexpr(2)
_ABLATE = tl.constexpr(3)
# DenseEdit.PROJECT
_PROJECT = tl.constexpr(1)


@triton.jit
def _edit_delta(f, c, mode):
    """f' - f for FeatureEdit ``mode``, elementwise; computed as the reference does."""
    edited = tl.where(mode == _ADD, f + c, f)
    edited = tl.where(mode == _SET, c, edited)
    edited = tl.where(mode == _SCALE, f * c, edited)
    edited = tl.where(mode == _ABLATE, 0.0, edited)
    return edited - f


@triton.jit
def _rows(row_ptr, T, BLOCK_T: tl.constexpr):
    """Row ids of this program, their coefficient row (clamped) and steered mask."""
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cfg = tl.load(row_ptr + rows, mask=rows < T, other=-1)
    steered = cfg >= 0
    return rows.to(tl.int64), tl.where(steered, cfg, 0).to(tl.int64), steered


@triton.jit
def _sparse_steer_kernel(h_ptr, row_ptr, coef_ptr, enc_ptr, bias_ptr, thr_ptr, dec_ptr,
                         off_ptr, mode_ptr, acts_ptr,
                         T, D, S, stride_h, stride_c, stride_enc, stride_dec, stride_a,
                         HAS_ACTS: tl.constexpr, SINGLE_PASS: tl.constexpr,
                         BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr):
    rows, cfg, steered = _rows(row_ptr, T, BLOCK_T)
    # A block of untouched rows (e.g. the prompt when only generated tokens are
    # steered) skips the weight reads too.
    if tl.max(steered.to(tl.int32)) > 0:
        if SINGLE_PASS:
            cols = tl.arange(0, BLOCK_D)
            col_ok = cols < D
            mask = steered[:, None] & col_ok[None, :]
            h_ptrs = h_ptr + rows[:, None] * stride_h + cols[None, :]
            h = tl.load(h_ptrs, mask=mask, other=0.0)
            if not HAS_ACTS:
                x = h.to(tl.float32) - tl.load(off_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
            update = tl.zeros([BLOCK_T, BLOCK_D], tl.float32)
            for s in range(S):
                if HAS_ACTS:
                    f = tl.load(acts_ptr + rows * stride_a + s, mask=steered, other=0.0).to(tl.float32)
                else:
                    e = tl.load(enc_ptr + s * stride_enc + cols, mask=col_ok, other=0.0).to(tl.float32)
                    pre = tl.sum(x * e[None, :], axis=1) + tl.load(bias_ptr + s).to(tl.float32)
                    f = tl.where(pre > tl.load(thr_ptr + s).to(tl.float32), tl.maximum(pre, 0.0), 0.0)
                c = tl.load(coef_ptr + cfg * stride_c + s, mask=steered, other=0.0).to(tl.float32)
                delta = _edit_delta(f, c, tl.load(mode_ptr + s))
                dec = tl.load(dec_ptr + s * stride_dec + cols, mask=col_ok, other=0.0).to(tl.float32)
                update += delta[:, None] * dec[None, :]
            tl.store(h_ptrs, (h.to(tl.float32) + update).to(h.dtype), mask=mask)
        else:
            feats = tl.arange(0, BLOCK_S)
            feat_ok = feats < S
            if HAS_ACTS:
                f = tl.load(acts_ptr + rows[:, None] * stride_a + feats[None, :],
                            mask=steered[:, None] & feat_ok[None, :], other=0.0).to(tl.float32)
            else:
                pre = tl.zeros([BLOCK_T, BLOCK_S], tl.float32)
                for d0 in range(0, D, BLOCK_D):
                    cols = d0 + tl.arange(0, BLOCK_D)
                    col_ok = cols < D
                    h = tl.load(h_ptr + rows[:, None] * stride_h + cols[None, :],
                                mask=steered[:, None] & col_ok[None, :], other=0.0)
                    off = tl.load(off_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
                    x = h.to(tl.float32) - off[None, :]
                    e = tl.load(enc_ptr + feats[:, None] * stride_enc + cols[None, :],
                                mask=feat_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
                    pre += tl.sum(x[:, None, :] * e[None, :, :], axis=2)
                pre += tl.load(bias_ptr + feats, mask=feat_ok, other=0.0).to(tl.float32)[None, :]
                thr = tl.load(thr_ptr + feats, mask=feat_ok, other=0.0).to(tl.float32)
                f = tl.where(pre > thr[None, :], tl.maximum(pre, 0.0), 0.0)
            c = tl.load(coef_ptr + cfg[:, None] * stride_c + feats[None, :],
                        mask=steered[:, None] & feat_ok[None, :], other=0.0).to(tl.float32)
            modes = tl.load(mode_ptr + feats, mask=feat_ok, other=_ADD)
            # Padded features have c = 0 under ADD, so their delta is exactly 0.
            delta = _edit_delta(f, c, modes[None, :])
            for d0 in range(0, D, BLOCK_D):
                cols = d0 + tl.arange(0, BLOCK_D)
                col_ok = cols < D
                mask = steered[:, None] & col_ok[None, :]
                h_ptrs = h_ptr + rows[:, None] * stride_h + cols[None, :]
                h = tl.load(h_ptrs, mask=mask, other=0.0)
                dec = tl.load(dec_ptr + feats[:, None] * stride_dec + cols[None, :],
                              mask=feat_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
                update = tl.sum(delta[:, :, None] * dec[None, :, :], axis=1)
                tl.store(h_ptrs, (h.to(tl.float32) + update).to(h.dtype), mask=mask)


@triton.jit
def _dense_steer_kernel(h_ptr, row_ptr, coef_ptr, dir_ptr, mode_ptr,
                        T, D, K, stride_h, stride_c, stride_u,
                        SINGLE_PASS: tl.constexpr,
                        BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr):
    rows, cfg, steered = _rows(row_ptr, T, BLOCK_T)
    if tl.max(steered.to(tl.int32)) > 0:
        if SINGLE_PASS:
            cols = tl.arange(0, BLOCK_D)
            col_ok = cols < D
            mask = steered[:, None] & col_ok[None, :]
            h_ptrs = h_ptr + rows[:, None] * stride_h + cols[None, :]
            h = tl.load(h_ptrs, mask=mask, other=0.0)
            h32 = h.to(tl.float32)
            update = tl.zeros([BLOCK_T, BLOCK_D], tl.float32)
            for k in range(K):
                u = tl.load(dir_ptr + k * stride_u + cols, mask=col_ok, other=0.0).to(tl.float32)
                c = tl.load(coef_ptr + cfg * stride_c + k, mask=steered, other=0.0).to(tl.float32)
                # Every direction projects the incoming h, not h after earlier ones.
                amount = tl.where(tl.load(mode_ptr + k) == _PROJECT,
                                  c - tl.sum(h32 * u[None, :], axis=1), c)
                update += amount[:, None] * u[None, :]
            tl.store(h_ptrs, (h32 + update).to(h.dtype), mask=mask)
        else:
            dirs = tl.arange(0, BLOCK_K)
            dir_ok = dirs < K
            dots = tl.zeros([BLOCK_T, BLOCK_K], tl.float32)
            for d0 in range(0, D, BLOCK_D):
                cols = d0 + tl.arange(0, BLOCK_D)
                col_ok = cols < D
                h = tl.load(h_ptr + rows[:, None] * stride_h + cols[None, :],
                            mask=steered[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
                u = tl.load(dir_ptr + dirs[:, None] * stride_u + cols[None, :],
                            mask=dir_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
                dots += tl.sum(h[:, None, :] * u[None, :, :], axis=2)
            c = tl.load(coef_ptr + cfg[:, None] * stride_c + dirs[None, :],
                        mask=steered[:, None] & dir_ok[None, :], other=0.0).to(tl.float32)
            modes = tl.load(mode_ptr + dirs, mask=dir_ok, other=0)
            amount = tl.where(modes[None, :] == _PROJECT, c - dots, c)
            for d0 in range(0, D, BLOCK_D):
                cols = d0 + tl.arange(0, BLOCK_D)
                col_ok = cols < D
                mask = steered[:, None] & col_ok[None, :]
                h_ptrs = h_ptr + rows[:, None] * stride_h + cols[None, :]
                h = tl.load(h_ptrs, mask=mask, other=0.0)
                u = tl.load(dir_ptr + dirs[:, None] * stride_u + cols[None, :],
                            mask=dir_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
                update = tl.sum(amount[:, :, None] * u[None, :, :], axis=1)
                tl.store(h_ptrs, (h.to(tl.float32) + update).to(h.dtype), mask=mask)


def _launch_config(T: int, D: int, S: int) -> dict:
    """Block sizes and warps for a [T, D] hidden and S features or directions."""
    block_s = max(2, triton.next_power_of_2(S))
    if D <= MAX_SINGLE_PASS_D:
        block_d = triton.next_power_of_2(D)
        block_t = max(1, min(TILE_ELEMS // block_d, triton.next_power_of_2(T)))
        elems = block_t * block_d
        return dict(SINGLE_PASS=True, BLOCK_T=block_t, BLOCK_D=block_d, BLOCK_S=block_s,
                    num_warps=max(1, min(16, elems // 512)))
    # Two passes: the [BLOCK_T, BLOCK_S, BLOCK_D] products stay near 8K elements.
    block_t = 2 if T > 1 and block_s <= 64 else 1
    block_d = max(16, 8192 // (block_t * block_s))
    return dict(SINGLE_PASS=False, BLOCK_T=block_t, BLOCK_D=block_d, BLOCK_S=block_s,
                num_warps=8)


def sparse_steer_(hidden: torch.Tensor, row_index: torch.Tensor, coeffs: torch.Tensor,
                  enc_rows: torch.Tensor, enc_bias: torch.Tensor, threshold: torch.Tensor,
                  dec_rows: torch.Tensor, input_offset: torch.Tensor, edit_modes: torch.Tensor,
                  feature_acts: Optional[torch.Tensor] = None) -> None:
    """h += sum_i (f'_i - f_i) * dec_rows[i] in place, for tokens with row_index >= 0.

    ``hidden`` [T, D] fp32/fp16/bf16, ``row_index`` [T] int32 (-1 = untouched),
    ``coeffs`` [C, S] fp32, ``enc_rows``/``dec_rows`` [S, D], ``enc_bias``/``threshold``
    [S], ``input_offset`` [D], ``edit_modes`` [S] int8 (FeatureEdit). With
    ``feature_acts`` [T, S] the encode is skipped (enc_rows, enc_bias, threshold and
    input_offset are then unused). ``hidden`` may be row-strided (its last dim
    contiguous); every other operand is contiguous.
    """
    T, D = hidden.shape
    S = dec_rows.shape[0]
    if feature_acts is None:
        acts, stride_a = dec_rows, 0
    else:
        enc_rows = enc_bias = threshold = input_offset = dec_rows  # unused placeholders
        acts, stride_a = feature_acts, feature_acts.stride(0)
    if T == 0 or S == 0:
        return
    cfg = _launch_config(T, D, S)
    grid = (triton.cdiv(T, cfg["BLOCK_T"]),)
    _sparse_steer_kernel[grid](
        hidden, row_index, coeffs, enc_rows, enc_bias, threshold, dec_rows, input_offset,
        edit_modes, acts, T, D, S, hidden.stride(0), coeffs.stride(0), enc_rows.stride(0),
        dec_rows.stride(0), stride_a, HAS_ACTS=feature_acts is not None, **cfg)


def dense_steer_(hidden: torch.Tensor, row_index: torch.Tensor, coeffs: torch.Tensor,
                 directions: torch.Tensor, dense_modes: torch.Tensor) -> None:
    """h += sum_k a_k * u_k in place, for tokens with row_index >= 0.

    a_k = c[row, k] (add) or c[row, k] - h . u_k (project, u_k unit length), with every
    direction reading the incoming h. ``hidden`` [T, D], ``row_index`` [T] int32,
    ``coeffs`` [C, K] fp32, ``directions`` [K, D], ``dense_modes`` [K] int8 (DenseEdit).
    """
    T, D = hidden.shape
    K = directions.shape[0]
    if T == 0 or K == 0:
        return
    cfg = _launch_config(T, D, K)
    cfg["BLOCK_K"] = cfg.pop("BLOCK_S")
    grid = (triton.cdiv(T, cfg["BLOCK_T"]),)
    _dense_steer_kernel[grid](hidden, row_index, coeffs, directions, dense_modes,
                              T, D, K, hidden.stride(0), coeffs.stride(0), directions.stride(0),
                              **cfg)

"""Fused SAE encode + top-k: the [T, F] pre-activation matrix never reaches memory.

    pre[t, f] = ((x[t] - input_offset) @ w_enc[:, f] + b_enc[f]) * feature_scale[f]
    returns the k largest pre[t, :] per row: values [T, k] fp32 (descending), indices
    [T, k] int64

Stage 1 (``_encode_topk_kernel``), grid (T blocks, F chunks): each program computes
[BLOCK_T, BLOCK_F] tiles of ``x @ w_enc`` with ``tl.dot`` (fp32 accumulation) for the
tiles of its F chunk, and its epilogue folds each tile into a running top-k per row
(see ``_topk_keys``). It writes k candidates per (row, chunk), or the final answer
when there is a single chunk. Stage 2 (``_merge_topk_kernel``) merges each row's
n_chunks * k candidates the same way. Chunks exist only to fill the GPU when T is small;
the candidate buffer is at most T * n_tiles * k, a fraction k / BLOCK_F of T * F.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._topk_keys import empty_keys, merge_topk, pack_keys, unpack_keys

# Tile sizes. BLOCK_F is raised to the next power of two of k when k is larger.
BLOCK_F = 128
BLOCK_D = 64
# Programs to aim for when splitting F into chunks; None: 4 per streaming
# multiprocessor. Tests lower it to force one chunk or raise it to force many.
TARGET_PROGRAMS: Optional[int] = None
# Candidates one merge program reads per step (over all its rows).
MERGE_BLOCK = 1024
# Bitonic tl.topk (True) or max-extraction (False); None: bitonic on GPUs only, as
# the interpreter is too slow with it (see _topk_keys).
USE_BITONIC: Optional[bool] = None


@triton.jit
def _encode_topk_kernel(x_ptr, w_ptr, b_ptr, off_ptr, scale_ptr, cand_ptr, val_ptr, idx_ptr,
                        T, D, F, K, tiles_per_chunk, n_chunks, stride_x, stride_w,
                        HAS_OFFSET: tl.constexpr, HAS_SCALE: tl.constexpr,
                        DOT_FP32: tl.constexpr, FINAL: tl.constexpr,
                        BLOCK_T: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr,
                        K_POW2: tl.constexpr, BITONIC: tl.constexpr):
    pid_t = tl.program_id(0)
    chunk = tl.program_id(1)
    rows = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < T
    f_start = chunk * tiles_per_chunk * BLOCK_F
    f_end = tl.minimum(f_start + tiles_per_chunk * BLOCK_F, F)

    running = empty_keys(BLOCK_T, K_POW2)
    for f0 in range(f_start, f_end, BLOCK_F):
        cols = f0 + tl.arange(0, BLOCK_F)
        col_ok = cols < F
        acc = tl.zeros([BLOCK_T, BLOCK_F], tl.float32)
        off_acc = tl.zeros([16, BLOCK_F], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            d_ok = ds < D
            x = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride_x + ds[None, :],
                        mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            w = tl.load(w_ptr + ds[:, None].to(tl.int64) * stride_w + cols[None, :],
                        mask=d_ok[:, None] & col_ok[None, :], other=0.0)
            if DOT_FP32:
                # fp32 (or mixed) inputs: subtracting while loading is exact, and
                # "ieee" keeps TF32 from changing which features make the top-k.
                x = x.to(tl.float32)
                if HAS_OFFSET:
                    x -= tl.load(off_ptr + ds, mask=d_ok, other=0.0).to(tl.float32)[None, :]
                acc = tl.dot(x, w.to(tl.float32), acc, input_precision="ieee")
            else:
                # 16-bit inputs: products are exact in fp32, so x @ W - offset @ W
                # loses nothing, whereas rounding x - offset to 16 bits would. offset @ W
                # runs on the tensor cores too, as a 16-row tile whose rows 0 and 1 hold
                # the offset split into 16-bit high and low parts (low = 0 when the
                # offset is 16-bit itself); a CUDA-core reduction here doubled the
                # kernel's register use.
                acc = tl.dot(x, w, acc)
                if HAS_OFFSET:
                    off = tl.load(off_ptr + ds, mask=d_ok, other=0.0).to(tl.float32)
                    hi = off.to(w.dtype)
                    lo = (off - hi.to(tl.float32)).to(w.dtype)
                    split_row = tl.arange(0, 16)[:, None]
                    off_tile = tl.where(split_row == 0, hi[None, :],
                                        tl.where(split_row == 1, lo[None, :], 0.0))
                    off_acc = tl.dot(off_tile.to(w.dtype), w, off_acc)
        pre = acc - tl.sum(off_acc, axis=0)[None, :]
        pre += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        if HAS_SCALE:
            pre *= tl.load(scale_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        pre = tl.where(col_ok[None, :], pre, float("-inf"))
        running = merge_topk(running, pack_keys(pre, cols), K_POW2, BITONIC)

    j = tl.arange(0, K_POW2)
    out_mask = row_ok[:, None] & (j < K)[None, :]
    if FINAL:
        values, indices = unpack_keys(running)
        out = rows[:, None].to(tl.int64) * K + j[None, :]
        tl.store(val_ptr + out, values, mask=out_mask)
        tl.store(idx_ptr + out, indices, mask=out_mask)
    else:
        out = (rows[:, None].to(tl.int64) * n_chunks + chunk) * K + j[None, :]
        tl.store(cand_ptr + out, running, mask=out_mask)


@triton.jit
def _merge_topk_kernel(cand_ptr, val_ptr, idx_ptr, T, N, K,
                       BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, K_POW2: tl.constexpr,
                       BITONIC: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < T
    rows = rows.to(tl.int64)
    running = empty_keys(BLOCK_R, K_POW2)
    for n0 in range(0, N, BLOCK_N):
        offs = n0 + tl.arange(0, BLOCK_N)
        ok = row_ok[:, None] & (offs < N)[None, :]
        keys = tl.load(cand_ptr + rows[:, None] * N + offs[None, :], mask=ok, other=0)
        keys = tl.where(ok, keys, empty_keys(BLOCK_R, BLOCK_N))
        running = merge_topk(running, keys, K_POW2, BITONIC)
    values, indices = unpack_keys(running)
    j = tl.arange(0, K_POW2)[None, :]
    mask = row_ok[:, None] & (j < K)
    tl.store(val_ptr + rows[:, None] * K + j, values, mask=mask)
    tl.store(idx_ptr + rows[:, None] * K + j, indices, mask=mask)


def _target_programs(device: torch.device) -> int:
    if TARGET_PROGRAMS is not None:
        return TARGET_PROGRAMS
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def encode_topk(x: torch.Tensor, w_enc: torch.Tensor, b_enc: torch.Tensor,
                input_offset: Optional[torch.Tensor], feature_scale: Optional[torch.Tensor],
                k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of pre = ((x - input_offset) @ w_enc + b_enc) * feature_scale per row.

    ``x`` [T, D], ``w_enc`` [D, F] (F < 2**31: indices are packed into 31 bits), both
    with a contiguous last dim, contiguous ``b_enc`` [F], ``input_offset`` [D] (None: no
    offset, which skips its fold) and ``feature_scale`` [F] or None; 1 <= k <= min(F, 256)
    (the registry sends larger k to the reference). Returns (values [T, k] fp32 sorted
    descending, indices [T, k] int64). Ties may be broken differently from
    ``torch.topk``. Allocations depend on shapes only.
    """
    T, D = x.shape
    F = w_enc.shape[1]

    values = torch.empty((T, k), dtype=torch.float32, device=x.device)
    indices = torch.empty((T, k), dtype=torch.int64, device=x.device)
    if T == 0:
        return values, indices

    k_pow2 = max(2, triton.next_power_of_2(k))
    block_f = max(BLOCK_F, k_pow2)
    dot_fp32 = x.dtype == torch.float32 or x.dtype != w_enc.dtype
    # The bitonic top-k of a [BLOCK_T, BLOCK_F] int64 tile is register-hungry: per
    # ptxas for sm_90, 64 rows (or fp32 operands at 32) hit the 255-register cap.
    block_t = 16 if T <= 16 or k_pow2 >= 128 or dot_fp32 else 32
    if x.device.type != "cuda":
        block_t = max(16, min(64, triton.next_power_of_2(T)))  # interpreter: fewer programs
    t_blocks = triton.cdiv(T, block_t)
    n_tiles = triton.cdiv(F, block_f)
    wanted_chunks = max(1, min(n_tiles, triton.cdiv(_target_programs(x.device), t_blocks)))
    tiles_per_chunk = triton.cdiv(n_tiles, wanted_chunks)
    n_chunks = triton.cdiv(n_tiles, tiles_per_chunk)
    final = n_chunks == 1
    cand = values if final else torch.empty((T, n_chunks, k), dtype=torch.int64, device=x.device)
    bitonic = x.device.type == "cuda" if USE_BITONIC is None else USE_BITONIC

    _encode_topk_kernel[(t_blocks, n_chunks)](
        x, w_enc, b_enc, input_offset if input_offset is not None else b_enc,
        feature_scale if feature_scale is not None else b_enc, cand, values, indices,
        T, D, F, k, tiles_per_chunk, n_chunks, x.stride(0), w_enc.stride(0),
        HAS_OFFSET=input_offset is not None, HAS_SCALE=feature_scale is not None,
        DOT_FP32=dot_fp32, FINAL=final, BLOCK_T=block_t, BLOCK_F=block_f, BLOCK_D=BLOCK_D,
        K_POW2=k_pow2, BITONIC=bitonic, num_warps=8)
    if not final:
        n = n_chunks * k
        block_n = max(k_pow2, min(MERGE_BLOCK, triton.next_power_of_2(n)))
        # Several rows per program when each has few candidates.
        block_r = max(1, min(triton.next_power_of_2(T), MERGE_BLOCK // block_n))
        _merge_topk_kernel[(triton.cdiv(T, block_r),)](
            cand, values, indices, T, n, k, BLOCK_R=block_r, BLOCK_N=block_n, K_POW2=k_pow2,
            BITONIC=bitonic, num_warps=4)
    return values, indices

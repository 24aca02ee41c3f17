// Fused SAE encode + per-row top-k, without ever writing the [T, F] pre-activations.
//
//   pre[t, f] = ((x[t] - offset) . W_enc[:, f] + b_enc[f]) * scale[f]
//   out[t]    = the k largest pre[t, :], sorted descending, with their feature indices
//
// Three launches, all sized from shapes alone (so CUDA graphs can capture them):
//  1. prep:  xprep = W-typed (x - offset), zero-padded to [t_pad, d_pad] so every GEMM
//            operand tile is an aligned, in-bounds 16-byte cp.async.
//  2. gemm:  a CTA owns BLOCK_T rows and a slice of F (tiles_per_slice tiles of 128
//            features). Per tile: a kStages-deep cp.async pipeline feeds tensor cores
//            (WMMA, fp16/bf16 in, fp32 accumulate) or a SIMT fp32 micro-kernel; the
//            tile goes to shared memory, gets bias and scale, and each row's values
//            above that row's running threshold are appended to a per-row candidate
//            buffer of 2*kp. A full buffer is bitonic-sorted and cut back to k, which
//            raises the threshold. At the end each CTA writes its k best per row to
//            the workspace [T, n_slices, k].
//  3. merge: one block per row radix-selects the k-th largest of the n_slices*k
//            candidates (held in shared memory as order-preserving uint32 keys),
//            gathers the winners deterministically and sorts them.
#pragma once

#include <mma.h>

#include <algorithm>
#include <cmath>

#include "common.cuh"
#include "topk_merge.cuh"

namespace pysteer {
namespace topk {

constexpr int kBlockF = 128;         // features per tile
constexpr int kThreads = 256;        // GEMM CTA: 8 warps
constexpr int kStages = 4;           // cp.async pipeline depth
constexpr int kTargetCtas = 512;     // enough CTAs to fill a large GPU a few times over
constexpr int kTPad = 64;  // xprep rows padded to this (the largest BLOCK_T)
constexpr int kDPad = 32;  // xprep columns padded to this (the largest BK)

template <typename W>
struct Tile {
  static constexpr int kBK = 64 / static_cast<int>(sizeof(W));  // 64 bytes of K per stage
  static constexpr int kPad = 16 / static_cast<int>(sizeof(W));  // 16 bytes against bank conflicts
  static constexpr int kLDA = kBK + kPad;
  static constexpr int kLDB = kBlockF + kPad;
  static constexpr int kLDC = kBlockF + 4;
  static constexpr int kEPC = 16 / static_cast<int>(sizeof(W));  // elements per 16-byte chunk
};

// Everything about a launch that depends only on shapes.
struct Plan {
  int block_t = 16, kp = 32, cap = 64;
  int n_tblocks = 0, n_ftiles = 0, tiles_per_slice = 0, n_slices = 0;
  int64_t t_pad = 0, d_pad = 0;
  size_t vals_offset = 0, idx_offset = 0, workspace_bytes = 0;
  size_t gemm_smem = 0, merge_smem = 0;
};

inline int next_pow2(int x) {
  int p = 1;
  while (p < x) p <<= 1;
  return p;
}

inline size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

template <typename W, int BT>
constexpr size_t gemm_front_bytes() {
  using Tl = Tile<W>;
  constexpr size_t pipe = size_t(kStages) * (BT * Tl::kLDA + Tl::kBK * Tl::kLDB) * sizeof(W);
  constexpr size_t ctile = size_t(BT) * Tl::kLDC * sizeof(float);
  return ((pipe > ctile ? pipe : ctile) + 127) / 128 * 128;
}

inline Plan make_plan(int64_t T, int64_t D, int64_t F, int k, int w_size) {
  Plan p;
  p.kp = next_pow2(k < 32 ? 32 : k);
  p.cap = 2 * p.kp;
  // 64 rows per CTA for prefill when the candidate buffers fit; 16 otherwise.
  p.block_t = (T > 16 && p.kp <= 64) ? 64 : 16;
  p.t_pad = (T + kTPad - 1) / kTPad * kTPad;
  p.d_pad = (D + kDPad - 1) / kDPad * kDPad;
  if (T <= 0 || F <= 0) return p;
  p.n_tblocks = static_cast<int>((T + p.block_t - 1) / p.block_t);
  p.n_ftiles = static_cast<int>((F + kBlockF - 1) / kBlockF);
  const int max_slices = std::min<int64_t>(p.n_ftiles, kMergeCapacity / p.kp);
  int slices = (kTargetCtas + p.n_tblocks - 1) / p.n_tblocks;
  slices = std::max(1, std::min(slices, max_slices));
  p.tiles_per_slice = (p.n_ftiles + slices - 1) / slices;
  p.n_slices = (p.n_ftiles + p.tiles_per_slice - 1) / p.tiles_per_slice;

  const size_t cand = size_t(T) * p.n_slices * k * 4;
  p.vals_offset = align_up(size_t(p.t_pad) * p.d_pad * w_size, 256);
  p.idx_offset = align_up(p.vals_offset + cand, 256);
  p.workspace_bytes = p.idx_offset + cand;

  size_t front;
  if (w_size == 4) front = p.block_t == 64 ? gemm_front_bytes<float, 64>() : gemm_front_bytes<float, 16>();
  else front = p.block_t == 64 ? gemm_front_bytes<__half, 64>() : gemm_front_bytes<__half, 16>();
  p.gemm_smem = front + size_t(p.block_t) * p.cap * 8 + size_t(p.block_t) * 8;
  p.merge_smem = size_t(p.n_slices) * k * 4;
  return p;
}

struct Params {
  const void* xprep;   // [t_pad, d_pad]  W
  const void* w;       // [D, F]          W
  VecArg bias;         // [F], absent = 0
  VecArg scale;        // [F], absent = 1
  float* cand_vals;    // [T, n_slices, k]
  int32_t* cand_idx;   // [T, n_slices, k]
  int64_t T, D, F, d_pad;
  int k, cap, tiles_per_slice, n_ftiles, n_slices;
  bool vec_b;  // F % (16 / sizeof(W)) == 0 and w 16-byte aligned
};

// ---------------------------------------------------------------- prep

template <typename X, typename W>
__global__ void prep_kernel(const X* __restrict__ x, const VecArg offset, W* __restrict__ out,
                            int64_t T, int64_t D, int64_t d_pad) {
  const int64_t t = blockIdx.x;
  for (int64_t d = threadIdx.x; d < d_pad; d += blockDim.x) {
    float v = 0.f;
    if (t < T && d < D) v = to_float(x[t * D + d]) - (offset.ptr ? vec_at(offset, d) : 0.f);
    out[t * d_pad + d] = from_float<W>(v);
  }
}

// ---------------------------------------------------------------- gemm + running top-k

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int n = valid ? 16 : 0;  // 0 bytes read: the destination is zero-filled
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Sort a row's candidate buffer and keep its k best; returns the new count and threshold.
__device__ inline void compact_row(float* cv, int32_t* ci, int cap, int k, int lane, int& cnt, float& thr) {
  for (int i = cnt + lane; i < cap; i += 32) {
    cv[i] = -INFINITY;
    ci[i] = -1;
  }
  __syncwarp();
  warp_bitonic_sort_desc(cv, ci, cap, lane);
  cnt = cnt < k ? cnt : k;
  thr = cnt >= k ? cv[k - 1] : -INFINITY;
  __syncwarp();
}

template <typename W, int BT>
__global__ void __launch_bounds__(kThreads) gemm_topk_kernel(const Params p) {
  using Tl = Tile<W>;
  constexpr int BK = Tl::kBK, LDA = Tl::kLDA, LDB = Tl::kLDB, LDC = Tl::kLDC, EPC = Tl::kEPC;
  constexpr int kA = BT * LDA, kB = BK * LDB;  // elements per stage
  extern __shared__ __align__(128) unsigned char smem_raw[];
  W* a_s = reinterpret_cast<W*>(smem_raw);
  W* b_s = a_s + kStages * kA;
  float* c_s = reinterpret_cast<float*>(smem_raw);  // aliases the pipeline between tiles
  float* cand_v = reinterpret_cast<float*>(smem_raw + gemm_front_bytes<W, BT>());
  int32_t* cand_i = reinterpret_cast<int32_t*>(cand_v + BT * p.cap);
  int* cnt_s = reinterpret_cast<int*>(cand_i + BT * p.cap);
  float* thr_s = reinterpret_cast<float*>(cnt_s + BT);

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int64_t t0 = static_cast<int64_t>(blockIdx.y) * BT;
  const int tile_begin = blockIdx.x * p.tiles_per_slice;
  const int tile_end = min(tile_begin + p.tiles_per_slice, p.n_ftiles);
  const int nk = static_cast<int>(p.d_pad / BK);
  const W* xp = static_cast<const W*>(p.xprep);
  const W* w = static_cast<const W*>(p.w);

  for (int r = tid; r < BT; r += kThreads) {
    cnt_s[r] = 0;
    thr_s[r] = -INFINITY;
  }

  for (int tile = tile_begin; tile < tile_end; ++tile) {
    const int64_t f0 = static_cast<int64_t>(tile) * kBlockF;

    auto load_stage = [&](int stage, int64_t k0) {
      W* a_dst = a_s + stage * kA;
      for (int c = tid; c < BT * 4; c += kThreads) {  // 4 chunks of 16 bytes per row
        const int r = c >> 2, cc = c & 3;
        cp_async16(a_dst + r * LDA + cc * EPC, xp + (t0 + r) * p.d_pad + k0 + cc * EPC, true);
      }
      W* b_dst = b_s + stage * kB;
      constexpr int kCPR = kBlockF / EPC;  // chunks per B row
      for (int c = tid; c < BK * kCPR; c += kThreads) {
        const int kr = c / kCPR, cc = c % kCPR;
        const int64_t kg = k0 + kr, col = f0 + cc * EPC;
        W* dst = b_dst + kr * LDB + cc * EPC;
        if (p.vec_b) {
          const bool ok = kg < p.D && col < p.F;
          cp_async16(dst, ok ? static_cast<const void*>(w + kg * p.F + col) : static_cast<const void*>(w), ok);
        } else {
#pragma unroll
          for (int e = 0; e < EPC; ++e)
            dst[e] = (kg < p.D && col + e < p.F) ? w[kg * p.F + col + e] : from_float<W>(0.f);
        }
      }
    };

#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
      if (s < nk) load_stage(s, static_cast<int64_t>(s) * BK);
      cp_async_commit();
    }

    if constexpr (sizeof(W) == 2) {
      using namespace nvcuda;
      constexpr int WARPS_M = BT == 64 ? 2 : 1, WARPS_N = 8 / WARPS_M;
      constexpr int FM = BT / 16 / WARPS_M, FN = kBlockF / 16 / WARPS_N;
      const int wm = warp / WARPS_N, wn = warp % WARPS_N;
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[FM][FN];
#pragma unroll
      for (int i = 0; i < FM; ++i)
#pragma unroll
        for (int j = 0; j < FN; ++j) wmma::fill_fragment(acc[i][j], 0.f);

      for (int kt = 0; kt < nk; ++kt) {
        cp_async_wait<kStages - 2>();
        __syncthreads();
        const int nxt = kt + kStages - 1;
        if (nxt < nk) load_stage(nxt % kStages, static_cast<int64_t>(nxt) * BK);
        cp_async_commit();
        const W* a_cur = a_s + (kt % kStages) * kA;
        const W* b_cur = b_s + (kt % kStages) * kB;
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, W, wmma::row_major> fa[FM];
          wmma::fragment<wmma::matrix_b, 16, 16, 16, W, wmma::row_major> fb[FN];
#pragma unroll
          for (int i = 0; i < FM; ++i)
            wmma::load_matrix_sync(fa[i], a_cur + (wm * FM * 16 + i * 16) * LDA + kk, LDA);
#pragma unroll
          for (int j = 0; j < FN; ++j)
            wmma::load_matrix_sync(fb[j], b_cur + kk * LDB + wn * FN * 16 + j * 16, LDB);
#pragma unroll
          for (int i = 0; i < FM; ++i)
#pragma unroll
            for (int j = 0; j < FN; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
      }
      cp_async_wait<0>();
      __syncthreads();
#pragma unroll
      for (int i = 0; i < FM; ++i)
#pragma unroll
        for (int j = 0; j < FN; ++j)
          wmma::store_matrix_sync(c_s + (wm * FM * 16 + i * 16) * LDC + wn * FN * 16 + j * 16,
                                  acc[i][j], LDC, wmma::mem_row_major);
    } else {
      // fp32: exact SIMT FMA (no TF32), 16x16 threads, each RM rows x 8 columns.
      constexpr int RM = BT / 16;
      const int tx = tid & 15, ty = tid >> 4;
      float acc[RM][8];
#pragma unroll
      for (int r = 0; r < RM; ++r)
#pragma unroll
        for (int q = 0; q < 8; ++q) acc[r][q] = 0.f;

      for (int kt = 0; kt < nk; ++kt) {
        cp_async_wait<kStages - 2>();
        __syncthreads();
        const int nxt = kt + kStages - 1;
        if (nxt < nk) load_stage(nxt % kStages, static_cast<int64_t>(nxt) * BK);
        cp_async_commit();
        const float* a_cur = reinterpret_cast<const float*>(a_s + (kt % kStages) * kA);
        const float* b_cur = reinterpret_cast<const float*>(b_s + (kt % kStages) * kB);
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
          const float4 b0 = *reinterpret_cast<const float4*>(b_cur + kk * LDB + tx * 4);
          const float4 b1 = *reinterpret_cast<const float4*>(b_cur + kk * LDB + 64 + tx * 4);
          const float bv[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
          for (int r = 0; r < RM; ++r) {
            const float a = a_cur[(ty * RM + r) * LDA + kk];
#pragma unroll
            for (int q = 0; q < 8; ++q) acc[r][q] = fmaf(a, bv[q], acc[r][q]);
          }
        }
      }
      cp_async_wait<0>();
      __syncthreads();
#pragma unroll
      for (int r = 0; r < RM; ++r) {
        float* c = c_s + (ty * RM + r) * LDC;
        *reinterpret_cast<float4*>(c + tx * 4) = make_float4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]);
        *reinterpret_cast<float4*>(c + 64 + tx * 4) = make_float4(acc[r][4], acc[r][5], acc[r][6], acc[r][7]);
      }
    }
    __syncthreads();

    // Epilogue: bias, scale, and the running top-k; warp w owns rows w, w + 8, ...
    float bb[kBlockF / 32], ss[kBlockF / 32];
    bool ok[kBlockF / 32];
#pragma unroll
    for (int cc = 0; cc < kBlockF / 32; ++cc) {
      const int64_t col = f0 + cc * 32 + lane;
      ok[cc] = col < p.F;
      bb[cc] = ok[cc] && p.bias.ptr ? vec_at(p.bias, col) : 0.f;
      ss[cc] = ok[cc] && p.scale.ptr ? vec_at(p.scale, col) : 1.f;
    }
    for (int r = warp; r < BT; r += kThreads / 32) {
      if (t0 + r >= p.T) break;
      int cnt = cnt_s[r];
      float thr = thr_s[r];
      float* cv = cand_v + r * p.cap;
      int32_t* ci = cand_i + r * p.cap;
#pragma unroll
      for (int cc = 0; cc < kBlockF / 32; ++cc) {
        if (cnt + 32 > p.cap) compact_row(cv, ci, p.cap, p.k, lane, cnt, thr);
        float v = c_s[r * LDC + cc * 32 + lane] + bb[cc];
        if (p.scale.ptr) v *= ss[cc];
        const bool take = ok[cc] && v > thr;
        const unsigned m = __ballot_sync(0xffffffffu, take);
        if (take) {
          const int pos = cnt + __popc(m & ((1u << lane) - 1u));
          cv[pos] = v;
          ci[pos] = static_cast<int32_t>(f0 + cc * 32 + lane);
        }
        cnt += __popc(m);
      }
      __syncwarp();
      if (lane == 0) {
        cnt_s[r] = cnt;
        thr_s[r] = thr;
      }
    }
    __syncthreads();  // c_s aliases the next tile's pipeline
  }

  // Each row's k best of this slice, unsorted unless it had more than k.
  for (int r = warp; r < BT; r += kThreads / 32) {
    const int64_t t = t0 + r;
    if (t >= p.T) break;
    int cnt = cnt_s[r];
    float thr = thr_s[r];
    float* cv = cand_v + r * p.cap;
    int32_t* ci = cand_i + r * p.cap;
    if (cnt > p.k) compact_row(cv, ci, p.cap, p.k, lane, cnt, thr);
    const int64_t base = (t * p.n_slices + blockIdx.x) * p.k;
    for (int i = lane; i < p.k; i += 32) {
      p.cand_vals[base + i] = i < cnt ? cv[i] : -INFINITY;
      p.cand_idx[base + i] = i < cnt ? ci[i] : -1;
    }
  }
}

}  // namespace topk
}  // namespace pysteer

// Sparse (SAE feature) and dense steering of hidden rows, in place.
//
//   sparse:  pre_i = enc_i . (h - offset) + b_i,   f_i = relu(pre_i) * (pre_i > theta_i)
//            h    += sum_i (edit(f_i, c_i) - f_i) * dec_i
//   dense:   h    += sum_k a_k u_k,   a_k = c_k (add) | c_k - h.u_k (project)
//
// c comes from coeffs[row_index[t], :]; a row with row_index -1 is never written.
// One block owns ROWS token rows: it stages them in shared memory as fp32 (the only
// read of h from global memory), computes the S dot products with one warp per
// feature and a shuffle reduction, then streams the decoder rows once per block and
// writes each row back rounded once. ROWS > 1 amortises the weight reads over rows
// (prefill); ROWS = 1 gives the most blocks at decode.
#pragma once

#include "common.cuh"
#include "modes.cuh"

namespace pysteer {

struct SteerParams {
  void* hidden;               // [T, D]  X
  const int32_t* row_index;   // [T]
  const float* coeffs;        // [C, S]
  const void* enc_rows;       // [S, D]  W   (dense: the directions)
  const void* dec_rows;       // [S, D]  W   (dense: the directions)
  VecArg enc_bias;            // [S], absent = 0
  VecArg threshold;           // [S], absent = 0 (plain ReLU)
  VecArg input_offset;        // [D], absent = 0
  const int8_t* modes;        // [S]  FeatureEdit | DenseEdit
  const float* feature_acts;  // [T, S] or null: skip the encode
  int64_t T, D, C;
  int S;
  bool dense;
  bool vec;  // D % 8 == 0 and every [., D] pointer 16-byte aligned
};

__device__ __forceinline__ float apply_feature_edit(int mode, float f, float c) {
  switch (mode) {
    case kFeatureAdd: return f + c;
    case kFeatureSet: return c;
    case kFeatureScale: return f * c;
    case kFeatureAblate: return 0.f;
    default: return f;
  }
}

template <typename X, typename W, int ROWS>
__global__ void __launch_bounds__(512) steer_rows_kernel(const SteerParams p) {
  extern __shared__ float smem[];
  const int64_t D = p.D;
  const int S = p.S;
  float* h_s = smem;                  // [ROWS][D]
  float* delta_s = smem + ROWS * D;   // [ROWS][S]
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * ROWS;

  // Every thread reads the same few row indices: cheaper than a barrier.
  int cfg[ROWS];
  bool any = false;
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    const int64_t t = row0 + r;
    int c = t < p.T ? p.row_index[t] : -1;
    if (c >= p.C) c = -1;  // out-of-range rows are left alone rather than read out of bounds
    cfg[r] = c;
    any |= c >= 0;
  }
  if (!any) return;

  const int tid = threadIdx.x, nthreads = blockDim.x;
  const int warp = tid >> 5, lane = tid & 31, nwarps = nthreads >> 5;
  const int64_t nchunk = (D + 7) / 8;
  X* hid = static_cast<X*>(p.hidden);

  for (int64_t c = tid; c < nchunk; c += nthreads) {
    const int64_t d = c * 8;
    const int n = static_cast<int>(D - d < 8 ? D - d : 8);
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      if (cfg[r] < 0) continue;
      float v[8];
      load8_any(hid + (row0 + r) * D + d, n, p.vec, v);
      smem_store8(h_s + r * D + d, n, p.vec, v);
    }
  }
  __syncthreads();

  // One warp per feature / direction: dot products and the per-row change.
  const W* enc = static_cast<const W*>(p.enc_rows);
  for (int i = warp; i < S; i += nwarps) {
    const int mode = p.modes[i];
    const bool need_dot = p.dense ? mode == kDenseProject : p.feature_acts == nullptr;
    float dot[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) dot[r] = 0.f;
    if (need_dot) {
      const W* e = enc + static_cast<int64_t>(i) * D;
      for (int64_t c = lane; c < nchunk; c += 32) {
        const int64_t d = c * 8;
        const int n = static_cast<int>(D - d < 8 ? D - d : 8);
        float ev[8], ov[8];
        load8_any_ro(e + d, n, p.vec, ev);
        if (!p.dense && p.input_offset.ptr != nullptr) {
          vec_load8(p.input_offset, d, n, p.vec, ov);
        } else {
#pragma unroll
          for (int q = 0; q < 8; ++q) ov[q] = 0.f;
        }
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
          if (cfg[r] < 0) continue;
          float hv[8];
          smem_load8(h_s + r * D + d, n, p.vec, hv);
#pragma unroll
          for (int q = 0; q < 8; ++q) dot[r] = fmaf(hv[q] - ov[q], ev[q], dot[r]);
        }
      }
#pragma unroll
      for (int r = 0; r < ROWS; ++r) dot[r] = warp_sum(dot[r]);
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      if (lane != r) continue;
      float delta = 0.f;
      if (cfg[r] >= 0) {
        const float c = p.coeffs[static_cast<int64_t>(cfg[r]) * S + i];
        if (p.dense) {
          delta = mode == kDenseProject ? c - dot[r] : c;
        } else {
          float f;
          if (p.feature_acts != nullptr) {
            f = p.feature_acts[(row0 + r) * S + i];
          } else {
            const float pre = dot[r] + (p.enc_bias.ptr ? vec_at(p.enc_bias, i) : 0.f);
            const float theta = p.threshold.ptr ? vec_at(p.threshold, i) : 0.f;
            f = pre > theta ? fmaxf(pre, 0.f) : 0.f;
          }
          delta = apply_feature_edit(mode, f, c) - f;
        }
      }
      delta_s[r * S + i] = delta;
    }
  }
  __syncthreads();

  // h += delta @ dec, reading each decoder chunk once for all ROWS rows.
  const W* dec = static_cast<const W*>(p.dec_rows);
  for (int64_t c = tid; c < nchunk; c += nthreads) {
    const int64_t d = c * 8;
    const int n = static_cast<int>(D - d < 8 ? D - d : 8);
    float acc[ROWS][8];
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
      for (int q = 0; q < 8; ++q) acc[r][q] = 0.f;
#pragma unroll 4
    for (int i = 0; i < S; ++i) {
      float dl[ROWS];
      bool nonzero = false;
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        dl[r] = delta_s[r * S + i];
        nonzero |= dl[r] != 0.f;
      }
      if (!nonzero) continue;  // inactive feature under scale/ablate: skip its row
      float dv[8];
      load8_any_ro(dec + static_cast<int64_t>(i) * D + d, n, p.vec, dv);
#pragma unroll
      for (int r = 0; r < ROWS; ++r)
#pragma unroll
        for (int q = 0; q < 8; ++q) acc[r][q] = fmaf(dl[r], dv[q], acc[r][q]);
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      if (cfg[r] < 0) continue;
      float out[8];
      smem_load8(h_s + r * D + d, n, p.vec, out);
#pragma unroll
      for (int q = 0; q < 8; ++q) out[q] += acc[r][q];
      store8_any(hid + (row0 + r) * D + d, n, p.vec, out);
    }
  }
}

}  // namespace pysteer

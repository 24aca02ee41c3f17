// Sparse decode (embedding-bag with weights):
//
//   out[t] = sum_j values[t, j] * w_dec[indices[t, j]]  (+ bias)  (+ residual[t])
//
// Entries with index < 0 (or >= F) and zero weights are skipped. A block owns one
// row and a 256-wide slice of D: each lane gathers 8 contiguous elements (one
// 16-byte load for fp16/bf16), the 8 warps split the k gathers between them so
// several rows are in flight at once, and the partial sums meet in shared memory.
#pragma once

#include "common.cuh"

namespace pysteer {

constexpr int kDecodeWarps = 8;
constexpr int kDecodeSlice = 256;  // elements of D per block: 32 lanes x 8

struct DecodeParams {
  const float* values;     // [T, k]
  const int64_t* indices;  // [T, k]
  const void* w_dec;       // [F, D]  W
  VecArg bias;             // [D], absent = 0
  const void* residual;    // [T, D]  O, or null
  void* out;               // [T, D]  O
  int64_t T, k, F, D;
  bool vec;  // D % 8 == 0 and w_dec / residual / out 16-byte aligned
};

template <typename W, typename O>
__global__ void __launch_bounds__(kDecodeWarps * 32) sparse_decode_kernel(const DecodeParams p) {
  __shared__ __align__(16) float part[kDecodeWarps][kDecodeSlice];
  const int64_t t = blockIdx.x;
  const int64_t d0 = static_cast<int64_t>(blockIdx.y) * kDecodeSlice;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t d = d0 + lane * 8;
  const int n = d < p.D ? static_cast<int>(p.D - d < 8 ? p.D - d : 8) : 0;

  const float* vals = p.values + t * p.k;
  const int64_t* idx = p.indices + t * p.k;
  const W* w = static_cast<const W*>(p.w_dec);
  float acc[8];
#pragma unroll
  for (int q = 0; q < 8; ++q) acc[q] = 0.f;

  constexpr int kUnroll = 4;  // independent gathers in flight per warp
  for (int64_t j0 = warp; j0 < p.k; j0 += kDecodeWarps * kUnroll) {
    float v[kUnroll], row[kUnroll][8];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j = j0 + static_cast<int64_t>(u) * kDecodeWarps;
      const int64_t f = j < p.k ? idx[j] : -1;
      const bool ok = f >= 0 && f < p.F && n > 0;
      v[u] = ok ? vals[j] : 0.f;
      if (ok && v[u] != 0.f) {
        load8_any_ro(w + f * p.D + d, n, p.vec, row[u]);
      } else {
        v[u] = 0.f;
#pragma unroll
        for (int q = 0; q < 8; ++q) row[u][q] = 0.f;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int q = 0; q < 8; ++q) acc[q] = fmaf(v[u], row[u][q], acc[q]);
  }
  reinterpret_cast<float4*>(&part[warp][lane * 8])[0] = make_float4(acc[0], acc[1], acc[2], acc[3]);
  reinterpret_cast<float4*>(&part[warp][lane * 8])[1] = make_float4(acc[4], acc[5], acc[6], acc[7]);
  __syncthreads();

  // Thread e finishes element d0 + e: coalesced scalar writes.
  const int e = threadIdx.x;
  const int64_t de = d0 + e;
  if (e >= kDecodeSlice || de >= p.D) return;
  float s = 0.f;
#pragma unroll
  for (int w8 = 0; w8 < kDecodeWarps; ++w8) s += part[w8][e];
  if (p.bias.ptr != nullptr) s += vec_at(p.bias, de);
  if (p.residual != nullptr) s = to_float(static_cast<const O*>(p.residual)[t * p.D + de]) + s;
  static_cast<O*>(p.out)[t * p.D + de] = from_float<O>(s);
}

}  // namespace pysteer

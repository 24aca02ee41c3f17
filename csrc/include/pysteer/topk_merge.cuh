// Selection for the fused encode + top-k (encode_topk.cuh): a warp bitonic sort used
// by the GEMM epilogue's candidate buffers, and the merge kernel that reduces the
// per-slice candidates [T, n_slices, k] to each row's sorted top-k.
#pragma once

#include "common.cuh"

namespace pysteer {

// Warp-wide bitonic sort of n (a power of two) (value, index) pairs in shared
// memory, descending by value; ties broken by smaller index first so the result is
// deterministic. Every lane of the warp must call it.
__device__ __forceinline__ bool topk_before(float av, int32_t ai, float bv, int32_t bi) {
  return av > bv || (av == bv && static_cast<uint32_t>(ai) < static_cast<uint32_t>(bi));
}

__device__ inline void warp_bitonic_sort_desc(float* v, int32_t* idx, int n, int lane) {
  for (int size = 2; size <= n; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = lane; i < (n >> 1); i += 32) {
        const int lo = ((i & ~(stride - 1)) << 1) | (i & (stride - 1));
        const int hi = lo + stride;
        const bool desc = (lo & size) == 0;
        const float a = v[lo], b = v[hi];
        const int32_t ia = idx[lo], ib = idx[hi];
        const bool swap = desc ? topk_before(b, ib, a, ia) : topk_before(a, ia, b, ib);
        if (swap) {
          v[lo] = b; v[hi] = a;
          idx[lo] = ib; idx[hi] = ia;
        }
      }
      __syncwarp();
    }
  }
}

// Order-preserving map from float to uint32: larger float, larger key.
__device__ __forceinline__ uint32_t float_to_ordered(float f) {
  const uint32_t b = __float_as_uint(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

namespace topk {

constexpr int kMergeCapacity = 32768;  // candidates per row the merge keeps in shared memory
constexpr int kMergeThreads = 1024;
constexpr int kMaxK = 256;

// One block per row: radix-select the k-th largest of the n candidates (as
// order-preserving keys in shared memory), gather everything above it plus enough
// equal keys in position order (deterministic), then sort the k winners.
// static: a non-template kernel defined in a header gets one copy per translation unit.
static __global__ void __launch_bounds__(kMergeThreads)
merge_kernel(const float* __restrict__ cand_vals, const int32_t* __restrict__ cand_idx,
             float* __restrict__ out_vals, int64_t* __restrict__ out_idx, int n, int k, int kp) {
  extern __shared__ uint32_t keys[];  // [n]
  __shared__ uint32_t hist[256];
  __shared__ int warp_gt[kMergeThreads / 32], warp_eq[kMergeThreads / 32];
  __shared__ float sel_v[kMaxK];
  __shared__ int32_t sel_i[kMaxK];
  __shared__ uint32_t s_prefix;
  __shared__ int s_remaining;

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  constexpr int kWarps = kMergeThreads / 32;
  const int64_t row = blockIdx.x;
  const float* cv = cand_vals + row * n;
  const int32_t* ci = cand_idx + row * n;
  for (int i = tid; i < n; i += kMergeThreads) keys[i] = float_to_ordered(cv[i]);

  // Radix select of the k-th largest key, 8 bits at a time from the top.
  uint32_t prefix = 0, mask = 0;
  int remaining = k;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = tid; i < 256; i += kMergeThreads) hist[i] = 0;
    __syncthreads();
    for (int base = warp * 32; base < n; base += kMergeThreads) {
      const int i = base + lane;
      const uint32_t key = i < n ? keys[i] : 0u;
      const bool in = i < n && (key & mask) == prefix;
      const unsigned digit = in ? (key >> shift) & 255u : 256u;
      const unsigned peers = __match_any_sync(0xffffffffu, digit);
      if (in && lane == __ffs(peers) - 1) atomicAdd(&hist[digit], static_cast<uint32_t>(__popc(peers)));
    }
    __syncthreads();
    if (warp == 0) {
      int c[8], s = 0;
#pragma unroll
      for (int q = 0; q < 8; ++q) {  // lane l holds bins 255-8l down to 248-8l
        c[q] = static_cast<int>(hist[255 - 8 * lane - q]);
        s += c[q];
      }
      int incl = s;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int y = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += y;
      }
      int cum = incl - s;
      if (cum < remaining && remaining <= incl) {
#pragma unroll
        for (int q = 0; q < 8; ++q) {
          if (cum + c[q] >= remaining) {
            s_prefix = prefix | (static_cast<uint32_t>(255 - 8 * lane - q) << shift);
            s_remaining = remaining - cum;
            break;
          }
          cum += c[q];
        }
      }
    }
    __syncthreads();
    prefix = s_prefix;
    remaining = s_remaining;
    mask |= 255u << shift;
  }
  const uint32_t kth = prefix;
  const int need_eq = remaining, n_gt = k - remaining;

  // Deterministic gather: every key above kth, then the first need_eq equal to it.
  const int per = ((n + kWarps - 1) / kWarps + 31) / 32 * 32;
  const int begin = warp * per, end = min(n, begin + per);
  int gt = 0, eq = 0;
  for (int base = begin; base < end; base += 32) {
    const int i = base + lane;
    const uint32_t key = i < end ? keys[i] : 0u;
    gt += __popc(__ballot_sync(0xffffffffu, i < end && key > kth));
    eq += __popc(__ballot_sync(0xffffffffu, i < end && key == kth));
  }
  if (lane == 0) {
    warp_gt[warp] = gt;
    warp_eq[warp] = eq;
  }
  __syncthreads();
  int gt_off = 0, eq_off = 0;
  for (int w8 = 0; w8 < warp; ++w8) {
    gt_off += warp_gt[w8];
    eq_off += warp_eq[w8];
  }
  const unsigned lt = (1u << lane) - 1u;
  for (int base = begin; base < end; base += 32) {
    const int i = base + lane;
    const uint32_t key = i < end ? keys[i] : 0u;
    const bool g = i < end && key > kth, e = i < end && key == kth;
    const unsigned bg = __ballot_sync(0xffffffffu, g), be = __ballot_sync(0xffffffffu, e);
    if (g) {
      const int slot = gt_off + __popc(bg & lt);
      sel_v[slot] = cv[i];
      sel_i[slot] = ci[i];
    } else if (e) {
      const int rank = eq_off + __popc(be & lt);
      if (rank < need_eq) {
        sel_v[n_gt + rank] = cv[i];
        sel_i[n_gt + rank] = ci[i];
      }
    }
    gt_off += __popc(bg);
    eq_off += __popc(be);
  }
  for (int i = k + tid; i < kp; i += kMergeThreads) {
    sel_v[i] = -INFINITY;
    sel_i[i] = -1;
  }
  __syncthreads();
  if (warp == 0) warp_bitonic_sort_desc(sel_v, sel_i, kp, lane);
  __syncthreads();
  for (int i = tid; i < k; i += kMergeThreads) {
    out_vals[row * k + i] = sel_v[i];
    out_idx[row * k + i] = sel_i[i];
  }
}

}  // namespace topk
}  // namespace pysteer

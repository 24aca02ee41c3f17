// Small device helpers shared by the kernels: dtype conversion, 8-wide vector loads
// and stores (16 bytes for fp16/bf16, two 16-byte accesses for fp32), warp sums.
// Every kernel accumulates in fp32 and rounds to the storage type once.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "modes.cuh"
#include "vec_arg.h"

namespace pysteer {

template <typename T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Eight elements starting at p, which must be 16-byte aligned and fully in bounds.
template <typename T>
__device__ __forceinline__ void load8(const T* p, float (&out)[8]) {
  if constexpr (sizeof(T) == 4) {
    const float4 a = *reinterpret_cast<const float4*>(p);
    const float4 b = *(reinterpret_cast<const float4*>(p) + 1);
    out[0] = a.x; out[1] = a.y; out[2] = a.z; out[3] = a.w;
    out[4] = b.x; out[5] = b.y; out[6] = b.z; out[7] = b.w;
  } else {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int q = 0; q < 8; ++q) out[q] = to_float(e[q]);
  }
}

// Read-only variant for weights (goes through the non-coherent cache).
template <typename T>
__device__ __forceinline__ void load8_ro(const T* p, float (&out)[8]) {
  if constexpr (sizeof(T) == 4) {
    const float4 a = __ldg(reinterpret_cast<const float4*>(p));
    const float4 b = __ldg(reinterpret_cast<const float4*>(p) + 1);
    out[0] = a.x; out[1] = a.y; out[2] = a.z; out[3] = a.w;
    out[4] = b.x; out[5] = b.y; out[6] = b.z; out[7] = b.w;
  } else {
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int q = 0; q < 8; ++q) out[q] = to_float(e[q]);
  }
}

// The first n (< 8 allowed) elements at p, any alignment; the rest read as zero.
template <typename T>
__device__ __forceinline__ void load8_partial(const T* p, int n, float (&out)[8]) {
#pragma unroll
  for (int q = 0; q < 8; ++q) out[q] = q < n ? to_float(p[q]) : 0.f;
}

// vec: 16-byte path allowed for this tensor and the whole 8-chunk is in bounds.
template <typename T>
__device__ __forceinline__ void load8_any(const T* p, int n, bool vec, float (&out)[8]) {
  if (vec && n >= 8) load8(p, out); else load8_partial(p, n, out);
}

template <typename T>
__device__ __forceinline__ void load8_any_ro(const T* p, int n, bool vec, float (&out)[8]) {
  if (vec && n >= 8) load8_ro(p, out); else load8_partial(p, n, out);
}

template <typename T>
__device__ __forceinline__ void store8_any(T* p, int n, bool vec, const float (&v)[8]) {
  if (vec && n >= 8) {
    if constexpr (sizeof(T) == 4) {
      reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
      reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
    } else {
      uint4 raw;
      T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
      for (int q = 0; q < 8; ++q) e[q] = from_float<T>(v[q]);
      *reinterpret_cast<uint4*>(p) = raw;
    }
  } else {
#pragma unroll
    for (int q = 0; q < 8; ++q)
      if (q < n) p[q] = from_float<T>(v[q]);
  }
}

// Shared-memory fp32 rows: two 16-byte accesses when vec (8-float aligned chunk).
__device__ __forceinline__ void smem_load8(const float* p, int n, bool vec, float (&out)[8]) {
  if (vec && n >= 8) {
    const float4 a = reinterpret_cast<const float4*>(p)[0];
    const float4 b = reinterpret_cast<const float4*>(p)[1];
    out[0] = a.x; out[1] = a.y; out[2] = a.z; out[3] = a.w;
    out[4] = b.x; out[5] = b.y; out[6] = b.z; out[7] = b.w;
  } else {
#pragma unroll
    for (int q = 0; q < 8; ++q) out[q] = q < n ? p[q] : 0.f;
  }
}

__device__ __forceinline__ void smem_store8(float* p, int n, bool vec, const float (&v)[8]) {
  if (vec && n >= 8) {
    reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
  } else {
#pragma unroll
    for (int q = 0; q < 8; ++q)
      if (q < n) p[q] = v[q];
  }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Element i of a VecArg as fp32 (the vector must be present).
__device__ __forceinline__ float vec_at(const VecArg& v, int64_t i) {
  switch (v.dtype) {
    case kFloat16: return __half2float(static_cast<const __half*>(v.ptr)[i]);
    case kBFloat16: return __bfloat162float(static_cast<const __nv_bfloat16*>(v.ptr)[i]);
    default: return static_cast<const float*>(v.ptr)[i];
  }
}

// Elements [i, i + n) of a VecArg (n <= 8), zero beyond; 16-byte loads when vec.
__device__ __forceinline__ void vec_load8(const VecArg& v, int64_t i, int n, bool vec, float (&out)[8]) {
  switch (v.dtype) {
    case kFloat16: load8_any_ro(static_cast<const __half*>(v.ptr) + i, n, vec, out); break;
    case kBFloat16: load8_any_ro(static_cast<const __nv_bfloat16*>(v.ptr) + i, n, vec, out); break;
    default: load8_any_ro(static_cast<const float*>(v.ptr) + i, n, vec, out); break;
  }
}

// Dispatch a runtime dtype code to a C++ type: f(type_tag<T>{}).
template <typename T> struct type_tag { using type = T; };

template <typename F>
inline bool dispatch_dtype(int code, F&& f) {
  switch (code) {
    case 0: f(type_tag<float>{}); return true;
    case 1: f(type_tag<__half>{}); return true;
    case 2: f(type_tag<__nv_bfloat16>{}); return true;
    default: return false;
  }
}

inline bool is_aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace pysteer

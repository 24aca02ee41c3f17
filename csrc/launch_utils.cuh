// Launcher-side helpers (host code in the .cu files).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstddef>

namespace pysteer {

constexpr size_t kDefaultSmem = 48 * 1024;
constexpr int kMaxDevices = 64;

// Opt a kernel in to `bytes` of dynamic shared memory on the current device, once:
// later launches (including ones under CUDA graph capture) make no driver call.
template <auto Kernel>
cudaError_t reserve_smem(size_t bytes) {
  if (bytes <= kDefaultSmem) return cudaSuccess;
  static std::atomic<size_t> granted[kMaxDevices];
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  const bool cached = dev >= 0 && dev < kMaxDevices;
  if (cached && granted[dev].load(std::memory_order_relaxed) >= bytes) return cudaSuccess;
  err = cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (err == cudaSuccess && cached) {
    size_t prev = granted[dev].load(std::memory_order_relaxed);
    while (prev < bytes && !granted[dev].compare_exchange_weak(prev, bytes)) {
    }
  }
  return err;
}

inline int round_up(int x, int m) { return (x + m - 1) / m * m; }

}  // namespace pysteer

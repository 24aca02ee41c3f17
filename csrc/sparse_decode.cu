// Launcher of the sparse decode kernel (include/pysteer/sparse_decode.cuh).
#include "launch.h"
#include "launch_utils.cuh"
#include "pysteer/sparse_decode.cuh"

namespace pysteer {

cudaError_t sparse_decode(const float* values, const int64_t* indices, const void* w_dec, VecArg bias,
                          const void* residual, void* out, int64_t T, int64_t k, int64_t F, int64_t D,
                          int weight_dtype, int out_dtype, cudaStream_t stream) {
  if (T == 0 || D == 0) return cudaSuccess;
  DecodeParams p{};
  p.values = values;
  p.indices = indices;
  p.w_dec = w_dec;
  p.bias = bias;
  p.residual = residual;
  p.out = out;
  p.T = T;
  p.k = k;
  p.F = F;
  p.D = D;
  p.vec = D % 8 == 0 && is_aligned16(w_dec);
  const dim3 grid(static_cast<unsigned>(T), static_cast<unsigned>((D + kDecodeSlice - 1) / kDecodeSlice));
  cudaError_t err = cudaErrorInvalidValue;
  dispatch_dtype(weight_dtype, [&](auto wt) {
    using W = typename decltype(wt)::type;
    dispatch_dtype(out_dtype, [&](auto ot) {
      using O = typename decltype(ot)::type;
      sparse_decode_kernel<W, O><<<grid, kDecodeWarps * 32, 0, stream>>>(p);
      err = cudaGetLastError();
    });
  });
  return err;
}

}  // namespace pysteer

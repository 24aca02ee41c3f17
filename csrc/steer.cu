// Launchers of the sparse and dense steering kernels (include/pysteer/steer.cuh).
#include "launch.h"
#include "launch_utils.cuh"
#include "pysteer/steer.cuh"

namespace pysteer {
namespace {

// Prefill: 4 rows per block read each weight row once for 4 tokens; decode: 1 row per
// block so the few rows spread over as many SMs as possible.
constexpr int64_t kMultiRowMinTokens = 128;
constexpr size_t kMultiRowMaxSmem = 96 * 1024;

template <typename X, typename W, int ROWS>
cudaError_t launch(const SteerParams& p, cudaStream_t stream) {
  const size_t smem = size_t(ROWS) * (p.D + p.S) * sizeof(float);
  constexpr auto kernel = &steer_rows_kernel<X, W, ROWS>;
  cudaError_t err = reserve_smem<kernel>(smem);
  if (err != cudaSuccess) return err;
  const int chunks = static_cast<int>((p.D + 7) / 8);
  const int threads = ROWS == 1 ? std::min(512, std::max(64, round_up(chunks, 32))) : 256;
  const unsigned blocks = static_cast<unsigned>((p.T + ROWS - 1) / ROWS);
  kernel<<<blocks, threads, smem, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t run(const SteerParams& p, int hidden_dtype, int weight_dtype, cudaStream_t stream) {
  if (p.T == 0) return cudaSuccess;
  const bool multi = p.T >= kMultiRowMinTokens && 4 * (p.D + p.S) * sizeof(float) <= kMultiRowMaxSmem;
  cudaError_t err = cudaErrorInvalidValue;
  dispatch_dtype(hidden_dtype, [&](auto xt) {
    using X = typename decltype(xt)::type;
    dispatch_dtype(weight_dtype, [&](auto wt) {
      using W = typename decltype(wt)::type;
      err = multi ? launch<X, W, 4>(p, stream) : launch<X, W, 1>(p, stream);
    });
  });
  return err;
}

}  // namespace

cudaError_t sparse_steer(void* hidden, const int32_t* row_index, const float* coeffs, int64_t n_configs,
                         const void* enc_rows, VecArg enc_bias, VecArg threshold,
                         const void* dec_rows, VecArg input_offset, const int8_t* edit_modes,
                         const float* feature_acts, int64_t T, int64_t D, int S, int hidden_dtype,
                         int weight_dtype, cudaStream_t stream) {
  SteerParams p{};
  p.hidden = hidden;
  p.row_index = row_index;
  p.coeffs = coeffs;
  p.enc_rows = enc_rows;
  p.dec_rows = dec_rows;
  p.enc_bias = enc_bias;
  p.threshold = threshold;
  p.input_offset = input_offset;
  p.modes = edit_modes;
  p.feature_acts = feature_acts;
  p.T = T;
  p.D = D;
  p.C = n_configs;
  p.S = S;
  p.dense = false;
  p.vec = D % 8 == 0 && is_aligned16(hidden) && is_aligned16(enc_rows) && is_aligned16(dec_rows) &&
          (input_offset.ptr == nullptr || is_aligned16(input_offset.ptr));
  return run(p, hidden_dtype, weight_dtype, stream);
}

cudaError_t dense_steer(void* hidden, const int32_t* row_index, const float* coeffs, int64_t n_configs,
                        const void* directions, const int8_t* dense_modes, int64_t T, int64_t D, int K,
                        int hidden_dtype, int weight_dtype, cudaStream_t stream) {
  SteerParams p{};
  p.hidden = hidden;
  p.row_index = row_index;
  p.coeffs = coeffs;
  p.enc_rows = directions;
  p.dec_rows = directions;
  p.modes = dense_modes;
  p.T = T;
  p.D = D;
  p.C = n_configs;
  p.S = K;
  p.dense = true;
  p.vec = D % 8 == 0 && is_aligned16(hidden) && is_aligned16(directions);
  return run(p, hidden_dtype, weight_dtype, stream);
}

}  // namespace pysteer

// Host entry points of the kernels: raw device pointers, sizes, dtype codes
// (pysteer::DType), small vectors as VecArg (pointer + dtype) and a stream. Framework-free: no PyTorch, no Python. Each returns
// the CUDA status of its launches; callers are expected to have validated sizes.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "pysteer/vec_arg.h"

namespace pysteer {

// hidden [T, D] (hidden_dtype) += sum_i (edit(f_i, c_i) - f_i) dec_rows[i], see steer.cuh.
cudaError_t sparse_steer(void* hidden, const int32_t* row_index, const float* coeffs, int64_t n_configs,
                         const void* enc_rows, VecArg enc_bias, VecArg threshold,
                         const void* dec_rows, VecArg input_offset, const int8_t* edit_modes,
                         const float* feature_acts, int64_t T, int64_t D, int S, int hidden_dtype,
                         int weight_dtype, cudaStream_t stream);

// hidden [T, D] += sum_k a_k directions[k], a_k = c_k or c_k - h.u_k.
cudaError_t dense_steer(void* hidden, const int32_t* row_index, const float* coeffs, int64_t n_configs,
                        const void* directions, const int8_t* dense_modes, int64_t T, int64_t D, int K,
                        int hidden_dtype, int weight_dtype, cudaStream_t stream);

struct TopkPlanInfo {
  int block_t;
  int n_slices;
  int tiles_per_slice;
  size_t workspace_bytes;
  size_t gemm_smem_bytes;
  size_t merge_smem_bytes;
};

// Launch plan and workspace size of encode_topk; depends on shapes only.
TopkPlanInfo encode_topk_plan(int64_t T, int64_t D, int64_t F, int k, int weight_dtype);

// values [T, k] fp32 and indices [T, k] int64 of the k largest
// ((x - input_offset) @ w_enc + b_enc) * feature_scale per row, sorted descending.
cudaError_t encode_topk(const void* x, const void* w_enc, VecArg b_enc, VecArg input_offset,
                        VecArg feature_scale, float* values, int64_t* indices, void* workspace,
                        size_t workspace_bytes, int64_t T, int64_t D, int64_t F, int k, int x_dtype,
                        int weight_dtype, cudaStream_t stream);

// out [T, D] (out_dtype) = sum_j values[t, j] w_dec[indices[t, j]] (+ bias) (+ residual).
// residual, when given, has out_dtype.
cudaError_t sparse_decode(const float* values, const int64_t* indices, const void* w_dec, VecArg bias,
                          const void* residual, void* out, int64_t T, int64_t k, int64_t F, int64_t D,
                          int weight_dtype, int out_dtype, cudaStream_t stream);

}  // namespace pysteer

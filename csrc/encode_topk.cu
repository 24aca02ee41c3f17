// Launchers of the fused encode + top-k (include/pysteer/encode_topk.cuh).
#include "launch.h"
#include "launch_utils.cuh"
#include "pysteer/encode_topk.cuh"
#include "pysteer/modes.cuh"

namespace pysteer {

namespace {

int element_size(int dtype) { return dtype == kFloat32 ? 4 : 2; }

template <typename W, int BT>
cudaError_t launch_gemm(const topk::Plan& plan, const topk::Params& p, cudaStream_t stream) {
  constexpr auto kernel = &topk::gemm_topk_kernel<W, BT>;
  cudaError_t err = reserve_smem<kernel>(plan.gemm_smem);
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(plan.n_slices), static_cast<unsigned>(plan.n_tblocks));
  kernel<<<grid, topk::kThreads, plan.gemm_smem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

TopkPlanInfo encode_topk_plan(int64_t T, int64_t D, int64_t F, int k, int weight_dtype) {
  const topk::Plan p = topk::make_plan(T, D, F, k, element_size(weight_dtype));
  return TopkPlanInfo{p.block_t, p.n_slices, p.tiles_per_slice, p.workspace_bytes, p.gemm_smem, p.merge_smem};
}

cudaError_t encode_topk(const void* x, const void* w_enc, VecArg b_enc, VecArg input_offset,
                        VecArg feature_scale, float* values, int64_t* indices, void* workspace,
                        size_t workspace_bytes, int64_t T, int64_t D, int64_t F, int k, int x_dtype,
                        int weight_dtype, cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  const topk::Plan plan = topk::make_plan(T, D, F, k, element_size(weight_dtype));
  if (workspace_bytes < plan.workspace_bytes) return cudaErrorInvalidValue;
  char* ws = static_cast<char*>(workspace);

  topk::Params p{};
  p.xprep = ws;
  p.w = w_enc;
  p.bias = b_enc;
  p.scale = feature_scale;
  p.cand_vals = reinterpret_cast<float*>(ws + plan.vals_offset);
  p.cand_idx = reinterpret_cast<int32_t*>(ws + plan.idx_offset);
  p.T = T;
  p.D = D;
  p.F = F;
  p.d_pad = plan.d_pad;
  p.k = k;
  p.cap = plan.cap;
  p.tiles_per_slice = plan.tiles_per_slice;
  p.n_ftiles = plan.n_ftiles;
  p.n_slices = plan.n_slices;
  p.vec_b = F % (16 / element_size(weight_dtype)) == 0 && is_aligned16(w_enc);

  cudaError_t err = cudaErrorInvalidValue;
  dispatch_dtype(weight_dtype, [&](auto wt) {
    using W = typename decltype(wt)::type;
    dispatch_dtype(x_dtype, [&](auto xt) {
      using X = typename decltype(xt)::type;
      topk::prep_kernel<X, W><<<static_cast<unsigned>(plan.t_pad), 256, 0, stream>>>(
          static_cast<const X*>(x), input_offset, reinterpret_cast<W*>(ws),
          T, D, plan.d_pad);
      err = cudaGetLastError();
    });
    if (err != cudaSuccess) return;
    err = plan.block_t == 64 ? launch_gemm<W, 64>(plan, p, stream) : launch_gemm<W, 16>(plan, p, stream);
  });
  if (err != cudaSuccess) return err;

  constexpr auto merge = &topk::merge_kernel;
  err = reserve_smem<merge>(plan.merge_smem);
  if (err != cudaSuccess) return err;
  merge<<<static_cast<unsigned>(T), topk::kMergeThreads, plan.merge_smem, stream>>>(
      p.cand_vals, p.cand_idx, values, indices, plan.n_slices * k, k, plan.kp);
  return cudaGetLastError();
}

}  // namespace pysteer

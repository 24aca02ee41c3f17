// pybind11 module pysteer._C: thin, torch-free wrappers over launch.h.
//
// Every tensor arrives as a raw device address (uintptr_t), every dtype as a DType
// code (small vectors as an address plus their own code, 0 = absent) and the stream
// as a uintptr_t (torch.cuda.Stream.cuda_stream). Sizes are
// checked here (std::invalid_argument -> ValueError); launch failures come back as
// std::runtime_error (RuntimeError) carrying cudaGetErrorString.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

#include "launch.h"
#include "pysteer/modes.cuh"

namespace py = pybind11;
using pysteer::TopkPlanInfo;

namespace {

constexpr int kMaxTopK = 256;
constexpr int64_t kMaxGridY = 65535;

template <typename T>
T* as_ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

void require(bool ok, const std::string& op, const std::string& what) {
  if (!ok) throw std::invalid_argument("pysteer._C." + op + ": " + what);
}

void require_dtype(const std::string& op, const char* name, int code) {
  require(code == pysteer::kFloat32 || code == pysteer::kFloat16 || code == pysteer::kBFloat16, op,
          std::string(name) + " dtype code " + std::to_string(code) +
              " is not one of 0 (float32), 1 (float16), 2 (bfloat16)");
}

void require_ptr(const std::string& op, const char* name, uintptr_t p) {
  require(p != 0, op, std::string(name) + " is a null pointer");
}

// A small vector argument: (address, dtype code); address 0 means absent.
pysteer::VecArg vec_arg(const std::string& op, const char* name, uintptr_t p, int dtype) {
  if (p != 0) require_dtype(op, name, dtype);
  return pysteer::VecArg{reinterpret_cast<const void*>(p), dtype};
}

void check_cuda(const std::string& op, cudaError_t err) {
  if (err != cudaSuccess) {
    throw std::runtime_error("pysteer._C." + op + ": CUDA error " + cudaGetErrorName(err) + ": " +
                             cudaGetErrorString(err));
  }
}

void sparse_steer(uintptr_t hidden, uintptr_t row_index, uintptr_t coeffs, int64_t n_configs,
                  uintptr_t enc_rows, uintptr_t enc_bias, int enc_bias_dtype, uintptr_t threshold,
                  int threshold_dtype, uintptr_t dec_rows, uintptr_t input_offset, int input_offset_dtype,
                  uintptr_t edit_modes, uintptr_t feature_acts, int64_t T, int64_t D,
                  int64_t S, int hidden_dtype, int weight_dtype, uintptr_t stream) {
  const std::string op = "sparse_steer";
  require(T >= 0, op, "T must be >= 0, got " + std::to_string(T));
  require(D >= 1, op, "D must be >= 1, got " + std::to_string(D));
  require(S >= 1 && S <= std::numeric_limits<int>::max(), op, "S must be >= 1, got " + std::to_string(S));
  require(n_configs >= 0, op, "the coefficient table must have >= 0 rows");
  require_dtype(op, "hidden", hidden_dtype);
  require_dtype(op, "weight", weight_dtype);
  if (T == 0) return;
  require_ptr(op, "hidden", hidden);
  require_ptr(op, "row_index", row_index);
  require_ptr(op, "enc_rows", enc_rows);
  require_ptr(op, "dec_rows", dec_rows);
  require_ptr(op, "edit_modes", edit_modes);
  if (n_configs > 0) require_ptr(op, "coeffs", coeffs);
  check_cuda(op, pysteer::sparse_steer(as_ptr<void>(hidden), as_ptr<const int32_t>(row_index),
                                       as_ptr<const float>(coeffs), n_configs, as_ptr<const void>(enc_rows),
                                       vec_arg(op, "enc_bias", enc_bias, enc_bias_dtype),
                                       vec_arg(op, "threshold", threshold, threshold_dtype),
                                       as_ptr<const void>(dec_rows),
                                       vec_arg(op, "input_offset", input_offset, input_offset_dtype),
                                       as_ptr<const int8_t>(edit_modes), as_ptr<const float>(feature_acts), T,
                                       D, static_cast<int>(S), hidden_dtype, weight_dtype, as_stream(stream)));
}

void dense_steer(uintptr_t hidden, uintptr_t row_index, uintptr_t coeffs, int64_t n_configs,
                 uintptr_t directions, uintptr_t dense_modes, int64_t T, int64_t D, int64_t K, int hidden_dtype,
                 int weight_dtype, uintptr_t stream) {
  const std::string op = "dense_steer";
  require(T >= 0, op, "T must be >= 0, got " + std::to_string(T));
  require(D >= 1, op, "D must be >= 1, got " + std::to_string(D));
  require(K >= 1 && K <= std::numeric_limits<int>::max(), op, "K must be >= 1, got " + std::to_string(K));
  require(n_configs >= 0, op, "the coefficient table must have >= 0 rows");
  require_dtype(op, "hidden", hidden_dtype);
  require_dtype(op, "weight", weight_dtype);
  if (T == 0) return;
  require_ptr(op, "hidden", hidden);
  require_ptr(op, "row_index", row_index);
  require_ptr(op, "directions", directions);
  require_ptr(op, "dense_modes", dense_modes);
  if (n_configs > 0) require_ptr(op, "coeffs", coeffs);
  check_cuda(op, pysteer::dense_steer(as_ptr<void>(hidden), as_ptr<const int32_t>(row_index),
                                      as_ptr<const float>(coeffs), n_configs, as_ptr<const void>(directions),
                                      as_ptr<const int8_t>(dense_modes), T, D, static_cast<int>(K),
                                      hidden_dtype, weight_dtype, as_stream(stream)));
}

TopkPlanInfo checked_plan(const std::string& op, int64_t T, int64_t D, int64_t F, int64_t k, int weight_dtype) {
  require(T >= 0, op, "T must be >= 0, got " + std::to_string(T));
  require(D >= 1, op, "D must be >= 1, got " + std::to_string(D));
  require(F >= 1 && F <= std::numeric_limits<int32_t>::max(), op,
          "F must be in [1, 2^31), got " + std::to_string(F));
  require(k >= 1 && k <= kMaxTopK, op, "k must be in [1, " + std::to_string(kMaxTopK) + "], got " + std::to_string(k));
  require(k <= F, op, "k = " + std::to_string(k) + " exceeds the number of features F = " + std::to_string(F));
  require_dtype(op, "weight", weight_dtype);
  const TopkPlanInfo plan = pysteer::encode_topk_plan(T, D, F, static_cast<int>(k), weight_dtype);
  require((T + plan.block_t - 1) / plan.block_t <= kMaxGridY, op, "too many rows: T = " + std::to_string(T));
  return plan;
}

size_t encode_topk_workspace_bytes(int64_t T, int64_t D, int64_t F, int64_t k, int weight_dtype) {
  return checked_plan("encode_topk_workspace_bytes", T, D, F, k, weight_dtype).workspace_bytes;
}

py::dict encode_topk_plan(int64_t T, int64_t D, int64_t F, int64_t k, int weight_dtype) {
  const TopkPlanInfo p = checked_plan("encode_topk_plan", T, D, F, k, weight_dtype);
  py::dict d;
  d["block_t"] = p.block_t;
  d["n_slices"] = p.n_slices;
  d["tiles_per_slice"] = p.tiles_per_slice;
  d["workspace_bytes"] = p.workspace_bytes;
  d["gemm_smem_bytes"] = p.gemm_smem_bytes;
  d["merge_smem_bytes"] = p.merge_smem_bytes;
  return d;
}

void encode_topk(uintptr_t x, uintptr_t w_enc, uintptr_t b_enc, int b_enc_dtype, uintptr_t input_offset,
                 int input_offset_dtype, uintptr_t feature_scale, int feature_scale_dtype, uintptr_t values, uintptr_t indices, uintptr_t workspace, size_t workspace_bytes, int64_t T,
                 int64_t D, int64_t F, int64_t k, int x_dtype, int weight_dtype, uintptr_t stream) {
  const std::string op = "encode_topk";
  const TopkPlanInfo plan = checked_plan(op, T, D, F, k, weight_dtype);
  require_dtype(op, "x", x_dtype);
  require(workspace_bytes >= plan.workspace_bytes, op,
          "workspace has " + std::to_string(workspace_bytes) + " bytes, needs " +
              std::to_string(plan.workspace_bytes) + " (see encode_topk_workspace_bytes)");
  if (T == 0) return;
  require_ptr(op, "x", x);
  require_ptr(op, "w_enc", w_enc);
  require_ptr(op, "values", values);
  require_ptr(op, "indices", indices);
  require_ptr(op, "workspace", workspace);
  require(workspace % 256 == 0, op, "workspace must be 256-byte aligned");
  check_cuda(op, pysteer::encode_topk(as_ptr<const void>(x), as_ptr<const void>(w_enc),
                                      vec_arg(op, "b_enc", b_enc, b_enc_dtype),
                                      vec_arg(op, "input_offset", input_offset, input_offset_dtype),
                                      vec_arg(op, "feature_scale", feature_scale, feature_scale_dtype),
                                      as_ptr<float>(values), as_ptr<int64_t>(indices), as_ptr<void>(workspace),
                                      workspace_bytes, T, D, F, static_cast<int>(k), x_dtype, weight_dtype,
                                      as_stream(stream)));
}

void sparse_decode(uintptr_t values, uintptr_t indices, uintptr_t w_dec, uintptr_t bias, int bias_dtype,
                   uintptr_t residual,
                   uintptr_t out, int64_t T, int64_t k, int64_t F, int64_t D, int weight_dtype, int out_dtype,
                   uintptr_t stream) {
  const std::string op = "sparse_decode";
  require(T >= 0, op, "T must be >= 0, got " + std::to_string(T));
  require(k >= 0, op, "k must be >= 0, got " + std::to_string(k));
  require(F >= 0, op, "F must be >= 0, got " + std::to_string(F));
  require(D >= 1, op, "D must be >= 1, got " + std::to_string(D));
  require((D + 255) / 256 <= kMaxGridY, op, "D is too large: " + std::to_string(D));
  require_dtype(op, "w_dec", weight_dtype);
  require_dtype(op, "out", out_dtype);
  if (T == 0) return;
  require_ptr(op, "out", out);
  if (k > 0) {
    require_ptr(op, "values", values);
    require_ptr(op, "indices", indices);
    require_ptr(op, "w_dec", w_dec);
  }
  check_cuda(op, pysteer::sparse_decode(as_ptr<const float>(values), as_ptr<const int64_t>(indices),
                                        as_ptr<const void>(w_dec), vec_arg(op, "bias", bias, bias_dtype),
                                        as_ptr<const void>(residual), as_ptr<void>(out), T, k, F, D,
                                        weight_dtype, out_dtype, as_stream(stream)));
}

int device_count() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "pysteer fused CUDA kernels (raw-pointer interface; use pysteer.ops.cuda_backend)";

  py::dict feature_edit, dense_edit, dtype;
  feature_edit["ADD"] = static_cast<int>(pysteer::kFeatureAdd);
  feature_edit["SET"] = static_cast<int>(pysteer::kFeatureSet);
  feature_edit["SCALE"] = static_cast<int>(pysteer::kFeatureScale);
  feature_edit["ABLATE"] = static_cast<int>(pysteer::kFeatureAblate);
  dense_edit["ADD"] = static_cast<int>(pysteer::kDenseAdd);
  dense_edit["PROJECT"] = static_cast<int>(pysteer::kDenseProject);
  dtype["float32"] = static_cast<int>(pysteer::kFloat32);
  dtype["float16"] = static_cast<int>(pysteer::kFloat16);
  dtype["bfloat16"] = static_cast<int>(pysteer::kBFloat16);
  m.attr("FEATURE_EDIT") = feature_edit;
  m.attr("DENSE_EDIT") = dense_edit;
  m.attr("DTYPE") = dtype;
  m.attr("MAX_TOPK_K") = kMaxTopK;
  m.attr("CUDART_VERSION") = CUDART_VERSION;

  m.def("device_count", &device_count, "CUDA devices visible to the extension's runtime (0 on any error)");
  m.def("sparse_steer", &sparse_steer, py::arg("hidden"), py::arg("row_index"), py::arg("coeffs"),
        py::arg("n_configs"), py::arg("enc_rows"), py::arg("enc_bias"), py::arg("enc_bias_dtype"),
        py::arg("threshold"), py::arg("threshold_dtype"), py::arg("dec_rows"), py::arg("input_offset"),
        py::arg("input_offset_dtype"), py::arg("edit_modes"), py::arg("feature_acts"), py::arg("T"), py::arg("D"),
        py::arg("S"), py::arg("hidden_dtype"), py::arg("weight_dtype"), py::arg("stream"),
        "In place: hidden[t] += sum_i (edit(f_i, c_i) - f_i) * dec_rows[i] for rows with row_index >= 0.");
  m.def("dense_steer", &dense_steer, py::arg("hidden"), py::arg("row_index"), py::arg("coeffs"),
        py::arg("n_configs"), py::arg("directions"), py::arg("dense_modes"), py::arg("T"), py::arg("D"),
        py::arg("K"), py::arg("hidden_dtype"), py::arg("weight_dtype"), py::arg("stream"),
        "In place: hidden[t] += sum_k a_k u_k, a_k = c_k (add) or c_k - h.u_k (project).");
  m.def("encode_topk_workspace_bytes", &encode_topk_workspace_bytes, py::arg("T"), py::arg("D"), py::arg("F"),
        py::arg("k"), py::arg("weight_dtype"), "Bytes of workspace encode_topk needs (shapes only).");
  m.def("encode_topk_plan", &encode_topk_plan, py::arg("T"), py::arg("D"), py::arg("F"), py::arg("k"),
        py::arg("weight_dtype"), "Launch plan of encode_topk: tile rows, F slices, workspace and smem bytes.");
  m.def("encode_topk", &encode_topk, py::arg("x"), py::arg("w_enc"), py::arg("b_enc"), py::arg("b_enc_dtype"),
        py::arg("input_offset"), py::arg("input_offset_dtype"), py::arg("feature_scale"),
        py::arg("feature_scale_dtype"), py::arg("values"), py::arg("indices"), py::arg("workspace"),
        py::arg("workspace_bytes"), py::arg("T"), py::arg("D"), py::arg("F"), py::arg("k"), py::arg("x_dtype"),
        py::arg("weight_dtype"), py::arg("stream"),
        "values/indices [T, k] = top-k of ((x - input_offset) @ w_enc + b_enc) * feature_scale, descending.");
  m.def("sparse_decode", &sparse_decode, py::arg("values"), py::arg("indices"), py::arg("w_dec"), py::arg("bias"),
        py::arg("bias_dtype"), py::arg("residual"), py::arg("out"), py::arg("T"), py::arg("k"), py::arg("F"), py::arg("D"),
        py::arg("weight_dtype"), py::arg("out_dtype"), py::arg("stream"),
        "out[t] = sum_j values[t, j] w_dec[indices[t, j]] (+ bias) (+ residual[t]).");
}

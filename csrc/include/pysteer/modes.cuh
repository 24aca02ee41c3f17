// Integer codes shared with Python. The values are part of the kernel ABI and must
// match pysteer/ops/modes.py (FeatureEdit, DenseEdit) and the dtype codes used by
// pysteer/ops/cuda_backend.py; tests/test_cuda_extension.py checks both.
#pragma once

#include <cstdint>

namespace pysteer {

// How a selected SAE feature f becomes f' given its coefficient c.
enum FeatureEdit : int8_t {
  kFeatureAdd = 0,     // f' = f + c
  kFeatureSet = 1,     // f' = c
  kFeatureScale = 2,   // f' = c * f
  kFeatureAblate = 3,  // f' = 0
};

// How a dense unit direction u with coefficient c changes a row h.
enum DenseEdit : int8_t {
  kDenseAdd = 0,      // h' = h + c u
  kDenseProject = 1,  // h' = h + (c - h.u) u
};

// Element type of a tensor argument.
enum DType : int {
  kFloat32 = 0,
  kFloat16 = 1,
  kBFloat16 = 2,
};

}  // namespace pysteer

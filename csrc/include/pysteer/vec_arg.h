// A small read-only vector argument of any float dtype (bias, offset, threshold,
// scale). Kernels read it through a dtype switch that is uniform across the launch,
// so callers never need a per-call cast. Plain C++: shared by host and device code.
#pragma once

namespace pysteer {

struct VecArg {
  const void* ptr = nullptr;  // null: absent
  int dtype = 0;              // DType code
};

}  // namespace pysteer

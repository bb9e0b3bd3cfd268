// Loading a segment of a row of logits into an accumulator-precision buffer, whatever the
// input's dtype and stride, and what the kernels must know about the values they loaded.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <limits>

namespace mcckd_native {

// Columns per tile: K rows of them stay in L1/L2 while a kernel makes its passes over the tile.
constexpr int64_t kTile = 1024;

// What a loaded segment held besides finite numbers.
struct SegmentFlags {
  bool negative_infinity = false;  // some value was -inf
  bool bad = false;                // some value was NaN or +inf
};

// out[c] = scale * row[c * stride] for c < n, in the accumulator type A.
template <typename A, typename T>
inline SegmentFlags load_segment(const T* row, int64_t stride, int64_t n, A scale, A* out) {
  int32_t negative_infinity = 0, bad = 0;
  const A neg_inf = -std::numeric_limits<A>::infinity();
  const A pos_inf = std::numeric_limits<A>::infinity();
  if (stride == 1) {
#pragma omp simd reduction(| : negative_infinity, bad)
    for (int64_t c = 0; c < n; ++c) {
      const A y = static_cast<A>(row[c]) * scale;
      out[c] = y;
      negative_infinity |= y == neg_inf;
      bad |= !(y < pos_inf);
    }
  } else {
    for (int64_t c = 0; c < n; ++c) {
      const A y = static_cast<A>(row[c * stride]) * scale;
      out[c] = y;
      negative_infinity |= y == neg_inf;
      bad |= !(y < pos_inf);
    }
  }
  return {negative_infinity != 0, bad != 0};
}

// The maximum of x[0..n), NaN-free input (-inf where all are -inf or n = 0).
template <typename A>
inline A segment_max(const A* x, int64_t n) {
  A m = -std::numeric_limits<A>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t c = 0; c < n; ++c) m = x[c] > m ? x[c] : m;
  return m;
}

}  // namespace mcckd_native

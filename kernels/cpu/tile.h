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

// Differences to the pivot row of one row of the tile, in place: x[c] <- delta[c] =
// ((x[c] - x_r[c]) - (m - m_r)) / T, formed in float64, where the differences of float32 inputs
// are exact whatever constant shifts the rows (and the maxima m, m_r) carry, then rounded once;
// mean[c] += delta[c]. Columns at -inf give NaN or inf here; the callers mask them.
template <typename A>
inline void pivot_differences(A* x, const A* x_r, A m, A m_r, double inv_t, int64_t n, A* mean) {
  const double offset = static_cast<double>(m) - static_cast<double>(m_r);
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) {
    const A delta = static_cast<A>(
        ((static_cast<double>(x[c]) - static_cast<double>(x_r[c])) - offset) * inv_t);
    x[c] = delta;
    mean[c] += delta;
  }
}

}  // namespace mcckd_native

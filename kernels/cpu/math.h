// Elementwise functions written so that the compiler vectorises the loops that call them
// (no library calls, no branches): exp on (-inf, 0] and expm1 on |x| < 1/2. Float64 uses the
// standard library (its loops stay scalar; float64 is the exact path, not the fast one).
#pragma once

#include <cmath>
#include <cstdint>

namespace mcckd_native {

// exp(x) for x <= 0 (x = -inf gives 0), float32, within 2 ulp: x = n ln2 + r, |r| <= ln2/2,
// exp(r) by its Taylor series to degree 7 (remainder < 6e-9 relative), times 2^n built from
// the exponent bits. Below -87 (under the smallest normal float) the result is 0.
// x must not be NaN: callers flag NaN rows before they get here.
inline float exp_nonpositive(float x) {
  const float clamped = x < -87.0f ? -87.0f : x;
  // n = round(x / ln2) by the 1.5 * 2^23 trick (|x / ln2| < 2^22): floorf would keep the loop scalar.
  const float n = (clamped * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (clamped - n * 0.693145751953125f) - n * 1.42860682030941723212e-6f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  const float scale = __builtin_bit_cast(float, bits);
  return x < -87.0f ? 0.0f : p * scale;
}

inline double exp_nonpositive(double x) { return std::exp(x); }

// expm1(x) for |x| < 1/2, float32: x (1 + x/2 + ... + x^7/8!) by Horner, relative error
// < 1e-8 + rounding; exact in relative terms as x -> 0, where exp(x) - 1 would cancel.
inline float expm1_small(float x) {
  float p = 1.0f / 40320.0f;
  p = p * x + 1.0f / 5040.0f;
  p = p * x + 1.0f / 720.0f;
  p = p * x + 1.0f / 120.0f;
  p = p * x + 1.0f / 24.0f;
  p = p * x + 1.0f / 6.0f;
  p = p * x + 0.5f;
  p = p * x + 1.0f;
  return p * x;
}

inline double expm1_small(double x) { return std::expm1(x); }

}  // namespace mcckd_native

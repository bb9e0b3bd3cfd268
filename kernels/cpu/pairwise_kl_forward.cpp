// Forward of the pairwise symmetric KL: one pass over the vocabulary per group, tile by tile.
//
// Per valid row i of a group with pivot r (its first valid row), running max m_i of x_i,
// e_i = exp((x_i - m_i) / T), delta_i = ((x_i - x_r) - (m_i - m_r)) / T (in float64: exact for
// float inputs), b_i = delta_i - mean_j delta_j,
// q~_i = e_i - e_r = e_r expm1(delta_i) (|delta_i| < 1/2, else the plain difference), and
//   d_r = sum_v e_r,  D_i = sum_v q~_i,  B_i = sum_v e_r b_i,  F_i = sum_v q~_i b_i.
// When a tile raises the maxima by Delta_i the sums are rescaled exactly (rescale()); at the end
//   d_i = d_r + D_i,  lambda_i = log1p(D_i / d_r),  X_i = (F_i - D_i B_i / d_r) / d_i,
//   S = k sum_i X_i,  c_i = B_i / d_r - (lambda_i - mean_j lambda_j) + X_i.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "math.h"
#include "pairwise_kl.h"
#include "tile.h"

namespace mcckd_native {

int64_t valid_rows(const bool* valid, int64_t valid_stride_g, int64_t valid_stride_k, int64_t g,
                   int64_t K, int64_t* rows) {
  int64_t k = 0;
  for (int64_t i = 0; i < K; ++i) {
    if (valid == nullptr || valid[g * valid_stride_g + i * valid_stride_k]) rows[k++] = i;
  }
  return k;
}

namespace {

// The running sums of one group, indexed by position among its valid rows (0 = the pivot).
template <typename A>
struct GroupSums {
  explicit GroupSums(int64_t K) : max(K), new_max(K), D(K), B(K), F(K), d(K), E(K) {}
  void reset(int64_t k) {
    std::fill_n(max.begin(), k, -std::numeric_limits<A>::infinity());
    std::fill_n(D.begin(), k, A(0));
    std::fill_n(B.begin(), k, A(0));
    std::fill_n(F.begin(), k, A(0));
    std::fill_n(d.begin(), k, A(0));
    std::fill_n(E.begin(), k, A(0));
    d_r = 0;
  }
  // D, B, F as above; d_i = sum e_i and E_i = sum e_i b_i directly, for rows far from the pivot.
  std::vector<A> max, new_max, D, B, F, d, E;
  A d_r = 0;
};

// Sums at maxima m_i expressed at m_i' (maxima of x; Delta_i = (m_i' - m_i) / T): with
// s_i = exp(-Delta_i), s_r = exp(-Delta_r), t_i = s_i - s_r (through expm1 when Delta_r - Delta_i
// is small) and the centred c_i = Delta_i - mean_j Delta_j (b_i moves by -c_i):
//   F_i <- s_i (F_i - c_i D_i) + t_i (B_i - c_i d_r),  D_i <- s_i D_i + t_i d_r,
//   B_i <- s_r (B_i - c_i d_r),  d_r <- s_r d_r,  E_i <- s_i (E_i - c_i d_i),  d_i <- s_i d_i.
// The Deltas are formed in float64 from the float maxima.
template <typename A>
void rescale(GroupSums<A>& sums, int64_t k, double inv_t) {
  std::vector<double> delta(k);
  double mean_delta = 0;
  for (int64_t i = 0; i < k; ++i) {
    delta[i] = (static_cast<double>(sums.new_max[i]) - static_cast<double>(sums.max[i])) * inv_t;
    mean_delta += delta[i];
  }
  mean_delta /= static_cast<double>(k);
  const double s_r = std::exp(-delta[0]);
  for (int64_t i = 0; i < k; ++i) {
    const A centred = static_cast<A>(delta[i] - mean_delta);
    const double gap = delta[0] - delta[i];
    const A s_i = static_cast<A>(std::exp(-delta[i]));
    const A t_i = static_cast<A>(std::abs(gap) < 0.5 ? s_r * std::expm1(gap) : std::exp(-delta[i]) - s_r);
    const A B_shifted = sums.B[i] - centred * sums.d_r;
    sums.F[i] = s_i * (sums.F[i] - centred * sums.D[i]) + t_i * B_shifted;
    sums.D[i] = s_i * sums.D[i] + t_i * sums.d_r;
    sums.B[i] = static_cast<A>(s_r) * B_shifted;
    sums.E[i] = s_i * (sums.E[i] - centred * sums.d[i]);
    sums.d[i] *= s_i;
  }
  sums.d_r *= static_cast<A>(s_r);
}

// Per-thread buffers: the tile of the valid rows [k, kTile] (rows 1.. overwritten by their
// delta_i), u_r = (x_r - m_r) / T, e_r, mean_j delta_j, and which columns count (MASKED tiles:
// those without -inf).
template <typename A>
struct Workspace {
  explicit Workspace(int64_t K)
      : y(K * kTile), u_r(kTile), e_r(kTile), mean(kTile), keep(kTile), rows(K), sums(K) {}
  std::vector<A> y, u_r, e_r, mean, keep;
  std::vector<int64_t> rows;
  GroupSums<A> sums;
};

// Adds the tile's n columns to the sums. MASKED: the tile holds -inf; a column at -inf in every
// valid row is left out, one at -inf in some rows only is left out and makes the result true.
template <bool MASKED, typename A>
bool accumulate_tile(Workspace<A>& ws, int64_t k, int64_t n, double inv_t) {
  GroupSums<A>& sums = ws.sums;
  const A* y_r = ws.y.data();
  const A m_r = sums.max[0];
  A* u_r = ws.u_r.data();
  A* e_r = ws.e_r.data();
  A* mean = ws.mean.data();
  A* keep = ws.keep.data();
  const A inv_k = A(1) / A(k), scale = static_cast<A>(inv_t);
  bool mixed = false;
  if (MASKED) {
    const A neg_inf = -std::numeric_limits<A>::infinity();
    std::fill_n(keep, n, A(0));
    for (int64_t i = 0; i < k; ++i) {
      const A* y = y_r + i * kTile;
#pragma omp simd
      for (int64_t c = 0; c < n; ++c) keep[c] += y[c] == neg_inf ? A(1) : A(0);
    }
    for (int64_t c = 0; c < n; ++c) {
      mixed |= keep[c] > A(0) && keep[c] < A(k);
      keep[c] = keep[c] == A(0) ? A(1) : A(0);
    }
  }
  // A tile's sums in float64: summed in float32, 128 terms a SIMD lane lost up to ~20 ulp.
  double d_r = 0, B_r = 0;
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) mean[c] = 0;
  for (int64_t i = 1; i < k; ++i) pivot_differences(ws.y.data() + i * kTile, y_r, sums.max[i], m_r, inv_t, n, mean);
#pragma omp simd reduction(+ : d_r, B_r)
  for (int64_t c = 0; c < n; ++c) {
    const A u = (y_r[c] - m_r) * scale;
    A e = exp_nonpositive(u);
    A m = mean[c] * inv_k;
    if (MASKED) {
      e = keep[c] != A(0) ? e : A(0);
      m = keep[c] != A(0) ? m : A(0);
    }
    u_r[c] = u;
    e_r[c] = e;
    mean[c] = m;
    d_r += e;
    B_r -= e * m;
  }
  sums.d_r += static_cast<A>(d_r);
  sums.B[0] += static_cast<A>(B_r);
  for (int64_t i = 1; i < k; ++i) {
    const A* delta_i = y_r + i * kTile;
    double D = 0, B = 0, F = 0, d = 0, E = 0;
#pragma omp simd reduction(+ : D, B, F, d, E)
    for (int64_t c = 0; c < n; ++c) {
      const A delta = delta_i[c];
      A b = delta - mean[c];
      const A small = e_r[c] * expm1_small(delta);
      A e_i = exp_nonpositive(u_r[c] + delta);
      A q = std::abs(delta) < A(0.5) ? small : e_i - e_r[c];
      if (MASKED) {
        b = keep[c] != A(0) ? b : A(0);
        q = keep[c] != A(0) ? q : A(0);
        e_i = keep[c] != A(0) ? e_i : A(0);
      }
      D += q;
      B += e_r[c] * b;
      F += q * b;
      d += e_i;
      E += e_i * b;
    }
    sums.D[i] += static_cast<A>(D);
    sums.B[i] += static_cast<A>(B);
    sums.F[i] += static_cast<A>(F);
    sums.d[i] += static_cast<A>(d);
    sums.E[i] += static_cast<A>(E);
  }
  return mixed;
}

// Row i's denominator, lambda_i = log(d_i / d_r) and X_i = <p_i - p_r, b_i>. Near the pivot
// (d_i >= d_r / 2) from the differences: d_i = d_r + D_i, X_i = (F_i - D_i B_i / d_r) / d_i;
// farther the sum d_r + D_i would cancel, and the direct sums are exact enough:
// X_i = E_i / d_i - B_i / d_r.
template <typename A>
void row_terms(const GroupSums<A>& sums, int64_t i, A& d_i, A& lambda, A& x_i) {
  if (i == 0 || sums.D[i] >= -A(0.5) * sums.d_r) {
    d_i = sums.d_r + sums.D[i];
    lambda = std::log1p(sums.D[i] / sums.d_r);
    x_i = (sums.F[i] - sums.D[i] * sums.B[i] / sums.d_r) / d_i;
  } else {
    d_i = sums.d[i];
    lambda = std::log(d_i / sums.d_r);
    x_i = sums.E[i] / d_i - sums.B[i] / sums.d_r;
  }
}

// Group loss and stats from the final sums; NaN when a valid row held NaN/+inf or only -inf,
// +inf when some column was -inf in some valid rows only.
template <typename A>
A finish_group(const Workspace<A>& ws, int64_t k, bool bad, bool mixed, A* stats_g) {
  const GroupSums<A>& sums = ws.sums;
  for (int64_t i = 0; i < k; ++i) bad |= sums.max[i] == -std::numeric_limits<A>::infinity();
  if (bad) return std::numeric_limits<A>::quiet_NaN();
  if (mixed) return std::numeric_limits<A>::infinity();
  A mean_lambda = 0;
  for (int64_t i = 0; i < k; ++i) {
    A* s = stats_g + ws.rows[i] * kNumStats;
    row_terms(sums, i, s[kDenom], s[kLambda], s[kInner]);
    mean_lambda += s[kLambda];
  }
  mean_lambda /= A(k);
  A total = 0;
  for (int64_t i = 0; i < k; ++i) {
    A* s = stats_g + ws.rows[i] * kNumStats;
    const A x_i = s[kInner];
    s[kMax] = sums.max[i];
    s[kRho] = i == 0 || sums.D[i] >= -A(0.5) * sums.d_r ? sums.D[i] / sums.d_r : s[kDenom] / sums.d_r - A(1);
    s[kLambda] -= mean_lambda;
    s[kInner] = sums.B[i] / sums.d_r - s[kLambda] + x_i;
    total += x_i;
  }
  return total / A(k - 1);
}

template <typename T, typename A>
A forward_group(const T* group, int64_t stride_k, int64_t stride_v, int64_t V, int64_t k, double inv_t,
                Workspace<A>& ws, A* stats_g) {
  GroupSums<A>& sums = ws.sums;
  sums.reset(k);
  bool bad = false, mixed = false;
  for (int64_t v0 = 0; v0 < V && !bad; v0 += kTile) {
    const int64_t n = std::min(kTile, V - v0);
    bool negative_infinity = false;
    for (int64_t i = 0; i < k; ++i) {
      const SegmentFlags flags = load_segment(group + ws.rows[i] * stride_k + v0 * stride_v, stride_v, n,
                                              A(1), ws.y.data() + i * kTile);
      negative_infinity |= flags.negative_infinity;
      bad |= flags.bad;
    }
    if (bad) break;
    bool grew = false, started = true;
    for (int64_t i = 0; i < k; ++i) {
      sums.new_max[i] = std::max(sums.max[i], segment_max(ws.y.data() + i * kTile, n));
      grew |= sums.new_max[i] > sums.max[i];
      started &= sums.max[i] > -std::numeric_limits<A>::infinity();
    }
    // Before every row has a finite max, every column so far was left out: the sums are 0.
    if (grew && started) rescale(sums, k, inv_t);
    if (grew) std::copy_n(sums.new_max.begin(), k, sums.max.begin());
    mixed |= negative_infinity ? accumulate_tile<true>(ws, k, n, inv_t) : accumulate_tile<false>(ws, k, n, inv_t);
  }
  return finish_group(ws, k, bad, mixed, stats_g);
}

template <typename T>
void forward_all(const at::Tensor& logits, const bool* valid, int64_t valid_sg, int64_t valid_sk,
                 double temperature, at::Tensor& group_loss, at::Tensor& stats) {
  using A = at::opmath_type<T>;
  const int64_t G = logits.size(0), K = logits.size(1), V = logits.size(2);
  const int64_t sg = logits.stride(0), sk = logits.stride(1), sv = logits.stride(2);
  const T* data = logits.data_ptr<T>();
  A* loss = group_loss.data_ptr<A>();
  A* stat = stats.data_ptr<A>();
  const double inv_t = 1.0 / temperature;
  at::parallel_for(0, G, 1, [&](int64_t begin, int64_t end) {
    Workspace<A> ws(K);
    for (int64_t g = begin; g < end; ++g) {
      const int64_t k = valid_rows(valid, valid_sg, valid_sk, g, K, ws.rows.data());
      loss[g] = k < 2 ? A(0) : forward_group(data + g * sg, sk, sv, V, k, inv_t, ws, stat + g * K * kNumStats);
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> pairwise_kl_forward(const at::Tensor& logits,
                                                       const c10::optional<at::Tensor>& valid,
                                                       double temperature) {
  TORCH_CHECK(logits.dim() == 3, "logits must be [G, K, V], got ", logits.sizes());
  TORCH_CHECK(temperature > 0, "temperature must be > 0, got ", temperature);
  const int64_t G = logits.size(0), K = logits.size(1);
  const bool has_valid = valid.has_value() && valid->defined();
  if (has_valid) {
    TORCH_CHECK(valid->scalar_type() == at::kBool && valid->sizes() == at::IntArrayRef({G, K}),
                "valid must be a bool tensor [G, K]");
  }
  const auto acc = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor group_loss = at::empty({G}, logits.options().dtype(acc));
  at::Tensor stats = at::zeros({G, K, kNumStats}, logits.options().dtype(acc));
  const bool* valid_data = has_valid ? valid->data_ptr<bool>() : nullptr;
  const int64_t valid_sg = has_valid ? valid->stride(0) : 0, valid_sk = has_valid ? valid->stride(1) : 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "pairwise_kl_forward", [&] {
    forward_all<scalar_t>(logits, valid_data, valid_sg, valid_sk, temperature, group_loss, stats);
  });
  return {group_loss, stats};
}

}  // namespace mcckd_native

// Backward of the pairwise symmetric KL: one more pass over the vocabulary per group.
//
// From the forward's stats, per column: p_r = e_r / d_r, q_i = p_i - p_r = (q~_i - e_r rho_i) / d_i,
// eps_i = b_i - lambda_i (= l_i - lbar), and
//   dS/dy_i = k [p_r (eps_i - c_i) + q_i (1 + eps_i - c_i)] - sum_j q_j,
// every term as small as the gradient itself; dL/dx_i = grad_g dS/dy_i / (T k (k - 1)).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "math.h"
#include "pairwise_kl.h"
#include "tile.h"

namespace mcckd_native {
namespace {

// Per-thread buffers: the tile of the valid rows [k, kTile] (rows 1.. overwritten by delta_i,
// then every row by a_i below), u_r = (x_r - m_r) / T, mean_j delta_j, sum_j q_j.
template <typename A>
struct Workspace {
  explicit Workspace(int64_t K) : y(K * kTile), u_r(kTile), mean(kTile), sum_q(kTile), rows(K) {}
  std::vector<A> y, u_r, mean, sum_q;
  std::vector<int64_t> rows;
};

// The gradient of the tile's n columns of the k valid rows into out rows (stride V), as
// scale (a_i - sum_j q_j) with, for w_i = eps_i - c_i,
//   a_i = k [p_r w_i + q_i (1 + w_i)]   where |delta_i| < 1/2 (p_i near p_r),
//   a_i = k [p_i (1 + w_i) - p_r]        elsewhere (the same value; no cancellation of p_r w_i).
// MASKED: the tile holds -inf; with a finite loss such a column is -inf in every valid row
// and its gradient is 0.
template <bool MASKED, typename T, typename A>
void tile_gradient(Workspace<A>& ws, const A* stats_g, int64_t k, int64_t n, double inv_t, A scale, T* out,
                   int64_t V) {
  const A* y_r = ws.y.data();
  const A* s_r = stats_g + ws.rows[0] * kNumStats;
  const A m_r = s_r[kMax], inv_d_r = A(1) / s_r[kDenom];
  A* u_r = ws.u_r.data();
  A* mean = ws.mean.data();
  A* sum_q = ws.sum_q.data();
  const A inv_k = A(1) / A(k), kk = A(k), neg_inf = -std::numeric_limits<A>::infinity();
  const A t = static_cast<A>(inv_t);
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) {
    mean[c] = 0;
    sum_q[c] = 0;
    u_r[c] = (y_r[c] - m_r) * t;
  }
  for (int64_t i = 1; i < k; ++i) {
    pivot_differences(ws.y.data() + i * kTile, y_r, stats_g[ws.rows[i] * kNumStats + kMax], m_r, inv_t, n, mean);
  }
  for (int64_t i = k - 1; i >= 0; --i) {
    A* y = ws.y.data() + i * kTile;
    const A* s = stats_g + ws.rows[i] * kNumStats;
    const A rho = s[kRho], inv_d = A(1) / s[kDenom], lambda_c = s[kLambda] + s[kInner];
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) {
      const A delta = i == 0 ? A(0) : y[c];
      const A e_r = exp_nonpositive(u_r[c]);
      const A p_r = e_r * inv_d_r;
      const A e_i = exp_nonpositive(u_r[c] + delta);
      const bool near = std::abs(delta) < A(0.5);
      const A q_tilde = i == 0 ? A(0) : (near ? e_r * expm1_small(delta) : e_i - e_r);
      A q = near ? (q_tilde - e_r * rho) * inv_d : e_i * inv_d - p_r;
      const A w = (delta - mean[c] * inv_k) - lambda_c;
      A a = near ? kk * (p_r * w + q * (A(1) + w)) : kk * (e_i * inv_d * (A(1) + w) - p_r);
      if (MASKED) {
        q = u_r[c] == neg_inf ? A(0) : q;
        a = u_r[c] == neg_inf ? A(0) : a;
      }
      sum_q[c] += q;
      y[c] = a;
    }
  }
  for (int64_t i = 0; i < k; ++i) {
    const A* a = ws.y.data() + i * kTile;
    T* o = out + ws.rows[i] * V;
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) o[c] = static_cast<T>(scale * (a[c] - sum_q[c]));
  }
}

// Zeros the rows of out_g [K, V] that are not among rows[0..k) (ascending).
template <typename T>
void zero_other_rows(T* out_g, const int64_t* rows, int64_t k, int64_t K, int64_t V) {
  for (int64_t i = 0, next = 0; i < K; ++i) {
    if (next < k && rows[next] == i) {
      ++next;
    } else {
      std::fill_n(out_g + i * V, V, T(0));
    }
  }
}

template <typename T, typename A>
void backward_group(const T* group, int64_t stride_k, int64_t stride_v, int64_t V, int64_t k,
                    double inv_t, A scale, const A* stats_g, Workspace<A>& ws, T* out) {
  for (int64_t v0 = 0; v0 < V; v0 += kTile) {
    const int64_t n = std::min(kTile, V - v0);
    bool negative_infinity = false;
    for (int64_t i = 0; i < k; ++i) {
      negative_infinity |= load_segment(group + ws.rows[i] * stride_k + v0 * stride_v, stride_v, n, A(1),
                                        ws.y.data() + i * kTile).negative_infinity;
    }
    if (negative_infinity) {
      tile_gradient<true>(ws, stats_g, k, n, inv_t, scale, out + v0, V);
    } else {
      tile_gradient<false>(ws, stats_g, k, n, inv_t, scale, out + v0, V);
    }
  }
}

template <typename T>
void backward_all(const at::Tensor& grad_group, const at::Tensor& logits, const bool* valid, int64_t valid_sg,
                  int64_t valid_sk, const at::Tensor& group_loss, const at::Tensor& stats, double temperature,
                  at::Tensor& grad) {
  using A = at::opmath_type<T>;
  const int64_t G = logits.size(0), K = logits.size(1), V = logits.size(2);
  const int64_t sg = logits.stride(0), sk = logits.stride(1), sv = logits.stride(2);
  const T* data = logits.data_ptr<T>();
  const A* grad_g = grad_group.data_ptr<A>();
  const int64_t grad_sg = grad_group.stride(0);
  const A* loss = group_loss.data_ptr<A>();
  const A* stat = stats.data_ptr<A>();
  T* out = grad.data_ptr<T>();
  const double inv_t = 1.0 / temperature;
  at::parallel_for(0, G, 1, [&](int64_t begin, int64_t end) {
    Workspace<A> ws(K);
    for (int64_t g = begin; g < end; ++g) {
      T* out_g = out + g * K * V;
      const int64_t k = valid_rows(valid, valid_sg, valid_sk, g, K, ws.rows.data());
      zero_other_rows(out_g, ws.rows.data(), k < 2 ? 0 : k, K, V);
      if (k < 2) continue;
      if (!std::isfinite(loss[g])) {
        for (int64_t i = 0; i < k; ++i) {
          std::fill_n(out_g + ws.rows[i] * V, V, static_cast<T>(std::numeric_limits<A>::quiet_NaN()));
        }
        continue;
      }
      const A scale = grad_g[g * grad_sg] * static_cast<A>(inv_t) / A(k * (k - 1));
      backward_group(data + g * sg, sk, sv, V, k, inv_t, scale, stat + g * K * kNumStats, ws, out_g);
    }
  });
}

}  // namespace

at::Tensor pairwise_kl_backward(const at::Tensor& grad_group, const at::Tensor& logits,
                                const c10::optional<at::Tensor>& valid, const at::Tensor& group_loss,
                                const at::Tensor& stats, double temperature) {
  TORCH_CHECK(logits.dim() == 3, "logits must be [G, K, V], got ", logits.sizes());
  const int64_t G = logits.size(0), K = logits.size(1);
  const auto acc = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(grad_group.dim() == 1 && grad_group.size(0) == G && grad_group.scalar_type() == acc,
              "grad_group must be [G] in the accumulator dtype");
  TORCH_CHECK(group_loss.is_contiguous() && stats.is_contiguous() && stats.size(1) == K,
              "group_loss and stats must be the forward's outputs");
  const bool has_valid = valid.has_value() && valid->defined();
  const bool* valid_data = has_valid ? valid->data_ptr<bool>() : nullptr;
  const int64_t valid_sg = has_valid ? valid->stride(0) : 0, valid_sk = has_valid ? valid->stride(1) : 0;
  at::Tensor grad = at::empty(logits.sizes(), logits.options().memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "pairwise_kl_backward", [&] {
    backward_all<scalar_t>(grad_group, logits, valid_data, valid_sg, valid_sk, group_loss, stats, temperature,
                           grad);
  });
  return grad;
}

}  // namespace mcckd_native

// Cross-entropy rows of a logits tile, in place: for row r with z_r = logits_r (+ bias) and
// target y_r,
//   loss_r = lse(z_r) - z_r[y_r],   logits_r <- softmax(z_r) - onehot(y_r)   (when write_grad)
// both 0 on rows whose target is ignore_index (their logits are not read). One read finds
// lse with a running maximum tile by tile (d <- d exp(m - m') + sum exp(z - m')), a second
// writes the gradient. NaN or +inf in a row (or a row of -inf only) gives a NaN loss and a
// NaN gradient row.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "math.h"
#include "tile.h"

namespace mcckd_native {
namespace {

// z[c] = row[c * stride] + bias[c * bias_stride] for c < n (no bias: bias == nullptr).
template <typename A, typename B>
SegmentFlags load_with_bias(const A* row, int64_t stride, const B* bias, int64_t bias_stride, int64_t n, A* z) {
  SegmentFlags flags = load_segment(row, stride, n, A(1), z);
  if (bias == nullptr) return flags;
  for (int64_t c = 0; c < n; ++c) z[c] += static_cast<A>(bias[c * bias_stride]);
  int32_t negative_infinity = 0, bad = 0;
#pragma omp simd reduction(| : negative_infinity, bad)
  for (int64_t c = 0; c < n; ++c) {
    negative_infinity |= z[c] == -std::numeric_limits<A>::infinity();
    bad |= !(z[c] < std::numeric_limits<A>::infinity());
  }
  return {negative_infinity != 0, bad != 0};
}

// log sum_v exp(z_v) of one row; NaN when the row holds NaN/+inf or only -inf.
template <typename A, typename B>
A row_log_sum_exp(const A* row, int64_t stride, const B* bias, int64_t bias_stride, int64_t V, A* z) {
  A m = -std::numeric_limits<A>::infinity(), d = 0;
  for (int64_t v0 = 0; v0 < V; v0 += kTile) {
    const int64_t n = std::min(kTile, V - v0);
    const B* bias_tile = bias == nullptr ? nullptr : bias + v0 * bias_stride;
    if (load_with_bias(row + v0 * stride, stride, bias_tile, bias_stride, n, z).bad) {
      return std::numeric_limits<A>::quiet_NaN();
    }
    const A tile_max = segment_max(z, n);
    if (tile_max > m) {
      d = m == -std::numeric_limits<A>::infinity() ? A(0) : d * exp_nonpositive(m - tile_max);
      m = tile_max;
    }
    if (m == -std::numeric_limits<A>::infinity()) continue;
    A sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t c = 0; c < n; ++c) sum += exp_nonpositive(z[c] - m);
    d += sum;
  }
  if (m == -std::numeric_limits<A>::infinity()) return std::numeric_limits<A>::quiet_NaN();
  return m + std::log(d);
}

// row <- softmax(z) - onehot(label), given lse.
template <typename A, typename B>
void write_row_gradient(A* row, int64_t stride, const B* bias, int64_t bias_stride, int64_t V, int64_t label,
                        A lse, A* z) {
  for (int64_t v0 = 0; v0 < V; v0 += kTile) {
    const int64_t n = std::min(kTile, V - v0);
    const B* bias_tile = bias == nullptr ? nullptr : bias + v0 * bias_stride;
    load_with_bias(row + v0 * stride, stride, bias_tile, bias_stride, n, z);
    A* out = row + v0 * stride;
    if (stride == 1) {
#pragma omp simd
      for (int64_t c = 0; c < n; ++c) out[c] = exp_nonpositive(z[c] - lse);
    } else {
      for (int64_t c = 0; c < n; ++c) out[c * stride] = exp_nonpositive(z[c] - lse);
    }
  }
  row[label * stride] -= A(1);
}

template <typename A, typename B, typename L>
void all_rows(at::Tensor& logits, const B* bias, int64_t bias_stride, const L* labels, int64_t label_stride,
              int64_t ignore_index, A* loss, int64_t loss_stride, bool write_grad) {
  const int64_t C = logits.size(0), V = logits.size(1);
  const int64_t sr = logits.stride(0), sv = logits.stride(1);
  A* data = logits.data_ptr<A>();
  for (int64_t r = 0; r < C; ++r) {
    const int64_t label = static_cast<int64_t>(labels[r * label_stride]);
    TORCH_CHECK(label == ignore_index || (label >= 0 && label < V), "labels must lie in [0, ", V,
                ") or equal ignore_index=", ignore_index, ", got ", label);
  }
  at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> z(kTile);
    for (int64_t r = begin; r < end; ++r) {
      A* row = data + r * sr;
      const int64_t label = static_cast<int64_t>(labels[r * label_stride]);
      if (label == ignore_index) {
        loss[r * loss_stride] = 0;
        if (write_grad) {
          for (int64_t v = 0; v < V; ++v) row[v * sv] = 0;
        }
        continue;
      }
      const A lse = row_log_sum_exp(row, sv, bias, bias_stride, V, z.data());
      const A z_target = row[label * sv] + (bias == nullptr ? A(0) : static_cast<A>(bias[label * bias_stride]));
      loss[r * loss_stride] = lse - z_target;
      if (!write_grad) continue;
      if (std::isnan(lse)) {
        for (int64_t v = 0; v < V; ++v) row[v * sv] = lse;
      } else {
        write_row_gradient(row, sv, bias, bias_stride, V, label, lse, z.data());
      }
    }
  });
}

}  // namespace

void cross_entropy_rows(at::Tensor& logits, const c10::optional<at::Tensor>& bias, const at::Tensor& labels,
                        int64_t ignore_index, at::Tensor& loss_out, bool write_grad) {
  TORCH_CHECK(logits.dim() == 2, "logits must be [C, V], got ", logits.sizes());
  TORCH_CHECK(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kDouble,
              "logits must be float32 or float64, got ", logits.scalar_type());
  const int64_t C = logits.size(0), V = logits.size(1);
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == C, "labels must be [C]");
  TORCH_CHECK(loss_out.dim() == 1 && loss_out.size(0) == C && loss_out.scalar_type() == logits.scalar_type(),
              "loss_out must be [C] in logits' dtype");
  const bool has_bias = bias.has_value() && bias->defined();
  TORCH_CHECK(!has_bias || (bias->dim() == 1 && bias->size(0) == V), "bias must be [V]");
  const at::ScalarType bias_type = has_bias ? bias->scalar_type() : logits.scalar_type();
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "cross_entropy_rows", [&] {
    using A = scalar_t;
    A* loss = loss_out.data_ptr<A>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, bias_type, "cross_entropy_rows_bias", [&] {
      const scalar_t* bias_data = has_bias ? bias->data_ptr<scalar_t>() : nullptr;
      const int64_t bias_stride = has_bias ? bias->stride(0) : 0;
      AT_DISPATCH_INDEX_TYPES(labels.scalar_type(), "cross_entropy_rows_labels", [&] {
        all_rows<A, scalar_t, index_t>(logits, bias_data, bias_stride, labels.data_ptr<index_t>(),
                                       labels.stride(0), ignore_index, loss, loss_out.stride(0), write_grad);
      });
    });
  });
}

}  // namespace mcckd_native

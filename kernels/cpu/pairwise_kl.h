// Pairwise symmetric KL over the K rows of each group: the forward's per-row statistics
// (what the backward needs, O(G K)) and the two kernels. The math is docs/design.md's
// "Precision: differences to a pivot row": every quantity is a difference to the group's
// first valid row r, so near-identical rows keep their relative precision.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace mcckd_native {

// stats[g, i, :] for a valid row i of a group with k >= 2 valid rows and a finite loss:
//   kMax    m_i, the row's maximum of y_i = x_i / T
//   kRho    D_i / d_r, where d_i = sum_v exp(y_i - m_i) and D_i = d_i - d_r
//   kDenom  d_i
//   kInner  c_i = <p_i, l_i - lbar>
//   kLambda lambda_i - mean_j lambda_j, lambda_i = log(d_i / d_r)
enum Stat : int64_t { kMax = 0, kRho, kDenom, kInner, kLambda, kNumStats };

// (group_loss [G], stats [G, K, kNumStats]) of logits [G, K, V] (float32/bfloat16/float16:
// float32 results; float64: float64), valid [G, K] bool or undefined (all rows).
// group_loss = S / (k (k - 1)); 0 for k < 2; NaN for NaN/+inf (or an all -inf row) in a
// valid row; +inf when a column is -inf in some valid rows but not all.
std::tuple<at::Tensor, at::Tensor> pairwise_kl_forward(const at::Tensor& logits,
                                                       const c10::optional<at::Tensor>& valid,
                                                       double temperature);

// d(sum_g grad_group[g] * group_loss[g]) / d logits, [G, K, V] contiguous in logits' dtype:
// 0 on invalid rows and groups with k < 2, NaN on the valid rows of a group whose loss is
// not finite.
at::Tensor pairwise_kl_backward(const at::Tensor& grad_group, const at::Tensor& logits,
                                const c10::optional<at::Tensor>& valid, const at::Tensor& group_loss,
                                const at::Tensor& stats, double temperature);

// The valid rows of group g, pivot first: their indices into [0, K) in rows[0..k), returns k.
int64_t valid_rows(const bool* valid, int64_t valid_stride_g, int64_t valid_stride_k, int64_t g,
                   int64_t K, int64_t* rows);

}  // namespace mcckd_native

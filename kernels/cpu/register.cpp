// The native ops as torch operators mcckd::native_*, with CPU kernels and Meta kernels (shapes
// only) so that torch.compile can trace them. mcckd/ops/native.py loads this library.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "pairwise_kl.h"

namespace mcckd_native {

void cross_entropy_rows(at::Tensor& logits, const c10::optional<at::Tensor>& bias, const at::Tensor& labels,
                        int64_t ignore_index, at::Tensor& loss_out, bool write_grad);

namespace {

at::ScalarType accumulator_type(const at::Tensor& logits) {
  return logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

std::tuple<at::Tensor, at::Tensor> pairwise_kl_forward_meta(const at::Tensor& logits,
                                                            const c10::optional<at::Tensor>&, double) {
  const auto options = logits.options().dtype(accumulator_type(logits));
  return {at::empty({logits.size(0)}, options), at::empty({logits.size(0), logits.size(1), kNumStats}, options)};
}

at::Tensor pairwise_kl_backward_meta(const at::Tensor&, const at::Tensor& logits, const c10::optional<at::Tensor>&,
                                     const at::Tensor&, const at::Tensor&, double) {
  return at::empty(logits.sizes(), logits.options().memory_format(at::MemoryFormat::Contiguous));
}

void cross_entropy_rows_meta(at::Tensor&, const c10::optional<at::Tensor>&, const at::Tensor&, int64_t,
                             at::Tensor&, bool) {}

}  // namespace
}  // namespace mcckd_native

TORCH_LIBRARY_FRAGMENT(mcckd, m) {
  m.def("native_pairwise_kl_forward(Tensor logits, Tensor? valid, float temperature) -> (Tensor, Tensor)");
  m.def(
      "native_pairwise_kl_backward(Tensor grad_group, Tensor logits, Tensor? valid, Tensor group_loss, "
      "Tensor stats, float temperature) -> Tensor");
  m.def(
      "native_cross_entropy_rows(Tensor(a!) logits, Tensor? bias, Tensor labels, int ignore_index, "
      "Tensor(b!) loss_out, bool write_grad) -> ()");
}

TORCH_LIBRARY_IMPL(mcckd, CPU, m) {
  m.impl("native_pairwise_kl_forward", &mcckd_native::pairwise_kl_forward);
  m.impl("native_pairwise_kl_backward", &mcckd_native::pairwise_kl_backward);
  m.impl("native_cross_entropy_rows", &mcckd_native::cross_entropy_rows);
}

TORCH_LIBRARY_IMPL(mcckd, Meta, m) {
  m.impl("native_pairwise_kl_forward", &mcckd_native::pairwise_kl_forward_meta);
  m.impl("native_pairwise_kl_backward", &mcckd_native::pairwise_kl_backward_meta);
  m.impl("native_cross_entropy_rows", &mcckd_native::cross_entropy_rows_meta);
}

// The schemas of torch.ops.fastalign: the contract of fastalign/losses/_dispatch.py, in one place.
//
// Each forward op ``<name>`` has a ``<name>_backward(Tensor grad_loss, <the forward's arguments>)`` that returns
// the gradients of the forward's leading differentiable tensors, in order. Autograd is wired in Python
// (fastalign/ext/_autograd.py, torch.library.register_autograd), so the ops work with autograd on every device
// that has a kernel: CPU always (segment_sum.cpp, loss_heads.cpp), CUDA when built with nvcc (cuda/).
#include <torch/library.h>

TORCH_LIBRARY(fastalign, m) {
  m.def("segment_sum(Tensor values, Tensor mask, Tensor cu_seqlens, bool mean) -> Tensor");
  m.def("segment_sum_backward(Tensor grad, Tensor mask, Tensor cu_seqlens, bool mean) -> Tensor");

  m.def(
      "dpo_terms(Tensor policy_chosen, Tensor policy_rejected, Tensor ref_chosen, Tensor ref_rejected, "
      "Tensor chosen_lengths, Tensor rejected_lengths, float beta, str loss_type, float label_smoothing, "
      "float discopop_tau) -> (Tensor, Tensor)");
  m.def(
      "dpo_terms_backward(Tensor grad_loss, Tensor policy_chosen, Tensor policy_rejected, Tensor ref_chosen, "
      "Tensor ref_rejected, Tensor chosen_lengths, Tensor rejected_lengths, float beta, str loss_type, "
      "float label_smoothing, float discopop_tau) -> (Tensor, Tensor, Tensor, Tensor)");

  m.def("orpo_terms(Tensor chosen_logps, Tensor rejected_logps, Tensor nll_loss, float beta) -> (Tensor, Tensor)");
  m.def(
      "orpo_terms_backward(Tensor grad_loss, Tensor chosen_logps, Tensor rejected_logps, Tensor nll_loss, "
      "float beta) -> (Tensor, Tensor, Tensor)");

  m.def(
      "kto_terms(Tensor policy_logps, Tensor ref_logps, Tensor desirable, Tensor kl, float beta, "
      "float desirable_weight, float undesirable_weight, str loss_type) -> (Tensor, Tensor)");
  m.def(
      "kto_terms_backward(Tensor grad_loss, Tensor policy_logps, Tensor ref_logps, Tensor desirable, Tensor kl, "
      "float beta, float desirable_weight, float undesirable_weight, str loss_type) -> (Tensor, Tensor)");

  m.def(
      "cpo_terms(Tensor chosen_logps, Tensor rejected_logps, Tensor nll_loss, float beta, float gamma, "
      "str loss_type, float label_smoothing, float cpo_alpha) -> (Tensor, Tensor)");
  m.def(
      "cpo_terms_backward(Tensor grad_loss, Tensor chosen_logps, Tensor rejected_logps, Tensor nll_loss, "
      "float beta, float gamma, str loss_type, float label_smoothing, float cpo_alpha) -> (Tensor, Tensor, Tensor)");

  m.def(
      "bradley_terry_terms(Tensor chosen_rewards, Tensor rejected_rewards, Tensor margin, "
      "float center_rewards_coefficient) -> (Tensor, Tensor)");
  m.def(
      "bradley_terry_terms_backward(Tensor grad_loss, Tensor chosen_rewards, Tensor rejected_rewards, "
      "Tensor margin, float center_rewards_coefficient) -> (Tensor, Tensor)");
}

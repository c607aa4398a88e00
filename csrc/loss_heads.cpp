// The alignment loss-head ops (``*_terms`` and ``*_terms_backward``) and their CPU twin.
//
// Each forward op checks its tensors, points a head struct (loss_heads.h) at them and runs it: on CPU the batch
// is cut into fixed chunks of kChunk pairs reduced in parallel and merged in chunk order (the result does not
// depend on the thread count); on CUDA one single-block launch (cuda/loss_heads.cu). Each backward op
// recomputes the per-pair derivatives from the same inputs (no saved intermediates) and returns the gradients of
// the forward's differentiable inputs, in argument order. Signatures and metric orders follow the contract in
// fastalign/losses/_dispatch.py; the schemas are in library.cpp.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <string_view>
#include <vector>

#include "loss_heads.h"
#include "op_utils.h"
#ifdef FASTALIGN_WITH_CUDA
#include "cuda/launch.h"
#endif

namespace fastalign {
namespace {

using at::Tensor;
using Pair = std::tuple<Tensor, Tensor>;

// Loss-type names in the order of the enums in loss_math.h (DPO_LOSS_TYPES, KTO_LOSS_TYPES, CPO_LOSS_TYPES).
constexpr const char* kDpoTypes[] = {"sigmoid", "robust",    "hinge",   "ipo",      "sigmoid_norm", "exo_pair",
                                     "bco_pair", "sppo_hard", "nca_pair", "apo_zero", "apo_down",     "discopop"};
constexpr const char* kKtoTypes[] = {"kto", "apo_zero_unpaired"};
constexpr const char* kCpoTypes[] = {"simpo", "sigmoid", "hinge", "ipo"};

template <class Enum, size_t N>
Enum parse_choice(const char* what, c10::string_view value, const char* const (&names)[N]) {
  const std::string_view v(value.data(), value.size());
  for (size_t i = 0; i < N; ++i) {
    if (v == names[i]) return static_cast<Enum>(i);
  }
  TORCH_CHECK(false, "fastalign: unknown ", what, " '", v, "'");
}

template <class Head>
Pair run_forward(const Head& head, int64_t n, const Tensor& like) {
  TORCH_CHECK(n > 0, "fastalign: empty batch (the loss is a mean over pairs)");
  Tensor loss = at::empty({}, like.options()), metrics = at::empty({Head::kMetrics}, like.options());
  float* pl = loss.mutable_data_ptr<float>();
  float* pm = metrics.mutable_data_ptr<float>();
#ifdef FASTALIGN_WITH_CUDA
  if (like.is_cuda()) {
    const c10::DeviceGuard guard(like.device());
    check_launch(cuda::head_forward(head, n, pl, pm, cuda_stream(like.device())));
    return {loss, metrics};
  }
#endif
  constexpr int64_t kChunk = 1024;
  std::vector<typename Head::Acc> partial((n + kChunk - 1) / kChunk);
  at::parallel_for(0, static_cast<int64_t>(partial.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      head.init(partial[c]);
      for (int64_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); ++i) head.accumulate(i, partial[c]);
    }
  });
  typename Head::Acc total;
  head.init(total);
  for (const auto& p : partial) Head::merge(total, p);
  head.finalize(total, n, pl, pm);
  return {loss, metrics};
}

// The loss is a mean over the n pairs, so each pair's derivatives are scaled by dL/dloss / n.
template <class Head>
void run_backward(const Head& head, int64_t n, const Tensor& grad_loss, const at::Device& device) {
  TORCH_CHECK(n > 0, "fastalign: empty batch (the loss is a mean over pairs)");
  const Tensor g = f32_scalar("grad_loss", grad_loss, device);
#ifdef FASTALIGN_WITH_CUDA
  if (g.is_cuda()) {
    const c10::DeviceGuard guard(device);
    check_launch(cuda::head_backward(head, n, g.const_data_ptr<float>(), cuda_stream(device)));
    return;
  }
#endif
  const float grad = *g.const_data_ptr<float>(), scale = grad / static_cast<float>(n);
  at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) head.backward(i, scale);
  });
  head.backward_scalar(grad);
}

Tensor empty_like_vector(const Tensor& t) { return at::empty({t.size(0)}, t.options()); }

// Backward of a pair head with an NLL term (ORPO, CPO: ``op.c`` the chosen log-probs, ``op.head`` the head):
// gradients with respect to the chosen and rejected log-probs [B] and to the scalar nll_loss.
template <typename PairWithNll>
std::tuple<Tensor, Tensor, Tensor> pair_with_nll_backward(PairWithNll& op, const Tensor& grad_loss,
                                                          const Tensor& nll_loss) {
  Tensor gc = empty_like_vector(op.c), gr = empty_like_vector(op.c), gnll = at::empty({}, op.c.options());
  op.head.grad_chosen = gc.mutable_data_ptr<float>();
  op.head.grad_rejected = gr.mutable_data_ptr<float>();
  op.head.grad_nll_loss = gnll.mutable_data_ptr<float>();
  run_backward(op.head, op.c.size(0), grad_loss, op.c.device());
  return {gc, gr, gnll.reshape(nll_loss.sizes())};
}

// ---------------------------------------------------------------------------------------------------------------
// dpo_terms
// ---------------------------------------------------------------------------------------------------------------

struct Dpo {
  Tensor pc, pr, rc, rr, lc, lr;
  DpoHead head{};

  Dpo(const Tensor& policy_chosen, const Tensor& policy_rejected, const Tensor& ref_chosen,
      const Tensor& ref_rejected, const Tensor& chosen_lengths, const Tensor& rejected_lengths, double beta,
      c10::string_view loss_type, double label_smoothing, double discopop_tau) {
    const int64_t n = policy_chosen.size(0);
    const at::Device d = policy_chosen.device();
    pc = f32_vector("policy_chosen", policy_chosen, n, d);
    pr = f32_vector("policy_rejected", policy_rejected, n, d);
    rc = f32_vector("ref_chosen", ref_chosen, n, d);
    rr = f32_vector("ref_rejected", ref_rejected, n, d);
    lc = f32_vector("chosen_lengths", chosen_lengths, n, d);
    lr = f32_vector("rejected_lengths", rejected_lengths, n, d);
    head.policy_chosen = pc.const_data_ptr<float>();
    head.policy_rejected = pr.const_data_ptr<float>();
    head.ref_chosen = rc.const_data_ptr<float>();
    head.ref_rejected = rr.const_data_ptr<float>();
    head.chosen_lengths = lc.const_data_ptr<float>();
    head.rejected_lengths = lr.const_data_ptr<float>();
    head.p = {parse_choice<DpoType>("DPO loss_type", loss_type, kDpoTypes), static_cast<float>(beta),
              static_cast<float>(label_smoothing), static_cast<float>(discopop_tau)};
  }
};

Pair dpo_terms(const Tensor& policy_chosen, const Tensor& policy_rejected, const Tensor& ref_chosen,
               const Tensor& ref_rejected, const Tensor& chosen_lengths, const Tensor& rejected_lengths, double beta,
               c10::string_view loss_type, double label_smoothing, double discopop_tau) {
  const Dpo op(policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_lengths, rejected_lengths, beta,
               loss_type, label_smoothing, discopop_tau);
  return run_forward(op.head, op.pc.size(0), op.pc);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> dpo_terms_backward(
    const Tensor& grad_loss, const Tensor& policy_chosen, const Tensor& policy_rejected, const Tensor& ref_chosen,
    const Tensor& ref_rejected, const Tensor& chosen_lengths, const Tensor& rejected_lengths, double beta,
    c10::string_view loss_type, double label_smoothing, double discopop_tau) {
  Dpo op(policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_lengths, rejected_lengths, beta,
         loss_type, label_smoothing, discopop_tau);
  Tensor gpc = empty_like_vector(op.pc), gpr = empty_like_vector(op.pc), grc = empty_like_vector(op.pc),
         grr = empty_like_vector(op.pc);
  op.head.grad_policy_chosen = gpc.mutable_data_ptr<float>();
  op.head.grad_policy_rejected = gpr.mutable_data_ptr<float>();
  op.head.grad_ref_chosen = grc.mutable_data_ptr<float>();
  op.head.grad_ref_rejected = grr.mutable_data_ptr<float>();
  run_backward(op.head, op.pc.size(0), grad_loss, op.pc.device());
  return {gpc, gpr, grc, grr};
}

// ---------------------------------------------------------------------------------------------------------------
// orpo_terms
// ---------------------------------------------------------------------------------------------------------------

struct Orpo {
  Tensor c, r, nll;
  OrpoHead head{};

  Orpo(const Tensor& chosen_logps, const Tensor& rejected_logps, const Tensor& nll_loss, double beta) {
    const int64_t n = chosen_logps.size(0);
    const at::Device d = chosen_logps.device();
    c = f32_vector("chosen_logps", chosen_logps, n, d);
    r = f32_vector("rejected_logps", rejected_logps, n, d);
    nll = f32_scalar("nll_loss", nll_loss, d);
    head.chosen = c.const_data_ptr<float>();
    head.rejected = r.const_data_ptr<float>();
    head.nll_loss = nll.const_data_ptr<float>();
    head.beta = static_cast<float>(beta);
  }
};

Pair orpo_terms(const Tensor& chosen_logps, const Tensor& rejected_logps, const Tensor& nll_loss, double beta) {
  const Orpo op(chosen_logps, rejected_logps, nll_loss, beta);
  return run_forward(op.head, op.c.size(0), op.c);
}

std::tuple<Tensor, Tensor, Tensor> orpo_terms_backward(const Tensor& grad_loss, const Tensor& chosen_logps,
                                                       const Tensor& rejected_logps, const Tensor& nll_loss,
                                                       double beta) {
  Orpo op(chosen_logps, rejected_logps, nll_loss, beta);
  return pair_with_nll_backward(op, grad_loss, nll_loss);
}

// ---------------------------------------------------------------------------------------------------------------
// kto_terms
// ---------------------------------------------------------------------------------------------------------------

struct Kto {
  Tensor pol, ref, des, kl;
  KtoHead head{};

  Kto(const Tensor& policy_logps, const Tensor& ref_logps, const Tensor& desirable, const Tensor& kl_, double beta,
      double desirable_weight, double undesirable_weight, c10::string_view loss_type) {
    const int64_t n = policy_logps.size(0);
    const at::Device d = policy_logps.device();
    pol = f32_vector("policy_logps", policy_logps, n, d);
    ref = f32_vector("ref_logps", ref_logps, n, d);
    des = bool_vector("desirable", desirable, n, d);
    kl = f32_scalar("kl", kl_, d);
    head.policy = pol.const_data_ptr<float>();
    head.ref = ref.const_data_ptr<float>();
    head.desirable = des.const_data_ptr<bool>();
    head.kl = kl.const_data_ptr<float>();
    head.type = parse_choice<KtoType>("KTO loss_type", loss_type, kKtoTypes);
    head.beta = static_cast<float>(beta);
    head.desirable_weight = static_cast<float>(desirable_weight);
    head.undesirable_weight = static_cast<float>(undesirable_weight);
  }
};

Pair kto_terms(const Tensor& policy_logps, const Tensor& ref_logps, const Tensor& desirable, const Tensor& kl,
               double beta, double desirable_weight, double undesirable_weight, c10::string_view loss_type) {
  const Kto op(policy_logps, ref_logps, desirable, kl, beta, desirable_weight, undesirable_weight, loss_type);
  return run_forward(op.head, op.pol.size(0), op.pol);
}

Pair kto_terms_backward(const Tensor& grad_loss, const Tensor& policy_logps, const Tensor& ref_logps,
                        const Tensor& desirable, const Tensor& kl, double beta, double desirable_weight,
                        double undesirable_weight, c10::string_view loss_type) {
  Kto op(policy_logps, ref_logps, desirable, kl, beta, desirable_weight, undesirable_weight, loss_type);
  Tensor gp = empty_like_vector(op.pol), gr = empty_like_vector(op.pol);
  op.head.grad_policy = gp.mutable_data_ptr<float>();
  op.head.grad_ref = gr.mutable_data_ptr<float>();
  run_backward(op.head, op.pol.size(0), grad_loss, op.pol.device());
  return {gp, gr};
}

// ---------------------------------------------------------------------------------------------------------------
// cpo_terms
// ---------------------------------------------------------------------------------------------------------------

struct Cpo {
  Tensor c, r, nll;
  CpoHead head{};

  Cpo(const Tensor& chosen_logps, const Tensor& rejected_logps, const Tensor& nll_loss, double beta, double gamma,
      c10::string_view loss_type, double label_smoothing, double cpo_alpha) {
    const int64_t n = chosen_logps.size(0);
    const at::Device d = chosen_logps.device();
    c = f32_vector("chosen_logps", chosen_logps, n, d);
    r = f32_vector("rejected_logps", rejected_logps, n, d);
    nll = f32_scalar("nll_loss", nll_loss, d);
    head.chosen = c.const_data_ptr<float>();
    head.rejected = r.const_data_ptr<float>();
    head.nll_loss = nll.const_data_ptr<float>();
    head.p = {parse_choice<CpoType>("CPO loss_type", loss_type, kCpoTypes), static_cast<float>(beta),
              static_cast<float>(gamma), static_cast<float>(label_smoothing)};
    head.cpo_alpha = static_cast<float>(cpo_alpha);
  }
};

Pair cpo_terms(const Tensor& chosen_logps, const Tensor& rejected_logps, const Tensor& nll_loss, double beta,
               double gamma, c10::string_view loss_type, double label_smoothing, double cpo_alpha) {
  const Cpo op(chosen_logps, rejected_logps, nll_loss, beta, gamma, loss_type, label_smoothing, cpo_alpha);
  return run_forward(op.head, op.c.size(0), op.c);
}

std::tuple<Tensor, Tensor, Tensor> cpo_terms_backward(const Tensor& grad_loss, const Tensor& chosen_logps,
                                                      const Tensor& rejected_logps, const Tensor& nll_loss,
                                                      double beta, double gamma, c10::string_view loss_type,
                                                      double label_smoothing, double cpo_alpha) {
  Cpo op(chosen_logps, rejected_logps, nll_loss, beta, gamma, loss_type, label_smoothing, cpo_alpha);
  return pair_with_nll_backward(op, grad_loss, nll_loss);
}

// ---------------------------------------------------------------------------------------------------------------
// bradley_terry_terms
// ---------------------------------------------------------------------------------------------------------------

struct BradleyTerry {
  Tensor c, r, m;
  BradleyTerryHead head{};

  BradleyTerry(const Tensor& chosen_rewards, const Tensor& rejected_rewards, const Tensor& margin,
               double center_rewards_coefficient) {
    const int64_t n = chosen_rewards.size(0);
    const at::Device d = chosen_rewards.device();
    c = f32_vector("chosen_rewards", chosen_rewards, n, d);
    r = f32_vector("rejected_rewards", rejected_rewards, n, d);
    m = f32_vector("margin", margin, n, d);
    head.chosen = c.const_data_ptr<float>();
    head.rejected = r.const_data_ptr<float>();
    head.margin = m.const_data_ptr<float>();
    head.center_coefficient = static_cast<float>(center_rewards_coefficient);
  }
};

Pair bradley_terry_terms(const Tensor& chosen_rewards, const Tensor& rejected_rewards, const Tensor& margin,
                         double center_rewards_coefficient) {
  const BradleyTerry op(chosen_rewards, rejected_rewards, margin, center_rewards_coefficient);
  return run_forward(op.head, op.c.size(0), op.c);
}

Pair bradley_terry_terms_backward(const Tensor& grad_loss, const Tensor& chosen_rewards,
                                  const Tensor& rejected_rewards, const Tensor& margin,
                                  double center_rewards_coefficient) {
  BradleyTerry op(chosen_rewards, rejected_rewards, margin, center_rewards_coefficient);
  Tensor gc = empty_like_vector(op.c), gr = empty_like_vector(op.c);
  op.head.grad_chosen = gc.mutable_data_ptr<float>();
  op.head.grad_rejected = gr.mutable_data_ptr<float>();
  run_backward(op.head, op.c.size(0), grad_loss, op.c.device());
  return {gc, gr};
}

}  // namespace
}  // namespace fastalign

// One function per op serves both devices: it branches on the tensors' device.
#define FASTALIGN_IMPL_LOSS_HEADS(m)                                          \
  m.impl("dpo_terms", &fastalign::dpo_terms);                                 \
  m.impl("dpo_terms_backward", &fastalign::dpo_terms_backward);               \
  m.impl("orpo_terms", &fastalign::orpo_terms);                               \
  m.impl("orpo_terms_backward", &fastalign::orpo_terms_backward);             \
  m.impl("kto_terms", &fastalign::kto_terms);                                 \
  m.impl("kto_terms_backward", &fastalign::kto_terms_backward);               \
  m.impl("cpo_terms", &fastalign::cpo_terms);                                 \
  m.impl("cpo_terms_backward", &fastalign::cpo_terms_backward);               \
  m.impl("bradley_terry_terms", &fastalign::bradley_terry_terms);             \
  m.impl("bradley_terry_terms_backward", &fastalign::bradley_terry_terms_backward)

TORCH_LIBRARY_IMPL(fastalign, CPU, m) { FASTALIGN_IMPL_LOSS_HEADS(m); }

#ifdef FASTALIGN_WITH_CUDA
TORCH_LIBRARY_IMPL(fastalign, CUDA, m) { FASTALIGN_IMPL_LOSS_HEADS(m); }
#endif

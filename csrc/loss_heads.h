// The batch structure of each loss head: which inputs it reads, how per-pair terms reduce to (loss, metrics),
// and how the loss gradient reaches every differentiable input.
//
// A head is a plain struct of raw pointers and scalar options, so the same struct drives the CPU twin
// (loss_heads.cpp, at::parallel_for) and the CUDA kernels (cuda/loss_heads.cu, one block per batch):
//
//   init(acc)                     identity of the reduction
//   accumulate(i, acc)            fold pair i into acc (loss term and metric sums, from loss_math.h)
//   merge(acc, other)             combine two partial reductions (a sum; Bradley-Terry also takes min / max)
//   finalize(acc, n, loss, m)     write the 0-dim loss and the metrics vector, in the order of *_METRICS
//   backward(i, g)                write d(loss)/d(inputs of pair i) for g = dL/dloss / n
//   backward_scalar(grad)         write d(loss)/d(nll_loss) where the head has one (ORPO, CPO)
//
// Reductions accumulate in double, so the order in which a backend folds pairs changes nothing visible in fp32.
// Input pointers are read in the address space of the backend (host for CPU, device for CUDA), including the
// 0-dim tensors nll_loss and kl, so no value crosses to the host before the kernel runs.
#pragma once

#include "loss_math.h"

namespace fastalign {

template <int K>
struct Slots {
  double v[K];
};

template <int K>
FA_HD void zero_slots(Slots<K>& a) {
  for (int k = 0; k < K; ++k) a.v[k] = 0.0;
}

template <int K>
FA_HD void add_slots(Slots<K>& a, const Slots<K>& b) {
  for (int k = 0; k < K; ++k) a.v[k] += b.v[k];
}

// Slots 1..K-1 hold sums of per-pair metric values; metric k is their mean over the n pairs.
template <int K>
FA_HD void write_means(const Slots<K>& a, int64_t n, float* metrics) {
  for (int k = 1; k < K; ++k) metrics[k - 1] = static_cast<float>(a.v[k] / n);
}

// DPO_METRICS: rewards/chosen = mean(b r_c), rewards/rejected = mean(b r_r), rewards/accuracies = mean(r_c > r_r),
// rewards/margins = mean(b (r_c - r_r)), logps/chosen, logps/rejected = mean policy log-probs.
struct DpoHead {
  static constexpr int kMetrics = 6;
  using Acc = Slots<1 + kMetrics>;  // [loss, metrics...]
  const float *policy_chosen, *policy_rejected, *ref_chosen, *ref_rejected, *chosen_lengths, *rejected_lengths;
  DpoParams p;
  float *grad_policy_chosen, *grad_policy_rejected, *grad_ref_chosen, *grad_ref_rejected;

  FA_HD void init(Acc& a) const { zero_slots(a); }
  FA_HD static void merge(Acc& a, const Acc& b) { add_slots(a, b); }
  FA_HD PairTerm term(int64_t i) const {
    return dpo_pair(p, policy_chosen[i] - ref_chosen[i], policy_rejected[i] - ref_rejected[i], chosen_lengths[i],
                    rejected_lengths[i]);
  }
  FA_HD void accumulate(int64_t i, Acc& a) const {
    const float r_c = policy_chosen[i] - ref_chosen[i], r_r = policy_rejected[i] - ref_rejected[i];
    a.v[0] += term(i).loss;
    a.v[1] += p.beta * r_c;
    a.v[2] += p.beta * r_r;
    a.v[3] += r_c > r_r ? 1.0 : 0.0;
    a.v[4] += p.beta * (r_c - r_r);
    a.v[5] += policy_chosen[i];
    a.v[6] += policy_rejected[i];
  }
  FA_HD void finalize(const Acc& a, int64_t n, float* loss, float* metrics) const {
    *loss = static_cast<float>(a.v[0] / n);
    write_means(a, n, metrics);
  }
  // r_c = pi_c - ref_c: d/d pi_c = dl/dr_c, d/d ref_c = -dl/dr_c (the same for the rejected side).
  FA_HD void backward(int64_t i, float g) const {
    const PairTerm t = term(i);
    grad_policy_chosen[i] = g * t.d_chosen;
    grad_ref_chosen[i] = -g * t.d_chosen;
    grad_policy_rejected[i] = g * t.d_rejected;
    grad_ref_rejected[i] = -g * t.d_rejected;
  }
  FA_HD void backward_scalar(float) const {}
};

// ORPO_METRICS: DPO_METRICS of the length-averaged log-probs A (in place of r, no reference model), then
// log_odds_ratio = mean s(log_odds), log_odds_chosen = mean log_odds, nll_loss.
// loss = nll_loss - beta mean(s(log_odds)).
struct OrpoHead {
  static constexpr int kMetrics = 9;
  using Acc = Slots<1 + 8>;  // [sum s(log_odds), 6 DPO-style sums, sum s(log_odds), sum log_odds]
  const float *chosen, *rejected, *nll_loss;
  float beta;
  float *grad_chosen, *grad_rejected, *grad_nll_loss;

  FA_HD void init(Acc& a) const { zero_slots(a); }
  FA_HD static void merge(Acc& a, const Acc& b) { add_slots(a, b); }
  FA_HD void accumulate(int64_t i, Acc& a) const {
    const float a_c = chosen[i], a_r = rejected[i];
    float log_odds;
    const float ratio = orpo_pair(a_c, a_r, &log_odds).loss;
    a.v[0] += ratio;
    a.v[1] += beta * a_c;
    a.v[2] += beta * a_r;
    a.v[3] += a_c > a_r ? 1.0 : 0.0;
    a.v[4] += beta * (a_c - a_r);
    a.v[5] += a_c;
    a.v[6] += a_r;
    a.v[7] += ratio;
    a.v[8] += log_odds;
  }
  FA_HD void finalize(const Acc& a, int64_t n, float* loss, float* metrics) const {
    const float nll = *nll_loss;
    *loss = nll - beta * static_cast<float>(a.v[0] / n);
    write_means(a, n, metrics);
    metrics[8] = nll;
  }
  FA_HD void backward(int64_t i, float g) const {
    float log_odds;
    const PairTerm t = orpo_pair(chosen[i], rejected[i], &log_odds);
    grad_chosen[i] = -beta * g * t.d_chosen;
    grad_rejected[i] = -beta * g * t.d_rejected;
  }
  FA_HD void backward_scalar(float grad) const { *grad_nll_loss = grad; }
};

// KTO_METRICS: kl; rewards/chosen, rewards/rejected = mean of b r over desirable / undesirable examples;
// rewards/margins = their difference (0 unless both groups are present); logps/chosen, logps/rejected = mean
// policy log-probs per group. A group with no examples reports 0. loss = mean over all examples of w * term.
struct KtoHead {
  static constexpr int kMetrics = 6;
  using Acc = Slots<7>;  // [loss, n_desirable, n_undesirable, sum b r (d), sum b r (u), sum logp (d), sum logp (u)]
  const float *policy, *ref;
  const bool* desirable;
  const float* kl;
  KtoType type;
  float beta, desirable_weight, undesirable_weight;
  float *grad_policy, *grad_ref;

  FA_HD void init(Acc& a) const { zero_slots(a); }
  FA_HD static void merge(Acc& a, const Acc& b) { add_slots(a, b); }
  FA_HD float term(int64_t i, float* dl_dr) const {
    const bool d = desirable[i];
    const float shift = type == KtoType::kKto ? *kl : 0.0f;
    return kto_example(policy[i] - ref[i], d, shift, beta, d ? desirable_weight : undesirable_weight, dl_dr);
  }
  FA_HD void accumulate(int64_t i, Acc& a) const {
    float unused;
    a.v[0] += term(i, &unused);
    const int g = desirable[i] ? 0 : 1;
    a.v[1 + g] += 1.0;
    a.v[3 + g] += beta * (policy[i] - ref[i]);
    a.v[5 + g] += policy[i];
  }
  FA_HD void finalize(const Acc& a, int64_t n, float* loss, float* metrics) const {
    const double n_d = a.v[1] > 1.0 ? a.v[1] : 1.0, n_u = a.v[2] > 1.0 ? a.v[2] : 1.0;
    const float rewards_d = static_cast<float>(a.v[3] / n_d), rewards_u = static_cast<float>(a.v[4] / n_u);
    *loss = static_cast<float>(a.v[0] / n);
    metrics[0] = *kl;
    metrics[1] = rewards_d;
    metrics[2] = rewards_u;
    metrics[3] = a.v[1] > 0.0 && a.v[2] > 0.0 ? rewards_d - rewards_u : 0.0f;
    metrics[4] = static_cast<float>(a.v[5] / n_d);
    metrics[5] = static_cast<float>(a.v[6] / n_u);
  }
  FA_HD void backward(int64_t i, float g) const {
    float dl_dr;
    term(i, &dl_dr);
    grad_policy[i] = g * dl_dr;
    grad_ref[i] = -g * dl_dr;
  }
  FA_HD void backward_scalar(float) const {}
};

// CPO_METRICS: DPO_METRICS of the policy log-probs (in place of r), then nll_loss.
// loss = mean(term) + cpo_alpha nll_loss.
struct CpoHead {
  static constexpr int kMetrics = 7;
  using Acc = Slots<1 + 6>;
  const float *chosen, *rejected, *nll_loss;
  CpoParams p;
  float cpo_alpha;
  float *grad_chosen, *grad_rejected, *grad_nll_loss;

  FA_HD void init(Acc& a) const { zero_slots(a); }
  FA_HD static void merge(Acc& a, const Acc& b) { add_slots(a, b); }
  FA_HD void accumulate(int64_t i, Acc& a) const {
    const float c = chosen[i], r = rejected[i];
    a.v[0] += cpo_pair(p, c, r).loss;
    a.v[1] += p.beta * c;
    a.v[2] += p.beta * r;
    a.v[3] += c > r ? 1.0 : 0.0;
    a.v[4] += p.beta * (c - r);
    a.v[5] += c;
    a.v[6] += r;
  }
  FA_HD void finalize(const Acc& a, int64_t n, float* loss, float* metrics) const {
    const float nll = *nll_loss;
    *loss = static_cast<float>(a.v[0] / n) + cpo_alpha * nll;
    write_means(a, n, metrics);
    metrics[6] = nll;
  }
  FA_HD void backward(int64_t i, float g) const {
    const PairTerm t = cpo_pair(p, chosen[i], rejected[i]);
    grad_chosen[i] = g * t.d_chosen;
    grad_rejected[i] = g * t.d_rejected;
  }
  FA_HD void backward_scalar(float grad) const { *grad_nll_loss = cpo_alpha * grad; }
};

// BRADLEY_TERRY_METRICS: accuracy = mean(r_c > r_r), margin = mean(r_c - r_r), then mean, min and max over all
// 2B rewards. loss = mean(-s(r_c - r_r - margin) + c (r_c + r_r)^2).
struct BradleyTerryHead {
  static constexpr int kMetrics = 5;
  using Acc = Slots<6>;  // [loss, accuracy, margin, sum of rewards, min, max]
  const float *chosen, *rejected, *margin;
  float center_coefficient;
  float *grad_chosen, *grad_rejected;

  FA_HD void init(Acc& a) const {
    zero_slots(a);
    a.v[4] = INFINITY;
    a.v[5] = -INFINITY;
  }
  FA_HD static void merge(Acc& a, const Acc& b) {
    for (int k = 0; k < 4; ++k) a.v[k] += b.v[k];
    a.v[4] = fmin(a.v[4], b.v[4]);
    a.v[5] = fmax(a.v[5], b.v[5]);
  }
  FA_HD void accumulate(int64_t i, Acc& a) const {
    const float c = chosen[i], r = rejected[i];
    a.v[0] += bradley_terry_pair(c, r, margin[i], center_coefficient).loss;
    a.v[1] += c > r ? 1.0 : 0.0;
    a.v[2] += c - r;
    a.v[3] += static_cast<double>(c) + r;
    a.v[4] = fmin(a.v[4], static_cast<double>(fminf(c, r)));
    a.v[5] = fmax(a.v[5], static_cast<double>(fmaxf(c, r)));
  }
  FA_HD void finalize(const Acc& a, int64_t n, float* loss, float* metrics) const {
    *loss = static_cast<float>(a.v[0] / n);
    metrics[0] = static_cast<float>(a.v[1] / n);
    metrics[1] = static_cast<float>(a.v[2] / n);
    metrics[2] = static_cast<float>(a.v[3] / (2 * n));
    metrics[3] = static_cast<float>(a.v[4]);
    metrics[4] = static_cast<float>(a.v[5]);
  }
  FA_HD void backward(int64_t i, float g) const {
    const PairTerm t = bradley_terry_pair(chosen[i], rejected[i], margin[i], center_coefficient);
    grad_chosen[i] = g * t.d_chosen;
    grad_rejected[i] = g * t.d_rejected;
  }
  FA_HD void backward_scalar(float) const {}
};

}  // namespace fastalign

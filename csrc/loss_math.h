// The per-pair math of every alignment loss head, written once for the CPU twin and the CUDA kernels.
//
// Each function maps one pair (or one example) to its loss term and the term's derivatives. It is an inline
// __host__ __device__ function of floats: loss_heads.cpp calls it from at::parallel_for loops and
// cuda/loss_heads.cu from a kernel, so both backends evaluate the same expressions. This file includes neither
// torch nor CUDA headers. The formulas mirror fastalign/losses/{dpo,orpo,kto,cpo,reward}.py term by term.
//
// Notation: s = logsigmoid, sigma = sigmoid, s'(u) = sigma(-u), sigma'(u) = sigma(u) sigma(-u),
// eps = label_smoothing. Every form goes through s / sigma of a scaled argument, so it is finite in fp32 for any
// finite input (the quadratic forms excepted once their square overflows, exactly as in the PyTorch path).
#pragma once

#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#define FA_HD __host__ __device__ __forceinline__
#else
#define FA_HD inline
#endif

namespace fastalign {

// ---------------------------------------------------------------------------------------------------------------
// Scalar primitives
// ---------------------------------------------------------------------------------------------------------------

// s(x) = log(sigma(x)) = min(x, 0) - log1p(e^-|x|): the exponent is <= 0, so nothing overflows.
FA_HD float log_sigmoid(float x) { return fminf(x, 0.0f) - log1pf(expf(-fabsf(x))); }

// sigma(x) through e^-|x| <= 1, exact in both tails.
FA_HD float sigmoid(float x) {
  const float e = expf(-fabsf(x));
  return x >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
}

// sigma'(x) = sigma(x) sigma(-x).
FA_HD float sigmoid_grad(float x) { return sigmoid(x) * sigmoid(-x); }

// log1mexp clamps its argument to x <= -kLog1mexpEps (fastalign/losses/_math.py, LOG1MEXP_EPS): at x = 0
// log(1 - e^x) = -inf. The clamped value is log(1e-12) ~ -27.6 and the clamped region gets zero gradient.
constexpr float kLog1mexpEps = 1e-12f;
constexpr float kLn2 = 0.69314718055994531f;

// log(1 - e^x) for x <= 0: log1p(-e^x) for x < -ln 2 (e^x small), log(-expm1(x)) otherwise (expm1 exact near 0).
FA_HD float log1mexp(float x) {
  x = fminf(x, -kLog1mexpEps);
  return x < -kLn2 ? log1pf(-expf(x)) : logf(-expm1f(x));
}

// d/dx log(1 - e^x) = -e^x / (1 - e^x) = -1 / expm1(-x): finite (about -1e12 at the clamp), 0 above the clamp.
FA_HD float log1mexp_grad(float x) { return x > -kLog1mexpEps ? 0.0f : -1.0f / expm1f(-x); }

// ---------------------------------------------------------------------------------------------------------------
// Per-pair terms
// ---------------------------------------------------------------------------------------------------------------

// One pair's loss term and its derivatives w.r.t. the pair's two inputs (r_c, r_r for DPO; A_c, A_r for ORPO;
// the chosen and rejected log-probs or rewards elsewhere).
struct PairTerm {
  float loss;
  float d_chosen;
  float d_rejected;
};

// Label-smoothed logistic loss of a margin u, shared by DPO sigmoid and CPO simpo / sigmoid:
//   l = -(1-eps) s(u) - eps s(-u),   dl/du = -(1-eps) sigma(-u) + eps sigma(u).
FA_HD float smoothed_logistic(float u, float eps, float* dl_du) {
  *dl_du = -(1.0f - eps) * sigmoid(-u) + eps * sigmoid(u);
  return -(1.0f - eps) * log_sigmoid(u) - eps * log_sigmoid(-u);
}

// DPO loss types, in the order of DPO_LOSS_TYPES (fastalign/losses/dpo.py).
enum class DpoType : int32_t {
  kSigmoid, kRobust, kHinge, kIpo, kSigmoidNorm, kExoPair, kBcoPair, kSppoHard, kNcaPair, kApoZero, kApoDown,
  kDiscopop,
};

struct DpoParams {
  DpoType type;
  float beta;
  float eps;  // label_smoothing
  float tau;  // discopop_tau
};

// DPO term of one pair from its implicit rewards r_c = pi_c - ref_c, r_r = pi_r - ref_r (x = beta (r_c - r_r),
// z' = r_c / len_c - r_r / len_r); derivatives w.r.t. r_c and r_r.
FA_HD PairTerm dpo_pair(const DpoParams& p, float r_c, float r_r, float len_c, float len_r) {
  const float b = p.beta, eps = p.eps;
  const float x = b * (r_c - r_r);
  float l = 0.0f, dl_dx = 0.0f;  // forms of x alone set these; the others return directly
  switch (p.type) {
    case DpoType::kSigmoid:
      l = smoothed_logistic(x, eps, &dl_dx);
      break;
    case DpoType::kRobust:
      // (-(1-eps) s(x) + eps s(-x)) / (1 - 2 eps)
      l = (-(1.0f - eps) * log_sigmoid(x) + eps * log_sigmoid(-x)) / (1.0f - 2.0f * eps);
      dl_dx = (-(1.0f - eps) * sigmoid(-x) - eps * sigmoid(x)) / (1.0f - 2.0f * eps);
      break;
    case DpoType::kHinge:
      // relu(1 - x); zero gradient at the kink, as torch's relu
      l = fmaxf(1.0f - x, 0.0f);
      dl_dx = 1.0f - x > 0.0f ? -1.0f : 0.0f;
      break;
    case DpoType::kIpo: {
      // (z' - 1/(2b))^2
      const float d = (r_c / len_c - r_r / len_r) - 1.0f / (2.0f * b);
      return {d * d, 2.0f * d / len_c, -2.0f * d / len_r};
    }
    case DpoType::kSigmoidNorm: {
      // -s(b z')
      const float u = b * (r_c / len_c - r_r / len_r);
      const float dl_du = -sigmoid(-u);
      return {-log_sigmoid(u), dl_du * b / len_c, -dl_du * b / len_r};
    }
    case DpoType::kExoPair:
      // sigma(x)(s(x) - log(1-eps)) + sigma(-x)(s(-x) - log eps); since s(x) - s(-x) = x the derivative
      // collapses to sigma(x) sigma(-x) (x - log((1-eps)/eps)).
      l = sigmoid(x) * (log_sigmoid(x) - log1pf(-eps)) + sigmoid(-x) * (log_sigmoid(-x) - logf(eps));
      dl_dx = sigmoid_grad(x) * (x - (log1pf(-eps) - logf(eps)));
      break;
    case DpoType::kBcoPair:
      // -s(b r_c) - s(-b r_r)
      return {-log_sigmoid(b * r_c) - log_sigmoid(-b * r_r), -b * sigmoid(-b * r_c), b * sigmoid(b * r_r)};
    case DpoType::kSppoHard: {
      // (r_c - 1/(2b))^2 + (r_r + 1/(2b))^2
      const float dc = r_c - 1.0f / (2.0f * b), dr = r_r + 1.0f / (2.0f * b);
      return {dc * dc + dr * dr, 2.0f * dc, 2.0f * dr};
    }
    case DpoType::kNcaPair:
      // -s(b r_c) - s(-b r_c)/2 - s(-b r_r)/2
      return {-log_sigmoid(b * r_c) - 0.5f * log_sigmoid(-b * r_c) - 0.5f * log_sigmoid(-b * r_r),
              -b * sigmoid(-b * r_c) + 0.5f * b * sigmoid(b * r_c), 0.5f * b * sigmoid(b * r_r)};
    case DpoType::kApoZero:
      // (1 - sigma(b r_c)) + sigma(b r_r) = sigma(-b r_c) + sigma(b r_r)
      return {sigmoid(-b * r_c) + sigmoid(b * r_r), -b * sigmoid_grad(b * r_c), b * sigmoid_grad(b * r_r)};
    case DpoType::kApoDown: {
      // sigma(b r_c) + (1 - sigma(x)) = sigma(b r_c) + sigma(-x)
      const float gx = b * sigmoid_grad(x);
      return {sigmoid(b * r_c) + sigmoid(-x), b * sigmoid_grad(b * r_c) - gx, gx};
    }
    case DpoType::kDiscopop: {
      // m = sigma(x/tau): -s(x)(1 - m) + e^-x m = -s(x) sigma(-x/tau) + exp(-x + s(x/tau)); the exponent is
      // <= x (1/tau - 1) for x < 0 and <= -x for x > 0, so it cannot overflow when tau <= 1. Derivative:
      //   -sigma(-x) sigma(-x/tau) + s(x) sigma'(x/tau)/tau + exp(-x + s(x/tau)) (sigma(-x/tau)/tau - 1)
      const float tau = p.tau, y = x / tau;
      const float e = expf(-x + log_sigmoid(y));
      l = -log_sigmoid(x) * sigmoid(-y) + e;
      dl_dx = -sigmoid(-x) * sigmoid(-y) + log_sigmoid(x) * sigmoid_grad(y) / tau + e * (sigmoid(-y) / tau - 1.0f);
      break;
    }
  }
  return {l, b * dl_dx, -b * dl_dx};
}

// ORPO odds-ratio term of one pair from length-averaged log-probs A_c, A_r <= 0:
//   log_odds = (A_c - A_r) - (log1mexp(A_c) - log1mexp(A_r)),  term = s(log_odds).
// ``loss`` is s(log_odds) (the head's loss is nll - beta mean(term)); ``log_odds`` is reported as a metric.
FA_HD PairTerm orpo_pair(float a_c, float a_r, float* log_odds) {
  const float lo = (a_c - a_r) - (log1mexp(a_c) - log1mexp(a_r));
  const float ds = sigmoid(-lo);  // s'(log_odds)
  *log_odds = lo;
  return {log_sigmoid(lo), ds * (1.0f - log1mexp_grad(a_c)), -ds * (1.0f - log1mexp_grad(a_r))};
}

// KTO loss types, in the order of KTO_LOSS_TYPES (fastalign/losses/kto.py).
enum class KtoType : int32_t { kKto, kApoZeroUnpaired };

// KTO term of one example with r = pi - ref, shift = kl (kto) or 0 (apo_zero_unpaired), weight w:
//   desirable: w sigma(b (shift - r)),  undesirable: w sigma(b (r - shift))   (1 - sigma(a) = sigma(-a))
// Returns the term and writes its derivative w.r.t. r.
FA_HD float kto_example(float r, bool desirable, float shift, float beta, float w, float* dl_dr) {
  const float sign = desirable ? -1.0f : 1.0f;
  const float u = sign * beta * (r - shift);
  *dl_dr = w * sigmoid_grad(u) * sign * beta;
  return w * sigmoid(u);
}

// CPO loss types, in the order of CPO_LOSS_TYPES (fastalign/losses/cpo.py).
enum class CpoType : int32_t { kSimpo, kSigmoid, kHinge, kIpo };

struct CpoParams {
  CpoType type;
  float beta;
  float gamma;
  float eps;  // label_smoothing
};

// CPO / SimPO term of one pair from policy log-probs c, r (z = c - r).
FA_HD PairTerm cpo_pair(const CpoParams& p, float c, float r) {
  const float b = p.beta, z = c - r;
  float l, dl_dz;
  switch (p.type) {
    case CpoType::kSimpo:
    case CpoType::kSigmoid: {
      // -(1-eps) s(u) - eps s(-u),  u = b z - gamma (gamma = 0 for sigmoid)
      const float u = b * z - (p.type == CpoType::kSimpo ? p.gamma : 0.0f);
      float dl_du;
      l = smoothed_logistic(u, p.eps, &dl_du);
      dl_dz = b * dl_du;
      break;
    }
    case CpoType::kHinge:
      // relu(1 - b z)
      l = fmaxf(1.0f - b * z, 0.0f);
      dl_dz = 1.0f - b * z > 0.0f ? -b : 0.0f;
      break;
    default: {  // kIpo: (z - 1/(2b))^2
      const float d = z - 1.0f / (2.0f * b);
      l = d * d;
      dl_dz = 2.0f * d;
    }
  }
  return {l, dl_dz, -dl_dz};
}

// Bradley-Terry term of one pair: -s(r_c - r_r - margin) + c (r_c + r_r)^2. The centring term is skipped when
// c = 0, so a square that overflows fp32 cannot turn 0 * inf into NaN.
FA_HD PairTerm bradley_terry_pair(float r_c, float r_r, float margin, float c) {
  const float d = r_c - r_r - margin;
  const float ds = sigmoid(-d);  // s'(d); d/dr_c = -s'(d), d/dr_r = +s'(d)
  float l = -log_sigmoid(d), d_c = -ds, d_r = ds;
  if (c != 0.0f) {
    const float sum = r_c + r_r;
    l += c * sum * sum;
    d_c += 2.0f * c * sum;
    d_r += 2.0f * c * sum;
  }
  return {l, d_c, d_r};
}

}  // namespace fastalign

// CUDA kernels of the loss heads (math in ../loss_math.h, batch structure in ../loss_heads.h).
//
// Forward: a single block folds the whole batch (pairs, not tokens: B is at most a few thousand), each thread
// striding over pairs into its own double accumulator, then a shared-memory tree merge and thread 0 writes the
// loss and metrics. One launch, no atomics, deterministic. Backward: one thread per pair writes that pair's
// gradients; it reads dL/dloss from device memory, so nothing synchronises with the host. Torch-free: launch.h.
#include <cuda_runtime.h>

#include "launch.h"

namespace fastalign::cuda {
namespace {

constexpr int kThreads = 256;

template <class Head>
__global__ void __launch_bounds__(kThreads) head_forward_kernel(Head head, int64_t n, float* loss, float* metrics) {
  using Acc = typename Head::Acc;
  __shared__ Acc partial[kThreads];
  Acc acc;
  head.init(acc);
  for (int64_t i = threadIdx.x; i < n; i += kThreads) head.accumulate(i, acc);
  partial[threadIdx.x] = acc;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) Head::merge(partial[threadIdx.x], partial[threadIdx.x + stride]);
    __syncthreads();
  }
  if (threadIdx.x == 0) head.finalize(partial[0], n, loss, metrics);
}

template <class Head>
__global__ void __launch_bounds__(kThreads) head_backward_kernel(Head head, int64_t n, const float* grad_loss) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const float grad = *grad_loss;
  if (i < n) head.backward(i, grad / static_cast<float>(n));
  if (i == 0) head.backward_scalar(grad);
}

const char* last_error() {
  const cudaError_t error = cudaGetLastError();
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

}  // namespace

template <class Head>
const char* head_forward(const Head& head, int64_t n, float* loss, float* metrics, void* stream) {
  head_forward_kernel<<<1, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(head, n, loss, metrics);
  return last_error();
}

template <class Head>
const char* head_backward(const Head& head, int64_t n, const float* grad_loss, void* stream) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  head_backward_kernel<<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(head, n, grad_loss);
  return last_error();
}

#define FASTALIGN_INSTANTIATE(Head)                                                                \
  template const char* head_forward<Head>(const Head&, int64_t, float*, float*, void*); \
  template const char* head_backward<Head>(const Head&, int64_t, const float*, void*)

FASTALIGN_INSTANTIATE(DpoHead);
FASTALIGN_INSTANTIATE(OrpoHead);
FASTALIGN_INSTANTIATE(KtoHead);
FASTALIGN_INSTANTIATE(CpoHead);
FASTALIGN_INSTANTIATE(BradleyTerryHead);

}  // namespace fastalign::cuda

// CUDA kernels of fastalign::segment_sum (math in ../segment_sum.cpp): one block per segment.
//
// Each thread strides over its segment's tokens with a float partial sum (and a count of unmasked tokens), then
// the block reduces: warp shuffles, one value per warp through shared memory, a last warp shuffle. Torch-free:
// see launch.h.
#include <cuda_runtime.h>

#include "launch.h"

namespace fastalign::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// Block-wide sum of one float and one int; the result is valid in every thread.
__device__ void block_sum(float& value, int64_t& count) {
  __shared__ float values[kWarps];
  __shared__ int64_t counts[kWarps];
  for (int offset = 16; offset > 0; offset /= 2) {
    value += __shfl_down_sync(0xffffffffu, value, offset);
    count += __shfl_down_sync(0xffffffffu, count, offset);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    values[warp] = value;
    counts[warp] = count;
  }
  __syncthreads();
  value = lane < kWarps ? values[lane] : 0.0f;
  count = lane < kWarps ? counts[lane] : 0;
  for (int offset = 16; offset > 0; offset /= 2) {
    value += __shfl_down_sync(0xffffffffu, value, offset);
    count += __shfl_down_sync(0xffffffffu, count, offset);
  }
  value = __shfl_sync(0xffffffffu, value, 0);
  count = __shfl_sync(0xffffffffu, count, 0);
}

__global__ void __launch_bounds__(kThreads)
    segment_sum_forward_kernel(const float* values, const bool* mask, const int64_t* cu_seqlens, bool mean,
                               float* out) {
  const int64_t s = blockIdx.x, begin = cu_seqlens[s], end = cu_seqlens[s + 1];
  float sum = 0.0f;
  int64_t n = 0;
  for (int64_t t = begin + threadIdx.x; t < end; t += kThreads) {
    if (mask[t]) {
      sum += values[t];
      ++n;
    }
  }
  block_sum(sum, n);
  if (threadIdx.x == 0) out[s] = mean ? (n > 0 ? sum / static_cast<float>(n) : 0.0f) : sum;
}

__global__ void __launch_bounds__(kThreads)
    segment_sum_backward_kernel(const float* grad, const bool* mask, const int64_t* cu_seqlens, bool mean,
                                float* grad_values) {
  const int64_t s = blockIdx.x, begin = cu_seqlens[s], end = cu_seqlens[s + 1];
  float scale = grad[s];
  if (mean) {
    float unused = 0.0f;
    int64_t n = 0;
    for (int64_t t = begin + threadIdx.x; t < end; t += kThreads) n += mask[t];
    block_sum(unused, n);
    scale = n > 0 ? scale / static_cast<float>(n) : 0.0f;
  }
  for (int64_t t = begin + threadIdx.x; t < end; t += kThreads) grad_values[t] = mask[t] ? scale : 0.0f;
}

}  // namespace

const char* segment_sum_forward(const float* values, const bool* mask, const int64_t* cu_seqlens, int64_t segments,
                                bool mean, float* out, void* stream) {
  if (segments == 0) return nullptr;
  segment_sum_forward_kernel<<<segments, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(values, mask,
                                                                                          cu_seqlens, mean, out);
  const cudaError_t error = cudaGetLastError();
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

const char* segment_sum_backward(const float* grad, const bool* mask, const int64_t* cu_seqlens, int64_t segments,
                                 bool mean, float* grad_values, void* stream) {
  if (segments == 0) return nullptr;
  segment_sum_backward_kernel<<<segments, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(grad, mask, cu_seqlens,
                                                                                           mean, grad_values);
  const cudaError_t error = cudaGetLastError();
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

}  // namespace fastalign::cuda

// The per-step part of the UNet input for W windows x 3 branches: the noisy latents x [W, 4, plane] copied into
// channels 0..3 of every branch row of sample [3W, 9, plane] (branch-major rows, runtime/guidance.py). The
// context latents (channels 4..7) and masks (channel 8) do not change during a window's sampling and are
// written once by the host. OUT_T is the engine's input type (float, or FP16 bits).
#include "half_bits.cuh"

template <typename OUT_T>
__device__ __forceinline__ OUT_T store(float v) { return static_cast<OUT_T>(v); }
template <>
__device__ __forceinline__ half_bits store<half_bits>(float v) { return float_to_half(v); }

template <typename OUT_T>
__device__ void scatter_noisy(const float* __restrict__ x, OUT_T* __restrict__ sample, long long plane, int windows) {
  const long long per_window = 4 * plane;
  const long long n = per_window * windows;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
    const long long w = i / per_window, rest = i % per_window;  // rest = channel * plane + position
    const OUT_T v = store<OUT_T>(x[i]);
    for (int b = 0; b < 3; ++b) sample[((long long)b * windows + w) * 9 * plane + rest] = v;
  }
}

extern "C" __global__ void scatter_noisy_f32(const float* x, float* sample, long long plane, int windows) {
  scatter_noisy<float>(x, sample, plane, windows);
}

extern "C" __global__ void scatter_noisy_f16(const float* x, half_bits* sample, long long plane, int windows) {
  scatter_noisy<half_bits>(x, sample, plane, windows);
}

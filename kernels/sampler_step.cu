// One sampler step over a batch of W windows, fused with classifier-free guidance.
//
// eps holds the engine's output for the 3W rows, branch-major ([b0 w0..wW-1, b1 ..., b2 ...], the order of
// runtime/guidance.py). Per element of window w:
//   g      = e0 + s1 (e1 - e0) + s2 (e2 - e1)                 (guided eps, FP32)
//   x'     = a x + a_saved x_saved + b0 g + sum_k b_k hist_k + c z
// hist_k are earlier guided eps (FP32, newest first); the host (runtime/samplers.py, the numpy reference)
// computes a, a_saved, b, c and manages the history ring. g is also written to g_out so that it can become
// history. EPS_T is the engine's output type (float, or FP16 bits).
#include "half_bits.cuh"

#define MAX_HISTORY 3

template <typename EPS_T>
__device__ __forceinline__ float load(const EPS_T* p, long long i) { return static_cast<float>(p[i]); }
template <>
__device__ __forceinline__ float load<half_bits>(const half_bits* p, long long i) { return half_to_float(p[i]); }

template <typename EPS_T>
__device__ void sampler_step(const EPS_T* __restrict__ eps, const float* __restrict__ x,
                             const float* __restrict__ x_saved, const float* __restrict__ hist0,
                             const float* __restrict__ hist1, const float* __restrict__ hist2,
                             const float* __restrict__ z, float* __restrict__ x_out, float* __restrict__ g_out,
                             long long per_window, int windows, float s1, float s2, float a, float a_saved,
                             float b0, float b1, float b2, float b3, float c) {
  const long long n = per_window * windows;
  const long long branch = n;  // distance between the same element of consecutive branches
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
    const float e0 = load(eps, i), e1 = load(eps, i + branch), e2 = load(eps, i + 2 * branch);
    const float g = e0 + s1 * (e1 - e0) + s2 * (e2 - e1);
    float out = a * x[i] + b0 * g;
    if (a_saved != 0.f) out += a_saved * x_saved[i];
    if (b1 != 0.f) out += b1 * hist0[i];
    if (b2 != 0.f) out += b2 * hist1[i];
    if (b3 != 0.f) out += b3 * hist2[i];
    if (c != 0.f) out += c * z[i];
    x_out[i] = out;
    g_out[i] = g;
  }
}

extern "C" __global__ void sampler_step_f32(const float* eps, const float* x, const float* x_saved, const float* h0,
                                            const float* h1, const float* h2, const float* z, float* x_out,
                                            float* g_out, long long per_window, int windows, float s1, float s2,
                                            float a, float a_saved, float b0, float b1, float b2, float b3, float c) {
  sampler_step<float>(eps, x, x_saved, h0, h1, h2, z, x_out, g_out, per_window, windows, s1, s2, a, a_saved, b0, b1,
                      b2, b3, c);
}

extern "C" __global__ void sampler_step_f16(const half_bits* eps, const float* x, const float* x_saved, const float* h0,
                                            const float* h1, const float* h2, const float* z, float* x_out,
                                            float* g_out, long long per_window, int windows, float s1, float s2,
                                            float a, float a_saved, float b0, float b1, float b2, float b3, float c) {
  sampler_step<half_bits>(eps, x, x_saved, h0, h1, h2, z, x_out, g_out, per_window, windows, s1, s2, a, a_saved, b0, b1,
                       b2, b3, c);
}

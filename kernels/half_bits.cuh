#pragma once
// FP16 values travel as their 16-bit patterns (no cuda_fp16.h: NVRTC from PyPI ships no CUDA headers).
typedef unsigned short half_bits;
__device__ __forceinline__ float half_to_float(half_bits h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}
__device__ __forceinline__ half_bits float_to_half(float f) {
  half_bits h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}

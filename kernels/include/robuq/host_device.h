// ROBUQ_HD: a function compiled for both the host and the CUDA device (__host__ __device__ under nvcc, plain
// inline for the host compiler). Used by the per-thread arithmetic shared between the CPU and CUDA code
// (kernels/cuda/host_device_math.h, engine/sampler_step.h).
#pragma once

#ifdef __CUDACC__
#define ROBUQ_HD __host__ __device__ __forceinline__
#else
#define ROBUQ_HD inline
#endif

// Error checking for every CUDA runtime and cuBLAS call of the CUDA backend: a failed call throws
// hybridgen::Error naming the call, the file:line and the runtime's own error string. An
// out-of-memory error also says what the device has free and which flags lower the need.
//
//   CUDA_CHECK(cudaMemcpyAsync(...));
//   CUBLAS_CHECK(cublasGemmEx(...));
//
// Device allocations go through hybridgen::cuda::device_alloc (ops_api.h), whose error also says
// how many bytes were asked for and what for.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <string>

#include "util/check.h"

namespace hybridgen::cuda {

// "X MiB free of Y MiB on the device" for the current device (or why that is unknown).
inline std::string memory_report() {
  size_t free_b = 0, total_b = 0;
  const cudaError_t e = cudaMemGetInfo(&free_b, &total_b);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return std::string("free/total device memory unknown (") + cudaGetErrorString(e) + ")";
  }
  return std::to_string(free_b >> 20) + " MiB free of " + std::to_string(total_b >> 20) +
         " MiB on the device";
}

inline constexpr const char* kOomAdvice =
    "lower the context size (-c / --ctx-size) or the batch (-b / --batch), or use a smaller model";

[[noreturn]] inline void throw_cuda_error(cudaError_t e, const char* expr, const char* file,
                                          int line) {
  std::string msg = std::string("CUDA error at ") + file + ":" + std::to_string(line) + ": " +
                    expr + " failed: " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
  if (e == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();  // not sticky: clear it so later calls do not report it again
    msg += "; out of GPU memory: " + memory_report() + "; " + kOomAdvice;
  }
  fail(msg);
}

inline const char* cublas_status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR:
      return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR:
      return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR:
      return "CUBLAS_STATUS_LICENSE_ERROR";
    default:
      return "unknown cuBLAS status";
  }
}

[[noreturn]] inline void throw_cublas_error(cublasStatus_t s, const char* expr, const char* file,
                                            int line) {
  std::string msg = std::string("cuBLAS error at ") + file + ":" + std::to_string(line) + ": " +
                    expr + " failed: " + cublas_status_name(s) + " (" +
                    std::to_string(static_cast<int>(s)) + ")";
  if (s == CUBLAS_STATUS_ALLOC_FAILED)
    msg += "; out of GPU memory: " + memory_report() + "; " + kOomAdvice;
  fail(msg);
}

}  // namespace hybridgen::cuda

#define CUDA_CHECK(expr)                                                            \
  do {                                                                              \
    const cudaError_t hg_cuda_err_ = (expr);                                        \
    if (hg_cuda_err_ != cudaSuccess)                                                \
      ::hybridgen::cuda::throw_cuda_error(hg_cuda_err_, #expr, __FILE__, __LINE__); \
  } while (0)

#define CUBLAS_CHECK(expr)                                                             \
  do {                                                                                 \
    const cublasStatus_t hg_cublas_st_ = (expr);                                       \
    if (hg_cublas_st_ != CUBLAS_STATUS_SUCCESS)                                        \
      ::hybridgen::cuda::throw_cublas_error(hg_cublas_st_, #expr, __FILE__, __LINE__); \
  } while (0)

// After a kernel launch: reports a bad launch configuration at once (asynchronous faults show
// up at the next synchronizing call, which is checked too).
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

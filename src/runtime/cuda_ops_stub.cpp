// The CUDA ops API (kernels/ops_api.h) in a build without the CUDA backend: every function
// exists, so that code calling it (tests/unit/cuda_ops_test.cpp) links in both configurations,
// and throws if called. Callers check hybridgen::cuda_available() first.
#ifndef HYBRIDGEN_WITH_CUDA
#include "../../kernels/ops_api.h"
#include "../../kernels/sampling.h"
#include "util/check.h"

namespace hybridgen::cuda {

namespace {
[[noreturn]] void no_cuda(const char* fn) {
  fail(std::string("cuda::") + fn +
       ": this build of libhybridgen has no CUDA backend (nvcc was not found at configure time)");
}
}  // namespace

bool kernels_runnable(std::string* why) {
  if (why) *why = "this build of libhybridgen has no CUDA backend";
  return false;
}
void* device_alloc(size_t, const char*) { no_cuda("device_alloc"); }
void device_free(void*) noexcept {}
void copy_to_device(void*, const void*, size_t) { no_cuda("copy_to_device"); }
void copy_to_host(void*, const void*, size_t) { no_cuda("copy_to_host"); }
void device_synchronize() { no_cuda("device_synchronize"); }
BlasHandle blas_create(Stream) { no_cuda("blas_create"); }
void blas_destroy(BlasHandle) noexcept {}
void fill(float*, int64_t, float, Stream) { no_cuda("fill"); }
void to_bf16(const float*, uint16_t*, int64_t, Stream) { no_cuda("to_bf16"); }
void embedding(const float*, const int32_t*, int, int, float*, Stream) { no_cuda("embedding"); }
void add_positions(float*, const float*, const int32_t*, int, int, int, Stream) {
  no_cuda("add_positions");
}
void gather_rows(const float*, const int32_t*, int, int, float*, Stream) { no_cuda("gather_rows"); }
void rms_norm(const float*, const float*, int, int, float, float*, Stream) { no_cuda("rms_norm"); }
void layer_norm(const float*, const float*, const float*, int, int, float, float*, Stream) {
  no_cuda("layer_norm");
}
void rope(float*, int64_t, int, int, int, int, const int32_t*, const float*, bool, Stream) {
  no_cuda("rope");
}
void add_bias(float*, const float*, int, int, Stream) { no_cuda("add_bias"); }
void swiglu(const float*, int, int, float*, Stream) { no_cuda("swiglu"); }
void relu(float*, int64_t, Stream) { no_cuda("relu"); }
void add(float*, const float*, int64_t, Stream) { no_cuda("add"); }
void linear(BlasHandle, const uint16_t*, const float*, const float*, uint16_t*, float*, int, int,
            int, Stream) {
  no_cuda("linear");
}
void kv_append(const float*, const float*, int64_t, int, int, int, const int32_t*, const int32_t*,
               float* const*, float* const*, int, int, Stream) {
  no_cuda("kv_append");
}
void attention(const float*, int64_t, int, int, int, int, const int32_t*, const int32_t*,
               const float* const*, const float* const*, int, int, float, int, float*, Stream) {
  no_cuda("attention");
}
void kv_append(const float*, const float*, int64_t, int, int, int, const int32_t*, const int32_t*,
               uint16_t* const*, uint16_t* const*, int, int, Stream) {
  no_cuda("kv_append");
}
void attention(const float*, int64_t, int, int, int, int, const int32_t*, const int32_t*,
               const uint16_t* const*, const uint16_t* const*, int, int, float, int, float*,
               Stream) {
  no_cuda("attention");
}
void argmax(const float*, int, int, int32_t*, Stream) { no_cuda("argmax"); }

size_t sampling_workspace_bytes(int, int) { no_cuda("sampling_workspace_bytes"); }
void sample(const float*, int, int, const DeviceSampling&, const double*, void*, size_t, int32_t*,
            Stream) {
  no_cuda("sample");
}

}  // namespace hybridgen::cuda
#endif

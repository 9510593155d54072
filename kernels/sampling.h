// Next-token sampling on the device (issue 15 item 2: only the token id crosses PCIe), in the
// CPU Sampler's order (src/runtime/sampler.cpp): top-k -> softmax -> top-p -> min-p ->
// temperature -> softmax -> one draw, or greedy (argmax, the lowest id on ties) at temperature
// <= 0. The draw's uniform number comes from the caller (u[r] in [0, 1)), so that a device run
// and the CPU sampler with the same random stream pick the same token. Repetition penalties are
// not applied here: the caller applies them to the logits first (or samples on the host).
// Plain C++ launchers (no CUDA header needed); every pointer but u is DEVICE memory.
#pragma once
#include <cstddef>
#include <cstdint>

#include "ops_api.h"  // Stream

namespace hybridgen::cuda {

struct DeviceSampling {
  float temperature = 0.f;  // <= 0: greedy
  int top_k = 40;           // <= 0 or >= vocab: all
  float top_p = 0.95f;      // 1: off
  float min_p = 0.05f;      // 0: off
};

// Bytes of the workspace sample() needs for up to max_rows rows of `vocab` logits (sorted copies,
// ids, segment offsets, CUB's radix-sort scratch, the draws). Allocate once, outside the step.
size_t sampling_workspace_bytes(int max_rows, int vocab);

// out[r] = the token sampled from logits[r, :]. u: HOST [rows] uniform draws (copied into the
// workspace). PRECOND: rows <= the workspace's max_rows.
void sample(const float* logits,  // [rows, vocab]
            int rows, int vocab, const DeviceSampling& p, const double* u, void* workspace,
            size_t workspace_bytes,
            int32_t* out,  // [rows]
            Stream stream);

}  // namespace hybridgen::cuda

// Host memory for the KV stores and staging buffers. The hybrid runtime allocates through this
// interface so that placement policies (keys in DRAM, values in the slow tier: src/memory's
// NUMA allocator) can change without touching the stores.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace hybridgen::memory {

// What an allocation holds: the placement policy decides where each role lives.
enum class Role : uint8_t {
  kKeys,     // offloaded keys: read by the CPU on the critical path (fast tier)
  kValues,   // offloaded values: only gathered and DMA'd to the device (slow tier is fine)
  kStaging,  // pinned buffers for device transfers
  kOther,
};
const char* role_name(Role role);

class HostAllocator {
 public:
  virtual ~HostAllocator() = default;
  // At least `bytes` bytes aligned to 64; throws hybridgen::Error (naming the role, the size
  // and the tier) when it cannot.
  virtual void* allocate(size_t bytes, Role role) = 0;
  virtual void deallocate(void* ptr, size_t bytes) noexcept = 0;
  virtual std::string name() const = 0;
};

// Ordinary process memory (no placement): the allocator until a tiered one is configured.
std::unique_ptr<HostAllocator> make_plain_allocator();

}  // namespace hybridgen::memory

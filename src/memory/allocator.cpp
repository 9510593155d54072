#include "memory/allocator.h"

#include <cstdlib>

#include "util/check.h"

namespace hybridgen::memory {

const char* role_name(Role role) {
  switch (role) {
    case Role::kKeys:
      return "keys";
    case Role::kValues:
      return "values";
    case Role::kStaging:
      return "staging";
    case Role::kOther:
      return "other";
  }
  return "?";
}

namespace {
class PlainAllocator : public HostAllocator {
 public:
  void* allocate(size_t bytes, Role role) override {
    const size_t rounded = (bytes + 63) / 64 * 64;
    void* p = rounded ? std::aligned_alloc(64, rounded) : nullptr;
    HG_CHECK(p || rounded == 0, std::string("out of host memory: ") + std::to_string(bytes) +
                                    " bytes for " + role_name(role));
    return p;
  }
  void deallocate(void* ptr, size_t) noexcept override { std::free(ptr); }
  std::string name() const override { return "plain"; }
};
}  // namespace

std::unique_ptr<HostAllocator> make_plain_allocator() { return std::make_unique<PlainAllocator>(); }

}  // namespace hybridgen::memory

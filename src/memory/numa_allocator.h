// Tiered host memory (paper §4.4, §4.7): a HostAllocator that places each allocation on NUMA
// nodes with mmap + mbind, by role. Fast tier = nodes with CPUs (DRAM, the calling thread's
// node preferred); slow tier = memory nodes without CPUs (how Linux shows CXL memory).
//
// Policies:
//   semantic   keys and staging on the fast tier, values on the slow tier. When the fast-tier
//              budget for keys is spent, further keys go to the slow tier; demote_oldest_keys()
//              moves the least-recently-generated key regions there (mbind + MPOL_MF_MOVE).
//   interleave keys, values and other memory interleaved page by page over fast + slow nodes
//              (MPOL_INTERLEAVE: the paper's baseline); staging stays on the fast tier.
//   dram       everything on the fast tier.
// With one tier (no CPU-less node and none named) semantic and interleave warn and use the
// fast tier for everything (interleave still sets MPOL_INTERLEAVE, over the fast nodes).
//
// Placement is MPOL_BIND by default (strict: a full node fails the allocation with an error
// instead of silently spilling keys into CXL, which would make the placement unverifiable);
// `strict = false` uses MPOL_PREFERRED (first node of the tier) and lets the kernel fall back.
// Pages are faulted in at allocation (MADV_POPULATE_WRITE, else a write per page), so the
// placement happens now and an exhausted node is an error here, not a SIGBUS later.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "memory/allocator.h"

namespace hybridgen::memory {

enum class Tier : uint8_t { kFast = 0, kSlow = 1 };
const char* tier_name(Tier tier);

enum class Policy : uint8_t { kSemantic, kInterleave, kDram };
const char* policy_name(Policy policy);
Policy parse_policy(const std::string& name);  // "semantic" | "interleave" | "dram"; else Error

struct NumaNode {
  int id = 0;
  bool has_cpus = false;
  uint64_t size_bytes = 0;  // numa_node_size64
  uint64_t free_bytes = 0;
};

struct Topology {
  bool numa_available = false;  // numa_available() >= 0 (mbind & co. work)
  std::vector<NumaNode> nodes;  // configured nodes that have memory, ascending id
  int local_node = 0;           // node of the calling thread's CPU
  const NumaNode* find(int id) const;
};
Topology discover_topology();

// DMA registration (cudaHostRegister once the CUDA backend sets it). register_fn returns false
// and fills `error` when it fails; the allocator then warns and keeps the region pageable.
struct DmaHooks {
  std::function<bool(void* ptr, size_t bytes, std::string& error)> register_fn;
  std::function<void(void* ptr)> unregister_fn;
  explicit operator bool() const { return static_cast<bool>(register_fn); }
};
// Process-wide default, read when an allocator is constructed (the CUDA backend sets it once).
void set_default_dma_hooks(DmaHooks hooks);
DmaHooks default_dma_hooks();

struct TierConfig {
  Policy policy = Policy::kSemantic;
  std::vector<int> fast_nodes;         // empty: every node with CPUs (local node first)
  std::vector<int> slow_nodes;         // empty: every memory node without CPUs
  uint64_t fast_budget_bytes = 0;      // 0: total size of the fast nodes
  uint64_t slow_budget_bytes = 0;      // 0: total size of the slow nodes
  uint64_t fast_key_budget_bytes = 0;  // semantic: keys allowed on the fast tier (0: fast budget)
  bool strict = true;                  // MPOL_BIND (true) or MPOL_PREFERRED (false)
  bool huge_pages = true;              // madvise(MADV_HUGEPAGE) for regions >= 2 MiB
  bool populate = true;                // fault pages in at allocation
  // Semantic: when a key allocation finds the fast-tier key budget spent, first demote the
  // oldest fast-tier key regions to the slow tier (the paper's LRG eviction) so that the new,
  // most recently generated keys stay fast. false: the new keys go to the slow tier.
  bool auto_demote_keys = false;
  // Roles registered for DMA through the hooks (values are DMA'd straight from their tier).
  bool register_staging = true;
  bool register_values = true;
  // Placement report: at most this many pages are queried per region (evenly spaced when the
  // region has more; the report says which regions were sampled).
  size_t report_max_pages_per_region = 65536;
};

// Bytes in use (mapped: page-rounded) per tier and role.
struct TierUsage {
  std::array<std::array<uint64_t, 4>, 2> bytes{};  // [tier][role]
  uint64_t tier_total(Tier t) const;
  uint64_t role_total(Role r) const;
  uint64_t at(Tier t, Role r) const { return bytes[size_t(t)][size_t(r)]; }
};

// What the kernel says: for each (tier, role) the bytes found on each node (move_pages with
// nodes = NULL), extrapolated from the queried pages when a region was sampled.
struct PlacementEntry {
  Tier tier = Tier::kFast;
  Role role = Role::kOther;
  uint64_t mapped_bytes = 0;
  std::map<int, uint64_t> bytes_on_node;  // node -> bytes
  uint64_t bytes_not_present = 0;         // pages not faulted in / swapped out (-ENOENT etc.)
  uint64_t pages_queried = 0;
  uint64_t regions = 0;
  bool interleaved = false;  // regions interleaved over fast + slow nodes
  bool sampled = false;
};
struct PlacementReport {
  std::string policy;
  std::vector<int> fast_nodes, slow_nodes;
  bool single_tier = false;
  std::vector<PlacementEntry> entries;  // only (tier, role) pairs with live regions
  std::string format() const;           // a few lines for `hybridgen-run -v` and benchmarks
  // Bytes of `role` on `node` across tiers.
  uint64_t bytes_on(Role role, int node) const;
};

// The memory policy the kernel holds for the page at `addr` (get_mempolicy MPOL_F_ADDR).
struct AddrPolicy {
  int mode = -1;           // MPOL_BIND, MPOL_INTERLEAVE, MPOL_PREFERRED, MPOL_DEFAULT
  std::vector<int> nodes;  // from the node mask
};
AddrPolicy query_policy(const void* addr);
// Node of each page in [ptr, ptr + bytes) (move_pages nodes = NULL); negative = -errno.
std::vector<int> query_page_nodes(const void* ptr, size_t bytes);
// mbind wrapper: throws hybridgen::Error naming the mode, the nodes and the errno.
void apply_policy(void* ptr, size_t bytes, int mode, const std::vector<int>& nodes, unsigned flags);

class NumaAllocator : public HostAllocator {
 public:
  // Validates the config against `topo` (Error naming the node and the numbers).
  explicit NumaAllocator(TierConfig config, Topology topo = discover_topology());
  ~NumaAllocator() override;
  NumaAllocator(const NumaAllocator&) = delete;
  NumaAllocator& operator=(const NumaAllocator&) = delete;

  void* allocate(size_t bytes, Role role) override;
  void deallocate(void* ptr, size_t bytes) noexcept override;
  std::string name() const override;

  // Move one live region to `to` (mbind MPOL_BIND + MPOL_MF_MOVE | MPOL_MF_STRICT: the pages
  // move now and later faults follow the new policy). Throws if the target budget is spent.
  void migrate(void* ptr, Tier to);
  // Semantic policy: move the least-recently-generated (oldest allocated) key regions still on
  // the fast tier to the slow tier until at least `bytes` of fast-tier key memory is freed or
  // none is left. Returns the bytes moved.
  uint64_t demote_oldest_keys(uint64_t bytes);

  Tier tier_of(const void* ptr) const;         // Error for an unknown pointer
  bool dma_registered(const void* ptr) const;  // false: pageable (registration failed or off)
  TierUsage usage() const;
  uint64_t budget(Tier t) const { return budget_[size_t(t)]; }
  uint64_t dma_registration_failures() const;
  bool single_tier() const { return single_tier_; }
  const std::vector<int>& nodes(Tier t) const { return nodes_[size_t(t)]; }
  Policy policy() const { return config_.policy; }
  void set_dma_hooks(DmaHooks hooks);
  PlacementReport report() const;

 private:
  struct Region {
    size_t mapped = 0;
    Role role = Role::kOther;
    Tier tier = Tier::kFast;
    bool interleaved = false;
    bool dma = false;
    std::array<uint64_t, 2> charged{};  // bytes counted against each tier's budget
    uint64_t seq = 0;                   // allocation order: the generation order of keys
  };
  // All under mu_.
  void split_charge(Region& r) const;
  bool fits(const Region& r) const;
  void charge(const Region& r, int sign);
  Region choose(size_t mapped, Role role);
  void migrate_locked(uintptr_t addr, Region& r, Tier to);
  void place(void* p, size_t mapped, Tier tier, bool interleaved, unsigned flags) const;

  TierConfig config_;
  Topology topo_;
  std::array<std::vector<int>, 2> nodes_;
  std::array<uint64_t, 2> budget_{};
  bool single_tier_ = false;
  size_t page_size_ = 4096;
  mutable std::mutex mu_;
  std::map<uintptr_t, Region> regions_;
  TierUsage usage_;
  uint64_t next_seq_ = 0;
  uint64_t dma_failures_ = 0;
  DmaHooks hooks_;
};

std::unique_ptr<NumaAllocator> make_numa_allocator(TierConfig config);

}  // namespace hybridgen::memory

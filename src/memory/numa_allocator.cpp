#include "memory/numa_allocator.h"

#include <numa.h>
#include <numaif.h>
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>
#include <sstream>

#include "util/check.h"
#include "util/log.h"

namespace hybridgen::memory {

namespace {

constexpr size_t kHugePage = size_t{2} << 20;
constexpr unsigned long kMaskBits = 1024;  // node mask width passed to the kernel
constexpr size_t kMaskWords = kMaskBits / (8 * sizeof(unsigned long));

std::string join(const std::vector<int>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(v[i]);
  }
  return s.empty() ? "-" : s;
}

std::string human(uint64_t bytes) {
  std::ostringstream o;
  o.precision(3);
  if (bytes >= (uint64_t{1} << 30))
    o << double(bytes) / double(uint64_t{1} << 30) << " GiB";
  else if (bytes >= (uint64_t{1} << 20))
    o << double(bytes) / double(uint64_t{1} << 20) << " MiB";
  else
    o << bytes << " B";
  return o.str();
}

std::string bytes_str(uint64_t bytes) {
  return std::to_string(bytes) + " bytes (" + human(bytes) + ")";
}

const char* mode_name(int mode) {
  switch (mode) {
    case MPOL_DEFAULT:
      return "MPOL_DEFAULT";
    case MPOL_BIND:
      return "MPOL_BIND";
    case MPOL_INTERLEAVE:
      return "MPOL_INTERLEAVE";
    case MPOL_PREFERRED:
      return "MPOL_PREFERRED";
    case MPOL_LOCAL:
      return "MPOL_LOCAL";
  }
  return "MPOL_?";
}

DmaHooks& default_hooks_storage() {
  static DmaHooks hooks;
  return hooks;
}
std::mutex& default_hooks_mutex() {
  static std::mutex mu;
  return mu;
}

}  // namespace

const char* tier_name(Tier tier) { return tier == Tier::kFast ? "fast" : "slow"; }

const char* policy_name(Policy policy) {
  switch (policy) {
    case Policy::kSemantic:
      return "semantic";
    case Policy::kInterleave:
      return "interleave";
    case Policy::kDram:
      return "dram";
  }
  return "?";
}

Policy parse_policy(const std::string& name) {
  if (name == "semantic") return Policy::kSemantic;
  if (name == "interleave") return Policy::kInterleave;
  if (name == "dram") return Policy::kDram;
  fail("unknown memory placement policy '" + name + "' (expected semantic, interleave or dram)");
}

void set_default_dma_hooks(DmaHooks hooks) {
  std::lock_guard lock(default_hooks_mutex());
  default_hooks_storage() = std::move(hooks);
}
DmaHooks default_dma_hooks() {
  std::lock_guard lock(default_hooks_mutex());
  return default_hooks_storage();
}

// ---- topology -------------------------------------------------------------------------------

const NumaNode* Topology::find(int id) const {
  for (const auto& n : nodes)
    if (n.id == id) return &n;
  return nullptr;
}

Topology discover_topology() {
  Topology t;
  t.numa_available = numa_available() >= 0;
  if (!t.numa_available) {
    // No NUMA support in this kernel: one node, the whole machine, no placement.
    NumaNode n;
    n.id = 0;
    n.has_cpus = true;
    n.size_bytes = uint64_t(sysconf(_SC_PHYS_PAGES)) * uint64_t(sysconf(_SC_PAGESIZE));
    n.free_bytes = uint64_t(sysconf(_SC_AVPHYS_PAGES)) * uint64_t(sysconf(_SC_PAGESIZE));
    t.nodes.push_back(n);
    return t;
  }
  const int max_node = numa_max_node();
  struct bitmask* cpus = numa_allocate_cpumask();
  for (int id = 0; id <= max_node; ++id) {
    if (!numa_bitmask_isbitset(numa_nodes_ptr, unsigned(id))) continue;
    long long free_b = 0;
    const long long size = numa_node_size64(id, &free_b);
    if (size <= 0) continue;  // memoryless (CPU-only) node: nothing to place there
    NumaNode n;
    n.id = id;
    n.size_bytes = uint64_t(size);
    n.free_bytes = free_b > 0 ? uint64_t(free_b) : 0;
    numa_bitmask_clearall(cpus);
    n.has_cpus = numa_node_to_cpus(id, cpus) == 0 && numa_bitmask_weight(cpus) > 0;
    t.nodes.push_back(n);
  }
  numa_free_cpumask(cpus);
  const int cpu = sched_getcpu();
  const int local = cpu >= 0 ? numa_node_of_cpu(cpu) : -1;
  t.local_node = local >= 0 ? local : (t.nodes.empty() ? 0 : t.nodes.front().id);
  return t;
}

// ---- kernel queries -------------------------------------------------------------------------

AddrPolicy query_policy(const void* addr) {
  AddrPolicy out;
  int mode = -1;
  unsigned long mask[kMaskWords] = {};
  if (get_mempolicy(&mode, mask, kMaskBits, const_cast<void*>(addr), MPOL_F_ADDR) != 0)
    fail(std::string("get_mempolicy(MPOL_F_ADDR) failed: ") + std::strerror(errno));
  out.mode = mode;
  for (unsigned long b = 0; b < kMaskBits; ++b)
    if (mask[b / (8 * sizeof(unsigned long))] >> (b % (8 * sizeof(unsigned long))) & 1UL)
      out.nodes.push_back(int(b));
  return out;
}

std::vector<int> query_page_nodes(const void* ptr, size_t bytes) {
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  const uintptr_t start = reinterpret_cast<uintptr_t>(ptr) / page * page;
  const uintptr_t end = reinterpret_cast<uintptr_t>(ptr) + bytes;
  const size_t n = (end - start + page - 1) / page;
  std::vector<int> status(n, -1);
  std::vector<void*> pages;
  constexpr size_t kBatch = 1 << 14;
  for (size_t i = 0; i < n; i += kBatch) {
    const size_t m = std::min(kBatch, n - i);
    pages.resize(m);
    for (size_t j = 0; j < m; ++j) pages[j] = reinterpret_cast<void*>(start + (i + j) * page);
    if (move_pages(0, m, pages.data(), nullptr, status.data() + i, 0) != 0)
      fail(std::string("move_pages (query) failed: ") + std::strerror(errno));
  }
  return status;
}

void apply_policy(void* ptr, size_t bytes, int mode, const std::vector<int>& nodes,
                  unsigned flags) {
  unsigned long mask[kMaskWords] = {};
  for (int n : nodes) {
    HG_CHECK(n >= 0 && unsigned(n) < kMaskBits,
             "mbind: NUMA node " + std::to_string(n) + " is out of range");
    mask[unsigned(n) / (8 * sizeof(unsigned long))] |=
        1UL << (unsigned(n) % (8 * sizeof(unsigned long)));
  }
  if (mbind(ptr, bytes, mode, nodes.empty() ? nullptr : mask, nodes.empty() ? 0 : kMaskBits,
            flags) != 0) {
    const int e = errno;
    fail(std::string("mbind(") + mode_name(mode) + ", nodes " + join(nodes) + ", " +
         std::to_string(bytes) + " bytes" + (flags & MPOL_MF_MOVE ? ", MPOL_MF_MOVE" : "") +
         ") failed: " + std::strerror(e) +
         (e == EINVAL ? " (a node that is not online or not allowed by this process' cpuset?)"
          : e == EIO  ? " (some pages could not be moved: pinned or busy?)"
                      : ""));
  }
}

// ---- usage / report -------------------------------------------------------------------------

uint64_t TierUsage::tier_total(Tier t) const {
  uint64_t s = 0;
  for (uint64_t b : bytes[size_t(t)]) s += b;
  return s;
}
uint64_t TierUsage::role_total(Role r) const { return bytes[0][size_t(r)] + bytes[1][size_t(r)]; }

uint64_t PlacementReport::bytes_on(Role role, int node) const {
  uint64_t s = 0;
  for (const auto& e : entries)
    if (e.role == role) {
      auto it = e.bytes_on_node.find(node);
      if (it != e.bytes_on_node.end()) s += it->second;
    }
  return s;
}

std::string PlacementReport::format() const {
  std::ostringstream o;
  o << "host memory: policy " << policy << ", fast tier nodes " << join(fast_nodes)
    << ", slow tier nodes " << join(slow_nodes) << (single_tier ? " (one tier)" : "") << "\n";
  for (const auto& e : entries) {
    o << "  " << role_name(e.role) << " on " << (e.interleaved ? "interleaved" : tier_name(e.tier))
      << ": " << human(e.mapped_bytes) << " in " << e.regions << " region(s); kernel reports";
    for (const auto& [node, b] : e.bytes_on_node) o << " node" << node << "=" << human(b);
    if (e.bytes_not_present) o << " not-present=" << human(e.bytes_not_present);
    o << " (" << e.pages_queried << " pages queried" << (e.sampled ? ", sampled" : "") << ")\n";
  }
  return o.str();
}

// ---- the allocator --------------------------------------------------------------------------

NumaAllocator::NumaAllocator(TierConfig config, Topology topo)
    : config_(std::move(config)), topo_(std::move(topo)) {
  page_size_ = size_t(sysconf(_SC_PAGESIZE));
  hooks_ = default_dma_hooks();
  auto existing = [&] {
    std::vector<int> ids;
    for (const auto& n : topo_.nodes) ids.push_back(n.id);
    return join(ids);
  };
  auto validate = [&](std::vector<int> list, const char* which) {
    std::vector<int> out;
    for (int id : list) {
      HG_CHECK(topo_.find(id) != nullptr,
               std::string(which) + " tier: NUMA node " + std::to_string(id) +
                   " does not exist or has no memory (memory nodes on this machine: " + existing() +
                   ")");
      if (std::find(out.begin(), out.end(), id) == out.end()) out.push_back(id);
    }
    return out;
  };
  if (!topo_.numa_available && (!config_.fast_nodes.empty() || !config_.slow_nodes.empty()))
    fail(
        "NUMA nodes were named for the memory tiers but this kernel has no NUMA support "
        "(numa_available() < 0)");
  auto& fast = nodes_[0];
  auto& slow = nodes_[1];
  fast = validate(config_.fast_nodes, "fast");
  slow = validate(config_.slow_nodes, "slow");
  if (fast.empty()) {
    for (const auto& n : topo_.nodes)
      if (n.has_cpus && std::find(slow.begin(), slow.end(), n.id) == slow.end())
        fast.push_back(n.id);
    if (fast.empty())
      for (const auto& n : topo_.nodes) fast.push_back(n.id);
    // The calling thread's node first (MPOL_PREFERRED uses the first node).
    auto it = std::find(fast.begin(), fast.end(), topo_.local_node);
    if (it != fast.end()) std::rotate(fast.begin(), it, it + 1);
  } else {
    for (int id : fast)
      if (!topo_.find(id)->has_cpus)
        log().warn("memory: fast tier node {} has no CPUs (CXL-like memory)", id);
  }
  if (slow.empty() && config_.slow_nodes.empty()) {
    for (const auto& n : topo_.nodes)
      if (!n.has_cpus && std::find(fast.begin(), fast.end(), n.id) == fast.end())
        slow.push_back(n.id);
  }
  for (int id : slow)
    if (std::find(fast.begin(), fast.end(), id) != fast.end())
      log().warn(
          "memory: node {} is in both the fast and the slow tier; tier placement is "
          "bookkeeping only for it",
          id);

  single_tier_ = slow.empty();
  if (single_tier_ && config_.policy != Policy::kDram)
    log().warn(
        "memory: policy {} needs a slow tier but there is none (no CPU-less memory "
        "node and none named); falling back to one tier (nodes {})",
        policy_name(config_.policy), join(fast));

  for (size_t t = 0; t < 2; ++t) {
    uint64_t capacity = 0;
    for (int id : nodes_[t]) capacity += topo_.find(id)->size_bytes;
    const uint64_t want = t == 0 ? config_.fast_budget_bytes : config_.slow_budget_bytes;
    if (want > capacity || (t == 1 && single_tier_ && want > 0)) {
      std::string sizes;
      for (int id : nodes_[t])
        sizes += (sizes.empty() ? "" : ", ") + std::string("node ") + std::to_string(id) + ": " +
                 bytes_str(topo_.find(id)->size_bytes);
      fail(std::string(tier_name(Tier(t))) + "-tier budget of " + bytes_str(want) +
           " exceeds the " + bytes_str(capacity) + " of its NUMA node(s) " + join(nodes_[t]) +
           (sizes.empty() ? std::string(" (no slow-tier node)") : " (" + sizes + ")"));
    }
    budget_[t] = want ? want : capacity;
  }
  if (config_.fast_key_budget_bytes > budget_[0])
    fail("fast-tier key budget of " + bytes_str(config_.fast_key_budget_bytes) +
         " exceeds the fast-tier budget of " + bytes_str(budget_[0]) + " (nodes " + join(fast) +
         ")");
  if (!topo_.numa_available)
    log().warn("memory: the kernel has no NUMA support; allocations are not placed");
  log().info("memory: {} (fast budget {}, slow budget {})", name(), human(budget_[0]),
             human(budget_[1]));
}

NumaAllocator::~NumaAllocator() {
  std::lock_guard lock(mu_);
  if (!regions_.empty())
    log().warn(
        "memory: {} region(s) still allocated when the NUMA allocator was destroyed; "
        "unmapping them",
        regions_.size());
  for (auto& [addr, r] : regions_) {
    if (r.dma && hooks_.unregister_fn) hooks_.unregister_fn(reinterpret_cast<void*>(addr));
    munmap(reinterpret_cast<void*>(addr), r.mapped);
  }
}

std::string NumaAllocator::name() const {
  return std::string("numa:") + policy_name(config_.policy) + "(fast=" + join(nodes_[0]) +
         ";slow=" + join(nodes_[1]) + (config_.strict ? ";bind" : ";preferred") + ")";
}

void NumaAllocator::set_dma_hooks(DmaHooks hooks) {
  std::lock_guard lock(mu_);
  hooks_ = std::move(hooks);
}

void NumaAllocator::split_charge(Region& r) const {
  r.charged = {0, 0};
  if (!r.interleaved) {
    r.charged[size_t(r.tier)] = r.mapped;
    return;
  }
  // Interleaved pages alternate over the distinct nodes of both tiers.
  std::set<int> all(nodes_[0].begin(), nodes_[0].end());
  size_t n_slow = 0;
  for (int id : nodes_[1])
    if (all.insert(id).second) ++n_slow;
  const uint64_t slow_share = r.mapped / all.size() * n_slow;
  r.charged[1] = slow_share;
  r.charged[0] = r.mapped - slow_share;
}

bool NumaAllocator::fits(const Region& r) const {
  for (size_t t = 0; t < 2; ++t)
    if (r.charged[t] && usage_.tier_total(Tier(t)) + r.charged[t] > budget_[t]) return false;
  return true;
}

void NumaAllocator::charge(const Region& r, int sign) {
  for (size_t t = 0; t < 2; ++t) {
    auto& b = usage_.bytes[t][size_t(r.role)];
    b = sign > 0 ? b + r.charged[t] : b - r.charged[t];
  }
}

NumaAllocator::Region NumaAllocator::choose(size_t mapped, Role role) {
  Region r;
  r.mapped = mapped;
  r.role = role;
  auto try_tier = [&](Tier t, bool interleaved) {
    r.tier = t;
    r.interleaved = interleaved;
    split_charge(r);
    return fits(r);
  };
  auto tier_err = [&](const char* what) -> Region {
    fail(std::string("memory: cannot allocate ") + bytes_str(mapped) + " for " + role_name(role) +
         ": " + what + " (fast tier nodes " + join(nodes_[0]) + ": " +
         bytes_str(usage_.tier_total(Tier::kFast)) + " of " + bytes_str(budget_[0]) +
         " in use; slow tier nodes " + join(nodes_[1]) + ": " +
         bytes_str(usage_.tier_total(Tier::kSlow)) + " of " + bytes_str(budget_[1]) + " in use)");
  };
  const Policy p = config_.policy;
  if (single_tier_ || p == Policy::kDram || role == Role::kStaging) {
    if (p == Policy::kInterleave && role != Role::kStaging) {
      if (try_tier(Tier::kFast, true)) return r;
    } else if (try_tier(Tier::kFast, false)) {
      return r;
    }
    return tier_err("the fast-tier budget is spent");
  }
  if (p == Policy::kInterleave) {
    if (try_tier(Tier::kFast, true)) return r;
    return tier_err("a tier's share of the interleaved region does not fit its budget");
  }
  // Semantic.
  if (role == Role::kValues) {
    if (try_tier(Tier::kSlow, false)) return r;
    if (try_tier(Tier::kFast, false)) {
      log().warn("memory: slow-tier budget spent; {} of values placed on the fast tier",
                 human(mapped));
      return r;
    }
    return tier_err("both tier budgets are spent");
  }
  if (role == Role::kKeys) {
    const uint64_t key_budget =
        config_.fast_key_budget_bytes ? config_.fast_key_budget_bytes : budget_[0];
    auto keys_fit_fast = [&] {
      return usage_.at(Tier::kFast, Role::kKeys) + mapped <= key_budget &&
             try_tier(Tier::kFast, false);
    };
    if (keys_fit_fast()) return r;
    if (config_.auto_demote_keys) {
      // LRG: demote the oldest fast-tier keys until the new ones fit (or none are left).
      std::vector<std::pair<uint64_t, uintptr_t>> order;
      for (auto& [addr, reg] : regions_)
        if (reg.role == Role::kKeys && reg.tier == Tier::kFast && !reg.interleaved)
          order.emplace_back(reg.seq, addr);
      std::sort(order.begin(), order.end());
      for (auto& [seq, addr] : order) {
        Region& old = regions_.at(addr);
        Region moved = old;
        moved.tier = Tier::kSlow;
        split_charge(moved);
        charge(old, -1);
        const bool ok = fits(moved);
        charge(old, +1);
        if (!ok) break;
        migrate_locked(addr, old, Tier::kSlow);
        if (keys_fit_fast()) return r;
      }
    }
    if (try_tier(Tier::kSlow, false)) {
      log().debug("memory: fast-tier key budget spent; {} of keys placed on the slow tier",
                  human(mapped));
      return r;
    }
    return tier_err("the fast-tier key budget and the slow-tier budget are spent");
  }
  // Other: fast, then slow.
  if (try_tier(Tier::kFast, false) || try_tier(Tier::kSlow, false)) return r;
  return tier_err("both tier budgets are spent");
}

void NumaAllocator::place(void* p, size_t mapped, Tier tier, bool interleaved,
                          unsigned flags) const {
  if (!topo_.numa_available) return;
  if (interleaved) {
    std::vector<int> all = nodes_[0];
    for (int id : nodes_[1])
      if (std::find(all.begin(), all.end(), id) == all.end()) all.push_back(id);
    apply_policy(p, mapped, MPOL_INTERLEAVE, all, flags);
  } else if (config_.strict) {
    apply_policy(p, mapped, MPOL_BIND, nodes_[size_t(tier)], flags);
  } else {
    apply_policy(p, mapped, MPOL_PREFERRED, {nodes_[size_t(tier)].front()}, flags);
  }
}

void* NumaAllocator::allocate(size_t bytes, Role role) {
  if (bytes == 0) return nullptr;
  const bool huge = config_.huge_pages && bytes >= kHugePage;
  const size_t align = huge ? kHugePage : page_size_;
  const auto rounded = checked_add(bytes, align - 1);
  HG_CHECK(rounded.has_value(), "memory: allocation size overflows: " + std::to_string(bytes));
  const size_t mapped = *rounded / align * align;

  Region r;
  {
    std::lock_guard lock(mu_);
    r = choose(mapped, role);
    r.seq = next_seq_++;
    charge(r, +1);  // reserved now: concurrent allocations see it
  }
  auto unreserve = [&] {
    std::lock_guard lock(mu_);
    charge(r, -1);
  };

  // Over-map by the alignment and trim, so huge-page regions start on a 2 MiB boundary.
  const size_t extra = align > page_size_ ? align : 0;
  void* raw = mmap(nullptr, mapped + extra, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED) {
    const int e = errno;
    unreserve();
    fail("memory: mmap of " + bytes_str(mapped) + " for " + role_name(role) +
         " failed: " + std::strerror(e));
  }
  uintptr_t base = reinterpret_cast<uintptr_t>(raw);
  if (extra) {
    const uintptr_t aligned = (base + align - 1) / align * align;
    if (aligned > base) munmap(raw, aligned - base);
    const uintptr_t tail = aligned + mapped;
    const uintptr_t raw_end = base + mapped + extra;
    if (raw_end > tail) munmap(reinterpret_cast<void*>(tail), raw_end - tail);
    base = aligned;
  }
  void* p = reinterpret_cast<void*>(base);
  if (huge && madvise(p, mapped, MADV_HUGEPAGE) != 0)
    log().debug("memory: madvise(MADV_HUGEPAGE) failed: {}", std::strerror(errno));
  try {
    place(p, mapped, r.tier, r.interleaved, 0);
  } catch (const Error& e) {
    munmap(p, mapped);
    unreserve();
    fail(std::string(e.what()) + " (placing " + role_name(role) + " on the " +
         (r.interleaved ? "interleaved" : tier_name(r.tier)) + " tier)");
  }
  if (config_.populate) {
    if (madvise(p, mapped, MADV_POPULATE_WRITE) != 0) {
      const int e = errno;
      if (e == EINVAL) {  // kernel < 5.14: touch one byte per page
        volatile char* c = static_cast<volatile char*>(p);
        for (size_t off = 0; off < mapped; off += page_size_) c[off] = 0;
      } else {
        munmap(p, mapped);
        unreserve();
        fail("memory: faulting in " + bytes_str(mapped) + " of " + role_name(role) + " on " +
             (r.interleaved ? "interleaved" : tier_name(r.tier)) + "-tier nodes " +
             join(nodes_[size_t(r.tier)]) + " failed: " + std::strerror(e) +
             " (the nodes are out of memory?)");
      }
    }
  }

  DmaHooks hooks;
  {
    std::lock_guard lock(mu_);
    hooks = hooks_;
  }
  const bool want_dma = (role == Role::kStaging && config_.register_staging) ||
                        (role == Role::kValues && config_.register_values);
  if (want_dma && hooks) {
    std::string err;
    bool ok = false;
    try {
      ok = hooks.register_fn(p, mapped, err);
    } catch (const std::exception& ex) {
      err = ex.what();
    }
    if (ok) {
      r.dma = true;
    } else {
      std::lock_guard lock(mu_);
      ++dma_failures_;
      log().warn(
          "memory: DMA registration of {} of {} failed ({}); using pageable memory "
          "(transfers will be staged by the driver, slower)",
          human(mapped), role_name(role), err.empty() ? "no reason given" : err);
    }
  }
  std::lock_guard lock(mu_);
  regions_.emplace(base, r);
  return p;
}

void NumaAllocator::deallocate(void* ptr, size_t) noexcept {
  if (!ptr) return;
  Region r;
  DmaHooks hooks;
  {
    std::lock_guard lock(mu_);
    auto it = regions_.find(reinterpret_cast<uintptr_t>(ptr));
    if (it == regions_.end()) {
      log().error("memory: deallocate of a pointer the NUMA allocator does not own: {}", ptr);
      return;
    }
    r = it->second;
    charge(r, -1);
    regions_.erase(it);
    hooks = hooks_;
  }
  if (r.dma && hooks.unregister_fn) hooks.unregister_fn(ptr);
  munmap(ptr, r.mapped);
}

void NumaAllocator::migrate_locked(uintptr_t addr, Region& r, Tier to) {
  Region moved = r;
  moved.tier = to;
  moved.interleaved = false;
  split_charge(moved);
  charge(r, -1);
  if (!fits(moved)) {
    charge(r, +1);
    fail("memory: cannot migrate " + bytes_str(r.mapped) + " of " + role_name(r.role) + " to the " +
         tier_name(to) + " tier: its budget of " + bytes_str(budget_[size_t(to)]) + " has " +
         bytes_str(usage_.tier_total(to)) + " in use");
  }
  try {
    place(reinterpret_cast<void*>(addr), r.mapped, to, false, MPOL_MF_MOVE | MPOL_MF_STRICT);
  } catch (...) {
    charge(r, +1);
    throw;
  }
  charge(moved, +1);
  r = moved;
}

void NumaAllocator::migrate(void* ptr, Tier to) {
  std::lock_guard lock(mu_);
  auto it = regions_.find(reinterpret_cast<uintptr_t>(ptr));
  HG_CHECK(it != regions_.end(), "memory: migrate of a pointer the NUMA allocator does not own");
  if (it->second.tier == to && !it->second.interleaved) return;
  HG_CHECK(!(to == Tier::kSlow && single_tier_),
           "memory: cannot migrate to the slow tier: there is none (fast tier nodes " +
               join(nodes_[0]) + ")");
  migrate_locked(it->first, it->second, to);
}

uint64_t NumaAllocator::demote_oldest_keys(uint64_t bytes) {
  std::lock_guard lock(mu_);
  if (single_tier_) {
    log().warn("memory: no slow tier; keys stay where they are");
    return 0;
  }
  std::vector<std::pair<uint64_t, uintptr_t>> order;
  for (auto& [addr, reg] : regions_)
    if (reg.role == Role::kKeys && reg.tier == Tier::kFast && !reg.interleaved)
      order.emplace_back(reg.seq, addr);
  std::sort(order.begin(), order.end());
  uint64_t moved = 0;
  for (auto& [seq, addr] : order) {
    if (moved >= bytes) break;
    Region& r = regions_.at(addr);
    migrate_locked(addr, r, Tier::kSlow);
    moved += r.mapped;
  }
  return moved;
}

Tier NumaAllocator::tier_of(const void* ptr) const {
  std::lock_guard lock(mu_);
  auto it = regions_.find(reinterpret_cast<uintptr_t>(ptr));
  HG_CHECK(it != regions_.end(), "memory: tier_of a pointer the NUMA allocator does not own");
  return it->second.tier;
}

bool NumaAllocator::dma_registered(const void* ptr) const {
  std::lock_guard lock(mu_);
  auto it = regions_.find(reinterpret_cast<uintptr_t>(ptr));
  return it != regions_.end() && it->second.dma;
}

TierUsage NumaAllocator::usage() const {
  std::lock_guard lock(mu_);
  return usage_;
}

uint64_t NumaAllocator::dma_registration_failures() const {
  std::lock_guard lock(mu_);
  return dma_failures_;
}

PlacementReport NumaAllocator::report() const {
  PlacementReport rep;
  rep.policy = policy_name(config_.policy);
  rep.fast_nodes = nodes_[0];
  rep.slow_nodes = nodes_[1];
  rep.single_tier = single_tier_;
  std::vector<std::pair<uintptr_t, Region>> regions;
  {
    std::lock_guard lock(mu_);
    regions.assign(regions_.begin(), regions_.end());
  }
  const size_t max_pages = std::max<size_t>(1, config_.report_max_pages_per_region);
  for (const auto& entry : regions) {
    // Named, not a structured binding: clang 14 cannot capture bindings in the lambda below.
    const uintptr_t addr = entry.first;
    const auto& r = entry.second;
    auto it = std::find_if(rep.entries.begin(), rep.entries.end(), [&](const PlacementEntry& e) {
      return e.role == r.role && e.tier == r.tier && e.interleaved == r.interleaved;
    });
    if (it == rep.entries.end()) {
      PlacementEntry e;
      e.role = r.role;
      e.tier = r.tier;
      e.interleaved = r.interleaved;
      rep.entries.push_back(e);
      it = rep.entries.end() - 1;
    }
    PlacementEntry& e = *it;
    e.mapped_bytes += r.mapped;
    e.regions += 1;
    const size_t n_pages = r.mapped / page_size_;
    std::vector<int> status;
    if (!topo_.numa_available) {
      status.assign(n_pages, 0);
    } else if (n_pages <= max_pages) {
      status = query_page_nodes(reinterpret_cast<void*>(addr), r.mapped);
    } else {
      // Evenly spaced sample; each queried page stands for mapped / queried bytes.
      e.sampled = true;
      std::vector<void*> pages(max_pages);
      for (size_t i = 0; i < max_pages; ++i)
        pages[i] = reinterpret_cast<void*>(addr + (i * n_pages / max_pages) * page_size_);
      status.assign(max_pages, -1);
      if (move_pages(0, max_pages, pages.data(), nullptr, status.data(), 0) != 0)
        fail(std::string("move_pages (query) failed: ") + std::strerror(errno));
    }
    e.pages_queried += status.size();
    const uint64_t per_page = r.mapped / std::max<size_t>(1, status.size());
    uint64_t assigned = 0;
    for (size_t i = 0; i < status.size(); ++i) {
      // The last page takes the rounding remainder so that the sums equal mapped_bytes.
      const uint64_t b = i + 1 == status.size() ? r.mapped - assigned : per_page;
      assigned += b;
      if (status[i] >= 0)
        e.bytes_on_node[status[i]] += b;
      else
        e.bytes_not_present += b;
    }
  }
  return rep;
}

std::unique_ptr<NumaAllocator> make_numa_allocator(TierConfig config) {
  return std::make_unique<NumaAllocator>(std::move(config));
}

}  // namespace hybridgen::memory

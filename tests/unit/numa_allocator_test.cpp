// Tiered NUMA allocator: tier discovery and config errors, budgets per tier and role, the
// mempolicy the kernel really holds for the pages (get_mempolicy MPOL_F_ADDR), where the kernel
// put the pages (move_pages), migration of the oldest keys, DMA registration and its fallback.
// On a one-node machine the two-tier logic runs with the same node named as both tiers (the
// placement is then bookkeeping only); what truly needs a CPU-less second node is skipped with
// a message, and runs inside scripts/numa-vm-test.sh.
#include "memory/numa_allocator.h"

#include <gtest/gtest.h>
#include <numaif.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "hybridgen/error.h"
#include "kv/tiered_kv.h"

namespace hybridgen::memory {
namespace {

constexpr size_t kMiB = size_t{1} << 20;

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

bool has(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

// A config that makes node `n` both tiers: exercises the two-tier logic on one node.
TierConfig same_node_tiers(Policy p, int n) {
  TierConfig c;
  c.policy = p;
  c.fast_nodes = {n};
  c.slow_nodes = {n};
  return c;
}

// The first CPU-less memory node and a node with CPUs, when the machine has both.
struct TwoTiers {
  int fast = -1, slow = -1;
};
TwoTiers real_two_tiers() {
  TwoTiers t;
  for (const auto& n : discover_topology().nodes) {
    if (n.has_cpus && t.fast < 0) t.fast = n.id;
    if (!n.has_cpus && t.slow < 0) t.slow = n.id;
  }
  return t;
}

TEST(NumaTopology, MatchesSysfs) {
  const Topology t = discover_topology();
  ASSERT_FALSE(t.nodes.empty());
  ASSERT_TRUE(t.numa_available) << "numa_available() < 0 on this kernel";
  size_t sysfs_nodes = 0;
  for (const auto& e : std::filesystem::directory_iterator("/sys/devices/system/node")) {
    const std::string name = e.path().filename();
    if (name.rfind("node", 0) == 0 && name.size() > 4 && std::isdigit(name[4])) ++sysfs_nodes;
  }
  EXPECT_LE(t.nodes.size(), sysfs_nodes);  // memoryless nodes are left out
  bool any_cpu = false;
  for (const auto& n : t.nodes) {
    EXPECT_GT(n.size_bytes, 0u);
    EXPECT_LE(n.free_bytes, n.size_bytes);
    any_cpu |= n.has_cpus;
  }
  EXPECT_TRUE(any_cpu);
  EXPECT_NE(t.find(t.local_node), nullptr);
  EXPECT_EQ(t.find(100000), nullptr);
}

TEST(NumaConfig, ParsePolicy) {
  EXPECT_EQ(parse_policy("semantic"), Policy::kSemantic);
  EXPECT_EQ(parse_policy("interleave"), Policy::kInterleave);
  EXPECT_EQ(parse_policy("dram"), Policy::kDram);
  EXPECT_TRUE(has(error_of([] { parse_policy("cxl"); }), "unknown memory placement policy 'cxl'"));
}

TEST(NumaConfig, UnknownNodeIsAnErrorNamingIt) {
  TierConfig c;
  c.slow_nodes = {977};
  const std::string e = error_of([&] { NumaAllocator a(c); });
  EXPECT_TRUE(has(e, "slow tier: NUMA node 977 does not exist")) << e;
  EXPECT_TRUE(has(e, "memory nodes on this machine: ")) << e;
  c.slow_nodes = {};
  c.fast_nodes = {-1};
  EXPECT_TRUE(has(error_of([&] { NumaAllocator a(c); }), "fast tier: NUMA node -1")) << e;
}

TEST(NumaConfig, BudgetLargerThanTheNodeIsAnError) {
  const Topology t = discover_topology();
  const NumaNode& n0 = t.nodes.front();
  TierConfig c;
  c.fast_nodes = {n0.id};
  c.fast_budget_bytes = n0.size_bytes + 1;
  const std::string e = error_of([&] { NumaAllocator a(c); });
  EXPECT_TRUE(has(e, "fast-tier budget of " + std::to_string(n0.size_bytes + 1) + " bytes")) << e;
  EXPECT_TRUE(has(e, "node " + std::to_string(n0.id) + ": " + std::to_string(n0.size_bytes))) << e;

  // A slow-tier budget with no slow tier at all.
  if (real_two_tiers().slow < 0) {
    TierConfig s;
    s.slow_budget_bytes = kMiB;
    const std::string e2 = error_of([&] { NumaAllocator a(s); });
    EXPECT_TRUE(has(e2, "slow-tier budget of 1048576 bytes")) << e2;
    EXPECT_TRUE(has(e2, "no slow-tier node")) << e2;
  }

  // Key budget beyond the fast budget.
  TierConfig k;
  k.fast_budget_bytes = 4 * kMiB;
  k.fast_key_budget_bytes = 8 * kMiB;
  EXPECT_TRUE(has(error_of([&] { NumaAllocator a(k); }), "fast-tier key budget of 8388608 bytes"));
}

TEST(NumaPolicy, FailingMbindIsAClearError) {
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  void* p = aligned_alloc(page, page);
  ASSERT_NE(p, nullptr);
  // Node 1000 is never online: the kernel answers EINVAL.
  const std::string e = error_of([&] { apply_policy(p, page, MPOL_BIND, {1000}, 0); });
  EXPECT_TRUE(has(e, "mbind(MPOL_BIND, nodes 1000")) << e;
  EXPECT_TRUE(has(e, "failed: Invalid argument")) << e;
  free(p);
}

TEST(NumaAllocatorDram, BindsToTheFastNodeAndCountsPerRole) {
  TierConfig c;
  c.policy = Policy::kDram;
  c.fast_budget_bytes = 64 * kMiB;
  NumaAllocator a(c);
  const int fast = a.nodes(Tier::kFast).front();
  EXPECT_EQ(fast, discover_topology().local_node);

  void* k = a.allocate(3 * kMiB + 5, Role::kKeys);  // rounded up to 2 MiB huge pages: 4 MiB
  void* v = a.allocate(100, Role::kValues);         // one page
  ASSERT_NE(k, nullptr);
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(k) % (2 * kMiB), 0u);
  std::memset(k, 1, 3 * kMiB + 5);
  std::memset(v, 2, 100);
  const size_t page = size_t(sysconf(_SC_PAGESIZE));

  const AddrPolicy pk = query_policy(k);
  EXPECT_EQ(pk.mode, MPOL_BIND);
  EXPECT_EQ(pk.nodes, std::vector<int>{fast});
  const AddrPolicy pv = query_policy(static_cast<char*>(v) + 50);
  EXPECT_EQ(pv.mode, MPOL_BIND);

  const TierUsage u = a.usage();
  EXPECT_EQ(u.at(Tier::kFast, Role::kKeys), 4 * kMiB);
  EXPECT_EQ(u.at(Tier::kFast, Role::kValues), page);
  EXPECT_EQ(u.tier_total(Tier::kSlow), 0u);
  EXPECT_EQ(a.tier_of(v), Tier::kFast);

  // The kernel put every page on the fast node.
  const PlacementReport rep = a.report();
  EXPECT_EQ(rep.bytes_on(Role::kKeys, fast), 4 * kMiB);
  EXPECT_EQ(rep.bytes_on(Role::kValues, fast), page);
  for (int n : query_page_nodes(k, 4 * kMiB)) EXPECT_EQ(n, fast);

  // Budget: 64 MiB in total.
  const std::string e = error_of([&] { a.allocate(61 * kMiB, Role::kValues); });
  EXPECT_TRUE(has(e, "cannot allocate 65011712 bytes")) << e;
  EXPECT_TRUE(has(e, "for values")) << e;
  EXPECT_TRUE(has(e, "fast-tier budget is spent")) << e;
  EXPECT_EQ(a.usage().tier_total(Tier::kFast), 4 * kMiB + page);  // failed: nothing charged

  a.deallocate(k, 3 * kMiB + 5);
  a.deallocate(v, 100);
  EXPECT_EQ(a.usage().tier_total(Tier::kFast), 0u);
  EXPECT_EQ(a.allocate(0, Role::kKeys), nullptr);
}

TEST(NumaAllocatorDram, PreferredWhenNotStrict) {
  TierConfig c;
  c.policy = Policy::kDram;
  c.strict = false;
  NumaAllocator a(c);
  void* p = a.allocate(8192, Role::kOther);
  const AddrPolicy pol = query_policy(p);
  EXPECT_EQ(pol.mode, MPOL_PREFERRED);
  EXPECT_EQ(pol.nodes, std::vector<int>{a.nodes(Tier::kFast).front()});
  EXPECT_TRUE(has(a.name(), "preferred"));
  a.deallocate(p, 8192);
}

TEST(NumaAllocatorSemantic, OneTierFallsBackToFast) {
  if (real_two_tiers().slow >= 0) GTEST_SKIP() << "this machine has a CPU-less memory node";
  NumaAllocator a(TierConfig{});
  EXPECT_TRUE(a.single_tier());
  void* v = a.allocate(4096, Role::kValues);
  EXPECT_EQ(a.tier_of(v), Tier::kFast);
  EXPECT_EQ(query_policy(v).mode, MPOL_BIND);
  EXPECT_EQ(a.demote_oldest_keys(kMiB), 0u);
  EXPECT_TRUE(has(error_of([&] { a.migrate(v, Tier::kSlow); }), "there is none"));
  a.deallocate(v, 4096);
}

TEST(NumaAllocatorSemantic, KeysFastValuesSlowSpillAndBudgets) {
  const int n = discover_topology().local_node;
  TierConfig c = same_node_tiers(Policy::kSemantic, n);
  c.fast_budget_bytes = 16 * kMiB;
  c.slow_budget_bytes = 16 * kMiB;
  c.fast_key_budget_bytes = 4 * kMiB;
  NumaAllocator a(c);
  EXPECT_FALSE(a.single_tier());

  void* k1 = a.allocate(2 * kMiB, Role::kKeys);
  void* k2 = a.allocate(2 * kMiB, Role::kKeys);
  void* k3 = a.allocate(2 * kMiB, Role::kKeys);  // key budget spent: slow tier
  void* v = a.allocate(6 * kMiB, Role::kValues);
  void* s = a.allocate(kMiB, Role::kStaging);
  EXPECT_EQ(a.tier_of(k1), Tier::kFast);
  EXPECT_EQ(a.tier_of(k2), Tier::kFast);
  EXPECT_EQ(a.tier_of(k3), Tier::kSlow);
  EXPECT_EQ(a.tier_of(v), Tier::kSlow);
  EXPECT_EQ(a.tier_of(s), Tier::kFast);
  TierUsage u = a.usage();
  EXPECT_EQ(u.at(Tier::kFast, Role::kKeys), 4 * kMiB);
  EXPECT_EQ(u.at(Tier::kSlow, Role::kKeys), 2 * kMiB);
  EXPECT_EQ(u.at(Tier::kSlow, Role::kValues), 6 * kMiB);
  EXPECT_EQ(u.at(Tier::kFast, Role::kStaging), kMiB);
  EXPECT_EQ(u.role_total(Role::kKeys), 6 * kMiB);
  for (void* p : {k1, k3, v, s}) {
    const AddrPolicy pol = query_policy(p);
    EXPECT_EQ(pol.mode, MPOL_BIND);
    EXPECT_EQ(pol.nodes, std::vector<int>{n});
  }
  // Values beyond the slow budget fall back to the fast tier (with a warning)...
  void* v2 = a.allocate(10 * kMiB, Role::kValues);
  EXPECT_EQ(a.tier_of(v2), Tier::kFast);
  // ... and when neither fits, the error names both tiers.
  const std::string e = error_of([&] { a.allocate(10 * kMiB, Role::kValues); });
  EXPECT_TRUE(has(e, "both tier budgets are spent")) << e;
  EXPECT_TRUE(has(e, "slow tier nodes " + std::to_string(n))) << e;
  for (void* p : {k1, k2, k3, v, s, v2}) a.deallocate(p, 0);
  u = a.usage();
  EXPECT_EQ(u.tier_total(Tier::kFast) + u.tier_total(Tier::kSlow), 0u);
}

TEST(NumaAllocatorSemantic, DemotesLeastRecentlyGeneratedKeys) {
  const int n = discover_topology().local_node;
  TierConfig c = same_node_tiers(Policy::kSemantic, n);
  c.fast_key_budget_bytes = 6 * kMiB;
  c.slow_budget_bytes = 32 * kMiB;
  NumaAllocator a(c);
  std::vector<char*> keys;
  for (int i = 0; i < 3; ++i) {
    keys.push_back(static_cast<char*>(a.allocate(2 * kMiB, Role::kKeys)));
    std::memset(keys.back(), 'a' + i, 2 * kMiB);
  }
  // Ask for 3 MiB: the two oldest regions move (2 MiB is not enough).
  EXPECT_EQ(a.demote_oldest_keys(3 * kMiB), 4 * kMiB);
  EXPECT_EQ(a.tier_of(keys[0]), Tier::kSlow);
  EXPECT_EQ(a.tier_of(keys[1]), Tier::kSlow);
  EXPECT_EQ(a.tier_of(keys[2]), Tier::kFast);
  EXPECT_EQ(a.usage().at(Tier::kFast, Role::kKeys), 2 * kMiB);
  EXPECT_EQ(a.usage().at(Tier::kSlow, Role::kKeys), 4 * kMiB);
  // The data survived the move, the pages are where the kernel says, the policy is the slow
  // tier's.
  EXPECT_EQ(keys[0][12345], 'a');
  EXPECT_EQ(keys[1][2 * kMiB - 1], 'b');
  EXPECT_EQ(query_policy(keys[0]).mode, MPOL_BIND);
  for (int node : query_page_nodes(keys[0], 2 * kMiB)) EXPECT_EQ(node, n);
  // Room again on the fast tier for new keys.
  void* k4 = a.allocate(2 * kMiB, Role::kKeys);
  EXPECT_EQ(a.tier_of(k4), Tier::kFast);
  // Explicit migration back.
  a.migrate(keys[0], Tier::kFast);
  EXPECT_EQ(a.tier_of(keys[0]), Tier::kFast);
  EXPECT_EQ(a.usage().at(Tier::kFast, Role::kKeys), 6 * kMiB);
  a.deallocate(k4, 0);
  for (char* k : keys) a.deallocate(k, 0);
}

TEST(NumaAllocatorSemantic, AutoDemoteKeepsNewestKeysFast) {
  const int n = discover_topology().local_node;
  TierConfig c = same_node_tiers(Policy::kSemantic, n);
  c.fast_key_budget_bytes = 4 * kMiB;
  c.slow_budget_bytes = 32 * kMiB;
  c.auto_demote_keys = true;
  NumaAllocator a(c);
  void* k1 = a.allocate(2 * kMiB, Role::kKeys);
  void* k2 = a.allocate(2 * kMiB, Role::kKeys);
  void* k3 = a.allocate(2 * kMiB, Role::kKeys);
  EXPECT_EQ(a.tier_of(k1), Tier::kSlow);  // oldest demoted
  EXPECT_EQ(a.tier_of(k2), Tier::kFast);
  EXPECT_EQ(a.tier_of(k3), Tier::kFast);
  for (void* p : {k1, k2, k3}) a.deallocate(p, 0);
}

TEST(NumaAllocatorSemantic, MigrationBudgetError) {
  const int n = discover_topology().local_node;
  TierConfig c = same_node_tiers(Policy::kSemantic, n);
  c.slow_budget_bytes = 2 * kMiB;
  NumaAllocator a(c);
  void* v = a.allocate(2 * kMiB, Role::kValues);  // fills the slow tier
  void* k = a.allocate(2 * kMiB, Role::kKeys);
  const std::string e = error_of([&] { a.migrate(k, Tier::kSlow); });
  EXPECT_TRUE(has(e, "cannot migrate 2097152 bytes")) << e;
  EXPECT_EQ(a.tier_of(k), Tier::kFast);
  EXPECT_EQ(a.usage().at(Tier::kFast, Role::kKeys), 2 * kMiB);
  a.deallocate(v, 0);
  a.deallocate(k, 0);
}

TEST(NumaAllocatorInterleave, SetsInterleavePolicyStagingStaysFast) {
  TierConfig c;
  c.policy = Policy::kInterleave;
  NumaAllocator a(c);
  void* k = a.allocate(4 * kMiB, Role::kKeys);
  void* s = a.allocate(4096, Role::kStaging);
  const AddrPolicy pk = query_policy(k);
  EXPECT_EQ(pk.mode, MPOL_INTERLEAVE);
  std::vector<int> all = a.nodes(Tier::kFast);
  for (int id : a.nodes(Tier::kSlow)) all.push_back(id);
  std::sort(all.begin(), all.end());
  EXPECT_EQ(pk.nodes, all);
  EXPECT_EQ(query_policy(s).mode, MPOL_BIND);
  const TierUsage u = a.usage();
  EXPECT_EQ(u.role_total(Role::kKeys), 4 * kMiB);
  const PlacementReport rep = a.report();
  uint64_t total = 0;
  for (int id : all) total += rep.bytes_on(Role::kKeys, id);
  EXPECT_EQ(total, 4 * kMiB);
  EXPECT_TRUE(has(rep.format(), "keys on interleaved")) << rep.format();
  a.deallocate(k, 0);
  a.deallocate(s, 0);
}

TEST(NumaReport, SampledLargeRegion) {
  TierConfig c;
  c.policy = Policy::kDram;
  c.report_max_pages_per_region = 16;
  NumaAllocator a(c);
  void* p = a.allocate(8 * kMiB, Role::kValues);
  const PlacementReport rep = a.report();
  ASSERT_EQ(rep.entries.size(), 1u);
  EXPECT_TRUE(rep.entries[0].sampled);
  EXPECT_EQ(rep.entries[0].pages_queried, 16u);
  EXPECT_EQ(rep.bytes_on(Role::kValues, a.nodes(Tier::kFast).front()), 8 * kMiB);
  EXPECT_EQ(rep.entries[0].bytes_not_present, 0u);
  std::printf("%s", rep.format().c_str());
  a.deallocate(p, 0);
}

TEST(NumaReport, NotPopulatedPagesAreReportedAsSuch) {
  TierConfig c;
  c.policy = Policy::kDram;
  c.populate = false;
  c.huge_pages = false;
  NumaAllocator a(c);
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  char* p = static_cast<char*>(a.allocate(4 * page, Role::kKeys));
  p[0] = 1;  // one page faulted in
  const PlacementReport rep = a.report();
  EXPECT_EQ(rep.bytes_on(Role::kKeys, a.nodes(Tier::kFast).front()), page);
  EXPECT_EQ(rep.entries[0].bytes_not_present, 3 * page);
  a.deallocate(p, 0);
}

TEST(NumaDma, FailingRegistrarFallsBackToPageable) {
  TierConfig c;
  c.policy = Policy::kDram;
  NumaAllocator a(c);
  int calls = 0, unregisters = 0;
  a.set_dma_hooks({[&](void*, size_t, std::string& err) {
                     ++calls;
                     err = "cudaHostRegister: operation not permitted";
                     return false;
                   },
                   [&](void*) { ++unregisters; }});
  void* s = a.allocate(kMiB, Role::kStaging);
  ASSERT_NE(s, nullptr);
  std::memset(s, 7, kMiB);  // still usable memory
  EXPECT_FALSE(a.dma_registered(s));
  EXPECT_EQ(a.dma_registration_failures(), 1u);
  void* k = a.allocate(kMiB, Role::kKeys);  // keys are never registered
  EXPECT_EQ(calls, 1);
  a.deallocate(s, 0);
  a.deallocate(k, 0);
  EXPECT_EQ(unregisters, 0);  // nothing was registered
}

TEST(NumaDma, ThrowingRegistrarIsAFailureToo) {
  TierConfig c;
  c.policy = Policy::kDram;
  NumaAllocator a(c);
  a.set_dma_hooks(
      {[](void*, size_t, std::string&) -> bool { throw std::runtime_error("boom"); }, nullptr});
  void* v = a.allocate(4096, Role::kValues);
  EXPECT_FALSE(a.dma_registered(v));
  EXPECT_EQ(a.dma_registration_failures(), 1u);
  a.deallocate(v, 0);
}

TEST(NumaDma, SuccessfulRegistrarIsUnregisteredOnFree) {
  std::vector<std::pair<void*, size_t>> registered;
  std::vector<void*> unregistered;
  set_default_dma_hooks({[&](void* p, size_t n, std::string&) {
                           registered.emplace_back(p, n);
                           return true;
                         },
                         [&](void* p) { unregistered.push_back(p); }});
  TierConfig c;
  c.policy = Policy::kDram;
  c.register_values = false;
  NumaAllocator a(c);
  set_default_dma_hooks({});
  void* s = a.allocate(3 * kMiB, Role::kStaging);
  void* v = a.allocate(kMiB, Role::kValues);
  ASSERT_EQ(registered.size(), 1u);
  EXPECT_EQ(registered[0].first, s);
  EXPECT_EQ(registered[0].second, 4 * kMiB);
  EXPECT_TRUE(a.dma_registered(s));
  EXPECT_FALSE(a.dma_registered(v));
  a.deallocate(s, 0);
  a.deallocate(v, 0);
  EXPECT_EQ(unregistered, std::vector<void*>{s});
}

TEST(NumaAllocatorBase, WorksThroughTheHostAllocatorInterface) {
  std::unique_ptr<HostAllocator> a = make_numa_allocator(TierConfig{});
  EXPECT_TRUE(has(a->name(), "numa:semantic(fast="));
  void* p = a->allocate(1000, Role::kOther);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0u);
  a->deallocate(p, 1000);
  a->deallocate(reinterpret_cast<void*>(0x1000), 1);  // unknown: logged, not a crash
}

// ---- needs a real CPU-less memory node (runs inside scripts/numa-vm-test.sh) ---------------

TEST(NumaTwoNodes, ValuesOnTheSlowNodeKeysOnTheFastNode) {
  const TwoTiers t = real_two_tiers();
  if (t.fast < 0 || t.slow < 0)
    GTEST_SKIP() << "needs a node with CPUs and a CPU-less memory node (this machine has "
                 << discover_topology().nodes.size() << " memory node(s)); see "
                 << "scripts/numa-vm-test.sh";
  TierConfig c;  // automatic discovery
  c.fast_nodes = {t.fast};
  c.fast_key_budget_bytes = 4 * kMiB;
  NumaAllocator a(c);
  EXPECT_FALSE(a.single_tier());
  void* k = a.allocate(4 * kMiB, Role::kKeys);
  void* v = a.allocate(4 * kMiB, Role::kValues);
  void* k2 = a.allocate(2 * kMiB, Role::kKeys);  // key budget spent: slow node
  PlacementReport rep = a.report();
  std::printf("%s", rep.format().c_str());
  EXPECT_EQ(rep.bytes_on(Role::kKeys, t.fast), 4 * kMiB);
  EXPECT_EQ(rep.bytes_on(Role::kValues, t.slow), 4 * kMiB);
  EXPECT_EQ(rep.bytes_on(Role::kKeys, t.slow), 2 * kMiB);
  EXPECT_EQ(query_policy(v).nodes, std::vector<int>{t.slow});
  // Demote the oldest keys: the kernel moves the pages to the slow node.
  std::memset(k, 'k', 4 * kMiB);
  EXPECT_EQ(a.demote_oldest_keys(1), 4 * kMiB);
  for (int node : query_page_nodes(k, 4 * kMiB)) EXPECT_EQ(node, t.slow);
  EXPECT_EQ(static_cast<char*>(k)[777], 'k');
  rep = a.report();
  std::printf("%s", rep.format().c_str());
  EXPECT_EQ(rep.bytes_on(Role::kKeys, t.slow), 6 * kMiB);
  for (void* p : {k, v, k2}) a.deallocate(p, 0);

  // Interleave: pages on both nodes.
  TierConfig il;
  il.policy = Policy::kInterleave;
  il.fast_nodes = {t.fast};
  il.slow_nodes = {t.slow};
  NumaAllocator b(il);
  void* x = b.allocate(8 * kMiB, Role::kKeys);
  rep = b.report();
  std::printf("%s", rep.format().c_str());
  EXPECT_GT(rep.bytes_on(Role::kKeys, t.fast), 0u);
  EXPECT_GT(rep.bytes_on(Role::kKeys, t.slow), 0u);
  b.deallocate(x, 0);
}

// The hybrid runtime's host stores through the allocator (semantic policy): after evictions,
// the key store is on the fast tier and the value store on the slow tier, as the allocator's
// books say and, with a real CPU-less node (inside scripts/numa-vm-test.sh), as the kernel says.
TEST(NumaTieredKv, KeyStoreFastValueStoreSlow) {
  const TwoTiers t = real_two_tiers();
  const bool two = t.fast >= 0 && t.slow >= 0;
  TierConfig c =
      two ? TierConfig{} : same_node_tiers(Policy::kSemantic, discover_topology().local_node);
  if (two) {
    c.fast_nodes = {t.fast};
    c.slow_nodes = {t.slow};
  }
  NumaAllocator a(c);
  kv::TieredConfig tc;
  tc.n_kv_heads = 2;
  tc.head_dim = 64;
  tc.context = 4096;
  tc.window = 16;
  kv::TieredKvCache cache(2, tc, 1, a);
  ASSERT_EQ(cache.open_sequence(), 0);
  std::vector<float> k(size_t(100) * 2 * 64, 0.5f), v(size_t(100) * 2 * 64, -0.5f);
  for (int l = 0; l < 2; ++l) cache.layer(0, l).append(100, k.data(), v.data());
  const uint64_t store = uint64_t(4096 - 16) * 2 * 64 * 2;  // preallocated: context - window
  const TierUsage u = a.usage();
  EXPECT_GE(u.at(Tier::kFast, Role::kKeys), 2 * store);
  EXPECT_EQ(u.at(Tier::kSlow, Role::kKeys), 0u);
  EXPECT_GE(u.at(Tier::kSlow, Role::kValues), 2 * store);
  EXPECT_EQ(u.at(Tier::kFast, Role::kValues), 0u);
  if (two) {
    const PlacementReport rep = a.report();
    std::printf("%s", rep.format().c_str());
    EXPECT_GE(rep.bytes_on(Role::kKeys, t.fast), 2 * store);
    EXPECT_GE(rep.bytes_on(Role::kValues, t.slow), 2 * store);
    EXPECT_EQ(rep.bytes_on(Role::kValues, t.fast), 0u);
  }
  EXPECT_EQ(cache.layer(0, 1).n_offloaded(), 84);
}

}  // namespace
}  // namespace hybridgen::memory

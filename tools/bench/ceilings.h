// Ceilings measured in the same run as the benchmark, for the floors it reports.
#pragma once
#include <cstddef>

namespace hybridgen::bench {

struct HostBandwidth {
  double median_gbs = 0, min_gbs = 0, max_gbs = 0;
  size_t mib = 0;
  int reps = 0, threads = 0;
};

// Host read bandwidth with the OpenMP threads currently set (bench/host_bandwidth.h, the method
// of hybridgen-membw): `reps` passes over a `mib` MiB buffer.
HostBandwidth measure_host_read(size_t mib, int reps);

}  // namespace hybridgen::bench

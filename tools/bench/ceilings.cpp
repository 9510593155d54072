// Compiled with -O3 -march=native (tools/CMakeLists.txt) like bench/membw.cpp, so that the
// bandwidth loop is vectorized the same way in every benchmark that quotes it.
#include "ceilings.h"

#include <omp.h>

#include <algorithm>

#include "host_bandwidth.h"  // bench/

namespace hybridgen::bench {

HostBandwidth measure_host_read(size_t mib, int reps) {
  std::vector<double> gbs = host_read_gbs(mib, reps);
  std::sort(gbs.begin(), gbs.end());
  HostBandwidth b;
  b.median_gbs = gbs[gbs.size() / 2];
  b.min_gbs = gbs.front();
  b.max_gbs = gbs.back();
  b.mib = mib;
  b.reps = reps;
  b.threads = omp_get_max_threads();
  return b;
}

}  // namespace hybridgen::bench

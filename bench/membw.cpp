// Host read bandwidth (bench/host_bandwidth.h), median of repetitions. The floor of a CPU
// decode step is (weight + KV bytes) / this.
//   hybridgen-membw [MiB=1024] [reps=9]
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "host_bandwidth.h"

int main(int argc, char** argv) {
  const size_t mib = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 1024;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 9;
  if (mib == 0 || reps <= 0) {
    std::fprintf(stderr, "usage: %s [MiB > 0] [reps > 0]\n", argv[0]);
    return 2;
  }
  std::vector<double> gbs = hybridgen::bench::host_read_gbs(mib, reps);
  std::sort(gbs.begin(), gbs.end());
  std::printf(
      "host read bandwidth: %.2f GB/s median (min %.2f, max %.2f) over %d reps of %zu "
      "MiB, %d threads\n",
      gbs[gbs.size() / 2], gbs.front(), gbs.back(), reps, mib, omp_get_max_threads());
  return 0;
}

// Four rows' Q4_0 / Q4_1 / Q8_0 blocks interleaved for the 16-bit-activation kernels
// (quant_gemv16.h, "Rows interleaved by four"): the layout and its inverse. Plain byte moves:
// a repacked row unpacks to the bytes GGUF stored (quant_gemv16_test checks the round trip).
#include <algorithm>
#include <cstring>
#include <string>

#include "cpu/quant/quant_gemv16.h"
#include "util/check.h"

namespace hybridgen::cpu {

namespace {

// Per block of one row: the f16 fields (d, then Q4_1's m) and the quant bytes after them.
struct R4Format {
  int fields = 0;  // f16 fields per block
  int qbytes = 0;  // quant bytes per block
  int block_bytes() const { return 2 * fields + qbytes; }
};

R4Format r4_format(DType t) {
  switch (t) {
    case DType::kQ4_0:
      return {1, 16};
    case DType::kQ4_1:
      return {2, 16};
    case DType::kQ8_0:
      return {1, 32};
    default:
      fail("repack_rows4: no interleaved layout for " + std::string(dtype_name(t)));
  }
}

}  // namespace

bool quant16_r4_supports(DType t) {
  return t == DType::kQ4_0 || t == DType::kQ4_1 || t == DType::kQ8_0;
}

bool quant16_r4_preferred(DType t) {
  return quant16_r4_supports(t) && quant_gemv16_path() == QuantPath::kAvx2;
}

std::vector<uint8_t> repack_rows4(DType t, const uint8_t* w, int rows, int in) {
  const R4Format f = r4_format(t);
  HG_CHECK(rows > 0 && in > 0 && in % 32 == 0, "repack_rows4: " + std::to_string(rows) +
                                                   " rows of " + std::to_string(in) +
                                                   " inputs (need in % 32 == 0)");
  const int nb = in / 32, bb = f.block_bytes(), groups = (rows + 3) / 4;
  const int64_t rb = int64_t(nb) * bb;
  std::vector<uint8_t> out(size_t(groups) * 4 * rb, 0);  // padding rows: zero blocks (d = 0)
  for (int o = 0; o < rows; ++o) {
    const int g = o / 4, k = o % 4;
    for (int b = 0; b < nb; ++b) {
      const uint8_t* src = w + o * rb + int64_t(b) * bb;
      uint8_t* dst = out.data() + (int64_t(g) * nb + b) * 4 * bb;
      for (int fi = 0; fi < f.fields; ++fi) std::memcpy(dst + 8 * fi + 2 * k, src + 2 * fi, 2);
      std::memcpy(dst + 8 * f.fields + f.qbytes * k, src + 2 * f.fields, f.qbytes);
    }
  }
  return out;
}

void unpack_row4(DType t, const uint8_t* packed, int row, int in, uint8_t* out) {
  const R4Format f = r4_format(t);
  const int nb = in / 32, bb = f.block_bytes(), g = row / 4, k = row % 4;
  for (int b = 0; b < nb; ++b) {
    const uint8_t* src = packed + (int64_t(g) * nb + b) * 4 * bb;
    uint8_t* dst = out + int64_t(b) * bb;
    for (int fi = 0; fi < f.fields; ++fi) std::memcpy(dst + 2 * fi, src + 8 * fi + 2 * k, 2);
    std::memcpy(dst + 2 * f.fields, src + 8 * f.fields + f.qbytes * k, f.qbytes);
  }
}

}  // namespace hybridgen::cpu

// Shared helpers of the libFuzzer harnesses (tests/fuzz/README.md).
//
// The library's loaders take paths, so each input is written to an anonymous in-memory file
// (memfd_create) once per run and opened as /proc/self/fd/N: no disk traffic, nothing left
// behind, and nothing added to src/. A harness catches hybridgen::Error only: any other
// exception, a crash, a leak, a sanitizer report or a failed FUZZ_CHECK is a finding.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

// An invariant the library promises. Failing it aborts, which libFuzzer reports as a crash
// and saves the input.
#define FUZZ_CHECK(cond, ...)                                                              \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      std::fprintf(stderr, "FUZZ_CHECK failed at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, "  " __VA_ARGS__);                                              \
      std::fprintf(stderr, "\n");                                                          \
      std::abort();                                                                        \
    }                                                                                      \
  } while (0)

namespace fuzz {

[[noreturn]] inline void die(const char* what) {
  std::fprintf(stderr, "fuzz harness setup failed: %s: %s\n", what, std::strerror(errno));
  std::abort();
}

// An in-memory file whose contents are replaced by set(); path() opens it by name.
class MemFile {
 public:
  explicit MemFile(const char* name) {
    fd_ = ::memfd_create(name, MFD_CLOEXEC);
    if (fd_ < 0) die("memfd_create");
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  ~MemFile() { ::close(fd_); }
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;

  void set(const void* data, size_t size) {
    if (::ftruncate(fd_, 0) != 0) die("ftruncate");
    const auto* p = static_cast<const char*>(data);
    size_t done = 0;
    while (done < size) {
      const ssize_t n = ::pwrite(fd_, p + done, size - done, static_cast<off_t>(done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) die("pwrite");
      done += static_cast<size_t>(n);
    }
  }
  void set(std::string_view s) { set(s.data(), s.size()); }
  const std::string& path() const { return path_; }

 private:
  int fd_ = -1;
  std::string path_;
};

// tests/data (the fixed tokenizers some harnesses load), overridable with
// HYBRIDGEN_FUZZ_DATA_DIR when the binary runs away from the source tree.
inline std::string data_dir() {
  if (const char* d = std::getenv("HYBRIDGEN_FUZZ_DATA_DIR"); d && *d) return d;
  return HYBRIDGEN_FUZZ_DATA_DIR;
}

// HYBRIDGEN_FUZZ_SKIP_KNOWN=1 steers the harnesses around the library issues they have
// already found and that are reported (README.md, "Findings"), so that a long run goes on
// past them. By default every check is on and the saved reproducers crash.
inline bool skip_known() {
  static const bool s = [] {
    const char* v = std::getenv("HYBRIDGEN_FUZZ_SKIP_KNOWN");
    return v && *v && std::strcmp(v, "0") != 0;
  }();
  return s;
}

// Whether JSON text nests arrays/objects deeper than `limit` (brackets inside strings do not
// count). Known issue 5: the library recurses once per level on deep JSON in some paths.
inline bool json_deeper_than(const uint8_t* data, size_t size, int limit) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < size; ++i) {
    const char c = static_cast<char>(data[i]);
    if (in_string) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > limit) return true;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return false;
}

// GPT-2's byte -> printable code point table (the byte-level BPE alphabet), as UTF-8.
inline std::string byte_level_symbol(uint8_t b) {
  int n = 0;
  char32_t cp = 0;
  for (int x = 0; x < 256; ++x) {
    const bool printable = (x >= 33 && x <= 126) || (x >= 161 && x <= 172) || x >= 174;
    const char32_t c = printable ? static_cast<char32_t>(x) : static_cast<char32_t>(256 + n++);
    if (x == b) {
      cp = c;
      break;
    }
  }
  std::string out;
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else {  // every symbol is below U+0800
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return out;
}

}  // namespace fuzz

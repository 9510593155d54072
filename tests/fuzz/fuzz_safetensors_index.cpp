// Fuzzes SafetensorsModel::open_dir on a sharded checkpoint: the input is
// model.safetensors.index.json, in a scratch directory (under /dev/shm when it exists) that
// also holds fixed shards: two valid ones, one repeating a tensor name of the first, a
// malformed one, an empty one and a subdirectory with a .safetensors name. On success every
// name the index lists must resolve, and every tensor of the opened shards must be findable.
#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include "fuzz_common.h"
#include "hybridgen/error.h"
#include "model/safetensors.h"

namespace {

namespace fs = std::filesystem;
using namespace hybridgen;

// A valid safetensors file with the given header and data.
std::string safetensors_bytes(const std::string& header, size_t data_bytes) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  out += header;
  out.append(data_bytes, '\x01');
  return out;
}

void write_file(const fs::path& p, const std::string& bytes) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!f) fuzz::die(p.c_str());
}

std::string g_dir;

void remove_dir() {
  std::error_code ec;
  if (!g_dir.empty()) fs::remove_all(g_dir, ec);
}

const std::string& scratch_dir() {
  if (!g_dir.empty()) return g_dir;
  std::string base = "/tmp";
  if (const char* t = std::getenv("TMPDIR"); t && *t) base = t;
  struct stat st {};
  if (::stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) && ::access("/dev/shm", W_OK) == 0)
    base = "/dev/shm";
  std::string tmpl = base + "/hybridgen-fuzz-index-XXXXXX";
  if (!::mkdtemp(tmpl.data())) fuzz::die("mkdtemp");
  g_dir = tmpl;
  std::atexit(remove_dir);
  const fs::path d(g_dir);
  write_file(d / "model-00001-of-00002.safetensors",
             safetensors_bytes(R"({"model.embed.weight":{"dtype":"F32","shape":[2,2],)"
                               R"("data_offsets":[0,16]},"model.norm.weight":{"dtype":"BF16",)"
                               R"("shape":[2],"data_offsets":[16,20]}})",
                               20));
  write_file(d / "model-00002-of-00002.safetensors",
             safetensors_bytes(R"({"__metadata__":{"format":"pt"},"lm_head.weight":)"
                               R"({"dtype":"F16","shape":[2,2],"data_offsets":[0,8]}})",
                               8));
  // Repeats a tensor name of shard 1: opening both must fail.
  write_file(d / "dup.safetensors",
             safetensors_bytes(R"({"model.norm.weight":{"dtype":"F32","shape":[1],)"
                               R"("data_offsets":[0,4]}})",
                               4));
  write_file(d / "bad.safetensors", std::string("\xff\xff\xff\xff\xff\xff\xff\xff{}", 10));
  write_file(d / "empty.safetensors", std::string());
  fs::create_directory(d / "dir.safetensors");
  return g_dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const fs::path dir(scratch_dir());
  write_file(dir / "model.safetensors.index.json",
             std::string(reinterpret_cast<const char*>(data), size));
  try {
    auto m = SafetensorsModel::open_dir(dir.string());
    std::set<std::string> seen;
    for (const std::string& name : m->names()) {
      FUZZ_CHECK(seen.insert(name).second, "name '%s' listed twice", name.c_str());
      const TensorInfo* t = m->find(name);
      FUZZ_CHECK(t != nullptr && t->name == name, "names() lists '%s' but find() misses it",
                 name.c_str());
      const std::string file = m->file_of(name);
      FUZZ_CHECK(!file.empty() && fs::path(file).parent_path() == dir,
                 "file_of('%s') = '%s' is outside the model directory", name.c_str(), file.c_str());
    }
    FUZZ_CHECK(m->find("no such tensor") == nullptr, "find() invents a tensor");
  } catch (const hybridgen::Error&) {
  }
  return 0;
}

#include "model/safetensors.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "util/check.h"
#include "util/json.h"

namespace hybridgen {

namespace {

using nlohmann::json;

// The reference implementation (huggingface/safetensors) caps the header at 100 MB.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr size_t kMaxDims = 8;

struct DtypeSpec {
  DType dtype;
  uint64_t size;
};

bool supported_dtype(const std::string& name, DtypeSpec* out) {
  if (name == "F32")
    *out = {DType::kF32, 4};
  else if (name == "F16")
    *out = {DType::kF16, 2};
  else if (name == "BF16")
    *out = {DType::kBF16, 2};
  else if (name == "I32")
    *out = {DType::kI32, 4};
  else if (name == "I64")
    *out = {DType::kI64, 8};
  else
    return false;
  return true;
}

// Parses JSON and rejects an object with a repeated key at any depth (nlohmann keeps just
// one of the duplicates silently) and documents nested too deep (util/json.h).
json parse_json_rejecting_duplicates(const char* begin, const char* end, const std::string& what) {
  return parse_json(std::string_view(begin, static_cast<size_t>(end - begin)), what, true);
}

std::string read_small_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) fail("cannot read " + path);
  return ss.str();
}

}  // namespace

std::unique_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  auto st = std::unique_ptr<SafetensorsFile>(new SafetensorsFile());
  st->file_ = MappedFile::open(path);
  const uint8_t* base = st->file_->data();
  const uint64_t fsize = st->file_->size();
  const std::string where = "safetensors file " + path;

  if (fsize == 0) fail(where + " is empty");
  if (fsize < 8) {
    fail(where + " is too short (" + std::to_string(fsize) +
         " bytes) to hold the 8-byte header length");
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | base[i];  // little-endian u64
  if (n > kMaxHeaderBytes) {
    fail(where + ": header length " + std::to_string(n) + " exceeds the limit of " +
         std::to_string(kMaxHeaderBytes) + " bytes");
  }
  if (n > fsize - 8) {
    fail(where + ": header length " + std::to_string(n) + " runs past the end of the file (" +
         std::to_string(fsize) + " bytes)");
  }
  if (n == 0) fail(where + ": header length is 0 (the header must be a JSON object)");

  const char* hbegin = reinterpret_cast<const char*>(base + 8);
  const json header = parse_json_rejecting_duplicates(hbegin, hbegin + n, where + ": header");
  if (!header.is_object()) fail(where + ": header is not a JSON object");

  const uint64_t data_start = 8 + n;
  const uint64_t data_size = fsize - data_start;
  const uint8_t* data = base + data_start;

  struct Entry {
    TensorInfo info;
    uint64_t begin, end;
  };
  std::vector<Entry> entries;
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      if (value.is_null()) continue;
      if (!value.is_object()) fail(where + ": \"__metadata__\" is not a JSON object");
      for (const auto& [k, v] : value.items()) {
        if (!v.is_string()) {
          fail(where + ": \"__metadata__\" entry '" + k + "' is not a string");
        }
        st->metadata_[k] = v.get<std::string>();
      }
      continue;
    }
    const std::string tw = where + ": tensor '" + name + "'";
    if (!value.is_object()) fail(tw + " is not a JSON object");

    auto dt = value.find("dtype");
    if (dt == value.end() || !dt->is_string()) fail(tw + ": missing or non-string \"dtype\"");
    const std::string dtype_str = dt->get<std::string>();
    DtypeSpec spec{};
    if (!supported_dtype(dtype_str, &spec)) {
      fail("unsupported dtype " + dtype_str + " of tensor " + name + " in " + path +
           " (supported: F32, F16, BF16, I32, I64)");
    }

    auto sh = value.find("shape");
    if (sh == value.end() || !sh->is_array()) fail(tw + ": missing or non-array \"shape\"");
    if (sh->size() > kMaxDims) {
      fail(tw + ": \"shape\" has " + std::to_string(sh->size()) + " dimensions (at most " +
           std::to_string(kMaxDims) + " supported)");
    }
    std::vector<int64_t> shape;
    uint64_t numel = 1;
    for (const auto& d : *sh) {
      // nlohmann stores every non-negative integer literal as number_unsigned.
      if (!d.is_number_unsigned()) {
        fail(tw + ": \"shape\" entry " + d.dump() + " is not a non-negative integer");
      }
      const uint64_t v = d.get<uint64_t>();
      if (v > static_cast<uint64_t>(INT64_MAX)) {
        fail(tw + ": \"shape\" entry " + d.dump() + " is too large");
      }
      auto m = checked_mul(numel, v);
      if (!m || *m > static_cast<uint64_t>(INT64_MAX)) {
        fail(tw + ": \"shape\" " + sh->dump() + " has too many elements (overflow)");
      }
      numel = *m;
      shape.push_back(static_cast<int64_t>(v));
    }
    auto nbytes = checked_mul(numel, spec.size);
    if (!nbytes) fail(tw + ": byte size of \"shape\" " + sh->dump() + " overflows");

    auto off = value.find("data_offsets");
    if (off == value.end() || !off->is_array() || off->size() != 2 ||
        !(*off)[0].is_number_unsigned() || !(*off)[1].is_number_unsigned()) {
      fail(tw + ": \"data_offsets\" must be an array of two non-negative integers");
    }
    const uint64_t begin = (*off)[0].get<uint64_t>();
    const uint64_t end = (*off)[1].get<uint64_t>();
    if (begin > end) {
      fail(tw + ": \"data_offsets\" [" + std::to_string(begin) + ", " + std::to_string(end) +
           "] has begin after end");
    }
    if (end > data_size) {
      fail(tw + ": \"data_offsets\" end " + std::to_string(end) +
           " is past the end of the data section (" + std::to_string(data_size) + " bytes)");
    }
    if (end - begin != *nbytes) {
      fail(tw + ": \"data_offsets\" span " + std::to_string(end - begin) + " bytes but dtype " +
           dtype_str + " x shape " + sh->dump() + " needs " + std::to_string(*nbytes) + " bytes");
    }
    Entry e;
    e.info.name = name;
    e.info.dtype = spec.dtype;
    e.info.shape = std::move(shape);
    e.info.data = data + begin;
    e.info.nbytes = *nbytes;
    e.begin = begin;
    e.end = end;
    entries.push_back(std::move(e));
  }

  // The data section must be covered exactly, in order, without overlaps or holes (as the
  // reference implementation requires).
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t pos = 0;
  const std::string* prev = nullptr;
  for (const Entry& e : entries) {
    if (e.begin < pos) {
      fail(where + ": tensor '" + e.info.name + "' (bytes " + std::to_string(e.begin) + ".." +
           std::to_string(e.end) + ") overlaps tensor '" + *prev + "' (ends at " +
           std::to_string(pos) + ")");
    }
    if (e.begin > pos) {
      fail(where + ": hole of " + std::to_string(e.begin - pos) + " bytes before tensor '" +
           e.info.name + "' (bytes " + std::to_string(pos) + ".." + std::to_string(e.begin) +
           " belong to no tensor" + (prev ? ", after tensor '" + *prev + "'" : std::string()) +
           ")");
    }
    pos = e.end;
    prev = &e.info.name;
  }
  if (pos != data_size) {
    fail(where + ": " + std::to_string(data_size - pos) +
         " bytes at the end of the data section belong to no tensor" +
         (prev ? " (after tensor '" + *prev + "')" : std::string()));
  }

  st->tensors_.reserve(entries.size());
  for (Entry& e : entries) {
    st->index_.emplace(e.info.name, st->tensors_.size());
    st->tensors_.push_back(std::move(e.info));
  }
  return st;
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

std::unique_ptr<SafetensorsModel> SafetensorsModel::open_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    fail("model directory " + dir + " does not exist or is not a directory");

  auto model = std::unique_ptr<SafetensorsModel>(new SafetensorsModel());
  const fs::path d(dir);

  auto add_file = [&](std::unique_ptr<SafetensorsFile> f) {
    const size_t fi = model->files_.size();
    for (const TensorInfo& t : f->tensors()) {
      auto [it, inserted] = model->index_.emplace(t.name, std::make_pair(fi, &t));
      if (!inserted) {
        fail("tensor '" + t.name + "' is in both " + model->files_[it->second.first]->path() +
             " and " + f->path());
      }
    }
    model->files_.push_back(std::move(f));
  };

  const fs::path single = d / "model.safetensors";
  const fs::path index = d / "model.safetensors.index.json";
  if (fs::is_regular_file(single, ec)) {
    add_file(SafetensorsFile::open(single.string()));
    return model;
  }
  if (fs::exists(index, ec)) {
    const std::string ipath = index.string();
    const std::string text = read_small_file(ipath);
    const json j = parse_json_rejecting_duplicates(text.data(), text.data() + text.size(),
                                                   "safetensors index " + ipath);
    if (!j.is_object()) fail("safetensors index " + ipath + " is not a JSON object");
    auto wm = j.find("weight_map");
    if (wm == j.end() || !wm->is_object()) {
      fail("safetensors index " + ipath + " has no \"weight_map\" object");
    }
    std::map<std::string, size_t> shard_file;  // shard name -> index in files_
    std::vector<std::pair<std::string, std::string>> wanted;
    for (const auto& [name, shard_v] : wm->items()) {
      if (!shard_v.is_string()) {
        fail("safetensors index " + ipath + ": \"weight_map\" entry '" + name +
             "' is not a string");
      }
      const std::string shard = shard_v.get<std::string>();
      if (shard.empty() || shard.find('/') != std::string::npos ||
          shard.find('\\') != std::string::npos || shard.find("..") != std::string::npos ||
          shard == "." || shard.find('\0') != std::string::npos) {
        fail("safetensors index " + ipath + ": shard '" + shard + "' of tensor '" + name +
             "' is not a plain file name inside " + dir);
      }
      wanted.emplace_back(name, shard);
      if (!shard_file.count(shard)) {
        const fs::path sp = d / shard;
        if (!fs::is_regular_file(sp, ec)) {
          fail("safetensors index " + ipath + ": shard " + sp.string() + " (of tensor '" + name +
               "') does not exist");
        }
        shard_file[shard] = model->files_.size();
        add_file(SafetensorsFile::open(sp.string()));
      }
    }
    for (const auto& [name, shard] : wanted) {
      const auto& f = model->files_[shard_file[shard]];
      if (f->find(name) == nullptr) {
        fail("safetensors index " + ipath + " maps tensor '" + name + "' to " + f->path() +
             ", which has no such tensor");
      }
    }
    return model;
  }

  std::vector<std::string> found;
  for (const auto& entry : fs::directory_iterator(d, ec)) {
    if (entry.path().extension() == ".safetensors" && entry.is_regular_file(ec)) {
      found.push_back(entry.path().string());
    }
  }
  if (ec) fail("cannot list model directory " + dir + ": " + ec.message());
  if (found.empty()) {
    fail("model directory " + dir +
         " has no model.safetensors, model.safetensors.index.json or other *.safetensors file");
  }
  if (found.size() > 1) {
    std::sort(found.begin(), found.end());
    std::string list;
    for (const auto& f : found) list += (list.empty() ? "" : ", ") + f;
    fail("model directory " + dir + " has several .safetensors files (" + list +
         ") but no model.safetensors.index.json saying which tensor is where");
  }
  add_file(SafetensorsFile::open(found[0]));
  return model;
}

const TensorInfo* SafetensorsModel::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second.second;
}

std::vector<std::string> SafetensorsModel::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (const auto& [name, _] : index_) out.push_back(name);
  return out;
}

std::string SafetensorsModel::file_of(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? std::string() : files_[it->second.first]->path();
}

}  // namespace hybridgen

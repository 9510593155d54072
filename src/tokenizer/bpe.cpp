#include "tokenizer/bpe.h"

#include <queue>

#include "tokenizer/unicode.h"

namespace hybridgen::tok {

namespace {

struct ByteTables {
  std::array<std::string, 256> symbol;
  std::unordered_map<char32_t, uint8_t> byte_of;  // symbol code point -> byte
  ByteTables() {
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
      const char32_t cp = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++);
      append_utf8(symbol[b], cp);
      byte_of[cp] = static_cast<uint8_t>(b);
    }
  }
};

const ByteTables& tables() {
  static const ByteTables t;
  return t;
}

constexpr size_t kMaxCachedWordBytes = 64;
constexpr size_t kMaxCacheEntries = 1 << 16;

}  // namespace

const std::string& byte_symbol(uint8_t b) { return tables().symbol[b]; }

std::string to_byte_level(std::string_view raw) {
  const auto& t = tables();
  std::string out;
  out.reserve(raw.size() * 2);
  for (unsigned char c : raw) out += t.symbol[c];
  return out;
}

bool from_byte_level(std::string_view s, std::string& out) {
  if (!is_valid_utf8(s)) return false;
  const auto& t = tables();
  std::string r;
  r.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    auto it = t.byte_of.find(next_code_point(s, i));
    if (it == t.byte_of.end()) return false;
    r.push_back(static_cast<char>(it->second));
  }
  out = std::move(r);
  return true;
}

void BpeModel::index_bytes() {
  for (int b = 0; b < 256; ++b) {
    auto it = vocab.find(byte_symbol(static_cast<uint8_t>(b)));
    byte_ids[b] = it == vocab.end() ? -1 : it->second;
  }
}

void BpeModel::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges) {
    auto it = vocab.find(to_byte_level(word));
    if (it != vocab.end()) {
      out.push_back(it->second);
      return;
    }
  }
  if (word.size() <= kMaxCachedWordBytes) {
    std::string key(word);
    {
      std::lock_guard<std::mutex> lock(cache_mu_);
      auto it = cache_.find(key);
      if (it != cache_.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<int32_t> ids;
    merge_word(word, ids);
    out.insert(out.end(), ids.begin(), ids.end());
    std::lock_guard<std::mutex> lock(cache_mu_);
    if (cache_.size() >= kMaxCacheEntries) cache_.clear();
    cache_.emplace(std::move(key), std::move(ids));
    return;
  }
  merge_word(word, out);
}

void BpeModel::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  struct Symbol {
    int32_t id;
    int prev, next;
    bool alive;
  };
  std::vector<Symbol> sym;
  sym.reserve(word.size());
  bool last_unk = false;
  for (unsigned char c : word) {
    const int32_t id = byte_ids[c];
    if (id >= 0) {
      sym.push_back({id, 0, 0, true});
      last_unk = false;
    } else if (unk_id >= 0) {
      if (!(fuse_unk && last_unk)) sym.push_back({unk_id, 0, 0, true});
      last_unk = true;
    }
  }
  const int n = static_cast<int>(sym.size());
  for (int i = 0; i < n; ++i) {
    sym[i].prev = i - 1;
    sym[i].next = i + 1 < n ? i + 1 : -1;
  }

  struct Candidate {
    int32_t rank;
    int pos;
    int32_t new_id;
  };
  // Lowest rank first; on equal ranks the leftmost position (HF's Merge ordering).
  auto worse = [](const Candidate& a, const Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(worse)> queue(worse);
  auto push_pair = [&](int pos) {
    if (pos < 0) return;
    const int next = sym[pos].next;
    if (next < 0) return;
    auto it = merges.find(key(sym[pos].id, sym[next].id));
    if (it != merges.end()) queue.push({it->second.rank, pos, it->second.new_id});
  };
  for (int i = 0; i + 1 < n; ++i) push_pair(i);

  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = sym[top.pos];
    if (!left.alive || left.next < 0) continue;
    const int right_pos = left.next;
    // An expired entry: the pair at this position changed since it was queued.
    auto it = merges.find(key(left.id, sym[right_pos].id));
    if (it == merges.end() || it->second.new_id != top.new_id) continue;
    left.id = top.new_id;
    sym[right_pos].alive = false;
    left.next = sym[right_pos].next;
    if (left.next >= 0) sym[left.next].prev = top.pos;
    push_pair(left.prev);
    push_pair(top.pos);
  }
  for (const auto& s : sym)
    if (s.alive) out.push_back(s.id);
}

}  // namespace hybridgen::tok

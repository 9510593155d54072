#include "util/json.h"

#include <set>
#include <vector>

#include "util/check.h"

namespace hybridgen {

nlohmann::json parse_json(std::string_view text, const std::string& what,
                          bool reject_duplicate_keys) {
  using json = nlohmann::json;
  std::vector<std::set<std::string>> seen;  // one key set per open object
  std::string duplicate;
  bool too_deep = false;
  json::parser_callback_t cb = [&](int depth, json::parse_event_t event, json& parsed) {
    if (depth > kMaxJsonDepth) {
      too_deep = true;
      return false;  // drop the value: parsing continues iteratively, nothing deep is kept
    }
    if (!reject_duplicate_keys) return true;
    switch (event) {
      case json::parse_event_t::object_start:
        seen.emplace_back();
        break;
      case json::parse_event_t::object_end:
        if (!seen.empty()) seen.pop_back();
        break;
      case json::parse_event_t::key:
        if (!seen.empty() && parsed.is_string()) {
          const auto& k = parsed.get_ref<const std::string&>();
          if (!seen.back().insert(k).second && duplicate.empty()) duplicate = k;
        }
        break;
      default:
        break;
    }
    return true;
  };
  json j;
  try {
    j = json::parse(text.begin(), text.end(), cb, /*allow_exceptions=*/true,
                    /*ignore_comments=*/false);
  } catch (const json::exception& e) {
    fail(what + ": not valid JSON: " + e.what());
  }
  HG_CHECK(!too_deep, what + ": JSON nested deeper than " + std::to_string(kMaxJsonDepth) +
                          " levels is refused");
  HG_CHECK(duplicate.empty(), what + " has the key '" + duplicate + "' more than once");
  return j;
}

}  // namespace hybridgen

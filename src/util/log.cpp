#include "util/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <cstdlib>

#include "util/check.h"

namespace hybridgen {

spdlog::logger& log() {
  static std::shared_ptr<spdlog::logger> logger = [] {
    auto l = std::make_shared<spdlog::logger>(
        "hybridgen", std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
    l->set_pattern("[%H:%M:%S.%e] [%^%l%$] %v");
    l->set_level(spdlog::level::warn);
    if (const char* env = std::getenv("HYBRIDGEN_LOG_LEVEL")) {
      auto level = spdlog::level::from_str(env);
      // from_str answers "off" for names it does not know; only honour real ones.
      if (level != spdlog::level::off || std::string(env) == "off") l->set_level(level);
    }
    return l;
  }();
  return *logger;
}

void set_log_level(const std::string& name) {
  auto level = spdlog::level::from_str(name);
  HG_CHECK(level != spdlog::level::off || name == "off",
           "unknown log level '" + name + "' (trace, debug, info, warn, error, off)");
  log().set_level(level);
}

}  // namespace hybridgen

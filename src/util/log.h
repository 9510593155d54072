// The library's logger: spdlog, to stderr (a library never writes to stdout). Its level comes
// from HYBRIDGEN_LOG_LEVEL (trace, debug, info, warn, error, off; default warn) or
// hybridgen::set_log_level().
#pragma once
#include <spdlog/spdlog.h>

#include <memory>
#include <string>

namespace hybridgen {

spdlog::logger& log();
void set_log_level(const std::string& level);  // throws hybridgen::Error on an unknown name

}  // namespace hybridgen

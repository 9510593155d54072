// Output like a benchmark: a markdown table on stdout, the same rows as JSON or CSV.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>

#include "eval.h"

namespace hgeval {

namespace {

std::string cell(const Json& row, const Column& c) {
  if (!row.contains(c.key) || row[c.key].is_null()) return "-";
  const Json& v = row[c.key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_boolean()) return v.get<bool>() ? "yes" : "no";
  if (v.is_number_float() || (!c.format.empty() && v.is_number())) {
    char buf[64];
    std::snprintf(buf, sizeof buf, c.format.empty() ? "%.4g" : c.format.c_str(), v.get<double>());
    return buf;
  }
  return v.dump();
}

// RFC 4180: quote a field holding a comma, a quote or a line break.
std::string csv_field(const Json& v) {
  std::string s;
  if (v.is_null()) return "";
  if (v.is_string()) {
    s = v.get<std::string>();
  } else if (v.is_number_float()) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.9g", v.get<double>());
    s = buf;
  } else {
    s = v.dump();
  }
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

}  // namespace

std::string markdown(const std::vector<Column>& columns, const std::vector<Json>& rows) {
  // Appended piece by piece: `" " + s + " |"` trips GCC 12's -Wrestrict false positive.
  std::string out = "|";
  for (const Column& c : columns) {
    out += ' ';
    out += c.header;
    out += " |";
  }
  out += "\n|";
  for (size_t i = 0; i < columns.size(); ++i) out += " --- |";
  out += "\n";
  for (const Json& r : rows) {
    out += "|";
    for (const Column& c : columns) {
      out += ' ';
      out += cell(r, c);
      out += " |";
    }
    out += "\n";
  }
  return out;
}

std::string csv(const std::vector<Json>& rows) {
  std::vector<std::string> keys;
  for (const Json& r : rows)
    for (auto it = r.begin(); it != r.end(); ++it)
      if (!it.value().is_structured() &&
          std::find(keys.begin(), keys.end(), it.key()) == keys.end())
        keys.push_back(it.key());
  std::string out;
  for (size_t i = 0; i < keys.size(); ++i) out += (i ? "," : "") + keys[i];
  out += "\n";
  for (const Json& r : rows) {
    for (size_t i = 0; i < keys.size(); ++i) {
      if (i) out += ",";
      if (r.contains(keys[i])) out += csv_field(r[keys[i]]);
    }
    out += "\n";
  }
  return out;
}

void write_output(const std::string& path, const std::string& text, const std::string& flag) {
  if (path == "-") {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
    return;
  }
  std::ofstream out(path, std::ios::binary);
  out << text;
  out.close();
  if (!out) throw hybridgen::Error(path + ": cannot write the file (" + flag + ")");
}

}  // namespace hgeval

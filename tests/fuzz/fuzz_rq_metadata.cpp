// libFuzzer harness over the JSON parser and the metadata schema alone (docs/reliability.md). Cheaper
// per input than fuzz_rq_loader, so it goes much deeper into json.cpp and rq_spec.cpp.
//
// Input: the JSON texts of the metadata fields model_config, quant_config and (optionally) sampling and
// source, separated by NUL bytes, so that mutations reach the inner JSON without escaping (in a .rq
// file these texts sit inside JSON strings). The whole input also goes through json::parse as is.
//
// Contract: json::parse succeeds or throws json::ParseError; parse_rq_spec succeeds or throws
// robuq::FormatError. Anything else escapes and aborts (a finding), as do crashes and sanitizer reports.
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "errors.h"
#include "json.h"
#include "rq_spec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const char* text = reinterpret_cast<const char*>(data);
  try {
    (void)robuq::json::parse(text, size);
  } catch (const robuq::json::ParseError&) {
  }

  std::vector<std::string> parts(1);
  for (size_t i = 0; i < size; ++i) {
    if (text[i] == '\0')
      parts.emplace_back();
    else
      parts.back() += text[i];
  }
  static const char* const kFields[] = {"model_config", "quant_config", "sampling", "source"};
  std::map<std::string, std::string> meta = {{"format", "robuq"}, {"format_version", "1"}};
  for (size_t i = 0; i < parts.size() && i < 4; ++i) meta[kFields[i]] = parts[i];
  try {
    const robuq::RqSpec spec = robuq::parse_rq_spec(meta);
    (void)robuq::dit_linears(spec.model);
  } catch (const robuq::FormatError&) {
  }
  return 0;
}

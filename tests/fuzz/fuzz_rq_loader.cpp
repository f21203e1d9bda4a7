// libFuzzer harness over the whole .rq load path (docs/reliability.md): container and header JSON
// (RqFile), metadata schema (parse_rq_spec), model-level tensor checks (check_rq_tensors) and the DiT
// binding with its weight-code checks, then one forward pass over what was bound for every model within the
// fuzzing budget (the engine's own budget check, budget.h, with limits that keep the fuzzer fast).
//
// The contract under test: whatever the bytes, loading either succeeds or throws robuq::FormatError.
// Any other exception escapes and aborts (a finding), as do crashes, hangs and sanitizer reports.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "budget.h"
#include "dit.h"
#include "errors.h"
#include "rq_file.h"
#include "rq_spec.h"

namespace {

// The engine's budget check (the one robuq::Engine applies when it loads a file), with limits that keep the
// fuzzer fast: 16 MiB of activations and 2e7 multiply-adds per forward. Models beyond it are refused with
// FormatError, as an engine with that budget would refuse them.
robuq::Budget fuzz_budget() {
  robuq::Budget b;
  b.max_memory = 16.0 * (1 << 20);
  b.max_macs = 2e7;
  b.max_tokens = 1024;
  return b;
}

void run_forward(robuq::DiT& dit, const robuq::ModelConfig& c) {
  const int64_t S = c.input_size;
  std::vector<float> x(static_cast<size_t>(c.in_channels * S * S));
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(static_cast<int>(i % 7) - 3) * 0.25f;
  std::vector<float> out(static_cast<size_t>(c.out_channels() * S * S));
  const int64_t t = 500, y = c.label_rows() - 1;
  dit.forward(x.data(), 1, &t, &y, out.data(), 1);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    std::unique_ptr<robuq::RqFile> file = robuq::RqFile::from_memory(data, size, "fuzz-input");
    const robuq::RqSpec spec = robuq::parse_rq_spec(file->metadata());
    bool within = true;
    try {
      robuq::check_model_budget(spec.model, 1, fuzz_budget());
    } catch (const robuq::FormatError&) {
      within = false;  // still loaded (the tensor and code checks run), but not run
    }
    robuq::check_rq_tensors(*file, spec);
    robuq::DiT dit(*file, spec);
    if (within) run_forward(dit, spec.model);
  } catch (const robuq::FormatError&) {
    // the one expected outcome for a bad file
  }
  return 0;
}

// libFuzzer harness over the whole .rq load path (docs/reliability.md): container and header JSON
// (RqFile), metadata schema (parse_rq_spec), model-level tensor checks (check_rq_tensors) and the DiT
// binding with its weight-code checks, then, for small models, one forward pass over what was bound.
//
// The contract under test: whatever the bytes, loading either succeeds or throws robuq::FormatError.
// Any other exception escapes and aborts (a finding), as do crashes, hangs and sanitizer reports.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "dit.h"
#include "errors.h"
#include "rq_file.h"
#include "rq_spec.h"

namespace {

// The forward runs only when the whole model is small, so that the fuzzer keeps its speed: a few
// thousand activations per layer at most.
bool small_model(const robuq::ModelConfig& c) {
  return c.depth <= 2 && c.hidden_size <= 64 && c.num_patches() <= 16 && c.mlp_hidden() <= 256 &&
         c.patch_features() <= 64;
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
    robuq::check_rq_tensors(*file, spec);
    robuq::DiT dit(*file, spec);
    if (small_model(spec.model)) run_forward(dit, spec.model);
  } catch (const robuq::FormatError&) {
    // the one expected outcome for a bad file
  }
  return 0;
}

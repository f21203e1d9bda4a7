// What a .rq file describes (docs/rq-format.md, "Metadata" and "Tensors"): the DiT configuration, the
// per-layer quantization and the tensors both imply, validated against a fixed schema.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "robuq/hadamard.h"
#include "robuq/qlinear.h"
#include "rq_file.h"

namespace robuq {

constexpr const char* kRqFormat = "robuq";
constexpr const char* kRqFormatVersion = "1";

// robuq.models.DiTConfig plus `space`.
struct ModelConfig {
  int64_t depth = 0, hidden_size = 0, patch_size = 0, num_heads = 0;
  double mlp_ratio = 4.0;
  int64_t input_size = 0, in_channels = 0, num_classes = 0;
  bool learn_sigma = true;
  double class_dropout_prob = 0.0;
  std::string space;  // "pixel" | "latent"

  int64_t out_channels() const { return learn_sigma ? 2 * in_channels : in_channels; }
  int64_t head_dim() const { return hidden_size / num_heads; }
  int64_t grid_size() const { return input_size / patch_size; }
  int64_t num_patches() const { return grid_size() * grid_size(); }
  int64_t patch_features() const { return in_channels * patch_size * patch_size; }
  // int(hidden_size * mlp_ratio), as Python computes it (float64 product, truncated).
  int64_t mlp_hidden() const { return static_cast<int64_t>(static_cast<double>(hidden_size) * mlp_ratio); }
  // Rows of the label table: the classes plus the null class when class_dropout_prob > 0.
  int64_t label_rows() const { return num_classes + (class_dropout_prob > 0.0 ? 1 : 0); }
};

struct LinearShape {
  std::string name;  // state-dict module name, e.g. "blocks.3.mlp.fc1"
  int64_t in = 0, out = 0;
};

// Every linear of the DiT in forward order: t_embedder.mlp.0, t_embedder.mlp.2; per block
// adaLN_modulation.1, attn.qkv, attn.proj, mlp.fc1, mlp.fc2; final_layer.adaLN_modulation.1,
// final_layer.linear. All have a bias.
std::vector<LinearShape> dit_linears(const ModelConfig& c);

// One quantized linear (quant_config.layers entry), validated.
struct LayerQuantSpec {
  std::string name;
  int64_t in = 0, out = 0;
  WeightFormat weight = WeightFormat::Ternary;
  int act_bits = 0;  // 1..8, or 0 for float activations (null in the file)
  std::string clip;  // "gauss" | "minmax"
  float clip_k = 0.0f;
  HadamardForm hadamard = HadamardForm::None;
  int64_t hadamard_block = 0;  // as written (Block: 0 means the largest power of two dividing in)
  int64_t hadamard_k = 0, hadamard_m = 0;
  int64_t rank = 0;
};

struct RqSpec {
  std::string format_version;
  ModelConfig model;
  int attention_bits = 0;  // 1..8, or 0: attention in float
  std::vector<LayerQuantSpec> layers;
  bool has_sampling = false;  // the optional "sampling" entry
  bool clip_denoised = false;
  std::string cfg_mode;
  std::string source;

  const LayerQuantSpec* layer(const std::string& name) const;
};

// Parses and validates the metadata: format == "robuq", format_version == "1", model_config (fields,
// types, ranges), quant_config (attention_bits, per-layer entries consistent with the model's shapes and
// with the Hadamard factorisation), and, when present, sampling and source. Throws FormatError naming
// the field.
RqSpec parse_rq_spec(const std::map<std::string, std::string>& metadata);

// Model-level check of the tensors: every tensor the spec requires is present with the exact dtype and
// shape, no other tensor exists (except the exporter's "__pad<i>" U8 alignment fillers), and every float
// tensor is finite. Throws FormatError naming the tensor.
// (Weight codes and sums are checked when the layers are built.)
void check_rq_tensors(const RqFile& file, const RqSpec& spec);

}  // namespace robuq

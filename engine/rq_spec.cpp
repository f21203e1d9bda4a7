// Schema validation of .rq metadata and the model-level tensor check (see rq_spec.h).
#include "rq_spec.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <set>
#include <stdexcept>

#include "errors.h"
#include "json.h"

namespace robuq {

std::vector<LinearShape> dit_linears(const ModelConfig& c) {
  const int64_t D = c.hidden_size;
  std::vector<LinearShape> v;
  v.push_back({"t_embedder.mlp.0", 256, D});
  v.push_back({"t_embedder.mlp.2", D, D});
  for (int64_t i = 0; i < c.depth; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    v.push_back({b + "adaLN_modulation.1", D, 6 * D});
    v.push_back({b + "attn.qkv", D, 3 * D});
    v.push_back({b + "attn.proj", D, D});
    v.push_back({b + "mlp.fc1", D, c.mlp_hidden()});
    v.push_back({b + "mlp.fc2", c.mlp_hidden(), D});
  }
  v.push_back({"final_layer.adaLN_modulation.1", D, 2 * D});
  v.push_back({"final_layer.linear", D, c.patch_size * c.patch_size * c.out_channels()});
  return v;
}

const LayerQuantSpec* RqSpec::layer(const std::string& name) const {
  for (const auto& l : layers)
    if (l.name == name) return &l;
  return nullptr;
}

namespace {

[[noreturn]] void fail(const std::string& where, const std::string& what) { throw FormatError(where + ": " + what); }

json::Value parse_json_field(const std::map<std::string, std::string>& meta, const std::string& key) {
  const auto it = meta.find(key);
  if (it == meta.end()) throw FormatError("metadata field '" + key + "' is missing");
  try {
    json::Limits lim;
    lim.max_depth = 8;
    return json::parse(it->second, lim);
  } catch (const json::ParseError& e) {
    throw FormatError("metadata field '" + key + "': " + e.what());
  }
}

// A JSON object read field by field, with errors named "<context>.<field>".
class Fields {
 public:
  Fields(const json::Value& v, std::string ctx) : v_(v), ctx_(std::move(ctx)) {
    if (v.type != json::Type::Object) fail(ctx_, std::string("expected a JSON object, got ") + json::type_name(v.type));
  }

  std::string where(const std::string& key) const { return ctx_ + "." + key; }
  bool has(const std::string& key) const { return v_.find(key).has_value(); }

  json::Value get(const std::string& key) {
    std::optional<json::Value> f = v_.find(key);
    if (!f) fail(where(key), "missing");
    known_.insert(key);
    return std::move(*f);
  }
  bool is_null(const std::string& key) { return get(key).is_null(); }

  int64_t integer(const std::string& key, int64_t lo, int64_t hi) {
    const json::Value f = get(key);
    if (f.type != json::Type::Number || !f.is_int)
      fail(where(key), std::string("expected an integer, got ") + describe(f));
    if (f.integer < lo || f.integer > hi)
      fail(where(key),
           std::to_string(f.integer) + " is out of range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return f.integer;
  }
  double number(const std::string& key) {
    const json::Value f = get(key);
    if (f.type != json::Type::Number) fail(where(key), std::string("expected a number, got ") + describe(f));
    if (!std::isfinite(f.number)) fail(where(key), "must be finite");
    return f.number;
  }
  bool boolean(const std::string& key) {
    const json::Value f = get(key);
    if (f.type != json::Type::Bool) fail(where(key), std::string("expected true or false, got ") + describe(f));
    return f.boolean;
  }
  std::string string(const std::string& key, std::initializer_list<const char*> allowed = {}) {
    const json::Value f = get(key);
    if (f.type != json::Type::String) fail(where(key), std::string("expected a string, got ") + describe(f));
    if (allowed.size() == 0) return f.string;
    std::string list;
    for (const char* a : allowed) {
      if (f.string == a) return f.string;
      list += std::string(list.empty() ? "" : ", ") + "\"" + a + "\"";
    }
    fail(where(key), "\"" + f.string + "\" is not one of " + list);
  }
  // Every field of the object must have been read (or be in `optional`).
  void no_unknown(std::initializer_list<const char*> optional = {}) const {
    for (const auto& kv : v_.items()) {
      if (known_.count(kv.first)) continue;
      bool ok = false;
      for (const char* o : optional) ok = ok || kv.first == o;
      if (!ok) fail(where(kv.first), "unknown field");
    }
  }

  static std::string describe(const json::Value& f) {
    if (f.type == json::Type::Number) return "number " + std::to_string(f.number);
    if (f.type == json::Type::String) return "string \"" + f.string + "\"";
    return json::type_name(f.type);
  }

 private:
  const json::Value& v_;
  std::string ctx_;
  std::set<std::string> known_;
};

ModelConfig parse_model_config(const json::Value& v) {
  Fields f(v, "model_config");
  ModelConfig c;
  c.depth = f.integer("depth", 1, 4096);
  c.hidden_size = f.integer("hidden_size", 1, 1 << 16);
  c.patch_size = f.integer("patch_size", 1, 1 << 10);
  c.num_heads = f.integer("num_heads", 1, c.hidden_size);
  c.mlp_ratio = f.number("mlp_ratio");
  c.input_size = f.integer("input_size", 1, 1 << 16);
  c.in_channels = f.integer("in_channels", 1, 1 << 12);
  c.num_classes = f.integer("num_classes", 1, int64_t(1) << 30);
  c.learn_sigma = f.boolean("learn_sigma");
  c.class_dropout_prob = f.number("class_dropout_prob");
  c.space = f.string("space", {"pixel", "latent"});
  f.no_unknown();
  if (c.hidden_size % c.num_heads != 0)
    fail("model_config.hidden_size",
         std::to_string(c.hidden_size) + " is not divisible by num_heads " + std::to_string(c.num_heads));
  if (c.hidden_size % 4 != 0)
    fail("model_config.hidden_size", std::to_string(c.hidden_size) + " is not divisible by 4 (2D sin-cos embedding)");
  if (c.input_size % c.patch_size != 0)
    fail("model_config.input_size",
         std::to_string(c.input_size) + " is not divisible by patch_size " + std::to_string(c.patch_size));
  if (c.num_patches() > (1 << 20))
    fail("model_config.input_size", "too many patches (" + std::to_string(c.num_patches()) + ")");
  if (!(c.mlp_ratio > 0.0) || c.mlp_ratio > 64.0)
    fail("model_config.mlp_ratio", std::to_string(c.mlp_ratio) + " is out of range (0, 64]");
  if (c.mlp_hidden() < 1) fail("model_config.mlp_ratio", "gives an MLP width below 1");
  if (!(c.class_dropout_prob >= 0.0 && c.class_dropout_prob <= 1.0))
    fail("model_config.class_dropout_prob", std::to_string(c.class_dropout_prob) + " is not in [0, 1]");
  return c;
}

LayerQuantSpec parse_layer(const std::string& name, const json::Value& v, const LinearShape& shape) {
  const std::string ctx = "quant_config.layers." + name;
  Fields f(v, ctx);
  LayerQuantSpec l;
  l.name = name;
  l.weight = parse_weight_format(f.string("weight", {"ternary", "int4", "int8"}));
  l.in = f.integer("in_features", 1, int64_t(1) << 40);
  l.out = f.integer("out_features", 1, int64_t(1) << 40);
  if (l.in != shape.in || l.out != shape.out)
    fail(ctx, "in_features x out_features = " + std::to_string(l.in) + " x " + std::to_string(l.out) +
                  " but the model's layer is " + std::to_string(shape.in) + " x " + std::to_string(shape.out));
  const bool float_acts = f.is_null("act_bits");
  l.act_bits = float_acts ? 0 : static_cast<int>(f.integer("act_bits", 1, 8));  // null, not 0, for float
  l.clip = f.string("clip", {"gauss", "minmax"});
  const json::Value ck = f.get("clip_k");
  if (l.act_bits == 0 && ck.is_null()) {
    l.clip_k = 0.0f;
  } else {
    const double k = f.number("clip_k");
    l.clip_k = static_cast<float>(k);
    if (!std::isfinite(l.clip_k)) fail(f.where("clip_k"), "does not fit float32");
    if (l.act_bits > 0) {
      if (l.clip == "gauss" && !(l.clip_k > 0.0f))
        fail(f.where("clip_k"), "gauss clipping needs clip_k > 0, got " + std::to_string(k));
      if (l.clip == "minmax" && l.clip_k != 0.0f)
        fail(f.where("clip_k"), "minmax clipping needs clip_k == 0, got " + std::to_string(k));
    }
  }
  l.hadamard = parse_hadamard_form(f.string("hadamard", {"full", "block", "none"}));
  l.hadamard_block = f.integer("hadamard_block", 0, l.in);
  l.hadamard_k = f.integer("hadamard_k", 0, l.in);
  l.hadamard_m = f.integer("hadamard_m", 0, l.in);
  l.rank = f.integer("rank", 0, std::min(l.in, l.out));
  f.no_unknown();

  switch (l.hadamard) {
    case HadamardForm::Full: {
      HadamardPlan p;
      try {
        p = make_hadamard_plan(l.in, HadamardForm::Full);
      } catch (const std::invalid_argument& e) {
        fail(f.where("hadamard"),
             std::string("\"full\" is impossible for in_features ") + std::to_string(l.in) + ": " + e.what());
      }
      if (l.hadamard_k != p.K || l.hadamard_m != p.M)
        fail(f.where("hadamard_k"), "hadamard_k x hadamard_m = " + std::to_string(l.hadamard_k) + " x " +
                                        std::to_string(l.hadamard_m) + " but in_features " + std::to_string(l.in) +
                                        " factorises as " + std::to_string(p.K) + " x " + std::to_string(p.M));
      if (l.hadamard_block != 0) fail(f.where("hadamard_block"), "must be 0 unless hadamard is \"block\"");
      break;
    }
    case HadamardForm::Block:
      // 0: the largest power of two dividing in_features (what make_hadamard_plan resolves it to).
      try {
        make_hadamard_plan(l.in, HadamardForm::Block, l.hadamard_block);
      } catch (const std::invalid_argument& e) {
        fail(f.where("hadamard_block"), std::to_string(l.hadamard_block) +
                                            " is not a power of two dividing in_features " + std::to_string(l.in) +
                                            " (" + e.what() + ")");
      }
      if (l.hadamard_k != 0 || l.hadamard_m != 0)
        fail(f.where("hadamard_k"), "hadamard_k and hadamard_m must be 0 unless hadamard is \"full\"");
      break;
    case HadamardForm::None:
      if (l.hadamard_block != 0) fail(f.where("hadamard_block"), "must be 0 unless hadamard is \"block\"");
      if (l.hadamard_k != 0 || l.hadamard_m != 0)
        fail(f.where("hadamard_k"), "hadamard_k and hadamard_m must be 0 unless hadamard is \"full\"");
      break;
  }
  // int32 accumulation: 255 * |code| * in must fit.
  if (l.in > INT32_MAX / (255 * static_cast<int64_t>(weight_code_max(l.weight))))
    fail(ctx, "in_features is too large for int32 accumulation");
  return l;
}

}  // namespace

RqSpec parse_rq_spec(const std::map<std::string, std::string>& meta) {
  RqSpec s;
  const auto fmt = meta.find("format");
  if (fmt == meta.end()) throw FormatError("metadata field 'format' is missing (not a .rq file?)");
  if (fmt->second != kRqFormat)
    throw FormatError("metadata field 'format' is \"" + fmt->second + "\", expected \"" + kRqFormat + "\"");
  const auto ver = meta.find("format_version");
  if (ver == meta.end()) throw FormatError("metadata field 'format_version' is missing");
  if (ver->second != kRqFormatVersion)
    throw FormatError("metadata field 'format_version' is \"" + ver->second + "\"; this engine reads version \"" +
                      kRqFormatVersion + "\" only");
  s.format_version = ver->second;

  s.model = parse_model_config(parse_json_field(meta, "model_config"));
  const std::vector<LinearShape> linears = dit_linears(s.model);

  const json::Value qv = parse_json_field(meta, "quant_config");
  Fields q(qv, "quant_config");
  s.attention_bits = q.is_null("attention_bits") ? 0 : static_cast<int>(q.integer("attention_bits", 1, 8));
  if (q.has("format")) q.string("format", {"robuq-quant-config"});
  if (q.has("version")) q.integer("version", 1, 1);
  const json::Value layers = q.get("layers");
  q.no_unknown();
  if (layers.type != json::Type::Object)
    fail("quant_config.layers", std::string("expected a JSON object, got ") + json::type_name(layers.type));
  for (const auto& kv : layers.items()) {
    const LinearShape* shape = nullptr;
    for (const auto& l : linears)
      if (l.name == kv.first) shape = &l;
    if (shape == nullptr) fail("quant_config.layers." + kv.first, "the model has no linear layer of that name");
    s.layers.push_back(parse_layer(kv.first, kv.second, *shape));
  }

  if (meta.count("sampling")) {
    const json::Value sv = parse_json_field(meta, "sampling");
    Fields f(sv, "sampling");
    s.has_sampling = true;
    s.clip_denoised = f.boolean("clip_denoised");
    s.cfg_mode = f.string("cfg_mode", {"dit", "all"});
    f.no_unknown();
  }
  const auto src = meta.find("source");
  if (src != meta.end()) s.source = src->second;
  return s;
}

namespace {

struct Expected {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
};

std::vector<Expected> expected_tensors(const RqSpec& s) {
  const ModelConfig& c = s.model;
  const int64_t D = c.hidden_size, p = c.patch_size;
  std::vector<Expected> e;
  e.push_back({"x_embedder.proj.weight", DType::F32, {D, c.in_channels, p, p}});
  e.push_back({"x_embedder.proj.bias", DType::F32, {D}});
  e.push_back({"pos_embed", DType::F32, {1, c.num_patches(), D}});
  e.push_back({"y_embedder.embedding_table.weight", DType::F32, {c.label_rows(), D}});
  for (const LinearShape& l : dit_linears(c)) {
    const LayerQuantSpec* q = s.layer(l.name);
    if (q == nullptr) {
      e.push_back({l.name + ".weight", DType::F32, {l.out, l.in}});
    } else {
      e.push_back({l.name + ".weight_packed", DType::U8, {l.out, packed_cols(q->weight, l.in)}});
      e.push_back({l.name + ".weight_scale", DType::F32, {l.out}});
      e.push_back({l.name + ".weight_sum", DType::I32, {l.out}});
      if (q->rank > 0) {
        e.push_back({l.name + ".lowrank_down.weight", DType::F16, {q->rank, l.in}});
        e.push_back({l.name + ".lowrank_up.weight", DType::F16, {l.out, q->rank}});
      }
    }
    e.push_back({l.name + ".bias", DType::F32, {l.out}});
  }
  return e;
}

void check_finite(const TensorEntry& t) {
  const int64_t n = t.numel();
  if (t.dtype == DType::F32) {
    int64_t bad = -1;
    for (int64_t i = 0; i < n && bad < 0; i += 4096) {
      const int64_t e = std::min(n, i + 4096);
      bool any = false;
      for (int64_t j = i; j < e; ++j) {
        uint32_t u;
        std::memcpy(&u, t.data + 4 * j, 4);
        any |= (u & 0x7F800000u) == 0x7F800000u;
      }
      if (any)
        for (int64_t j = i; j < e && bad < 0; ++j) {
          uint32_t u;
          std::memcpy(&u, t.data + 4 * j, 4);
          if ((u & 0x7F800000u) == 0x7F800000u) bad = j;
        }
    }
    if (bad >= 0) {
      float v;
      std::memcpy(&v, t.data + 4 * bad, 4);
      throw FormatError("tensor '" + t.name + "' has a non-finite value (" + (std::isnan(v) ? "nan" : "inf") +
                        ") at flat index " + std::to_string(bad));
    }
  } else if (t.dtype == DType::F16) {
    for (int64_t j = 0; j < n; ++j) {
      const uint16_t h = static_cast<uint16_t>(t.data[2 * j] | (t.data[2 * j + 1] << 8));
      if ((h & 0x7C00u) == 0x7C00u)
        throw FormatError("tensor '" + t.name + "' has a non-finite value (" + ((h & 0x3FFu) ? "nan" : "inf") +
                          ") at flat index " + std::to_string(j));
    }
  }
}

}  // namespace

void check_rq_tensors(const RqFile& file, const RqSpec& spec) {
  const std::vector<Expected> expected = expected_tensors(spec);
  std::set<std::string> names;
  for (const Expected& e : expected) {
    names.insert(e.name);
    const TensorEntry* t = file.find(e.name);
    if (t == nullptr) throw FormatError("missing tensor '" + e.name + "'");
    if (t->dtype != e.dtype)
      throw FormatError("tensor '" + e.name + "' has dtype " + dtype_name(t->dtype) + ", expected " +
                        dtype_name(e.dtype));
    if (t->shape != e.shape)
      throw FormatError("tensor '" + e.name + "' has shape " + t->shape_str() + ", expected " + shape_str(e.shape));
  }
  for (const TensorEntry& t : file.tensors()) {
    if (names.count(t.name)) continue;
    // Alignment padding written by robuq-export: zero-filled 1-D U8 entries "__pad<i>" that keep every
    // tensor 64-byte aligned while covering the data section without holes (safetensors requires that).
    if (t.name.rfind("__pad", 0) == 0 && t.dtype == DType::U8 && t.shape.size() == 1) {
      // 0..63 zero bytes (the gap to the next multiple of 64): padding carries nothing.
      if (t.shape[0] > 63)
        throw FormatError("padding entry '" + t.name + "' has " + std::to_string(t.shape[0]) +
                          " bytes; alignment padding is at most 63");
      for (int64_t i = 0; i < t.shape[0]; ++i)
        if (t.data[i] != 0)
          throw FormatError("padding entry '" + t.name + "' has a non-zero byte at index " + std::to_string(i) +
                            "; padding must be zero-filled");
      continue;
    }
    throw FormatError("unexpected tensor '" + t.name + "' (not part of this model)");
  }
  for (const TensorEntry& t : file.tensors()) check_finite(t);
}

}  // namespace robuq

// robuq._C bindings of the engine (robuq::Engine), its exception types, and the kernel entry points the
// op-level tests use (QLinear on any tier, linear_f32, the F16 conversion, the JSON parser).
// numpy in, numpy out; the GIL is released during compute.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

#include "array_util.h"
#include "engine.h"
#include "engine_calls.h"
#include "half.h"
#include "json.h"
#include "robuq/profile.h"
#include "robuq/qlinear.h"

namespace py = pybind11;

namespace {

using robuq_bind::CArray;
using robuq_bind::input_array;
using robuq_bind::new_array;

// ------------------------------------------------------------------------------------- QLinear (tests)
// A QLinear over numpy arrays in the file layout; keeps the arrays alive for the kernel's lifetime.
class PyQLinear {
 public:
  PyQLinear(const std::string& weight, int64_t in_features, const py::object& packed, const py::object& scale,
            const py::object& wsum, const py::object& bias, const py::object& down, const py::object& up, int act_bits,
            float clip_k, const std::string& hadamard, int64_t hadamard_block) {
    robuq::QLinearDesc d;
    d.format = robuq::parse_weight_format(weight);
    d.in = in_features;
    packed_ = input_array<uint8_t>(packed, "packed", "uint8", 2, "[out, packed_cols]");
    d.out = packed_.shape(0);
    if (packed_.shape(1) != robuq::packed_cols(d.format, d.in))
      throw std::invalid_argument("packed has " + std::to_string(packed_.shape(1)) + " bytes per row; " + weight +
                                  " with in_features " + std::to_string(d.in) + " needs " +
                                  std::to_string(robuq::packed_cols(d.format, d.in)));
    scale_ = input_array<float>(scale, "scale", "float32", 1, "[out]");
    wsum_ = input_array<int32_t>(wsum, "wsum", "int32", 1, "[out]");
    if (scale_.shape(0) != d.out || wsum_.shape(0) != d.out)
      throw std::invalid_argument("scale and wsum must have out = " + std::to_string(d.out) + " entries");
    d.packed = packed_.data();
    d.scale = scale_.data();
    d.wsum = wsum_.data();
    if (!bias.is_none()) {
      bias_ = input_array<float>(bias, "bias", "float32", 1, "[out]");
      if (bias_.shape(0) != d.out) throw std::invalid_argument("bias must have out entries");
      d.bias = bias_.data();
    }
    if (down.is_none() != up.is_none()) throw std::invalid_argument("give both down and up, or neither");
    if (!down.is_none()) {
      down_ = input_array<float>(down, "down", "float32", 2, "[rank, in]");
      up_ = input_array<float>(up, "up", "float32", 2, "[out, rank]");
      d.rank = down_.shape(0);
      if (down_.shape(1) != d.in || up_.shape(0) != d.out || up_.shape(1) != d.rank)
        throw std::invalid_argument("down must be [rank, in] and up [out, rank]");
      d.down = down_.data();
      d.up = up_.data();
    }
    d.act_bits = act_bits;
    d.clip_k = clip_k;
    d.plan = robuq::make_hadamard_plan(d.in, robuq::parse_hadamard_form(hadamard), hadamard_block);
    q_ = std::make_unique<robuq::QLinear>(d);
  }

  py::array_t<float> forward(const py::object& x_obj, int threads) const {
    CArray<float> x = input_array<float>(x_obj, "x", "float32", 2, "[T, in]");
    const auto& d = q_->desc();
    if (x.shape(1) != d.in)
      throw std::invalid_argument("x has " + std::to_string(x.shape(1)) + " columns, the layer takes " +
                                  std::to_string(d.in));
    if (threads < 1) throw std::invalid_argument("threads must be >= 1");
    const int64_t T = x.shape(0);
    auto y = new_array<float>({static_cast<py::ssize_t>(T), static_cast<py::ssize_t>(d.out)});
    const float* src = x.data();
    float* dst = y.mutable_data();
    {
      py::gil_scoped_release release;
      q_->forward(src, T, dst, threads);
    }
    return y;
  }

  int64_t in() const { return q_->desc().in; }
  int64_t out() const { return q_->desc().out; }

 private:
  CArray<uint8_t> packed_;
  CArray<float> scale_, bias_, down_, up_;
  CArray<int32_t> wsum_;
  std::unique_ptr<robuq::QLinear> q_;
};

py::array_t<float> py_linear_f32(const py::object& x_obj, const py::object& w_obj, const py::object& b_obj,
                                 int threads) {
  CArray<float> x = input_array<float>(x_obj, "x", "float32", 2, "[T, in]");
  CArray<float> w = input_array<float>(w_obj, "w", "float32", 2, "[out, in]");
  CArray<float> b;
  const int64_t T = x.shape(0), in = x.shape(1), out = w.shape(0);
  if (w.shape(1) != in) throw std::invalid_argument("w must be [out, in] with in = x.shape[1]");
  if (!b_obj.is_none()) {
    b = input_array<float>(b_obj, "b", "float32", 1, "[out]");
    if (b.shape(0) != out) throw std::invalid_argument("b must have out entries");
  }
  if (threads < 1) throw std::invalid_argument("threads must be >= 1");
  auto y = new_array<float>({static_cast<py::ssize_t>(T), static_cast<py::ssize_t>(out)});
  const float* xs = x.data();
  const float* ws = w.data();
  const float* bs = b_obj.is_none() ? nullptr : b.data();
  float* ys = y.mutable_data();
  {
    py::gil_scoped_release release;
    robuq::linear_f32(xs, T, in, ws, bs, out, ys, threads);
  }
  return y;
}

py::array_t<float> py_f16_to_f32(const py::object& h_obj) {
  CArray<uint16_t> h = input_array<uint16_t>(h_obj, "h", "uint16 (raw float16 bits)", 1, "[n]");
  const int64_t n = h.shape(0);
  auto out = new_array<float>({static_cast<py::ssize_t>(n)});
  float* o = out.mutable_data();
  for (int64_t i = 0; i < n; ++i) o[i] = robuq::half_to_float(h.data()[i]);
  return out;
}

py::object json_to_py(const robuq::json::Value& v) {
  using robuq::json::Type;
  switch (v.type) {
    case Type::Null: return py::none();
    case Type::Bool: return py::bool_(v.boolean);
    case Type::Number:
      if (v.is_int) return py::int_(v.integer);
      return py::float_(v.number);
    case Type::String: return py::str(v.string);
    case Type::Array: {
      py::list l;
      for (const auto& e : v.elements()) l.append(json_to_py(e));
      return std::move(l);
    }
    case Type::Object: {
      py::dict d;
      for (const auto& kv : v.items()) d[py::str(kv.first)] = json_to_py(kv.second);
      return std::move(d);
    }
  }
  return py::none();
}

py::object py_parse_json(const py::bytes& text, int max_depth, size_t max_size) {
  const std::string s = text;
  robuq::json::Limits lim;
  lim.max_depth = max_depth;
  lim.max_size = max_size;
  try {
    return json_to_py(robuq::json::parse(s.data(), s.size(), lim));  // s outlives the views
  } catch (const robuq::json::ParseError& e) {
    throw std::invalid_argument(e.what());
  }
}

// ------------------------------------------------------------------------------------------------ Engine
py::dict model_config_dict(const robuq::ModelConfig& c) {
  py::dict d;
  d["depth"] = c.depth;
  d["hidden_size"] = c.hidden_size;
  d["patch_size"] = c.patch_size;
  d["num_heads"] = c.num_heads;
  d["mlp_ratio"] = c.mlp_ratio;
  d["input_size"] = c.input_size;
  d["in_channels"] = c.in_channels;
  d["num_classes"] = c.num_classes;
  d["learn_sigma"] = c.learn_sigma;
  d["class_dropout_prob"] = c.class_dropout_prob;
  d["space"] = c.space;
  return d;
}

// Engine.budget() / robuq._C.default_budget(): the limits as a dict.
py::dict budget_dict(const robuq::Budget& b) {
  py::dict d;
  d["max_memory"] = b.max_memory;
  d["max_macs"] = b.max_macs;
  d["max_tokens"] = b.max_tokens;
  d["max_threads"] = robuq::max_threads();
  return d;
}

py::dict info_dict(const robuq::EngineInfo& i) {
  py::dict d;
  d["path"] = i.path;
  d["format_version"] = i.format_version;
  d["source"] = i.source;
  d["file_size"] = i.file_size;
  d["mapped"] = i.mapped;
  d["threads"] = i.threads;
  d["model_config"] = model_config_dict(i.model);
  d["out_channels"] = i.model.out_channels();
  d["num_tokens"] = i.model.num_patches();
  d["label_rows"] = i.model.label_rows();
  d["attention_bits"] = i.attention_bits > 0 ? py::object(py::int_(i.attention_bits)) : py::object(py::none());
  py::dict layers;
  for (const auto& l : i.layers) {
    py::dict e;
    e["in_features"] = l.in;
    e["out_features"] = l.out;
    e["weight"] = robuq::weight_format_name(l.weight);
    e["act_bits"] = l.act_bits > 0 ? py::object(py::int_(l.act_bits)) : py::object(py::none());
    e["clip"] = l.clip;
    e["clip_k"] = l.clip_k;
    e["hadamard"] = robuq::hadamard_form_name(l.hadamard);
    e["hadamard_block"] = l.hadamard_block;
    e["hadamard_k"] = l.hadamard_k;
    e["hadamard_m"] = l.hadamard_m;
    e["rank"] = l.rank;
    layers[py::str(l.name)] = e;
  }
  d["layers"] = layers;
  py::dict linears;
  for (const auto& l : i.linears) {
    bool quantized = false;
    for (const auto& q : i.layers) quantized = quantized || q.name == l.name;
    py::dict e;
    e["in_features"] = l.in;
    e["out_features"] = l.out;
    e["quantized"] = quantized;
    linears[py::str(l.name)] = e;
  }
  d["linears"] = linears;
  if (i.has_sampling) {
    py::dict s;
    s["clip_denoised"] = i.clip_denoised;
    s["cfg_mode"] = i.cfg_mode;
    d["sampling"] = s;
  } else {
    d["sampling"] = py::none();
  }
  return d;
}

class PyEngine {
 public:
  PyEngine(const std::string& path, int threads, double max_memory) {
    py::gil_scoped_release release;
    e_ = std::make_unique<robuq::Engine>(path, threads, max_memory);
  }

  py::dict info() const { return info_dict(e_->info()); }

  py::array_t<float> forward(const py::object& x, const py::object& t, const py::object& y) {
    return robuq_bind::forward_call(*e_, x, t, y);
  }

  py::array_t<float> linear(const std::string& name, const py::object& x) const {
    return robuq_bind::linear_call(*e_, e_->linear_shape(name), name, x);
  }

  // One forward with robuq/profile.h switched on: seconds per part (and "total"). The counters are global, so
  // another forward running at the same time in this process would be counted too.
  py::dict profile(const py::object& x, const py::object& t, const py::object& y) {
    namespace pf = robuq::profile;
    pf::reset();
    pf::set_enabled(true);
    const double t0 = pf::now();
    try {
      robuq_bind::forward_call(*e_, x, t, y);
    } catch (...) {
      pf::set_enabled(false);
      throw;
    }
    const double wall = pf::now() - t0;
    pf::set_enabled(false);
    double parts[pf::kParts] = {};
    for (int p = 0; p < pf::kParts; ++p) parts[p] = pf::total(p);
    parts[pf::Linears] -= parts[pf::HadamardQuantize];  // the linears' wall time contains their prep
    double known = 0;
    for (int p = 0; p < pf::kParts; ++p)
      if (p != pf::Other) known += parts[p];
    parts[pf::Other] = wall - known;
    py::dict d;
    for (int p = 0; p < pf::kParts; ++p) d[pf::part_name(p)] = parts[p];
    d["total"] = wall;
    return d;
  }

  // robuq::Engine::sample with Python arguments (engine_calls.h: GIL, progress, Ctrl-C).
  py::array_t<float> sample(const py::object& classes, const std::string& steps, double cfg_scale, uint64_t seed,
                            const std::string& sampler, double eta, const std::optional<std::string>& cfg_mode,
                            std::optional<bool> clip_denoised, const py::object& progress,
                            const std::optional<std::vector<uint64_t>>& seeds, const py::object& noise) {
    return robuq_bind::sample_call(*e_, classes, steps, cfg_scale, seed, sampler, eta, cfg_mode, clip_denoised,
                                   progress, seeds, noise);
  }

  std::string default_cfg_mode() const { return e_->default_cfg_mode(); }
  bool default_clip_denoised() const { return e_->default_clip_denoised(); }

  int threads() const { return e_->threads(); }

  py::dict budget() const { return budget_dict(e_->budget()); }

  // The budget's estimate of a call of N samples per forward (budget.h).
  py::dict cost(int64_t N) const {
    const robuq::ForwardCost f = robuq::forward_cost(e_->info().model, N, e_->threads());
    py::dict d;
    d["activation_bytes"] = f.activation_bytes;
    d["macs_per_sample"] = f.macs_per_sample;
    return d;
  }

 private:
  std::unique_ptr<robuq::Engine> e_;
};

}  // namespace

void bind_engine(py::module_& m) {
  static py::exception<robuq::FormatError> format_error(m, "FormatError", PyExc_ValueError);
  static py::exception<robuq::NonFiniteError> nonfinite_error(m, "NonFiniteError", PyExc_ArithmeticError);
  nonfinite_error.doc() = "A computation produced NaN or infinity (a model whose values overflow float32).";
  format_error.doc() =
      "A .rq file is malformed or inconsistent with its metadata; the message names the tensor or field.";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const robuq::FormatError& e) {
      py::set_error(format_error, e.what());
    } catch (const robuq::NonFiniteError& e) {
      py::set_error(nonfinite_error, e.what());
    } catch (const robuq::IoError& e) {
      // OSError(errno, strerror, filename): Python picks the subclass (FileNotFoundError for ENOENT, ...).
      py::object err = py::reinterpret_steal<py::object>(PyObject_CallFunction(
          PyExc_OSError, "iss", e.error_number(), std::strerror(e.error_number()), e.path().c_str()));
      if (err) PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(err.ptr())), err.ptr());
    }
  });

  py::class_<PyEngine>(m, "Engine",
                       "Engine(path, threads=0, max_memory=0): the C++ DiT runtime over a .rq file (use\n"
                       "robuq.Engine, the documented wrapper). threads 0: all cores; max_memory 0: the default budget.")
      .def(py::init<const std::string&, int, double>(), py::arg("path"), py::arg("threads") = 0,
           py::arg("max_memory") = 0.0)
      .def_property_readonly("budget", &PyEngine::budget)
      .def("cost", &PyEngine::cost, py::arg("n"), "cost(n) -> dict: activation_bytes of a call of n, macs_per_sample")
      .def("info", &PyEngine::info, "info() -> dict: format version, model_config, quantized layers, linears")
      .def("forward", &PyEngine::forward, py::arg("x"), py::arg("t"), py::arg("y"),
           "forward(x float32 [N, C, S, S], t int64 [N], y int64 [N]) -> float32 [N, out_channels, S, S]")
      .def("profile", &PyEngine::profile, py::arg("x"), py::arg("t"), py::arg("y"),
           "profile(x, t, y) -> dict: seconds per part of one forward (linears, hadamard_quantize, attention,\n"
           "elementwise, float_linears, other; total), see robuq/profile.h")
      .def("linear", &PyEngine::linear, py::arg("name"), py::arg("x"),
           "linear(name, x float32 [tokens, in]) -> float32 [tokens, out]")
      .def("sample", &PyEngine::sample, py::arg("classes"), py::arg("steps") = "250", py::arg("cfg_scale") = 4.0,
           py::arg("seed") = 0, py::arg("sampler") = "ddpm", py::arg("eta") = 0.0, py::arg("cfg_mode") = py::none(),
           py::arg("clip_denoised") = py::none(), py::arg("progress") = py::none(), py::arg("seeds") = py::none(),
           py::arg("noise") = py::none(),
           "sample(classes int64 [n], steps='250', cfg_scale=4.0, seed=0, sampler='ddpm', eta=0.0,\n"
           "       cfg_mode=None, clip_denoised=None, progress=None, seeds=None, noise=None)\n"
           "  -> x0 float32 [n, C, S, S]\n"
           "progress: None or callable(done, total) called after each step (with the GIL).\n"
           "seeds: None or n seeds, one noise stream per sample (instead of seed).\n"
           "noise: None or the starting noise x_T, float32 [n, C, S, S].")
      .def_property_readonly("default_cfg_mode", &PyEngine::default_cfg_mode)
      .def_property_readonly("default_clip_denoised", &PyEngine::default_clip_denoised)
      .def_property_readonly("threads", &PyEngine::threads);

  py::class_<PyQLinear>(m, "QLinear",
                        "QLinear(weight, in_features, packed, scale, wsum, bias=None, down=None, up=None,\n"
                        "        act_bits=0, clip_k=0.0, hadamard='none', hadamard_block=0)\n\n"
                        "The engine's quantized linear over weights in the .rq layout (docs/rq-format.md), for\n"
                        "op-level tests. weight: 'ternary' | 'int4' | 'int8'; packed uint8 [out, packed_cols];\n"
                        "scale float32 [out]; wsum int32 [out] (row sums of the codes); bias float32 [out];\n"
                        "down float32 [rank, in], up float32 [out, rank]; act_bits 1..8 or 0 (float\n"
                        "activations); clip_k <= 0 minmax, > 0 gauss ratio. forward() runs the active tier.")
      .def(py::init<const std::string&, int64_t, const py::object&, const py::object&, const py::object&,
                    const py::object&, const py::object&, const py::object&, int, float, const std::string&, int64_t>(),
           py::arg("weight"), py::arg("in_features"), py::arg("packed"), py::arg("scale"), py::arg("wsum"),
           py::arg("bias") = py::none(), py::arg("down") = py::none(), py::arg("up") = py::none(),
           py::arg("act_bits") = 0, py::arg("clip_k") = 0.0f, py::arg("hadamard") = "none",
           py::arg("hadamard_block") = 0)
      .def("forward", &PyQLinear::forward, py::arg("x"), py::arg("threads") = 1,
           "forward(x float32 [T, in], threads=1) -> float32 [T, out]")
      .def_property_readonly("in_features", &PyQLinear::in)
      .def_property_readonly("out_features", &PyQLinear::out);

  m.def(
      "forward_cost",
      [](int64_t depth, int64_t hidden_size, int64_t patch_size, int64_t num_heads, double mlp_ratio,
         int64_t input_size, int64_t in_channels, bool learn_sigma, int64_t n, int threads) {
        robuq::ModelConfig c;
        c.depth = depth;
        c.hidden_size = hidden_size;
        c.patch_size = patch_size;
        c.num_heads = num_heads;
        c.mlp_ratio = mlp_ratio;
        c.input_size = input_size;
        c.in_channels = in_channels;
        c.learn_sigma = learn_sigma;
        const robuq::ForwardCost f = robuq::forward_cost(c, n, threads);
        py::dict d;
        d["activation_bytes"] = f.activation_bytes;
        d["macs_per_sample"] = f.macs_per_sample;
        d["tokens"] = c.num_patches();
        return d;
      },
      py::arg("depth"), py::arg("hidden_size"), py::arg("patch_size"), py::arg("num_heads"), py::arg("mlp_ratio"),
      py::arg("input_size"), py::arg("in_channels"), py::arg("learn_sigma"), py::arg("n"), py::arg("threads"),
      "forward_cost(...) -> dict: the budget's estimate (budget.h) of a forward of n samples of that model.");
  m.def(
      "default_budget", []() { return budget_dict(robuq::default_budget()); },
      "default_budget() -> dict: the limits a new Engine gets (ROBUQ_MAX_MEMORY / _MACS / _TOKENS applied).");
  m.def("max_threads", &robuq::max_threads, "max_threads() -> int: the most threads an engine uses (4 x cores).");
  m.def("linear_f32", &py_linear_f32, py::arg("x"), py::arg("w"), py::arg("b") = py::none(), py::arg("threads") = 1,
        "linear_f32(x float32 [T, in], w float32 [out, in], b float32 [out] or None, threads=1)\n"
        "    -> float32 [T, out]: x @ w.T + b on the active tier.");
  m.def("f16_to_f32", &py_f16_to_f32, py::arg("h"),
        "f16_to_f32(h uint16 [n]) -> float32 [n]: the loader's IEEE half -> float conversion.");
  m.def("parse_json", &py_parse_json, py::arg("text"), py::arg("max_depth") = 64,
        py::arg("max_size") = size_t(64) << 20,
        "parse_json(text: bytes, max_depth=64, max_size=64 MiB) -> object: the engine's strict JSON parser\n"
        "(ValueError with the byte position on invalid input).");
}

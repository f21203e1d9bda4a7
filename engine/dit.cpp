// The DiT forward graph (see dit.h); semantics of python/robuq/models.py and docs/dit.md.
#include "dit.h"

#include <algorithm>
#include <cstring>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <stdexcept>

#include "errors.h"
#include "ops.h"
#include "robuq/aligned.h"
#include "robuq/profile.h"

namespace robuq {

// ---------------------------------------------------------------------------------------------- linears
LinearLayer::LinearLayer(RqFile& file, const RqSpec& spec, const LinearShape& shape)
    : name_(shape.name), in_(shape.in), out_(shape.out) {
  auto tensor = [&](const std::string& suffix) -> const TensorEntry& {
    const TensorEntry* t = file.find(name_ + suffix);
    if (t == nullptr) throw FormatError("missing tensor '" + name_ + suffix + "'");
    return *t;
  };
  bias_ = file.f32(tensor(".bias"));
  const LayerQuantSpec* qs = spec.layer(name_);
  if (qs == nullptr) {
    weight_ = file.f32(tensor(".weight"));
    return;
  }
  QLinearDesc d;
  d.in = in_;
  d.out = out_;
  d.format = qs->weight;
  d.packed = file.u8(tensor(".weight_packed"));
  d.scale = file.f32(tensor(".weight_scale"));
  d.wsum = file.i32(tensor(".weight_sum"));
  d.bias = bias_;
  d.rank = qs->rank;
  if (qs->rank > 0) {
    d.down = file.f32(tensor(".lowrank_down.weight"));
    d.up = file.f32(tensor(".lowrank_up.weight"));
  }
  d.act_bits = qs->act_bits;
  d.clip_k = qs->clip_k;
  d.plan = make_hadamard_plan(in_, qs->hadamard, qs->hadamard_block);

  // Named errors for the two checks QLinear repeats (one pass over the packed bytes, 8 at a time for ternary).
  std::vector<int32_t> sums(static_cast<size_t>(out_));
  try {
    check_weight_codes(d.format, d.packed, out_, in_, sums.data());
  } catch (const std::invalid_argument& e) {
    throw FormatError("tensor '" + name_ + ".weight_packed': " + e.what());
  }
  for (int64_t r = 0; r < out_; ++r)
    if (sums[static_cast<size_t>(r)] != d.wsum[r])
      throw FormatError("tensor '" + name_ + ".weight_sum': row " + std::to_string(r) + " says " +
                        std::to_string(d.wsum[r]) + " but the codes in weight_packed sum to " +
                        std::to_string(sums[static_cast<size_t>(r)]));
  try {
    q_ = std::make_unique<QLinear>(d);
  } catch (const std::invalid_argument& e) {
    throw FormatError("layer '" + name_ + "': " + e.what());
  }
}

void LinearLayer::forward(const float* x, int64_t T, float* y, int threads, PostOp post) const {
  if (q_) {
    profile::Scope timed(profile::Linears);
    q_->forward(x, T, y, threads, post);
    return;
  }
  {
    profile::Scope timed(profile::FloatLinears);
    linear_f32(x, T, in_, weight_, bias_, out_, y, threads);
  }
  if (post == PostOp::GeluTanh) {
    profile::Scope timed(profile::Elementwise);
    ops::gelu_tanh(y, T * out_, threads);
  }
}

// -------------------------------------------------------------------------------------------- workspace
// The activation buffers are 64-byte aligned (robuq/aligned.h): their rows are read and written 64 bytes at a
// time.
using FloatBuffer = aligned_vector<float>;

// Every activation buffer of one forward, allocated once per batch size.
struct DiT::Workspace {
  int64_t N = -1;
  int threads = 0;
  FloatBuffer patches, x, h, qkv, att, branch, mlp, feats;  // token-major [N * T, ...]
  FloatBuffer tfreq, temb_h, temb, c, silu_c, mod;          // per sample [N, ...]
  FloatBuffer att_scratch;
};

DiT::~DiT() = default;

size_t DiT::workspace_bytes() const {
  if (!ws_) return 0;
  const Workspace& w = *ws_;
  size_t n = 0;
  for (const FloatBuffer* v : {&w.patches, &w.x, &w.h, &w.qkv, &w.att, &w.branch, &w.mlp, &w.feats, &w.tfreq, &w.temb_h,
                               &w.temb, &w.c, &w.silu_c, &w.mod, &w.att_scratch})
    n += v->capacity() * sizeof(float);
  return n;
}

void DiT::release_workspace(int threads) {
  ws_.reset();
  release_scratch(threads);
#if defined(__GLIBC__)
  malloc_trim(0);  // large freed blocks below glibc's (adaptive) mmap threshold stay in the heap otherwise
#endif
}

void DiT::ensure_workspace(int64_t N, int threads) {
  if (ws_ && ws_->N == N && ws_->threads == threads) return;
  auto w = std::make_unique<Workspace>();
  const int64_t T = cfg_.num_patches(), D = cfg_.hidden_size, NT = N * T;
  auto sz = [](int64_t v) { return static_cast<size_t>(v); };
  w->N = N;
  w->threads = threads;
  w->patches.resize(sz(NT * cfg_.patch_features()));
  w->x.resize(sz(NT * D));
  w->h.resize(sz(NT * D));
  w->qkv.resize(sz(NT * 3 * D));
  w->att.resize(sz(NT * D));
  w->branch.resize(sz(NT * D));
  w->mlp.resize(sz(NT * cfg_.mlp_hidden()));
  w->feats.resize(sz(NT * cfg_.patch_size * cfg_.patch_size * cfg_.out_channels()));
  w->tfreq.resize(sz(N * ops::kFreqDim));
  w->temb_h.resize(sz(N * D));
  w->temb.resize(sz(N * D));
  w->c.resize(sz(N * D));
  w->silu_c.resize(sz(N * D));
  w->mod.resize(sz(N * 6 * D));
  w->att_scratch.resize(static_cast<size_t>(threads) * ops::attention_scratch_floats(T, cfg_.head_dim()));
  ws_ = std::move(w);
}

// -------------------------------------------------------------------------------------------------- DiT
DiT::DiT(RqFile& file, const RqSpec& spec) : cfg_(spec.model), attention_bits_(spec.attention_bits) {
  auto f32 = [&](const std::string& name) {
    const TensorEntry* t = file.find(name);
    if (t == nullptr) throw FormatError("missing tensor '" + name + "'");
    return file.f32(*t);
  };
  patch_w_ = f32("x_embedder.proj.weight");
  patch_b_ = f32("x_embedder.proj.bias");
  pos_embed_ = f32("pos_embed");
  label_table_ = f32("y_embedder.embedding_table.weight");
  for (const LinearShape& s : dit_linears(cfg_)) linears_.push_back(std::make_unique<LinearLayer>(file, spec, s));
  t_fc1_ = find_linear("t_embedder.mlp.0");
  t_fc2_ = find_linear("t_embedder.mlp.2");
  final_ada_ = find_linear("final_layer.adaLN_modulation.1");
  final_linear_ = find_linear("final_layer.linear");
  for (int64_t i = 0; i < cfg_.depth; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    blocks_.push_back({find_linear(b + "adaLN_modulation.1"), find_linear(b + "attn.qkv"), find_linear(b + "attn.proj"),
                       find_linear(b + "mlp.fc1"), find_linear(b + "mlp.fc2")});
  }
}

const LinearLayer* DiT::find_linear(const std::string& name) const {
  for (const auto& l : linears_)
    if (l->name() == name) return l.get();
  return nullptr;
}

void DiT::forward(const float* x, int64_t N, const int64_t* t, const int64_t* y, float* out, int threads,
                  const CancelFn& cancel) {
  if (N < 0) throw std::invalid_argument("batch size must be >= 0");
  if (threads < 1) throw std::invalid_argument("threads must be >= 1");
  for (int64_t n = 0; n < N; ++n)
    if (y[n] < 0 || y[n] >= cfg_.label_rows())
      throw std::invalid_argument("class label y[" + std::to_string(n) + "] = " + std::to_string(y[n]) +
                                  " is out of range [0, " + std::to_string(cfg_.label_rows() - 1) + "]");
  if (N == 0) return;
  ensure_workspace(N, threads);
  Workspace& w = *ws_;
  const int64_t T = cfg_.num_patches(), D = cfg_.hidden_size, NT = N * T, p = cfg_.patch_size;

  // Embeddings: x = patch_embed(x) + pos_embed; c = t_embedder(t) + y_embedder(y).
  ops::patchify(x, N, cfg_.in_channels, cfg_.input_size, p, w.patches.data());
  {
    profile::Scope timed(profile::FloatLinears);
    linear_f32(w.patches.data(), NT, cfg_.patch_features(), patch_w_, patch_b_, D, w.x.data(), threads);
  }
  for (int64_t r = 0; r < NT; ++r) {
    float* xr = w.x.data() + r * D;
    const float* pe = pos_embed_ + (r % T) * D;
    for (int64_t k = 0; k < D; ++k) xr[k] = xr[k] + pe[k];
  }
  ops::timestep_embedding(t, N, w.tfreq.data());
  t_fc1_->forward(w.tfreq.data(), N, w.temb_h.data(), threads);
  ops::silu(w.temb_h.data(), N * D, w.temb_h.data());
  t_fc2_->forward(w.temb_h.data(), N, w.temb.data(), threads);
  for (int64_t n = 0; n < N; ++n) {
    const float* ye = label_table_ + y[n] * D;
    const float* te = w.temb.data() + n * D;
    float* cn = w.c.data() + n * D;
    for (int64_t k = 0; k < D; ++k) cn[k] = te[k] + ye[k];
  }
  ops::silu(w.c.data(), N * D, w.silu_c.data());  // every adaLN_modulation starts with SiLU

  const int64_t H = cfg_.num_heads, head_dim = cfg_.head_dim();
  for (const Block& b : blocks_) {
    if (cancel && !cancel()) throw std::runtime_error("interrupted");
    // mod [N, 6D]: shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp
    b.ada->forward(w.silu_c.data(), N, w.mod.data(), threads);
    const float* mod = w.mod.data();
    const int64_t st = 6 * D;
    {
      profile::Scope timed(profile::Elementwise);
      ops::layernorm_modulate(w.x.data(), N, T, D, mod + 0 * D, mod + 1 * D, st, w.h.data(), threads);
    }
    b.qkv->forward(w.h.data(), NT, w.qkv.data(), threads);
    {
      profile::Scope timed(profile::Attention);
      ops::attention(w.qkv.data(), N, T, H, head_dim, attention_bits_, w.att.data(), w.att_scratch.data(), threads);
    }
    b.proj->forward(w.att.data(), NT, w.branch.data(), threads);
    {
      profile::Scope timed(profile::Elementwise);
      ops::gated_residual(w.x.data(), w.branch.data(), mod + 2 * D, st, N, T, D, threads);
      ops::layernorm_modulate(w.x.data(), N, T, D, mod + 3 * D, mod + 4 * D, st, w.h.data(), threads);
    }
    // GELU in fc1's epilogue (PostOp): the mlp activations make one trip through memory
    b.fc1->forward(w.h.data(), NT, w.mlp.data(), threads, PostOp::GeluTanh);
    b.fc2->forward(w.mlp.data(), NT, w.branch.data(), threads);
    {
      profile::Scope timed(profile::Elementwise);
      ops::gated_residual(w.x.data(), w.branch.data(), mod + 5 * D, st, N, T, D, threads);
    }
  }

  // Final layer: shift, scale = chunks of adaLN(c); linear(modulate(norm_final(x))); unpatchify.
  final_ada_->forward(w.silu_c.data(), N, w.mod.data(), threads);
  ops::layernorm_modulate(w.x.data(), N, T, D, w.mod.data(), w.mod.data() + D, 2 * D, w.h.data(), threads);
  final_linear_->forward(w.h.data(), NT, w.feats.data(), threads);  // (its own Scope)
  ops::unpatchify(w.feats.data(), N, cfg_.grid_size(), p, cfg_.out_channels(), out);
}

}  // namespace robuq

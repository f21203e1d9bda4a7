#include "diffusion.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <set>
#include <stdexcept>

#include "errors.h"
#include "rng.h"

namespace robuq {

namespace {

// numpy.linspace(start, stop, n) for n >= 2: i * step + start, the last value exactly stop.
std::vector<double> linspace(double start, double stop, int64_t n) {
  std::vector<double> y(static_cast<size_t>(n));
  const double step = (stop - start) / static_cast<double>(n - 1);
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<double>(i) * step + start;
  if (n > 1) y[n - 1] = stop;
  return y;
}

std::vector<double> linear_betas(int64_t num_timesteps) {
  const double scale = 1000.0 / static_cast<double>(num_timesteps);
  return linspace(scale * 0.0001, scale * 0.02, num_timesteps);
}

std::vector<int64_t> parse_counts(const std::string& spec) {
  std::vector<int64_t> counts;
  size_t pos = 0;
  while (pos <= spec.size()) {
    size_t comma = spec.find(',', pos);
    if (comma == std::string::npos) comma = spec.size();
    const std::string tok = spec.substr(pos, comma - pos);
    if (tok.empty() || tok.size() > 9 ||
        !std::all_of(tok.begin(), tok.end(), [](unsigned char ch) { return std::isdigit(ch) != 0; }))
      throw std::invalid_argument("bad respacing '" + spec + "': use 'N', 'N1,N2,...' or 'ddimN'");
    counts.push_back(std::stoll(tok));
    pos = comma + 1;
  }
  return counts;
}

}  // namespace

std::vector<int64_t> space_timesteps(int64_t num_timesteps, const std::string& spec) {
  if (num_timesteps < 2) throw std::invalid_argument("num_timesteps must be >= 2");
  if (spec.rfind("ddim", 0) == 0) {
    const auto counts = parse_counts(spec.substr(4));
    if (counts.size() != 1) throw std::invalid_argument("bad respacing '" + spec + "'");
    for (int64_t stride = 1; stride < num_timesteps; ++stride) {
      if ((num_timesteps + stride - 1) / stride == counts[0]) {
        std::vector<int64_t> out;
        for (int64_t t = 0; t < num_timesteps; t += stride) out.push_back(t);
        return out;
      }
    }
    throw std::invalid_argument("cannot create exactly " + std::to_string(counts[0]) +
                                " steps with an integer stride from " + std::to_string(num_timesteps));
  }
  const auto counts = parse_counts(spec);
  const int64_t sections = static_cast<int64_t>(counts.size());
  const int64_t size_per = num_timesteps / sections, extra = num_timesteps % sections;
  std::set<int64_t> steps;
  int64_t start = 0;
  for (int64_t i = 0; i < sections; ++i) {
    const int64_t size = size_per + (i < extra ? 1 : 0);
    const int64_t count = counts[i];
    if (size < count)
      throw std::invalid_argument("cannot divide a section of " + std::to_string(size) + " steps into " +
                                  std::to_string(count));
    const double stride = count <= 1 ? 1.0 : static_cast<double>(size - 1) / static_cast<double>(count - 1);
    double cur = 0.0;
    for (int64_t j = 0; j < count; ++j) {
      steps.insert(start + static_cast<int64_t>(std::nearbyint(cur)));  // Python round(): half to even
      cur += stride;
    }
    start += size;
  }
  if (steps.empty()) throw std::invalid_argument("respacing '" + spec + "' keeps no steps");
  return {steps.begin(), steps.end()};
}

SpacedSchedule make_schedule(int64_t num_timesteps, const std::string& spec) {
  const std::vector<double> base = linear_betas(num_timesteps);
  SpacedSchedule s;
  s.timestep_map = space_timesteps(num_timesteps, spec);
  std::vector<double> abar(base.size());
  double acc = 1.0;
  for (size_t i = 0; i < base.size(); ++i) abar[i] = acc = acc * (1.0 - base[i]);
  double last = 1.0;
  for (int64_t t : s.timestep_map) {
    s.betas.push_back(1.0 - abar[t] / last);
    last = abar[t];
  }
  const size_t K = s.betas.size();
  s.alphas_cumprod.resize(K);
  acc = 1.0;
  for (size_t i = 0; i < K; ++i) s.alphas_cumprod[i] = acc = acc * (1.0 - s.betas[i]);
  s.alphas_cumprod_prev.resize(K);
  for (size_t i = 0; i < K; ++i) s.alphas_cumprod_prev[i] = i == 0 ? 1.0 : s.alphas_cumprod[i - 1];
  std::vector<double> post_var(K);
  for (size_t i = 0; i < K; ++i) {
    const double a = s.alphas_cumprod[i], ap = s.alphas_cumprod_prev[i], b = s.betas[i];
    s.sqrt_recip_alphas_cumprod.push_back(std::sqrt(1.0 / a));
    s.sqrt_recipm1_alphas_cumprod.push_back(std::sqrt(1.0 / a - 1));
    post_var[i] = b * (1.0 - ap) / (1.0 - a);
    s.posterior_mean_coef1.push_back(b * std::sqrt(ap) / (1.0 - a));
    s.posterior_mean_coef2.push_back((1.0 - ap) * std::sqrt(1.0 - b) / (1.0 - a));
    s.log_betas.push_back(std::log(b));
  }
  for (size_t i = 0; i < K; ++i) {
    const double v = K > 1 ? post_var[i == 0 ? 1 : i] : post_var[i];
    s.posterior_log_variance_clipped.push_back(std::log(v));
    // fixed "large" variance (learn_sigma False): [posterior_variance[1], betas[1:]]
    const double large = K > 1 ? (i == 0 ? post_var[1] : s.betas[i]) : s.betas[i];
    s.fixed_large_log_variance.push_back(std::log(large));
  }
  return s;
}

step::Scalars step_scalars(const SpacedSchedule& sched, int64_t t, const SampleOptions& opt) {
  step::Scalars s{};
  s.srac = static_cast<float>(sched.sqrt_recip_alphas_cumprod[t]);
  s.srm1 = static_cast<float>(sched.sqrt_recipm1_alphas_cumprod[t]);
  s.c1 = static_cast<float>(sched.posterior_mean_coef1[t]);
  s.c2 = static_cast<float>(sched.posterior_mean_coef2[t]);
  s.min_log = static_cast<float>(sched.posterior_log_variance_clipped[t]);
  s.max_log = static_cast<float>(sched.log_betas[t]);
  s.fixed_log = static_cast<float>(sched.fixed_large_log_variance[t]);
  const float a = static_cast<float>(sched.alphas_cumprod[t]);
  const float ap = static_cast<float>(sched.alphas_cumprod_prev[t]);
  s.sigma = static_cast<float>(opt.eta) * std::sqrt((1.0f - ap) / (1.0f - a)) * std::sqrt(1.0f - a / ap);
  s.sqrt_ap = std::sqrt(ap);
  s.dir = std::sqrt(1.0f - ap - s.sigma * s.sigma);
  s.ddpm = opt.sampler == Sampler::DDPM;
  s.learn_sigma = opt.learn_sigma;
  s.clip = opt.clip_denoised;
  s.last = t == 0;
  s.add_noise = t > 0 && opt.eta != 0.0;
  return s;
}

namespace {
void check_finite_step(const float* v, int64_t n, int64_t per, const char* what, int64_t i, int64_t K, int64_t t) {
  int64_t bad = -1;
  for (int64_t j = 0; j < n && bad < 0; j += 4096) {
    const int64_t e = std::min(n, j + 4096);
    bool ok = true;
    for (int64_t k = j; k < e; ++k) ok &= std::isfinite(v[k]);
    if (!ok)
      for (int64_t k = j; k < e && bad < 0; ++k)
        if (!std::isfinite(v[k])) bad = k;
  }
  if (bad >= 0)
    throw NonFiniteError(std::string(what) + " became non-finite (" + (std::isnan(v[bad]) ? "nan" : "inf") +
                         ") at step " + std::to_string(i + 1) + " of " + std::to_string(K) +
                         " (t = " + std::to_string(t) + ", sample " + std::to_string(bad / per) +
                         "): the model's values overflow float32");
}
}  // namespace

void check_ddim_eta(const SpacedSchedule& sched, double eta, const std::string& steps) {
  SampleOptions o;
  o.sampler = Sampler::DDIM;
  o.eta = eta;
  const int64_t K = sched.size();
  for (int64_t i = 0; i < K; ++i) {
    const int64_t t = K - 1 - i;
    const step::Scalars sc = step_scalars(sched, t, o);
    if (std::isfinite(sc.dir) && std::isfinite(sc.sigma)) continue;
    double bound = INFINITY;  // sqrt((1 - a) / (1 - a / a_prev)) over the steps with noise (a < a_prev < 1)
    for (int64_t u = 0; u < K; ++u) {
      const double a = sched.alphas_cumprod[u], ap = sched.alphas_cumprod_prev[u];
      if (a < ap && ap < 1.0) bound = std::min(bound, std::sqrt((1.0 - a) / (1.0 - a / ap)));
    }
    char b[32];
    std::snprintf(b, sizeof b, "%.9g", bound);
    throw std::invalid_argument(
        "eta " + std::to_string(eta) + " makes DDIM's variance larger than 1 - alpha_bar_prev at step " +
        std::to_string(i + 1) + " of " + std::to_string(K) + " (t = " + std::to_string(sched.timestep_map[t]) +
        "), so the sample would be NaN; with steps '" + steps + "' eta must be at most " + b +
        " (0..1 is always valid)");
  }
}

void sample_loop(const SpacedSchedule& sched, const ModelFn& model, int64_t N, int64_t C, int64_t HW,
                 const SampleOptions& opt, float* out, const ProgressFn& progress) {
  const int64_t K = sched.size();
  const int64_t per = C * HW, total = N * per;
  const int64_t cout = opt.learn_sigma ? 2 * C : C;
  std::vector<float> x(static_cast<size_t>(total)), noise(static_cast<size_t>(total));
  std::vector<float> mo(static_cast<size_t>(N * cout * HW));
  std::vector<int64_t> tvec(static_cast<size_t>(N));
  if (!opt.seeds.empty() && static_cast<int64_t>(opt.seeds.size()) != N)
    throw std::invalid_argument("seeds must hold one seed per sample (" + std::to_string(N) + "), got " +
                                std::to_string(opt.seeds.size()));
  // Stream `key` of the batch's noise: one stream for all samples, or one per sample (opt.seeds).
  const auto draw = [&](uint64_t key, float* dst) {
    if (opt.seeds.empty()) {
      gaussian_noise(opt.seed, key, dst, total);
      return;
    }
    for (int64_t n = 0; n < N; ++n) gaussian_noise(opt.seeds[static_cast<size_t>(n)], key, dst + n * per, per);
  };
  if (opt.x_T != nullptr)
    std::copy(opt.x_T, opt.x_T + total, x.data());
  else
    draw(0, x.data());
  for (int64_t i = 0; i < K; ++i) {
    const int64_t t = K - 1 - i;
    std::fill(tvec.begin(), tvec.end(), sched.timestep_map[t]);
    model(x.data(), tvec.data(), mo.data());
    const bool ddpm = opt.sampler == Sampler::DDPM;
    const bool need_noise = t > 0 && (ddpm || opt.eta != 0.0);
    if (need_noise) draw(static_cast<uint64_t>(1 + i), noise.data());
    const step::Scalars sc = step_scalars(sched, t, opt);
    for (int64_t n = 0; n < N; ++n) {
      const float* eps = mo.data() + n * cout * HW;
      const float* var = opt.learn_sigma ? eps + per : eps;  // the variance channels (read only if learned)
      for (int64_t j = 0; j < per; ++j) {
        const int64_t idx = n * per + j;
        x[idx] = step::update(sc, x[idx], eps[j], var[j], need_noise ? noise[idx] : 0.0f);
      }
    }
    // A model whose values overflow float32 (a huge but finite weight scale, say) makes NaN or inf: an error
    // naming the step, never an image. The model output is checked too, since clamping x0 can hide a NaN.
    if (opt.check_finite) {
      check_finite_step(mo.data(), N * cout * HW, cout * HW, "the model output", i, K, sched.timestep_map[t]);
      check_finite_step(x.data(), total, per, "the sample", i, K, sched.timestep_map[t]);
    }
    if (progress && !progress(i + 1, K)) throw std::runtime_error("sampling interrupted");
  }
  std::copy(x.begin(), x.end(), out);
}

}  // namespace robuq

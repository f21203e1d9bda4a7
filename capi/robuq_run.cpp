// robuq-run: class-conditional samples from a .rq model through the C API (robuq.h); no Python.
//
//   robuq-run MODEL.rq [--class 7 --class 3 ...] [--steps 250] [--cfg-scale 4] [--seed 0]
//             [--sampler ddpm|ddim] [--eta 0] [--threads N] [--zoom Z] [--no-progress] [-o out.png|out.npy]
//
// The pixels are those of robuq.Engine(MODEL).sample(classes, steps=, cfg_scale=, seed=) and the files
// those of robuq-infer: .npy holds the uint8 array [n, H, W, C] (latent models: the float32 latents
// [n, C, H, W]); .png the samples as one grid (10 per row, 2-pixel grey gaps, upscaled by nearest
// neighbour, --zoom, default max(1, 128 // side)), written only when the build found libpng.
// Bad input: one line "robuq-run: error: ..." on stderr, exit status 2, no output file (the output is
// written to a temporary file beside it and renamed into place). Ctrl-C: exit status 130.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "robuq.h"

#ifdef ROBUQ_RUN_HAVE_PNG
#include <png.h>
#endif

namespace {

const char* const kProg = "robuq-run";
constexpr int kGridColumns = 10, kGridGap = 2, kGridGapValue = 128;

struct UsageError {
  std::string message;
};

volatile std::sig_atomic_t g_interrupted = 0;
extern "C" void on_sigint(int) { g_interrupted = 1; }

const char* const kUsage =
    "usage: robuq-run MODEL.rq [--class ID ...] [--steps N|ddimN|A,B,..] [--cfg-scale S] [--seed N]\n"
    "                 [--sampler ddpm|ddim] [--eta E] [--threads N] [--zoom Z] [--no-progress]\n"
    "                 [-o OUT.png|OUT.npy]\n"
    "\n"
    "Sample class-conditional images from a .rq model with the RobuQ engine (C API) and write a PNG grid\n"
    "or the uint8 array as .npy (latent models: the float32 latents, .npy only).\n"
    "\n"
    "  --class ID        class id of a sample; repeat (or give a comma list) for several\n"
    "                    (default: one sample of each of the first 10 classes)\n"
    "  --steps S         sampling steps, or a respacing like ddim25 or 10,10,5 (default 250)\n"
    "  --cfg-scale S     classifier-free guidance scale; 1 disables it (default 4; 1 for models\n"
    "                    without a null class)\n"
    "  --seed N          noise seed, 0..2**64-1 (default 0)\n"
    "  --sampler NAME    ddpm (default) or ddim\n"
    "  --eta E           DDIM noise scale >= 0 (default 0)\n"
    "  --threads N       engine threads (default or 0: all cores)\n"
    "  --zoom Z          PNG upscaling factor (default max(1, 128 // side))\n"
    "  --no-progress     no progress line on stderr\n"
    "  -o, --output OUT  output .png or .npy (default samples.png)\n"
    "  --version         print the library version\n";

std::string lower_ext(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  const size_t dot = path.find_last_of('.');
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash) || dot == slash + 1) return "";
  std::string e = path.substr(dot);
  for (char& ch : e) ch = static_cast<char>(ch >= 'A' && ch <= 'Z' ? ch - 'A' + 'a' : ch);
  return e;
}

std::string dir_of(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

bool parse_int(const std::string& s, long long lo, long long hi, long long* v) {
  if (s.empty()) return false;
  char* end = nullptr;
  errno = 0;
  const long long x = std::strtoll(s.c_str(), &end, 10);
  if (errno != 0 || *end != '\0' || x < lo || x > hi) return false;
  *v = x;
  return true;
}

bool parse_u64(const std::string& s, uint64_t* v) {
  if (s.empty() || s[0] < '0' || s[0] > '9') return false;  // strtoull would accept "-1"
  char* end = nullptr;
  errno = 0;
  const unsigned long long x = std::strtoull(s.c_str(), &end, 10);
  if (errno != 0 || *end != '\0') return false;
  *v = static_cast<uint64_t>(x);
  return true;
}

bool parse_double(const std::string& s, double* v) {
  if (s.empty()) return false;
  char* end = nullptr;
  errno = 0;
  const double x = std::strtod(s.c_str(), &end);
  if (*end != '\0' || errno == ERANGE) return false;
  *v = x;
  return true;
}

// The C API's messages start with the function's name ("robuq_open: "); the CLI's line does not need it.
std::string api_error() {
  std::string m = robuq_last_error();
  const size_t colon = m.find(": ");
  if (m.rfind("robuq_", 0) == 0 && colon != std::string::npos) m = m.substr(colon + 2);
  return m;
}

struct Args {
  std::string model, output = "samples.png", steps = "250", sampler = "ddpm";
  std::vector<int32_t> classes;
  bool cfg_given = false, progress = true;
  double cfg_scale = 4.0, eta = 0.0;
  uint64_t seed = 0;
  int threads = 0, zoom = 0;
};

Args parse_args(int argc, char** argv, bool* exit_now) {
  Args a;
  *exit_now = false;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    std::string opt = argv[i];
    std::string value;
    bool has_inline = false;
    if (opt.rfind("--", 0) == 0 && opt.find('=') != std::string::npos) {
      value = opt.substr(opt.find('=') + 1);
      opt = opt.substr(0, opt.find('='));
      has_inline = true;
    }
    auto next = [&]() -> std::string {
      if (has_inline) return value;
      if (i + 1 >= argc) throw UsageError{"option " + opt + " needs a value"};
      return argv[++i];
    };
    if (opt == "-h" || opt == "--help") {
      std::fputs(kUsage, stdout);
      *exit_now = true;
      return a;
    } else if (opt == "--version") {
#ifdef ROBUQ_RUN_HAVE_PNG
      std::printf("robuq-run %s (formats: .png .npy)\n", robuq_version());
#else
      std::printf("robuq-run %s (formats: .npy; built without libpng)\n", robuq_version());
#endif
      *exit_now = true;
      return a;
    } else if (opt == "--class") {
      const std::string v = next();
      size_t start = 0;
      while (true) {
        const size_t comma = v.find(',', start);
        std::string tok = v.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        while (!tok.empty() && tok.front() == ' ') tok.erase(tok.begin());
        while (!tok.empty() && tok.back() == ' ') tok.pop_back();
        long long id = 0;
        if (tok.empty()) throw UsageError{"--class '" + v + "' has an empty entry"};
        if (!parse_int(tok, INT32_MIN, INT32_MAX, &id))
          throw UsageError{"--class '" + tok + "' is not a class id (robuq-run takes ids; names: robuq-infer)"};
        a.classes.push_back(static_cast<int32_t>(id));
        if (comma == std::string::npos) break;
        start = comma + 1;
      }
    } else if (opt == "--steps") {
      a.steps = next();
      if (robuq_steps_count(a.steps.c_str(), nullptr) != ROBUQ_OK)
        throw UsageError{"--steps " + a.steps + ": " + api_error()};
    } else if (opt == "--cfg-scale") {
      const std::string v = next();
      if (!parse_double(v, &a.cfg_scale) || !std::isfinite(a.cfg_scale))
        throw UsageError{"--cfg-scale must be a finite number, got '" + v + "'"};
      a.cfg_given = true;
    } else if (opt == "--seed") {
      const std::string v = next();
      if (!parse_u64(v, &a.seed)) throw UsageError{"--seed must be an integer in 0..2**64-1, got '" + v + "'"};
    } else if (opt == "--sampler") {
      a.sampler = next();
      if (a.sampler != "ddpm" && a.sampler != "ddim")
        throw UsageError{"--sampler must be ddpm or ddim, got '" + a.sampler + "'"};
    } else if (opt == "--eta") {
      const std::string v = next();
      if (!parse_double(v, &a.eta) || !std::isfinite(a.eta) || a.eta < 0)
        throw UsageError{"--eta must be a finite number >= 0, got '" + v + "'"};
    } else if (opt == "--threads") {
      const std::string v = next();
      long long t = 0;
      if (!parse_int(v, 0, 4096, &t))
        throw UsageError{"--threads must be an integer in 0..4096 (0: all cores), got '" + v + "'"};
      a.threads = static_cast<int>(t);
    } else if (opt == "--zoom") {
      const std::string v = next();
      long long z = 0;
      if (!parse_int(v, 1, 256, &z)) throw UsageError{"--zoom must be an integer in 1..256, got '" + v + "'"};
      a.zoom = static_cast<int>(z);
    } else if (opt == "--no-progress") {
      if (has_inline) throw UsageError{"option --no-progress takes no value"};
      a.progress = false;
    } else if (opt == "-o" || opt == "--output") {
      a.output = next();
    } else if (opt.size() > 1 && opt[0] == '-' && opt != "-") {
      throw UsageError{"unknown option " + opt + " (see --help)"};
    } else {
      positional.push_back(argv[i]);
    }
  }
  if (positional.empty()) throw UsageError{"no MODEL.rq given (see --help)"};
  if (positional.size() > 1) throw UsageError{"one MODEL.rq only, got also '" + positional[1] + "'"};
  a.model = positional[0];
  return a;
}

// Refuses, before any work, an output that cannot be written.
void check_output(const std::string& out) {
  if (out.empty()) throw UsageError{"the output path is empty"};
  const std::string ext = lower_ext(out);
  if (ext != ".png" && ext != ".npy")
    throw UsageError{"output " + out + " must end in .png (an image grid) or .npy (the array), not " +
                     (ext.empty() ? std::string("no extension") : "'" + ext + "'")};
#ifndef ROBUQ_RUN_HAVE_PNG
  if (ext == ".png")
    throw UsageError{"this robuq-run was built without libpng, so it cannot write " + out + "; write .npy"};
#endif
  struct stat st;
  if (::stat(out.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) throw UsageError{"output " + out + " is a directory"};
  const std::string dir = dir_of(out);
  if (::stat(dir.c_str(), &st) != 0) throw UsageError{"cannot write " + out + ": " + dir + " does not exist"};
  if (!S_ISDIR(st.st_mode)) throw UsageError{"cannot write " + out + ": " + dir + " is not a directory"};
  if (::access(dir.c_str(), W_OK | X_OK) != 0)
    throw UsageError{"cannot write " + out + ": directory " + dir + " is not writable"};
}

// ---- output files
std::string npy_header(const char* descr, const std::vector<int64_t>& shape) {
  std::string dict = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (";
  for (size_t i = 0; i < shape.size(); ++i) dict += (i > 0 ? ", " : "") + std::to_string(shape[i]);
  dict += shape.size() == 1 ? ",), }" : "), }";
  size_t total = 10 + dict.size() + 1;  // magic + version + header length, dict, '\n'
  dict.append((64 - total % 64) % 64, ' ');
  dict += '\n';
  std::string h("\x93NUMPY\x01\x00", 8);
  const size_t len = dict.size();
  h += static_cast<char>(len & 0xff);
  h += static_cast<char>((len >> 8) & 0xff);
  return h + dict;
}

bool write_all(FILE* f, const void* data, size_t size) { return std::fwrite(data, 1, size, f) == size; }

// uint8 [n, h, w, c] -> one grid image as robuq.infer.make_grid: [rows*h*z + (rows-1)*gap, cols*w*z + ...].
std::vector<uint8_t> make_grid(const std::vector<uint8_t>& img, int n, int h, int w, int c, int zoom, int* gh,
                               int* gw) {
  const int cols = n < kGridColumns ? n : kGridColumns;
  const int rows = (n + cols - 1) / cols;
  const int th = h * zoom, tw = w * zoom;
  *gh = rows * th + (rows - 1) * kGridGap;
  *gw = cols * tw + (cols - 1) * kGridGap;
  std::vector<uint8_t> grid(static_cast<size_t>(*gh) * static_cast<size_t>(*gw) * static_cast<size_t>(c),
                            static_cast<uint8_t>(kGridGapValue));
  for (int i = 0; i < n; ++i) {
    const int y0 = (i / cols) * (th + kGridGap), x0 = (i % cols) * (tw + kGridGap);
    for (int y = 0; y < th; ++y)
      for (int x = 0; x < tw; ++x)
        for (int ch = 0; ch < c; ++ch)
          grid[(static_cast<size_t>(y0 + y) * static_cast<size_t>(*gw) + static_cast<size_t>(x0 + x)) * c + ch] =
              img[((static_cast<size_t>(i) * h + y / zoom) * w + x / zoom) * c + ch];
  }
  return grid;
}

#ifdef ROBUQ_RUN_HAVE_PNG
// Writes a gray (c == 1) or RGB (c == 3) image with libpng's simplified API; the error message or "".
std::string write_png(FILE* f, const std::vector<uint8_t>& pixels, int h, int w, int c) {
  png_image image;
  std::memset(&image, 0, sizeof image);
  image.version = PNG_IMAGE_VERSION;
  image.width = static_cast<png_uint_32>(w);
  image.height = static_cast<png_uint_32>(h);
  image.format = c == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
  if (!png_image_write_to_stdio(&image, f, 0, pixels.data(), 0, nullptr)) {
    std::string m = image.message;
    png_image_free(&image);
    return m.empty() ? "libpng failed" : m;
  }
  return "";
}
#endif

// Writes `out` through a temporary file in its directory, renamed into place when complete; on failure the
// temporary file is removed and `out` is untouched. write(f) returns an error message or "".
template <class W>
void write_atomic(const std::string& out, W&& write) {
  const std::string dir = dir_of(out);
  const size_t slash = out.find_last_of('/');
  const std::string base = slash == std::string::npos ? out : out.substr(slash + 1);
  std::string tmpl = (dir == "/" ? std::string("/") : dir + "/") + "." + base + ".XXXXXX";
  std::vector<char> name(tmpl.begin(), tmpl.end());
  name.push_back('\0');
  const int fd = ::mkstemp(name.data());
  if (fd < 0) throw UsageError{"cannot write " + out + ": " + std::strerror(errno)};
  const std::string tmp(name.data());
  const mode_t mask = ::umask(0);
  ::umask(mask);
  ::fchmod(fd, 0666 & ~mask);  // mkstemp makes 0600; give the file the mode open() would
  FILE* f = ::fdopen(fd, "wb");
  std::string err;
  if (f == nullptr) {
    err = std::strerror(errno);
    ::close(fd);
  } else {
    err = write(f);
    if (err.empty() && std::fflush(f) != 0) err = std::strerror(errno);
    if (std::fclose(f) != 0 && err.empty()) err = std::strerror(errno);
  }
  if (err.empty() && g_interrupted) err = "interrupted";
  if (err.empty() && std::rename(tmp.c_str(), out.c_str()) != 0) err = std::strerror(errno);
  if (!err.empty()) {
    ::unlink(tmp.c_str());
    throw UsageError{"cannot write " + out + ": " + err};
  }
}

struct Progress {
  bool show;
};

extern "C" int on_progress(int done, int total, void* user) {
  const Progress* p = static_cast<const Progress*>(user);
  if (p->show) {
    std::fprintf(stderr, "\rstep %d/%d", done, total);
    if (done == total) std::fputc('\n', stderr);
    std::fflush(stderr);
  }
  return g_interrupted ? 1 : 0;
}

int run(const Args& a) {
  check_output(a.output);
  struct stat st;
  if (::stat(a.model.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
    throw UsageError{"model " + a.model + " is a directory, not a .rq file"};
  robuq_engine* eng = robuq_open(a.model.c_str(), a.threads);
  if (eng == nullptr) throw UsageError{api_error()};
  struct Closer {
    robuq_engine* e;
    ~Closer() { robuq_close(e); }
  } closer{eng};
  robuq_model_info info;
  if (robuq_model_info_get(eng, &info) != ROBUQ_OK) throw UsageError{api_error()};

  std::vector<int32_t> classes = a.classes;
  if (classes.empty())
    for (int k = 0; k < info.num_classes && k < kGridColumns; ++k) classes.push_back(k);
  for (const int32_t k : classes)
    if (k < 0 || k >= info.num_classes)
      throw UsageError{"class id " + std::to_string(k) + " is out of range 0.." + std::to_string(info.num_classes - 1)};
  double cfg = a.cfg_scale;
  if (!a.cfg_given) {
    cfg = info.has_null_class ? 4.0 : 1.0;
  } else if (cfg != 1.0 && !info.has_null_class) {
    throw UsageError{"--cfg-scale " + std::to_string(cfg) +
                     ": this model has no null class (trained without class dropout), so it cannot use "
                     "classifier-free guidance; use --cfg-scale 1"};
  }
  const std::string ext = lower_ext(a.output);
  const int n = static_cast<int>(classes.size());
  const int C = info.in_channels, S = info.input_size;
  if (info.latent && ext == ".png")
    throw UsageError{a.model + " is a latent model: write its latents as .npy (decode them with robuq-infer --vae)"};
  if (!info.latent && ext == ".png" && C != 1 && C != 3)
    throw UsageError{"cannot make a PNG of " + std::to_string(C) + "-channel images; write .npy instead"};

  robuq_sample_options o;
  robuq_sample_options_init(&o);
  o.steps = a.steps.c_str();
  o.cfg_scale = cfg;
  o.seed = a.seed;
  o.sampler = a.sampler == "ddim" ? ROBUQ_SAMPLER_DDIM : ROBUQ_SAMPLER_DDPM;
  o.eta = a.eta;
  Progress prog{a.progress && ::isatty(2) != 0};
  o.progress = on_progress;
  o.progress_user = &prog;

  const size_t count =
      static_cast<size_t>(n) * static_cast<size_t>(C) * static_cast<size_t>(S) * static_cast<size_t>(S);
  std::string what;
  if (info.latent) {
    std::vector<float> x0(count);
    if (robuq_sample_x0(eng, classes.data(), n, &o, x0.data()) != ROBUQ_OK) {
      if (robuq_last_status() == ROBUQ_ERROR_INTERRUPTED) return 130;
      throw UsageError{api_error()};
    }
    const std::string header = npy_header("<f4", {n, C, S, S});
    write_atomic(a.output, [&](FILE* f) -> std::string {
      if (!write_all(f, header.data(), header.size()) || !write_all(f, x0.data(), count * sizeof(float)))
        return std::strerror(errno);
      return "";
    });
    what = "float32 latents [" + std::to_string(n) + ", " + std::to_string(C) + ", " + std::to_string(S) + ", " +
           std::to_string(S) + "]";
  } else {
    std::vector<uint8_t> px(count);
    if (robuq_sample_images(eng, classes.data(), n, &o, px.data()) != ROBUQ_OK) {
      if (robuq_last_status() == ROBUQ_ERROR_INTERRUPTED) return 130;
      throw UsageError{api_error()};
    }
    if (ext == ".npy") {
      const std::string header = npy_header("|u1", {n, S, S, C});
      write_atomic(a.output, [&](FILE* f) -> std::string {
        if (!write_all(f, header.data(), header.size()) || !write_all(f, px.data(), count)) return std::strerror(errno);
        return "";
      });
      what = "uint8 [" + std::to_string(n) + ", " + std::to_string(S) + ", " + std::to_string(S) + ", " +
             std::to_string(C) + "]";
    } else {
#ifdef ROBUQ_RUN_HAVE_PNG
      const int zoom = a.zoom > 0 ? a.zoom : (128 / S > 1 ? 128 / S : 1);
      int gh = 0, gw = 0;
      const std::vector<uint8_t> grid = make_grid(px, n, S, S, C, zoom, &gh, &gw);
      write_atomic(a.output, [&](FILE* f) { return write_png(f, grid, gh, gw, C); });
      what = std::to_string(gw) + "x" + std::to_string(gh) + " grid";
#endif
    }
  }
  std::printf("wrote %s: %s, %d sample%s, steps %s, cfg-scale %g, seed %llu\n", a.output.c_str(), what.c_str(), n,
              n == 1 ? "" : "s", a.steps.c_str(), cfg, static_cast<unsigned long long>(a.seed));
  return 0;
}

}  // namespace

// A short OpenMP spin before sleeping (GOMP_SPINCOUNT=1000), as `import robuq` sets it for the Python package
// (python/robuq/__init__.py): libgomp's default spin makes sampling many times slower on a machine with other
// busy processes (measured here: 50 steps of the digits model, 2 threads, load 7: 23.6 s spinning, 1.4 s
// passive), while sleeping at once costs a wake-up per parallel region (DiT-S/2 forward 0.031 s vs 0.038 s
// passive on a quiet machine). libgomp reads the variables once, before main(), so when the user has set
// neither OMP_WAIT_POLICY nor GOMP_SPINCOUNT the program sets one and runs itself again (once; an exec failure
// just continues).
static void short_spin_openmp(char** argv) {
  if (std::getenv("ROBUQ_RUN_REEXEC") != nullptr) {  // this is the second run
    ::unsetenv("ROBUQ_RUN_REEXEC");
    return;
  }
  if (std::getenv("OMP_WAIT_POLICY") != nullptr || std::getenv("GOMP_SPINCOUNT") != nullptr) return;
  if (::setenv("GOMP_SPINCOUNT", "1000", 1) != 0 || ::setenv("ROBUQ_RUN_REEXEC", "1", 1) != 0) return;
  ::execv("/proc/self/exe", argv);
}

int main(int argc, char** argv) {
  short_spin_openmp(argv);
  try {
    bool exit_now = false;
    const Args a = parse_args(argc, argv, &exit_now);
    if (exit_now) return 0;
    std::signal(SIGINT, on_sigint);
    const int rc = run(a);
    if (rc == 130) std::fprintf(stderr, "\n%s: interrupted\n", kProg);
    return rc;
  } catch (const UsageError& e) {
    std::fprintf(stderr, "%s: error: %s\n", kProg, e.message.c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", kProg, e.what());
    return 2;
  }
}

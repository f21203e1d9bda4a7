/* robuq.h: the C API of the RobuQ engine (C99; the library is C++ inside). docs/c-api.md has an example.
 *
 *   robuq_engine *eng = robuq_open("model.rq", 0);          // NULL on failure: see robuq_last_error()
 *   int h, w, c;  robuq_image_shape(eng, &h, &w, &c);
 *   int32_t classes[2] = {7, 3};
 *   uint8_t *px = malloc((size_t)2 * h * w * c);
 *   if (robuq_sample(eng, classes, 2, 50, 4.0f, 0, px) != 0) puts(robuq_last_error());
 *   robuq_close(eng);
 *
 * Every function returns ROBUQ_OK (0) on success and a nonzero robuq_status (or NULL) on failure, and then
 * robuq_last_error() says why. No C++ exception leaves the library. The results are those of the Python
 * package: robuq_sample gives the same pixels as robuq.Engine(path).sample(classes, steps=, cfg_scale=,
 * seed=), bit-identical for any thread count.
 *
 * Speed: run the process with GOMP_SPINCOUNT=1000 (or OMP_WAIT_POLICY=PASSIVE) in its environment (libgomp
 * reads it before main()): with OpenMP's default spinning workers, sampling on a machine with other busy
 * processes can be many times slower. `import robuq` and robuq-run set the short spin themselves when neither
 * variable is set.
 *
 * Thread safety: one engine may be used from several threads at once (model calls on one engine are
 * serialised inside; use one engine per thread for parallel sampling). The last-error message is per
 * thread.
 */
#ifndef ROBUQ_H
#define ROBUQ_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(ROBUQ_BUILDING)
#define ROBUQ_API __declspec(dllexport)
#elif defined(_WIN32)
#define ROBUQ_API __declspec(dllimport)
#elif defined(__GNUC__)
#define ROBUQ_API __attribute__((visibility("default")))
#else
#define ROBUQ_API
#endif

/* The library's version, "MAJOR.MINOR.PATCH" (the Python package's version). */
#define ROBUQ_VERSION_MAJOR 0
#define ROBUQ_VERSION_MINOR 1
#define ROBUQ_VERSION_PATCH 0
ROBUQ_API const char* robuq_version(void);

/* Status codes: 0 is success; the others say what kind of failure robuq_last_error() describes. */
typedef enum robuq_status {
  ROBUQ_OK = 0,
  ROBUQ_ERROR_ARGUMENT = 1,    /* a bad argument: NULL pointer, n <= 0, class id out of range, ... */
  ROBUQ_ERROR_IO = 2,          /* the model file cannot be opened or read */
  ROBUQ_ERROR_FORMAT = 3,      /* the model file is not a valid .rq file (the message names the field) */
  ROBUQ_ERROR_MEMORY = 4,      /* out of memory */
  ROBUQ_ERROR_INTERRUPTED = 5, /* the progress callback asked to stop */
  ROBUQ_ERROR_INTERNAL = 6     /* anything else (a bug: please report it with the message) */
} robuq_status;

/* An engine: a validated, memory-mapped .rq model. Opaque. */
typedef struct robuq_engine robuq_engine;

/* Opens and validates a .rq file. threads: worker threads for every call (0: all cores; < 0 is an error).
 * Returns NULL on failure (missing or unreadable file, invalid file, bad threads). */
ROBUQ_API robuq_engine* robuq_open(const char* path, int threads);

/* Frees the engine (NULL is allowed). */
ROBUQ_API void robuq_close(robuq_engine* engine);

/* The message of this thread's last failure ("" if none yet). Valid until this thread's next failing call. */
ROBUQ_API const char* robuq_last_error(void);

/* The status of this thread's last failure (ROBUQ_OK if none yet). */
ROBUQ_API robuq_status robuq_last_status(void);

/* What the model is. */
typedef struct robuq_model_info {
  int input_size;     /* side of a sample (pixels, or latent cells for latent models) */
  int in_channels;    /* channels of a sample */
  int out_channels;   /* channels of a forward output: 2 * in_channels with learned variance */
  int num_classes;    /* class ids 0..num_classes-1 */
  int has_null_class; /* 1: classifier-free guidance possible (the null class id is num_classes) */
  int latent;         /* 1: samples are SD-VAE latents (scaled by 0.18215), not pixels */
  int depth, hidden_size, patch_size, num_heads;
  int threads; /* worker threads the engine uses */
} robuq_model_info;
ROBUQ_API int robuq_model_info_get(const robuq_engine* engine, robuq_model_info* info);

/* The shape of one sample: height, width, channels (robuq_sample writes [n, height, width, channels];
 * for latent models these are the latent's, which robuq_sample_x0 writes as [n, channels, height, width]).
 * Any of the three pointers may be NULL (that value is not written). */
ROBUQ_API int robuq_image_shape(const robuq_engine* engine, int* height, int* width, int* channels);

/* n class-conditional samples (classes[i] in 0..num_classes-1), DDPM with `steps` steps (1..1000, the
 * 1000 training steps respaced evenly), classifier-free guidance cfg_scale (1: none; any other finite
 * value needs a model with the null class), noise seed `seed`; the file's cfg_mode and clip_denoised.
 * Writes uint8 [n, height, width, channels] = round((clamp(x0, -1, 1) + 1) * 127.5), rounding half to even:
 * the pixels of robuq.Engine(path).sample(classes, steps=steps, cfg_scale=cfg_scale, seed=seed).
 * Pixel models only (latent models: robuq_sample_x0). */
ROBUQ_API int robuq_sample(robuq_engine* engine, const int32_t* classes, int n, int steps, float cfg_scale,
                           uint64_t seed, uint8_t* out_nhwc);

/* Checks a respacing spec ("250", "10,10,5", "ddim25") of the 1000 training steps and writes the number of
 * sampling steps it keeps to *count (count may be NULL). */
ROBUQ_API int robuq_steps_count(const char* steps, int* count);

/* All of Engine.sample's settings. Start from robuq_sample_options_init(), then change fields. */
typedef enum robuq_sampler { ROBUQ_SAMPLER_DDPM = 0, ROBUQ_SAMPLER_DDIM = 1 } robuq_sampler;
typedef enum robuq_cfg_mode {
  ROBUQ_CFG_MODE_FILE = 0, /* the file's sampling.cfg_mode ("dit" when it has none) */
  ROBUQ_CFG_MODE_DIT = 1,  /* guide the first min(3, C) eps channels, as official DiT */
  ROBUQ_CFG_MODE_ALL = 2   /* guide every eps channel */
} robuq_cfg_mode;
typedef struct robuq_sample_options {
  const char* steps;     /* respacing: "250", "10,10,5" (sections) or "ddim25"; default "250" */
  double cfg_scale;      /* default 4.0; 1 disables guidance */
  uint64_t seed;         /* default 0 */
  const uint64_t* seeds; /* NULL (default), or n seeds: sample i gets its own noise stream seeds[i] */
  int sampler;           /* robuq_sampler; default ROBUQ_SAMPLER_DDPM */
  double eta;            /* DDIM's noise scale, >= 0; default 0 */
  int cfg_mode;          /* robuq_cfg_mode; default ROBUQ_CFG_MODE_FILE */
  int clip_denoised;     /* -1 (default): the file's; 0 or 1 */
  /* NULL, or called after each step with (steps done, total steps, progress_user); return nonzero to stop
   * (the call then fails with ROBUQ_ERROR_INTERRUPTED). */
  int (*progress)(int done, int total, void* progress_user);
  void* progress_user;
} robuq_sample_options;
ROBUQ_API void robuq_sample_options_init(robuq_sample_options* options);

/* As robuq_sample, with every setting (options NULL: the defaults). Pixel models only. */
ROBUQ_API int robuq_sample_images(robuq_engine* engine, const int32_t* classes, int n,
                                  const robuq_sample_options* options, uint8_t* out_nhwc);

/* The raw x0 of the reverse process, float32 [n, channels, height, width] (NCHW): images in about [-1, 1]
 * for pixel models, the latents the VAE decodes for latent models. options NULL: the defaults. */
ROBUQ_API int robuq_sample_x0(robuq_engine* engine, const int32_t* classes, int n, const robuq_sample_options* options,
                              float* out_nchw);

/* float32 NCHW images in [-1, 1] -> uint8 NHWC, as robuq_sample converts them (NaN -> 0). */
ROBUQ_API int robuq_to_uint8(const float* x_nchw, int n, int channels, int height, int width, uint8_t* out_nhwc);

/* One DiT forward: x float32 [n, in_channels, size, size], t [n] timesteps (trained on 0..999), y [n] labels in
 * 0..num_classes (num_classes: the null class, when the model has one) -> out float32 [n, out_channels,
 * size, size]. */
ROBUQ_API int robuq_forward(robuq_engine* engine, const float* x, int n, const int32_t* t, const int32_t* y,
                            float* out);

#ifdef __cplusplus
}
#endif

#endif /* ROBUQ_H */

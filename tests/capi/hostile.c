/* tests/test_capi.py: the C API under hostile arguments, plus forward and x0 outputs for comparison.
 *   hostile MODEL.rq MISSING.rq GARBAGE.rq OUTDIR
 * Prints one line per failing call, "label<TAB>status<TAB>message"; writes OUTDIR/forward.f32 (Engine.forward
 * of zeros, t = [0, 500], y = [7, null]) and OUTDIR/x0.f32 (ddim25, eta 0.5, cfg_mode all, seeds 5 and 6). */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <robuq.h>

static void report(const char* label, int status) {
  printf("%s\t%d\t%s\n", label, status, status == ROBUQ_OK ? "" : robuq_last_error());
}

static void open_fails(const char* label, const char* path, int threads) {
  robuq_engine* e = robuq_open(path, threads);
  if (e) {
    robuq_close(e);
    report(label, 0);
  } else {
    report(label, (int)robuq_last_status());
  }
}

static int stop_at_two(int done, int total, void* user) {
  (void)total;
  *(int*)user = done;
  return done >= 2;
}

static void* other_thread(void* arg) {
  (void)arg;
  robuq_open(NULL, 0); /* fails on this thread only */
  return NULL;
}

static int save(const char* dir, const char* name, const float* x, size_t count) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE* f = fopen(path, "wb");
  if (!f) return 1;
  fwrite(x, sizeof(float), count, f);
  return fclose(f) != 0;
}

int main(int argc, char** argv) {
  if (argc != 5) return 2;
  uint8_t px[4 * 16 * 16 * 3];
  float x0[4 * 16 * 16 * 3];
  const int32_t good[2] = {7, 3}, high[2] = {7, 10}, negative[1] = {-1};

  open_fails("open_null", NULL, 0);
  open_fails("open_empty", "", 0);
  open_fails("open_missing", argv[2], 0);
  open_fails("open_garbage", argv[3], 0);
  open_fails("open_threads", argv[1], -1);

  robuq_engine* e = robuq_open(argv[1], 1);
  if (!e) {
    printf("open\t%d\t%s\n", (int)robuq_last_status(), robuq_last_error());
    return 1;
  }
  int h = 0, w = 0, c = 0;
  report("shape", robuq_image_shape(e, &h, &w, &c));
  printf("shape_value\t%d\t%dx%dx%d\n", 0, h, w, c);
  report("shape_null_engine", robuq_image_shape(NULL, &h, &w, &c));
  report("info_null", robuq_model_info_get(e, NULL));

  report("sample_null_engine", robuq_sample(NULL, good, 2, 5, 4.0f, 0, px));
  report("sample_null_classes", robuq_sample(e, NULL, 2, 5, 4.0f, 0, px));
  report("sample_null_out", robuq_sample(e, good, 2, 5, 4.0f, 0, NULL));
  report("sample_n0", robuq_sample(e, good, 0, 5, 4.0f, 0, px));
  report("sample_nneg", robuq_sample(e, good, -3, 5, 4.0f, 0, px));
  report("sample_class_high", robuq_sample(e, high, 2, 5, 4.0f, 0, px));
  report("sample_class_neg", robuq_sample(e, negative, 1, 5, 4.0f, 0, px));
  report("sample_steps0", robuq_sample(e, good, 2, 0, 4.0f, 0, px));
  report("sample_steps_neg", robuq_sample(e, good, 2, -5, 4.0f, 0, px));
  report("sample_steps_1001", robuq_sample(e, good, 2, 1001, 4.0f, 0, px));
  report("sample_cfg_nan", robuq_sample(e, good, 2, 5, (float)NAN, 0, px));
  report("sample_cfg_inf", robuq_sample(e, good, 2, 5, (float)INFINITY, 0, px));

  robuq_sample_options o;
  robuq_sample_options_init(&o);
  o.steps = "5";
  o.sampler = 7;
  report("options_sampler", robuq_sample_images(e, good, 2, &o, px));
  robuq_sample_options_init(&o);
  o.cfg_mode = 9;
  report("options_cfg_mode", robuq_sample_images(e, good, 2, &o, px));
  robuq_sample_options_init(&o);
  o.clip_denoised = 5;
  report("options_clip", robuq_sample_images(e, good, 2, &o, px));
  robuq_sample_options_init(&o);
  o.eta = -1.0;
  report("options_eta_neg", robuq_sample_images(e, good, 2, &o, px));
  o.eta = NAN;
  report("options_eta_nan", robuq_sample_images(e, good, 2, &o, px));
  robuq_sample_options_init(&o);
  o.steps = NULL;
  report("options_steps_null", robuq_sample_images(e, good, 2, &o, px));
  o.steps = "";
  report("options_steps_empty", robuq_sample_images(e, good, 2, &o, px));
  o.steps = "abc";
  report("options_steps_abc", robuq_sample_images(e, good, 2, &o, px));
  o.steps = "0";
  report("options_steps_zero", robuq_sample_images(e, good, 2, &o, px));
  robuq_sample_options_init(&o);
  int seen = 0;
  o.steps = "10";
  o.progress = stop_at_two;
  o.progress_user = &seen;
  report("options_stopped", robuq_sample_images(e, good, 2, &o, px));
  printf("stopped_after\t0\t%d\n", seen);

  float fx[2 * 16 * 16], fout[2 * 2 * 16 * 16];
  memset(fx, 0, sizeof fx);
  const int32_t t[2] = {0, 500}, y[2] = {7, 10}, ybad[2] = {7, 11};
  report("forward_null_x", robuq_forward(e, NULL, 2, t, y, fout));
  report("forward_n0", robuq_forward(e, fx, 0, t, y, fout));
  report("forward_label", robuq_forward(e, fx, 2, t, ybad, fout));
  report("to_uint8_null", robuq_to_uint8(NULL, 1, 1, 1, 1, px));

  /* the last error is per thread: a failure on another thread leaves this one's message alone */
  robuq_sample(e, good, 0, 5, 4.0f, 0, px);
  pthread_t th;
  pthread_create(&th, NULL, other_thread, NULL);
  pthread_join(th, NULL);
  printf("thread_local\t0\t%s\n", robuq_last_error());

  report("forward", robuq_forward(e, fx, 2, t, y, fout));
  robuq_sample_options_init(&o);
  const uint64_t seeds[2] = {5, 6};
  o.steps = "ddim25";
  o.sampler = ROBUQ_SAMPLER_DDIM;
  o.eta = 0.5;
  o.cfg_mode = ROBUQ_CFG_MODE_ALL;
  o.seeds = seeds;
  report("x0", robuq_sample_x0(e, good, 2, &o, x0));
  robuq_close(e);
  robuq_close(NULL);
  if (save(argv[4], "forward.f32", fout, 2 * 2 * 16 * 16) || save(argv[4], "x0.f32", x0, 2 * 16 * 16)) return 1;
  return 0;
}

/* lf_runtime.c: libFuzzer over lmrun's loaders, one target per -DTARGET:
 *   BUNDLE  an input is a bundle: manifest.txt, a NUL byte, rank0.sched
 *   CKPT    an input is a checkpoint shard (its checksum made to fit)
 *           loaded into the bundle named by $LMC_FUZZ_BUNDLE
 *   DATA    an input is a data file, as text and as a .bin token shard
 *   HF      an input is a model.safetensors imported into the bundle of
 *           $LMC_FUZZ_BUNDLE (the Hugging Face reader of --init-hf)
 * Every input must load or end in lmrun's error: the harness catches the
 * error (rt_die_hook) and goes on; a crash or sanitizer report is a bug. */
#include "lmrt.h"
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static jmp_buf on_error;
static char dir[64];

static void caught(const char *msg) {
  (void)msg;
  longjmp(on_error, 1);
}

/* An error longjmps out of a loader that had files open (lmrun itself
 * exits): the descriptors an input opened are closed after it. */
static int lowest_free(void) {
  int fd = dup(0);
  if (fd >= 0) close(fd);
  return fd;
}

static void close_from(int base) {
  for (int fd = base; base >= 0 && fd < base + 256; fd++) close(fd);
}

static void put(const char *name, const unsigned char *p, size_t n) {
  char path[128];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (!f) abort();
  if (n) fwrite(p, 1, n, f);
  fclose(f);
}

static void cleanup(void) {
  const char *files[] = {"manifest.txt", "rank0.sched", "step/rank0.ckpt", "data.txt", "data.bin", "model.safetensors",
                         "step", ""};
  char path[128];
  for (int i = 0; i < 8; i++) snprintf(path, sizeof path, "%s/%s", dir, files[i]), i < 6 ? unlink(path) : rmdir(path);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  atexit(cleanup);
  struct stat st;   /* files in memory when the machine has /dev/shm */
  snprintf(dir, sizeof dir, "%s/lmc-lf-%d", stat("/dev/shm", &st) == 0 ? "/dev/shm" : "/tmp", (int)getpid());
  mkdir(dir, 0777);
  char sub[96];
  snprintf(sub, sizeof sub, "%s/step", dir);
  mkdir(sub, 0777);
  rt_die_hook = caught;   /* before lmrun prints its message: millions of them */
  return 0;
}

#if defined(TARGET_BUNDLE)
int LLVMFuzzerTestOneInput(const unsigned char *data, size_t n) {
  const unsigned char *nul = memchr(data, 0, n);
  size_t m = nul ? (size_t)(nul - data) : n;
  put("manifest.txt", data, m);
  put("rank0.sched", nul ? nul + 1 : data, nul ? n - m - 1 : 0);
  static Bundle *volatile b;
  int base = lowest_free();
  if (!setjmp(on_error)) {
    b = bundle_load(dir, 0);
    bundle_free(b);
  } else bundle_abandon();
  close_from(base);
  return 0;
}
#elif defined(TARGET_CKPT) || defined(TARGET_HF)
/* the small model of $LMC_FUZZ_BUNDLE, made once, that inputs load into */
static Run *small_run(void) {
  static Run *run;
  if (!run) {
    const char *bdir = getenv("LMC_FUZZ_BUNDLE");
    if (!bdir) abort();
    run = rt_new(bundle_load(bdir, 0), cpu_backend(false));
  }
  return run;
}
#endif

#if defined(TARGET_CKPT)
int LLVMFuzzerTestOneInput(const unsigned char *data, size_t n) {
  Run *run = small_run();
  /* sealed with a fresh checksum, so mutations reach the header parser
   * instead of all stopping at the checksum (tested on its own) */
  unsigned char *sealed = malloc(n + 1);
  memcpy(sealed, data, n);
  if (n >= 20) {
    uint64_t sum = ckpt_checksum(sealed, n);
    memcpy(sealed + n - 8, &sum, 8);
  }
  put("step/rank0.ckpt", sealed, n);
  free(sealed);
  char path[96];
  snprintf(path, sizeof path, "%s/step", dir);
  CkptInfo info;
  int base = lowest_free();
  if (!setjmp(on_error)) ckpt_load(run, path, &info);
  else ckpt_abandon();
  close_from(base);
  return 0;
}
#elif defined(TARGET_HF)
int LLVMFuzzerTestOneInput(const unsigned char *data, size_t n) {
  put("model.safetensors", data, n);
  int base = lowest_free();
  if (!setjmp(on_error)) hf_import(small_run(), dir);
  else hf_abandon();
  close_from(base);
  return 0;
}
#elif defined(TARGET_DATA)
int LLVMFuzzerTestOneInput(const unsigned char *data, size_t n) {
  const char *names[] = {"data.txt", "data.bin"};
  for (int i = 0; i < 2; i++) {
    put(names[i], data, n);
    char path[96];
    snprintf(path, sizeof path, "%s/%s", dir, names[i]);
    static Data *volatile d;
    int base = lowest_free();
    if (!setjmp(on_error)) {
      d = data_load(path, 50304, 0.1, 17);
      int32_t rows[2 * 17];
      data_train_batch(d, 1, 3, 2, 16, rows);
      data_val_batch(d, 0, 1, 2, 16, rows);
      data_free(d);
    } else data_abandon();
    close_from(base);
  }
  return 0;
}
#endif

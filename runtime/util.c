/* util.c: errors, allocation, time, hashing. A runtime error prints
 * "lmrun: error: ..." and exits 1: every bad input ends the same way. */
#include "lmrt.h"
#include <stdarg.h>
#include <stdlib.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

const char *rt_op_names[NUM_OPS] = {
#define OP(e, s, ni, no, c) s,
#include "ops.def"
#undef OP
};

void (*rt_die_hook)(const char *msg);
void (*rt_die_first)(void);

void rt_die(const char *fmt, ...) {
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fflush(stdout);
  if (rt_die_first) rt_die_first();
  if (rt_die_hook) rt_die_hook(msg);   /* under MPI: reports once and ends every rank */
  fprintf(stderr, "lmrun: error: %s\n", msg);
  exit(1);
}

void *rt_xmalloc(size_t n) {
  void *p = calloc(1, n ? n : 1);
  if (!p) rt_die("out of memory allocating %zu bytes", n);
  return p;
}

double rt_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

const char *rt_bytes(char buf[32], double bytes) {
  if (bytes < (double)(1 << 30)) snprintf(buf, 32, "%.1f MiB", bytes / (1 << 20));
  else snprintf(buf, 32, "%.2f GiB", bytes / (1 << 30));
  return buf;
}

/* A GPU's dense bf16 peak in TFLOP/s, by the name its driver gives (the
 * vendor's data sheets; the first match counts); 0 when unknown. */
double rt_peak_tflops(const char *device) {
  static const struct { const char *name; double tflops; } peaks[] = {
      {"GH200", 989}, {"H200", 989}, {"H100 PCIe", 756}, {"H100 NVL", 835}, {"H100", 989}, {"H800", 989},
      {"B200", 2250}, {"B100", 1750}, {"A100", 312}, {"A800", 312}, {"L40S", 362}, {"L40", 181}, {"A10G", 70},
  };
  for (size_t i = 0; device && i < sizeof peaks / sizeof *peaks; i++)
    if (strstr(device, peaks[i].name)) return peaks[i].tflops;
  return 0;
}

uint64_t rt_fnv1a(const void *p, size_t n, uint64_t h) {
  const unsigned char *c = p;
  for (size_t i = 0; i < n; i++) h = (h ^ c[i]) * 0x100000001b3ULL;
  return h;
}

/* mkdir -p: 0, or -1 with errno from the part that failed. */
int rt_mkdirs(const char *path) {
  char p[1200];
  snprintf(p, sizeof p, "%s", path);
  for (char *c = p + 1; *c; c++)
    if (*c == '/') {
      *c = 0;
      if (mkdir(p, 0777) != 0 && errno != EEXIST) return -1;
      *c = '/';
    }
  return mkdir(p, 0777) != 0 && errno != EEXIST ? -1 : 0;
}

int matmul_precision_of(const char *name) {
  static const char *names[] = {"highest", "high", "medium"};
  for (int i = 0; i < 3; i++)
    if (!strcmp(name, names[i])) return i;
  return -1;
}

/* order[] = the positions 0..n-1 of id[] sorted by id, stable (ties in
 * position order): a counting sort, O(n + the largest id), for the CUDA
 * backend's embedding backward, which sums each id's run of rows. qsort
 * had taken 0.65 ms for GPT-2's 8,192 ids and 1.4 ms for llama-large's
 * 16,384 on this project's machine, each step, on the host while the GPU
 * waited for the step's first launch (GPT-2 sorted its positions too;
 * run 16's H200 measured its step 1.0 ms, 4%, over its work on the
 * device); this takes 0.06 ms. Ids are
 * non-negative (the loader checks them against the vocabulary). One
 * thread's (its counts are kept from call to call). */
void rt_order_by_id(int32_t *order, const int32_t *id, int64_t n) {
  static int32_t *at;   /* (n < 2^31: a microbatch's tokens) */
  static int64_t cap;
  int32_t hi = 0;
  for (int64_t i = 0; i < n; i++) {
    if (id[i] < 0) rt_die("token id %d at %lld is negative", id[i], (long long)i);
    hi = id[i] > hi ? id[i] : hi;
  }
  if (hi + 1 > cap) {
    free(at);
    cap = (int64_t)hi + 1, at = rt_xmalloc(cap * sizeof *at);
  }
  memset(at, 0, (hi + 1) * sizeof *at);
  for (int64_t i = 0; i < n; i++) at[id[i]]++;
  for (int32_t v = 0, sum = 0; v <= hi; v++) {
    int32_t c = at[v];
    at[v] = sum, sum += c;
  }
  for (int64_t i = 0; i < n; i++) order[at[id[i]]++] = (int32_t)i;
}

/* cpu.c: the CPU backend. The kernels in cpu_kernels.inc are compiled
 * twice, for float and for double (--f64, used by gradient checks); GEMMs
 * go through CBLAS (OpenBLAS). Memory is plain host memory. */
#include "lmrt.h"
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Below this many elements a kernel runs on one thread: waking the pool
 * costs more than it saves. */
#define PAR_MIN 32768

static void *cpu_alloc(size_t bytes) {
  void *p = NULL;
  if (posix_memalign(&p, 64, bytes ? bytes : 64)) rt_die("out of memory allocating %zu bytes", bytes);
  memset(p, 0, bytes);
  return p;
}

static void cpu_release(void *p) { free(p); }

static void cpu_allreduce_f32(void *x, int64_t n, int axis, int op) { comm_allreduce(x, n, 4, axis, op); }
static void cpu_allreduce_f64(void *x, int64_t n, int axis, int op) { comm_allreduce(x, n, 8, axis, op); }

/* An overlapped all-reduce done at once: the CPU computes in order, so it
 * finishes where the schedule queues it, which also checks that the
 * gradients in its bucket are final there. */
static bool cpu_allreduce_now_f32(void *x, int64_t n, int axis) { return comm_allreduce(x, n, 4, axis, 0), true; }
static bool cpu_allreduce_now_f64(void *x, int64_t n, int axis) { return comm_allreduce(x, n, 8, axis, 0), true; }

static void cpu_send(const void *x, int64_t n, int elem, int peer, int tag, int axis, int slot) {
  comm_isend(x, n, elem, peer, tag, axis, slot);
}
static void cpu_recv(void *x, int64_t n, int elem, int peer, int tag, int axis) { comm_recv(x, n, elem, peer, tag, axis); }

static void cpu_alltoallv(const void *s, const int64_t *sc, const int64_t *sd, void *r, const int64_t *rc,
                          const int64_t *rd, int elem, int axis) {
  comm_alltoallv(s, sc, sd, r, rc, rd, elem, axis);
}

static void cpu_upload_ids(void *dst, const int32_t *src, int64_t n) {
  memcpy(dst, src, n * sizeof(int32_t));
}

/* glibc's vector math library (libmvec) has SIMD versions of expf; this
 * declaration lets the vectoriser call them from the float kernels. */
#if defined(__x86_64__) && defined(__GLIBC__)
float expf(float) __attribute__((simd("notinbranch")));
#endif

#define R float
#define SFX f32
#define NAME "cpu-f32"
#define GEMM cblas_sgemm
#define SQRT sqrtf
#define EXP expf
#include "cpu_kernels.inc"
#undef R
#undef SFX
#undef NAME
#undef GEMM
#undef SQRT
#undef EXP

#define R double
#define SFX f64
#define NAME "cpu-f64"
#define GEMM cblas_dgemm
#define SQRT sqrt
#define EXP exp
#include "cpu_kernels.inc"
#undef R
#undef SFX
#undef NAME
#undef GEMM
#undef SQRT
#undef EXP

/* The best sgemm rate over a few square sizes, in FLOP/s. */
static double cpu_gemm_peak(void) {
  double best = 0;
  int sizes[] = {512, 1024, 2048};
  for (int s = 0; s < 3; s++) {
    int n = sizes[s];
    float *a = rt_xmalloc((size_t)n * n * 4), *b = rt_xmalloc((size_t)n * n * 4), *c = rt_xmalloc((size_t)n * n * 4);
    for (size_t i = 0; i < (size_t)n * n; i++) a[i] = (float)rng_normal(1, i), b[i] = (float)rng_normal(2, i);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1, a, n, b, n, 0, c, n);
    int reps = 2048 / n * 2;
    double t = rt_now();
    for (int r = 0; r < reps; r++)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1, a, n, b, n, 0, c, n);
    double rate = 2.0 * n * n * (double)n * reps / (rt_now() - t);
    if (rate > best) best = rate;
    free(a), free(b), free(c);
  }
  return best;
}

static void cpu_sync(void) {}

/* The best memcpy rate of 64 MiB (bytes read plus written, a second). */
static double cpu_copy_peak(void) {
  size_t n = 64 << 20;
  char *a = rt_xmalloc(n), *b = rt_xmalloc(n);
  memset(a, 1, n), memcpy(b, a, n);
  double best = 0;
  for (int r = 0; r < 5; r++) {
    double t = rt_now();
    memcpy(r % 2 ? a : b, r % 2 ? b : a, n);
    double rate = 2.0 * n / (rt_now() - t);
    if (rate > best) best = rate;
  }
  free(a), free(b);
  return best;
}

Backend *cpu_backend(bool f64) {
  Backend *b = f64 ? &backend_f64 : &backend_f32;
  b->alloc = cpu_alloc, b->release = cpu_release;
  b->allreduce = f64 ? cpu_allreduce_f64 : cpu_allreduce_f32;
  b->allreduce_async = f64 ? cpu_allreduce_now_f64 : cpu_allreduce_now_f32;
  b->send = cpu_send, b->recv = cpu_recv;
  b->wait_sends = comm_wait_sends;
  b->alltoallv = cpu_alltoallv;
  b->gemm_peak = cpu_gemm_peak, b->copy_peak = cpu_copy_peak, b->sync = cpu_sync;
  return b;
}

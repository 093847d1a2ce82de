/* bench_train.c: CPU training throughput of one compiled bundle.
 * Prints ms/step, tokens/s, the GEMM FLOP/s the step achieved, that over
 * the sgemm FLOP/s this same program measures on this machine right
 * before, and peak RSS against the memory the compiler planned.
 * Usage: bench_train BUNDLE [STEPS] */
#include "lmrt.h"
#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

/* Best sgemm rate over a few square sizes, C = A B, in FLOP/s. */
static double sgemm_peak(void) {
  double best = 0;
  int sizes[] = {512, 1024, 2048};
  for (int s = 0; s < 3; s++) {
    int n = sizes[s];
    float *a = rt_xmalloc((size_t)n * n * 4), *b = rt_xmalloc((size_t)n * n * 4),
          *c = rt_xmalloc((size_t)n * n * 4);
    for (size_t i = 0; i < (size_t)n * n; i++) a[i] = (float)rng_normal(1, i), b[i] = (float)rng_normal(2, i);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1, a, n, b, n, 0, c, n);
    int reps = 2048 / n * 2;
    double t = rt_now();
    for (int r = 0; r < reps; r++)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1, a, n, b, n, 0, c, n);
    double rate = 2.0 * n * n * (double)n * reps / (rt_now() - t);
    printf("  sgemm %4d x %4d x %4d: %7.1f GFLOP/s\n", n, n, n, rate / 1e9);
    if (rate > best) best = rate;
    free(a), free(b), free(c);
  }
  return best;
}

/* GEMM FLOPs of one pass of a program (matmuls and attention's GEMMs). */
static double program_flops(const RtInst *p, int n) {
  double f = 0;
  for (int i = 0; i < n; i++) {
    const RtInst *x = &p[i];
    if (x->op == OP_MATMUL) f += 2.0 * x->m * x->n * x->k;
    if (x->op == OP_ATTENTION) f += 2 * 2.0 * x->b * x->h * x->t * x->t * x->k;
    if (x->op == OP_ATTENTION_BWD) f += 5 * 2.0 * x->b * x->h * x->t * x->t * x->k;   /* P recomputed */
  }
  return f;
}

int main(int argc, char **argv) {
  if (argc < 2) rt_die("usage: bench_train BUNDLE [STEPS]");
  int steps = argc > 2 ? atoi(argv[2]) : 5;
  Bundle *b = bundle_load(argv[1], 0);
  printf("%s: %.2fM params, batch %lld x seq %lld, vocab %lld\n", b->model, b->nparam_elems / 1e6,
         (long long)b->train.batch, (long long)b->T, (long long)b->vocab);
  double peak = sgemm_peak();
  Run *r = rt_new(b, cpu_backend(false));
  rt_init_params(r, 1);
  int64_t rows = b->B * b->train.microbatches, T = b->T;
  int32_t *tok = rt_xmalloc(rows * (T + 1) * sizeof(int32_t));
  for (int64_t i = 0; i < rows * (T + 1); i++) tok[i] = (int32_t)(rng_hash(5, i, 0) % b->vocab);
  double gn, loss = rt_step(r, tok, 1e-4, &gn);     /* warm-up step */
  double t = rt_now();
  for (int s = 0; s < steps; s++) loss = rt_step(r, tok, 1e-4, &gn);
  double dt = (rt_now() - t) / steps;
  r->op_time = rt_xmalloc((NUM_OPS + 1) * sizeof(double));   /* one profiled step */
  rt_step(r, tok, 1e-4, &gn);
  printf("  profile of one step:");
  for (int i = 0; i <= NUM_OPS; i++)
    if (r->op_time[i] > 0.002 * dt)
      printf(" %s %.1f%%", i < NUM_OPS ? rt_op_names[i] : "optimizer", 100 * r->op_time[i] / dt);
  printf("\n");
  free(r->op_time);
  r->op_time = NULL;
  double flops = (program_flops(b->fwd, b->nfwd) + program_flops(b->bwd, b->nbwd)) * b->train.microbatches;
  double toks = (double)b->train.batch * T;
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  double planned = 0;
  for (int i = 0; i < NUM_REGIONS; i++) planned += b->region[i] * (i == R_INPUT ? 4.0 : 4.0);
  planned += 2.0 * b->region[R_PARAM] * 4;                /* Adam m and v */
  printf("  step: %.1f ms | %.0f tokens/s | %.2f GFLOP/step | %.1f GFLOP/s achieved | %.1f%% of sgemm peak %.1f GFLOP/s\n",
         dt * 1e3, toks / dt, flops / 1e9, flops / dt / 1e9, 100 * flops / dt / peak, peak / 1e9);
  printf("  memory: peak RSS %.1f MiB | planned %.1f MiB (activations %.1f, params+grads+adam %.1f) | loss %.4f\n",
         ru.ru_maxrss / 1024.0, planned / 1048576, b->region[R_ACT] * 4.0 / 1048576,
         b->region[R_PARAM] * 16.0 / 1048576, loss);
  free(tok);
  rt_free(r);
  bundle_free(b);
  return 0;
}

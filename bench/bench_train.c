/* bench_train.c: CPU training throughput of one compiled bundle.
 * Prints ms/step, tokens/s, the GEMM FLOP/s the step achieved, that over
 * the GEMM rate the same backend reaches in this run (sgemm on the CPU,
 * cuBLASLt on a GPU), and peak RSS against the memory the compiler planned.
 * Usage: bench_train BUNDLE [STEPS] [cpu|cuda|cuda-emu], the CUDA ones with
 * -high or -medium for that matmul precision (lmrun --matmul-precision) */
#include "lmrt.h"
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

static bool is_gemm(int op) {
  return op == OP_MATMUL || op == OP_MATMUL_BIAS || op == OP_MATMUL_BIAS_GELU || op == OP_MATMUL_BGRAD ||
         op == OP_MATMUL_DGELU;   /* (DGELU's went uncounted in the achieved rate through run 16) */
}


/* The profiled step's GEMMs by kind and shape, the longest first: how
 * many ran, their device time and rate (t: seconds per instruction of the
 * forward, then the backward program, over the step's microbatches) */
static void gemm_table(const Bundle *b, const double *t) {
  enum { MAXG = 64 };
  struct { int op; int64_t m, n, k; int count; double s; } g[MAXG];
  int ng = 0, n = b->nfwd + b->nbwd;
  for (int i = 0; i < n; i++) {
    const RtInst *x = i < b->nfwd ? &b->fwd[i] : &b->bwd[i - b->nfwd];
    if (!is_gemm(x->op)) continue;
    int j = 0;
    while (j < ng && !(g[j].op == x->op && g[j].m == x->m && g[j].n == x->n && g[j].k == x->k)) j++;
    if (j == ng && ng == MAXG) continue;
    if (j == ng) g[ng++] = (typeof(g[0])){x->op, x->m, x->n, x->k, 0, 0};
    g[j].count += (int)b->train.microbatches, g[j].s += t[i];
  }
  for (int a = 0; a < ng; a++)   /* the longest first */
    for (int c = a + 1; c < ng; c++)
      if (g[c].s > g[a].s) {
        typeof(g[0]) tmp = g[a];
        g[a] = g[c], g[c] = tmp;
      }
  printf("  GEMMs of that step by shape (m x n x k: runs, device time, rate):");
  for (int a = 0; a < ng; a++)
    printf("%s %s %lld x %lld x %lld: %d, %.3f ms, %.1f TFLOP/s", a ? ";" : "", rt_op_names[g[a].op], (long long)g[a].m,
           (long long)g[a].n, (long long)g[a].k, g[a].count, g[a].s * 1e3,
           g[a].s > 0 ? 2.0 * g[a].m * g[a].n * g[a].k * g[a].count / g[a].s / 1e12 : 0.0);
  printf("\n");
}

/* GEMM FLOPs of one pass of a program (matmuls and attention's GEMMs). */
static double program_flops(const RtInst *p, int n) {
  double f = 0;
  for (int i = 0; i < n; i++) {
    const RtInst *x = &p[i];
    if (is_gemm(x->op)) f += 2.0 * x->m * x->n * x->k;
    if (x->op == OP_ATTENTION) f += 2 * 2.0 * x->b * x->h * x->t * x->t * x->k;
    if (x->op == OP_ATTENTION_BWD) f += 5 * 2.0 * x->b * x->h * x->t * x->t * x->k;   /* P recomputed */
    if (x->op == OP_HEAD_XENT || x->op == OP_HEAD_DL) f += 2.0 * x->m * x->n * x->k;
    if (x->op == OP_HEAD_XENT_BWD) f += 3 * 2.0 * x->m * x->n * x->k;   /* logits recomputed */
    bool two = x->op == OP_MOE_UP || x->op == OP_MOE_UP_BWD;   /* an expert's GEMMs: gate and up, or one */
    bool bwd = x->op == OP_MOE_UP_BWD || x->op == OP_MOE_UP_GELU_BWD || x->op == OP_MOE_DOWN_BWD;
    if (two || bwd || x->op == OP_MOE_UP_GELU || x->op == OP_MOE_DOWN) {
      double rows = (double)x->m / ((double)x->seg / (double)x->e);   /* at balanced routing: this rank's share */
      f += 2.0 * rows * x->n * x->d * (two ? 2 : 1) * (bwd ? 2 : 1);
    }
  }
  return f;
}

/* Model FLOPs of a step, as the PyTorch anchors count them: 6 x the
 * parameters outside input embeddings (a table only an embed reads) x
 * tokens, plus causal attention, 6 b h t^2 k a layer (forward and
 * backward). */
static double model_flops(const Bundle *b) {
  double params = (double)b->nparam_active, attn = 0;   /* MoE: the experts a token runs */
  for (int i = 0; i < b->nfwd; i++) {
    const RtInst *x = &b->fwd[i];
    if (x->op == OP_ATTENTION) attn += 6.0 * x->b * x->h * x->t * x->t * x->k;
    if (x->op != OP_EMBED) continue;
    bool other = false;
    for (int j = 0; j < b->nfwd; j++)
      for (int k = 0; k < RT_MAX_IN; k++) other |= b->fwd[j].op != OP_EMBED && b->fwd[j].in[k] == x->in[1];
    if (!other) params -= (double)b->vals[x->in[1]].n;
  }
  return (6 * params * b->B * b->T + attn) * b->train.microbatches;
}

int main(int argc, char **argv) {
  if (argc < 2) rt_die("usage: bench_train BUNDLE [STEPS [cpu|cuda[-high|-medium]|cuda-emu[-high|-medium]]]");
  int steps = argc > 2 ? atoi(argv[2]) : 5;
  if (steps < 1) steps = 1;
  Bundle *b = bundle_load(argv[1], 0);
  Backend *be = cpu_backend(false);
  char why[256];
  const char *kind = argc > 3 ? argv[3] : "cpu", *dash = strrchr(kind, '-');
  bool emu = !strncmp(kind, "cuda-emu", 8), cuda = !emu && !strncmp(kind, "cuda", 4);
  int mp = dash && (cuda || emu) ? matmul_precision_of(dash + 1) : -1;
  cuda_matmul_precision(mp >= 0 ? mp : MP_HIGHEST);   /* plain cuda: fp32 products */
  if (mp < 0 && strcmp(kind, "cpu") && strcmp(kind, "cuda") && strcmp(kind, "cuda-emu"))
    rt_die("unknown backend '%s'; use cpu, cuda or cuda-emu, the CUDA ones with -high or -medium", kind);
  if ((cuda || emu) && !(be = cuda_backend(argv[1], emu, why, sizeof why))) rt_die("no CUDA backend: %s", why);
  if (cuda || emu) {
    double jit;
    bool cold;
    int programs, threads;
    bool saved;
    cuda_jit_time(&jit, &cold, &programs, &threads, &saved);
    if (cold) printf("  NVRTC: the bundle's kernels compiled in %.3f s (cold: %d programs on %d threads)\n", jit, programs, threads);
    else printf("  NVRTC: the bundle's kernels loaded from the cubin cache in %.3f s (warm)\n", jit);
  }
  printf("%s: %.2fM params, batch %lld x seq %lld, vocab %lld\n", b->model, b->nparam_elems / 1e6,
         (long long)b->train.batch, (long long)b->T, (long long)b->vocab);
  double peak = be->gemm_peak();
  printf("  %s: GEMM peak measured here %.1f GFLOP/s\n", be->name, peak / 1e9);
  Run *r = rt_new(b, be);
  rt_init_params(r, 1);
  int64_t rows = b->B * b->train.microbatches, T = b->T;
  int32_t *tok = rt_xmalloc(rows * (T + 1) * sizeof(int32_t));
  for (int64_t i = 0; i < rows * (T + 1); i++) tok[i] = (int32_t)(rng_hash(5, i, 0) % b->vocab);
  double gn, loss = rt_step(r, tok, 1e-4, &gn);     /* warm-up step */
  be->sync();
  /* the timed steps as training runs them: each queued before the one
   * before it ends where the backend can (rt_step_begin) */
  bool ahead = rt_can_ahead(r);
  double t = rt_now(), queue = 0;   /* (the host's time queuing steps: near a step's, the host bounds it) */
  for (int s = 0; s < steps; s++) {
    if (s && !ahead) loss = rt_step_finish(r, &gn);
    double q = rt_now();
    rt_step_begin(r, tok, 1e-4);
    queue += rt_now() - q;
    if (s && ahead) loss = rt_step_finish(r, &gn);
  }
  loss = rt_step_finish(r, &gn);
  be->sync();
  double dt = (rt_now() - t) / steps;
  queue /= steps;
  int ninst = b->nfwd + b->nbwd;
  r->op_time = rt_xmalloc((NUM_OPS + 1 + ninst) * sizeof(double));   /* one profiled step */
  r->inst_time = be->time_read != NULL;   /* (each instruction's time, booked under its kind below) */
  double tp = rt_now();
  rt_step(r, tok, 1e-4, &gn);
  be->sync();
  tp = rt_now() - tp;
  double busy = 0;   /* with device events: each op's own time on the GPU, launched one by one */
  if (be->time_read) be->time_read(r->op_time);
  double *inst = r->op_time + NUM_OPS + 1;
  for (int i = 0; r->inst_time && i < ninst; i++)
    r->op_time[rt_op_kind(i < b->nfwd ? &b->fwd[i] : &b->bwd[i - b->nfwd])] += inst[i];
  for (int i = 0; i <= NUM_OPS; i++) busy += r->op_time[i];
  if (be->time_read)
    printf("  profile of one step (each op's time on the device, %.1f ms in all; the step launched op by op took "
           "%.1f ms):", busy * 1e3, tp * 1e3);
  else printf("  profile of one step:");
  double of = be->time_read ? busy : tp;
  for (int i = 0; i <= NUM_OPS; i++)
    if (r->op_time[i] > 0.002 * of)
      printf(" %s %.1f%%", i < NUM_OPS ? rt_op_names[i] : "optimizer", 100 * r->op_time[i] / of);
  printf("\n");
  if (r->inst_time) gemm_table(b, inst);
  free(r->op_time);
  r->op_time = NULL, r->inst_time = false;
  double flops = (program_flops(b->fwd, b->nfwd) + program_flops(b->bwd, b->nbwd)) * b->train.microbatches;
  double toks = (double)b->train.batch * T;
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  double act = b->slots * (rt_slot_bytes(r) - 4.0 * b->region[R_INPUT]);   /* the byte plan under bf16 storage */
  double planned = act + 4.0 * (b->slots * b->region[R_INPUT] + b->region[R_STATE]) + rt_state_bytes(r);
  printf("  step: %.1f ms | %.0f tokens/s | %.2f GFLOP/step | %.1f GFLOP/s achieved | %.1f%% of GEMM peak %.1f GFLOP/s%s%s\n",
         dt * 1e3, toks / dt, flops / 1e9, flops / dt / 1e9, 100 * flops / dt / peak, peak / 1e9,
         ahead ? " | each step queued before the last ended" : "",
         cuda_side_used() ? " | weight gradients beside (second stream)" : "");
  if (cuda || emu)
    printf("  host: %.2f ms to queue a step (%s)\n", queue * 1e3,
           ahead ? "beside the step before: the GPU waits on it only if it nears a step's time"
                 : "the GPU waiting: the step before was waited for");
  double mf = model_flops(b);
  if (cuda || emu)
    printf("  model FLOPs (6 x non-embedding params x tokens + causal attention): %.2f TFLOP/step, %.1f TFLOP/s, "
           "MFU %.1f%% of 989 TFLOP/s (dense bf16, H100/H200)\n", mf / 1e12, mf / dt / 1e12, 100 * mf / dt / 989e12);
  if (be->peak_bytes)
    printf("  memory: device peak %.1f MiB (lmc's allocations, cuBLASLt workspace and scratch included) | ",
           be->peak_bytes() / 1048576.0);
  else printf("  memory: peak RSS %.1f MiB | ", ru.ru_maxrss / 1024.0);
  printf("planned %.1f MiB (activations %.1f, params+grads+adam+bf16 copies %.1f) | loss %.4f\n", planned / 1048576,
         act / 1048576, rt_state_bytes(r) / 1048576, loss);
  free(tok);
  rt_free(r);
  bundle_free(b);
  return 0;
}

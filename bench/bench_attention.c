/* bench_attention.c: a bundle's attention alone on the CUDA backend, its
 * forward and backward kernels (flash attention, lmc's own), timed over
 * REPS calls each after a warm-up, at the bundle's shape and storage
 * (bf16 under `precision = bf16`) and --matmul-precision medium (the
 * tensor-core kernels). Prints each one's time and TFLOP/s: the forward's
 * causal 2 b h t^2 k FLOPs, the backward's 2.5 times that (the count
 * FlashAttention's benchmarks use; lmc's two backward kernels recompute
 * the scores, 3.5 times the forward's products in all). bench/gpu.sh puts
 * PyTorch's scaled_dot_product_attention at the same shape beside it.
 * Usage: bench_attention BUNDLE [REPS [cuda|cuda-emu]] */
#include "lmrt.h"
#include <stdlib.h>
#include <string.h>

static Backend *be;

/* n values of `bf16` storage or reals on the device, normal(0, scale) */
static void *buf(int64_t n, bool bf16, uint64_t key, double scale) {
  void *x = be->alloc((size_t)n * (bf16 ? 2 : 4) + 16);
  if (!key) return x;
  double *h = rt_xmalloc(n * sizeof(double));
  for (int64_t i = 0; i < n; i++) h[i] = scale * rng_normal(key, i);
  void *w = bf16 ? be->alloc((size_t)n * 4) : x;
  be->upload(w, h, n);
  if (bf16) be->narrow(x, w, n), be->release(w);
  free(h);
  return x;
}

static const RtInst *find(const RtInst *p, int n, int op) {
  for (int i = 0; i < n; i++)
    if (p[i].op == op) return &p[i];
  return NULL;
}

/* seconds a call of x, over reps calls after one */
static double timed(const RtInst *x, void **out, void **in, int reps) {
  be->run(x, out, in);
  be->sync();
  double t = rt_now();
  for (int i = 0; i < reps; i++) be->run(x, out, in);
  be->sync();
  return (rt_now() - t) / reps;
}

int main(int argc, char **argv) {
  if (argc < 2) rt_die("usage: bench_attention BUNDLE [REPS [cuda|cuda-emu]]");
  int reps = argc > 2 ? atoi(argv[2]) : 20;
  const char *kind = argc > 3 ? argv[3] : "cuda";
  if (reps < 1 || (strcmp(kind, "cuda") && strcmp(kind, "cuda-emu")))
    rt_die("usage: bench_attention BUNDLE [REPS >= 1 [cuda|cuda-emu]]");
  Bundle *b = bundle_load(argv[1], 0);
  char why[256];
  cuda_matmul_precision(MP_MEDIUM);
  if (!(be = cuda_backend(argv[1], !strcmp(kind, "cuda-emu"), why, sizeof why))) rt_die("no CUDA backend: %s", why);
  const RtInst *f = find(b->fwd, b->nfwd, OP_ATTENTION), *g = find(b->bwd, b->nbwd, OP_ATTENTION_BWD);
  if (!f || !g) rt_die("bundle %s has no attention", argv[1]);
  int64_t B = f->b, T = f->t, H = f->h, G = f->g, K = f->k, nq = B * T * H * K, nk = B * T * G * K, nl = B * H * T;
  bool h = f->bf & RT_BF_IN(0);
  void *q = buf(nq, h, 1, 1), *k = buf(nk, h, 2, 1), *v = buf(nk, h, 3, 1), *o = buf(nq, h, 0, 0),
       *lse = buf(nl, false, 0, 0), *dout = buf(nq, h, 4, 1), *dq = buf(nq, h, 0, 0), *dk = buf(nk, h, 0, 0),
       *dv = buf(nk, h, 0, 0);
  RtInst fx = *f, gx = *g;
  fx.acc[0] = fx.acc[1] = false, gx.acc[0] = gx.acc[1] = gx.acc[2] = false;
  void *fo[3] = {o, lse, NULL}, *fi[RT_MAX_IN] = {q, k, v};
  void *go[3] = {dq, dk, dv}, *gi[RT_MAX_IN] = {dout, q, k, v, lse, o};
  double tf = timed(&fx, fo, fi, reps), tb = timed(&gx, go, gi, reps);
  double flops = 2.0 * B * H * T * T * K;   /* causal: half of 4 b h t^2 k */
  printf("attention: b %lld t %lld h %lld (kv %lld) k %lld, %s storage, %s", (long long)B, (long long)T,
         (long long)H, (long long)G, (long long)K, h ? "bf16" : "fp32", be->name);
  const char *knobs[] = {"LMC_ATTENTION_DKV_QT", "LMC_ATTENTION_ROWS", "LMC_ATTENTION_STAGES", "LMC_ATTENTION_SECTION",
                         "LMC_ATTENTION_WGMMA", "LMC_ATTENTION_WARPGROUPS", "LMC_ATTENTION_TUNE"};
  for (size_t i = 0; i < sizeof knobs / sizeof *knobs; i++) {   /* the kernels asked for, where not the defaults */
    const char *s = getenv(knobs[i]);
    if (s && *s) printf(", %s=%s", knobs[i], s);
  }
  printf("\n");
  printf("  forward:  %.3f ms | %.1f TFLOP/s\n", tf * 1e3, flops / tf / 1e12);
  printf("  backward: %.3f ms | %.1f TFLOP/s (2.5x the forward's FLOPs) | %.1f TFLOP/s of products done (3.5x)\n",
         tb * 1e3, 2.5 * flops / tb / 1e12, 3.5 * flops / tb / 1e12);
  void *all[] = {q, k, v, o, lse, dout, dq, dk, dv};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) be->release(all[i]);
  bundle_free(b);
  return 0;
}

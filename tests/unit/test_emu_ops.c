/* test_emu_ops.c: every op of the CUDA backend (templates/kernels.cu and
 * its cuBLASLt GEMMs) on the emulated CUDA platform against the CPU
 * backend's op in single precision, on random inputs of awkward sizes (not
 * multiples of a block or a warp), fresh outputs and accumulated ones.
 * Run with LMC_CUDA_EMU_CHECK=1, every launch also runs its threads and
 * blocks forward, reversed and shuffled and must give the same bits.
 * With bf16, the kernels as lmc writes them under bf16 storage (`typedef
 * bf16 act;`): every activation operand (an Arg of kind 0) is held in
 * bf16 on the GPU, rounded to bf16 on the CPU as exec.c does, and the
 * outputs agree within a bf16 rounding or two of their scale.
 * With real, the same on a GPU (scripts/gpu_check.sh --ops): the
 * hardware's device math, cuBLASLt's and its fp32 sums, so fp32 within
 * 1e-4 and bf16 within 2e-2 of the output's scale (the fused head's 1e-4
 * too: there a logit's bf16 rounding may flip against the CPU's).
 * Usage: test_emu_ops KERNELS.CU [bf16] [real]  (exits 77 when no CUDA
 * headers were there to build the emulator, or with real no GPU)
 *        test_emu_ops KERNELS.CU [bf16] --write OUT.CU  writes the kernels
 * it would run and stops (tests/e2e/kernels.sh compiles them with NVRTC) */
#include "lmrt.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <unistd.h>

enum { MAXIO = RT_MAX_IN };

typedef struct Arg {
  int64_t n;
  int kind;       /* 0 real (an activation: bf16 under bf16 storage), 1 ids in [0, max), 2 positive
                     real (norm weights, sums of exps), and as reals (MoE): 3 ids in [0, max), 4 a
                     permutation of 0..n-1, 5 n counts adding up to max, some of them 0; 6 real, f32
                     under bf16 storage too (a statistic, a bias, a parameter's gradient); 7 as 0, its
                     rows of max values growing along the rows (1 + row / 32 times): keys whose scores
                     rise, a later tile's maxima past an earlier's by more than 2^8 */
  int64_t max;
} Arg;

typedef struct Case {
  const char *name;
  RtInst x;
  Arg in[MAXIO], out[3];
} Case;

enum { F32 = 6 };
static Backend *cpu, *gpu;
static int failures, ran;
static double tol = 1e-5;   /* of the output's scale: fp32; the bf16 tensor core cases set their own */
static bool bf;             /* bf16 storage */
static bool quick;          /* leave out the slowest cases (attention at head dim 96) */

/* whether an operand is stored in bf16 */
static bool act(const Arg *a) { return bf && a->n && (a->kind == 0 || a->kind == 7); }

/* host reals into p: as reals, or (an activation under bf16 storage) on
 * the CPU rounded to bf16 and on the GPU held in bf16 */
static void put(Backend *be, void *p, const double *h, const Arg *a) {
  if (!act(a)) return be->upload(p, h, a->n);
  if (be == cpu) return be->upload(p, h, a->n), be->round_bf16(p, a->n);
  void *t = be->alloc(a->n * 4);
  be->upload(t, h, a->n), be->narrow(p, t, a->n), be->release(t);
}

/* p's values to the host */
static void get(Backend *be, double *h, void *p, const Arg *a) {
  if (be == cpu || !act(a)) return be->download(h, p, a->n);
  void *t = be->alloc(a->n * 4);
  be->widen(t, p, a->n), be->download(h, t, a->n), be->release(t);
}


/* Inputs and output presets from a seed, on both backends. */
static void *make(Backend *be, const Arg *a, uint64_t key, bool preset) {
  if (a->kind == 1) {
    int32_t *ids = malloc(a->n * sizeof *ids);
    for (int64_t j = 0; j < a->n; j++) ids[j] = (int32_t)(rng_hash(key, 1, j) % a->max);
    void *p = be->alloc(a->n * 4);
    be->upload_ids(p, ids, a->n);
    free(ids);
    return p;
  }
  double *h = malloc(a->n * sizeof *h);
  for (int64_t j = 0; j < a->n; j++) {
    h[j] = preset ? 0.25 * rng_normal(key, j) : rng_normal(key, j);
    if (a->kind == 2) h[j] = 1.0 + fabs(h[j]);
    if (a->kind == 3) h[j] = (double)(rng_hash(key, 3, j) % a->max);
    if (a->kind == 4) h[j] = (double)j;
    if (a->kind == 5) h[j] = 0;
    if (a->kind == 7) h[j] *= 1.0 + (double)(j / a->max) / 32.0;
  }
  for (int64_t j = a->n - 1; a->kind == 4 && j > 0; j--) {   /* shuffled */
    int64_t i = (int64_t)(rng_hash(key, 4, j) % (uint64_t)(j + 1));
    double t = h[i];
    h[i] = h[j], h[j] = t;
  }
  for (int64_t r = 0; a->kind == 5 && r < a->max; r++) h[rng_hash(key, 5, r) % (uint64_t)(a->n - 1)] += 1;   /* the last gets none */
  void *p = be->alloc(a->n * be->elem);
  put(be, p, h, a);
  free(h);
  return p;
}

/* attention_bwd's lse and o (inputs 4 and 5) as the CPU's forward makes
 * them from q, k, v, on both backends: the kernels rely on rowsum(dy * o)
 * being that of the probabilities the lse gives. */
static void forward_outputs(const RtInst *x, const Case *c, void *in[2][MAXIO]) {
  RtInst f = *x;
  f.op = OP_ATTENTION, f.acc[0] = f.acc[1] = false;
  void *fo[3] = {in[0][5], in[0][4], NULL}, *fi[MAXIO] = {in[0][1], in[0][2], in[0][3]};
  cpu->run(&f, fo, fi);
  if (bf) cpu->round_bf16(in[0][5], c->in[5].n);   /* o, as stored */
  for (int i = 4; i < 6; i++) {
    double *h = malloc(c->in[i].n * sizeof *h);
    cpu->download(h, in[0][i], c->in[i].n);
    put(gpu, in[1][i], h, &c->in[i]);
    free(h);
  }
}

/* The CUDA backend sorts the token ids of an embedding's backward from
 * the upload after it first meets them: one run into a spare output, then
 * the same ids uploaded again, so the case checks the sorted kernel. */
static void prime_sorted(const RtInst *x, const Case *c, void *in[MAXIO]) {
  RtInst once = *x;
  once.acc[0] = false;
  void *out[3] = {gpu->alloc(c->out[0].n * 4), NULL, NULL};
  gpu->run(&once, out, in);
  gpu->release(out[0]);
  int32_t *ids = malloc(c->in[1].n * sizeof *ids);
  for (int64_t j = 0; j < c->in[1].n; j++) ids[j] = (int32_t)(rng_hash(101, 1, j) % c->in[1].max);   /* as make() */
  gpu->upload_ids(in[1], ids, c->in[1].n);
  free(ids);
}

static void run(Case *c, bool acc) {
  void *in[2][MAXIO] = {{0}}, *out[2][3] = {{0}};
  Backend *bs[2] = {cpu, gpu};
  RtInst x = c->x;
  for (int i = 0; i < 3; i++) x.acc[i] = acc;
  for (int i = 0; i < 3; i++) x.bf |= act(&c->out[i]) ? RT_BF_OUT(i) : 0;
  for (int i = 0; i < MAXIO; i++) x.bf |= act(&c->in[i]) ? RT_BF_IN(i) : 0;
  for (int b = 0; b < 2; b++) {
    for (int i = 0; i < MAXIO; i++)
      if (c->in[i].n) in[b][i] = make(bs[b], &c->in[i], 100 + i, false);
    for (int i = 0; i < 3; i++)
      if (c->out[i].n) out[b][i] = make(bs[b], &c->out[i], 200 + i, true);
  }
  if (x.op == OP_ATTENTION_BWD) forward_outputs(&x, c, in);
  if (x.op == OP_EMBED_BWD) prime_sorted(&x, c, in[1]);
  for (int b = 0; b < 2; b++) {
    bs[b]->run(&x, out[b], in[b]);
    bs[b]->sync();
  }
  for (int i = 0; i < 3; i++)   /* as exec.c rounds what the plan stores in bf16 */
    if (act(&c->out[i])) cpu->round_bf16(out[0][i], c->out[i].n);
  double worst = 0;
  for (int i = 0; i < 3; i++) {
    if (!c->out[i].n) continue;
    int64_t n = c->out[i].n;
    double *want = malloc(n * sizeof *want), *got = malloc(n * sizeof *got), scale = 0;
    get(cpu, want, out[0][i], &c->out[i]), get(gpu, got, out[1][i], &c->out[i]);
    for (int64_t j = 0; j < n; j++) scale = fmax(scale, fabs(want[j]));
    for (int64_t j = 0; j < n; j++) {
      double err = fabs(got[j] - want[j]) / fmax(scale, 1e-30);
      if (!(err <= worst)) worst = isnan(err) ? INFINITY : err;
      if (!(err <= tol) && failures < 20)
        printf("  %s%s: output %d [%lld]: cuda-emu %.9g, cpu %.9g\n", c->name, acc ? " (acc)" : "", i, (long long)j,
               got[j], want[j]);
    }
    free(want), free(got);
  }
  bool ok = worst <= tol;
  printf("%-40s max error %.2e of the output's scale  %s\n", acc ? "  accumulated" : c->name, worst, ok ? "ok" : "FAIL");
  failures += !ok, ran++;
  for (int b = 0; b < 2; b++) {
    for (int i = 0; i < MAXIO; i++) bs[b]->release(in[b][i]);
    for (int i = 0; i < 3; i++) bs[b]->release(out[b][i]);
  }
}

/* Runs a case fresh, then (for ops with acc outputs) accumulating. */
static void check(Case c, bool has_acc) {
  run(&c, false);
  if (has_acc) run(&c, true);
}

/* Attention on wgmma from here on: true where it runs (on the emulated
 * platform, and on a GPU of compute capability 9.0 whose wgmma the
 * runtime's probe found to agree: where it disagrees, a failure, said
 * once, and the cases left out), false elsewhere (before 9.0) */
static bool wgmma_on(void) {
  int r = cuda_attention_wgmma(1);
  if (r == 0) {
    static bool said;
    if (!said) printf("FAIL the runtime's probe found this GPU's wgmma disagrees with lmc's layouts\n"), failures++;
    said = true;
  }
  if (r != 1) cuda_attention_wgmma(0);
  return r == 1;
}

static void optimizer(int64_t n) {
  double *h = malloc(n * sizeof *h), sum[2];
  void *p[2][4];
  Backend *bs[2] = {cpu, gpu};
  AdamArgs a = {3e-3, 0.9, 0.95, 1e-8, 0.1, 0.19, 0.0975, 0.7};
  for (int b = 0; b < 2; b++) {
    for (int t = 0; t < 4; t++) {
      for (int64_t j = 0; j < n; j++) h[j] = t == 3 ? fabs(rng_normal(40 + t, j)) : rng_normal(40 + t, j);
      p[b][t] = bs[b]->alloc(n * 4);
      bs[b]->upload(p[b][t], h, n);
    }
    const void *x[2] = {p[b][1], p[b][0]};
    int64_t ns[2] = {n, n / 3};   /* two tensors, the second a part of the first's neighbour */
    sum[b] = bs[b]->sumsq(x, ns, 2);
    bs[b]->adamw(p[b][0], p[b][1], p[b][2], p[b][3], n, &a);
  }
  double e = fabs(sum[1] - sum[0]) / sum[0], worst = 0;
  double *w0 = malloc(n * sizeof *w0);
  for (int t = 0; t < 4; t += (t == 0 ? 2 : 1)) {
    cpu->download(w0, p[0][t], n), gpu->download(h, p[1][t], n);
    for (int64_t j = 0; j < n; j++) worst = fmax(worst, fabs(h[j] - w0[j]) / fmax(fabs(w0[j]), 1e-3));
  }
  bool ok = e < 1e-5 && worst < 1e-5;
  printf("%-34s sumsq error %.2e, adamw error %.2e  %s\n", "optimizer (sumsq, adamw)", e, worst, ok ? "ok" : "FAIL");
  failures += !ok, ran++;
  for (int b = 0; b < 2; b++)
    for (int t = 0; t < 4; t++) bs[b]->release(p[b][t]);
  free(h), free(w0);
}

/* The template with tensor_cores.cuh where it says so, as lmc writes it
 * (the emulated platform skips the file's PTX), then the attention and
 * norm backward kernels lmc would specialise for the head dims and widths
 * here (compiler/kernels.c). */
void kernels_attention(FILE *out, int64_t k, bool bwd, bool bf16);
void kernels_norm_bwd(FILE *out, int64_t d, bool ln);
void kernels_parts_begin(void);
void kernels_parts_end(FILE *out);
struct Graph;
void kernels_template(FILE *out, const char *tpl, bool bf16, struct Graph *g);
static const int64_t head_dims[] = {10, 40, 96, 128}, norm_widths[] = {64, 264, 520, 776, 1032};   /* (67: none, the two-pass kernels) */

static void write_kernels(const char *template, const char *path) {
  FILE *in = fopen(template, "rb"), *out = fopen(path, "wb");
  if (!in || !out) rt_die("cannot copy %s to %s", template, path);
  fseek(in, 0, SEEK_END);
  long len = ftell(in);
  fseek(in, 0, SEEK_SET);
  char *tpl = rt_xmalloc(len + 1);
  if (len < 0 || fread(tpl, 1, len, in) != (size_t)len) rt_die("cannot read %s", template);
  kernels_template(out, tpl, bf, NULL);   /* every section, as lmc writes a bundle's */
  free(tpl);
  kernels_parts_begin();   /* (so that the runtime compiles the file in parts, in threads, as a bundle's) */
  for (size_t i = 0; i < sizeof head_dims / sizeof *head_dims; i++)
    kernels_attention(out, head_dims[i], false, bf), kernels_attention(out, head_dims[i], true, bf);
  for (size_t i = 0; i < sizeof norm_widths / sizeof *norm_widths; i++)
    kernels_norm_bwd(out, norm_widths[i], false), kernels_norm_bwd(out, norm_widths[i], true);
  kernels_parts_end(out);
  fclose(in);
  if (fclose(out)) rt_die("cannot write %s", path);
}

/* The CUDA backend's whole optimizer step (four launches) against the
 * CPU's sumsq and AdamW: three tensors across block boundaries, the second
 * outside the norm and without decay, clipping in force; the first and
 * the third have bf16 copies, which must hold the updated weights rounded
 * to bf16, bit for bit. */
static void optimizer_step(void) {
  enum { NT = 3 };
  int64_t n[NT] = {5000, 4096, 13};
  void *p[2][NT][4];
  double *h = malloc(5000 * sizeof *h), norm[2];
  Backend *bs[2] = {cpu, gpu};
  AdamArgs a = {3e-3, 0.9, 0.95, 1e-8, 0, 0.19, 0.0975, 1};
  for (int b = 0; b < 2; b++) {
    for (int t = 0; t < NT; t++)
      for (int k = 0; k < 4; k++) {
        for (int64_t j = 0; j < n[t]; j++) h[j] = k == 3 ? fabs(rng_normal(60 + 4 * t + k, j)) : rng_normal(60 + 4 * t + k, j);
        p[b][t][k] = bs[b]->alloc(n[t] * 4);
        bs[b]->upload(p[b][t][k], h, n[t]);
      }
  }
  const void *g[2] = {p[0][0][1], p[0][2][1]};
  int64_t gn[2] = {n[0], n[2]};
  norm[0] = sqrt(cpu->sumsq(g, gn, 2));
  double clip = norm[0] / 2;   /* clipped: scale about 1/2 */
  for (int t = 0; t < NT; t++) {
    AdamArgs at = a;
    at.wd = t == 1 ? 0 : 0.1, at.gscale = clip / (norm[0] + 1e-6);
    cpu->adamw(p[0][t][0], p[0][t][1], p[0][t][2], p[0][t][3], n[t], &at);
  }
  OptParam op[NT];
  void *w16[NT] = {gpu->alloc(n[0] * 2), NULL, gpu->alloc(n[2] * 2)};
  for (int t = 0; t < NT; t++)
    op[t] = (OptParam){p[1][t][0], p[1][t][1], p[1][t][2], p[1][t][3], w16[t], n[t], t == 1 ? 0 : 0.1, t != 1};
  norm[1] = gpu->optimizer(op, NT, &a, clip);
  double worst = fabs(norm[1] - norm[0]) / norm[0], *want = malloc(5000 * sizeof *want);
  for (int t = 0; t < NT; t++)
    for (int k = 0; k < 4; k += (k == 0 ? 2 : 1)) {
      cpu->download(want, p[0][t][k], n[t]), gpu->download(h, p[1][t][k], n[t]);
      for (int64_t j = 0; j < n[t]; j++) worst = fmax(worst, fabs(h[j] - want[j]) / fmax(fabs(want[j]), 1e-3));
    }
  int64_t copies_off = 0;   /* copy elements not the bf16 of their weight */
  for (int t = 0; t < NT; t += 2) {
    void *wide = gpu->alloc(n[t] * 4), *round = cpu->alloc(n[t] * 4);
    gpu->widen(wide, w16[t], n[t]), gpu->download(h, wide, n[t]);
    gpu->download(want, p[1][t][0], n[t]), cpu->upload(round, want, n[t]), cpu->round_bf16(round, n[t]);
    cpu->download(want, round, n[t]);
    for (int64_t j = 0; j < n[t]; j++) copies_off += h[j] != want[j];
    gpu->release(wide), cpu->release(round), gpu->release(w16[t]);
  }
  bool ok = worst < 1e-5 && copies_off == 0;
  printf("%-34s norm %.6g vs %.6g, worst error %.2e, %lld bf16 copies off  %s\n", "optimizer step (3 tensors, clipped)",
         norm[1], norm[0], worst, (long long)copies_off, ok ? "ok" : "FAIL");
  failures += !ok, ran++;
  for (int b = 0; b < 2; b++)
    for (int t = 0; t < NT; t++)
      for (int k = 0; k < 4; k++) bs[b]->release(p[b][t][k]);
  free(h), free(want);
}

int main(int argc, char **argv) {
  if (argc < 2) rt_die("usage: test_emu_ops KERNELS.CU [bf16] [quick] [real | --write OUT.CU]");
  bool real = false;
  const char *write = NULL;
  for (int i = 2; i < argc; i++) {
    if (!strcmp(argv[i], "bf16")) bf = true;
    else if (!strcmp(argv[i], "real")) real = true;
    else if (!strcmp(argv[i], "quick")) quick = true;   /* the sanitizer build: not head dim 96 */
    else if (!strcmp(argv[i], "--write") && i + 1 < argc) write = argv[++i];
    else rt_die("usage: test_emu_ops KERNELS.CU [bf16] [quick] [real | --write OUT.CU]");
  }
  if (write) return write_kernels(argv[1], write), 0;
  char dir[] = "/tmp/lmc-emu-ops-XXXXXX", path[64], why[256];
  if (!mkdtemp(dir)) rt_die("cannot make a temporary folder");
  snprintf(path, sizeof path, "%s/kernels.cu", dir);
  write_kernels(argv[1], path);
  cpu = cpu_backend(false);
  cuda_matmul_precision(MP_HIGHEST);   /* fp32 products, as the CPU's */
  gpu = cuda_backend(dir, !real, why, sizeof why);
  unlink(path), rmdir(dir);
  if (!gpu) {
    printf("skipped: %s\n", why);
    return 77;
  }
  /* bf16 storage: within two bf16 roundings of the output's scale (the two
   * backends' fp32 sums differ in the last bits, which may round a value
   * to the neighbouring bf16) */
  double tol_base = bf ? (real ? 2e-2 : 1e-2) : real ? 1e-4 : 1e-5;
  tol = tol_base;
  /* awkward sizes: 13 rows, width 67, vocab 301, T 19, head dim 10 */
  int64_t n = 13, d = 67, V = 301, B = 2, T = 19, H = 4, G = 2, K = 10, N = B * T;
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++) {
      Case c = {"matmul", rt_inst(OP_MATMUL), {{n * 17}, {17 * 21}}, {{n * 21}}};
      c.x.m = n, c.x.n = 21, c.x.k = 17, c.x.ta = ta, c.x.tb = tb;
      static char names[4][32];
      snprintf(names[ta * 2 + tb], 32, "matmul%s%s", ta ? " A^T" : "", tb ? " B^T" : "");
      c.name = names[ta * 2 + tb];
      check(c, true);
    }
  for (int tb = 0; tb < 3; tb++) {   /* the bias in cuBLASLt's epilogue, of the output's type */
    static const char *nm[] = {"matmul_bias", "matmul_bias B^T", "matmul_bias (epilogue refused: a kernel adds it)"};
    Case c = {nm[tb], rt_inst(OP_MATMUL_BIAS), {{n * 17}, {17 * 21}, {21}}, {{n * 21}}};
    c.x.m = n, c.x.n = 21, c.x.k = 17, c.x.tb = tb == 1;
    if (tb == 2) setenv("LMC_CUDA_EMU_REFUSE_BIAS", "1", 1);
    check(c, false);
    unsetenv("LMC_CUDA_EMU_REFUSE_BIAS");
  }
  for (int r = 0; r < 2; r++) {   /* and GELU's too: the GELU and the pre-activation */
    Case c = {r ? "matmul_bias_gelu (epilogue refused: kernels)" : "matmul_bias_gelu", rt_inst(OP_MATMUL_BIAS_GELU),
              {{n * 17}, {17 * 24}, {24}}, {{n * 24}, {n * 24}}};
    c.x.m = n, c.x.n = 24, c.x.k = 17;
    if (r) setenv("LMC_CUDA_EMU_REFUSE_BIAS", "1", 1);
    check(c, false);
    unsetenv("LMC_CUDA_EMU_REFUSE_BIAS");
  }
  /* weights' gradients in parts over the rows (split-k: one batched
   * GEMM of 4 parts of 8 rows, then the parts added in order), plain and
   * with the bias gradient's epilogue batched, dy as B and as A; 17 x 21
   * outputs (the parts' sum one float a thread) and 16 x 20 (four); each
   * counted as run in parts */
  cuda_gemm_split(4);
  long long parts0 = cuda_gemms_in_parts(), parts_want = 0;
  for (int w = 0; w < 2; w++) {
    int64_t pm = w ? 16 : 17, pn = w ? 20 : 21, pk = 32;
    static char names[6][64];
    snprintf(names[w * 3], 64, "matmul A^T, %lld x %lld in 4 parts", (long long)pm, (long long)pn);
    Case c = {names[w * 3], rt_inst(OP_MATMUL), {{pk * pm}, {pk * pn}}, {{pm * pn, F32}}};
    c.x.m = pm, c.x.n = pn, c.x.k = pk, c.x.ta = 1;
    check(c, true);
    for (int bg = 1; bg >= 0; bg--) {
      snprintf(names[w * 3 + 1 + bg], 64, "matmul_bgrad (dy as %s), %lld x %lld in 4 parts", bg ? "B" : "A",
               (long long)pm, (long long)pn);
      c = (Case){names[w * 3 + 1 + bg], rt_inst(OP_MATMUL_BGRAD), {{pk * pm}, {pk * pn}},
                 {{pm * pn, F32}, {bg ? pn : pm, F32}}};
      c.x.m = pm, c.x.n = pn, c.x.k = pk, c.x.ta = 1, c.x.bg = bg;
      check(c, true);
    }
    parts_want += 6;   /* three cases, each run, then run adding to its outputs */
  }
  cuda_gemm_split(-1);
  if (cuda_gemms_in_parts() - parts0 != parts_want)
    printf("FAIL weights' gradients in parts: %lld GEMMs run in parts, %lld wanted\n",
           cuda_gemms_in_parts() - parts0, parts_want), failures++;
  /* a weight's and its bias's gradients from one GEMM: dy as its B (a
   * weight stored [in, out]: BGRADA) or its A (stored [out, in]: BGRADB),
   * accepted, then refused (the GEMM and the runtime's column sums; the
   * refusal is kept, so these come last) */
  for (int r = 0; r < 2; r++)
    for (int bg = 1; bg >= 0; bg--) {
      static char names[4][64];
      snprintf(names[r * 2 + bg], 64, "matmul_bgrad (dy as %s%s)", bg ? "B" : "A", r ? ", epilogue refused" : "");
      Case c = {names[r * 2 + bg], rt_inst(OP_MATMUL_BGRAD), {{n * 17}, {n * 21}}, {{17 * 21, F32}, {bg ? 21 : 17, F32}}};
      c.x.m = 17, c.x.n = 21, c.x.k = n, c.x.ta = 1, c.x.bg = bg;
      if (r) setenv("LMC_CUDA_EMU_REFUSE_BIAS", "1", 1);
      check(c, true);
      unsetenv("LMC_CUDA_EMU_REFUSE_BIAS");
    }
  /* GELU's backward in the GEMM before it (cuBLASLt's DGELU), as in
   * GPT-2's MLP: dh = dy W^T times gelu' at the pre-activation (in[2]);
   * accepted, then refused (the GEMM, then GELU's backward; the refusal
   * is kept, so last) */
  for (int r = 0; r < 2; r++) {
    Case c = {r ? "matmul_dgelu (epilogue refused: GELU's backward after)" : "matmul_dgelu", rt_inst(OP_MATMUL_DGELU),
              {{n * 17}, {24 * 17}, {n * 24}}, {{n * 24}}};
    c.x.m = n, c.x.n = 24, c.x.k = 17, c.x.tb = 1;
    if (r) setenv("LMC_CUDA_EMU_REFUSE_BIAS", "1", 1);
    check(c, false);
    unsetenv("LMC_CUDA_EMU_REFUSE_BIAS");
  }
  if (bf) {   /* f32 operands into bf16 through an f32 product: its bias (bf16, D's type) added after */
    Case c = {"matmul_bias f32 x f32 -> bf16", rt_inst(OP_MATMUL_BIAS), {{n * 17, F32}, {17 * 21, F32}, {21}},
              {{n * 21}}};
    c.x.m = n, c.x.n = 21, c.x.k = 17;
    check(c, false);
  }
  if (bf) {   /* an MoE router's GEMMs: bf16 rows times the f32 router; f32 logits' gradient into bf16 rows */
    Case c = {"matmul bf16 x f32 -> f32 (router)", rt_inst(OP_MATMUL), {{n * 17}, {21 * 17, F32}}, {{n * 21, F32}}};
    c.x.m = n, c.x.n = 21, c.x.k = 17, c.x.tb = 1;
    check(c, true);
    c = (Case){"matmul f32 x f32 -> bf16 (router bwd)", rt_inst(OP_MATMUL), {{n * 21, F32}, {21 * 17, F32}}, {{n * 17}}};
    c.x.m = n, c.x.n = 17, c.x.k = 21;
    check(c, true);
    c = (Case){"matmul f32 x bf16 -> f32 (router dW)", rt_inst(OP_MATMUL), {{n * 21, F32}, {n * 17}}, {{21 * 17, F32}}};
    c.x.m = 21, c.x.n = 17, c.x.k = n, c.x.ta = 1;
    check(c, true);
  }
  Case c;
  c = (Case){"embed", rt_inst(OP_EMBED), {{N, 1, V}, {V * d}}, {{N * d}}};
  c.x.n = N, c.x.d = d, c.x.v = V;
  check(c, false);
  c = (Case){"embed (vocab parallel rows 120..270)", rt_inst(OP_EMBED), {{N, 1, V}, {150 * d}}, {{N * d}}};
  c.x.n = N, c.x.d = d, c.x.v = 150, c.x.v0 = 120;
  check(c, false);
  c = (Case){"embed_bwd", rt_inst(OP_EMBED_BWD), {{N * d}, {N, 1, 7}}, {{7 * d, F32}}};   /* repeated ids */
  c.x.n = N, c.x.d = d, c.x.v = 7;
  check(c, true);
  c = (Case){"rmsnorm", rt_inst(OP_RMSNORM), {{n * d}, {d, 2}}, {{n * d}, {n, F32}}};
  c.x.n = n, c.x.d = d, c.x.eps = 1e-5;
  check(c, false);
  c = (Case){"rmsnorm_bwd", rt_inst(OP_RMSNORM_BWD), {{n * d}, {n * d}, {d, 2}, {n, 2}}, {{n * d}, {d, F32}}};
  c.x.n = n, c.x.d = d;
  check(c, true);
  c = (Case){"layernorm", rt_inst(OP_LAYERNORM), {{n * d}, {d, 2}, {d, F32}}, {{n * d}, {n, F32}, {n, F32}}};
  c.x.n = n, c.x.d = d, c.x.eps = 1e-5;
  check(c, false);
  c = (Case){"layernorm_bwd", rt_inst(OP_LAYERNORM_BWD), {{n * d}, {n * d}, {d, 2}, {n, F32}, {n, 2}},
             {{n * d}, {d, F32}, {d, F32}}};
  c.x.n = n, c.x.d = d;
  check(c, true);
  /* rows of width 64: 8 elements a thread at a time */
  c = (Case){"rmsnorm (width 64)", rt_inst(OP_RMSNORM), {{n * 64}, {64, 2}}, {{n * 64}, {n, F32}}};
  c.x.n = n, c.x.d = 64, c.x.eps = 1e-5;
  check(c, false);
  c = (Case){"rmsnorm_bwd (width 64)", rt_inst(OP_RMSNORM_BWD), {{n * 64}, {n * 64}, {64, 2}, {n, 2}}, {{n * 64}, {64, F32}}};
  c.x.n = n, c.x.d = 64;
  check(c, true);
  c = (Case){"layernorm (width 64)", rt_inst(OP_LAYERNORM), {{n * 64}, {64, 2}, {64, F32}}, {{n * 64}, {n, F32}, {n, F32}}};
  c.x.n = n, c.x.d = 64, c.x.eps = 1e-5;
  check(c, false);
  c = (Case){"layernorm_bwd (width 64)", rt_inst(OP_LAYERNORM_BWD), {{n * 64}, {n * 64}, {64, 2}, {n, F32}, {n, 2}},
             {{n * 64}, {64, F32}, {64, F32}}};
  c.x.n = n, c.x.d = 64;
  check(c, true);
  /* the weight and bias gradients' column sums over 5 chunks of rows */
  int64_t nr = 300;
  c = (Case){"rmsnorm_bwd (300 rows)", rt_inst(OP_RMSNORM_BWD), {{nr * d}, {nr * d}, {d, 2}, {nr, 2}}, {{nr * d}, {d, F32}}};
  c.x.n = nr, c.x.d = d;
  check(c, true);
  c = (Case){"layernorm_bwd (300 rows)", rt_inst(OP_LAYERNORM_BWD), {{nr * d}, {nr * d}, {d, 2}, {nr, F32}, {nr, 2}},
             {{nr * d}, {d, F32}, {d, F32}}};
  c.x.n = nr, c.x.d = d;
  check(c, true);
  /* 264 wide over 5 chunks of rows, in two passes (the default) and in
   * one (LMC_NORM_BWD_ONE_PASS: a warp a row, a lane's second group past
   * the row for most lanes), and width 64 in one */
  for (int one = 0; one < 2; one++) {
    cuda_norm_bwd_one_pass(one);
    c = (Case){one ? "rmsnorm_bwd (width 264, 300 rows, one pass)" : "rmsnorm_bwd (width 264, 300 rows)",
               rt_inst(OP_RMSNORM_BWD), {{nr * 264}, {nr * 264}, {264, 2}, {nr, 2}}, {{nr * 264}, {264, F32}}};
    c.x.n = nr, c.x.d = 264;
    check(c, true);
    c = (Case){one ? "layernorm_bwd (width 264, 300 rows, one pass)" : "layernorm_bwd (width 264, 300 rows)",
               rt_inst(OP_LAYERNORM_BWD), {{nr * 264}, {nr * 264}, {264, 2}, {nr, F32}, {nr, 2}},
               {{nr * 264}, {264, F32}, {264, F32}}};
    c.x.n = nr, c.x.d = 264;
    check(c, true);
  }
  /* 18 chunks of rows: col_finish's 8 warps take 2 or 3 each, its blocks
   * 32 columns of the 264 (the last block 8); not under the sanitizers
   * (quick), where it took 20 s */
  cuda_norm_bwd_one_pass(false);
  int64_t nl = 1100;
  c = (Case){"layernorm_bwd (width 264, 1100 rows)", rt_inst(OP_LAYERNORM_BWD),
             {{nl * 264}, {nl * 264}, {264, 2}, {nl, F32}, {nl, 2}}, {{nl * 264}, {264, F32}, {264, F32}}};
  c.x.n = nl, c.x.d = 264;
  if (!quick) check(c, true);
  /* 129 chunks of rows (8200 rows, 64 a chunk): col_finish's warps load
   * 16 chunks before adding them (warp 0 a batch and one more) */
  int64_t n129 = 8200;
  c = (Case){"rmsnorm_bwd (width 8, 8200 rows)", rt_inst(OP_RMSNORM_BWD), {{n129 * 8}, {n129 * 8}, {8, 2}, {n129, 2}},
             {{n129 * 8}, {8, F32}}};
  c.x.n = n129, c.x.d = 8;
  check(c, true);
  cuda_norm_bwd_one_pass(true);
  c = (Case){"rmsnorm_bwd (width 64, one pass)", rt_inst(OP_RMSNORM_BWD), {{n * 64}, {n * 64}, {64, 2}, {n, 2}},
             {{n * 64}, {64, F32}}};
  c.x.n = n, c.x.d = 64;
  check(c, true);
  c = (Case){"layernorm_bwd (width 64, one pass)", rt_inst(OP_LAYERNORM_BWD), {{n * 64}, {n * 64}, {64, 2}, {n, F32}, {n, 2}},
             {{n * 64}, {64, F32}, {64, F32}}};
  c.x.n = n, c.x.d = 64;
  check(c, true);
  /* 776 wide (97 groups of 8, NG 4: dx's loads three groups ahead, the
   * fourth group past the row but for lane 0), 1032 (129, NG 6: each
   * group's load at its use; in bf16 storage RMSNorm's partial sums in
   * shared memory, dx's loads with the row's first) and 520 (65, NG 3:
   * in bf16 storage both norms' sums in shared memory, the third group
   * lane 0's alone) */
  int64_t n6 = 40, w6[3] = {776, 1032, 520};
  static const char *rname[3] = {"rmsnorm_bwd (width 776, one pass)", "rmsnorm_bwd (width 1032, one pass)",
                                 "rmsnorm_bwd (width 520, one pass)"},
                    *lname[3] = {"layernorm_bwd (width 776, one pass)", "layernorm_bwd (width 1032, one pass)",
                                 "layernorm_bwd (width 520, one pass)"};
  for (int i = 0; i < 3; i++) {
    int64_t dw = w6[i];
    c = (Case){rname[i], rt_inst(OP_RMSNORM_BWD), {{n6 * dw}, {n6 * dw}, {dw, 2}, {n6, 2}}, {{n6 * dw}, {dw, F32}}};
    c.x.n = n6, c.x.d = dw;
    check(c, true);
    c = (Case){lname[i], rt_inst(OP_LAYERNORM_BWD), {{n6 * dw}, {n6 * dw}, {dw, 2}, {n6, F32}, {n6, 2}},
               {{n6 * dw}, {dw, F32}, {dw, F32}}};
    c.x.n = n6, c.x.d = dw;
    check(c, true);
  }
  cuda_norm_bwd_one_pass(false);
  c = (Case){"add_bwd (bias, 300 rows)", rt_inst(OP_ADD_BWD), {{nr * d}}, {{nr * d}, {d, F32}}};
  c.x.n = nr * d, c.x.nb = d;
  check(c, true);
  c = (Case){"rope", rt_inst(OP_ROPE), {{N * H * K}}, {{N * H * K}}};
  c.x.b = B, c.x.t = T, c.x.h = H, c.x.k = K, c.x.theta = 10000;
  check(c, false);
  c.name = "rope_bwd", c.x.op = OP_ROPE_BWD;
  check(c, true);
  /* head dim 32: 8 pairs a thread-step with 16-byte accesses */
  c = (Case){"rope (K 32)", rt_inst(OP_ROPE), {{N * H * 32}}, {{N * H * 32}}};
  c.x.b = B, c.x.t = T, c.x.h = H, c.x.k = 32, c.x.theta = 10000;
  check(c, false);
  c.name = "rope_bwd (K 32)", c.x.op = OP_ROPE_BWD;
  check(c, true);
  /* head dim 10 (one thread a query row), 40 (two, past a tile of 32
   * keys and a block of 64 rows; on the tensor cores past a block of 128)
   * and 96 (llama-large's: on the tensor cores the forward takes 128 rows
   * a block, or 64 in its other kernels, two or one stages of K and V;
   * dK/dV steps 64 queries, or 32) and 128 (Llama 7B's: two blocks an SM
   * on the tensor cores; wgmma's dK/dV steps 32 queries) */
  struct { int64_t b, t, h, g, k; const char *name, *bwd; } at[] = {
      {B, T, H, G, K, "attention (gqa 4:2, T 19, K 10)", "attention_bwd (gqa 4:2, T 19, K 10)"},
      {1, 150, 4, 1, 40, "attention (gqa 4:1, T 150, K 40)", "attention_bwd (gqa 4:1, T 150, K 40)"},
      {1, 80, 2, 1, 96, "attention (gqa 2:1, T 80, K 96)", "attention_bwd (gqa 2:1, T 80, K 96)"},
      {1, 70, 2, 2, 128, "attention (T 70, K 128)", "attention_bwd (T 70, K 128)"}};
  /* each case in fp32 on the CUDA cores, then (--matmul-precision medium)
   * in bf16 on the tensor cores, within a few bf16 roundings of the
   * output's scale */
  for (int mp = 0; mp < 2; mp++) {
    cuda_matmul_precision(mp ? MP_MEDIUM : MP_HIGHEST);
    tol = mp ? 2e-2 : tol_base;
    for (int i = 0; i < (quick ? 2 : 4); i++) {
      static char names[2][4][2][64];
      int64_t nq = at[i].b * at[i].t * at[i].h * at[i].k, nk = at[i].b * at[i].t * at[i].g * at[i].k;
      int64_t rows = at[i].b * at[i].h * at[i].t;
      snprintf(names[mp][i][0], 64, "%s%s", at[i].name, mp ? " bf16" : "");
      snprintf(names[mp][i][1], 64, "%s%s", at[i].bwd, mp ? " bf16" : "");
      c = (Case){names[mp][i][0], rt_inst(OP_ATTENTION), {{nq}, {nk}, {nk}}, {{nq}, {rows, F32}}};
      c.x.b = at[i].b, c.x.t = at[i].t, c.x.h = at[i].h, c.x.g = at[i].g, c.x.k = at[i].k;
      check(c, false);
      static char other[4][12][96];
      if (mp && !quick) {   /* the forward's other kernels: 128 rows, one stage (not under sanitizers) */
        snprintf(other[i][0], 96, "%s, forward 128 rows a block", names[mp][i][0]);
        cuda_attention_rows(128);
        c.name = other[i][0];
        check(c, false);
        cuda_attention_rows(0);
        snprintf(other[i][2], 96, "%s, forward one stage", names[mp][i][0]);
        cuda_attention_stages(1);
        c.name = other[i][2];
        check(c, false);
        cuda_attention_stages(2);
      }
      if (mp && wgmma_on()) {   /* the forward on wgmma (sm_90a's warpgroup instructions; on the emulated platform, emulated) */
        snprintf(other[i][3], 96, "%s, forward on wgmma", names[mp][i][0]);
        c.name = other[i][3];
        check(c, false);
        for (int nw = 2; nw <= 3 && bf; nw++) {   /* blocks of warpgroups sharing K and V (bf16 storage) */
          snprintf(other[i][4 + nw], 96, "%.50s, forward on wgmma, %d warpgroups a block", names[mp][i][0], nw);
          cuda_attention_warpgroups(nw);
          c.name = other[i][4 + nw];
          check(c, false);
        }
        cuda_attention_warpgroups(1);
        /* and with each tile's softmax beside the tensor cores' products (fw_forward_pipe; bf16 storage) */
        snprintf(other[i][8], 96, "%s, forward on wgmma, pipelined", names[mp][i][0]);
        cuda_attention_wgmma(2);
        c.name = other[i][8];
        if (bf) check(c, false);
        cuda_attention_wgmma(0);
      }
      /* inputs: dy, q, k, v, then lse and o, which run() makes by the forward */
      c = (Case){names[mp][i][1], rt_inst(OP_ATTENTION_BWD), {{nq}, {nq}, {nk}, {nk}, {rows, F32}, {nq}}, {{nq}, {nk}, {nk}}};
      c.x.b = at[i].b, c.x.t = at[i].t, c.x.h = at[i].h, c.x.g = at[i].g, c.x.k = at[i].k;
      check(c, true);
      if (mp && wgmma_on()) {   /* dQ and dK/dV on wgmma (to head dim 96) */
        snprintf(other[i][5], 96, "%s, on wgmma", names[mp][i][1]);
        c.name = other[i][5];
        check(c, true);
        for (int nw = 2; nw <= 3 && bf; nw++) {   /* sharing K and V (dQ: 2, 3), Q and dO (dK/dV: 2) */
          snprintf(other[i][7 + nw], 96, "%s, on wgmma, %d warpgroups a block", names[mp][i][1], nw);
          cuda_attention_warpgroups(nw);
          c.name = other[i][7 + nw];
          check(c, true);
        }
        cuda_attention_warpgroups(1);
        /* and with each tile's dS (each step's P^T and dS^T) beside the tensor cores' updates
         * (fw_backward_dq_pipe, fw_backward_dkv_pipe) */
        snprintf(other[i][11], 96, "%s, on wgmma, pipelined", names[mp][i][1]);
        cuda_attention_wgmma(2);
        c.name = other[i][11];
        if (bf) check(c, true);
        cuda_attention_wgmma(0);
      }
      /* the launch order in sections of 3 heads (8 heads in three, one
       * spare; 4 kv groups in two of 2) and of 1 (fp32 storage only: the
       * order is read off the grid alike in bf16's kernels) */
      if (i == 1 && !quick && !bf) {
        static char sec[2][2][2][96];
        Case f = {"", rt_inst(OP_ATTENTION), {{2 * nq}, {nq}, {nq}}, {{2 * nq}, {2 * rows, F32}}};
        Case bw = {"", rt_inst(OP_ATTENTION_BWD), {{2 * nq}, {2 * nq}, {nq}, {nq}, {2 * rows, F32}, {2 * nq}},
                  {{2 * nq}, {nq}, {nq}}};
        f.x.b = bw.x.b = 2, f.x.t = bw.x.t = at[i].t, f.x.h = bw.x.h = 4, f.x.g = bw.x.g = 2, f.x.k = bw.x.k = at[i].k;
        for (int s = 0; s < 2; s++) {
          cuda_attention_section(s ? 1 : 3);
          snprintf(sec[mp][s][0], 96, "attention (B 2, gqa 4:2, T 150, K 40)%s, sections of %d heads", mp ? " bf16" : "",
                   s ? 1 : 3);
          snprintf(sec[mp][s][1], 96, "attention_bwd (B 2, gqa 4:2, T 150, K 40)%s, sections of %d heads", mp ? " bf16" : "",
                   s ? 1 : 3);
          f.name = sec[mp][s][0], bw.name = sec[mp][s][1];
          check(f, false), check(bw, true);
        }
        cuda_attention_section(0);
      }
      /* keys whose scores rise along the sequence: the forward's running
       * maxima pass their old values by more than 2^8 in later tiles, so
       * the output is rescaled there (a warp keeps its old maxima
       * otherwise: fm_softmax); on wgmma too */
      if (i == 1) {
        static char rise[2][3][96];
        Case r = {"", rt_inst(OP_ATTENTION), {{nq}, {nk, 7, at[i].g * at[i].k}, {nk}}, {{nq}, {rows, F32}}};
        r.x.b = at[i].b, r.x.t = at[i].t, r.x.h = at[i].h, r.x.g = at[i].g, r.x.k = at[i].k;
        snprintf(rise[mp][0], 96, "%s, scores rising along the keys", names[mp][i][0]);
        r.name = rise[mp][0];
        check(r, false);
        if (mp && wgmma_on()) {
          snprintf(rise[mp][1], 96, "%.74s, on wgmma", rise[mp][0]);
          r.name = rise[mp][1];
          check(r, false);
          snprintf(rise[mp][2], 96, "%.74s, on wgmma, pipelined", rise[mp][0]);
          cuda_attention_wgmma(2);
          r.name = rise[mp][2];
          if (bf) check(r, false);
          cuda_attention_wgmma(0);
        }
      }
      if (mp && !quick) {   /* dQ with one stage of K and V, the other kernel */
        snprintf(other[i][4], 96, "%s, dQ one stage", names[mp][i][1]);
        cuda_attention_stages(1);
        c.name = other[i][4];
        check(c, true);
        cuda_attention_stages(2);
      }
      if (mp && !quick) {   /* dQ at 64 rows a block and (head dim 96) dK/dV at 32 queries a step, the other kernels */
        snprintf(other[i][1], 96, "%s, dQ 64 rows%s", names[mp][i][1], at[i].k == 96 ? ", dK/dV 32 queries" : "");
        cuda_attention_dkv_qt(32), cuda_attention_rows(64);
        c.name = other[i][1];
        check(c, true);
        cuda_attention_dkv_qt(64), cuda_attention_rows(0);
      }
    }
  }
  cuda_matmul_precision(MP_HIGHEST);
  tol = tol_base;
  int unary[][2] = {{OP_SILU, OP_SILU_BWD}, {OP_GELU, OP_GELU_BWD}};
  const char *un[] = {"silu", "silu_bwd", "gelu", "gelu_bwd"};
  for (int i = 0; i < 2; i++) {
    c = (Case){un[2 * i], rt_inst(unary[i][0]), {{n * d}}, {{n * d}}};
    c.x.n = n * d;
    check(c, false);
    c = (Case){un[2 * i + 1], rt_inst(unary[i][1]), {{n * d}, {n * d}}, {{n * d}}};
    c.x.n = n * d;
    check(c, true);
  }
  c = (Case){"mul", rt_inst(OP_MUL), {{n * d}, {n * d}}, {{n * d}}};
  c.x.n = n * d;
  check(c, false);
  c = (Case){"swiglu", rt_inst(OP_SWIGLU), {{n * d}, {n * d}}, {{n * d}}};
  c.x.n = n * d;
  check(c, false);
  c = (Case){"mul_bwd", rt_inst(OP_MUL_BWD), {{n * d}, {n * d}, {n * d}}, {{n * d}, {n * d}}};
  c.x.n = n * d;
  check(c, true);
  c = (Case){"swiglu_bwd", rt_inst(OP_SWIGLU_BWD), {{n * d}, {n * d}, {n * d}}, {{n * d}, {n * d}}};
  c.x.n = n * d;
  check(c, true);
  c = (Case){"add", rt_inst(OP_ADD), {{n * d}, {n * d}}, {{n * d}}};
  c.x.n = n * d, c.x.nb = n * d;
  check(c, false);
  c = (Case){"add (broadcast bias)", rt_inst(OP_ADD), {{n * d}, {d, F32}}, {{n * d}}};
  c.x.n = n * d, c.x.nb = d;
  check(c, false);
  c = (Case){"add (broadcast bias, width 64)", rt_inst(OP_ADD), {{n * 64}, {64, F32}}, {{n * 64}}};   /* 8 at a time */
  c.x.n = n * 64, c.x.nb = 64;
  check(c, false);
  c = (Case){"add_bwd", rt_inst(OP_ADD_BWD), {{n * d}}, {{n * d}, {n * d}}};
  c.x.n = n * d, c.x.nb = n * d;
  check(c, true);
  c = (Case){"add_bwd (bias)", rt_inst(OP_ADD_BWD), {{n * d}}, {{n * d}, {d, F32}}};
  c.x.n = n * d, c.x.nb = d;
  check(c, true);
  /* 8 columns a thread, 256 a block: two blocks of columns, the second partly past the width */
  c = (Case){"add_bwd (bias, width 264, 300 rows)", rt_inst(OP_ADD_BWD), {{300 * 264}}, {{300 * 264}, {264, F32}}};
  c.x.n = 300 * 264, c.x.nb = 264;
  check(c, true);
  c = (Case){"cross_entropy", rt_inst(OP_XENT), {{n * V}, {n, 1, V}}, {{1, F32}}};
  c.x.n = n, c.x.v = V, c.x.scale = 1.0 / n;
  check(c, true);
  c = (Case){"cross_entropy_bwd", rt_inst(OP_XENT_BWD), {{n * V}, {n, 1, V}}, {{n * V}}};
  c.x.n = n, c.x.v = V, c.x.scale = 1.0 / n;
  check(c, true);
  c = (Case){"xent_max", rt_inst(OP_XENT_MAX), {{n * V}}, {{n, F32}}};
  c.x.n = n, c.x.v = V;
  check(c, false);
  c = (Case){"xent_stats (rows 120..420 of 601)", rt_inst(OP_XENT_STATS), {{n * V}, {n, 1, 601}, {n, 2}}, {{n, F32}, {n, F32}}};
  c.x.n = n, c.x.v = V, c.x.v0 = 120;
  check(c, false);
  c = (Case){"xent_loss", rt_inst(OP_XENT_LOSS), {{0}, {0}, {n, F32}, {n, 2}, {n, F32}}, {{1, F32}}};
  c.x.n = n, c.x.scale = 1.0 / n;
  check(c, true);
  c = (Case){"xent_tp_bwd", rt_inst(OP_XENT_TP_BWD), {{n * V}, {n, 1, 601}, {n, F32}, {n, 2}}, {{n * V}}};
  c.x.n = n, c.x.v = V, c.x.v0 = 120, c.x.scale = 1.0 / n;
  check(c, true);
  /* the fused head rounds its logits and their gradient to bf16 on both
   * backends, so its loss and lse agree to fp32 sums (1.6e-3 apart were
   * the CPU's logits not rounded) */
  tol = bf && !real ? 1e-4 : tol_base;
  for (int tb = 0; tb < 2; tb++) {
    c = (Case){tb ? "head_xent (W^T)" : "head_xent", rt_inst(OP_HEAD_XENT), {{n * d}, {V * d}, {n, 1, V}}, {{1, F32}, {n, F32}}};
    c.x.m = n, c.x.n = V, c.x.k = d, c.x.tb = tb, c.x.scale = 1.0 / n;
    check(c, false);
    c = (Case){tb ? "head_xent_bwd (W^T)" : "head_xent_bwd", rt_inst(OP_HEAD_XENT_BWD), {{n * d}, {V * d}, {n, 1, V}, {n, 2}},
               {{n * d}, {V * d, F32}}};
    c.x.m = n, c.x.n = V, c.x.k = d, c.x.tb = tb, c.x.scale = 1.0 / n;
    check(c, true);
    c = (Case){tb ? "head_dl (W^T)" : "head_dl", rt_inst(OP_HEAD_DL), {{n * d}, {V * d}, {n, 1, V}}, {{1, F32}, {n * V}}};
    c.x.m = n, c.x.n = V, c.x.k = d, c.x.tb = tb, c.x.scale = 1.0 / n;
    check(c, true);
  }
  /* rows of a multiple of 8: the row kernels' 16-byte loads and stores */
  int64_t V8 = 304;
  c = (Case){"head_dl (vocab 304)", rt_inst(OP_HEAD_DL), {{n * d}, {V8 * d}, {n, 1, V8}}, {{1, F32}, {n * V8}}};
  c.x.m = n, c.x.n = V8, c.x.k = d, c.x.tb = 1, c.x.scale = 1.0 / n;
  check(c, false);
  c = (Case){"cross_entropy (vocab 304)", rt_inst(OP_XENT), {{n * V8}, {n, 1, V8}}, {{1, F32}}};
  c.x.n = n, c.x.v = V8, c.x.scale = 1.0 / n;
  check(c, false);
  /* rows of 8200: a thread's first four 16-byte steps loaded together, the
   * fifth (thread 0's) alone */
  int64_t V4 = 8200;
  c = (Case){"head_dl (vocab 8200)", rt_inst(OP_HEAD_DL), {{n * d}, {V4 * d}, {n, 1, V4}}, {{1, F32}, {n * V4}}};
  c.x.m = n, c.x.n = V4, c.x.k = d, c.x.tb = 1, c.x.scale = 1.0 / n;
  check(c, false);
  c = (Case){"head_xent (vocab 8200)", rt_inst(OP_HEAD_XENT), {{n * d}, {V4 * d}, {n, 1, V4}}, {{1, F32}, {n, F32}}};
  c.x.m = n, c.x.n = V4, c.x.k = d, c.x.tb = 1, c.x.scale = 1.0 / n;
  check(c, false);
  tol = tol_base;
  /* MoE: 37 tokens, 6 experts, top 2, width 19 (13 in the experts),
   * expert ids, positions and counts as the routing makes them */
  int64_t nt = 37, E = 6, kk = 2, dm = 19, F = 13, M = nt * kk;
  c = (Case){"moe_route", rt_inst(OP_MOE_ROUTE), {{nt * E, F32}}, {{M, F32}, {M, F32}, {2 * E + 1, F32}}};
  c.x.n = nt, c.x.e = E, c.x.top = kk, c.x.rn = 1;
  check(c, false);
  c = (Case){"moe_loss", rt_inst(OP_MOE_LOSS), {{2 * E + 1, 2}}, {{1, F32}, {4, F32}}};
  c.x.e = E, c.x.top = kk, c.x.ng = nt, c.x.share = 0.5, c.x.aux = 0.01, c.x.zl = 0.001;
  check(c, true);
  for (int rn = 0; rn < 2; rn++) {
    c = (Case){rn ? "moe_route_bwd" : "moe_route_bwd (gates as chosen)", rt_inst(OP_MOE_ROUTE_BWD),
               {{M, F32}, {nt * E, F32}, {M, 3, E}, {2 * E + 1, 2}}, {{nt * E, F32}}};
    c.x.n = nt, c.x.e = E, c.x.top = kk, c.x.rn = rn, c.x.aux = 0.3, c.x.zl = 0.1, c.x.scale = 1.0 / nt, c.x.ng = nt;
    check(c, true);
  }
  c = (Case){"moe_dispatch (600 assignments)", rt_inst(OP_MOE_DISPATCH), {{300 * dm}, {600, 3, E}}, {{600 * dm}, {E, F32}, {600, F32}}};
  c.x.n = 300, c.x.d = dm, c.x.top = kk, c.x.e = E;
  check(c, false);
  c = (Case){"moe_route (700 tokens)", rt_inst(OP_MOE_ROUTE), {{700 * E, F32}}, {{1400, F32}, {1400, F32}, {2 * E + 1, F32}}};
  c.x.n = 700, c.x.e = E, c.x.top = kk, c.x.rn = 1;
  check(c, false);
  /* the row moves at width 19 (a value a thread-step) and 24 (8 columns a
   * thread-step by 16-byte accesses) */
  for (int w = 0; w < 2; w++) {
    static char mv[2][4][40];
    const char *nm[4] = {"moe_dispatch", "moe_dispatch_bwd", "moe_combine", "moe_combine_bwd"};
    int64_t wd = w ? 24 : dm;
    for (int j = 0; j < 4; j++) snprintf(mv[w][j], sizeof mv[w][j], w ? "%s (width 24)" : "%s", nm[j]);
    c = (Case){mv[w][0], rt_inst(OP_MOE_DISPATCH), {{nt * wd}, {M, 3, E}}, {{M * wd}, {E, F32}, {M, F32}}};
    c.x.n = nt, c.x.d = wd, c.x.top = kk, c.x.e = E;
    check(c, false);
    c = (Case){mv[w][1], rt_inst(OP_MOE_DISPATCH_BWD), {{M * wd}, {M, 4}}, {{nt * wd}}};
    c.x.n = nt, c.x.d = wd, c.x.top = kk, c.x.e = E;
    check(c, true);
    c = (Case){mv[w][2], rt_inst(OP_MOE_COMBINE), {{M * wd}, {M, 4}, {M, F32}}, {{nt * wd}}};
    c.x.n = nt, c.x.d = wd, c.x.top = kk;
    check(c, false);
    c = (Case){mv[w][3], rt_inst(OP_MOE_COMBINE_BWD), {{nt * wd}, {M * wd}, {M, 4}, {M, F32}}, {{M * wd}, {M, F32}}};
    c.x.n = nt, c.x.d = wd, c.x.top = kk;
    check(c, true);
  }
  /* the experts over 12 segments (ep 2 x 6 local experts: expert s % 6)
   * of M rows in all, one segment empty, in a buffer of M + 5 rows */
  for (int sw = 1; sw >= 0; sw--) {
    int64_t R = M + 5, hw = sw ? 2 * F : F, seg = 2 * E;
    Arg w = {E * F * dm}, wg = {E * F * dm, F32}, cnt = {seg, 5, M};   /* weights' bf16 copies; their gradients */
    c = (Case){sw ? "moe_up" : "moe_up_gelu", rt_inst(sw ? OP_MOE_UP : OP_MOE_UP_GELU), {{R * dm}, w, sw ? w : cnt, cnt},
               {{R * F}, {R * hw}}};
    c.x.m = R, c.x.d = dm, c.x.n = F, c.x.seg = seg, c.x.e = E;
    check(c, false);
    c = (Case){sw ? "moe_up_bwd" : "moe_up_gelu_bwd", rt_inst(sw ? OP_MOE_UP_BWD : OP_MOE_UP_GELU_BWD),
               {{R * F}, {R * dm}, w, sw ? w : cnt, sw ? cnt : (Arg){R * hw}, {R * hw}}, {{R * dm}, wg, sw ? wg : (Arg){0}}};
    if (!sw) c.in[5] = (Arg){0};
    c.x.m = R, c.x.d = dm, c.x.n = F, c.x.seg = seg, c.x.e = E;
    check(c, true);
    if (!sw) continue;
    c = (Case){"moe_down", rt_inst(OP_MOE_DOWN), {{R * F}, w, cnt}, {{R * dm}}};
    c.x.m = R, c.x.d = dm, c.x.n = F, c.x.seg = seg, c.x.e = E;
    check(c, false);
    c = (Case){"moe_down_bwd", rt_inst(OP_MOE_DOWN_BWD), {{R * dm}, {R * F}, w, cnt}, {{R * F}, wg}};
    c.x.m = R, c.x.d = dm, c.x.n = F, c.x.seg = seg, c.x.e = E;
    check(c, true);
  }
  /* the grouped way (kernels.cu's lmc_moe_mm*, at medium precision where
   * every segment is this rank's own): bf16 products, within a few bf16
   * roundings of the output's scale; 6 experts over 74 rows (widths 19 and
   * 13: no 16-byte tile loads), and 4 over 600 (width 72, 136 in the
   * experts: segments of two row tiles, two column tiles, whole k steps of
   * 64 and a partial one) */
  cuda_matmul_precision(MP_MEDIUM);
  tol = 2e-2;
  struct { int64_t e, rows, d, f; } gs[] = {{E, M, dm, F}, {4, 600, 72, 136}};
  for (int i = 0; i < (quick ? 1 : 2); i++)   /* (in bf16 storage the larger shape's whole tiles by cp.async) */
    for (int sw = 1; sw >= 0; sw--) {
      static char names[2][2][4][64];
      int64_t R = gs[i].rows, D = gs[i].d, Fg = gs[i].f, Eg = gs[i].e, hw = sw ? 2 * Fg : Fg;
      Arg w = {Eg * Fg * D}, wg = {Eg * Fg * D, F32}, cnt = {Eg, 5, R};
      const char *nm[4] = {sw ? "moe_up" : "moe_up_gelu", sw ? "moe_up_bwd" : "moe_up_gelu_bwd", "moe_down", "moe_down_bwd"};
      for (int j = 0; j < 4; j++)
        snprintf(names[i][sw][j], 64, "%s grouped (%lld rows, %lld experts)", nm[j], (long long)R, (long long)Eg);
      c = (Case){names[i][sw][0], rt_inst(sw ? OP_MOE_UP : OP_MOE_UP_GELU), {{R * D}, w, sw ? w : cnt, cnt}, {{R * Fg}, {R * hw}}};
      c.x.m = R, c.x.d = D, c.x.n = Fg, c.x.seg = Eg, c.x.e = Eg;
      check(c, false);
      c = (Case){names[i][sw][1], rt_inst(sw ? OP_MOE_UP_BWD : OP_MOE_UP_GELU_BWD),
                 {{R * Fg}, {R * D}, w, sw ? w : cnt, sw ? cnt : (Arg){R * hw}, {R * hw}}, {{R * D}, wg, sw ? wg : (Arg){0}}};
      if (!sw) c.in[5] = (Arg){0};
      c.x.m = R, c.x.d = D, c.x.n = Fg, c.x.seg = Eg, c.x.e = Eg;
      check(c, true);
      if (!sw) continue;
      c = (Case){names[i][sw][2], rt_inst(OP_MOE_DOWN), {{R * Fg}, w, cnt}, {{R * D}}};
      c.x.m = R, c.x.d = D, c.x.n = Fg, c.x.seg = Eg, c.x.e = Eg;
      check(c, false);
      c = (Case){names[i][sw][3], rt_inst(OP_MOE_DOWN_BWD), {{R * D}, {R * Fg}, w, cnt}, {{R * Fg}, wg}};
      c.x.m = R, c.x.d = D, c.x.n = Fg, c.x.seg = Eg, c.x.e = Eg;
      check(c, true);
      /* the weight gradients' split-k: the runtime's choice for these few
       * tiles is 5 parts (most of them empty), here 1 and 2 (an expert's
       * ~150 rows in 3 chunks: parts of 1 and 2) */
      for (int parts = 1; parts <= 2 && i == 1 && !bf; parts++) {   /* (fp32 storage: the split is storage's alike) */
        static char split[2][2][80];
        cuda_moe_split(parts);
        snprintf(split[parts - 1][0], 80, "%s, %d part%s", names[i][sw][1], parts, parts > 1 ? "s" : "");
        snprintf(split[parts - 1][1], 80, "%s, %d part%s", names[i][sw][3], parts, parts > 1 ? "s" : "");
        c = (Case){split[parts - 1][0], rt_inst(OP_MOE_UP_BWD), {{R * Fg}, {R * D}, w, w, cnt, {R * hw}}, {{R * D}, wg, wg}};
        c.x.m = R, c.x.d = D, c.x.n = Fg, c.x.seg = Eg, c.x.e = Eg;
        check(c, true);
        c = (Case){split[parts - 1][1], rt_inst(OP_MOE_DOWN_BWD), {{R * D}, {R * Fg}, w, cnt}, {{R * Fg}, wg}};
        c.x.m = R, c.x.d = D, c.x.n = Fg, c.x.seg = Eg, c.x.e = Eg;
        check(c, true);
      }
      cuda_moe_split(0);
    }
  cuda_matmul_precision(MP_HIGHEST);
  tol = tol_base;
  if (!bf) optimizer(70001), optimizer_step();   /* (fp32 either way) */
  printf("%d passed, %d failed\n", ran - failures, failures);
  return failures ? 1 : 0;
}

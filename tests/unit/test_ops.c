/* test_ops.c: every op's backward kernel against central finite
 * differences of its forward kernel, in double precision, on the CPU
 * backend. The objective is L = sum(out * R) for a fixed random R, so the
 * backward kernel gets dy = R. Every element of every differentiable
 * input is perturbed; the test fails if any relative error is >= 1e-6.
 * It also checks that outputs flagged acc add into what is there. */
#include "lmrt.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAXT 6

typedef struct Case {
  const char *name;
  RtInst fwd, bwd;
  int nin;                 /* forward inputs */
  int64_t in_n[MAXT];      /* elements per forward input */
  bool is_ids[MAXT], diff[MAXT];
  int64_t id_max[MAXT];
  int64_t out_n[3];        /* forward outputs */
  int nout;
  /* backward: inputs are dy then forward tensors named by index:
   *   >= 0 forward input i, <= -1 forward output (-1 - i) */
  int bwd_in[RT_MAX_IN], nbwd_in;
  int bwd_out_of[3];       /* which forward input each bwd output is the grad of, -1 none */
} Case;

static Backend *be;
static int failures, ran;

static double *randv(int64_t n, uint64_t key, double scale) {
  double *x = malloc(n * sizeof(double));
  for (int64_t i = 0; i < n; i++) x[i] = scale * rng_normal(key, i);
  return x;
}

static double objective(Case *c, void **in, double *R) {
  void *out[3] = {0};
  for (int i = 0; i < c->nout; i++) out[i] = calloc(c->out_n[i], sizeof(double));
  c->fwd.acc[0] = false;
  be->run(&c->fwd, out, in);
  double L = 0;
  for (int64_t i = 0; i < c->out_n[0]; i++) L += ((double *)out[0])[i] * R[i];
  for (int i = 0; i < c->nout; i++) free(out[i]);
  return L;
}

static void backward(Case *c, void **in, double *R, double **g, bool acc) {
  void *fout[3] = {0}, *bin[RT_MAX_IN] = {0}, *bout[3] = {0};
  for (int i = 0; i < c->nout; i++) fout[i] = calloc(c->out_n[i], sizeof(double));
  be->run(&c->fwd, fout, in);
  bin[0] = R;
  for (int i = 1; i < c->nbwd_in; i++) {
    int k = c->bwd_in[i];
    bin[i] = k >= 0 ? in[k] : fout[-1 - k];
  }
  for (int i = 0; i < 3; i++) {
    c->bwd.acc[i] = acc;
    bout[i] = c->bwd_out_of[i] >= 0 ? g[i] : NULL;
  }
  be->run(&c->bwd, bout, bin);
  for (int i = 0; i < c->nout; i++) free(fout[i]);
}

static void check(Case *c) {
  void *in[MAXT] = {0};
  for (int i = 0; i < c->nin; i++) {
    if (c->is_ids[i]) {
      int32_t *ids = malloc(c->in_n[i] * sizeof(int32_t));
      for (int64_t j = 0; j < c->in_n[i]; j++) ids[j] = (int32_t)(rng_hash(7, i, j) % c->id_max[i]);
      in[i] = ids;
    } else {
      in[i] = randv(c->in_n[i], 100 + i, 1.0);
      if (c->fwd.op == OP_RMSNORM || c->fwd.op == OP_LAYERNORM)
        if (i >= 1) for (int64_t j = 0; j < c->in_n[i]; j++) ((double *)in[i])[j] += 1.0;
    }
  }
  double *R = randv(c->out_n[0], 999, 1.0);
  double *g[3] = {0}, *g2[3] = {0};
  for (int i = 0; i < 3; i++)
    if (c->bwd_out_of[i] >= 0) {
      g[i] = calloc(c->in_n[c->bwd_out_of[i]], sizeof(double));
      g2[i] = malloc(c->in_n[c->bwd_out_of[i]] * sizeof(double));
      for (int64_t j = 0; j < c->in_n[c->bwd_out_of[i]]; j++) g2[i][j] = 0.5;
    }
  backward(c, in, R, g, false);
  backward(c, in, R, g2, true);     /* accumulate onto 0.5 */
  double worst = 0, worst_acc = 0;
  for (int o = 0; o < 3; o++) {
    int k = c->bwd_out_of[o];
    if (k < 0) continue;
    double *x = in[k];
    for (int64_t j = 0; j < c->in_n[k]; j++) {
      double x0 = x[j], h = 1e-5 * fmax(1.0, fabs(x0));
      x[j] = x0 + h;
      double lp = objective(c, in, R);
      x[j] = x0 - h;
      double lm = objective(c, in, R);
      x[j] = x0;
      double fd = (lp - lm) / (2 * h);
      double err = fabs(fd - g[o][j]) / fmax(fabs(fd), 1e-3);
      if (err > worst) worst = err;
      double ea = fabs(g2[o][j] - 0.5 - g[o][j]);
      if (ea > worst_acc) worst_acc = ea;
      if (err >= 1e-6 && failures < 20)
        printf("  %s: d/d input%d[%lld]: analytic %.12e numeric %.12e\n", c->name, k,
               (long long)j, g[o][j], fd);
    }
  }
  bool ok = worst < 1e-6 && worst_acc < 1e-12;
  printf("%-28s max rel error %.2e, acc error %.1e  %s\n", c->name, worst, worst_acc, ok ? "ok" : "FAIL");
  failures += !ok, ran++;
  for (int i = 0; i < c->nin; i++) free(in[i]);
  for (int i = 0; i < 3; i++) free(g[i]), free(g2[i]);
  free(R);
}


static void test_matmul(bool tb) {
  int64_t m = 5, n = 4, k = 3;
  Case c = {.name = tb ? "matmul x W^T" : "matmul x W", .nin = 2, .in_n = {m * k, n * k},
            .diff = {1, 1}, .out_n = {m * n}, .nout = 1};
  c.fwd = rt_inst(OP_MATMUL);
  c.fwd.m = m, c.fwd.n = n, c.fwd.k = k, c.fwd.tb = tb;
  /* The compiler's autodiff emits two matmuls; check both here through a
   * small wrapper: dx first, then dW. */
  double *x = randv(m * k, 1, 1), *w = randv(n * k, 2, 1), *R = randv(m * n, 3, 1);
  void *in[2] = {x, w};
  double *dx = calloc(m * k, 8), *dw = calloc(n * k, 8);
  RtInst a = rt_inst(OP_MATMUL), b = rt_inst(OP_MATMUL);
  a.m = m, a.n = k, a.k = n, a.tb = !tb;                       /* dx = R W(^T) */
  void *ao[1] = {dx}, *ai[2] = {R, w};
  be->run(&a, ao, ai);
  if (tb) b.m = n, b.n = k, b.k = m, b.ta = 1, ai[0] = R, ai[1] = x;   /* dW = R^T x */
  else b.m = k, b.n = n, b.k = m, b.ta = 1, ai[0] = x, ai[1] = R;      /* dW = x^T R */
  ao[0] = dw;
  be->run(&b, ao, ai);
  double worst = 0;
  double *grads[2] = {dx, dw};
  for (int t = 0; t < 2; t++) {
    double *v = in[t];
    for (int64_t j = 0; j < c.in_n[t]; j++) {
      double v0 = v[j];
      v[j] = v0 + 1e-5;
      double lp = objective(&c, in, R);
      v[j] = v0 - 1e-5;
      double lm = objective(&c, in, R);
      v[j] = v0;
      double fd = (lp - lm) / 2e-5, err = fabs(fd - grads[t][j]) / fmax(fabs(fd), 1e-3);
      if (err > worst) worst = err;
    }
  }
  printf("%-28s max rel error %.2e  %s\n", c.name, worst, worst < 1e-6 ? "ok" : "FAIL");
  failures += worst >= 1e-6, ran++;
  free(x), free(w), free(R), free(dx), free(dw);
}

int main(void) {
  be = cpu_backend(true);
  test_matmul(false);
  test_matmul(true);
  int64_t n = 6, d = 5, B = 2, T = 5, H = 4, G = 2, K = 4, V = 7;

  Case e = {.name = "embed", .nin = 2, .in_n = {n, V * d}, .is_ids = {1, 0}, .id_max = {V},
            .out_n = {n * d}, .nout = 1, .nbwd_in = 2, .bwd_in = {0, 0}, .bwd_out_of = {1, -1, -1}};
  e.fwd = rt_inst(OP_EMBED), e.bwd = rt_inst(OP_EMBED_BWD);
  e.fwd.n = e.bwd.n = n, e.fwd.d = e.bwd.d = d, e.fwd.v = e.bwd.v = V;
  check(&e);

  Case r = {.name = "rmsnorm", .nin = 2, .in_n = {n * d, d}, .out_n = {n * d, n}, .nout = 2,
            .nbwd_in = 4, .bwd_in = {0, 0, 1, -2}, .bwd_out_of = {0, 1, -1}};
  r.fwd = rt_inst(OP_RMSNORM), r.bwd = rt_inst(OP_RMSNORM_BWD);
  r.fwd.n = r.bwd.n = n, r.fwd.d = r.bwd.d = d, r.fwd.eps = r.bwd.eps = 1e-5;
  check(&r);

  Case l = {.name = "layernorm", .nin = 3, .in_n = {n * d, d, d}, .out_n = {n * d, n, n}, .nout = 3,
            .nbwd_in = 5, .bwd_in = {0, 0, 1, -2, -3}, .bwd_out_of = {0, 1, 2}};
  l.fwd = rt_inst(OP_LAYERNORM), l.bwd = rt_inst(OP_LAYERNORM_BWD);
  l.fwd.n = l.bwd.n = n, l.fwd.d = l.bwd.d = d, l.fwd.eps = l.bwd.eps = 1e-5;
  check(&l);

  Case ro = {.name = "rope", .nin = 1, .in_n = {B * T * H * K}, .out_n = {B * T * H * K}, .nout = 1,
             .nbwd_in = 1, .bwd_out_of = {0, -1, -1}};
  ro.fwd = rt_inst(OP_ROPE), ro.bwd = rt_inst(OP_ROPE_BWD);
  ro.fwd.b = ro.bwd.b = B, ro.fwd.t = ro.bwd.t = T, ro.fwd.h = ro.bwd.h = H;
  ro.fwd.k = ro.bwd.k = K, ro.fwd.theta = ro.bwd.theta = 10000;
  check(&ro);

  Case at = {.name = "attention (gqa 4:2)", .nin = 3, .in_n = {B * T * H * K, B * T * G * K, B * T * G * K},
             .out_n = {B * T * H * K, B * H * T}, .nout = 2, .nbwd_in = 6, .bwd_in = {0, 0, 1, 2, -2, -1},
             .bwd_out_of = {0, 1, 2}};
  at.fwd = rt_inst(OP_ATTENTION), at.bwd = rt_inst(OP_ATTENTION_BWD);
  at.fwd.b = at.bwd.b = B, at.fwd.t = at.bwd.t = T, at.fwd.h = at.bwd.h = H;
  at.fwd.g = at.bwd.g = G, at.fwd.k = at.bwd.k = K;
  check(&at);

  int pw[][2] = {{OP_SILU, OP_SILU_BWD}, {OP_GELU, OP_GELU_BWD}};
  const char *pwn[] = {"silu", "gelu"};
  for (int i = 0; i < 2; i++) {
    Case p = {.name = pwn[i], .nin = 1, .in_n = {n * d}, .out_n = {n * d}, .nout = 1, .nbwd_in = 2,
              .bwd_in = {0, 0}, .bwd_out_of = {0, -1, -1}};
    p.fwd = rt_inst(pw[i][0]), p.bwd = rt_inst(pw[i][1]);
    p.fwd.n = p.bwd.n = n * d;
    check(&p);
  }

  Case mu = {.name = "mul", .nin = 2, .in_n = {n * d, n * d}, .out_n = {n * d}, .nout = 1, .nbwd_in = 3,
             .bwd_in = {0, 0, 1}, .bwd_out_of = {0, 1, -1}};
  mu.fwd = rt_inst(OP_MUL), mu.bwd = rt_inst(OP_MUL_BWD);
  mu.fwd.n = mu.bwd.n = n * d;
  check(&mu);

  Case sw = {.name = "swiglu", .nin = 2, .in_n = {n * d, n * d}, .out_n = {n * d}, .nout = 1, .nbwd_in = 3,
             .bwd_in = {0, 0, 1}, .bwd_out_of = {0, 1, -1}};
  sw.fwd = rt_inst(OP_SWIGLU), sw.bwd = rt_inst(OP_SWIGLU_BWD);
  sw.fwd.n = sw.bwd.n = n * d;
  check(&sw);

  Case ad = {.name = "add (broadcast bias)", .nin = 2, .in_n = {n * d, d}, .out_n = {n * d}, .nout = 1,
             .nbwd_in = 1, .bwd_out_of = {0, 1, -1}};
  ad.fwd = rt_inst(OP_ADD), ad.bwd = rt_inst(OP_ADD_BWD);
  ad.fwd.n = ad.bwd.n = n * d, ad.fwd.nb = ad.bwd.nb = d;
  check(&ad);

  /* cross-entropy: the objective is the loss itself (R = [1]); the
   * backward kernel takes no dy, so the wrapper passes logits, ids. */
  Case xe = {.name = "cross_entropy", .nin = 2, .in_n = {n * V, n}, .is_ids = {0, 1}, .id_max = {0, V},
             .out_n = {1}, .nout = 1, .nbwd_in = 2, .bwd_in = {0, 1}, .bwd_out_of = {0, -1, -1}};
  xe.fwd = rt_inst(OP_XENT), xe.bwd = rt_inst(OP_XENT_BWD);
  xe.fwd.n = xe.bwd.n = n, xe.fwd.v = xe.bwd.v = V, xe.fwd.scale = xe.bwd.scale = 1.0 / n;
  /* R = 1 makes L the loss; the bwd op reads (logits, ids), so shift its
   * inputs: bin[0] must be the logits, not dy. */
  xe.bwd_in[0] = 0;
  {
    void *in[2];
    in[0] = randv(n * V, 5, 1.0);
    int32_t *ids = malloc(n * sizeof(int32_t));
    for (int64_t j = 0; j < n; j++) ids[j] = (int32_t)(rng_hash(3, 0, j) % V);
    in[1] = ids;
    double one = 1, *g = calloc(n * V, 8);
    void *bo[1] = {g}, *bi[2] = {in[0], ids};
    be->run(&xe.bwd, bo, bi);
    double worst = 0, *x = in[0];
    for (int64_t j = 0; j < n * V; j++) {
      double x0 = x[j];
      x[j] = x0 + 1e-5;
      double lp = objective(&xe, in, &one);
      x[j] = x0 - 1e-5;
      double lm = objective(&xe, in, &one);
      x[j] = x0;
      double fd = (lp - lm) / 2e-5, err = fabs(fd - g[j]) / fmax(fabs(fd), 1e-3);
      if (err > worst) worst = err;
    }
    printf("%-28s max rel error %.2e  %s\n", "cross_entropy", worst, worst < 1e-6 ? "ok" : "FAIL");
    failures += worst >= 1e-6, ran++;
    free(in[0]), free(ids), free(g);
  }
  printf("%d passed, %d failed\n", ran - failures, failures);
  return failures ? 1 : 0;
}

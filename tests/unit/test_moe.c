/* test_moe.c: the MoE kernels of the CPU backend (f64) against direct
 * computations written here, the way a reader would do them by hand.
 *  - router: each token's top k experts and renormalised gates against a
 *    sort of the softmax, on random logits and on ties (the lower expert
 *    id first), for k = 1 and 2, renormalised and not;
 *  - no drop: a batch in which every token prefers expert 3 still sends
 *    each token to its k experts (expert 3 gets all N), and the layer's
 *    output (dispatch, experts, combine) equals a loop over the tokens
 *    that runs each token's chosen experts' MLPs on it alone;
 *  - the balance statistics and losses against their definitions. */
#include "lmrt.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

static Backend *be;
static int failures, checks;

static void check(const char *what, double err, double tol) {
  checks++;
  bool ok = err <= tol;
  failures += !ok;
  printf("%s %-64s max err %.2e\n", ok ? "ok  " : "FAIL", what, err);
}


static void run(RtInst *x, void *o0, void *o1, void *o2, void *i0, void *i1, void *i2, void *i3) {
  void *out[3] = {o0, o1, o2}, *in[RT_MAX_IN] = {i0, i1, i2, i3};
  be->run(x, out, in);
}

static double *randv(int64_t n, uint64_t key, double scale) {
  double *x = calloc(n + 1, sizeof(double));
  for (int64_t i = 0; i < n; i++) x[i] = scale * rng_normal(key, i);
  return x;
}

/* The reference router: softmax, then experts by descending probability,
 * ties to the lower id (a stable sort of the ids). */
static void ref_route(const double *l, int64_t E, int64_t k, bool rn, double *gates, int64_t *idx) {
  double p[64], mx = l[0], s = 0;
  int64_t order[64];
  for (int64_t e = 0; e < E; e++) mx = fmax(mx, l[e]), order[e] = e;
  for (int64_t e = 0; e < E; e++) s += p[e] = exp(l[e] - mx);
  for (int64_t e = 0; e < E; e++) p[e] /= s;
  for (int64_t i = 1; i < E; i++)          /* insertion sort: stable */
    for (int64_t j = i; j > 0 && p[order[j]] > p[order[j - 1]]; j--) {
      int64_t t = order[j];
      order[j] = order[j - 1], order[j - 1] = t;
    }
  double sum = 0;
  for (int64_t j = 0; j < k; j++) sum += p[order[j]];
  for (int64_t j = 0; j < k; j++) idx[j] = order[j], gates[j] = rn ? p[order[j]] / sum : p[order[j]];
}

static void test_router(int64_t k, bool rn, bool ties) {
  int64_t N = 40, E = 8;
  double *l = randv(N * E, 11 + k, 2.0), *g = calloc(N * k, 8), *ix = calloc(N * k, 8), *st = calloc(2 * E + 1, 8);
  if (ties)   /* whole rows of equal logits, and pairs of equal ones */
    for (int64_t t = 0; t < N; t++)
      for (int64_t e = 0; e < E; e++) l[t * E + e] = t % 2 ? 0.5 : (double)(e / 2);
  RtInst x = rt_inst(OP_MOE_ROUTE);
  x.n = N, x.e = E, x.top = k, x.rn = rn;
  run(&x, g, ix, st, l, NULL, NULL, NULL);
  double err = 0, serr = 0;
  double count[8] = {0};
  for (int64_t t = 0; t < N; t++) {
    double rg[8];
    int64_t ri[8];
    ref_route(l + t * E, E, k, rn, rg, ri);
    for (int64_t j = 0; j < k; j++) {
      err = fmax(err, fabs(g[t * k + j] - rg[j]));
      if ((int64_t)ix[t * k + j] != ri[j]) err = INFINITY;
      count[ri[j]]++;
    }
  }
  for (int64_t e = 0; e < E; e++) serr = fmax(serr, fabs(st[e] - count[e]));
  char what[128];
  snprintf(what, sizeof what, "router top-%lld%s%s: experts and gates", (long long)k, rn ? " renormalised" : "",
           ties ? ", tied logits" : "");
  check(what, err, 1e-15);
  snprintf(what, sizeof what, "router top-%lld%s: assignments per expert", (long long)k, ties ? ", tied logits" : "");
  check(what, serr, 0);
  free(l), free(g), free(ix), free(st);
}

/* One token through expert e's SwiGLU MLP: w1, w3 [F, D], w2 [D, F]. */
static void ref_expert(const double *x, const double *w1, const double *w3, const double *w2, int64_t D, int64_t F,
                       double *y) {
  for (int64_t d = 0; d < D; d++) y[d] = 0;
  for (int64_t f = 0; f < F; f++) {
    double g = 0, u = 0;
    for (int64_t d = 0; d < D; d++) g += w1[f * D + d] * x[d], u += w3[f * D + d] * x[d];
    double a = g / (1 + exp(-g)) * u;
    for (int64_t d = 0; d < D; d++) y[d] += w2[d * F + f] * a;
  }
}

static void test_no_drop(int64_t k) {
  int64_t N = 24, E = 4, D = 6, F = 5, M = N * k;
  double *x = randv(N * D, 21, 1), *l = randv(N * E, 22, 0.1), *w1 = randv(E * F * D, 23, 0.5),
         *w3 = randv(E * F * D, 24, 0.5), *w2 = randv(E * D * F, 25, 0.5);
  for (int64_t t = 0; t < N; t++) l[t * E + 3] += 10;   /* every token prefers expert 3 */
  double *g = calloc(M, 8), *ix = calloc(M, 8), *st = calloc(2 * E + 1, 8), *xp = calloc(M * D, 8),
         *cnt = calloc(E, 8), *pos = calloc(M, 8), *a = calloc(M * F, 8), *h = calloc(M * 2 * F, 8),
         *yp = calloc(M * D, 8), *y = calloc(N * D, 8);
  RtInst r = rt_inst(OP_MOE_ROUTE), dp = rt_inst(OP_MOE_DISPATCH), up = rt_inst(OP_MOE_UP), dn = rt_inst(OP_MOE_DOWN),
         cb = rt_inst(OP_MOE_COMBINE);
  r.n = N, r.e = E, r.top = k, r.rn = 1;
  dp.n = N, dp.d = D, dp.top = k, dp.e = E;
  up.m = dn.m = M, up.d = dn.d = D, up.n = dn.n = F, up.seg = dn.seg = E, up.e = dn.e = E;
  cb.n = N, cb.d = D, cb.top = k;
  run(&r, g, ix, st, l, NULL, NULL, NULL);
  run(&dp, xp, cnt, pos, x, ix, NULL, NULL);
  run(&up, a, h, NULL, xp, w1, w3, cnt);
  run(&dn, yp, NULL, NULL, a, w2, cnt, NULL);
  run(&cb, y, NULL, NULL, yp, pos, g, NULL);
  double total = 0, err = 0, seen = 0;
  for (int64_t e = 0; e < E; e++) total += cnt[e];
  for (int64_t t = 0; t < N; t++) {   /* each assignment's row holds its token */
    bool three = false;
    for (int64_t j = 0; j < k; j++) {
      three |= (int64_t)ix[t * k + j] == 3;
      for (int64_t d = 0; d < D; d++) seen = fmax(seen, fabs(xp[(int64_t)pos[t * k + j] * D + d] - x[t * D + d]));
    }
    if (!three) seen = INFINITY;
    double want[16] = {0}, one[16];
    for (int64_t j = 0; j < k; j++) {
      int64_t e = (int64_t)ix[t * k + j];
      ref_expert(x + t * D, w1 + e * F * D, w3 + e * F * D, w2 + e * D * F, D, F, one);
      for (int64_t d = 0; d < D; d++) want[d] += g[t * k + j] * one[d];
    }
    for (int64_t d = 0; d < D; d++) err = fmax(err, fabs(y[t * D + d] - want[d]));
  }
  char what[128];
  snprintf(what, sizeof what, "no drop, top-%lld: expert 3 gets all %lld tokens, %lld rows in all", (long long)k,
           (long long)N, (long long)M);
  check(what, fabs(cnt[3] - N) + fabs(total - M) + seen, 0);
  snprintf(what, sizeof what, "no drop, top-%lld: output against a per-token loop", (long long)k);
  check(what, err, 1e-12);
  free(x), free(l), free(w1), free(w3), free(w2), free(g), free(ix), free(st), free(xp), free(cnt), free(pos);
  free(a), free(h), free(yp), free(y);
}

/* aux = E sum_i f_i P_i, z = mean logsumexp^2, over ng tokens. */
static void test_losses(void) {
  int64_t N = 30, E = 5, k = 2;
  double *l = randv(N * E, 31, 1.5), *g = calloc(N * k, 8), *ix = calloc(N * k, 8), *st = calloc(2 * E + 1, 8);
  double loss = 0.25, m[4] = {0};
  RtInst r = rt_inst(OP_MOE_ROUTE), ls = rt_inst(OP_MOE_LOSS);
  r.n = N, r.e = E, r.top = k, r.rn = 1;
  ls.e = E, ls.top = k, ls.aux = 0.01, ls.zl = 0.001, ls.ng = N, ls.share = 1, ls.acc[0] = ls.acc[1] = true;
  run(&r, g, ix, st, l, NULL, NULL, NULL);
  run(&ls, &loss, m, NULL, st, NULL, NULL, NULL);
  double f[8] = {0}, P[8] = {0}, z = 0, aux = 0, hi = 0, lo = 1;
  for (int64_t t = 0; t < N; t++) {
    double rg[8], mx = -INFINITY, s = 0;
    int64_t ri[8];
    ref_route(l + t * E, E, k, true, rg, ri);
    for (int64_t j = 0; j < k; j++) f[ri[j]] += 1.0 / (N * k);
    for (int64_t e = 0; e < E; e++) mx = fmax(mx, l[t * E + e]);
    for (int64_t e = 0; e < E; e++) s += exp(l[t * E + e] - mx);
    for (int64_t e = 0; e < E; e++) P[e] += exp(l[t * E + e] - mx) / s / N;
    z += pow(mx + log(s), 2) / N;
  }
  for (int64_t e = 0; e < E; e++) aux += E * f[e] * P[e], hi = fmax(hi, f[e]), lo = fmin(lo, f[e]);
  check("aux loss E sum f_i P_i, z loss, the loss they add", fabs(m[0] - aux) + fabs(m[1] - z) +
        fabs(loss - 0.25 - 0.01 * aux - 0.001 * z), 1e-14);
  check("most and least loaded expert over the balanced load", fabs(m[2] - hi * E) + fabs(m[3] - lo * E), 1e-14);
  free(l), free(g), free(ix), free(st);
}

int main(void) {
  be = cpu_backend(true);
  for (int k = 1; k <= 2; k++)
    for (int rn = 0; rn <= 1; rn++) test_router(k, rn, false);
  test_router(2, true, true);
  test_router(1, true, true);
  test_no_drop(1);
  test_no_drop(2);
  test_losses();
  printf("%d passed, %d failed\n", checks - failures, failures);
  return failures ? 1 : 0;
}

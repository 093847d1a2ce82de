/* bench_moe.c: one MoE layer against the dense SwiGLU MLP that runs the
 * same parameters per token (its width k x the experts'), forward and
 * backward, on the CPU backend (f32), at the moe-tiny preset's shape by
 * default. Prints each one's time, the GEMM FLOP/s it reached over the
 * sgemm rate measured in the same run, the MoE layer's time over the dense
 * MLP's, and what routing, dispatch and combine cost, with the router's
 * tokens spread (a fresh router) and with every token preferring the same
 * experts (a collapsed router: the no-drop worst case, one expert's GEMM
 * over all the tokens).
 * Usage: bench_moe [N D F E K [REPS]] */
#include "lmrt.h"
#include <stdlib.h>
#include <string.h>

static Backend *be;


static float *buf(int64_t n, uint64_t key, double scale) {
  float *x = calloc(n + 16, sizeof(float));
  if (!x) rt_die("out of memory");
  for (int64_t i = 0; key && i < n; i++) x[i] = (float)(scale * rng_normal(key, i));
  return x;
}

static void run(RtInst *x, void *o0, void *o1, void *o2, void *i0, void *i1, void *i2, void *i3, void *i4, void *i5) {
  void *out[3] = {o0, o1, o2}, *in[RT_MAX_IN] = {i0, i1, i2, i3, i4, i5};
  be->run(x, out, in);
}

static RtInst mm(int64_t m, int64_t n, int64_t k, int ta, int tb, bool acc) {
  RtInst x = rt_inst(OP_MATMUL);
  x.m = m, x.n = n, x.k = k, x.ta = ta, x.tb = tb, x.acc[0] = acc;
  return x;
}

/* The dense SwiGLU MLP, forward and backward: x[N,D], w1 w3 [F,D], w2 [D,F]. */
static double dense(int64_t N, int64_t D, int64_t F, int reps) {
  float *x = buf(N * D, 1, 1), *w1 = buf(F * D, 2, 0.05), *w3 = buf(F * D, 3, 0.05), *w2 = buf(D * F, 4, 0.05);
  float *g = buf(N * F, 0, 0), *u = buf(N * F, 0, 0), *a = buf(N * F, 0, 0), *y = buf(N * D, 0, 0);
  float *dy = buf(N * D, 5, 1), *da = buf(N * F, 0, 0), *dg = buf(N * F, 0, 0), *du = buf(N * F, 0, 0);
  float *dx = buf(N * D, 0, 0), *dw1 = buf(F * D, 0, 0), *dw3 = buf(F * D, 0, 0), *dw2 = buf(D * F, 0, 0);
  RtInst up = mm(N, F, D, 0, 1, false), down = mm(N, D, F, 0, 1, false);
  RtInst sw = rt_inst(OP_SWIGLU), swb = rt_inst(OP_SWIGLU_BWD);
  RtInst dda = mm(N, F, D, 0, 0, false), ddw2 = mm(D, F, N, 1, 0, true), dxg = mm(N, D, F, 0, 0, false),
         dxu = mm(N, D, F, 0, 0, true), dwg = mm(F, D, N, 1, 0, true);
  sw.n = swb.n = N * F;
  double best = 1e30;
  for (int r = 0; r <= reps; r++) {
    double t = rt_now();
    run(&up, g, 0, 0, x, w1, 0, 0, 0, 0), run(&up, u, 0, 0, x, w3, 0, 0, 0, 0);
    run(&sw, a, 0, 0, g, u, 0, 0, 0, 0), run(&down, y, 0, 0, a, w2, 0, 0, 0, 0);
    run(&dda, da, 0, 0, dy, w2, 0, 0, 0, 0), run(&ddw2, dw2, 0, 0, dy, a, 0, 0, 0, 0);
    run(&swb, dg, du, 0, da, g, u, 0, 0, 0);
    run(&dxg, dx, 0, 0, dg, w1, 0, 0, 0, 0), run(&dxu, dx, 0, 0, du, w3, 0, 0, 0, 0);
    run(&dwg, dw1, 0, 0, dg, x, 0, 0, 0, 0), run(&dwg, dw3, 0, 0, du, x, 0, 0, 0, 0);
    if (r) best = best < rt_now() - t ? best : rt_now() - t;   /* the first warms up */
  }
  float *all[] = {x, w1, w3, w2, g, u, a, y, dy, da, dg, du, dx, dw1, dw3, dw2};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) free(all[i]);
  return best;
}

/* The MoE layer, forward and backward, as lmc lowers it; t[1] gets the
 * time outside the expert GEMMs (router, route, dispatch, combine and
 * their backward). */
static void moe(int64_t N, int64_t D, int64_t F, int64_t E, int64_t K, bool collapsed, int reps, double t[2]) {
  int64_t M = N * K;
  float *x = buf(N * D, 1, 1), *wr = buf(E * D, 6, 0.02), *w1 = buf(E * F * D, 2, 0.05), *w3 = buf(E * F * D, 3, 0.05),
        *w2 = buf(E * D * F, 4, 0.05), *lg = buf(N * E, 0, 0), *gt = buf(M, 0, 0), *ix = buf(M, 0, 0),
        *st = buf(2 * E + 1, 0, 0), *xp = buf(M * D, 0, 0), *cnt = buf(E, 0, 0), *pos = buf(M, 0, 0),
        *a = buf(M * F, 0, 0), *h = buf(M * 2 * F, 0, 0), *yp = buf(M * D, 0, 0), *y = buf(N * D, 0, 0),
        *dy = buf(N * D, 5, 1), *dyp = buf(M * D, 0, 0), *dgt = buf(M, 0, 0), *da = buf(M * F, 0, 0),
        *dxp = buf(M * D, 0, 0), *dx = buf(N * D, 0, 0), *dlg = buf(N * E, 0, 0), *dwr = buf(E * D, 0, 0),
        *dw1 = buf(E * F * D, 0, 0), *dw3 = buf(E * F * D, 0, 0), *dw2 = buf(E * D * F, 0, 0);
  if (collapsed)   /* every token's logits favour experts 0 and 1 */
    for (int64_t d = 0; d < D; d++) wr[d] += 1.0f, wr[D + d] += 0.5f;
  for (int64_t i = 0; collapsed && i < N * D; i++) x[i] = x[i] * 0.1f + 1.0f;
  RtInst rt = rt_inst(OP_MOE_ROUTE), dp = rt_inst(OP_MOE_DISPATCH), up = rt_inst(OP_MOE_UP), dn = rt_inst(OP_MOE_DOWN);
  RtInst cb = rt_inst(OP_MOE_COMBINE), cbb = rt_inst(OP_MOE_COMBINE_BWD), dnb = rt_inst(OP_MOE_DOWN_BWD);
  RtInst upb = rt_inst(OP_MOE_UP_BWD), dpb = rt_inst(OP_MOE_DISPATCH_BWD), rtb = rt_inst(OP_MOE_ROUTE_BWD);
  RtInst router = mm(N, E, D, 0, 1, false), drx = mm(N, D, E, 0, 0, true), drw = mm(E, D, N, 1, 0, true);
  rt.n = rtb.n = N, rt.e = rtb.e = E, rt.top = rtb.top = K, rt.rn = rtb.rn = 1;
  rtb.aux = 0.01, rtb.zl = 0.001, rtb.scale = 1.0 / N, rtb.ng = N;
  dp.n = dpb.n = cb.n = cbb.n = N, dp.d = dpb.d = cb.d = cbb.d = D, dp.top = dpb.top = cb.top = cbb.top = K;
  dp.e = dpb.e = E;
  up.m = dn.m = upb.m = dnb.m = M, up.d = dn.d = upb.d = dnb.d = D, up.n = dn.n = upb.n = dnb.n = F;
  up.seg = dn.seg = upb.seg = dnb.seg = E, up.e = dn.e = upb.e = dnb.e = E;
  upb.acc[1] = upb.acc[2] = dnb.acc[1] = true;
  double best[2] = {1e30, 1e30};
  for (int r = 0; r <= reps; r++) {
    double t0 = rt_now(), ge = 0, s;
    run(&router, lg, 0, 0, x, wr, 0, 0, 0, 0), run(&rt, gt, ix, st, lg, 0, 0, 0, 0, 0);
    run(&dp, xp, cnt, pos, x, ix, 0, 0, 0, 0);
    s = rt_now(), run(&up, a, h, 0, xp, w1, w3, cnt, 0, 0), run(&dn, yp, 0, 0, a, w2, cnt, 0, 0, 0), ge += rt_now() - s;
    run(&cb, y, 0, 0, yp, pos, gt, 0, 0, 0), run(&cbb, dyp, dgt, 0, dy, yp, pos, gt, 0, 0);
    s = rt_now(), run(&dnb, da, dw2, 0, dyp, a, w2, cnt, 0, 0);
    run(&upb, dxp, dw1, dw3, da, xp, w1, w3, cnt, h), ge += rt_now() - s;
    run(&dpb, dx, 0, 0, dxp, pos, 0, 0, 0, 0), run(&rtb, dlg, 0, 0, dgt, lg, ix, st, 0, 0);
    run(&drx, dx, 0, 0, dlg, wr, 0, 0, 0, 0), run(&drw, dwr, 0, 0, dlg, x, 0, 0, 0, 0);
    double all = rt_now() - t0;
    if (r && all < best[0]) best[0] = all, best[1] = all - ge;
  }
  t[0] = best[0], t[1] = best[1];
  double most = 0;
  for (int64_t e = 0; e < E; e++) most = cnt[e] > most ? cnt[e] : most;
  printf("  MoE, %-34s %8.2f ms | busiest expert %5.0f of %lld rows | outside the expert GEMMs %.0f%%\n",
         collapsed ? "every token to experts 0 and 1:" : "a fresh router (tokens spread):", t[0] * 1e3, most,
         (long long)M, 100 * t[1] / t[0]);
  float *all[] = {x, wr, w1, w3, w2, lg, gt, ix, st, xp, cnt, pos, a, h, yp, y, dy, dyp, dgt, da, dxp, dx, dlg, dwr, dw1, dw3, dw2};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) free(all[i]);
}

int main(int argc, char **argv) {
  int64_t N = 2048, D = 256, F = 344, E = 8, K = 2;
  int reps = 5;
  if (argc >= 6) N = atoll(argv[1]), D = atoll(argv[2]), F = atoll(argv[3]), E = atoll(argv[4]), K = atoll(argv[5]);
  if (argc >= 7) reps = atoi(argv[6]);
  if (N <= 0 || D <= 0 || F <= 0 || E <= 0 || K <= 0 || K > E || reps <= 0) rt_die("usage: bench_moe [N D F E K [REPS]]");
  be = cpu_backend(false);
  double peak = be->gemm_peak(), flops = 3 * 2.0 * N * D * (K * F) * 3;   /* three GEMMs, x3 with backward */
  printf("MoE layer: %lld tokens, D=%lld, %lld experts of width %lld, top %lld; dense MLP of width %lld (the same "
         "parameters per token)\n  sgemm peak measured here %.1f GFLOP/s\n", (long long)N, (long long)D, (long long)E,
         (long long)F, (long long)K, (long long)(K * F), peak / 1e9);
  double td = dense(N, D, K * F, reps), t[2], tc[2];
  printf("  dense MLP:                                 %8.2f ms | %.1f GFLOP/s, %.0f%% of sgemm peak\n", td * 1e3,
         flops / td / 1e9, 100 * flops / td / peak);
  moe(N, D, F, E, K, false, reps, t);
  moe(N, D, F, E, K, true, reps, tc);
  printf("  MoE over dense: %.2fx (tokens spread), %.2fx (collapsed); expert GEMMs at %.1f GFLOP/s (%.0f%% of peak)\n",
         t[0] / td, tc[0] / td, flops / (t[0] - t[1]) / 1e9, 100 * flops / (t[0] - t[1]) / peak);
  return 0;
}

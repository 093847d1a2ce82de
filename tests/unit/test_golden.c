/* test_golden.c: the CPU backend against PyTorch. Loads the reference
 * weights (through hf_import, lmrun --init-hf's reader) and batch of
 * tests/golden/llama-tiny into a bundle compiled from
 * tests/golden/llama-tiny.lm, then compares, in double precision, the
 * logits, the loss, every parameter's gradient, the loss before each of
 * three AdamW steps and after the last, and the final weights.
 * Usage: test_golden BUNDLE GOLDEN_DIR */
#include "lmrt.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct Tensor {
  char dtype[8];
  int64_t n;
  double *data;
} Tensor;

static int failures, checks;

static unsigned char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) rt_die("cannot open %s", path);
  fseek(f, 0, SEEK_END);
  *len = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *b = rt_xmalloc(*len);
  if (fread(b, 1, *len, f) != *len) rt_die("cannot read %s", path);
  fclose(f);
  return b;
}

/* A minimal safetensors reader: finds "name":{"dtype":..,"shape":[..],
 * "data_offsets":[a,b]} in the JSON header and converts to double. */
static Tensor load(const char *dir, const char *file, const char *name) {
  char path[1200], key[256];
  snprintf(path, sizeof path, "%s/%s", dir, file);
  size_t len;
  unsigned char *b = slurp(path, &len);
  uint64_t hl;
  memcpy(&hl, b, 8);
  char *hdr = rt_xmalloc(hl + 1);
  memcpy(hdr, b + 8, hl);
  snprintf(key, sizeof key, "\"%s\":", name);
  char *p = strstr(hdr, key);
  if (!p) rt_die("%s has no tensor %s", path, name);
  Tensor t = {0};
  char *dt = strstr(p, "\"dtype\":\"");
  sscanf(dt + 9, "%7[^\"]", t.dtype);
  char *off = strstr(p, "\"data_offsets\":[");
  long long a, e;
  sscanf(off + 16, "%lld,%lld", &a, &e);
  int esz = !strcmp(t.dtype, "F64") ? 8 : 4;
  t.n = (e - a) / esz;
  t.data = rt_xmalloc(t.n * sizeof(double));
  const unsigned char *src = b + 8 + hl + a;
  for (int64_t i = 0; i < t.n; i++) {
    if (!strcmp(t.dtype, "F64")) memcpy(&t.data[i], src + 8 * i, 8);
    else if (!strcmp(t.dtype, "F32")) { float f; memcpy(&f, src + 4 * i, 4); t.data[i] = f; }
    else { int32_t v; memcpy(&v, src + 4 * i, 4); t.data[i] = v; }
  }
  free(hdr), free(b);
  return t;
}

static void compare(const char *what, const double *got, const double *want, int64_t n,
                    double atol, double rtol) {
  double worst = 0;
  int64_t at = 0, bad = 0;
  for (int64_t i = 0; i < n; i++) {
    double err = fabs(got[i] - want[i]), tol = atol + rtol * fabs(want[i]);
    if (err > tol) bad++;
    if (err / tol > worst) worst = err / tol, at = i;
  }
  checks++;
  if (bad) {
    failures++;
    printf("FAIL %-52s %lld of %lld outside tolerance; worst [%lld] got %.12e want %.12e\n", what,
           (long long)bad, (long long)n, (long long)at, got[at], want[at]);
  } else
    printf("ok   %-52s max err/tol %.2e (n=%lld)\n", what, worst, (long long)n);
}

/* Each parameter's tensor from the run (get) against the reference's
 * `<prefix><HF name>` (an expert weight: one per expert), rtol 1e-7. */
static void compare_params(Run *r, const char *gd, const char *prefix, const char *label,
                           void (*get)(Run *, int, double *), double atol) {
  for (int p = 0; p < r->b->nparams; p++) {
    RtParam *pp = &r->b->params[p];
    int64_t parts = hf_parts(pp), per = pp->numel / parts;
    double *got = rt_xmalloc(pp->numel * sizeof(double));
    get(r, p, got);
    for (int64_t part = 0; part < parts; part++) {
      char name[256], ref[300], what[300];
      if (!hf_part_name(pp, part, name, sizeof name)) rt_die("no reference name for %s", pp->name);
      snprintf(ref, sizeof ref, "%s%s", prefix, name);
      snprintf(what, sizeof what, parts > 1 ? "%s%s[%lld]" : "%s%s", label, pp->name, (long long)part);
      Tensor want = load(gd, "expected.safetensors", ref);
      if (want.n != per) rt_die("%s: %lld elements, the reference %lld", what, (long long)per, (long long)want.n);
      compare(what, got + part * per, want.data, want.n, atol, 1e-7);
      free(want.data);
    }
    free(got);
  }
}

/* MoE layers: each layer's aux and z losses (its metrics value) against
 * the reference's; the cross-entropy is the loss less their weighted sum. */
static double compare_moe(Run *r, const char *gd, double loss) {
  Bundle *b = r->b;
  double aux_coef = 0, z_coef = 0;
  for (int i = 0; i < b->nfwd; i++)
    if (b->fwd[i].op == OP_MOE_LOSS) aux_coef = b->fwd[i].aux, z_coef = b->fwd[i].zl;
  for (int layer = 0;; layer++) {
    char name[64], ref[64];
    int v = -1;
    snprintf(name, sizeof name, "layers.%d.moe", layer);
    for (int i = 0; i < b->nvals; i++)
      if (b->vals[i].present && !strcmp(b->vals[i].name, name)) v = i;
    if (v < 0) return loss;
    double m[4];
    rt_get_value(r, v, m);
    const char *what[2] = {"aux", "z"};
    for (int k = 0; k < 2; k++) {
      snprintf(ref, sizeof ref, "moe.layer%d.%s", layer, what[k]);
      snprintf(name, sizeof name, "layer %d %s loss", layer, what[k]);
      Tensor want = load(gd, "expected.safetensors", ref);
      compare(name, &m[k], want.data, 1, 1e-12, 1e-10);
      free(want.data);
    }
    loss -= aux_coef * m[0] + z_coef * m[1];
  }
}

int main(int argc, char **argv) {
  if (argc != 3) rt_die("usage: test_golden BUNDLE GOLDEN_DIR");
  const char *gd = argv[2];
  Bundle *b = bundle_load(argv[1], 0);
  Run *r = rt_new(b, cpu_backend(true));
  hf_import(r, gd);   /* the reference's weights through --init-hf's reader */
  Tensor ids = load(gd, "batch.safetensors", "input_ids"), tg = load(gd, "batch.safetensors", "targets");
  int64_t B = b->B, T = b->T;
  int32_t *rows = rt_xmalloc(B * (T + 1) * sizeof(int32_t));
  for (int64_t i = 0; i < B; i++) {      /* rows of T+1: inputs, then the last target */
    for (int64_t t = 0; t < T; t++) rows[i * (T + 1) + t] = (int32_t)ids.data[i * T + t];
    rows[i * (T + 1) + T] = (int32_t)tg.data[i * T + T - 1];
    for (int64_t t = 0; t + 1 < T; t++)
      if (tg.data[i * T + t] != ids.data[i * T + t + 1]) rt_die("targets are not inputs shifted by one");
  }
  /* forward + backward */
  rt_zero_grads(r);
  rt_load_micro(r, rows, B);
  rt_forward(r);
  /* read the logits before the backward pass reuses their memory; a fused
   * head (lmc without --no-fuse) never stores them */
  Tensor lw = load(gd, "expected.safetensors", "logits");
  double *lg = rt_xmalloc(lw.n * sizeof(double));
  if (b->fwd[b->nfwd - 1].op == OP_HEAD_XENT || b->fwd[b->nfwd - 1].op == OP_HEAD_DL)
    printf("skip logits: the head is fused (the --no-fuse bundle checks them)\n");
  else {
    rt_get_value(r, b->fwd[b->nfwd - 1].in[0], lg);
    compare("logits", lg, lw.data, lw.n, 1e-10, 1e-8);
  }
  rt_backward(r);
  Tensor ce = load(gd, "expected.safetensors", "loss.ce"), total = load(gd, "expected.safetensors", "loss.total");
  double loss = rt_loss(r), xent = compare_moe(r, gd, loss);
  compare("loss (total)", &loss, total.data, 1, 1e-12, 1e-10);
  compare("cross-entropy", &xent, ce.data, 1, 1e-12, 1e-10);
  free(total.data);
  compare_params(r, gd, "grad.", "grad ", rt_get_grad, 1e-10);
  /* three AdamW steps through the schedule's step, constant lr */
  Tensor losses = load(gd, "expected.safetensors", "adamw.losses");
  double got_losses[8], gn;
  for (int s = 0; s < 3; s++) got_losses[s] = rt_step(r, rows, b->train.lr, &gn);
  got_losses[3] = rt_eval(r, rows);
  compare("adamw losses (before each step, after the last)", got_losses, losses.data, 4, 1e-10, 1e-8);
  compare_params(r, gd, "adamw.final.", "after 3 adamw steps ", rt_get_param, 1e-9);
  printf("%d passed, %d failed\n", checks - failures, failures);
  free(ids.data), free(tg.data), free(lw.data), free(ce.data), free(losses.data);
  free(lg), free(rows);
  rt_free(r);
  bundle_free(b);
  return failures ? 1 : 0;
}

/* test_hf.c: a trained model exported as a Hugging Face Llama and
 * imported again computes the same logits, bit for bit (fp32 weights are
 * written as F32), and exporting the import gives the same bytes.
 * Usage: test_hf BUNDLE CKPT TMPDIR  (BUNDLE: a Llama without the fused
 * head, so that its logits are a tensor) */
#include "lmrt.h"
#include <stdlib.h>
#include <string.h>

static double *logits(Run *r, const int32_t *rows) {
  Bundle *b = r->b;
  const RtInst *last = &b->fwd[b->nfwd - 1];
  if (last->op != OP_XENT) rt_die("test_hf needs a bundle whose logits are a tensor (lmc --no-fuse)");
  int64_t n = b->vals[last->in[0]].n;
  double *x = rt_xmalloc(n * sizeof *x);
  rt_load_micro(r, rows, b->B);
  rt_forward(r);
  rt_get_value(r, last->in[0], x);
  return x;
}

static unsigned char *slurp(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) rt_die("cannot open %s", path);
  fseek(f, 0, SEEK_END);
  *n = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *b = rt_xmalloc(*n);
  if (fread(b, 1, *n, f) != *n) rt_die("cannot read %s", path);
  fclose(f);
  return b;
}

int main(int argc, char **argv) {
  if (argc != 4) rt_die("usage: test_hf BUNDLE CKPT TMPDIR");
  Bundle *b = bundle_load(argv[1], 0);
  int32_t *rows = rt_xmalloc(b->B * (b->T + 1) * sizeof *rows);
  for (int64_t i = 0; i < b->B * (b->T + 1); i++) rows[i] = (int32_t)(rng_hash(5, 0, i) % b->vocab);
  char d1[1100], d2[1100], f1[1200], f2[1200];
  snprintf(d1, sizeof d1, "%s/hf1", argv[3]), snprintf(d2, sizeof d2, "%s/hf2", argv[3]);
  Run *a = rt_new(b, cpu_backend(false));
  CkptInfo info;
  rt_init_params(a, 1);
  ckpt_load(a, argv[2], &info);
  double *la = logits(a, rows);
  hf_export(a, d1);
  Run *c = rt_new(b, cpu_backend(false));
  rt_init_params(c, 99);   /* other weights, all to be replaced */
  hf_import(c, d1);
  double *lc = logits(c, rows);
  int64_t n = b->vals[b->fwd[b->nfwd - 1].in[0]].n, diff = 0;
  for (int64_t i = 0; i < n; i++) diff += memcmp(&la[i], &lc[i], sizeof *la) != 0;
  printf("%s exported from step %lld and imported: %lld of %lld logits differ\n", diff ? "FAIL" : "ok  ",
         (long long)info.step, (long long)diff, (long long)n);
  hf_export(c, d2);
  size_t n1, n2;
  snprintf(f1, sizeof f1, "%s/model.safetensors", d1), snprintf(f2, sizeof f2, "%s/model.safetensors", d2);
  unsigned char *x1 = slurp(f1, &n1), *x2 = slurp(f2, &n2);
  bool same = n1 == n2 && !memcmp(x1, x2, n1);
  printf("%s exporting the import gives the same %zu bytes\n", same ? "ok  " : "FAIL", n1);
  printf("%d passed, %d failed\n", !diff + same, !!diff + !same);
  free(la), free(lc), free(x1), free(x2), free(rows);
  rt_free(a), rt_free(c);
  bundle_free(b);
  return diff || !same;
}

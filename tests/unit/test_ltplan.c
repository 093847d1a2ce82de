/* test_ltplan.c: the CUDA backend's GEMM mapping, checked without a GPU.
 * For every transpose combination and padded leading dimensions (as
 * attention's per-head GEMMs use), the column-major call that lt_plan()
 * describes, run through CBLAS, must equal the row-major product the
 * instruction asks for, and each operand's shape must agree with the
 * product's (as cuBLASLt requires). And the parts lt_parts() splits a
 * weight gradient's GEMM into, at GPT-2's and llama-large's shapes on an
 * H200's 132 SMs. */
#include "lmrt.h"
#include <cblas.h>
#include <math.h>
#include <stdlib.h>

static int failures, checks;

static void one(bool ta, bool tb, int m, int n, int k, int pad) {
  int lda = (ta ? m : k) + pad, ldb = (tb ? k : n) + pad, ldc = n + pad;
  int arows = ta ? k : m, brows = tb ? n : k;
  float *a = calloc((size_t)arows * lda, 4), *b = calloc((size_t)brows * ldb, 4);
  float *c = calloc((size_t)m * ldc, 4), *want = calloc((size_t)m * ldc, 4);
  for (int i = 0; i < arows * lda; i++) a[i] = (float)rng_normal(1, i);
  for (int i = 0; i < brows * ldb; i++) b[i] = (float)rng_normal(2, i);
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n, k, 1, a,
              lda, b, ldb, 0, want, ldc);
  LtPlan p = lt_plan(ta, tb, m, n, k, lda, ldb, ldc);
  bool shapes = (p.trans_a ? p.a_cols : p.a_rows) == p.c_rows && (p.trans_a ? p.a_rows : p.a_cols) == k &&
                (p.trans_b ? p.b_cols : p.b_rows) == k && (p.trans_b ? p.b_rows : p.b_cols) == p.c_cols &&
                p.a_ld >= p.a_rows && p.b_ld >= p.b_rows && p.c_ld >= p.c_rows;
  cblas_sgemm(CblasColMajor, p.trans_a ? CblasTrans : CblasNoTrans, p.trans_b ? CblasTrans : CblasNoTrans,
              (int)p.c_rows, (int)p.c_cols, k, 1, b, (int)p.a_ld, a, (int)p.b_ld, 0, c, (int)p.c_ld);
  double worst = 0;
  for (int i = 0; i < m; i++)
    for (int j = 0; j < n; j++) worst = fmax(worst, fabs(c[i * ldc + j] - want[i * ldc + j]));
  bool ok = shapes && worst < 1e-4;
  checks++, failures += !ok;
  printf("%s ta=%d tb=%d m=%d n=%d k=%d pad=%d: max diff %.1e%s\n", ok ? "ok  " : "FAIL", ta, tb, m, n, k, pad,
         worst, shapes ? "" : ", operand shapes disagree");
  free(a), free(b), free(c), free(want);
}

static void parts(int64_t m, int64_t n, int64_t k, int want) {
  int got = lt_parts(m, n, k, 132, true);
  checks++, failures += got != want;
  printf("%s %lld x %lld over %lld rows: %d parts (want %d)\n", got == want ? "ok  " : "FAIL", (long long)m,
         (long long)n, (long long)k, got, want);
}

int main(void) {
  parts(768, 768, 8192, 8);      /* GPT-2's attention output: 36 tiles */
  parts(3072, 768, 8192, 4);     /* its MLP's two */
  parts(768, 3072, 8192, 4);
  parts(2304, 768, 8192, 1);     /* q, k, v: 108 tiles, a wave */
  parts(50304, 768, 8192, 1);    /* the head */
  parts(1536, 1536, 16384, 4);   /* llama-large's q and o: 144 tiles, 1.09 waves */
  parts(384, 1536, 16384, 8);    /* its k and v: 36 */
  parts(4096, 1536, 16384, 1);   /* gate and up: 2.9 waves */
  parts(768, 768, 8008, 1);      /* no part a multiple of 64 rows */
  parts(64, 64, 512, 1);         /* parts under 512 rows */
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++) {
      one(ta, tb, 7, 5, 3, 0);
      one(ta, tb, 16, 9, 24, 5);
    }
  printf("%d passed, %d failed\n", checks - failures, failures);
  return failures ? 1 : 0;
}

/* ltplan.c: how a row-major GEMM maps onto column-major cuBLASLt. The
 * row-major C[m,n] = op(A) op(B) is the column-major C^T[n,m] =
 * op(B)^T op(A)^T, so cuBLASLt's first operand is our B and its second our
 * A, each described by the column-major view of its row-major storage. Kept
 * apart from cuda.c so that tests/unit/test_ltplan.c can check the mapping
 * against CBLAS on machines without a GPU. */
#include "lmrt.h"

LtPlan lt_plan(bool ta, bool tb, int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc) {
  LtPlan p;
  p.trans_a = tb, p.trans_b = ta;                 /* cuBLASLt's A is our B */
  p.a_rows = tb ? k : n, p.a_cols = tb ? n : k, p.a_ld = ldb;
  p.b_rows = ta ? m : k, p.b_cols = ta ? k : m, p.b_ld = lda;
  p.c_rows = n, p.c_cols = m, p.c_ld = ldc;
  return p;
}

/* The parts a weight's gradient GEMM (C[m, n] (+)= A' B, k the step's
 * tokens) runs in, split over k: 1 to 16, the fewest microseconds by a
 * model of an H100 or H200 running cuBLASLt's bf16 kernels. Each 128 x
 * 128 tile of C is a block on an SM of sms, one wave of blocks after
 * another, each block over its part's k / s rows at 5.5 ns a row (2 x 128
 * x 128 FLOP at 6 TFLOP/s an SM: the 800 TFLOP/s cuBLASLt reaches over
 * 132 SMs); with parts, one pass then reads the s partial outputs (and C
 * where the gradient adds to it) and writes C, fp32, at 3 TB/s. A part
 * stays a multiple of 64 rows and at least 512 (so with k a power of
 * two, as a step's tokens are, the parts are too); a split must save a
 * tenth. GPT-2 (k 8192 tokens): 768 x 768 in 8 parts (36 tiles: 45 us
 * whole, 25 in parts), 3072 x 768 and 768 x 3072 in 4 (90 against 75),
 * 2304 x 768 whole (108 tiles, one wave); llama-large (k 16384): 1536 x
 * 1536 in 4 (180 against 132), 384 x 1536 in 8 (90 against 42), 4096 x
 * 1536 whole. */
int lt_parts(int64_t m, int64_t n, int64_t k, int sms, bool acc) {
  int64_t tiles = ((m + 127) / 128) * ((n + 127) / 128);
  double whole = 0, best = 0;
  int parts = 1;
  if (sms < 1) sms = 1;
  for (int s = 1; s <= 16; s++) {
    if (s > 1 && (k % s || (k / s) % 64 || k / s < 512)) continue;
    double us = (double)((tiles * s + sms - 1) / sms) * (double)(k / s) * 0.0055;
    if (s > 1) us += (double)(s + 1 + acc) * (double)m * (double)n * 4 / 3e6;
    if (s == 1) whole = best = us;
    else if (us < best && us < 0.9 * whole) best = us, parts = s;
  }
  return parts;
}

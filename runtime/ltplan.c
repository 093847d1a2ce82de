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

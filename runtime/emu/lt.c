/* lt.c: the emulated cuBLASLt. D = epilogue(alpha op(A) op(B) + beta C),
 * column-major or row-major layouts with leading dimensions, batch counts
 * and strides; A and B in fp32, bf16 or fp16 (converted exactly to fp32),
 * fp32 accumulation through CBLAS, C and D in fp32, bf16 or fp16 (D
 * rounded to nearest even). Epilogues: bias, ReLU, GELU (tanh), their aux
 * outputs, GELU's gradient and the bias gradients. Every operand must lie
 * inside one device allocation. What it does not emulate is an error
 * (CUBLAS_STATUS_NOT_SUPPORTED with the reason on stderr), never a silent
 * fallback. */
#include "emu.h"
#include <cblas.h>
#include <cublasLt.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

struct cublasLtContext { int unused; };

typedef struct Layout {
  cudaDataType type;
  int32_t order;
  uint64_t rows, cols;
  int64_t ld, stride;
  int32_t batch;
} Layout;

typedef struct Desc {
  cublasComputeType_t compute;
  cudaDataType scale;
  int32_t transa, transb, pointer_mode, bias_type, aux_type;
  uint32_t epilogue;
  void *bias, *aux;
  int64_t bias_stride, aux_ld, aux_stride;
} Desc;

static cublasStatus_t lt_fail(cublasStatus_t rc, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(emu_error, sizeof emu_error, fmt, ap);
  va_end(ap);
  fprintf(stderr, "emulated cuBLASLt: %s\n", emu_error);
  return rc;
}

size_t cublasLtGetVersion(void) { return 130000; }
const char *cublasLtGetStatusString(cublasStatus_t s) { return s == CUBLAS_STATUS_SUCCESS ? "success" : emu_error; }
cublasStatus_t cublasLtCreate(cublasLtHandle_t *h) {
  static struct cublasLtContext one;
  return *h = &one, CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtDestroy(cublasLtHandle_t h) { return CUBLAS_STATUS_SUCCESS; }

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *d, cublasComputeType_t compute, cudaDataType_t scale) {
  Desc *x = calloc(1, sizeof *x);
  if (!x) return CUBLAS_STATUS_ALLOC_FAILED;
  x->compute = compute, x->scale = scale, x->epilogue = CUBLASLT_EPILOGUE_DEFAULT, x->bias_type = -1, x->aux_type = -1;
  *d = (cublasLtMatmulDesc_t)x;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) { return free(d), CUBLAS_STATUS_SUCCESS; }

#define SET(field) do { if (n != sizeof x->field) goto bad; memcpy(&x->field, v, n); } while (0)
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t a, const void *v,
                                              size_t n) {
  Desc *x = (Desc *)d;
  switch (a) {
  case CUBLASLT_MATMUL_DESC_TRANSA: SET(transa); break;
  case CUBLASLT_MATMUL_DESC_TRANSB: SET(transb); break;
  case CUBLASLT_MATMUL_DESC_EPILOGUE: SET(epilogue); break;
  case CUBLASLT_MATMUL_DESC_POINTER_MODE: SET(pointer_mode); break;
  case CUBLASLT_MATMUL_DESC_BIAS_POINTER: SET(bias); break;
  case CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE: SET(bias_stride); break;
  case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: SET(bias_type); break;
  case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER: SET(aux); break;
  case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD: SET(aux_ld); break;
  case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE: SET(aux_stride); break;
  case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE: SET(aux_type); break;
  case CUBLASLT_MATMUL_DESC_SCALE_TYPE: SET(scale); break;
  case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE: SET(compute); break;
  default: return lt_fail(CUBLAS_STATUS_NOT_SUPPORTED, "matmul descriptor attribute %d is not emulated", (int)a);
  }
  return CUBLAS_STATUS_SUCCESS;
bad:
  return lt_fail(CUBLAS_STATUS_INVALID_VALUE, "matmul descriptor attribute %d: %zu bytes is the wrong size", (int)a, n);
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *l, cudaDataType type, uint64_t rows, uint64_t cols,
                                          int64_t ld) {
  Layout *x = calloc(1, sizeof *x);
  if (!x) return CUBLAS_STATUS_ALLOC_FAILED;
  *x = (Layout){type, CUBLASLT_ORDER_COL, rows, cols, ld, 0, 1};
  *l = (cublasLtMatrixLayout_t)x;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) { return free(l), CUBLAS_STATUS_SUCCESS; }

cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t l, cublasLtMatrixLayoutAttribute_t a,
                                                const void *v, size_t n) {
  Layout *x = (Layout *)l;
  switch (a) {
  case CUBLASLT_MATRIX_LAYOUT_ORDER: SET(order); break;
  case CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT: SET(batch); break;
  case CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET: SET(stride); break;
  case CUBLASLT_MATRIX_LAYOUT_LD: SET(ld); break;
  default: return lt_fail(CUBLAS_STATUS_NOT_SUPPORTED, "matrix layout attribute %d is not emulated", (int)a);
  }
  return CUBLAS_STATUS_SUCCESS;
bad:
  return lt_fail(CUBLAS_STATUS_INVALID_VALUE, "matrix layout attribute %d: %zu bytes is the wrong size", (int)a, n);
}
#undef SET

/* The algorithm the emulated heuristic gives (cublasLtMatmul takes it, or
 * none, for any shape, and refuses one it did not give) */
#define EMU_ALGO 0x656d752d616c676full
#define EMU_ALGOS 3   /* the heuristic's answers: the same product under three names */

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *p) {
  *p = calloc(1, 64);
  return *p ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_ALLOC_FAILED;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) { return free(p), CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p, cublasLtMatmulPreferenceAttributes_t a,
                                                    const void *v, size_t n) {
  return CUBLAS_STATUS_SUCCESS;   /* the emulator needs no workspace */
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t h, cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t a,
                                              cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c,
                                              cublasLtMatrixLayout_t dd, cublasLtMatmulPreference_t p, int want,
                                              cublasLtMatmulHeuristicResult_t *out, int *got) {
  if (want < 1) return lt_fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmulAlgoGetHeuristic: asks for %d results", want);
  *got = want < EMU_ALGOS ? want : EMU_ALGOS;   /* algorithms that differ in name only */
  for (int i = 0; i < *got; i++) {
    memset(&out[i], 0, sizeof *out);
    out[i].algo.data[0] = EMU_ALGO + (uint64_t)i;
    out[i].wavesCount = 1.0f;
  }
  return CUBLAS_STATUS_SUCCESS;
}

/* ---- the product ---- */

static int elem(cudaDataType t) { return t == CUDA_R_32F ? 4 : t == CUDA_R_16BF || t == CUDA_R_16F ? 2 : 0; }

static float load(const void *p, int64_t i, cudaDataType t) {
  if (t == CUDA_R_32F) return ((const float *)p)[i];
  uint16_t h = ((const uint16_t *)p)[i];
  return t == CUDA_R_16BF ? lmc_bf2f(h) : lmc_h2f(h);
}

static void store(void *p, int64_t i, float v, cudaDataType t) {
  if (t == CUDA_R_32F) ((float *)p)[i] = v;
  else ((uint16_t *)p)[i] = t == CUDA_R_16F ? lmc_f2h(v) : lmc_f2bf(v);
}

/* Element (i, j) of the matrix a layout describes, as stored. */
static int64_t at(const Layout *l, int64_t i, int64_t j) { return l->order == CUBLASLT_ORDER_ROW ? i * l->ld + j : j * l->ld + i; }

static bool fits(const char *name, const Layout *l, const void *p) {
  if (!p) return lt_fail(0, "cublasLtMatmul: matrix %s is NULL", name), false;
  int64_t lead = l->order == CUBLASLT_ORDER_ROW ? (int64_t)l->cols : (int64_t)l->rows;
  if (l->ld < lead)
    return lt_fail(0, "cublasLtMatmul: matrix %s has leading dimension %lld < %lld", name, (long long)l->ld,
                   (long long)lead), false;
  int64_t outer = l->order == CUBLASLT_ORDER_ROW ? (int64_t)l->rows : (int64_t)l->cols;
  size_t bytes = ((outer - 1) * l->ld + lead + (int64_t)(l->batch - 1) * l->stride) * elem(l->type);
  char what[64];
  snprintf(what, sizeof what, "cublasLtMatmul: matrix %s (%llux%llu, ld %lld)", name, (unsigned long long)l->rows,
           (unsigned long long)l->cols, (long long)l->ld);
  if (!emu_check_range(what, p, bytes)) return fprintf(stderr, "emulated cuBLASLt: %s\n", emu_error), false;
  return true;
}

typedef struct Gemm {
  Desc d;
  Layout a, b, c, D;
  float alpha, beta;
  const void *A, *B, *C;
  void *Dp;
} Gemm;

static float gelu(float x) { return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x))); }
static float dgelu(float x) {
  float c = 0.7978845608028654f, th = tanhf(c * (x + 0.044715f * x * x * x));
  return 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * c * (1.0f + 3.0f * 0.044715f * x * x);
}

/* op(X) of one batch as a dense column-major fp32 rows x cols matrix */
static float *dense(const Layout *l, const void *p, bool trans, int64_t rows, int64_t cols) {
  float *m = malloc((size_t)rows * cols * sizeof *m);
  if (!m) return NULL;
  for (int64_t j = 0; j < cols; j++)
    for (int64_t i = 0; i < rows; i++) m[j * rows + i] = load(p, trans ? at(l, j, i) : at(l, i, j), l->type);
  return m;
}

/* fp32 inputs rounded to tf32 (10 mantissa bits, to nearest, ties away from
 * zero, as cvt.rna.tf32.f32): what the tensor cores multiply under
 * CUBLAS_COMPUTE_32F_FAST_TF32. cuBLAS may convert differently in the last
 * bit; checks against fp32 allow for tf32's precision, not for this. */
static void tf32(float *x, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    uint32_t u;
    memcpy(&u, &x[i], 4);
    if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & ~0x1fffu;   /* not inf or NaN */
    memcpy(&x[i], &u, 4);
  }
}

/* fp32 inputs rounded to bf16 (to nearest even), for
 * CUBLAS_COMPUTE_32F_FAST_16BF */
static void bf16(float *x, int64_t n) {
  for (int64_t i = 0; i < n; i++) x[i] = lmc_bf2f(lmc_f2bf(x[i]));
}

static void epilogue(const Gemm *g, int bi, int64_t m, int64_t n, float *acc, const float *opa, const float *opb,
                     int64_t k) {
  const Desc *d = &g->d;
  uint32_t e = d->epilogue;
  cudaDataType bt = d->bias_type >= 0 ? (cudaDataType)d->bias_type : g->D.type;
  cudaDataType xt = d->aux_type >= 0 ? (cudaDataType)d->aux_type : g->D.type;
  char *bias = (char *)d->bias + bi * d->bias_stride * elem(bt), *aux = (char *)d->aux + bi * d->aux_stride * elem(xt);
  for (int64_t j = 0; j < n; j++)
    for (int64_t i = 0; i < m; i++) {
      float v = acc[j * m + i];
      if (e & CUBLASLT_EPILOGUE_BIAS) v += load(bias, i, bt);
      if ((e & 128) && !(e & 64) && !(e & 8)) store(aux, j * d->aux_ld + i, v, xt);   /* pre-activation */
      if (e & 64) v *= dgelu(load(aux, j * d->aux_ld + i, xt));
      else if (e & 32) v = gelu(v);
      else if ((e & 2) && v < 0) v = 0;
      acc[j * m + i] = v;
    }
  if (e == CUBLASLT_EPILOGUE_BGRADA || e == CUBLASLT_EPILOGUE_BGRADB || e == CUBLASLT_EPILOGUE_DGELU_BGRAD) {
    int64_t len = e == CUBLASLT_EPILOGUE_BGRADB ? n : m;
    for (int64_t i = 0; i < len; i++) {
      float s = 0;
      if (e == CUBLASLT_EPILOGUE_BGRADA) for (int64_t q = 0; q < k; q++) s += opa[q * m + i];
      else if (e == CUBLASLT_EPILOGUE_BGRADB) for (int64_t q = 0; q < k; q++) s += opb[i * k + q];
      else for (int64_t j = 0; j < n; j++) s += acc[j * m + i];
      store(bias, i, s, bt);
    }
  }
}

static int do_gemm(void *arg) {
  const Gemm *g = arg;
  bool ta = g->d.transa == CUBLAS_OP_T, tb = g->d.transb == CUBLAS_OP_T;
  int64_t m = g->D.rows, n = g->D.cols, k = ta ? g->a.rows : g->a.cols;
  for (int bi = 0; bi < g->D.batch; bi++) {
    const char *A = (const char *)g->A + bi * g->a.stride * elem(g->a.type);
    const char *B = (const char *)g->B + bi * g->b.stride * elem(g->b.type);
    const char *C = (const char *)g->C + bi * g->c.stride * elem(g->c.type);
    char *D = (char *)g->Dp + bi * g->D.stride * elem(g->D.type);
    float *opa = dense(&g->a, A, ta, m, k), *opb = dense(&g->b, B, tb, k, n), *acc = malloc((size_t)m * n * sizeof *acc);
    if (!opa || !opb || !acc) return free(opa), free(opb), free(acc), CUBLAS_STATUS_ALLOC_FAILED;
    if (g->d.compute == CUBLAS_COMPUTE_32F_FAST_TF32) tf32(opa, m * k), tf32(opb, k * n);
    if (g->d.compute == CUBLAS_COMPUTE_32F_FAST_16BF) bf16(opa, m * k), bf16(opb, k * n);
    if (k) cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, m, n, k, g->alpha, opa, m, opb, k, 0.0f, acc, m);
    else memset(acc, 0, (size_t)m * n * sizeof *acc);
    if (g->beta != 0.0f)   /* C is not read when beta is 0, as on the GPU */
      for (int64_t j = 0; j < n; j++)
        for (int64_t i = 0; i < m; i++) acc[j * m + i] += g->beta * load(C, at(&g->c, i, j), g->c.type);
    epilogue(g, bi, m, n, acc, opa, opb, k);
    for (int64_t j = 0; j < n; j++)
      for (int64_t i = 0; i < m; i++) store(D, at(&g->D, i, j), acc[j * m + i], g->D.type);
    free(opa), free(opb), free(acc);
  }
  return CUBLAS_STATUS_SUCCESS;
}

static cublasStatus_t check(const Gemm *g) {
  const Desc *d = &g->d;
  bool fast = d->compute == CUBLAS_COMPUTE_32F_FAST_TF32 || d->compute == CUBLAS_COMPUTE_32F_FAST_16BF;
  if ((d->compute != CUBLAS_COMPUTE_32F && !fast) || d->scale != CUDA_R_32F)
    return lt_fail(CUBLAS_STATUS_NOT_SUPPORTED,
                   "compute type %d, scale type %d: only fp32 (and its fast tf32 and bf16) compute and fp32 scale are "
                   "emulated", (int)d->compute, (int)d->scale);
  if (fast && (g->a.type != CUDA_R_32F || g->b.type != CUDA_R_32F))
    return lt_fail(CUBLAS_STATUS_NOT_SUPPORTED, "fast tf32 or bf16 compute takes fp32 A and B");
  if (d->pointer_mode != CUBLASLT_POINTER_MODE_HOST)
    return lt_fail(CUBLAS_STATUS_NOT_SUPPORTED, "only host pointers for alpha and beta are emulated");
  uint32_t e = d->epilogue, ok[] = {CUBLASLT_EPILOGUE_DEFAULT, CUBLASLT_EPILOGUE_RELU, CUBLASLT_EPILOGUE_BIAS,
      CUBLASLT_EPILOGUE_RELU_BIAS, CUBLASLT_EPILOGUE_GELU, CUBLASLT_EPILOGUE_GELU_BIAS, CUBLASLT_EPILOGUE_GELU_AUX,
      CUBLASLT_EPILOGUE_GELU_AUX_BIAS,
      CUBLASLT_EPILOGUE_DGELU, CUBLASLT_EPILOGUE_DGELU_BGRAD, CUBLASLT_EPILOGUE_BGRADA, CUBLASLT_EPILOGUE_BGRADB};
  bool known = false;
  for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) known |= e == ok[i];
  if (!known) return lt_fail(CUBLAS_STATUS_NOT_SUPPORTED, "epilogue %u is not emulated", e);
  if (e == CUBLASLT_EPILOGUE_BGRADB && d->transb != CUBLAS_OP_T)   /* as cuBLASLt 13 on an H200 answered */
    return lt_fail(CUBLAS_STATUS_NOT_SUPPORTED, "CUBLASLT_EPILOGUE_BGRADB only works with transposed B");
  if (e == CUBLASLT_EPILOGUE_BGRADB && g->b.order != CUBLASLT_ORDER_COL)   /* the same H200, a second time */
    return lt_fail(CUBLAS_STATUS_NOT_SUPPORTED, "CUBLASLT_EPILOGUE_BGRADB only works with B in CUBLASLT_ORDER_COL order");
  if (((e & CUBLASLT_EPILOGUE_BIAS) || e == CUBLASLT_EPILOGUE_BGRADA || e == CUBLASLT_EPILOGUE_BGRADB ||
       e == CUBLASLT_EPILOGUE_DGELU) && getenv("LMC_CUDA_EMU_REFUSE_BIAS"))   /* tests: the runtime's way around */
    return lt_fail(CUBLAS_STATUS_NOT_SUPPORTED, "epilogue %u refused (LMC_CUDA_EMU_REFUSE_BIAS)", e);
  if ((e & CUBLASLT_EPILOGUE_BIAS) && d->bias_type >= 0 && d->bias_type != (int32_t)g->D.type)   /* cublasLt.h's rule */
    return lt_fail(CUBLAS_STATUS_NOT_SUPPORTED, "epilogue %u: the bias (type %d) must be of D's type (%d)", e,
                   (int)d->bias_type, (int)g->D.type);
  if (((e & CUBLASLT_EPILOGUE_BIAS) || e == CUBLASLT_EPILOGUE_BGRADA || e == CUBLASLT_EPILOGUE_BGRADB ||
       e == CUBLASLT_EPILOGUE_DGELU_BGRAD) && !d->bias)
    return lt_fail(CUBLAS_STATUS_INVALID_VALUE, "epilogue %u needs CUBLASLT_MATMUL_DESC_BIAS_POINTER", e);
  if ((e & 128) && (!d->aux || d->aux_ld < (int64_t)g->D.rows))
    return lt_fail(CUBLAS_STATUS_INVALID_VALUE, "epilogue %u needs an aux pointer and an aux ld >= %llu", e,
                   (unsigned long long)g->D.rows);
  if (g->a.type != g->b.type || !elem(g->a.type) || g->c.type != g->D.type || !elem(g->D.type) ||
      (g->a.type == CUDA_R_32F && g->D.type != CUDA_R_32F))
    return lt_fail(CUBLAS_STATUS_NOT_SUPPORTED, "types A %d, B %d, C %d, D %d: not an emulated combination",
                   (int)g->a.type, (int)g->b.type, (int)g->c.type, (int)g->D.type);
  bool ta = d->transa == CUBLAS_OP_T, tb = d->transb == CUBLAS_OP_T;
  uint64_t m = g->D.rows, n = g->D.cols, k = ta ? g->a.rows : g->a.cols;
  if ((ta ? g->a.cols : g->a.rows) != m || (tb ? g->b.cols : g->b.rows) != k || (tb ? g->b.rows : g->b.cols) != n ||
      g->c.rows != m || g->c.cols != n)
    return lt_fail(CUBLAS_STATUS_INVALID_VALUE, "shapes do not agree: op(A) %llux%llu, op(B) %llux%llu, C %llux%llu, D %llux%llu",
                   (unsigned long long)(ta ? g->a.cols : g->a.rows), (unsigned long long)k,
                   (unsigned long long)(tb ? g->b.cols : g->b.rows), (unsigned long long)(tb ? g->b.rows : g->b.cols),
                   (unsigned long long)g->c.rows, (unsigned long long)g->c.cols, (unsigned long long)m,
                   (unsigned long long)n);
  if (g->a.batch != g->D.batch || g->b.batch != g->D.batch || g->c.batch != g->D.batch)
    return lt_fail(CUBLAS_STATUS_INVALID_VALUE, "batch counts differ: A %d, B %d, C %d, D %d", g->a.batch, g->b.batch,
                   g->c.batch, g->D.batch);
  if (!fits("A", &g->a, g->A) || !fits("B", &g->b, g->B) || !fits("D", &g->D, g->Dp) ||
      (g->beta != 0.0f && !fits("C", &g->c, g->C)))
    return CUBLAS_STATUS_INVALID_VALUE;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t h, cublasLtMatmulDesc_t desc, const void *alpha, const void *A,
                              cublasLtMatrixLayout_t la, const void *B, cublasLtMatrixLayout_t lb, const void *beta,
                              const void *C, cublasLtMatrixLayout_t lc, void *D, cublasLtMatrixLayout_t ld,
                              const cublasLtMatmulAlgo_t *algo, void *ws, size_t ws_size, cudaStream_t stream) {
  Gemm g = {*(Desc *)desc, *(Layout *)la, *(Layout *)lb, *(Layout *)lc, *(Layout *)ld, *(const float *)alpha,
            *(const float *)beta, A, B, C, D};
  cublasStatus_t rc = check(&g);
  if (rc) return rc;
  if (algo && (algo->data[0] < EMU_ALGO || algo->data[0] >= EMU_ALGO + EMU_ALGOS))
    return lt_fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmul: an algorithm cublasLtMatmulAlgoGetHeuristic did not give");
  return emu_enqueue(stream, do_gemm, &g, sizeof g) ? CUBLAS_STATUS_EXECUTION_FAILED : CUBLAS_STATUS_SUCCESS;
}

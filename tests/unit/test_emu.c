/* test_emu.c: the emulated CUDA platform against what CUDA documents, and
 * the faults it must report. Loads liblmc_cudaemu.so with dlopen, as
 * runtime/cuda.c does, compiles tests/emu/kernels.cu with its NVRTC and
 * checks: warp shuffles, votes and __syncthreads_count; a shared-memory
 * block sum in three thread orders; bf16 and fp16 rounding (ties to even,
 * overflow, subnormals, NaN); mma.m16n8k16 fed by ldmatrix against a plain
 * product; cp.async copies landing at their waits; stream capture into a
 * graph and its replays; cuBLASLt with bf16 inputs, row-major and batched
 * layouts and epilogues (a bias of D's type, rounded once) against a
 * direct computation, and an algorithm
 * looked up for a larger shape running a smaller one. Planted faults: a missing __syncthreads, writes past an
 * allocation (into its canary, and onto the guard page), a shuffle naming
 * an exited lane, too much shared memory, too many threads, a host sync
 * inside a capture, an operand outside its allocation, an unsupported
 * epilogue. With LIB `real` the same checks but the planted faults run on
 * a GPU (scripts/gpu_check.sh), so the hardware checks the emulator.
 * Usage: test_emu LIB|real KERNELS.CU */
#include <cublasLt.h>
#include <cuda.h>
#include <dlfcn.h>
#include <math.h>
#include <nvrtc.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *libs[3];   /* the emulator alone, or a GPU's driver, NVRTC and cuBLASLt */
static bool real;       /* on a GPU: the planted faults (the emulator's own checks) are skipped */
static int failures, ran;

#define F(name) ((__typeof__(&name))sym(#name))
static void *sym(const char *name) {
  static const char *v2[] = {"cuMemAlloc", "cuMemFree", "cuMemcpyHtoD", "cuMemcpyDtoH", "cuMemsetD8", "cuMemsetD32",
                             "cuStreamBeginCapture", "cuStreamDestroy", "cuEventDestroy", "cuMemcpyHtoDAsync",
                             "cuMemcpyDtoHAsync", "cuMemcpyDtoD", "cuMemcpyDtoDAsync", NULL};
  char n[128];
  snprintf(n, sizeof n, "%s", name);
  for (int i = 0; v2[i]; i++)
    if (!strcmp(name, v2[i])) snprintf(n, sizeof n, "%s_v2", name);
  if (!strcmp(name, "cuGraphInstantiate")) snprintf(n, sizeof n, "cuGraphInstantiateWithFlags");
  void *p = NULL;
  for (int i = 0; i < 3 && !p; i++)
    if (libs[i]) p = dlsym(libs[i], n);
  if (!p) printf("FAIL: the libraries lack %s\n", n), exit(1);
  return p;
}

static void expect(bool ok, const char *what) {
  printf("%-60s %s\n", what, ok ? "ok" : "FAIL");
  failures += !ok, ran++;
}

static const char *err(void) {
  const char *s;
  F(cuGetErrorString)(CUDA_SUCCESS, &s);
  return s;
}

/* rc must be want and the error text must contain text */
static void expect_error(CUresult rc, CUresult want, const char *text, const char *what) {
  bool ok = rc == want && strstr(err(), text);
  if (!ok) printf("  got %d '%s', want %d and '%s'\n", (int)rc, err(), (int)want, text);
  expect(ok, what);
}

static CUmodule module;

static CUfunction fn(const char *name) {
  CUfunction f;
  if (F(cuModuleGetFunction)(&f, module, name)) printf("FAIL: no kernel %s: %s\n", name, err()), exit(1);
  return f;
}

static CUdeviceptr dalloc(size_t n) {
  CUdeviceptr p;
  if (F(cuMemAlloc)(&p, n)) printf("FAIL: cuMemAlloc: %s\n", err()), exit(1);
  return p;
}

static CUresult launch(const char *name, unsigned grid, unsigned block, unsigned smem, void **args) {
  return F(cuLaunchKernel)(fn(name), grid, 1, 1, block, 1, 1, smem, NULL, args, NULL);
}

static void compile(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) printf("FAIL: cannot read %s\n", path), exit(1);
  static char src[1 << 16];
  src[fread(src, 1, sizeof src - 1, f)] = 0;
  fclose(f);
  nvrtcProgram p;
  CUdevice dev;
  int major = 9, minor = 0;
  F(cuDeviceGet)(&dev, 0);
  F(cuDeviceGetAttribute)(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev);
  F(cuDeviceGetAttribute)(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev);
  char arch[64], inc[600], tpl[1200], *dir = realpath(path, NULL);
  snprintf(arch, sizeof arch, "--gpu-architecture=sm_%d%d%s", major, minor, major == 9 && !minor ? "a" : "");   /* wgmma */
  snprintf(inc, sizeof inc, "--include-path=%s/include", getenv("CUDA_HOME") ? getenv("CUDA_HOME") : "/usr/local/cuda");
  if (!dir) printf("FAIL: cannot resolve %s\n", path), exit(1);
  *strrchr(dir, '/') = 0;   /* tests/emu, whose ../../templates has tensor_cores.cuh */
  snprintf(tpl, sizeof tpl, "--include-path=%s/../../templates", dir);
  free(dir);
  const char *opts[] = {arch, "--std=c++17", "-default-device", inc, tpl};
  F(nvrtcCreateProgram)(&p, src, "kernels.cu", 0, NULL, NULL);
  nvrtcResult rc = F(nvrtcCompileProgram)(p, 5, opts);
  size_t n;
  F(nvrtcGetProgramLogSize)(p, &n);
  char *log = malloc(n);
  F(nvrtcGetProgramLog)(p, log);
  if (rc != NVRTC_SUCCESS) printf("FAIL: compile:\n%s\n", log), exit(1);
  F(nvrtcGetCUBINSize)(p, &n);
  char *bin = malloc(n);
  F(nvrtcGetCUBIN)(p, bin);
  if (F(cuModuleLoadData)(&module, bin)) printf("FAIL: cuModuleLoadData: %s\n", err()), exit(1);
  free(bin), free(log);
  F(nvrtcDestroyProgram)(&p);
  /* a bad source: NVRTC_ERROR_COMPILATION with the compiler's message in the log */
  F(nvrtcCreateProgram)(&p, "extern \"C\" __global__ void k(float *x) { x[0] = undeclared; }", "bad.cu", 0, NULL, NULL);
  rc = F(nvrtcCompileProgram)(p, 5, opts);
  F(nvrtcGetProgramLogSize)(p, &n);
  log = malloc(n);
  F(nvrtcGetProgramLog)(p, log);
  expect(rc == NVRTC_ERROR_COMPILATION && strstr(log, "undeclared"), "NVRTC: a compile error comes back in the log");
  free(log);
  F(nvrtcDestroyProgram)(&p);
}

static void shuffles(void) {
  CUdeviceptr d = dalloc(8 * 32 * 4);
  int h[8 * 32];
  void *a[] = {&d};
  expect(!launch("shuffles", 1, 32, 0, a) && !F(cuMemcpyDtoH)(h, d, sizeof h), "shuffles: launch");
  int bad = 0, ballot = 0;
  for (int l = 0; l < 32; l += 3) ballot |= 1 << l;
  for (int l = 0; l < 32; l++) {
    int up = l >= 2 ? l - 2 : l, down = (l + 5) < (l & ~15) + 16 ? l + 5 : l;
    int want[8] = {70, ((l & ~7) + ((l + 3) & 7)) * 10, up * 10, down * 10, (l ^ 9) * 10, ballot, 1, 16};
    for (int k = 0; k < 8; k++) bad += h[k * 32 + l] != want[k];
  }
  expect(!bad, "shuffles: idx, width 8, up, down (width 16), xor, ballot, any/all, count");
  F(cuMemFree)(d);
}

static void block_sums(void) {
  int n = 1000, blocks = 3;
  float *x = malloc(n * blocks * 4), out[3];
  double want[3] = {0};
  for (int i = 0; i < n * blocks; i++) x[i] = (float)((i * 37 % 101) - 50) / 8, want[i / n] += x[i];
  CUdeviceptr dx = dalloc(n * blocks * 4), dout = dalloc(blocks * 4);
  F(cuMemcpyHtoD)(dx, x, n * blocks * 4);
  void *a[] = {&dout, &dx, &n};
  CUresult rc = launch("block_sum", blocks, 256, 256 * 4, a);
  F(cuMemcpyDtoH)(out, dout, sizeof out);
  expect(!rc && out[0] == want[0] && out[1] == want[1] && out[2] == want[2], "block sum with barriers, in three orders");
  if (!real)
  expect_error(launch("block_sum_racy", blocks, 256, 256 * 4, a), CUDA_ERROR_LAUNCH_FAILED,
               "kernel block_sum_racy gives different results when its threads and blocks run in reverse",
               "planted: a missing __syncthreads is reported");
  F(cuMemFree)(dx), F(cuMemFree)(dout), free(x);
  if (real) return;
  CUdeviceptr dw = dalloc(256 * 4096), dc = dalloc(4);
  F(cuMemsetD32)(dc, 0, 1);
  void *w[] = {&dw, &dc};
  expect_error(launch("first_writer", 1, 256, 0, w), CUDA_ERROR_LAUNCH_FAILED,
               "kernel first_writer gives different results when its threads and blocks run in reverse: byte 1044480 "
               "of a 1048576-byte allocation differs",
               "planted: a page only a later order writes is compared too");
  F(cuMemFree)(dw), F(cuMemFree)(dc);
}

static void faults(void) {
  long long n = 1000, past = 1;
  CUdeviceptr d = dalloc(n * 4);
  void *a[] = {&d, &n, &past};
  expect_error(launch("write_past", 4, 256, 0, a), CUDA_ERROR_ILLEGAL_ADDRESS,
               "kernel write_past wrote past the end of a 4000-byte allocation, at byte 4000",
               "planted: a write just past an allocation (its canary)");
  F(cuMemFree)(d);
  d = dalloc(n * 4), past = 100;   /* byte 4396: on the guard page after the 4096-byte body */
  expect_error(launch("write_past", 4, 256, 0, a), CUDA_ERROR_ILLEGAL_ADDRESS,
               "kernel write_past, block (3,0,0), thread (231,0,0): an access 396 bytes past the end of a 4000-byte",
               "planted: a write onto the guard page names the thread");
  F(cuMemFree)(d);
  d = dalloc(32 * 4);
  void *b[] = {&d};
  expect_error(launch("shuffle_after_exit", 1, 32, 0, b), CUDA_ERROR_LAUNCH_FAILED,
               "warp 0 waits in __shfl_xor_sync for lanes 0x00000020", "planted: a shuffle naming an exited lane");
  expect_error(launch("uses_smem", 1, 32, 100000, b), CUDA_ERROR_INVALID_VALUE,
               "kernel uses_smem asks for 100000 bytes of dynamic shared memory per block; it may use 49152",
               "planted: too much shared memory");
  expect(!F(cuFuncSetAttribute)(fn("uses_smem"), CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, 100000) &&
         !launch("uses_smem", 1, 32, 100000, b), "up to the opt-in limit after cuFuncSetAttribute");
  expect_error(F(cuFuncSetAttribute)(fn("uses_smem"), CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, 300000),
               CUDA_ERROR_INVALID_VALUE, "the device allows 232448", "planted: past the opt-in limit");
  expect_error(launch("uses_smem", 1, 32, 64, b), CUDA_ERROR_ILLEGAL_ADDRESS,
               "an access 0 bytes past the 64 bytes of dynamic shared memory the launch asked for",
               "planted: a write past the launch's dynamic shared memory (a guard page)");
  expect_error(launch("uses_smem", 1, 2048, 0, b), CUDA_ERROR_INVALID_VALUE,
               "kernel uses_smem asks for a block of 2048x1x1 threads", "planted: too many threads per block");
  F(cuMemsetD32)(d, 0, 1);
  setenv("LMC_CUDA_EMU_TIMEOUT", "0.5", 1);
  expect_error(launch("wait_for_block0", 2, 32, 0, b), CUDA_ERROR_LAUNCH_TIMEOUT,
               "kernel wait_for_block0, block (1,0,0), thread (31,0,0): ran past LMC_CUDA_EMU_TIMEOUT (0.5 s): an "
               "endless loop, or a wait for a block that has not run",
               "planted: a launch that never ends fails past LMC_CUDA_EMU_TIMEOUT");
  unsetenv("LMC_CUDA_EMU_TIMEOUT");
  F(cuMemFree)(d);
  char h[8];
  expect_error(F(cuMemcpyDtoH)(h, d, 8), CUDA_ERROR_INVALID_VALUE, "is not in any device allocation",
               "a copy from freed memory");
}

static void conversions(void) {
  float x[] = {1.0f, 1.00390625f, 1.01171875f, 65520.0f, 1e-8f, 6e-8f, -3.0f, 3.0e38f, 3.4028235e38f, NAN};
  unsigned short bf_want[] = {0x3f80, 0x3f80, 0x3f82, 0x4780, 0x322c, 0x3381, 0xc040, 0x7f62, 0x7f80, 0x7fff};
  unsigned short h_want[] = {0x3c00, 0x3c04, 0x3c0c, 0x7c00, 0x0000, 0x0001, 0xc200, 0x7c00, 0x7c00, 0x7fff};
  int n = 10;
  unsigned short bf[10], h[10];
  unsigned pair[10];
  float back[20];
  CUdeviceptr dbf = dalloc(20), dh = dalloc(20), db = dalloc(80), dp = dalloc(40), dx = dalloc(40);
  F(cuMemcpyHtoD)(dx, x, sizeof x);
  void *a[] = {&dbf, &dh, &db, &dp, &dx, &n};
  launch("convert", 1, 64, 0, a);
  F(cuMemcpyDtoH)(bf, dbf, 20), F(cuMemcpyDtoH)(h, dh, 20), F(cuMemcpyDtoH)(back, db, 80), F(cuMemcpyDtoH)(pair, dp, 40);
  int bad = 0, badpair = 0;
  for (int i = 0; i < n; i++) {
    if (bf[i] != bf_want[i] || h[i] != h_want[i])
      bad++, printf("  %g: bf16 0x%04x (want 0x%04x), fp16 0x%04x (want 0x%04x)\n", x[i], bf[i], bf_want[i], h[i], h_want[i]);
    unsigned want = bf_want[i] | (unsigned)(i == 9 ? 0x7fff : bf_want[i] ^ 0x8000) << 16;   /* -NaN: canonical too */
    if (pair[i] != want) badpair++, printf("  (%g, %g): bf16x2 0x%08x (want 0x%08x)\n", x[i], -x[i], pair[i], want);
  }
  bad += back[2 * 2] != 1.015625f || back[2 * 5 + 1] != 5.9604644775390625e-8f || back[2 * 3] != 65536.0f;
  expect(!bad, "bf16 and fp16: round to nearest even, overflow, subnormals, NaN");
  expect(!badpair, "cvt.rn.bf16x2.f32 (lmc_bf16x2): the pair in its halves, rounded as one");
  F(cuMemFree)(dbf), F(cuMemFree)(dh), F(cuMemFree)(db), F(cuMemFree)(dp), F(cuMemFree)(dx);
}

/* lmc_ex2 (attention's exponentials): within 2 ulp of 2^x where that is
 * at least 2^-126, zero below it and at -inf, as ex2.approx.ftz.f32 is */
static void exponentials(void) {
  float x[] = {0.0f, 1.0f, -1.0f, 0.5f, -10.25f, 20.7f, -3.3e-3f, 127.5f, -125.9f, -126.5f, -200.0f, -INFINITY};
  enum { N = sizeof x / sizeof *x };
  float y[N];
  int n = N, bad = 0;
  CUdeviceptr dy = dalloc(sizeof y), dx = dalloc(sizeof x);
  F(cuMemcpyHtoD)(dx, x, sizeof x);
  void *a[] = {&dy, &dx, &n};
  launch("ex2", 1, 32, 0, a);
  F(cuMemcpyDtoH)(y, dy, sizeof y);
  for (int i = 0; i < N; i++) {
    double want = exp2((double)x[i]);
    bool ok = want < 0x1p-126 ? y[i] == 0.0f : fabs(y[i] - want) <= 2 * want * 0x1p-23;
    if (!ok) bad++, printf("  ex2(%g) = %.9g (want %.9g)\n", x[i], y[i], want);
  }
  expect(!bad, "ex2.approx.ftz.f32 (lmc_ex2): within 2 ulp, flushed to zero below 2^-126");
  F(cuMemFree)(dy), F(cuMemFree)(dx);
}

static unsigned short bf16(float f) {   /* exact for the small integers used here */
  unsigned u;
  memcpy(&u, &f, 4);
  return (unsigned short)(u >> 16);
}

static void mma(void) {
  unsigned short a[256], b[128];
  float A[16][16], B[16][8], d[128];
  for (int i = 0; i < 16; i++)
    for (int k = 0; k < 16; k++) A[i][k] = (float)((i * 7 + k * 3) % 11 - 5), a[i * 16 + k] = bf16(A[i][k]);
  for (int k = 0; k < 16; k++)
    for (int j = 0; j < 8; j++) B[k][j] = (float)((k * 5 + j * 13) % 9 - 4), b[k * 8 + j] = bf16(B[k][j]);
  CUdeviceptr dd = dalloc(512), da = dalloc(512), db = dalloc(256);
  F(cuMemcpyHtoD)(da, a, sizeof a), F(cuMemcpyHtoD)(db, b, sizeof b);
  void *args[] = {&dd, &da, &db};
  CUresult rc = launch("mma_tile", 1, 32, 0, args);
  F(cuMemcpyDtoH)(d, dd, sizeof d);
  int bad = rc != 0;
  for (int i = 0; i < 16; i++)
    for (int j = 0; j < 8; j++) {
      float s = 0;
      for (int k = 0; k < 16; k++) s += A[i][k] * B[k][j];
      bad += d[i * 8 + j] != s;
    }
  expect(!bad, "mma.m16n8k16 (bf16, fp32 accumulate) fed by ldmatrix x4 and x2.trans");
  F(cuMemFree)(dd), F(cuMemFree)(da), F(cuMemFree)(db);
}

/* wgmma_tile with one way of laying out and describing its operands (tb,
 * the byte offsets between core matrices in k and n, A from registers or
 * shared memory), the descriptor's two strides swapped or not: the
 * entries of D off 2 A B (or 1 when the launch fails) */
static int wgmma_way(const int way[4], int swap, const float (*A)[16], const float (*B)[32], CUdeviceptr dd,
                     CUdeviceptr da, CUdeviceptr db) {
  static float d[64 * 32];
  int tb = way[0], lbo = way[1], sbo = way[2], ss = way[3];
  void *args[] = {&dd, &da, &db, &tb, &lbo, &sbo, &ss, &swap};
  F(cuMemsetD8)(dd, 0, sizeof d);
  CUresult rc = F(cuLaunchKernel)(fn("wgmma_tile"), 1, 1, 1, 128, 1, 1, 3072, NULL, args, NULL);
  if (!rc) rc = F(cuCtxSynchronize)();
  if (rc) return 1;
  F(cuMemcpyDtoH)(d, dd, sizeof d);
  int off = 0;
  for (int i = 0; i < 64; i++)
    for (int j = 0; j < 32; j++) {
      float s = 0;
      for (int k = 0; k < 16; k++) s += A[i][k] * B[k][j];
      off += d[i * 32 + j] != 2 * s;
    }
  return off;
}

/* wgmma (sm_90a) with B K-major and N-major, and A from registers or
 * from shared memory (K-major), core matrices' strides apart in k and n
 * unequal (so a descriptor with the two swapped reads another matrix),
 * against a plain product; skipped on a GPU before compute capability
 * 9.0. Where a GPU disagrees, it says whether the hardware reads the
 * layout with the descriptor's strides the other way round. */
static void wgmma(void) {
  CUdevice dev;
  int major = 9;
  F(cuDeviceGet)(&dev, 0);
  F(cuDeviceGetAttribute)(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev);
  if (major != 9) return;
  unsigned short a[64 * 16], b[16 * 32];
  float A[64][16], B[16][32];
  for (int i = 0; i < 64; i++)
    for (int k = 0; k < 16; k++) A[i][k] = (float)((i * 7 + k * 3) % 11 - 5), a[i * 16 + k] = bf16(A[i][k]);
  for (int k = 0; k < 16; k++)
    for (int j = 0; j < 32; j++) B[k][j] = (float)((k * 5 + j * 13) % 9 - 4), b[k * 32 + j] = bf16(B[k][j]);
  CUdeviceptr dd = dalloc(64 * 32 * 4), da = dalloc(sizeof a), db = dalloc(sizeof b);
  F(cuMemcpyHtoD)(da, a, sizeof a), F(cuMemcpyHtoD)(db, b, sizeof b);
  static const int ways[3][4] = {{0, 512, 128, 0}, {1, 128, 256, 0}, {0, 512, 128, 1}};
  const char *what[3] = {"wgmma.m64n32k16 (bf16, A in registers), B K-major by its descriptor",
                         "wgmma.m64n32k16 (bf16, A in registers), B N-major by its descriptor",
                         "wgmma.m64n32k16 (bf16), A and B K-major by their descriptors"};
  for (int w = 0; w < 3; w++) {
    int bad = wgmma_way(ways[w], 0, A, B, dd, da, db);
    if (bad && real && !wgmma_way(ways[w], 1, A, B, dd, da, db))
      printf("  (the GPU reads this layout with the descriptor's two strides the other way round)\n");
    expect(!bad, what[w]);
  }
  if (!real) {   /* the emulator's order: B is read at the wait (on a GPU, undefined) */
    static float d[64 * 32];
    void *args[] = {&dd, &da, &db};
    CUresult rc = F(cuLaunchKernel)(fn("wgmma_late"), 1, 1, 1, 128, 1, 1, 1024, NULL, args, NULL);
    if (!rc) rc = F(cuCtxSynchronize)();
    F(cuMemcpyDtoH)(d, dd, sizeof d);
    int bad = rc != 0;
    for (int i = 0; i < 64 * 32; i++) bad += d[i] != 0;
    expect(!bad, "wgmma: a B tile written between the issue and the wait is what the product reads");
  }
  F(cuMemFree)(dd), F(cuMemFree)(da), F(cuMemFree)(db);
}

static void cp_async(void) {
  unsigned src[128], out[256], before[128];
  for (int i = 0; i < 128; i++) src[i] = 0x1000u + (unsigned)i * 7;
  CUdeviceptr ds = dalloc(sizeof src), dout = dalloc(sizeof out), db = dalloc(sizeof before);
  F(cuMemcpyHtoD)(ds, src, sizeof src);
  void *args[] = {&dout, &db, &ds};
  CUresult rc = launch("cp_async_tile", 1, 32, 0, args);
  F(cuMemcpyDtoH)(out, dout, sizeof out), F(cuMemcpyDtoH)(before, db, sizeof before);
  int bad = rc != 0, early = 0;
  for (int i = 0; i < 128; i++) bad += out[i] != src[(i + 4) % 128] || out[128 + i] != 0, early += before[i] != 0xdeadbeefu;
  expect(!bad, "cp.async: 16-byte copies and zero fills land at wait_group 1 and 0");
  if (!real) expect(!early, "cp.async: the newest group has not landed before its wait");
  F(cuMemFree)(ds), F(cuMemFree)(dout), F(cuMemFree)(db);
}

static void graphs(void) {
  int n = 300;
  float *x = malloc(n * 4), out = -1;
  double want = 0;
  for (int i = 0; i < n; i++) x[i] = (float)(i % 17), want += x[i];
  CUdeviceptr dx = dalloc(n * 4), dout = dalloc(4);
  CUstream s;
  CUgraph g;
  CUgraphExec e;
  F(cuStreamCreate)(&s, 0);
  F(cuMemsetD32)(dout, 0, 1);
  bool ok = !F(cuStreamBeginCapture)(s, CU_STREAM_CAPTURE_MODE_GLOBAL);
  ok &= !F(cuMemcpyHtoDAsync)(dx, x, n * 4, s);
  void *a[] = {&dout, &dx, &n};
  ok &= !F(cuLaunchKernel)(fn("block_sum"), 1, 1, 1, 128, 1, 1, 128 * 4, s, a, NULL);
  if (!real)
    expect_error(F(cuCtxSynchronize)(), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "while a stream is being captured",
                 "planted: a host synchronisation inside a capture");
  ok &= !F(cuStreamEndCapture)(s, &g);
  F(cuMemcpyDtoH)(&out, dout, 4);
  ok &= out == 0;   /* captured, not run */
  ok &= !F(cuGraphInstantiate)(&e, g, 0);
  for (int r = 0; r < 2; r++) {
    F(cuMemsetD32)(dout, 0, 1);
    ok &= !F(cuGraphLaunch)(e, s) && !F(cuStreamSynchronize)(s);
    F(cuMemcpyDtoH)(&out, dout, 4);
    ok &= out == want;
  }
  expect(ok, "stream capture records, a graph replays (twice)");
  F(cuGraphExecDestroy)(e), F(cuGraphDestroy)(g), F(cuStreamDestroy)(s);
  F(cuMemFree)(dx), F(cuMemFree)(dout), free(x);
}

/* Two streams: a copy on the second waits, through an event, for a
 * kernel on the first. Under the emulator's lazy streams the same copy
 * without the event runs first, when its stream is synchronised, and
 * reads the old value (planted: the order a GPU may also pick). */
static void streams(void) {
  int n = 300;
  bool lazy = !real && getenv("LMC_CUDA_EMU_STREAMS") && !strcmp(getenv("LMC_CUDA_EMU_STREAMS"), "lazy");
  float *x = malloc(n * 4), out = -1;
  double want = 0;
  for (int i = 0; i < n; i++) x[i] = (float)(i % 13), want += x[i];
  CUdeviceptr dx = dalloc(n * 4), dsum = dalloc(4), dcopy = dalloc(4);
  CUstream s1, s2;
  CUevent e;
  F(cuStreamCreate)(&s1, 0), F(cuStreamCreate)(&s2, 0), F(cuEventCreate)(&e, CU_EVENT_DISABLE_TIMING);
  F(cuMemcpyHtoD)(dx, x, n * 4);
  void *a[] = {&dsum, &dx, &n};
  for (int with_event = 1; with_event >= 0; with_event--) {
    F(cuMemsetD32)(dsum, 0, 1), F(cuMemsetD32)(dcopy, 0, 1);
    bool ok = !F(cuLaunchKernel)(fn("block_sum"), 1, 1, 1, 128, 1, 1, 128 * 4, s1, a, NULL);
    if (with_event) ok &= !F(cuEventRecord)(e, s1) && !F(cuStreamWaitEvent)(s2, e, 0);
    ok &= !F(cuMemcpyDtoDAsync)(dcopy, dsum, 4, s2) && !F(cuStreamSynchronize)(s2);
    ok &= !F(cuMemcpyDtoH)(&out, dcopy, 4);
    if (with_event) expect(ok && out == want, "a copy on one stream waits for a kernel on another through an event");
    else if (lazy) expect(ok && out == 0, "planted: lazy streams run a copy with no event before the kernel it reads");
    F(cuStreamSynchronize)(s1);
  }
  F(cuStreamDestroy)(s1);   /* an event outlives the stream it was recorded on */
  expect(!F(cuEventSynchronize)(e) && !F(cuEventQuery)(e), "an event recorded on a destroyed stream is done");
  F(cuEventDestroy)(e), F(cuStreamDestroy)(s2);
  F(cuMemFree)(dx), F(cuMemFree)(dsum), F(cuMemFree)(dcopy), free(x);
}

/* ---- cuBLASLt ---- */

static cublasLtMatrixLayout_t layout(cudaDataType t, int rows, int cols, int ld, int order, int batch, long long stride) {
  cublasLtMatrixLayout_t l;
  F(cublasLtMatrixLayoutCreate)(&l, t, rows, cols, ld);
  F(cublasLtMatrixLayoutSetAttribute)(l, CUBLASLT_MATRIX_LAYOUT_ORDER, &order, sizeof order);
  F(cublasLtMatrixLayoutSetAttribute)(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof batch);
  F(cublasLtMatrixLayoutSetAttribute)(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride);
  return l;
}

static double gelu(double x) { return 0.5 * x * (1 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))); }

static void lt(void) {
  /* D[m,n] (fp32, column-major, 2 batches) = gelu(A^T B + bias), A stored
   * k x m row-major bf16 (so op(A) = A^T is m x k), B k x n column-major
   * bf16; then BGRADB gives the column sums of B */
  int m = 5, n = 7, k = 9, batch = 2;
  unsigned short a[2 * 9 * 5], b[2 * 9 * 7];
  float fa[2 * 9 * 5], fb[2 * 9 * 7], bias[5] = {0.5f, -1, 0, 2, 0.25f}, d[2 * 5 * 7], bg[7];
  for (int i = 0; i < batch * k * m; i++) fa[i] = (float)(i % 7 - 3) / 4, a[i] = bf16(fa[i]);
  for (int i = 0; i < batch * k * n; i++) fb[i] = (float)(i % 5 - 2) / 2, b[i] = bf16(fb[i]);
  CUdeviceptr da = dalloc(sizeof a), db = dalloc(sizeof b), dd = dalloc(sizeof d), dbias = dalloc(sizeof bias),
              dbg = dalloc(sizeof bg);
  F(cuMemcpyHtoD)(da, a, sizeof a), F(cuMemcpyHtoD)(db, b, sizeof b), F(cuMemcpyHtoD)(dbias, bias, sizeof bias);
  cublasLtHandle_t h;
  cublasLtMatmulDesc_t desc;
  F(cublasLtCreate)(&h);
  F(cublasLtMatmulDescCreate)(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
  cublasOperation_t T = CUBLAS_OP_T;
  cublasLtEpilogue_t ep = CUBLASLT_EPILOGUE_GELU_BIAS;
  void *bp = (void *)dbias;
  long long bias_stride = 0;
  F(cublasLtMatmulDescSetAttribute)(desc, CUBLASLT_MATMUL_DESC_TRANSA, &T, sizeof T);
  F(cublasLtMatmulDescSetAttribute)(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep);
  F(cublasLtMatmulDescSetAttribute)(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp, sizeof bp);
  F(cublasLtMatmulDescSetAttribute)(desc, CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE, &bias_stride, sizeof bias_stride);
  int32_t bias_type = CUDA_R_32F;
  F(cublasLtMatmulDescSetAttribute)(desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof bias_type);
  /* A as stored: k rows x m cols, row-major (ld m); op(A) = A^T */
  cublasLtMatrixLayout_t la = layout(CUDA_R_16BF, k, m, m, CUBLASLT_ORDER_ROW, batch, k * m),
                         lb = layout(CUDA_R_16BF, k, n, k, CUBLASLT_ORDER_COL, batch, k * n),
                         ld = layout(CUDA_R_32F, m, n, m, CUBLASLT_ORDER_COL, batch, m * n);
  float alpha = 1, beta = 0;
  cublasStatus_t rc = F(cublasLtMatmul)(h, desc, &alpha, (void *)da, la, (void *)db, lb, &beta, (void *)dd, ld,
                                        (void *)dd, ld, NULL, NULL, 0, NULL);
  F(cuMemcpyDtoH)(d, dd, sizeof d);
  double worst = rc ? 1 : 0;
  for (int q = 0; q < batch; q++)
    for (int j = 0; j < n; j++)
      for (int i = 0; i < m; i++) {
        double s = bias[i];
        for (int kk = 0; kk < k; kk++) s += (double)fa[q * k * m + kk * m + i] * fb[q * k * n + j * k + kk];
        worst = fmax(worst, fabs(d[q * m * n + j * m + i] - gelu(s)) / fmax(1, fabs(gelu(s))));
      }
  /* cuBLASLt's GELU differs from tanh's formula by up to 3e-6 (an H200) */
  if (rc || !(worst < 1e-5)) printf("  cublasLtMatmul status %d, worst error %.3g\n", (int)rc, worst);
  expect(worst < 1e-5, "cuBLASLt: bf16 A (row-major, transposed) x B, batched, GELU_BIAS");
  /* BGRADB on batch 0: column sums of B over k. cuBLASLt takes it with a
   * transposed column-major B only: B^T stored n x k, column-major */
  ep = CUBLASLT_EPILOGUE_BGRADB, bp = (void *)dbg;
  int one = 1;
  F(cublasLtMatmulDescSetAttribute)(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep);
  F(cublasLtMatmulDescSetAttribute)(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp, sizeof bp);
  F(cublasLtMatrixLayoutSetAttribute)(la, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &one, sizeof one);
  F(cublasLtMatrixLayoutSetAttribute)(lb, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &one, sizeof one);
  F(cublasLtMatrixLayoutSetAttribute)(ld, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &one, sizeof one);
  unsigned short bt[9 * 7];
  for (int j = 0; j < n; j++)
    for (int kk = 0; kk < k; kk++) bt[kk * n + j] = b[j * k + kk];
  CUdeviceptr dbt = dalloc(sizeof bt);
  F(cuMemcpyHtoD)(dbt, bt, sizeof bt);
  cublasLtMatrixLayout_t lbt = layout(CUDA_R_16BF, n, k, n, CUBLASLT_ORDER_COL, 1, 0),
                         lbr = layout(CUDA_R_16BF, n, k, k, CUBLASLT_ORDER_ROW, 1, 0);
  if (!real) {   /* the emulator refuses B untransposed or row-major, as cuBLASLt does */
    rc = F(cublasLtMatmul)(h, desc, &alpha, (void *)da, la, (void *)db, lb, &beta, (void *)dd, ld, (void *)dd, ld, NULL,
                           NULL, 0, NULL);
    expect(rc == CUBLAS_STATUS_NOT_SUPPORTED && strstr(err(), "only works with transposed B"),
           "planted: BGRADB with B untransposed is refused");
  }
  F(cublasLtMatmulDescSetAttribute)(desc, CUBLASLT_MATMUL_DESC_TRANSB, &T, sizeof T);
  if (!real) {
    rc = F(cublasLtMatmul)(h, desc, &alpha, (void *)da, la, (void *)db, lbr, &beta, (void *)dd, ld, (void *)dd, ld, NULL,
                           NULL, 0, NULL);
    expect(rc == CUBLAS_STATUS_NOT_SUPPORTED && strstr(err(), "only works with B in CUBLASLT_ORDER_COL order"),
           "planted: BGRADB with B row-major is refused");
  }
  rc = F(cublasLtMatmul)(h, desc, &alpha, (void *)da, la, (void *)dbt, lbt, &beta, (void *)dd, ld, (void *)dd, ld, NULL,
                         NULL, 0, NULL);
  cublasOperation_t N = CUBLAS_OP_N;
  F(cublasLtMatmulDescSetAttribute)(desc, CUBLASLT_MATMUL_DESC_TRANSB, &N, sizeof N);
  F(cublasLtMatrixLayoutDestroy)(lbt);
  F(cublasLtMatrixLayoutDestroy)(lbr);
  F(cuMemcpyDtoH)(bg, dbg, sizeof bg);
  worst = rc ? 1 : 0;
  for (int j = 0; j < n; j++) {
    double s = 0;
    for (int kk = 0; kk < k; kk++) s += fb[j * k + kk];
    worst = fmax(worst, fabs(bg[j] - s));
  }
  if (rc || !(worst < 1e-6)) printf("  cublasLtMatmul status %d, worst error %.3g\n", (int)rc, worst);
  expect(worst < 1e-6, "cuBLASLt: BGRADB epilogue");
  if (real) return;   /* the rest are the emulator's own checks */
  /* B's leading dimension reaching past its allocation */
  cublasLtMatrixLayout_t wide = layout(CUDA_R_16BF, k, n, 4 * k, CUBLASLT_ORDER_COL, 1, 0);
  ep = CUBLASLT_EPILOGUE_DEFAULT;
  F(cublasLtMatmulDescSetAttribute)(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep);
  rc = F(cublasLtMatmul)(h, desc, &alpha, (void *)da, la, (void *)db, wide, &beta, (void *)dd, ld, (void *)dd, ld, NULL,
                         NULL, 0, NULL);
  expect(rc == CUBLAS_STATUS_INVALID_VALUE && strstr(err(), "matrix B (9x7, ld 36)") && strstr(err(), "past the end"),
         "planted: a cuBLASLt operand outside its allocation");
  ep = CUBLASLT_EPILOGUE_DRELU;
  F(cublasLtMatmulDescSetAttribute)(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep);
  rc = F(cublasLtMatmul)(h, desc, &alpha, (void *)da, la, (void *)db, lb, &beta, (void *)dd, ld, (void *)dd, ld, NULL,
                         NULL, 0, NULL);
  expect(rc == CUBLAS_STATUS_NOT_SUPPORTED && strstr(err(), "is not emulated"),
         "an epilogue the emulator lacks is an error, not a fallback");
  F(cublasLtMatrixLayoutDestroy)(la), F(cublasLtMatrixLayoutDestroy)(lb), F(cublasLtMatrixLayoutDestroy)(ld);
  F(cublasLtMatrixLayoutDestroy)(wide), F(cublasLtMatmulDescDestroy)(desc);
  F(cuMemFree)(da), F(cuMemFree)(db), F(cuMemFree)(dd), F(cuMemFree)(dbias), F(cuMemFree)(dbg);
}

static unsigned short bf16_rne(double x) {
  float f = (float)x;
  unsigned u;
  memcpy(&u, &f, 4);
  return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

/* A matmul with its bias in the epilogue, as lmc's matmul_bias runs it:
 * bf16 A (24 x 16) and B (16 x 40), bf16 D and a bf16 bias over D's rows;
 * D is the exact sum rounded once. A bias of another type than D's
 * (fp32) the emulator refuses, as cublasLt.h says (the runtime then adds
 * the bias in a kernel); on a GPU what cuBLASLt answers is printed. */
static void lt_bias(void) {
  enum { m = 24, k = 16, n = 40 };
  unsigned short a[m * k], b[k * n], bias[m], d[m * n];
  float fa[m * k], fb[k * n], fbias[m], fbias32[m];
  for (int i = 0; i < m * k; i++) fa[i] = (float)(i % 7 - 3) / 4, a[i] = bf16(fa[i]);
  for (int i = 0; i < k * n; i++) fb[i] = (float)(i % 5 - 2) / 2, b[i] = bf16(fb[i]);
  for (int i = 0; i < m; i++) fbias[i] = fbias32[i] = (float)(i % 9 - 4) / 8, bias[i] = bf16(fbias[i]);
  CUdeviceptr da = dalloc(sizeof a), db = dalloc(sizeof b), dd = dalloc(sizeof d), dbias = dalloc(sizeof bias),
              dbias32 = dalloc(sizeof fbias32);
  F(cuMemcpyHtoD)(da, a, sizeof a), F(cuMemcpyHtoD)(db, b, sizeof b), F(cuMemcpyHtoD)(dbias, bias, sizeof bias);
  F(cuMemcpyHtoD)(dbias32, fbias32, sizeof fbias32);
  cublasLtHandle_t h;
  cublasLtMatmulDesc_t desc;
  F(cublasLtCreate)(&h);
  F(cublasLtMatmulDescCreate)(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
  cublasLtEpilogue_t ep = CUBLASLT_EPILOGUE_BIAS;
  void *bp = (void *)dbias;
  int32_t bt = CUDA_R_16BF;
  F(cublasLtMatmulDescSetAttribute)(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep);
  F(cublasLtMatmulDescSetAttribute)(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp, sizeof bp);
  F(cublasLtMatmulDescSetAttribute)(desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt);
  cublasLtMatrixLayout_t la = layout(CUDA_R_16BF, m, k, m, CUBLASLT_ORDER_COL, 1, 0),
                         lb = layout(CUDA_R_16BF, k, n, k, CUBLASLT_ORDER_COL, 1, 0),
                         ld = layout(CUDA_R_16BF, m, n, m, CUBLASLT_ORDER_COL, 1, 0);
  float alpha = 1, beta = 0;
  cublasStatus_t rc = F(cublasLtMatmul)(h, desc, &alpha, (void *)da, la, (void *)db, lb, &beta, (void *)dd, ld,
                                        (void *)dd, ld, NULL, NULL, 0, NULL);
  F(cuMemcpyDtoH)(d, dd, sizeof d);
  int bad = rc != 0;
  for (int j = 0; j < n; j++)
    for (int i = 0; i < m; i++) {
      double s = fbias[i];
      for (int q = 0; q < k; q++) s += (double)fa[q * m + i] * fb[j * k + q];
      bad += d[j * m + i] != bf16_rne(s);
    }
  if (bad) printf("  cublasLtMatmul status %d, %d of %d elements differ\n", (int)rc, bad, m * n);
  expect(!bad, "cuBLASLt: BIAS epilogue, bf16 D and bias, rounded once");
  /* GELU_AUX_BIAS: D = gelu(s), aux = s, both bf16 (lmc's matmul_bias_gelu);
   * cuBLASLt's GELU is within 3e-6 of tanh's formula, so D within one
   * bf16 ulp; on a GPU that refuses it, what it answered */
  unsigned short aux[m * n];
  CUdeviceptr dx = dalloc(sizeof aux);
  void *xp = (void *)dx;
  int64_t xld = m;
  ep = CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
  F(cublasLtMatmulDescSetAttribute)(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep);
  F(cublasLtMatmulDescSetAttribute)(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &xp, sizeof xp);
  F(cublasLtMatmulDescSetAttribute)(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &xld, sizeof xld);
  rc = F(cublasLtMatmul)(h, desc, &alpha, (void *)da, la, (void *)db, lb, &beta, (void *)dd, ld, (void *)dd, ld, NULL,
                         NULL, 0, NULL);
  if (real && rc == CUBLAS_STATUS_NOT_SUPPORTED)
    printf("  (GELU_AUX_BIAS on bf16 refused: the runtime adds the bias, then GELU's kernel)\n");
  else {
    F(cuMemcpyDtoH)(d, dd, sizeof d), F(cuMemcpyDtoH)(aux, dx, sizeof aux);
    bad = rc != 0;
    for (int j = 0; j < n; j++)
      for (int i = 0; i < m; i++) {
        double s = fbias[i];
        for (int q = 0; q < k; q++) s += (double)fa[q * m + i] * fb[j * k + q];
        int du = (int)d[j * m + i] - (int)bf16_rne(gelu(s));
        bad += aux[j * m + i] != bf16_rne(s) || du < -1 || du > 1;
      }
    if (bad) printf("  cublasLtMatmul status %d, %d of %d elements differ\n", (int)rc, bad, m * n);
    expect(!bad, "cuBLASLt: GELU_AUX_BIAS epilogue, bf16 D, aux and bias");
  }
  ep = CUBLASLT_EPILOGUE_BIAS;
  F(cublasLtMatmulDescSetAttribute)(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep);
  F(cuMemFree)(dx);
  bp = (void *)dbias32, bt = CUDA_R_32F;
  F(cublasLtMatmulDescSetAttribute)(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp, sizeof bp);
  F(cublasLtMatmulDescSetAttribute)(desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt);
  rc = F(cublasLtMatmul)(h, desc, &alpha, (void *)da, la, (void *)db, lb, &beta, (void *)dd, ld, (void *)dd, ld, NULL,
                         NULL, 0, NULL);
  if (real) printf("  (an fp32 bias with bf16 D: cuBLASLt answers status %d)\n", (int)rc);
  else expect(rc == CUBLAS_STATUS_NOT_SUPPORTED && strstr(err(), "must be of D's type"),
              "an fp32 bias with bf16 D is refused (cublasLt.h: the bias has D's type)");
  F(cublasLtMatrixLayoutDestroy)(la), F(cublasLtMatrixLayoutDestroy)(lb), F(cublasLtMatrixLayoutDestroy)(ld);
  F(cublasLtMatmulDescDestroy)(desc);
  F(cuMemFree)(da), F(cuMemFree)(db), F(cuMemFree)(dd), F(cuMemFree)(dbias), F(cuMemFree)(dbias32);
}

/* An epilogue probe: D = op(A) op(B) (fp32 compute, alpha 1, beta 0, C =
 * D) with one transposed operand, the epilogue and its pointer attribute
 * (set to ptr) and a second attribute (value v of n bytes); the handle,
 * layouts and descriptor are freed after. Returns cuBLASLt's status. */
static cublasStatus_t probe(cublasLtMatmulDescAttributes_t trans, cublasLtEpilogue_t ep,
                           cublasLtMatmulDescAttributes_t pattr, CUdeviceptr ptr, cublasLtMatmulDescAttributes_t attr,
                           const void *v, size_t n, CUdeviceptr a, cublasLtMatrixLayout_t la, CUdeviceptr b,
                           cublasLtMatrixLayout_t lb, CUdeviceptr d, cublasLtMatrixLayout_t ld) {
  cublasLtHandle_t h;
  cublasLtMatmulDesc_t desc;
  F(cublasLtCreate)(&h);
  F(cublasLtMatmulDescCreate)(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
  cublasOperation_t T = CUBLAS_OP_T;
  void *p = (void *)ptr;
  F(cublasLtMatmulDescSetAttribute)(desc, trans, &T, sizeof T);
  F(cublasLtMatmulDescSetAttribute)(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep);
  F(cublasLtMatmulDescSetAttribute)(desc, pattr, &p, sizeof p);
  F(cublasLtMatmulDescSetAttribute)(desc, attr, v, n);
  float alpha = 1, beta = 0;
  cublasStatus_t rc = F(cublasLtMatmul)(h, desc, &alpha, (void *)a, la, (void *)b, lb, &beta, (void *)d, ld, (void *)d,
                                        ld, NULL, NULL, 0, NULL);
  F(cublasLtMatrixLayoutDestroy)(la), F(cublasLtMatrixLayoutDestroy)(lb), F(cublasLtMatrixLayoutDestroy)(ld);
  F(cublasLtMatmulDescDestroy)(desc), F(cublasLtDestroy)(h);
  return rc;
}

/* A bias's gradient in its weight's gradient GEMM, laid out as the
 * runtime runs dW = x^T dy for a weight stored [in, out] (GPT-2's): in
 * cuBLASLt's terms A = dy (out x rows, column-major, not transposed), B =
 * x (in x rows, column-major, transposed), fp32 D (out x in), and BGRADA
 * sums A over the rows, the bias's gradient. Whether a GPU takes BGRADA
 * so is not known yet (it takes BGRADB only with B transposed): on a GPU
 * a refusal is printed, not failed, and the values checked if it runs. */
static void lt_bgrada(void) {
  enum { m = 24, k = 16, n = 40 };   /* out, rows, in */
  unsigned short a[m * k], b[n * k];
  float fa[m * k], fb[n * k], d[m * n], g[m];
  for (int i = 0; i < m * k; i++) fa[i] = (float)(i % 7 - 3) / 4, a[i] = bf16(fa[i]);
  for (int i = 0; i < n * k; i++) fb[i] = (float)(i % 5 - 2) / 2, b[i] = bf16(fb[i]);
  CUdeviceptr da = dalloc(sizeof a), db = dalloc(sizeof b), dd = dalloc(sizeof d), dg = dalloc(sizeof g);
  F(cuMemcpyHtoD)(da, a, sizeof a), F(cuMemcpyHtoD)(db, b, sizeof b);
  int32_t gt = CUDA_R_32F;
  cublasStatus_t rc = probe(CUBLASLT_MATMUL_DESC_TRANSB, CUBLASLT_EPILOGUE_BGRADA, CUBLASLT_MATMUL_DESC_BIAS_POINTER, dg,
                            CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &gt, sizeof gt, da,
                            layout(CUDA_R_16BF, m, k, m, CUBLASLT_ORDER_COL, 1, 0), db,
                            layout(CUDA_R_16BF, n, k, n, CUBLASLT_ORDER_COL, 1, 0), dd,
                            layout(CUDA_R_32F, m, n, m, CUBLASLT_ORDER_COL, 1, 0));
  if (real && rc == CUBLAS_STATUS_NOT_SUPPORTED)
    printf("  (BGRADA with A not transposed, B transposed, bf16 -> fp32: refused, status %d)\n", (int)rc);
  else {
    F(cuMemcpyDtoH)(d, dd, sizeof d), F(cuMemcpyDtoH)(g, dg, sizeof g);
    double worst = rc ? 1 : 0;
    for (int i = 0; i < m; i++) {
      double s = 0;
      for (int q = 0; q < k; q++) s += fa[q * m + i];
      worst = fmax(worst, fabs(g[i] - s));
      for (int j = 0; j < n; j++) {
        double p = 0;
        for (int q = 0; q < k; q++) p += (double)fa[q * m + i] * fb[q * n + j];
        worst = fmax(worst, fabs(d[j * m + i] - p));
      }
    }
    if (rc || !(worst < 1e-5)) printf("  cublasLtMatmul status %d, worst error %.3g\n", (int)rc, worst);
    if (real) printf("  (BGRADA with A not transposed, B transposed, bf16 -> fp32: taken)\n");
    expect(worst < 1e-5, "cuBLASLt: BGRADA epilogue, a weight's and its bias's gradients at once");
  }
  F(cuMemFree)(da), F(cuMemFree)(db), F(cuMemFree)(dd), F(cuMemFree)(dg);
}

static double dgelu(double x) {
  double c = 0.7978845608028654, th = tanh(c * (x + 0.044715 * x * x * x));
  return 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * c * (1 + 3 * 0.044715 * x * x);
}

/* GELU's backward in the GEMM that makes its input's gradient, laid out as
 * GPT-2's MLP runs dh = dy W^T for W stored [F, D]: cuBLASLt A = W (k x m
 * column-major, transposed), B = dy (k x n, not transposed), bf16 D and
 * aux (the pre-activation, laid out as D); DGELU multiplies each product
 * by gelu'(aux). Not asked of a GPU yet: there a refusal is printed, and
 * what it computes is checked within two bf16 ulps (its GELU is not the
 * tanh formula to the last bit). */
static void lt_dgelu(void) {
  enum { m = 24, k = 16, n = 40 };
  unsigned short a[k * m], b[k * n], x[m * n], d[m * n];
  float fa[k * m], fb[k * n], fx[m * n];
  for (int i = 0; i < k * m; i++) fa[i] = (float)(i % 7 - 3) / 4, a[i] = bf16(fa[i]);
  for (int i = 0; i < k * n; i++) fb[i] = (float)(i % 5 - 2) / 2, b[i] = bf16(fb[i]);
  for (int i = 0; i < m * n; i++) {   /* the pre-activation as stored, bf16 */
    x[i] = bf16((float)(i % 11 - 5) / 3);
    uint32_t u = (uint32_t)x[i] << 16;
    memcpy(&fx[i], &u, 4);
  }
  CUdeviceptr da = dalloc(sizeof a), db = dalloc(sizeof b), dx = dalloc(sizeof x), dd = dalloc(sizeof d);
  F(cuMemcpyHtoD)(da, a, sizeof a), F(cuMemcpyHtoD)(db, b, sizeof b), F(cuMemcpyHtoD)(dx, x, sizeof x);
  int64_t xld = m;
  cublasStatus_t rc = probe(CUBLASLT_MATMUL_DESC_TRANSA, CUBLASLT_EPILOGUE_DGELU, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                            dx, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &xld, sizeof xld, da,
                            layout(CUDA_R_16BF, k, m, k, CUBLASLT_ORDER_COL, 1, 0), db,
                            layout(CUDA_R_16BF, k, n, k, CUBLASLT_ORDER_COL, 1, 0), dd,
                            layout(CUDA_R_16BF, m, n, m, CUBLASLT_ORDER_COL, 1, 0));
  if (real && rc != CUBLAS_STATUS_SUCCESS)
    printf("  (DGELU with A transposed, bf16 D and aux: refused, status %d)\n", (int)rc);
  else {
    F(cuMemcpyDtoH)(d, dd, sizeof d);
    int bad = rc != 0;
    for (int j = 0; j < n; j++)
      for (int i = 0; i < m; i++) {
        double s = 0;
        for (int q = 0; q < k; q++) s += (double)fa[i * k + q] * fb[j * k + q];
        int du = (int)d[j * m + i] - (int)bf16_rne(s * dgelu(fx[j * m + i]));
        bad += du < -2 || du > 2;
      }
    if (bad) printf("  cublasLtMatmul status %d, %d of %d elements differ\n", (int)rc, bad, m * n);
    if (real) printf("  (DGELU with A transposed, bf16 D and aux: taken)\n");
    expect(!bad, "cuBLASLt: DGELU epilogue, GELU's backward in the GEMM before it");
  }
  F(cuMemFree)(da), F(cuMemFree)(db), F(cuMemFree)(dx), F(cuMemFree)(dd);
}

/* The runtime looks an MoE expert's GEMM algorithm up once for its rows
 * rounded up and runs it for the rows it has: an algorithm the heuristic
 * gave for 256 columns of D (and, apart, for an inner dimension of 256)
 * multiplies 200 (bf16 A n x k and B k x m, column-major, fp32 D). */
static void lt_classes(void) {
  enum { n = 64, K = 256, M = 256 };
  static unsigned short a[n * K], b[K * M];
  static float fa[n * K], fb[K * M], d[n * M];
  for (int i = 0; i < n * K; i++) fa[i] = (float)(i % 11 - 5) / 8, a[i] = bf16(fa[i]);
  for (int i = 0; i < K * M; i++) fb[i] = (float)(i % 7 - 3) / 4, b[i] = bf16(fb[i]);
  CUdeviceptr da = dalloc(sizeof a), db = dalloc(sizeof b), dd = dalloc(sizeof d);
  F(cuMemcpyHtoD)(da, a, sizeof a), F(cuMemcpyHtoD)(db, b, sizeof b);
  cublasLtHandle_t h;
  cublasLtMatmulDesc_t desc;
  cublasLtMatmulPreference_t pref;
  F(cublasLtCreate)(&h);
  F(cublasLtMatmulDescCreate)(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
  F(cublasLtMatmulPreferenceCreate)(&pref);
  uint32_t align = 16;
  for (int i = CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES; i <= CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES; i++)
    F(cublasLtMatmulPreferenceSetAttribute)(pref, i, &align, sizeof align);
  for (int inner = 0; inner < 2; inner++) {   /* 0: D's columns vary, 1: the inner dimension */
    int m = inner ? M : 200, k = inner ? 200 : K;
    cublasLtMatrixLayout_t qa = layout(CUDA_R_16BF, n, K, n, CUBLASLT_ORDER_COL, 1, 0),
                           qb = layout(CUDA_R_16BF, K, M, K, CUBLASLT_ORDER_COL, 1, 0),
                           qd = layout(CUDA_R_32F, n, M, n, CUBLASLT_ORDER_COL, 1, 0),
                           la = layout(CUDA_R_16BF, n, k, n, CUBLASLT_ORDER_COL, 1, 0),
                           lb = layout(CUDA_R_16BF, k, m, K, CUBLASLT_ORDER_COL, 1, 0),
                           ld = layout(CUDA_R_32F, n, m, n, CUBLASLT_ORDER_COL, 1, 0);
    cublasLtMatmulHeuristicResult_t r;
    int got = 0;
    cublasStatus_t rc = F(cublasLtMatmulAlgoGetHeuristic)(h, desc, qa, qb, qd, qd, pref, 1, &r, &got);
    float alpha = 1, beta = 0;
    if (!rc && got == 1)
      rc = F(cublasLtMatmul)(h, desc, &alpha, (void *)da, la, (void *)db, lb, &beta, (void *)dd, ld, (void *)dd, ld,
                             &r.algo, NULL, 0, NULL);
    F(cuMemcpyDtoH)(d, dd, (size_t)n * m * sizeof(float));
    double worst = rc || got != 1 ? 1 : 0;
    for (int j = 0; j < m; j++)
      for (int i = 0; i < n; i++) {
        double s = 0;
        for (int q = 0; q < k; q++) s += (double)fa[q * n + i] * fb[j * K + q];
        worst = fmax(worst, fabs(d[j * n + i] - s) / fmax(1, fabs(s)));
      }
    if (rc || !(worst < 1e-6)) printf("  status %d, %d algorithms, worst error %.3g\n", (int)rc, got, worst);
    expect(worst < 1e-6, inner ? "cuBLASLt: an algorithm looked up for inner dim 256 runs 200"
                               : "cuBLASLt: an algorithm looked up for 256 columns runs 200");
    if (!real && inner) {   /* an algorithm the heuristic did not give */
      r.algo.data[0] ^= 1;
      rc = F(cublasLtMatmul)(h, desc, &alpha, (void *)da, la, (void *)db, lb, &beta, (void *)dd, ld, (void *)dd, ld,
                             &r.algo, NULL, 0, NULL);
      expect(rc == CUBLAS_STATUS_INVALID_VALUE && strstr(err(), "did not give"),
             "planted: an algorithm the heuristic did not give is refused");
    }
    F(cublasLtMatrixLayoutDestroy)(qa), F(cublasLtMatrixLayoutDestroy)(qb), F(cublasLtMatrixLayoutDestroy)(qd);
    F(cublasLtMatrixLayoutDestroy)(la), F(cublasLtMatrixLayoutDestroy)(lb), F(cublasLtMatrixLayoutDestroy)(ld);
  }
  F(cublasLtMatmulPreferenceDestroy)(pref), F(cublasLtMatmulDescDestroy)(desc);
  F(cuMemFree)(da), F(cuMemFree)(db), F(cuMemFree)(dd);
}

static void *open_any(const char *const *names) {
  for (int i = 0; names[i]; i++) {
    void *h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (h) return h;
  }
  return NULL;
}

int main(int argc, char **argv) {
  if (argc < 3) printf("usage: test_emu LIB|real KERNELS.CU\n"), exit(2);
  real = !strcmp(argv[1], "real");
  if (real) {   /* a GPU: the hardware checks what the emulator claims */
    const char *d[] = {"libcuda.so.1", NULL}, *r[] = {"libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12", NULL},
               *b[] = {"libcublasLt.so", "libcublasLt.so.13", "libcublasLt.so.12", NULL};
    libs[0] = open_any(d), libs[1] = open_any(r), libs[2] = open_any(b);
    if (!libs[0] || !libs[1] || !libs[2]) printf("skipped: no CUDA driver, NVRTC or cuBLASLt\n"), exit(77);
  } else if (!(libs[0] = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL))) printf("FAIL: %s\n", dlerror()), exit(1);
  CUdevice dev;
  CUcontext ctx;
  if (F(cuInit)(0) || F(cuDeviceGet)(&dev, 0) || F(cuDevicePrimaryCtxRetain)(&ctx, dev) || F(cuCtxSetCurrent)(ctx))
    printf("FAIL: no CUDA device\n"), exit(1);
  compile(argv[2]);
  shuffles();
  block_sums();
  if (!real) faults();
  conversions();
  exponentials();
  mma();
  wgmma();
  cp_async();
  graphs();
  streams();
  lt();
  lt_bias();
  lt_bgrada();
  lt_dgelu();
  lt_classes();
  printf("%d passed, %d failed\n", ran - failures, failures);
  return failures ? 1 : 0;
}

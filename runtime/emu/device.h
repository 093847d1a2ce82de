// device.h: the CUDA execution model for a kernels.cu compiled as host C++
// by the emulated NVRTC (it is written next to the source as
// lmc_emu_device.h and included first). Threads are the engine's fibers:
// the built-in variables are read from lmc_emu_vars, which the engine sets
// before each thread runs; __shared__ variables are statics (the blocks of
// a launch run one after another); barriers and warp collectives call the
// engine. Each warp-level matrix instruction has one wrapper here that
// follows the fragment layouts of the PTX ISA; the same wrappers are
// inline PTX in templates/kernels.cu for a real GPU.
#pragma once
#define LMC_CUDA_EMU 1
#include "emu_abi.h"
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __shared__ static
#define __constant__
#define __managed__
#define __align__(n) __attribute__((aligned(n)))
#define __CUDACC__ 1
#define __CUDACC_RTC__ 1

extern "C" {
EmuVars lmc_emu_vars;
const EmuApi *lmc_emu_api;
}

typedef EmuDim uint3;
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
  dim3(EmuDim d) : x(d.x), y(d.y), z(d.z) {}
};
static const EmuDim &threadIdx = lmc_emu_vars.threadIdx;
static const EmuDim &blockIdx = lmc_emu_vars.blockIdx;
static const EmuDim &blockDim = lmc_emu_vars.blockDim;
static const EmuDim &gridDim = lmc_emu_vars.gridDim;
static const int warpSize = 32;

// ---- vector types ----
#define LMC_VEC2(T, N, A) struct __attribute__((aligned(A))) N##2 { T x, y; }; \
  static inline N##2 make_##N##2(T a, T b) { N##2 r = {a, b}; return r; }
#define LMC_VEC4(T, N, A) struct __attribute__((aligned(A))) N##4 { T x, y, z, w; }; \
  static inline N##4 make_##N##4(T a, T b, T c, T d) { N##4 r = {a, b, c, d}; return r; }
LMC_VEC2(float, float, 8) LMC_VEC4(float, float, 16)
LMC_VEC2(int, int, 8) LMC_VEC4(int, int, 16)
LMC_VEC2(unsigned, uint, 8) LMC_VEC4(unsigned, uint, 16)
LMC_VEC2(double, double, 16)
LMC_VEC2(unsigned short, ushort, 4) LMC_VEC4(unsigned short, ushort, 8)
#undef LMC_VEC2
#undef LMC_VEC4

// ---- device math with float semantics (the host's libm: last bits may
// differ from the GPU's) ----
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
#define __expf(x) expf(x)   // glibc declares these names itself: macros, not functions
#define __logf(x) logf(x)
#define __powf(x, y) powf(x, y)
#define __sinf(x) sinf(x)
#define __cosf(x) cosf(x)
#define __tanhf(x) tanhf(x)
static inline float __fdividef(float a, float b) { return a / b; }
static inline float __saturatef(float x) { return x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x; }
static inline void lmc_emu_sincosf(float x, float *s, float *c) { *s = sinf(x), *c = cosf(x); }
#define sincosf lmc_emu_sincosf
#define __sincosf lmc_emu_sincosf
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
static inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
static inline float __uint_as_float(unsigned i) { float f; memcpy(&f, &i, 4); return f; }
static inline unsigned __float_as_uint(float f) { unsigned i; memcpy(&i, &f, 4); return i; }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; i++) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
#define LMC_MINMAX(T) static inline T min(T a, T b) { return a < b ? a : b; } \
  static inline T max(T a, T b) { return a > b ? a : b; }
LMC_MINMAX(int) LMC_MINMAX(unsigned) LMC_MINMAX(long long) LMC_MINMAX(unsigned long long) LMC_MINMAX(long)
LMC_MINMAX(unsigned long)
#undef LMC_MINMAX
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }
template <class T> static inline T __ldg(const T *p) { return *p; }

// ---- atomics: the blocks and threads of a launch run on one host thread ----
template <class T> static inline T atomicAdd(T *p, T v) { T o = *p; *p = o + v; return o; }
template <class T> static inline T atomicSub(T *p, T v) { T o = *p; *p = o - v; return o; }
template <class T> static inline T atomicExch(T *p, T v) { T o = *p; *p = v; return o; }
template <class T> static inline T atomicMax(T *p, T v) { T o = *p; *p = o > v ? o : v; return o; }
template <class T> static inline T atomicMin(T *p, T v) { T o = *p; *p = o < v ? o : v; return o; }
template <class T> static inline T atomicCAS(T *p, T cmp, T v) { T o = *p; if (o == cmp) *p = v; return o; }
static inline void __threadfence(void) {}
static inline void __threadfence_block(void) {}
static inline void __trap(void) { lmc_emu_api->trap("__trap()"); }
#undef assert
#define assert(c) ((c) ? (void)0 : lmc_emu_api->trap("assertion failed: " #c))

// ---- barriers and warp collectives ----
static inline void __syncthreads(void) { lmc_emu_api->syncthreads(); }
static inline int __syncthreads_count(int p) { return lmc_emu_api->syncthreads_count(p); }
static inline int __syncthreads_or(int p) { return lmc_emu_api->syncthreads_count(p) != 0; }
static inline int __syncthreads_and(int p) {
  int n = (int)(blockDim.x * blockDim.y * blockDim.z);
  return lmc_emu_api->syncthreads_count(p) == n;
}
static inline unsigned __activemask(void) { return lmc_emu_api->activemask(); }

static inline unsigned lmc_emu_lane(void) {
  return ((threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x) & 31;
}

static void lmc_emu_sync_combine(const unsigned char *, unsigned char *, unsigned) {}
static inline void __syncwarp(unsigned mask = 0xffffffffu) {
  lmc_emu_api->warp(mask, 0, 0, lmc_emu_sync_combine, "__syncwarp");
}

struct LmcShfl {   // one lane's part of a shuffle
  unsigned char v[8];
  int kind, arg, width;
};
enum { LMC_SHFL_IDX, LMC_SHFL_UP, LMC_SHFL_DOWN, LMC_SHFL_XOR };

static void lmc_emu_shfl_combine(const unsigned char *in, unsigned char *out, unsigned mask) {
  for (int l = 0; l < 32; l++) {
    if (!(mask >> l & 1)) continue;
    const LmcShfl *s = (const LmcShfl *)(in + l * LMC_EMU_SLOT);
    int w = s->width, base = l & ~(w - 1), src = l;
    if (s->kind == LMC_SHFL_IDX) src = base + (s->arg & (w - 1));
    else if (s->kind == LMC_SHFL_UP) src = l - s->arg >= base ? l - s->arg : l;
    else if (s->kind == LMC_SHFL_DOWN) src = l + s->arg < base + w ? l + s->arg : l;
    else src = (l ^ s->arg) < base + w ? l ^ s->arg : l;
    if (!(mask >> src & 1)) lmc_emu_api->trap("a warp shuffle reads a lane that is not in its mask");
    memcpy(out + l * LMC_EMU_SLOT, ((const LmcShfl *)(in + src * LMC_EMU_SLOT))->v, 8);
  }
}

template <class T> static inline T lmc_emu_shfl(unsigned mask, T v, int kind, int arg, int width, const char *what) {
  static_assert(sizeof(T) <= 8, "a shuffled value has at most 8 bytes");
  if (width < 1 || width > 32 || (width & (width - 1))) lmc_emu_api->trap("a shuffle width must be a power of two <= 32");
  LmcShfl s;
  memset(&s, 0, sizeof s);
  memcpy(s.v, &v, sizeof(T));
  s.kind = kind, s.arg = arg, s.width = width;
  const void *r = lmc_emu_api->warp(mask, &s, sizeof s, lmc_emu_shfl_combine, what);
  T out;
  memcpy(&out, r, sizeof(T));
  return out;
}
template <class T> static inline T __shfl_sync(unsigned m, T v, int src, int w = 32) {
  return lmc_emu_shfl(m, v, LMC_SHFL_IDX, src, w, "__shfl_sync");
}
template <class T> static inline T __shfl_up_sync(unsigned m, T v, unsigned d, int w = 32) {
  return lmc_emu_shfl(m, v, LMC_SHFL_UP, (int)d, w, "__shfl_up_sync");
}
template <class T> static inline T __shfl_down_sync(unsigned m, T v, unsigned d, int w = 32) {
  return lmc_emu_shfl(m, v, LMC_SHFL_DOWN, (int)d, w, "__shfl_down_sync");
}
template <class T> static inline T __shfl_xor_sync(unsigned m, T v, int lm, int w = 32) {
  return lmc_emu_shfl(m, v, LMC_SHFL_XOR, lm, w, "__shfl_xor_sync");
}

static void lmc_emu_ballot_combine(const unsigned char *in, unsigned char *out, unsigned mask) {
  unsigned bits = 0;
  for (int l = 0; l < 32; l++)
    if (mask >> l & 1 && *(const int *)(in + l * LMC_EMU_SLOT)) bits |= 1u << l;
  for (int l = 0; l < 32; l++) memcpy(out + l * LMC_EMU_SLOT, &bits, 4);
}
static inline unsigned __ballot_sync(unsigned m, int p) {
  int v = p != 0;
  return *(const unsigned *)lmc_emu_api->warp(m, &v, 4, lmc_emu_ballot_combine, "__ballot_sync");
}
static inline int __any_sync(unsigned m, int p) { return __ballot_sync(m, p) != 0; }
static inline int __all_sync(unsigned m, int p) { return __ballot_sync(m, p) == m; }

// ---- bf16 and fp16 (the conversions are emu_abi.h's) ----
struct __nv_bfloat16 {
  unsigned short __x;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) : __x(lmc_f2bf(f)) {}
  __nv_bfloat16(double f) : __x(lmc_f2bf((float)f)) {}
  __nv_bfloat16(int i) : __x(lmc_f2bf((float)i)) {}
  operator float() const { return lmc_bf2f(__x); }
};
struct __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
struct __half {
  unsigned short __x;
  __half() = default;
  __half(float f) : __x(lmc_f2h(f)) {}
  __half(double f) : __x(lmc_f2h((float)f)) {}
  __half(int i) : __x(lmc_f2h((float)i)) {}
  operator float() const { return lmc_h2f(__x); }
};
struct __half2 {
  __half x, y;
};
typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;
typedef __half half;
typedef __half2 half2;

static inline __nv_bfloat16 lmc_bf_bits(unsigned short b) { __nv_bfloat16 r; r.__x = b; return r; }
static inline __half lmc_h_bits(unsigned short b) { __half r; r.__x = b; return r; }
static inline __nv_bfloat16 __float2bfloat16(float f) { return lmc_bf_bits(lmc_f2bf(f)); }
static inline __nv_bfloat16 __float2bfloat16_rn(float f) { return lmc_bf_bits(lmc_f2bf(f)); }
static inline __nv_bfloat16 __float2bfloat16_rz(float f) { return lmc_bf_bits(lmc_f2bf_rz(f)); }
static inline float __bfloat162float(__nv_bfloat16 h) { return lmc_bf2f(h.__x); }
static inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
  __nv_bfloat162 r = {__float2bfloat16(a), __float2bfloat16(b)};
  return r;
}
static inline __nv_bfloat162 __float22bfloat162_rn(float2 f) { return __floats2bfloat162_rn(f.x, f.y); }
static inline float2 __bfloat1622float2(__nv_bfloat162 h) { return make_float2(lmc_bf2f(h.x.__x), lmc_bf2f(h.y.__x)); }
static inline float __low2float(__nv_bfloat162 h) { return lmc_bf2f(h.x.__x); }
static inline float __high2float(__nv_bfloat162 h) { return lmc_bf2f(h.y.__x); }
static inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
static inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short b) { return lmc_bf_bits(b); }
static inline __half __float2half(float f) { return lmc_h_bits(lmc_f2h(f)); }
static inline __half __float2half_rn(float f) { return lmc_h_bits(lmc_f2h(f)); }
static inline float __half2float(__half h) { return lmc_h2f(h.__x); }
static inline unsigned short __half_as_ushort(__half h) { return h.__x; }
static inline __half __ushort_as_half(unsigned short b) { return lmc_h_bits(b); }

// bf16 arithmetic as on sm_80+: exact operation, one rounding
#define LMC_BF_OP(op) \
  static inline __nv_bfloat16 operator op(__nv_bfloat16 a, __nv_bfloat16 b) { \
    return __float2bfloat16((float)((double)lmc_bf2f(a.__x) op (double)lmc_bf2f(b.__x))); }
LMC_BF_OP(+) LMC_BF_OP(-) LMC_BF_OP(*) LMC_BF_OP(/)
#undef LMC_BF_OP
static inline __nv_bfloat16 __hadd(__nv_bfloat16 a, __nv_bfloat16 b) { return a + b; }
static inline __nv_bfloat16 __hmul(__nv_bfloat16 a, __nv_bfloat16 b) { return a * b; }
static inline __nv_bfloat16 __hfma(__nv_bfloat16 a, __nv_bfloat16 b, __nv_bfloat16 c) {
  return __float2bfloat16((float)((double)lmc_bf2f(a.__x) * lmc_bf2f(b.__x) + lmc_bf2f(c.__x)));
}

// ---- warp-level matrix instructions, by the PTX ISA's fragment layouts ----
// groupID g = lane / 4, thread-in-group t = lane % 4; a .b32 register holds
// two 16-bit elements, the lower-indexed in its low half.
struct LmcMma {   // one lane's operands of mma.m16n8k16 (bf16 x bf16 + f32)
  unsigned a[4], b[2];
  float c[4];
};

static inline float lmc_bf_lo(unsigned r) { return lmc_bf2f((unsigned short)(r & 0xffffu)); }
static inline float lmc_bf_hi(unsigned r) { return lmc_bf2f((unsigned short)(r >> 16)); }

static void lmc_emu_mma_combine(const unsigned char *in, unsigned char *out, unsigned mask) {
  float A[16][16], B[16][8], C[16][8];
  for (int l = 0; l < 32; l++) {
    const LmcMma *f = (const LmcMma *)(in + l * LMC_EMU_SLOT);
    int g = l >> 2, t = l & 3;
    // A: a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..)
    for (int r = 0; r < 4; r++) {
      int row = g + (r & 1) * 8, col = 2 * t + (r >> 1) * 8;
      A[row][col] = lmc_bf_lo(f->a[r]), A[row][col + 1] = lmc_bf_hi(f->a[r]);
    }
    // B (k x n): b0 (k 2t..2t+1, n g), b1 (k 2t+8.., n g)
    for (int r = 0; r < 2; r++) B[2 * t + r * 8][g] = lmc_bf_lo(f->b[r]), B[2 * t + r * 8 + 1][g] = lmc_bf_hi(f->b[r]);
    // C: c0, c1 (g, 2t..2t+1), c2, c3 (g+8, 2t..2t+1)
    for (int i = 0; i < 4; i++) C[g + (i >> 1) * 8][2 * t + (i & 1)] = f->c[i];
  }
  for (int l = 0; l < 32; l++) {
    int g = l >> 2, t = l & 3;
    float *d = (float *)(out + l * LMC_EMU_SLOT);
    for (int i = 0; i < 4; i++) {
      int row = g + (i >> 1) * 8, col = 2 * t + (i & 1);
      float s = C[row][col];
      for (int k = 0; k < 16; k++) s += A[row][k] * B[k][col];   // products are exact in f32
      d[i] = s;
    }
  }
}

// d = a b + c over one warp: mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32
static inline void lmc_mma_bf16_16816(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
  LmcMma f;
  memcpy(f.a, a, sizeof f.a), memcpy(f.b, b, sizeof f.b), memcpy(f.c, c, sizeof f.c);
  memcpy(d, lmc_emu_api->warp(0xffffffffu, &f, sizeof f, lmc_emu_mma_combine, "mma.sync.m16n8k16"), 16);
}

struct LmcLdm {
  const unsigned short *row;   // this lane's row address (lanes 8i..8i+7: matrix i)
  int n, trans;
};

static void lmc_emu_ldmatrix_combine(const unsigned char *in, unsigned char *out, unsigned mask) {
  const LmcLdm *f0 = (const LmcLdm *)in;
  for (int l = 0; l < 32; l++) {
    unsigned *r = (unsigned *)(out + l * LMC_EMU_SLOT);
    int g = l >> 2, t = l & 3;
    for (int m = 0; m < f0->n; m++) {
      const LmcLdm *lanes = (const LmcLdm *)(in + 8 * m * LMC_EMU_SLOT);   // the rows of matrix m
      unsigned short lo, hi;
      if (!f0->trans) {
        const unsigned short *row = ((const LmcLdm *)((const unsigned char *)lanes + g * LMC_EMU_SLOT))->row;
        lo = row[2 * t], hi = row[2 * t + 1];
      } else {   // lane gets column g of rows 2t and 2t+1
        lo = ((const LmcLdm *)((const unsigned char *)lanes + (2 * t) * LMC_EMU_SLOT))->row[g];
        hi = ((const LmcLdm *)((const unsigned char *)lanes + (2 * t + 1) * LMC_EMU_SLOT))->row[g];
      }
      r[m] = (unsigned)lo | (unsigned)hi << 16;
    }
  }
}

// ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16: each lane gives a
// 16-byte row address; register m of lane l gets row l/4 of matrix m at
// columns 2(l%4) and 2(l%4)+1 (with .trans, the transposed matrix)
static inline void lmc_ldmatrix(unsigned *r, int n, int trans, const void *row) {
  LmcLdm f = {(const unsigned short *)row, n, trans};
  if (lmc_emu_lane() < 8u * n && (uintptr_t)row % 16) lmc_emu_api->trap("ldmatrix: a row address is not 16-byte aligned");
  memcpy(r, lmc_emu_api->warp(0xffffffffu, &f, sizeof f, lmc_emu_ldmatrix_combine, "ldmatrix"), 4 * n);
}
static inline void lmc_ldmatrix_x1(unsigned r[1], const void *p) { lmc_ldmatrix(r, 1, 0, p); }
static inline void lmc_ldmatrix_x2(unsigned r[2], const void *p) { lmc_ldmatrix(r, 2, 0, p); }
static inline void lmc_ldmatrix_x4(unsigned r[4], const void *p) { lmc_ldmatrix(r, 4, 0, p); }
static inline void lmc_ldmatrix_x2_trans(unsigned r[2], const void *p) { lmc_ldmatrix(r, 2, 1, p); }
static inline void lmc_ldmatrix_x4_trans(unsigned r[4], const void *p) { lmc_ldmatrix(r, 4, 1, p); }

// cp.async.cg.shared.global [dst], [src], 16, n: the copies a thread
// issues wait in its queue, each in the group open when it was issued,
// and land at cp.async.wait_group N (all but the newest N committed
// groups), so a tile read before its wait reads what was there before, as
// it may on a GPU. n is 16 (a copy) or 0 (16 zero bytes). With
// LMC_CUDA_EMU_CP=eager each lands as it is issued instead, the other end
// of what a GPU may do: a copy into a tile something still reads (a
// wgmma not yet waited for, another warp before the barrier) then
// changes what that reads.
enum { LMC_EMU_CP_MAX = 64 };
struct LmcCp { unsigned char *dst; const unsigned char *src; int n, group; };
static LmcCp lmc_emu_cp[1024][LMC_EMU_CP_MAX];
static int lmc_emu_cp_n[1024], lmc_emu_cp_groups[1024];

static inline unsigned lmc_emu_lin(void) { return (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x; }
static inline void lmc_cp_async16(void *dst, const void *src, int n) {
  unsigned t = lmc_emu_lin();
  if ((uintptr_t)dst % 16 || (n && (uintptr_t)src % 16)) lmc_emu_api->trap("cp.async: an address is not 16-byte aligned");
  if (n != 0 && n != 16) lmc_emu_api->trap("cp.async: the emulator copies 16 or 0 bytes of 16");
  static int eager = -1;
  if (eager < 0) eager = getenv("LMC_CUDA_EMU_CP") && !strcmp(getenv("LMC_CUDA_EMU_CP"), "eager");
  if (eager) {
    if (n) memcpy(dst, src, 16);
    else memset(dst, 0, 16);
    return;
  }
  if (lmc_emu_cp_n[t] == LMC_EMU_CP_MAX) lmc_emu_api->trap("cp.async: 64 copies pending in one thread (no wait_group?)");
  lmc_emu_cp[t][lmc_emu_cp_n[t]++] = LmcCp{(unsigned char *)dst, (const unsigned char *)src, n, lmc_emu_cp_groups[t]};
}
// cvt.rn.bf16x2.f32 (tensor_cores.cuh's lmc_bf16x2): lo in the low half
static inline unsigned lmc_bf16x2(float lo, float hi) { return lmc_f2bf(lo) | (unsigned)lmc_f2bf(hi) << 16; }
// ex2.approx.ftz.f32 (tensor_cores.cuh's lmc_ex2): exp2f, a result below
// 2^-126 flushed to zero as the hardware's is
static inline float lmc_ex2(float x) {
  float y = exp2f(x);
  return y < 0x1p-126f ? 0.0f : y;
}
static inline void lmc_cp_async_commit(void) { lmc_emu_cp_groups[lmc_emu_lin()]++; }
static inline void lmc_emu_cp_wait(int newest) {
  unsigned t = lmc_emu_lin();
  int k = 0;
  for (int i = 0; i < lmc_emu_cp_n[t]; i++) {
    LmcCp *c = &lmc_emu_cp[t][i];
    if (c->group < lmc_emu_cp_groups[t] - newest) {
      if (c->n) memcpy(c->dst, c->src, 16);
      else memset(c->dst, 0, 16);
    } else lmc_emu_cp[t][k++] = *c;
  }
  lmc_emu_cp_n[t] = k;
}
static inline void lmc_cp_async_wait0(void) { lmc_emu_cp_wait(0); }
static inline void lmc_cp_async_wait1(void) { lmc_emu_cp_wait(1); }

// ---- the warpgroup's matrix instructions (tensor_cores.cuh's wgmma
// wrappers) ----
// A shared memory address as the hardware's shared window gives it: here
// an offset into the block's dynamic shared memory, which is where the
// descriptors of wgmma operands must point
#define LMC_WGMMA 1
static inline unsigned lmc_smem(const void *p) {
  const unsigned char *b = (const unsigned char *)lmc_emu_api->dyn_smem(), *a = (const unsigned char *)p;
  if (a < b || a >= b + (1 << 18)) lmc_emu_api->trap("a shared memory address outside the block's dynamic shared memory");
  return (unsigned)(a - b);
}
// wgmma.mma_async m64nNk16 (bf16 x bf16 + f32, A in registers, B by its
// descriptor): each thread queues its part as issued; at wgmma.wait_group
// the warp runs its queued groups but the newest M, reading B's shared
// memory and writing D then, so a kernel that writes B's tile or reads D
// before its wait sees here what it may on a GPU. Warp w of a warpgroup
// holds rows 16w.. of A and D, so each warp's product is its own.
struct LmcWg { float *d; unsigned a[4]; unsigned long long adesc, desc; int ss, n, tb, acc, group; };
enum { LMC_EMU_WG_MAX = 32 };
static LmcWg lmc_emu_wg[1024][LMC_EMU_WG_MAX];
static int lmc_emu_wg_n[1024], lmc_emu_wg_groups[1024];

static inline void lmc_wg_fence(void) {}
static inline void lmc_fence_proxy_async(void) {}
template <int NT> static inline void lmc_wg_hold(float (*)[4]) {}
template <int NT> static inline void lmc_wg_hold_a(unsigned (*)[4]) {}
static inline void lmc_wg_commit(void) { lmc_emu_wg_groups[lmc_emu_lin()]++; }
static inline void lmc_emu_wg_issue(const LmcWg &w) {
  unsigned t = lmc_emu_lin();
  if ((blockDim.x * blockDim.y * blockDim.z) % 128) lmc_emu_api->trap("wgmma: a block of whole warpgroups (128 threads) runs it");
  if (lmc_emu_wg_n[t] == LMC_EMU_WG_MAX) lmc_emu_api->trap("wgmma: 32 instructions pending in one thread (no wait_group?)");
  lmc_emu_wg[t][lmc_emu_wg_n[t]] = w;
  lmc_emu_wg[t][lmc_emu_wg_n[t]++].group = lmc_emu_wg_groups[t];
}
template <int N, int TB>
static inline void lmc_wgmma_bf16(float (*d)[4], const unsigned a[4], unsigned long long desc, int acc) {
  static_assert(N == 16 || N == 32 || N == 64, "lmc_wgmma_bf16 takes N 16, 32 or 64");
  lmc_emu_wg_issue(LmcWg{&d[0][0], {a[0], a[1], a[2], a[3]}, 0, desc, 0, N, TB, acc != 0, 0});
}
// A (64 x 16, K-major) from shared memory by its descriptor: warp w of
// the warpgroup multiplies rows 16w..
template <int N, int TB>
static inline void lmc_wgmma_bf16_ss(float (*d)[4], unsigned long long adesc, unsigned long long desc, int acc) {
  static_assert(N == 16 || N == 32 || N == 64, "lmc_wgmma_bf16_ss takes N 16, 32 or 64");
  lmc_emu_wg_issue(LmcWg{&d[0][0], {0, 0, 0, 0}, adesc, desc, 1, N, TB, acc != 0, 0});
}

// Element (k, n) of a wgmma operand from its descriptor (B: 16 x N; A,
// K-major, as its transpose, n a row of A): start address, leading (K
// direction) and stride (M or N direction) byte offsets between 8 x
// 16-byte core matrices, no swizzling; K-major (tb 0): a core matrix's
// 16-byte rows are 8 n, each 8 k; N-major (tb 1): 8 k, each 8 n
// (LMC_CUDA_EMU_WGMMA_SWAP=1 reads the two offsets the other way round:
// a GPU that disagrees with the layouts, for the runtime's probe to find)
static float lmc_emu_wg_b(unsigned long long desc, int tb, int k, int n) {
  static int swap = -1;
  if (swap < 0) swap = getenv("LMC_CUDA_EMU_WGMMA_SWAP") && !strcmp(getenv("LMC_CUDA_EMU_WGMMA_SWAP"), "1");
  if (desc >> 49 & 0x7fff) lmc_emu_api->trap("wgmma: the emulator reads descriptors without swizzling or base offset");
  unsigned start = (unsigned)(desc & 0x3fff) << 4, lbo = (unsigned)(desc >> (swap ? 32 : 16) & 0x3fff) << 4,
           sbo = (unsigned)(desc >> (swap ? 16 : 32) & 0x3fff) << 4;
  unsigned off = start + (unsigned)(k / 8) * lbo + (unsigned)(n / 8) * sbo +
                 (tb ? (unsigned)(k % 8) * 16 + (unsigned)(n % 8) * 2 : (unsigned)(n % 8) * 16 + (unsigned)(k % 8) * 2);
  const unsigned char *p = (const unsigned char *)lmc_emu_api->dyn_smem() + off;
  unsigned short v;
  memcpy(&v, p, 2);
  return lmc_bf2f(v);
}

static int lmc_emu_wg_keep;   // the wait's M: its newest groups stay queued
static void lmc_emu_wg_combine(const unsigned char *in, unsigned char *out, unsigned mask) {
  unsigned t0 = *(const unsigned *)in, th[32];
  for (int l = 0; l < 32; l++) th[l] = *(const unsigned *)(in + l * LMC_EMU_SLOT);
  int run = 0;   // the queued instructions this wait runs: those of groups before the newest M
  while (run < lmc_emu_wg_n[t0] && lmc_emu_wg[t0][run].group < lmc_emu_wg_groups[t0] - lmc_emu_wg_keep) run++;
  for (int l = 1; l < 32; l++)
    if (lmc_emu_wg_n[th[l]] != lmc_emu_wg_n[t0] || lmc_emu_wg_groups[th[l]] != lmc_emu_wg_groups[t0])
      lmc_emu_api->trap("wgmma: the lanes of a warp issued different instructions or groups");
  for (int i = 0; i < run; i++) {
    const LmcWg *w0 = &lmc_emu_wg[t0][i];
    float A[16][16], C[16][64];
    for (int l = 0; l < 32; l++) {
      const LmcWg *w = &lmc_emu_wg[th[l]][i];
      if (w->n != w0->n || w->tb != w0->tb || w->desc != w0->desc || w->acc != w0->acc || w->ss != w0->ss ||
          w->adesc != w0->adesc)
        lmc_emu_api->trap("wgmma: the lanes of a warp issued different instructions");
      int g = l >> 2, t = l & 3;
      for (int r = 0; r < 4 && !w0->ss; r++) {   // mma.sync's A layout
        int row = g + (r & 1) * 8, col = 2 * t + (r >> 1) * 8;
        A[row][col] = lmc_bf_lo(w->a[r]), A[row][col + 1] = lmc_bf_hi(w->a[r]);
      }
      for (int j = 0; j < w0->n / 2; j++)
        C[g + (j & 2) * 4][(j >> 2) * 8 + 2 * t + (j & 1)] = w->acc ? w->d[j] : 0.0f;
    }
    if (w0->ss)   // this warp's 16 rows of the warpgroup's A
      for (int row = 0; row < 16; row++)
        for (int k = 0; k < 16; k++) A[row][k] = lmc_emu_wg_b(w0->adesc, 0, k, (int)(t0 / 32 % 4) * 16 + row);
    float Bm[16][64];
    for (int k = 0; k < 16; k++)
      for (int n = 0; n < w0->n; n++) Bm[k][n] = lmc_emu_wg_b(w0->desc, w0->tb, k, n);
    for (int l = 0; l < 32; l++) {
      int g = l >> 2, t = l & 3;
      float *d = lmc_emu_wg[th[l]][i].d;
      for (int j = 0; j < w0->n / 2; j++) {
        int row = g + (j & 2) * 4, col = (j >> 2) * 8 + 2 * t + (j & 1);
        float s = C[row][col];
        for (int k = 0; k < 16; k++) s += A[row][k] * Bm[k][col];
        d[j] = s;
      }
    }
  }
  for (int l = 0; l < 32; l++) {
    LmcWg *q = lmc_emu_wg[th[l]];
    int n = lmc_emu_wg_n[th[l]];
    for (int i = run; i < n; i++) q[i - run] = q[i];
    lmc_emu_wg_n[th[l]] = n - run;
  }
  (void)out, (void)mask;
}
template <int M> static inline void lmc_wg_wait(void) {
  unsigned t = lmc_emu_lin();
  lmc_emu_wg_keep = M;
  lmc_emu_api->warp(0xffffffffu, &t, sizeof t, lmc_emu_wg_combine, "wgmma.wait_group");
}

// ---- launching: the emulated NVRTC appends one LMC_EMU_KERNEL per
// extern "C" __global__ function of the source ----
template <class... A, size_t... I>
static inline void lmc_emu_call(void (*f)(A...), void **args, std::index_sequence<I...>) {
  f(*(typename std::remove_cv<typename std::remove_reference<A>::type>::type *)args[I]...);
}
template <class... A> static inline void lmc_emu_call(void (*f)(A...), void **args) {
  lmc_emu_call(f, args, std::index_sequence_for<A...>{});
}
template <class... A> static inline int lmc_emu_nparams(void (*)(A...)) { return (int)sizeof...(A); }
template <class... A> static inline const unsigned short *lmc_emu_sizes(void (*)(A...)) {
  static const unsigned short s[] = {(unsigned short)sizeof(A)..., 0};
  return s;
}
// (a thread that ends with a wgmma unwaited fails: its result would land
// in a stack that is gone)
static inline void lmc_emu_ended(void) {
  if (lmc_emu_wg_n[lmc_emu_lin()]) lmc_emu_api->trap("wgmma: a thread ended with wgmma pending (no wait_group)");
}
#define LMC_EMU_KERNEL(name, sync) \
  {#name, sync, lmc_emu_nparams(name), lmc_emu_sizes(name), [](void **a) { lmc_emu_call(name, a), lmc_emu_ended(); }},

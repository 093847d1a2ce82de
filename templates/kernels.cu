// kernels.cu: the CUDA kernels lmc writes into a bundle, one section per
// op ("// @kernel NAME" up to the next marker); lmc copies the prelude and
// the sections the model's programs use. GEMMs go to cuBLASLt, so they
// have no kernel here; kernels specialised to the model's shapes follow the
// sections (compiler/kernels.c). Sizes come as
// arguments; `acc` adds into the output instead of writing it, as on the
// CPU backend. One thread block per row for row-wise ops (blockDim.x a
// power of two, at most 1024), a grid-stride loop for element-wise ones.
// @prelude
typedef float real;   // (act, the activations' storage: see struct bf16)
typedef long long i64;
#define NEG_INF __int_as_float(0xff800000)   // NVRTC has no math.h: -infinity by its bits
#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

// Parts: lmc writes "// @parts N" at the end of a bundle's kernels.cu, and
// runtime/cuda.c compiles the file as P <= N NVRTC programs at once, one a
// thread (-DLMC_PROGRAMS=P -DLMC_PROGRAM=p): program p has the kernels of
// the parts n with n % P == p. Part 0 holds the sections' kernels and the
// groups' (lmc wraps each section in LMC_IN_PART(0); the sections other
// parts call into are copied whole, their kernels guarded here), part 1
// MoE's grouped GEMMs, and each attention kernel lmc writes is a part of
// its own: ptxas takes 0.3 to 1.6 s over each, 22 s over llama-large's
// bundle in one program. Compiled alone (P = 1) the file is every kernel.
#ifndef LMC_PROGRAMS
#define LMC_PROGRAMS 1
#define LMC_PROGRAM 0
#endif
#define LMC_IN_PART(n) ((n) % LMC_PROGRAMS == LMC_PROGRAM)

#define GRID_LOOP(i, n) for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)
#define PUT(dst, i, v, acc) ((dst)[i] = (acc) ? (dst)[i] + (real)(v) : (real)(v))

// a block's sum (float or double), the same tree every time
template <typename T> __device__ T block_sum(T v) {
  __shared__ T part[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) part[warp] = v;
  __syncthreads();
  int nw = (blockDim.x + 31) >> 5;
  v = threadIdx.x < nw ? part[threadIdx.x] : (T)0;
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  if (threadIdx.x == 0) part[0] = v;
  __syncthreads();
  return part[0];
}

__device__ float block_max(float v) {
  __shared__ float part[32];
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) part[warp] = v;
  __syncthreads();
  int nw = (blockDim.x + 31) >> 5;
  v = threadIdx.x < nw ? part[threadIdx.x] : NEG_INF;
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
  if (threadIdx.x == 0) part[0] = v;
  __syncthreads();
  return part[0];
}

// ---- tensor cores: bf16 mma.m16n8k16 fed by ldmatrix ----
// Fragments by the PTX ISA (group g = lane / 4, t = lane % 4): A (16x16) a0
// row g cols 2t..2t+1, a1 row g+8, a2 cols 2t+8.., a3 both; B (16x8) b0
// rows 2t..2t+1 col g, b1 rows 2t+8..; C (16x8) c0..c1 row g cols 2t..2t+1,
// c2..c3 row g+8. A 32-bit register holds two bf16, the lower-indexed in
// its low half. The wrappers are inline PTX in tensor_cores.cuh, written
// in here by lmc; the emulated platform supplies the same names.
// @include tensor_cores.cuh

// f32 to bf16 bits, to nearest even (a NaN to the canonical 0x7fff): the
// hardware's cvt (a software rounding was most of the integer work in
// attention's inner loops, run 12)
__device__ __forceinline__ unsigned bf16_pair(float lo, float hi) { return lmc_bf16x2(lo, hi); }
__device__ __forceinline__ unsigned bf16_bits(float x) { return lmc_bf16x2(x, 0.0f) & 0xffffu; }

// A value the precision plan stores in bf16: reads widen to float, writes
// round to nearest even. Kernels name activations' storage `act` (lmc
// writes `typedef bf16 act;` after this prelude under bf16 storage, else
// `typedef float act;`); statistics, parameters, their gradients and
// scratch stay `real`.
struct bf16 {
  unsigned short b;
  __device__ __forceinline__ bf16() {}
  __device__ __forceinline__ bf16(float x) : b((unsigned short)bf16_bits(x)) {}
  __device__ __forceinline__ operator float() const { return __uint_as_float((unsigned)b << 16); }
};

// a bf16 value to reals and back (the runtime's widen and narrow, for the
// host and the collectives)
#if LMC_IN_PART(0)
extern "C" __global__ void lmc_widen(real *y, const bf16 *x, i64 n) { GRID_LOOP(i, n) y[i] = x[i]; }
extern "C" __global__ void lmc_narrow(bf16 *y, const real *x, i64 n) { GRID_LOOP(i, n) y[i] = x[i]; }
#endif

// Element-wise kernels move 8 elements a thread-step with 16-byte loads and
// stores (fp32: two float4, bf16: one uint4) when every operand is 16-byte
// aligned, the last n % 8 and unaligned operands one at a time. f is the
// op on one element's floats; acc adds into the output (PUT's rule).
//
// 8 elements as stored (16 or 32 bytes), loaded now and widened later, so
// that several loads are in flight before the first is used
template <typename T> struct Raw8;
template <> struct Raw8<float> {
  float4 a, b;
  __device__ __forceinline__ void load(const float *p) { a = *(const float4 *)p, b = *(const float4 *)(p + 4); }
  __device__ __forceinline__ void widen(float *f) const {
    f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
  }
};
template <> struct Raw8<bf16> {
  uint4 u;
  __device__ __forceinline__ void load(const bf16 *p) { u = *(const uint4 *)p; }
  __device__ __forceinline__ void widen(float *f) const {
    unsigned w[4] = {u.x, u.y, u.z, u.w};
    for (int e = 0; e < 4; e++) f[2 * e] = __uint_as_float(w[e] << 16), f[2 * e + 1] = __uint_as_float(w[e] & 0xffff0000u);
  }
};
template <typename T> __device__ __forceinline__ void ld8(float *f, const T *p) {
  Raw8<T> r;
  r.load(p), r.widen(f);
}
__device__ __forceinline__ void st8(float *p, const float *f) {
  *(float4 *)p = make_float4(f[0], f[1], f[2], f[3]), *(float4 *)(p + 4) = make_float4(f[4], f[5], f[6], f[7]);
}
__device__ __forceinline__ void st8(bf16 *p, const float *f) {
  *(uint4 *)p = make_uint4(bf16_pair(f[0], f[1]), bf16_pair(f[2], f[3]), bf16_pair(f[4], f[5]), bf16_pair(f[6], f[7]));
}
__device__ __forceinline__ bool al16(const void *p) { return p == 0 || (unsigned long long)p % 16 == 0; }

// Row kernels take a row in groups of G elements a thread: 8 (16-byte
// accesses) when the row's width is a multiple of 8 and its operands are
// aligned, else 1. ROW8 says which.
template <int G, typename T> __device__ __forceinline__ void ldg(float *f, const T *p) {
  if (G == 8) ld8(f, p);
  else f[0] = p[0];
}
template <int G, typename T> __device__ __forceinline__ void stg(T *p, const float *f) {
  if (G == 8) st8(p, f);
  else p[0] = f[0];
}
#define ROW_GROUPS(j, d, G) for (i64 j = threadIdx.x * (i64)(G); j < (d); j += (i64)blockDim.x * (G))
#define ROW8(d, a, b, c, e) ((d) % 8 == 0 && al16(a) && al16(b) && al16(c) && al16(e))

// e^x in one ex2.approx (lmc_ex2: within 2 ulp, results under 2^-126
// flushed) of x log2(e): within a few ulp of expf for the arguments a
// softmax or a sigmoid takes (expf is some ten instructions and a range
// check)
__device__ __forceinline__ float lmc_exp(float x) { return lmc_ex2(x * 1.44269504088896341f); }

// The element-wise ops' formulas on one element, shared by kernels.cu's
// kernels (each op alone, MoE's activations) and the kernels lmc writes
// for runs of them (compiler/group.c), so that both compute the same bits.
// The sigmoid is 1 / (1 + e^-u) by lmc_exp and the approximate reciprocal
// (__fdividef: MUFU.RCP and a multiply, within 2 ulp; 0 where 1 + e^-u
// passes 2^126, as the sigmoid there is): an IEEE division and expf had
// made SwiGLU's backward 38 instructions an element (SASS), llama-large's
// at 72% of its bytes' rate on an H200 in run 15.
__device__ __forceinline__ float ew_sigmoid(float u) { return __fdividef(1.0f, 1.0f + lmc_exp(-u)); }
__device__ __forceinline__ float ew_silu(float u) { return u * ew_sigmoid(u); }
__device__ __forceinline__ float ew_gelu(float u) {
  return 0.5f * u * (1.0f + tanhf(0.7978845608028654f * (u + 0.044715f * u * u * u)));
}
__device__ __forceinline__ float ew_swiglu(float g, float u) { return g * ew_sigmoid(g) * u; }
__device__ __forceinline__ float ew_silu_bwd(float d, float u) {
  float s = ew_sigmoid(u);
  return d * s * (1.0f + u * (1.0f - s));
}
__device__ __forceinline__ float ew_gelu_bwd(float d, float u) {
  float c = 0.7978845608028654f, th = tanhf(c * (u + 0.044715f * u * u * u));
  float dinner = c * (1.0f + 3.0f * 0.044715f * u * u);
  return d * (0.5f * (1.0f + th) + 0.5f * u * (1.0f - th * th) * dinner);
}
__device__ __forceinline__ float ew_swiglu_bwd_g(float d, float g, float u) {
  float s = ew_sigmoid(g);
  return d * u * s * (1.0f + g * (1.0f - s));
}
__device__ __forceinline__ float ew_swiglu_bwd_u(float d, float g) { return d * g * ew_sigmoid(g); }

// y = f(x) (+ y)
template <typename TY, typename TX, typename F> __device__ void ew1(TY *y, const TX *x, i64 n, int acc, F f) {
  i64 n8 = al16(y) && al16(x) ? n / 8 : 0;
  GRID_LOOP(g, n8) {
    float a[8], r[8];
    ld8(a, x + g * 8);
    if (acc) ld8(r, y + g * 8);
    for (int e = 0; e < 8; e++) r[e] = acc ? r[e] + f(a[e]) : f(a[e]);
    st8(y + g * 8, r);
  }
  GRID_LOOP(j, n - n8 * 8) {
    i64 i = n8 * 8 + j;
    PUT(y, i, f((float)x[i]), acc);
  }
}

// y = f(a, b) (+ y)
template <typename TY, typename TA, typename TB, typename F>
__device__ void ew2(TY *y, const TA *a, const TB *b, i64 n, int acc, F f) {
  i64 n8 = al16(y) && al16(a) && al16(b) ? n / 8 : 0;
  GRID_LOOP(g, n8) {
    float u[8], v[8], r[8];
    ld8(u, a + g * 8), ld8(v, b + g * 8);
    if (acc) ld8(r, y + g * 8);
    for (int e = 0; e < 8; e++) r[e] = acc ? r[e] + f(u[e], v[e]) : f(u[e], v[e]);
    st8(y + g * 8, r);
  }
  GRID_LOOP(j, n - n8 * 8) {
    i64 i = n8 * 8 + j;
    PUT(y, i, f((float)a[i], (float)b[i]), acc);
  }
}

// y = f(a, b, c) (+ y), z = h(a, b, c) (+ z); y or z may be absent
template <typename T, typename F, typename H>
__device__ void ew3x2(T *y, T *z, const T *a, const T *b, const T *c, i64 n, int accy, int accz, F f, H h) {
  i64 n8 = al16(y) && al16(z) && al16(a) && al16(b) && al16(c) ? n / 8 : 0;
  GRID_LOOP(g, n8) {
    float u[8], v[8], w[8], r[8];
    ld8(u, a + g * 8), ld8(v, b + g * 8), ld8(w, c + g * 8);
    if (y) {
      if (accy) ld8(r, y + g * 8);
      for (int e = 0; e < 8; e++) r[e] = accy ? r[e] + f(u[e], v[e], w[e]) : f(u[e], v[e], w[e]);
      st8(y + g * 8, r);
    }
    if (z) {
      if (accz) ld8(r, z + g * 8);
      for (int e = 0; e < 8; e++) r[e] = accz ? r[e] + h(u[e], v[e], w[e]) : h(u[e], v[e], w[e]);
      st8(z + g * 8, r);
    }
  }
  GRID_LOOP(j, n - n8 * 8) {
    i64 i = n8 * 8 + j;
    float u = a[i], v = b[i], w = c[i];
    if (y) PUT(y, i, f(u, v, w), accy);
    if (z) PUT(z, i, h(u, v, w), accz);
  }
}

// Column sums over rows (the gradients of norm weights and biases) in two
// deterministic passes. Pass 1: a block of 256 threads takes 256 columns
// (blockIdx.x), 8 a thread (16-byte loads where the width is a multiple of
// 8 and the rows aligned: colld), of a chunk of `per` rows (blockIdx.y),
// a warp a row, 8 rows at a time; col_store sums its 8 warps' sums in
// order into part[chunk, column]. Pass 2, lmc_col_finish, adds the chunks
// in a fixed order.
#define COL_J (blockIdx.x * (i64)256 + threadIdx.x % 32 * 8)
#define COL_ROWS(i, n, per) for (i64 i = blockIdx.y * (per) + threadIdx.x / 32; i < (n) && i < (blockIdx.y + 1) * (per); i += 8)

// the 8 columns j.. of a row (those past d zero); v: 16-byte loads
template <typename T> __device__ __forceinline__ void colld(float *f, const T *row, i64 j, i64 d, bool v) {
  if (v) return ld8(f, row + j);
  for (int e = 0; e < 8; e++) f[e] = j + e < d ? (float)row[j + e] : 0.0f;
}
#define COL8(d, a, b) ((d) % 8 == 0 && al16(a) && al16(b))

__device__ void col_store(real *part, const float *s, i64 d) {
  __shared__ float sh[8][257];
  int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
  for (int e = 0; e < 8; e++) sh[ty][tx * 8 + e] = s[e];
  __syncthreads();
  i64 j = blockIdx.x * (i64)256 + threadIdx.x;
  if (j < d) {
    float t = 0;
    for (int r = 0; r < 8; r++) t += sh[r][threadIdx.x];
    part[blockIdx.y * d + j] = t;
  }
  __syncthreads();   // sh is used again by a second column sum
}

// The backward of RMSNorm (LN false) or LayerNorm (LN true) in one pass
// over dy and x, for widths d of a multiple of 8 up to 2048: a warp a
// row, lane l taking the row's 8-wide groups l, l + 32, .. (NG of them),
// so the row's two sums are warp shuffles; dx, and the rows' share of dw
// (and db) in registers: a block of 8 warps takes rows [blockIdx.x per,
// ..), warp w every 8th from w, and adds its warps' sums in warp order
// into part[blockIdx.x] (db's into the set after) through sh, which
// col_finish adds up in chunk order. x and dy are read twice, the second
// time from the caches: held in registers (179 at llama-large's width,
// one block an SM) the kernel was slower on an H200 (run 16) than two
// passes; re-read, 106, two blocks. DX: dx wanted; ACC: dx added to. The
// runtime's lmc_*_bwd_rowsNG (LMC_NORM_BWD_ONE_PASS) and the kernels
// group.c writes for a norm's backward, its sizes compiled in, run it.
// SM: each warp's share of dw (and db) in shared memory instead of
// registers (8 warps' of NG groups: 48 KiB at RMSNorm's NG 6 and
// LayerNorm's 3), which frees the registers for dx's loads to go out with
// the row's first (below) and adds the same products in the same order.
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  return v;
}
// the floats of shared memory (sh) norm_bwd_rows takes: 8 warps' rows of
// 257 for their sums in turn, or (SM) every warp's partial sums
template <int NG, bool LN, bool SM> struct NormBwdShared {
  enum { n = SM ? (LN ? 2 : 1) * 8 * NG * 256 : 8 * 257 };
};
// with SM, this lane's 8 partial sums of group j, set s (0 dw, 1 db), of
// warp w: two float4s 32 apart (a warp's 16-byte accesses side by side),
// for columns j 256 + 8 lane .. + 3 and + 4 .. + 7
template <int NG>
__device__ __forceinline__ float4 *nb_partial(float *sh, int s, int w, int j, int lane) {
  return (float4 *)sh + ((s * 8 + w) * NG + j) * 64 + lane;
}
// those 8 sums into f, and back
__device__ __forceinline__ void nb_get(float *f, const float4 *p) {
  Raw8<float> r;
  r.a = p[0], r.b = p[32], r.widen(f);
}
__device__ __forceinline__ void nb_put(float4 *p, const float *f) {
  p[0] = make_float4(f[0], f[1], f[2], f[3]), p[32] = make_float4(f[4], f[5], f[6], f[7]);
}
template <int NG, bool LN, bool DX, bool ACC, bool SM, typename T>   // (T: act, typed after this prelude)
__device__ __forceinline__ void norm_bwd_rows(float *sh, T *dx, real *part, const T *dy, const T *x, const real *w,
                                              const real *mean, const real *rstd, i64 n, i64 d, i64 per) {
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  float pw[SM ? 1 : NG][8], pb[SM ? 1 : NG][8];
  #pragma unroll
  for (int j = 0; j < (SM ? 1 : NG); j++)
    for (int q = 0; q < 8; q++) pw[j][q] = pb[j][q] = 0;
  if (SM)
    #pragma unroll
    for (int s = 0; s < (LN ? 2 : 1); s++)
      for (int j = 0; j < NG; j++) {
        float4 *p = nb_partial<NG>(sh, s, warp, j, lane);
        p[0] = p[32] = make_float4(0, 0, 0, 0);
      }
  // dx's row, added to: its groups' loads go out DW ahead of their use
  // (each had waited for the one before: NG trips to memory a row). With
  // SM all of them with the row's first loads; with the sums in
  // registers, after the row's sums, up to 3 groups ahead to 4 groups a
  // lane (128 registers at 3, two blocks an SM) and none past it (137
  // registers at 6, one block an SM; bound to two it spilled in some
  // programs and not others)
  const int DW = SM ? NG : NG <= 4 ? (NG < 3 ? NG : 3) : 0;
  i64 r1 = (blockIdx.x + 1) * per < n ? (blockIdx.x + 1) * per : n;
  for (i64 row = blockIdx.x * per + warp; row < r1; row += 8) {
    float a[8], g[8], ww[8], mu = LN ? mean[row] : 0.0f, r = rstd[row], s1 = 0, s2 = 0;
    Raw8<T> od[NG];   // (unused where dx is written, not added to)
    #pragma unroll
    for (int j = 0; j < (ACC && SM ? DW : 0); j++) {
      i64 c = (i64)(j * 32 + lane) * 8;
      if (!(d % 256 && c >= d)) od[j].load(dx + row * d + c);
    }
    #pragma unroll
    for (int j = 0; j < NG; j++) {
      i64 c = (i64)(j * 32 + lane) * 8;
      if (d % 256 && c >= d) continue;   // (a constant d of whole groups: no test)
      ld8(a, x + row * d + c), ld8(g, dy + row * d + c), ld8(ww, w + c);
      for (int q = 0; q < 8; q++) {
        float gh = g[q] * ww[q];
        s1 += gh, s2 += gh * (a[q] - mu) * r;
      }
    }
    s2 = warp_sum(s2) / d;
    s1 = LN ? warp_sum(s1) / d : 0.0f;
    #pragma unroll
    for (int j = 0; j < (ACC && !SM ? DW : 0); j++) {
      i64 c = (i64)(j * 32 + lane) * 8;
      if (!(d % 256 && c >= d)) od[j].load(dx + row * d + c);
    }
    #pragma unroll
    for (int j = 0; j < NG; j++) {
      i64 c = (i64)(j * 32 + lane) * 8, cn = c + DW * 256;
      if (ACC && j + DW < NG && !(d % 256 && cn >= d)) od[j + DW].load(dx + row * d + cn);
      if (d % 256 && c >= d) continue;
      ld8(a, x + row * d + c), ld8(g, dy + row * d + c), ld8(ww, w + c);
      // this group's partial sums: pw[k] and pb[k], with SM pw[0] and pb[0]
      // holding the group's from shared memory while it adds to them
      const int k = SM ? 0 : j;
      float o[8];
      float4 *pw4 = SM ? nb_partial<NG>(sh, 0, warp, j, lane) : 0,
             *pb4 = SM && LN ? nb_partial<NG>(sh, 1, warp, j, lane) : 0;
      if (SM) nb_get(pw[0], pw4);
      if (SM && LN) nb_get(pb[0], pb4);
      if (ACC) od[j].widen(o);
      for (int q = 0; q < 8; q++) {
        float xh = (a[q] - mu) * r, v = r * (g[q] * ww[q] - s1 - xh * s2);
        pw[k][q] += g[q] * xh;
        if (LN) pb[k][q] += g[q];
        o[q] = ACC ? o[q] + v : v;
      }
      if (SM) nb_put(pw4, pw[0]);
      if (SM && LN) nb_put(pb4, pb[0]);
      if (DX) st8(dx + row * d + c, o);
    }
  }
  if (SM) {   // column c's sums over the warps, in warp order
    __syncthreads();
    int l = threadIdx.x / 8, h = threadIdx.x % 8 / 4, e = threadIdx.x % 4;   // column 8 l + 4 h + e of a group
    #pragma unroll
    for (int s = 0; s < (LN ? 2 : 1); s++)
      for (int j = 0; j < NG; j++) {
        i64 c = j * 256 + threadIdx.x;
        if (c >= d) continue;
        float t = 0;
        for (int v = 0; v < 8; v++) t += ((float *)(nb_partial<NG>(sh, s, v, j, l) + 32 * h))[e];
        part[(s * gridDim.x + blockIdx.x) * d + c] = t;
      }
    return;
  }
  float(*rs)[257] = (float(*)[257])sh;
  #pragma unroll
  for (int set = 0; set < (LN ? 2 : 1); set++)
    #pragma unroll
    for (int j = 0; j < NG; j++) {
      for (int q = 0; q < 8; q++) rs[warp][lane * 8 + q] = set ? pb[j][q] : pw[j][q];
      __syncthreads();
      i64 c = j * 256 + threadIdx.x;
      if (c < d) {
        float t = 0;
        for (int v = 0; v < 8; v++) t += rs[v][threadIdx.x];
        part[(set * gridDim.x + blockIdx.x) * d + c] = t;
      }
      __syncthreads();
    }
}
// (lmc writes the kernels a model's widths need at the end of the file:
// lmc_rmsnorm_bwd_rowsNG and lmc_layernorm_bwd_rowsNG, compiler/kernels.c)

// Pass 2: out[j] (+)= the sum over the chunks c of part[c, j]. A block of
// 256 threads takes 32 columns: warp w adds chunks w, w + 8, .. in order,
// then its first warp the 8 warps' sums in warp order (the same bits every
// run). (A thread a column, as it was, left llama-large's norms 1536
// threads adding 256 chunks each, on a tenth of an H200's SMs.) A block
// may call it again for another set once it returns. The grid is small (a
// block per 32 columns: 24 for GPT-2's norms, 48 for llama-large's) and
// each warp's adds a chain of loads, so a thread loads 16 chunks before it
// adds them (in the same order): 32 chunks a warp are two trips to memory
// rather than the eight that 4 loads at a time took.
__device__ __forceinline__ void col_finish(real *out, const real *part, i64 chunks, i64 d, int acc) {
  __shared__ float sh[8][33];
  int lane = threadIdx.x % 32, w = threadIdx.x / 32;
  i64 j = blockIdx.x * (i64)32 + lane;
  float s = 0;
  if (j < d) {
    i64 c = w;
    for (; c + 8 * 15 < chunks; c += 8 * 16) {
      float v[16];
      #pragma unroll
      for (int u = 0; u < 16; u++) v[u] = part[(c + 8 * u) * d + j];
      #pragma unroll
      for (int u = 0; u < 16; u++) s += v[u];
    }
    for (; c < chunks; c += 8) s += part[c * d + j];
  }
  sh[w][lane] = s;
  __syncthreads();
  if (w == 0 && j < d) {
    float t = 0;
    for (int r = 0; r < 8; r++) t += sh[r][lane];
    PUT(out, j, t, acc);
  }
  __syncthreads();
}
#if LMC_IN_PART(0)
extern "C" __global__ void lmc_col_finish(real *out, const real *part, i64 chunks, i64 d, int acc) {
  col_finish(out, part, chunks, d, acc);
}
#endif

// log(sum(exp(r[j]))) of one row, by the whole block, in one pass over the
// row: each thread keeps its largest value and its sum of exps relative to
// it, 8 elements a step by 16-byte loads (row_parts): the step's largest
// first, the sum rescaled once where it grows, then 8 exponentials with
// no branch; then the block's largest and the rescaled sums. (An
// exponential an element with a branch, by expf, kept lmc_head_dl_rows
// at about a third of its bytes' rate on an H200.)
__device__ __forceinline__ void lse_add(float &mx, float &s, float x) {
  if (x > mx) s = s * lmc_exp(mx - x) + 1.0f, mx = x;
  else if (x != NEG_INF) s += lmc_exp(x - mx);
}
__device__ __forceinline__ void lse_add8(float &mx, float &s, const float *f) {
  float g = fmaxf(fmaxf(fmaxf(f[0], f[1]), fmaxf(f[2], f[3])), fmaxf(fmaxf(f[4], f[5]), fmaxf(f[6], f[7])));
  if (g == NEG_INF) return;   // all -inf: nothing to add
  if (g > mx) s *= lmc_exp(mx - g), mx = g;   // (mx -inf: s is 0, e^-inf 0)
  for (int q = 0; q < 8; q++) s += lmc_exp(f[q] - mx);
}

// A block's way over a row of v elements at r, of any width and start: the
// elements before the first 16-byte boundary one a thread (one(j)), then 8
// a thread-step by 16-byte accesses (eight(j, f): j.. j + 7 as floats f),
// then the last (v - a) % 8 one a thread. (GPT-2's rows of 50257 logits,
// odd, went one element a thread all along before.) A thread's 16-byte
// loads go out four at a time and are used in order: one at a time, each
// step's load waited for the step before's use (one load in flight a
// thread, a row of GPT-2's 50257 logits 25 trips to memory a pass at 256
// threads, SASS).
template <typename T, typename F1, typename F8>
__device__ __forceinline__ void row_parts(const T *r, i64 v, F1 one, F8 eight) {
  i64 a = (16 - (i64)((unsigned long long)r % 16)) % 16 / (i64)sizeof(T);
  a = a < v ? a : v;
  i64 b = a + (v - a) / 8 * 8, step = 8 * (i64)blockDim.x, j = a + 8 * (i64)threadIdx.x;
  for (i64 e = threadIdx.x; e < a; e += blockDim.x) one(e);
  for (; j + 3 * step < b; j += 4 * step) {
    Raw8<T> u[4];
    #pragma unroll
    for (int k = 0; k < 4; k++) u[k].load(r + j + k * step);
    #pragma unroll
    for (int k = 0; k < 4; k++) {
      float f[8];
      u[k].widen(f), eight(j + k * step, f);
    }
  }
  for (; j < b; j += step) {
    float f[8];
    ld8(f, r + j), eight(j, f);
  }
  for (i64 e = b + threadIdx.x; e < v; e += blockDim.x) one(e);
}

template <typename T> __device__ float row_logsumexp(const T *r, i64 v) {
  float mx = NEG_INF, s = 0;
  row_parts(r, v, [&](i64 j) { lse_add(mx, s, r[j]); }, [&](i64 j, const float *f) { lse_add8(mx, s, f); });
  float m = block_max(mx);
  s = mx == NEG_INF ? 0.0f : s * lmc_exp(mx - m);   // a thread without elements, or with all -inf
  return m + logf(block_sum(s));
}

// @kernel embed
// out[n,d] = w[ids - v0]; rows of other tp ranks are zero
extern "C" __global__ void lmc_embed(act *out, const int *ids, const act *w, i64 n, i64 d, i64 v, i64 v0) {
  GRID_LOOP(i, n * d) {
    i64 row = ids[i / d] - v0;
    out[i] = row >= 0 && row < v ? (float)w[row * d + i % d] : 0.0f;
  }
}

// @kernel embed_bwd
// one thread per column adds the tokens' gradients in token order: no
// atomics, so the result does not depend on the order threads run in
extern "C" __global__ void lmc_embed_bwd(real *dw, const act *dy, const int *ids, i64 n, i64 d, i64 v, i64 v0) {
  GRID_LOOP(j, d) {
    for (i64 i = 0; i < n; i++) {
      i64 row = ids[i] - v0;
      if (row >= 0 && row < v) dw[row * d + j] += dy[i * d + j];
    }
  }
}

// The same with the tokens sorted by id (order[], by the host at upload):
// block p starts the run of tokens with its id if p is the run's first,
// and adds the run's gradients in token order into the id's row.
extern "C" __global__ void lmc_embed_bwd_sorted(real *dw, const act *dy, const int *ids, const int *order, i64 n,
                                                i64 d, i64 v, i64 v0) {
  i64 p = blockIdx.x;
  int id = ids[order[p]];
  if (p > 0 && ids[order[p - 1]] == id) return;
  i64 row = id - v0;
  if (row < 0 || row >= v) return;
  for (i64 j = threadIdx.x; j < d; j += blockDim.x) {
    float s = 0;
    for (i64 q = p; q < n && ids[order[q]] == id; q++) s += dy[order[q] * d + j];
    dw[row * d + j] += s;
  }
}

// @kernel rmsnorm
// one block per row: y = x / rms(x) * w, rstd[row]
template <int G> __device__ void rmsnorm_row(act *y, real *rstd, const act *x, const real *w, i64 d, float eps) {
  i64 row = blockIdx.x;
  const act *xr = x + row * d;
  act *yr = y + row * d;
  float ss = 0, a[G], g[G];
  ROW_GROUPS(j, d, G) {
    ldg<G>(a, xr + j);
    for (int e = 0; e < G; e++) ss += a[e] * a[e];
  }
  float r = rsqrtf(block_sum(ss) / d + eps);
  ROW_GROUPS(j, d, G) {
    ldg<G>(a, xr + j), ldg<G>(g, w + j);
    for (int e = 0; e < G; e++) a[e] = a[e] * r * g[e];
    stg<G>(yr + j, a);
  }
  if (threadIdx.x == 0) rstd[row] = r;
}
extern "C" __global__ void lmc_rmsnorm(act *y, real *rstd, const act *x, const real *w, i64 n, i64 d, float eps) {
  if (ROW8(d, y, x, w, 0)) rmsnorm_row<8>(y, rstd, x, w, d, eps);
  else rmsnorm_row<1>(y, rstd, x, w, d, eps);
}

// @kernel rmsnorm_bwd
template <int G>
__device__ void rmsnorm_bwd_row(act *dx, const act *dy, const act *x, const real *w, const real *rstd, i64 d, int acc) {
  i64 row = blockIdx.x;
  const act *xr = x + row * d, *gr = dy + row * d;
  act *dr = dx + row * d;
  float r = rstd[row], dot = 0, a[G], g[G], ww[G], o[G];
  ROW_GROUPS(j, d, G) {
    ldg<G>(a, xr + j), ldg<G>(g, gr + j), ldg<G>(ww, w + j);
    for (int e = 0; e < G; e++) dot += g[e] * ww[e] * a[e] * r;
  }
  dot = block_sum(dot) / d;
  ROW_GROUPS(j, d, G) {
    ldg<G>(a, xr + j), ldg<G>(g, gr + j), ldg<G>(ww, w + j);
    if (acc) ldg<G>(o, dr + j);
    for (int e = 0; e < G; e++) {
      float v = r * (g[e] * ww[e] - a[e] * r * dot);
      o[e] = acc ? o[e] + v : v;
    }
    stg<G>(dr + j, o);
  }
}
extern "C" __global__ void lmc_rmsnorm_bwd(act *dx, const act *dy, const act *x, const real *w, const real *rstd,
                                           i64 n, i64 d, int acc) {
  if (ROW8(d, dx, dy, x, w)) rmsnorm_bwd_row<8>(dx, dy, x, w, rstd, d, acc);
  else rmsnorm_bwd_row<1>(dx, dy, x, w, rstd, d, acc);
}

// dw = sum over rows of dy * x * rstd: pass 1 of a column sum
extern "C" __global__ void lmc_rmsnorm_bwd_dw(real *part, const act *dy, const act *x, const real *rstd, i64 n, i64 d,
                                              i64 per) {
  i64 j = COL_J;
  bool v = COL8(d, dy, x);
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0}, a[8], b[8];
  if (j < d) COL_ROWS(i, n, per) {
      colld(a, dy + i * d, j, d, v), colld(b, x + i * d, j, d, v);
      for (int e = 0; e < 8; e++) s[e] += a[e] * b[e] * rstd[i];
    }
  col_store(part, s, d);
}

// @kernel layernorm
template <int G>
__device__ void layernorm_row(act *y, real *mean, real *rstd, const act *x, const real *w, const real *b, i64 d,
                              float eps) {
  i64 row = blockIdx.x;
  const act *xr = x + row * d;
  act *yr = y + row * d;
  float s = 0, a[G], ww[G], bb[G];
  ROW_GROUPS(j, d, G) {
    ldg<G>(a, xr + j);
    for (int e = 0; e < G; e++) s += a[e];
  }
  float mu = block_sum(s) / d, v = 0;
  ROW_GROUPS(j, d, G) {
    ldg<G>(a, xr + j);
    for (int e = 0; e < G; e++) v += (a[e] - mu) * (a[e] - mu);
  }
  float r = rsqrtf(block_sum(v) / d + eps);
  ROW_GROUPS(j, d, G) {
    ldg<G>(a, xr + j), ldg<G>(ww, w + j), ldg<G>(bb, b + j);
    for (int e = 0; e < G; e++) a[e] = (a[e] - mu) * r * ww[e] + bb[e];
    stg<G>(yr + j, a);
  }
  if (threadIdx.x == 0) mean[row] = mu, rstd[row] = r;
}
extern "C" __global__ void lmc_layernorm(act *y, real *mean, real *rstd, const act *x, const real *w,
                                         const real *b, i64 n, i64 d, float eps) {
  if (ROW8(d, y, x, w, b)) layernorm_row<8>(y, mean, rstd, x, w, b, d, eps);
  else layernorm_row<1>(y, mean, rstd, x, w, b, d, eps);
}

// @kernel layernorm_bwd
template <int G>
__device__ void layernorm_bwd_row(act *dx, const act *dy, const act *x, const real *w, const real *mean,
                                  const real *rstd, i64 d, int acc) {
  i64 row = blockIdx.x;
  const act *xr = x + row * d, *gr = dy + row * d;
  act *dr = dx + row * d;
  float mu = mean[row], r = rstd[row], s1 = 0, s2 = 0, a[G], g[G], ww[G], o[G];
  ROW_GROUPS(j, d, G) {
    ldg<G>(a, xr + j), ldg<G>(g, gr + j), ldg<G>(ww, w + j);
    for (int e = 0; e < G; e++) {
      float gh = g[e] * ww[e];
      s1 += gh, s2 += gh * (a[e] - mu) * r;
    }
  }
  s1 = block_sum(s1) / d;
  s2 = block_sum(s2) / d;
  ROW_GROUPS(j, d, G) {
    ldg<G>(a, xr + j), ldg<G>(g, gr + j), ldg<G>(ww, w + j);
    if (acc) ldg<G>(o, dr + j);
    for (int e = 0; e < G; e++) {
      float v = r * (g[e] * ww[e] - s1 - (a[e] - mu) * r * s2);
      o[e] = acc ? o[e] + v : v;
    }
    stg<G>(dr + j, o);
  }
}
extern "C" __global__ void lmc_layernorm_bwd(act *dx, const act *dy, const act *x, const real *w, const real *mean,
                                             const real *rstd, i64 n, i64 d, int acc) {
  if (ROW8(d, dx, dy, x, w)) layernorm_bwd_row<8>(dx, dy, x, w, mean, rstd, d, acc);
  else layernorm_bwd_row<1>(dx, dy, x, w, mean, rstd, d, acc);
}

// dw = sum over rows of dy * xhat, db = sum of dy: pass 1 of two column
// sums, into part[0 .. chunks) and part[chunks ..)
extern "C" __global__ void lmc_layernorm_bwd_dwdb(real *part, const act *dy, const act *x, const real *mean,
                                                  const real *rstd, i64 n, i64 d, i64 per) {
  i64 j = COL_J;
  bool v = COL8(d, dy, x);
  float sw[8] = {0, 0, 0, 0, 0, 0, 0, 0}, sb[8] = {0, 0, 0, 0, 0, 0, 0, 0}, a[8], b[8];
  if (j < d) COL_ROWS(i, n, per) {
      colld(a, dy + i * d, j, d, v), colld(b, x + i * d, j, d, v);
      for (int e = 0; e < 8; e++) sw[e] += a[e] * (b[e] - mean[i]) * rstd[i], sb[e] += a[e];
    }
  col_store(part, sw, d);
  col_store(part + gridDim.y * d, sb, d);
}

// @kernel rope
// the cosine and sine of each position's angle for each pair of dims,
// cs[pos, i] = (cos, sin) of pos theta^(-2i/k), in double as the CPU's:
// made once for a shape, read by every RoPE after
extern "C" __global__ void lmc_rope_table(real *cs, i64 t, i64 k, double theta) {
  i64 half = k / 2;
  GRID_LOOP(e, t * half) {
    i64 i = e % half, pos = e / half;
    double ang = pos * pow(theta, -2.0 * i / k);
    cs[2 * e] = (float)cos(ang), cs[2 * e + 1] = (float)sin(ang);
  }
}

// rotate-half RoPE over x[b,t,h,k]; dir = -1 rotates back (backward). A
// thread-step takes G pairs (dims i.. i+G-1 and their partners half
// further): 8 with 16-byte accesses when half is a multiple of 8 and the
// operands aligned, else 1; the index arithmetic in 32 bits (I) where the
// steps fit, since a 64-bit division is a long chain of instructions
template <int G, typename I>
__device__ void rope_run(act *y, const act *x, const real *cs, I n, I t, I h, I half, float dir, int acc) {
  I per = half / G;
  for (I e = blockIdx.x * (I)blockDim.x + threadIdx.x; e < n; e += (I)gridDim.x * blockDim.x) {
    I row = e / per, i = (e - row * per) * G, pos = row / h % t;
    const act *xr = x + (i64)row * 2 * half;
    act *yr = y + (i64)row * 2 * half;
    const real *c = cs + 2 * ((i64)pos * half + i);
    float x1[G], x2[G], o1[G], o2[G], cc[16];
    ldg<G>(x1, xr + i), ldg<G>(x2, xr + i + half);
    if (G == 8) ld8(cc, c), ld8(cc + 8, c + 8);
    else cc[0] = c[0], cc[1] = c[1];
    if (acc) ldg<G>(o1, yr + i), ldg<G>(o2, yr + i + half);
    for (int q = 0; q < G; q++) {
      float co = cc[2 * q], s = cc[2 * q + 1] * dir, a = x1[q] * co - x2[q] * s, b = x2[q] * co + x1[q] * s;
      o1[q] = acc ? o1[q] + a : a, o2[q] = acc ? o2[q] + b : b;
    }
    stg<G>(yr + i, o1), stg<G>(yr + i + half, o2);
  }
}
extern "C" __global__ void lmc_rope(act *y, const act *x, const real *cs, i64 b, i64 t, i64 h, i64 k, int dir,
                                    int acc) {
  i64 half = k / 2;
  bool v8 = half % 8 == 0 && al16(x) && al16(y) && al16(cs);
  i64 n = b * t * h * (v8 ? half / 8 : half);
  if (n < 0x7fffffff && v8) rope_run<8, unsigned>(y, x, cs, (unsigned)n, (unsigned)t, (unsigned)h, (unsigned)half, dir, acc);
  else if (n < 0x7fffffff) rope_run<1, unsigned>(y, x, cs, (unsigned)n, (unsigned)t, (unsigned)h, (unsigned)half, dir, acc);
  else if (v8) rope_run<8, i64>(y, x, cs, n, t, h, half, dir, acc);
  else rope_run<1, i64>(y, x, cs, n, t, h, half, dir, acc);
}

// @library attention
// Flash attention: scores, softmax and the weighted sum one tile of keys at
// a time in shared memory, with a running max and sum per query row (never
// a T x T buffer), causal tiles skipped, the heads of a kv group reading
// the same K/V. Single precision on the CUDA cores. The templates are
// instantiated by lmc for the model's head dim K (kernels.c writes the
// extern "C" kernels at the end of this file): P threads share a query row,
// each holding D of its dims, D a multiple of 4 with P * D >= K. A thread
// of part p holds dims (j * P + p) * 4 + e (j < D / 4, e < 4), so the P
// threads of a row read one contiguous run of a tile row at a time.
#define FA_THREADS 128
#define FA_TILE 32

// The launch order of attention's blocks. A head's causal blocks differ in
// length up to T / R times, and a GPU starts blocks in the order of their
// index (x fastest): the grid is x a head of a section, y the block's rank
// (0: the head's longest) and z the section, so that every head of a
// section starts its longest block first, and the section's heads, which
// the runtime sizes to share their K and V (dK/dV: Q and dO) in L2, run
// together. A section of one head is the order before. The head is b H + h
// (b G + g in dK/dV, with H the kv groups); false past the last one, the
// last section's spare.
__device__ __forceinline__ bool fa_head(i64 &b, i64 &h, i64 B, i64 H) {
  unsigned head = blockIdx.z * gridDim.x + blockIdx.x;
  b = head / (unsigned)H, h = head % (unsigned)H;
  return head < B * H;
}

// FA_TILE rows of a [T, stride] matrix from row r0 into a tile of W
// columns, zero past K columns and past T rows
template <int W>
__device__ void fa_tile(float (*s)[W], const act *src, i64 r0, i64 T, i64 stride, int K) {
  for (int e = threadIdx.x; e < FA_TILE * W; e += FA_THREADS) {
    int r = e / W, c = e % W;
    s[r][c] = r0 + r < T && c < K ? (float)src[(r0 + r) * stride + c] : 0.0f;
  }
}

// this thread's dims of a row (zero where the row or the dim does not exist)
template <int D, int P>
__device__ void fa_row(float *x, const act *row, bool ok, int K, float scale) {
  int p = threadIdx.x % P;
  for (int j = 0; j < D / 4; j++)
    for (int e = 0; e < 4; e++) {
      int d = (j * P + p) * 4 + e;
      x[j * 4 + e] = ok && d < K ? row[d] * scale : 0.0f;
    }
}

template <int D, int P>
__device__ void fa_put(act *row, const float *x, int K, float scale, int acc) {
  int p = threadIdx.x % P;
  for (int j = 0; j < D / 4; j++)
    for (int e = 0; e < 4; e++) {
      int d = (j * P + p) * 4 + e;
      if (d < K) PUT(row, d, x[j * 4 + e] * scale, acc);
    }
}

// x . (this thread's dims of tile row c), summed over the row's P threads
template <int D, int P>
__device__ float fa_dot(const float *x, const float *t) {
  int p = threadIdx.x % P;
  float s = 0;
  for (int j = 0; j < D / 4; j++) {
    float4 y = *(const float4 *)(t + (j * P + p) * 4);
    s += x[j * 4] * y.x + x[j * 4 + 1] * y.y + x[j * 4 + 2] * y.z + x[j * 4 + 3] * y.w;
  }
  for (int o = P / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffff, s, o);
  return s;
}

// acc += a * (this thread's dims of tile row c)
template <int D, int P>
__device__ void fa_axpy(float *acc, float a, const float *t) {
  int p = threadIdx.x % P;
  for (int j = 0; j < D / 4; j++) {
    float4 y = *(const float4 *)(t + (j * P + p) * 4);
    acc[j * 4] += a * y.x, acc[j * 4 + 1] += a * y.y, acc[j * 4 + 2] += a * y.z, acc[j * 4 + 3] += a * y.w;
  }
}

// a block R query rows of a head (fa_head: blocks of late rows, which see
// the most keys, first), FA_THREADS threads. lse is of the scaled scores.
template <int D, int P>
__device__ void fa_forward(act *o, real *lse, const act *q, const act *k, const act *v, i64 T, i64 H, i64 G,
                           i64 K, float scale, i64 B) {
  const int W = D * P, R = FA_THREADS / P;
  __shared__ __align__(16) float ks[FA_TILE][W], vs[FA_TILE][W];
  i64 b, h;
  if (!fa_head(b, h, B, H)) return;
  i64 g = h / (H / G), i0 = (i64)(gridDim.y - 1 - blockIdx.y) * R, i = i0 + threadIdx.x / P;
  i64 last = (i0 + R < T ? i0 + R : T) - 1;
  const act *kb = k + b * T * G * K + g * K, *vb = v + b * T * G * K + g * K;
  float qr[D], acc[D], m = NEG_INF, l = 0;
  fa_row<D, P>(qr, q + ((b * T + i) * H + h) * K, i < T, (int)K, scale);
  for (int j = 0; j < D; j++) acc[j] = 0;
  for (i64 j0 = 0; j0 <= last; j0 += FA_TILE) {
    __syncthreads();
    fa_tile<W>(ks, kb, j0, T, G * K, (int)K);
    fa_tile<W>(vs, vb, j0, T, G * K, (int)K);
    __syncthreads();
    float s[FA_TILE], mt = m;
#pragma unroll
    for (int c = 0; c < FA_TILE; c++) {
      s[c] = fa_dot<D, P>(qr, ks[c]);
      s[c] = j0 + c <= i ? s[c] : NEG_INF;
      mt = fmaxf(mt, s[c]);
    }
    float alpha = expf(m - mt);
    l *= alpha;
    for (int j = 0; j < D; j++) acc[j] *= alpha;
#pragma unroll
    for (int c = 0; c < FA_TILE; c++) {
      float pc = expf(s[c] - mt);
      l += pc;
      fa_axpy<D, P>(acc, pc, vs[c]);
    }
    m = mt;
  }
  if (i >= T) return;
  fa_put<D, P>(o + ((b * T + i) * H + h) * K, acc, (int)K, 1.0f / l, 0);
  if (threadIdx.x % P == 0) lse[(b * H + h) * T + i] = m + logf(l);
}

// The same on the tensor cores (--matmul-precision medium): q, k, v enter
// shared memory as bf16 (q times the scale and log2(e), so that scores are
// in log2 units and each exponential is one ex2.approx, lmc_ex2), the two products are
// bf16 mma.m16n8k16 with fp32 accumulation, softmax statistics stay fp32
// (the saved log-sum-exp in natural units, as the CPU's). A
// block is 4 warps of 16 query rows; a tile is 64 keys; KP is the head dim
// rounded up to 16, at most 128. S's accumulators become P's A fragments
// in registers (the C and A layouts agree pairwise); the other A operands
// (Q, dO; K and V in dK/dV) stay in shared memory and come a k-step at a
// time, which leaves registers for three blocks an SM up to head dim 96
// (run 14: 2.10 ms for llama-large's backward against 2.18 at two blocks
// holding them). The tiles live in dynamic shared memory, rows of KP + 8
// laid out as each kernel says: runtime/cuda.c's fm_smem gives the bytes.
#define FM_ROWS 64

// 16-byte loads of a tile's source, V values each (fp32 4, bf16 8), and
// their store into a bf16 tile (P) times scale: fp32 rounded, bf16 copied
// as it is at scale 1, else widened, scaled and rounded again
template <typename S> struct TileVec;
template <> struct TileVec<float> { typedef float4 L; typedef uint2 P; enum { V = 4 }; };
template <> struct TileVec<bf16> { typedef uint4 L; typedef uint4 P; enum { V = 8 }; };
__device__ __forceinline__ uint2 tile_pack(float4 x, float scale) {
  return make_uint2(bf16_pair(x.x * scale, x.y * scale), bf16_pair(x.z * scale, x.w * scale));
}
__device__ __forceinline__ unsigned bf16_scale2(unsigned w, float scale) {
  return bf16_pair(__uint_as_float(w << 16) * scale, __uint_as_float(w & 0xffff0000u) * scale);
}
__device__ __forceinline__ uint4 tile_pack(uint4 x, float scale) {
  return scale == 1.0f ? x : make_uint4(bf16_scale2(x.x, scale), bf16_scale2(x.y, scale), bf16_scale2(x.z, scale),
                                        bf16_scale2(x.w, scale));
}

// rows [r0, r0 + R) of a [T, stride] matrix (K columns) into a bf16 tile
// of R rows and KP + 8 columns (the pad keeps ldmatrix free of bank
// conflicts), times scale; zero past T and K. 16-byte loads, all in
// flight before the first store, where K and the source allow.
template <int R, int KP, typename S>
__device__ void fm_tile(unsigned short (*s)[KP + 8], const S *src, i64 r0, i64 T, i64 stride, int K, float scale) {
  const int V = TileVec<S>::V;
  typedef typename TileVec<S>::L L;
  if (K % V == 0 && (unsigned long long)src % 16 == 0) {
    const int N = (R * KP / V + FA_THREADS - 1) / FA_THREADS;
    L x[N];
#pragma unroll
    for (int u = 0; u < N; u++) {
      int e = threadIdx.x + u * FA_THREADS, r = e / (KP / V), c = e % (KP / V) * V;
      x[u] = e < R * KP / V && r0 + r < T && c < K ? *(const L *)(src + (r0 + r) * stride + c) : L{};
    }
#pragma unroll
    for (int u = 0; u < N; u++) {
      int e = threadIdx.x + u * FA_THREADS, r = e / (KP / V), c = e % (KP / V) * V;
      if (e < R * KP / V) *(typename TileVec<S>::P *)&s[r][c] = tile_pack(x[u], scale);
    }
    return;
  }
  for (int e = threadIdx.x; e < R * KP; e += FA_THREADS) {
    int r = e / KP, c = e % KP;
    s[r][c] = (unsigned short)bf16_bits(r0 + r < T && c < K ? (float)src[(r0 + r) * stride + c] * scale : 0.0f);
  }
}

// fm_tile at scale 1 by cp.async where the source is bf16, 16-byte aligned
// and K and the stride multiples of 8 (the copies land at the caller's
// wait; rows past T and columns past K zero), else fm_tile itself (landed
// at once). The caller commits the group. Thread x copies column chunk
// x % C (C = KP / 8 chunks of 8 values) of rows x / C + RP u, u < NP (RP =
// FA_THREADS / C rows a pass; threads from C RP on copy nothing), so that
// its shared and global addresses step by constants from pass to pass.
// (The loop this replaced worked out each chunk's row, column and 64-bit
// address anew: some 20 instructions a 16-byte copy, ptxas for sm_90,
// against 3 to 5 now.)
template <typename S> struct FmAsync {
  static __device__ bool ok(const S *, i64, int) { return false; }
};
template <> struct FmAsync<bf16> {
  static __device__ bool ok(const bf16 *src, i64 stride, int K) {
    return K % 8 == 0 && stride % 8 == 0 && (unsigned long long)src % 16 == 0;
  }
};
// One pass of fm_load: row r = row + RP u of its tile from p + u step
// (16 bytes, zero past the source's lim rows or past K). A zero fill
// reads nothing: its source address may lie past the rows the source
// has, as CUTLASS's zfill copies leave theirs.
template <int R, int KP, typename S>
__device__ __forceinline__ void fm_load_pass(unsigned short *d, const S *p, int u, int row, bool in, i64 step,
                                             int lim) {
  enum { RP = FA_THREADS / (KP / 8), NP = (R + RP - 1) / RP };
  int r = row + u * RP;
  if (u == NP - 1 && R % RP && r >= R) return;
  lmc_cp_async16(d + u * RP * (KP + 8), p + u * step, in && r < lim ? 16 : 0);
}
// Unrolled (Roll false), each pass's shared address is the first one's
// plus a constant and its source address a 64-bit add, and ptxas keeps
// the passes' pointers from one tile to the next where it has the
// registers. Roll keeps the passes a loop for the kernels at their
// register bound, where unrolled they spill (NVRTC, sm_90, head dim 96,
// bf16 storage: the 128-row forward 112 to 132 bytes of stack and spills
// unrolled, 28 rolled; dQ at 16 rows a warp 176 and 16).
template <int R, int KP, typename S, bool Roll = false>
__device__ void fm_load(unsigned short (*s)[KP + 8], const S *src, i64 r0, i64 T, i64 stride, int K) {
  enum { C = KP / 8, RP = FA_THREADS / C, NP = (R + RP - 1) / RP };
  if (!FmAsync<S>::ok(src, stride, K)) return fm_tile<R, KP>(s, src, r0, T, stride, K, 1.0f);
  int row = threadIdx.x / C, col = threadIdx.x % C * 8;   // this thread's first row, its column
  if (row >= RP) return;
  i64 left = T - r0;
  int lim = left < R ? (int)left : R;   // the tile's rows that the source has
  const S *p = src + (r0 + row) * stride + col;
  unsigned short *d = &s[row][col];
  bool in = col < K;
  if (Roll) {
    int step = RP * (int)stride;   // (a pass's rows of a source row stride, well within 32 bits)
    #pragma unroll 1
    for (int u = 0; u < NP; u++) {
      int r = row + u * RP;
      if (u == NP - 1 && R % RP && r >= R) break;
      lmc_cp_async16(&s[r][col], p + u * step, in && r < lim ? 16 : 0);
    }
  } else {
    #pragma unroll
    for (int u = 0; u < NP; u++) fm_load_pass<R, KP>(d, p, u, row, in, RP * stride, lim);
  }
}

// The A fragment of rows row0..row0+15 of a tile at k-step kk
template <int KP>
__device__ void fm_frag_a(unsigned a[4], unsigned short (*s)[KP + 8], int row0, int kk) {
  int lane = threadIdx.x % 32;
  lmc_ldmatrix_x4(a, &s[row0 + lane % 16][kk * 16 + lane / 16 * 8]);
}

// B fragments from a tile stored [n][k]: n-tiles n0..n0+7 (b[0..1]) and
// n0+8..n0+15 (b[2..3]) at k-step kk
template <int KP>
__device__ void fm_frag_b_nk(unsigned b[4], unsigned short (*s)[KP + 8], int n0, int kk) {
  int lane = threadIdx.x % 32;
  lmc_ldmatrix_x4(b, &s[n0 + lane / 16 * 8 + lane % 8][kk * 16 + lane / 8 % 2 * 8]);
}

// B fragments from a tile stored [k][n]: rows k0..k0+15, n-tiles n0..n0+7
// (b[0..1]) and n0+8..n0+15 (b[2..3])
template <int KP>
__device__ void fm_frag_b_kn(unsigned b[4], unsigned short (*s)[KP + 8], int k0, int n0) {
  int lane = threadIdx.x % 32;
  lmc_ldmatrix_x4_trans(b, &s[k0 + lane / 8 % 2 * 8 + lane % 8][n0 + lane / 16 * 8]);
}

// acc[mt][16 x 8N] += rows row0 + 16 mt.. of tile as (16 x 16 kk-steps) *
// tile s as [n][k] rows n 0..8N, for MT m-tiles of 16 rows sharing each B
// fragment (MT of them halve shared memory's traffic per product at 2);
// A's fragments come from shared memory a k-step at a time, so that none
// stays in registers across the loop
template <int KP, int N, int KS, int MT>
__device__ void fm_mul_nk_m(float (*acc)[N][4], unsigned short (*as)[KP + 8], int row0, unsigned short (*s)[KP + 8]) {
  #pragma unroll
  for (int kk = 0; kk < KS; kk++) {
    unsigned a[MT][4];
    #pragma unroll
    for (int mt = 0; mt < MT; mt++) fm_frag_a<KP>(a[mt], as, row0 + 16 * mt, kk);
    #pragma unroll
    for (int n2 = 0; n2 < N / 2; n2++) {
      unsigned b[4];
      fm_frag_b_nk<KP>(b, s, n2 * 16, kk);
      #pragma unroll
      for (int mt = 0; mt < MT; mt++) {
        lmc_mma_bf16_16816(acc[mt][2 * n2], a[mt], b, acc[mt][2 * n2]);
        lmc_mma_bf16_16816(acc[mt][2 * n2 + 1], a[mt], b + 2, acc[mt][2 * n2 + 1]);
      }
    }
  }
}
template <int KP, int N, int KS>
__device__ void fm_mul_nk(float (*acc)[4], unsigned short (*as)[KP + 8], int row0, unsigned short (*s)[KP + 8]) {
  fm_mul_nk_m<KP, N, KS, 1>((float(*)[N][4])acc, as, row0, s);
}

// The A fragment of k-step kk (16 keys) of a tile s in the accumulator
// layout (16 rows x 8N: n-tiles 2 kk and 2 kk + 1), rounded to bf16
__device__ __forceinline__ void fm_frag_p(unsigned a[4], float (*s)[4], int kk) {
  a[0] = bf16_pair(s[2 * kk][0], s[2 * kk][1]), a[1] = bf16_pair(s[2 * kk][2], s[2 * kk][3]);
  a[2] = bf16_pair(s[2 * kk + 1][0], s[2 * kk + 1][1]), a[3] = bf16_pair(s[2 * kk + 1][2], s[2 * kk + 1][3]);
}

// acc[mt][16 x KP] += p[mt] (16 x 8N, accumulator layout, rounded to bf16)
// * tile as [k][n] rows k 0..8N, MT m-tiles sharing each B fragment
template <int KP, int N, int MT>
__device__ void fm_mul_kn_m(float (*acc)[KP / 8][4], float (*p)[N][4], unsigned short (*s)[KP + 8]) {
  #pragma unroll
  for (int kk = 0; kk < N / 2; kk++) {
    unsigned a[MT][4];
    #pragma unroll
    for (int mt = 0; mt < MT; mt++) fm_frag_p(a[mt], p[mt], kk);
    #pragma unroll
    for (int d2 = 0; d2 < KP / 16; d2++) {
      unsigned b[4];
      fm_frag_b_kn<KP>(b, s, kk * 16, d2 * 16);
      #pragma unroll
      for (int mt = 0; mt < MT; mt++) {
        lmc_mma_bf16_16816(acc[mt][2 * d2], a[mt], b, acc[mt][2 * d2]);
        lmc_mma_bf16_16816(acc[mt][2 * d2 + 1], a[mt], b + 2, acc[mt][2 * d2 + 1]);
      }
    }
  }
}
template <int KP, int N>
__device__ void fm_mul_kn(float (*acc)[4], float (*p)[4], unsigned short (*s)[KP + 8]) {
  fm_mul_kn_m<KP, N, 1>((float(*)[KP / 8][4])acc, (float(*)[N][4])p, s);
}

// an accumulator of KP columns, zero
template <int KP> __device__ __forceinline__ void fm_zero(float (*acc)[4]) {
  #pragma unroll
  for (int nt = 0; nt < KP / 8; nt++)
    #pragma unroll
    for (int i = 0; i < 4; i++) acc[nt][i] = 0;
}

// this thread's part of a 16 x KP accumulator into rows r0 (c0, c1) and
// r0 + 8 (c2, c3) of a [.., stride] matrix, times scale[row half]
template <int KP>
__device__ void fm_put(act *dst, i64 stride, float (*acc)[4], i64 r0, i64 T, int K, float s0, float s1, int accum) {
  int t = threadIdx.x % 4;
  #pragma unroll
  for (int nt = 0; nt < KP / 8; nt++)
    #pragma unroll
    for (int i = 0; i < 4; i++) {
      i64 row = r0 + (i >> 1) * 8;
      int col = nt * 8 + 2 * t + (i & 1);
      if (row < T && col < K) PUT(dst, row * stride + col, acc[nt][i] * (i < 2 ? s0 : s1), accum);
    }
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffff, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffff, x, 1);
  return x + __shfl_xor_sync(0xffffffff, x, 2);
}

// One tile of scores s (16 query rows from r, keys from j0, the
// accumulator layout, in log2 units) into probabilities: the causal mask
// where diag, each row's running max m and sum l, and the output rows acc
// rescaled to the new max. Lazy (FlashAttention 4's rule): a warp keeps
// its rows' old maxima while no row's new max passes its old by more than
// 8 (log2 units), so the tile's probabilities stay under 2^8 and the
// output and sums, which the old max scales alike, need no rescaling: in
// most tiles past the first few the 2 x KP / 2 multiplies of the
// rescaling are skipped. The row's log-sum-exp, m + log l, is the same
// whichever max m is. (Skip false: the exact running max, as the
// 128-row forward keeps it, which spills with the vote.)
//
// fm_probs is all of it but the output's rescaling: each half's factor
// into alpha (1 where the warp keeps its maxima), and true where the warp
// must rescale (the same in all its lanes), for a caller whose output
// rows are still being summed (the pipelined wgmma forward).
template <bool Skip = true>
__device__ __forceinline__ bool fm_probs(float (*s)[4], float *m, float *l, float *alpha, bool diag, i64 j0, i64 r) {
  int t = threadIdx.x % 4;
  float mx[2] = {m[0], m[1]};
  bool any = false;
  #pragma unroll
  for (int nt = 0; nt < FM_ROWS / 8; nt++)
    #pragma unroll
    for (int i = 0; i < 4; i++) {
      if (diag && j0 + nt * 8 + 2 * t + (i & 1) > r + (i >> 1) * 8) s[nt][i] = NEG_INF;
      mx[i >> 1] = fmaxf(mx[i >> 1], s[nt][i]);
    }
  #pragma unroll
  for (int h = 0; h < 2; h++) {
    mx[h] = quad_max(mx[h]);
    alpha[h] = 1.0f;
    if (Skip && !__any_sync(0xffffffffu, mx[h] > m[h] + 8.0f)) continue;   // (m -inf: the first tile rescales)
    alpha[h] = lmc_ex2(m[h] - mx[h]), any = true;
    l[h] *= alpha[h], m[h] = mx[h];
  }
  #pragma unroll
  for (int nt = 0; nt < FM_ROWS / 8; nt++)
    #pragma unroll
    for (int i = 0; i < 4; i++) s[nt][i] = lmc_ex2(s[nt][i] - m[i >> 1]), l[i >> 1] += s[nt][i];
  return any;
}

// the output rows acc (KP columns) times each half's factor
template <int KP>
__device__ __forceinline__ void fm_rescale(float (*acc)[4], const float *alpha) {
  #pragma unroll
  for (int nt = 0; nt < KP / 8; nt++)
    acc[nt][0] *= alpha[0], acc[nt][1] *= alpha[0], acc[nt][2] *= alpha[1], acc[nt][3] *= alpha[1];
}

template <int KP, bool Skip = true>
__device__ __forceinline__ void fm_softmax(float (*s)[4], float *m, float *l, float (*acc)[4], bool diag, i64 j0,
                                           i64 r) {
  float alpha[2];
  if (fm_probs<Skip>(s, m, l, alpha, diag, j0, r)) fm_rescale<KP>(acc, alpha);
}

// 16 output rows from r (acc over the row sums l) into o (rows of a
// stride) and their log-sum-exps (m in log2 units) into lse
template <int KP>
__device__ __forceinline__ void fm_finish(act *o, real *lse, float (*acc)[4], const float *m, const float *l, i64 r,
                                          i64 T, i64 stride, int K) {
  float l0 = quad_sum(l[0]), l1 = quad_sum(l[1]);
  fm_put<KP>(o, stride, acc, r, T, K, 1.0f / l0, 1.0f / l1, 0);
  if (threadIdx.x % 4 == 0 && r < T) lse[r] = m[0] * LN2 + logf(l0);
  if (threadIdx.x % 4 == 0 && r + 8 < T) lse[r + 8] = m[1] * LN2 + logf(l1);
}

template <int N> struct FmStage { enum { v = N }; };   // a stage of K and V tiles, as a type

// Two stages: wait for the tile's K and V (stage st) and, all warps done
// with the other stage, copy the next tile's (rows j1.., when more) there
template <int KP, bool Roll, int st>
__device__ __forceinline__ void fm_kv_next(unsigned short (*ks)[KP + 8], unsigned short (*vs)[KP + 8], const act *kb,
                                           const act *vb, bool more, i64 j1, i64 T, i64 stride, int K) {
  lmc_cp_async_wait0();
  __syncthreads();
  if (!more) return;
  fm_load<FM_ROWS, KP, act, Roll>(ks + (st ^ 1) * FM_ROWS, kb, j1, T, stride, K);
  fm_load<FM_ROWS, KP, act, Roll>(vs + (st ^ 1) * FM_ROWS, vb, j1, T, stride, K);
  lmc_cp_async_commit();
}

// blocks of 64 MT query rows, ordered as fa_forward's: a warp takes MT
// m-tiles of 16 query rows (its rows w0 .. w0 + 16 MT - 1), and skips a
// tile of keys that all lie past its rows (with MT 2, a block's diagonal
// tiles are half work for two of its warps). With S2 K and V have two
// stages each: the next tile's go out as a tile starts, into the other
// stage, and have all of this tile's work to land in (one wait and one
// barrier a tile); with one stage the next K's copy overlaps the softmax
// and P V, the next V's the next Q K^T (four barriers a tile).
template <int KP, int MT, bool Roll = false, bool S2 = false>
__device__ void fm_forward(act *o, real *lse, const act *q, const act *k, const act *v, i64 T, i64 H, i64 G,
                           i64 K, float scale, i64 B) {
  const int BR = 64 * MT;
  extern __shared__ __align__(16) unsigned short fm_smem[];
  // Q (BR rows), K's tiles, V's (fm_smem kind 0: a stage each, or two)
  unsigned short(*sh)[KP + 8] = (unsigned short(*)[KP + 8])fm_smem;
  unsigned short(*ks)[KP + 8] = sh + BR, (*vs)[KP + 8] = sh + BR + (S2 ? 2 : 1) * FM_ROWS;
  int warp = threadIdx.x / 32, g = threadIdx.x % 32 / 4;
  i64 b, h;
  if (!fa_head(b, h, B, H)) return;
  i64 gi = h / (H / G), i0 = (i64)(gridDim.y - 1 - blockIdx.y) * BR, last = (i0 + BR < T ? i0 + BR : T) - 1;
  i64 w0 = i0 + warp * 16 * MT, r0 = w0 + g;   // this thread's rows: r0 + 16 mt and r0 + 16 mt + 8
  const act *kb = k + b * T * G * K + gi * K, *vb = v + b * T * G * K + gi * K;
  fm_load<FM_ROWS, KP, act, Roll>(ks, kb, 0, T, G * K, (int)K);
  if (!S2) lmc_cp_async_commit();   // (one stage: K and V in two groups)
  fm_load<FM_ROWS, KP, act, Roll>(vs, vb, 0, T, G * K, (int)K), lmc_cp_async_commit();
  fm_tile<BR, KP>(sh, q + b * T * H * K + h * K, i0, T, H * K, (int)K, scale * LOG2E);   // scores in log2 units
  float acc[MT][KP / 8][4], m[MT][2], l[MT][2];
  #pragma unroll
  for (int mt = 0; mt < MT; mt++) {
    m[mt][0] = m[mt][1] = NEG_INF, l[mt][0] = l[mt][1] = 0;
    #pragma unroll
    for (int nt = 0; nt < KP / 8; nt++) acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0;
  }
  // a tile of keys from j0, its K and V in stage st (a constant: see dQ)
  auto tile = [&](auto stage, i64 j0) {
    const int st = decltype(stage)::v;
    bool more = j0 + FM_ROWS <= last, live = j0 < w0 + 16 * MT;   // (warp-uniform)
    unsigned short(*kt)[KP + 8] = ks + st * FM_ROWS, (*vt)[KP + 8] = vs + st * FM_ROWS;
    if (S2) fm_kv_next<KP, Roll, st>(ks, vs, kb, vb, more, j0 + FM_ROWS, T, G * K, (int)K);
    else {
      lmc_cp_async_wait1();   // K
      __syncthreads();
    }
    float s[MT][FM_ROWS / 8][4];
    if (live) {
      #pragma unroll
      for (int mt = 0; mt < MT; mt++)
        #pragma unroll
        for (int nt = 0; nt < FM_ROWS / 8; nt++) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0;
      fm_mul_nk_m<KP, FM_ROWS / 8, KP / 16, MT>(s, sh, warp * 16 * MT, kt);
    }
    if (!S2) {
      __syncthreads();
      if (more) fm_load<FM_ROWS, KP, act, Roll>(ks, kb, j0 + FM_ROWS, T, G * K, (int)K), lmc_cp_async_commit();
    }
    bool diag = j0 + FM_ROWS - 1 > w0;   // a key past a row of the warp: the causal mask (and T) apply
    if (live)
      #pragma unroll
      for (int mt = 0; mt < MT; mt++) fm_softmax<KP, MT == 1>(s[mt], m[mt], l[mt], acc[mt], diag, j0, r0 + 16 * mt);
    if (!S2) {
      if (more) lmc_cp_async_wait1();   // V
      else lmc_cp_async_wait0();
      __syncthreads();
    }
    if (live) fm_mul_kn_m<KP, FM_ROWS / 8, MT>(acc, s, vt);
    if (!S2) {
      __syncthreads();
      if (more) fm_load<FM_ROWS, KP, act, Roll>(vs, vb, j0 + FM_ROWS, T, G * K, (int)K), lmc_cp_async_commit();
    }
  };
  for (i64 j0 = 0; j0 <= last; j0 += (S2 ? 2 : 1) * FM_ROWS) {
    tile(FmStage<0>(), j0);
    if (S2 && j0 + FM_ROWS <= last) tile(FmStage<1>(), j0 + FM_ROWS);
  }
  #pragma unroll
  for (int mt = 0; mt < MT; mt++)
    fm_finish<KP>(o + b * T * H * K + h * K, lse + (b * H + h) * T, acc[mt], m[mt], l[mt], r0 + 16 * mt, T, H * K, (int)K);
}

// The forward on the warpgroup's matrix instructions (Hopper's wgmma,
// sm_90a; docs/cuda.md, "wgmma"): a block is one warpgroup of 64 query
// rows, warp w rows 16w.. as in fm_forward at 16 rows a warp (or blocks
// of NW warpgroups sharing K and V). Q's tile, copied once, times the
// scale, and each tile of 64 keys are both read from shared memory (Q K^T:
// A and B K-major, N 64,
// head dim / 16 instructions), and the probabilities, rounded to bf16 in
// registers, by V's tile (P V: N-major B, the head dim in chunks of 64, 32
// and 16, four instructions a chunk): no ldmatrix of K or V, and the
// tensor cores read the tiles while the warps go on. K and V have two
// stages, each tile's copy going out as the tile before starts. A tile of
// K or V is in 8 x 16-byte core matrices, the layout a descriptor without
// swizzling reads: 16-byte unit e (8 columns of a row) at byte 16 e, e =
// (r / 8) 8C + (c / 8) 8 + r % 8 for row r and column c (C = KP / 8), so a
// core matrix's 8 rows are 128 contiguous bytes, the next 8 columns 128
// bytes on and the next 8 rows 16 KP. K's descriptor steps the head dim
// (its K direction) by 128 bytes and keys by 16 KP; V's steps keys (its K
// direction) by 16 KP and the head dim by 128.
enum { FW_ROWS = 64 };

// Element (r, c) of a tile of core matrices (C 16-byte units a row): 8 x 8
// elements to a core matrix, rows r / 8 of them 8 C units on, columns c /
// 8 8 units on
__device__ __forceinline__ int fw_elem(int r, int c, int C) { return (((r / 8) * C + c / 8) * 8 + r % 8) * 8 + c % 8; }

// this thread's index in its warpgroup, in a block of NW
template <int NW> __device__ __forceinline__ int fw_x() { return NW == 1 ? threadIdx.x : threadIdx.x % FA_THREADS; }
// and its warpgroup's index (by a shuffle from lane 0, which ptxas takes
// as the same across the warp: descriptors made from it stay in uniform
// registers, where the wgmmas read them)
template <int NW> __device__ __forceinline__ int fw_wg() {
  return NW == 1 ? 0 : __shfl_sync(0xffffffffu, threadIdx.x / FA_THREADS, 0);
}

// fw_load by cp.async in passes of constant stride where a row is a
// whole number of 64-byte chunks (K == KP, a multiple of 32): warp w of
// a warpgroup takes rows R w / 4.. of the tile (R 64 or 32), lane l rows
// R w / 4 + l % 8 (and 8 on, at 64), chunks of 16 bytes l / 8 + 4q, so
// each pass's source and destination are the first's plus a constant (no
// address worked out a copy); a pass's 8 lanes of a chunk fill one core
// matrix, and a warp reads 64 bytes of each of 8 rows. A zero fill reads
// nothing (fm_load_pass).
template <int KP, int NW, int R, typename S>
__device__ __forceinline__ void fw_load_passes(unsigned short *s, const S *src, i64 r0, i64 T, i64 stride) {
  enum { C = KP / 8 };
  static_assert(C % 4 == 0 && R % 32 == 0 && FA_THREADS == 2 * FW_ROWS, "4 warps of R / 4 rows, 64-byte chunks");
  int l = threadIdx.x % 32, w = fw_x<NW>() / 32, c = l / 8 * 8;
  i64 r = r0 + R / 4 * w + l % 8;
  const S *p = src + r * stride + c;
  unsigned short *d = s + 8 * (R / 32 * 8 * w * C + c + l % 8);   // unit (R w / 32) 8C + c + l % 8
  #pragma unroll
  for (int g = 0; g < R / 32; g++)
    #pragma unroll
    for (int q = 0; q < C / 4; q++)
      lmc_cp_async16(d + 8 * (8 * C * g + 32 * q), p + 8 * g * stride + 32 * q, r + 8 * g < T ? 16 : 0);
}

// rows [r0, r0 + R) of a [T, stride] matrix (K columns) into a tile of
// core matrices (R 64, or 32), times scale, zero past T and K: by
// cp.async where FmAsync allows and scale is 1 (the caller commits the
// group), else by loads and stores, by the 128 threads of a warpgroup.
// Thread x of it takes units x + 128 u, a pass a unit, consecutive
// threads the 8 rows of a core matrix (conflict-free stores of 16 bytes)
// and 4 row chunks of 64 bytes a warp from global memory.
template <int KP, int NW = 1, int R = FW_ROWS, typename S>
__device__ void fw_load(unsigned short *s, const S *src, i64 r0, i64 T, i64 stride, int K, float scale = 1.0f) {
  enum { C = KP / 8, U = R * C };   // units a row, a tile
  bool async = scale == 1.0f && FmAsync<S>::ok(src, stride, K);
  if constexpr (C % 4 == 0)
    if (async && K == KP) return fw_load_passes<KP, NW, R>(s, src, r0, T, stride);
  #pragma unroll
  for (int u = 0; u < (U + FA_THREADS - 1) / FA_THREADS; u++) {
    int e = fw_x<NW>() + u * FA_THREADS, r = e / (8 * C) * 8 + e % 8, c = e / 8 % C * 8;
    if (U % FA_THREADS && e >= U) break;   // (R 32 at head dim 112)
    bool in = r0 + r < T && c < K;
    const S *p = src + (in ? (r0 + r) * stride + c : 0);
    if (async) {
      lmc_cp_async16(s + 8 * e, p, in ? 16 : 0);
      continue;
    }
    #pragma unroll
    for (int j = 0; j < 8; j++) s[8 * e + j] = (unsigned short)bf16_bits(in && c + j < K ? (float)p[j] * scale : 0.0f);
  }
}

// a descriptor of a wgmma operand at p: lbo and sbo the byte offsets
// between core matrices in its K and its M or N direction, no swizzling
__device__ __forceinline__ unsigned long long fw_desc(const unsigned short *p, unsigned lbo, unsigned sbo) {
  return (unsigned long long)((lmc_smem(p) & 0x3ffffu) >> 4) | (unsigned long long)(lbo >> 4) << 16 |
         (unsigned long long)(sbo >> 4) << 32;
}

// K's and V's tiles of keys from j into ks and vs: by the block's one
// warpgroup, or K by the first and V by the second (this thread's: wg;
// the caller commits)
template <int KP, int NW>
__device__ __forceinline__ void fw_kv_load(unsigned short *ks, unsigned short *vs, const act *kb, const act *vb, i64 j,
                                           i64 T, i64 stride, int K, int wg) {
  if (NW == 1) fw_load<KP, NW>(ks, kb, j, T, stride, K), fw_load<KP, NW>(vs, vb, j, T, stride, K);
  else if (wg < 2) fw_load<KP, NW>(wg ? vs : ks, wg ? vb : kb, j, T, stride, K);
}

#ifdef LMC_WGMMA
// Two stages of K and V (the forward, dQ): wait for this tile's (stage
// st), landed and seen by the tensor cores; every warp done with the
// other stage, copy the next tile's there (keys from j1, where j1 <=
// last)
template <int KP, int NW>
__device__ __forceinline__ void fw_kv_next(unsigned short *ks, unsigned short *vs, const act *kb, const act *vb, int st,
                                           i64 j1, i64 last, i64 T, i64 stride, int K, int wg) {
  lmc_cp_async_wait0();
  lmc_fence_proxy_async();
  __syncthreads();
  if (j1 > last) return;
  fw_kv_load<KP, NW>(ks + (st ^ 1) * FW_ROWS * KP, vs + (st ^ 1) * FW_ROWS * KP, kb, vb, j1, T, stride, K, wg);
  lmc_cp_async_commit();
}

// A block of fw_forward or fw_backward_dq: its head (b, h), its NW
// warpgroups' 64 query rows each (the last below T: last), this thread's
// warpgroup (wg) and its rows from q0 (the last below T: wlast, -1 if
// none), its warp's from w0, its thread's r0 and r0 + 8, and the kv
// group's K and V (kb, vb), whose first tiles' copies go out into stage 0
// (ks, vs); false past the last head
struct FwBlock {
  i64 b, h, q0, w0, r0;
  int last, wlast, wg;   // (rows of a sequence: T < 2^31)
  const act *kb, *vb;
};
template <int KP, int NW>
__device__ __forceinline__ bool fw_block(FwBlock &f, unsigned short *ks, unsigned short *vs, const act *k, const act *v,
                                         i64 T, i64 H, i64 G, i64 K, i64 B) {
  if (!fa_head(f.b, f.h, B, H)) return false;
  f.wg = fw_wg<NW>();
  i64 gi = f.h / (H / G), i0 = (i64)(gridDim.y - 1 - blockIdx.y) * NW * FW_ROWS, q0 = i0 + f.wg * FW_ROWS;
  f.q0 = q0, f.last = (int)((i0 + NW * FW_ROWS < T ? i0 + NW * FW_ROWS : T) - 1);
  f.wlast = (int)(q0 >= T ? -1 : q0 + FW_ROWS < T ? q0 + FW_ROWS - 1 : T - 1);
  f.w0 = q0 + fw_x<NW>() / 32 * 16, f.r0 = f.w0 + threadIdx.x % 32 / 4;
  f.kb = k + f.b * T * G * K + gi * K, f.vb = v + f.b * T * G * K + gi * K;
  fw_kv_load<KP, NW>(ks, vs, f.kb, f.vb, 0, T, G * K, (int)K, f.wg), lmc_cp_async_commit();
  return true;
}

// The descriptors of a tile of core matrices (fw_load's) from its first
// row: K-major (the head dim is the product's k: Q K^T's K, dK/dV's A and
// B) and N-major (the rows are the product's k: P V's V, dK/dV's dO and Q
// as B). A descriptor's address field counts 16 bytes, so one at a byte
// offset is the first plus offset / 16: rows r.. of a tile are 2 KP r /
// 16 on, head dims c.. (a multiple of 8) c on. The loops add these to
// descriptors made once, not made anew from addresses.
template <int KP> __device__ __forceinline__ unsigned long long fw_desc_k(const unsigned short *t) {
  return fw_desc(t, 128, 16 * KP);
}
template <int KP> __device__ __forceinline__ unsigned long long fw_desc_n(const unsigned short *t) {
  return fw_desc(t, 16 * KP, 128);
}

// acc (16 x KP a warp) += a (16 x 16, the A fragment) times 16 rows of an
// N-major tile from descriptor d (the tile's rows are the product's k, its
// head dims the n), head dims from N0 in chunks of 64, 32, 16: the
// forward's P V, dK/dV's dS^T Q and P^T dO
template <int KP, int N0 = 0>
__device__ __forceinline__ void fw_mul_kn(float (*acc)[4], const unsigned *a, unsigned long long d) {
  if constexpr (N0 < KP) {
    constexpr int N = KP - N0 >= 64 ? 64 : KP - N0 >= 32 ? 32 : 16;
    lmc_wgmma_bf16<N, 1>(acc + N0 / 8, a, d + N0, 1);
    fw_mul_kn<KP, N0 + N>(acc, a, d);
  }
}

// acc (16 x N a warp) = A (64 x 16 KS from descriptor ad, K-major) times
// B (16 KS x N from bd, K-major), both from shared memory: the scores
// and dP (the caller fences before and commits after)
template <int N, int KS>
__device__ __forceinline__ void fw_mul_ss(float (*acc)[4], unsigned long long ad, unsigned long long bd) {
  #pragma unroll
  for (int kk = 0; kk < KS; kk++) lmc_wgmma_bf16_ss<N, 0>(acc, ad + 16 * kk, bd + 16 * kk, kk);
}

// acc += rows 16 kk.. of an N-major tile from d times a[kk], kk < NK: the
// forward's P V, dQ's dS K and dK/dV's updates, 16 keys or queries a step
template <int KP, int NK>
__device__ __forceinline__ void fw_mul_rows(float (*acc)[4], const unsigned (*a)[4], unsigned long long d) {
  #pragma unroll
  for (int kk = 0; kk < NK; kk++) fw_mul_kn<KP>(acc, a[kk], d + 2 * KP * kk);
}

// the same, issued and waited for: acc's registers held on either side
// (the forward's P V, dQ's dS K, where nothing runs beside them)
template <int KP, int NK>
__device__ __forceinline__ void fw_mul_rows_now(float (*acc)[4], const unsigned (*a)[4], unsigned long long d) {
  lmc_wg_hold<KP / 8>(acc);
  lmc_wg_fence();
  fw_mul_rows<KP, NK>(acc, a, d);
  lmc_wg_commit();
  lmc_wg_wait<0>();
  lmc_wg_hold<KP / 8>(acc);
}

// dQ's rows' log-sum-exps (log2 units) and rowsum(dO O), this thread's
// two rows from r0 of head (b, h), zero past T
__device__ __forceinline__ void fw_dq_rows(float *li, float *di, const real *lse, const real *dd, i64 b, i64 h, i64 H,
                                           i64 T, i64 r0) {
  #pragma unroll
  for (int r = 0; r < 2; r++) {
    i64 row = r0 + r * 8;
    li[r] = row < T ? lse[(b * H + h) * T + row] * LOG2E : 0, di[r] = row < T ? dd[(b * H + h) * T + row] : 0;
  }
}

// P's fragments (the A operand of the next product, 16 keys or queries a
// step) from a tile in the accumulator layout, rounded to bf16, all made
// before the fence: a register of a wgmma's written after it makes ptxas
// put a wait after every wgmma (C7520, "wgmma.mma_async instructions are
// serialized")
template <int N>
__device__ __forceinline__ void fw_frags(unsigned (*a)[4], float (*s)[4]) {
  #pragma unroll
  for (int kk = 0; kk < N / 16; kk++) fm_frag_p(a[kk], s, kk);
}
#endif

template <int KP, int NW = 1>
__device__ void fw_forward(act *o, real *lse, const act *q, const act *k, const act *v, i64 T, i64 H, i64 G,
                           i64 K, float scale, i64 B) {
#ifdef LMC_WGMMA
  enum { KS = KP / 16, TILE = FW_ROWS * KP };   // Q K^T's k-steps; a K or V tile's elements
  extern __shared__ __align__(16) unsigned short fm_smem[];
  // Q (a tile a warpgroup), then K's two stages and V's two (core matrices; fm_smem kind 3)
  unsigned short *qs = fm_smem, *ks = qs + NW * TILE, *vs = ks + 2 * TILE;
  FwBlock f;
  if (!fw_block<KP, NW>(f, ks, vs, k, v, T, H, G, K, B)) return;
  i64 b = f.b, h = f.h, w0 = f.w0, r0 = f.r0;
  int last = f.last;
  // this warpgroup's tile of Q, scores in log2 units (seen by the tensor cores after the loop's first wait)
  fw_load<KP, NW>(qs + f.wg * TILE, q + b * T * H * K + h * K, f.q0, T, H * K, (int)K, scale * LOG2E);
  float acc[KP / 8][4], m[2] = {NEG_INF, NEG_INF}, l[2] = {0, 0};
  fm_zero<KP>(acc);
  // this warpgroup's Q; K's and V's stage 0 (stage 1's TILE / 8 on)
  unsigned long long qd = fw_desc_k<KP>(qs + f.wg * TILE), kd0 = fw_desc_k<KP>(ks), vd0 = fw_desc_n<KP>(vs);
  int st = 0;
  for (int j0 = 0; j0 <= last; j0 += FW_ROWS, st ^= 1) {
    fw_kv_next<KP, NW>(ks, vs, f.kb, f.vb, st, j0 + FW_ROWS, last, T, G * K, (int)K, f.wg);
    if (NW > 1 && j0 > f.wlast) continue;   // keys past this warpgroup's rows (another's tile)
    unsigned long long kd = kd0 + st * (TILE / 8), vd = vd0 + st * (TILE / 8);
    float s[FW_ROWS / 8][4];
    lmc_wg_fence();
    fw_mul_ss<FW_ROWS, KS>(s, qd, kd);
    lmc_wg_commit();
    lmc_wg_wait<0>();
    lmc_wg_hold<FW_ROWS / 8>(s);
    fm_softmax<KP>(s, m, l, acc, j0 + FW_ROWS - 1 > w0, j0, r0);
    unsigned p[FW_ROWS / 16][4];   // 16 keys a step: rows 16 kk.. of V's tile
    fw_frags<FW_ROWS>(p, s);
    fw_mul_rows_now<KP, FW_ROWS / 16>(acc, p, vd);
  }
  fm_finish<KP>(o + b * T * H * K + h * K, lse + (b * H + h) * T, acc, m, l, r0, T, H * K, (int)K);
#else
  __trap();   // (the runtime launches it on sm_90a alone)
#endif
}

// The wgmma forward with a tile's softmax beside the tensor cores' work
// (FlashAttention 3's overlap within a warpgroup; one warpgroup a block):
// tile j's Q K^T and tile j-1's P V go out together, the warpgroup waits
// for the first alone (wait_group 1), makes tile j's probabilities while
// P V runs, then waits for it and rescales the output rows where the
// maxima moved. P of tile j-1 stays in its registers until that wait
// (lmc_wg_hold_a), so ptxas gives tile j's another set. K's tiles are
// copied a tile ahead of their product and V's a tile behind K's (V's
// stage is read a tile later): as tile j starts, K of j+1 and V of j go
// into the stages tiles j-1 and j-2 used, both waited for in tile j-1.
template <int KP>
__device__ void fw_forward_pipe(act *o, real *lse, const act *q, const act *k, const act *v, i64 T, i64 H, i64 G,
                                i64 K, float scale, i64 B) {
#ifdef LMC_WGMMA
  enum { KS = KP / 16, TILE = FW_ROWS * KP, PK = FW_ROWS / 16 };   // Q K^T's k-steps; a tile's elements; P V's
  extern __shared__ __align__(16) unsigned short fm_smem[];
  unsigned short *qs = fm_smem, *ks = qs + TILE, *vs = ks + 2 * TILE;   // as fw_forward's (fm_smem kind 3)
  FwBlock f;
  if (!fw_block<KP, 1>(f, ks, vs, k, v, T, H, G, K, B)) return;   // (K and V of tile 0 into stage 0)
  i64 b = f.b, h = f.h, w0 = f.w0, r0 = f.r0, stride = G * K;
  int n = f.last / FW_ROWS + 1;   // tiles of keys
  fw_load<KP, 1>(qs, q + b * T * H * K + h * K, f.q0, T, H * K, (int)K, scale * LOG2E);
  float acc[KP / 8][4], m[2] = {NEG_INF, NEG_INF}, l[2] = {0, 0}, s[FW_ROWS / 8][4], alpha[2];
  fm_zero<KP>(acc);
  unsigned long long qd = fw_desc_k<KP>(qs), kd0 = fw_desc_k<KP>(ks), vd0 = fw_desc_n<KP>(vs);
  unsigned p[PK][4], pn[PK][4];   // P of the tile before (in P V), of this tile
  // tile 0: Q K^T alone
  lmc_cp_async_wait0(), lmc_fence_proxy_async(), __syncthreads();
  if (n > 1) fw_load<KP, 1>(ks + TILE, f.kb, FW_ROWS, T, stride, (int)K);
  lmc_cp_async_commit();
  lmc_wg_fence();
  fw_mul_ss<FW_ROWS, KS>(s, qd, kd0);
  lmc_wg_commit();
  lmc_wg_wait<0>();
  lmc_wg_hold<FW_ROWS / 8>(s);
  fm_probs(s, m, l, alpha, FW_ROWS - 1 > w0, 0, r0);   // (the output is zero: nothing to rescale)
  fw_frags<FW_ROWS>(p, s);
  // tile j: P V of tile j - 1's probabilities (pc), this tile's into pt.
  // Two tiles a trip, p and pn trading places, so no copy of P between
  // them sits where ptxas sees a wgmma's registers written inside its
  // stage (at head dim 64 such copies made it serialise every wgmma)
  auto tile = [&](int j, unsigned (&pc)[PK][4], unsigned (&pt)[PK][4]) {
    i64 j0 = (i64)j * FW_ROWS;
    lmc_cp_async_wait0(), lmc_fence_proxy_async(), __syncthreads();   // K of j, V of j - 1 landed
    if (j + 1 < n) fw_load<KP, 1>(ks + ((j + 1) & 1) * TILE, f.kb, j0 + FW_ROWS, T, stride, (int)K);
    fw_load<KP, 1>(vs + (j & 1) * TILE, f.vb, j0, T, stride, (int)K);
    lmc_cp_async_commit();
    unsigned long long kd = kd0 + (j & 1) * (TILE / 8), vd = vd0 + ((j - 1) & 1) * (TILE / 8);
    lmc_wg_hold<KP / 8>(acc), lmc_wg_hold_a<PK>(pc);
    lmc_wg_fence();
    fw_mul_ss<FW_ROWS, KS>(s, qd, kd);
    lmc_wg_commit();
    fw_mul_rows<KP, PK>(acc, pc, vd);
    lmc_wg_commit();
    lmc_wg_wait<1>();   // Q K^T done, P V may run on
    lmc_wg_hold<FW_ROWS / 8>(s);
    bool resc = fm_probs(s, m, l, alpha, j0 + FW_ROWS - 1 > w0, j0, r0);
    fw_frags<FW_ROWS>(pt, s);
    lmc_wg_wait<0>();
    lmc_wg_hold<KP / 8>(acc), lmc_wg_hold_a<PK>(pc);
    if (resc) fm_rescale<KP>(acc, alpha);
  };
  for (int j = 1; j < n; j += 2) {
    tile(j, p, pn);
    if (j + 1 < n) tile(j + 1, pn, p);
  }
  // the last tile's P V (its P in pn after an odd tile, else in p)
  lmc_cp_async_wait0(), lmc_fence_proxy_async(), __syncthreads();
  unsigned long long vd = vd0 + ((n - 1) & 1) * (TILE / 8);
  if ((n - 1) & 1) fw_mul_rows_now<KP, PK>(acc, pn, vd);
  else fw_mul_rows_now<KP, PK>(acc, p, vd);
  fm_finish<KP>(o + b * T * H * K + h * K, lse + (b * H + h) * T, acc, m, l, r0, T, H * K, (int)K);
#else
  __trap();   // (the runtime launches it on sm_90a alone)
#endif
}

// @library attention_bwd
// Flash attention's backward in three deterministic kernels (no atomics):
// rowsum(dO * O) per query row; dQ, one block per query block over its
// keys; dK and dV, one block per key block of a kv group over the queries
// of the group's heads that see it. Probabilities are recomputed from the
// saved log-sum-exp.

// dd[b,h,i] = sum_d dout[b,i,h,d] o[b,i,h,d]: one warp per row, 8 values
// a lane-step by 16-byte loads where K and the rows allow
#if LMC_IN_PART(0)
extern "C" __global__ void lmc_attention_dot(real *dd, const act *dout, const act *o, i64 B, i64 T, i64 H, i64 K) {
  i64 row = (blockIdx.x * (i64)blockDim.x + threadIdx.x) / 32;
  if (row >= B * T * H) return;   // whole warps leave together
  float s = 0, a[8], c[8];
  int lane = threadIdx.x % 32;
  if (K % 8 == 0 && al16(dout) && al16(o))
    for (int d = lane * 8; d < K; d += 256) {
      ld8(a, dout + row * K + d), ld8(c, o + row * K + d);
      for (int e = 0; e < 8; e++) s += a[e] * c[e];
    }
  else
    for (int d = lane; d < K; d += 32) s += dout[row * K + d] * o[row * K + d];
  for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffff, s, off);
  i64 b = row / (T * H), i = row / H % T, h = row % H;
  if (threadIdx.x % 32 == 0) dd[(b * H + h) * T + i] = s;
}
#endif

// blocks ordered as the forward's
template <int D, int P>
__device__ void fa_backward_dq(act *dq, const act *dout, const act *q, const act *k, const act *v,
                               const real *lse, const real *dd, i64 T, i64 H, i64 G, i64 K, float scale, int acc,
                               i64 B) {
  const int W = D * P, R = FA_THREADS / P;
  __shared__ __align__(16) float ks[FA_TILE][W], vs[FA_TILE][W];
  i64 b, h;
  if (!fa_head(b, h, B, H)) return;
  i64 g = h / (H / G), i0 = (i64)(gridDim.y - 1 - blockIdx.y) * R, i = i0 + threadIdx.x / P;
  i64 last = (i0 + R < T ? i0 + R : T) - 1;
  const act *kb = k + b * T * G * K + g * K, *vb = v + b * T * G * K + g * K;
  float qr[D], dor[D], dqr[D];
  fa_row<D, P>(qr, q + ((b * T + i) * H + h) * K, i < T, (int)K, scale);
  fa_row<D, P>(dor, dout + ((b * T + i) * H + h) * K, i < T, (int)K, 1.0f);
  for (int j = 0; j < D; j++) dqr[j] = 0;
  float li = i < T ? lse[(b * H + h) * T + i] : 0, di = i < T ? dd[(b * H + h) * T + i] : 0;
  for (i64 j0 = 0; j0 <= last; j0 += FA_TILE) {
    __syncthreads();
    fa_tile<W>(ks, kb, j0, T, G * K, (int)K);
    fa_tile<W>(vs, vb, j0, T, G * K, (int)K);
    __syncthreads();
    for (int c = 0; c < FA_TILE; c++) {
      float s = fa_dot<D, P>(qr, ks[c]), dp = fa_dot<D, P>(dor, vs[c]);
      float pc = j0 + c <= i && i < T ? expf(s - li) : 0.0f;
      fa_axpy<D, P>(dqr, pc * (dp - di), ks[c]);
    }
  }
  if (i < T) fa_put<D, P>(dq + ((b * T + i) * H + h) * K, dqr, (int)K, scale, acc);
}

// On the tensor cores: dQ, blocks of 64 MT query rows as the forward's; a
// warp takes MT m-tiles of 16 rows as the forward does, and a tile of 64
// keys in MT sub-tiles of 64 / MT (so that S and dP of 2 m-tiles fit the
// registers beside dQ's accumulators), skipping those wholly past its rows
// dS of a tile, this warp's 16 query rows x N keys in the accumulator
// layout: S (log2 units) and dP in, dS = P (dP - the rows' rowsum(dO O)
// di) out, P from the rows' log-sum-exps li (log2 units); where diag the
// causal mask (a key more than rel past this thread's first row is unseen)
template <int N>
__device__ __forceinline__ void fm_dq_ds(float (*s)[4], const float (*dp)[4], const float *li, const float *di,
                                         bool diag, int rel) {
  int t = threadIdx.x % 4;
  #pragma unroll
  for (int nt = 0; nt < N / 8; nt++)
    #pragma unroll
    for (int i = 0; i < 4; i++) {
      float p = lmc_ex2(s[nt][i] - li[i >> 1]);
      if (diag && nt * 8 + 2 * t + (i & 1) > rel + (i >> 1) * 8) p = 0.0f;
      s[nt][i] = p * (dp[nt][i] - di[i >> 1]);
    }
}

template <int KP, int MT, bool Roll = false, bool S2 = false>
__device__ void fm_backward_dq(act *dq, const act *dout, const act *q, const act *k, const act *v,
                               const real *lse, const real *dd, i64 T, i64 H, i64 G, i64 K, float scale, int accum,
                               i64 B) {
  const int BR = 64 * MT, NS = FM_ROWS / MT;
  extern __shared__ __align__(16) unsigned short fm_smem[];
  // Q, dO (BR rows each), K's tiles, V's (fm_smem kind 1: a stage each, or two)
  unsigned short(*sh)[KP + 8] = (unsigned short(*)[KP + 8])fm_smem;
  unsigned short(*dos)[KP + 8] = sh + BR, (*ks)[KP + 8] = sh + 2 * BR, (*vs)[KP + 8] = ks + (S2 ? 2 : 1) * FM_ROWS;
  int warp = threadIdx.x / 32, g = threadIdx.x % 32 / 4;
  i64 b, h;
  if (!fa_head(b, h, B, H)) return;
  i64 gi = h / (H / G), i0 = (i64)(gridDim.y - 1 - blockIdx.y) * BR, last = (i0 + BR < T ? i0 + BR : T) - 1;
  i64 w0 = i0 + warp * 16 * MT, r0 = w0 + g;   // this thread's rows: r0 + 16 mt and r0 + 16 mt + 8
  const act *kb = k + b * T * G * K + gi * K, *vb = v + b * T * G * K + gi * K;
  __shared__ act *dqh;   // where the rows go: read again at the end (after the tiles' barriers), not held
  if (threadIdx.x == 0) dqh = dq + b * T * H * K + h * K;
  // One stage: V and K tiles in two groups, K's copy overlapping the first
  // dO V^T, the next tile's both waiting for the last dS K (three barriers
  // a tile, the next tile's copies with no work of this block to hide
  // them). Two stages (S2): the next tile's go out as a tile starts, into
  // the other stage; one wait and one barrier a tile.
  fm_load<FM_ROWS, KP, act, Roll>(vs, vb, 0, T, G * K, (int)K);
  if (!S2) lmc_cp_async_commit();
  fm_load<FM_ROWS, KP, act, Roll>(ks, kb, 0, T, G * K, (int)K), lmc_cp_async_commit();
  fm_tile<BR, KP>(sh, q + b * T * H * K + h * K, i0, T, H * K, (int)K, scale * LOG2E);
  fm_tile<BR, KP>(dos, dout + b * T * H * K + h * K, i0, T, H * K, (int)K, 1.0f);
  float acc[MT][KP / 8][4], li[MT][2], di[MT][2];
  #pragma unroll
  for (int mt = 0; mt < MT; mt++) {
    #pragma unroll
    for (int nt = 0; nt < KP / 8; nt++) acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0;
    #pragma unroll
    for (int r = 0; r < 2; r++) {
      i64 row = r0 + 16 * mt + r * 8;
      li[mt][r] = row < T ? lse[(b * H + h) * T + row] * LOG2E : 0, di[mt][r] = row < T ? dd[(b * H + h) * T + row] : 0;
    }
  }
  // a tile of keys from j0, its K and V in stage st (a constant, so that
  // every fragment's shared address is a register plus an offset: a stage
  // in a register cost dQ at head dim 96 over 500 bytes of spills)
  auto tile = [&](auto stage, i64 j0) {
    const int st = decltype(stage)::v;
    bool more = j0 + FM_ROWS <= last;
    unsigned short(*kt)[KP + 8] = ks + st * FM_ROWS, (*vt)[KP + 8] = vs + st * FM_ROWS;
    if (S2) fm_kv_next<KP, Roll, st>(ks, vs, kb, vb, more, j0 + FM_ROWS, T, G * K, (int)K);
    else {
      lmc_cp_async_wait1();   // V
      __syncthreads();
    }
    #pragma unroll
    for (int hs = 0; hs < MT; hs++) {
      i64 k0 = j0 + hs * NS;
      bool live = k0 < w0 + 16 * MT;   // (warp-uniform)
      float s[MT][NS / 8][4], dp[MT][NS / 8][4];
      if (live) {
        #pragma unroll
        for (int mt = 0; mt < MT; mt++)
          #pragma unroll
          for (int nt = 0; nt < NS / 8; nt++)
            #pragma unroll
            for (int i = 0; i < 4; i++) s[mt][nt][i] = dp[mt][nt][i] = 0;
        fm_mul_nk_m<KP, NS / 8, KP / 16, MT>(dp, dos, warp * 16 * MT, vt + hs * NS);
      }
      if (!S2 && hs == 0) {
        lmc_cp_async_wait0();   // K
        __syncthreads();
      }
      if (!live) continue;
      fm_mul_nk_m<KP, NS / 8, KP / 16, MT>(s, sh, warp * 16 * MT, kt + hs * NS);
      // the causal mask where a key passes a row of the warp; a row past T
      // has dS 0 all along (its dO and lse are zeros)
      #pragma unroll
      for (int mt = 0; mt < MT; mt++)
        fm_dq_ds<NS>(s[mt], dp[mt], li[mt], di[mt], k0 + NS - 1 > w0, (int)(r0 + 16 * mt - k0));
      fm_mul_kn_m<KP, NS / 8, MT>(acc, s, kt + hs * NS);   // dQ += dS K
    }
    if (!S2) {
      __syncthreads();
      if (more) {
        fm_load<FM_ROWS, KP, act, Roll>(vs, vb, j0 + FM_ROWS, T, G * K, (int)K), lmc_cp_async_commit();
        fm_load<FM_ROWS, KP, act, Roll>(ks, kb, j0 + FM_ROWS, T, G * K, (int)K), lmc_cp_async_commit();
      }
    }
  };
  for (i64 j0 = 0; j0 <= last; j0 += (S2 ? 2 : 1) * FM_ROWS) {
    tile(FmStage<0>(), j0);
    if (S2 && j0 + FM_ROWS <= last) tile(FmStage<1>(), j0 + FM_ROWS);
  }
  #pragma unroll
  for (int mt = 0; mt < MT; mt++)
    fm_put<KP>(dqh, H * K, acc[mt], r0 + 16 * mt, T, (int)K, scale, scale, accum);
}

// The runtime's check of the warpgroup instructions on this GPU (cuda.c's
// wgmma_probe, before any attention kernel on them runs): d[3][64][32] =
// A B, A 64 x 16 and B 16 x 32 given row-major, B as the attention kernels
// describe their tiles, K-major (a tile of 32 rows of 16 columns: K's in
// Q K^T) and N-major (16 rows of 32: V's in P V), A from registers and,
// the third way, from shared memory K-major (dK/dV's K); tiles in
// fw_load's units (16 bytes a unit; unit (r / 8) C + c / 8, 8 to a core
// matrix, r % 8 within it, for C units a row: fw_elem).
#if LMC_IN_PART(0)
extern "C" __global__ void lmc_wgmma_probe(float *d, const bf16 *a, const bf16 *b) {
#ifdef LMC_WGMMA
  extern __shared__ __align__(16) unsigned short fm_smem[];
  unsigned short *as = fm_smem, *bk = as + 64 * 16, *bn = bk + 32 * 16;
  int x = threadIdx.x, w = x / 32, g = x % 32 / 4, t = x % 4;
  const unsigned short *ab = (const unsigned short *)a, *bb = (const unsigned short *)b;
  for (int e = x; e < 64 * 16; e += FA_THREADS) as[fw_elem(e / 16, e % 16, 2)] = ab[e];
  for (int e = x; e < 16 * 32; e += FA_THREADS) {
    int k = e / 32, n = e % 32;
    bk[fw_elem(n, k, 2)] = bb[e], bn[fw_elem(k, n, 4)] = bb[e];
  }
  lmc_fence_proxy_async();
  __syncthreads();
  const unsigned short *r0 = ab + (16 * w + g) * 16, *r1 = r0 + 8 * 16;
  unsigned ra[4] = {r0[2 * t] | (unsigned)r0[2 * t + 1] << 16, r1[2 * t] | (unsigned)r1[2 * t + 1] << 16,
                    r0[2 * t + 8] | (unsigned)r0[2 * t + 9] << 16, r1[2 * t + 8] | (unsigned)r1[2 * t + 9] << 16};
  float acc[3][4][4];
  lmc_wg_fence();
  lmc_wgmma_bf16<32, 0>(acc[0], ra, fw_desc_k<16>(bk), 0);
  lmc_wgmma_bf16<32, 1>(acc[1], ra, fw_desc_n<32>(bn), 0);
  lmc_wgmma_bf16_ss<32, 0>(acc[2], fw_desc_k<16>(as), fw_desc_k<16>(bk), 0);
  lmc_wg_commit();
  lmc_wg_wait<0>();
  #pragma unroll
  for (int v = 0; v < 3; v++) {
    lmc_wg_hold<4>(acc[v]);
    for (int i = 0; i < 4; i++)
      for (int j = 0; j < 4; j++) d[(v * 64 + 16 * w + g + (j >> 1) * 8) * 32 + 8 * i + 2 * t + (j & 1)] = acc[v][i][j];
  }
#endif
}
#endif

// dQ on the warpgroup's matrix instructions (sm_90a; see fw_forward): a
// block is one warpgroup of 64 query rows (or NW sharing K and V), warp w
// rows 16w..; Q's and dO's tiles are copied once, K and V have two stages
// of core matrices by cp.async. S = Q K^T and dP = dO V^T take A (Q, dO)
// and B (K, V) from shared memory, K-major, N 64; dQ
// += dS K takes dS from registers and K's tile N-major (the same bytes).
template <int KP, int NW = 1>
__device__ void fw_backward_dq(act *dq, const act *dout, const act *q, const act *k, const act *v, const real *lse,
                               const real *dd, i64 T, i64 H, i64 G, i64 K, float scale, int accum, i64 B) {
#ifdef LMC_WGMMA
  enum { KS = KP / 16, TILE = FW_ROWS * KP };
  extern __shared__ __align__(16) unsigned short fm_smem[];
  // Q, dO (a tile each a warpgroup), then K's two stages and V's (core matrices; fm_smem kind 5)
  unsigned short *qs = fm_smem, *dos = qs + NW * TILE, *ks = dos + NW * TILE, *vs = ks + 2 * TILE;
  FwBlock f;
  if (!fw_block<KP, NW>(f, ks, vs, k, v, T, H, G, K, B)) return;
  i64 b = f.b, h = f.h, w0 = f.w0, r0 = f.r0;
  int last = f.last;
  // this warpgroup's tiles of Q (S in log2 units) and dO, seen by the tensor cores after the loop's first wait
  fw_load<KP, NW>(qs + f.wg * TILE, q + b * T * H * K + h * K, f.q0, T, H * K, (int)K, scale * LOG2E);
  fw_load<KP, NW>(dos + f.wg * TILE, dout + b * T * H * K + h * K, f.q0, T, H * K, (int)K);
  lmc_cp_async_commit();
  float li[2], di[2];
  fw_dq_rows(li, di, lse, dd, b, h, H, T, r0);
  float acc[KP / 8][4];
  fm_zero<KP>(acc);
  // this warpgroup's Q and dO; stage 0's K K-major and N-major, V K-major (stage 1's TILE / 8 on)
  unsigned long long qd = fw_desc_k<KP>(qs + f.wg * TILE), od = qd + NW * TILE / 8, kk0 = fw_desc_k<KP>(ks),
                     kn0 = fw_desc_n<KP>(ks), vk0 = fw_desc_k<KP>(vs);
  int st = 0;
  for (int j0 = 0; j0 <= last; j0 += FW_ROWS, st ^= 1) {
    fw_kv_next<KP, NW>(ks, vs, f.kb, f.vb, st, j0 + FW_ROWS, last, T, G * K, (int)K, f.wg);
    if (NW > 1 && j0 > f.wlast) continue;   // keys past this warpgroup's rows
    unsigned long long kd = kk0 + st * (TILE / 8), kn = kn0 + st * (TILE / 8), vd = vk0 + st * (TILE / 8);
    float s[FW_ROWS / 8][4], dp[FW_ROWS / 8][4];
    lmc_wg_fence();
    fw_mul_ss<FW_ROWS, KS>(s, qd, kd);
    fw_mul_ss<FW_ROWS, KS>(dp, od, vd);
    lmc_wg_commit();
    lmc_wg_wait<0>();
    lmc_wg_hold<FW_ROWS / 8>(s), lmc_wg_hold<FW_ROWS / 8>(dp);
    // the causal mask where a key passes a row of the warp; a row past T
    // has dS 0 all along (its dO and lse are zeros)
    fm_dq_ds<FW_ROWS>(s, dp, li, di, j0 + FW_ROWS - 1 > w0, (int)(r0 - j0));
    unsigned da[FW_ROWS / 16][4];   // 16 keys a step: rows 16 kk.. of K's tile
    fw_frags<FW_ROWS>(da, s);
    fw_mul_rows_now<KP, FW_ROWS / 16>(acc, da, kn);   // dQ += dS K
  }
  fm_put<KP>(dq + b * T * H * K + h * K, H * K, acc, r0, T, (int)K, scale, scale, accum);
#else
  __trap();   // (the runtime launches it on sm_90a alone)
#endif
}

// dQ on wgmma with a tile's dS beside the tensor cores' work (as
// fw_forward_pipe; one warpgroup a block): tile j's S and dP and tile
// j-1's dQ += dS K go out together, the warpgroup waits for the first two
// alone, makes tile j's dS while the update runs, then waits for it and
// only then packs dS into the registers the update reads. The update
// reads its tile of K a tile after S does, so K takes three stages (V
// two): as tile j starts, K and V of j+1 go into the stages tiles j-2 and
// j-1 used, both waited for in tile j-1.
template <int KP>
__device__ void fw_backward_dq_pipe(act *dq, const act *dout, const act *q, const act *k, const act *v,
                                    const real *lse, const real *dd, i64 T, i64 H, i64 G, i64 K, float scale,
                                    int accum, i64 B) {
#ifdef LMC_WGMMA
  enum { KS = KP / 16, TILE = FW_ROWS * KP, PK = FW_ROWS / 16 };
  extern __shared__ __align__(16) unsigned short fm_smem[];
  // Q, dO, then K's three stages and V's two (core matrices; fm_smem kind 7)
  unsigned short *qs = fm_smem, *dos = qs + TILE, *ks = dos + TILE, *vs = ks + 3 * TILE;
  FwBlock f;
  if (!fw_block<KP, 1>(f, ks, vs, k, v, T, H, G, K, B)) return;   // (K and V of tile 0 into stage 0)
  i64 b = f.b, h = f.h, w0 = f.w0, r0 = f.r0, stride = G * K;
  int n = f.last / FW_ROWS + 1;   // tiles of keys
  fw_load<KP, 1>(qs, q + b * T * H * K + h * K, f.q0, T, H * K, (int)K, scale * LOG2E);
  fw_load<KP, 1>(dos, dout + b * T * H * K + h * K, f.q0, T, H * K, (int)K);
  lmc_cp_async_commit();
  float li[2], di[2];
  fw_dq_rows(li, di, lse, dd, b, h, H, T, r0);
  float acc[KP / 8][4];
  fm_zero<KP>(acc);
  unsigned long long qd = fw_desc_k<KP>(qs), od = fw_desc_k<KP>(dos), kk0 = fw_desc_k<KP>(ks), kn0 = fw_desc_n<KP>(ks),
                     vk0 = fw_desc_k<KP>(vs);
  unsigned da[PK][4];   // dS of the tile before (in its update until the wait), then this one's
  int kst = 0, prev = -1;   // this tile's stage of K; the tile before's (-1: none)
  for (int j = 0; j < n; j++) {
    i64 j0 = (i64)j * FW_ROWS;
    lmc_cp_async_wait0(), lmc_fence_proxy_async(), __syncthreads();   // K and V of j (and Q, dO) landed
    int nx = kst == 2 ? 0 : kst + 1;
    if (j + 1 < n) {
      fw_load<KP, 1>(ks + nx * TILE, f.kb, j0 + FW_ROWS, T, stride, (int)K);
      fw_load<KP, 1>(vs + ((j + 1) & 1) * TILE, f.vb, j0 + FW_ROWS, T, stride, (int)K);
    }
    lmc_cp_async_commit();
    unsigned long long kd = kk0 + kst * (TILE / 8), vd = vk0 + (j & 1) * (TILE / 8);
    float s[FW_ROWS / 8][4], dp[FW_ROWS / 8][4];
    lmc_wg_hold<KP / 8>(acc);
    lmc_wg_fence();
    fw_mul_ss<FW_ROWS, KS>(s, qd, kd);
    fw_mul_ss<FW_ROWS, KS>(dp, od, vd);
    lmc_wg_commit();
    if (prev >= 0) {   // the tile before's dQ += dS K, from its stage of K
      unsigned long long kn = kn0 + prev * (TILE / 8);
      fw_mul_rows<KP, PK>(acc, da, kn);
      lmc_wg_commit();
      lmc_wg_wait<1>();
    } else lmc_wg_wait<0>();
    lmc_wg_hold<FW_ROWS / 8>(s), lmc_wg_hold<FW_ROWS / 8>(dp);
    fm_dq_ds<FW_ROWS>(s, dp, li, di, j0 + FW_ROWS - 1 > w0, (int)(r0 - j0));
    if (prev >= 0) {
      lmc_wg_wait<0>();
      lmc_wg_hold<KP / 8>(acc), lmc_wg_hold_a<PK>(da);
    }
    fw_frags<FW_ROWS>(da, s);
    prev = kst, kst = nx;
  }
  // the last tile's update
  unsigned long long kn = kn0 + prev * (TILE / 8);
  fw_mul_rows_now<KP, PK>(acc, da, kn);
  fm_put<KP>(dq + b * T * H * K + h * K, H * K, acc, r0, T, (int)K, scale, scale, accum);
#else
  __trap();   // (the runtime launches it on sm_90a alone)
#endif
}

// A dK/dV step's N queries of head h from i0: their log-sum-exps (log2
// units) into ls and rowsum(dO O) into ds, zero past T, a thread a query
template <int N>
__device__ __forceinline__ void dkv_stats(float *ls, float *ds, const real *lse, const real *dd, i64 b, i64 h, i64 i0,
                                          i64 T, i64 H) {
  static_assert(N <= FA_THREADS, "a thread a query's statistics");
  int c = threadIdx.x;
  if (c < N) {
    bool ok = i0 + c < T;
    ls[c] = ok ? lse[(b * H + h) * T + i0 + c] * LOG2E : 0, ds[c] = ok ? dd[(b * H + h) * T + i0 + c] : 0;
  }
}

// One stage of fm_backward_dkv: rows i0.. of head h's Q and dO into a Q
// tile and the dO tile QT rows below it, and their rows' log-sum-exp (in
// log2 units) and rowsum(dO * O)
template <int KP, int QT>
__device__ void fm_dkv_stage(unsigned short (*s)[KP + 8], float *ls, float *ds, const act *q, const act *dout,
                             const real *lse, const real *dd, i64 b, i64 h, i64 i0, i64 T, i64 H, i64 K) {
  fm_load<QT, KP>(s, q + b * T * H * K + h * K, i0, T, H * K, (int)K);
  fm_load<QT, KP>(s + QT, dout + b * T * H * K + h * K, i0, T, H * K, (int)K);
  dkv_stats<QT>(ls, ds, lse, dd, b, h, i0, T, H);
}

// a step of fw_backward_dkv: QT queries of head h from i0, Q's tile
// and dO's (core matrices, cp.async where they can: the caller commits;
// with two warpgroups, Q by the first and dO by the second: this
// thread's, wg) and their log-sum-exps (log2 units) and rowsum(dO O) into
// ls and ds
template <int KP, int NW, int QT>
__device__ void fw_dkv_stage(unsigned short *s, float *ls, float *ds, const act *q, const act *dout, const real *lse,
                             const real *dd, i64 b, i64 h, i64 i0, i64 T, i64 H, i64 K, int wg) {
  if (NW == 1) {
    fw_load<KP, NW, QT>(s, q + b * T * H * K + h * K, i0, T, H * K, (int)K);
    fw_load<KP, NW, QT>(s + QT * KP, dout + b * T * H * K + h * K, i0, T, H * K, (int)K);
  } else if (wg < 2)
    fw_load<KP, NW, QT>(s + wg * QT * KP, (wg ? dout : q) + b * T * H * K + h * K, i0, T, H * K, (int)K);
  dkv_stats<QT>(ls, ds, lse, dd, b, h, i0, T, H);
}

// P^T and dS^T of a tile, this warp's 16 keys x N queries in the
// accumulator layout: S^T (unscaled scores) and dP^T in, the
// probabilities (times sl, then less the queries' log-sum-exps ls in log2
// units) and dS^T (P^T (dP^T - the queries' rowsum(dO O) ds)) out; where
// diag the causal mask (a query rel or more keys before this thread's
// first key sees none of them)
template <int N>
__device__ __forceinline__ void fm_dkv_probs(float (*st_)[4], float (*dpt)[4], const float *ls, const float *ds,
                                             bool diag, int rel, float sl) {
  int t = threadIdx.x % 4;
  #pragma unroll
  for (int nt = 0; nt < N / 8; nt++) {
    float2 l2 = *(const float2 *)&ls[nt * 8 + 2 * t], d2 = *(const float2 *)&ds[nt * 8 + 2 * t];
    #pragma unroll
    for (int i = 0; i < 4; i++) {
      float p = lmc_ex2(st_[nt][i] * sl - (i & 1 ? l2.y : l2.x));
      if (diag && nt * 8 + 2 * t + (i & 1) < rel + (i >> 1) * 8) p = 0.0f;
      st_[nt][i] = p, dpt[nt][i] = p * (dpt[nt][i] - (i & 1 ? d2.y : d2.x));   // P^T, dS^T
    }
  }
}

// On the tensor cores: dK and dV, a block 64 keys of a kv group (fa_head
// over B G groups, a group's blocks of early keys first); QT queries a
// tile (32 for head dims past 64, to keep the accumulators in registers).
// The Q and dO tiles of the group's heads go through two stages of shared
// memory (Q as stored: S^T is scaled in registers), the next tile's copy
// overlapping this one's four products.
template <int KP, int QT>
__device__ void fm_backward_dkv(act *dk, act *dv, const act *dout, const act *q, const act *k, const act *v,
                                const real *lse, const real *dd, i64 T, i64 H, i64 G, i64 K, float scale, int acck,
                                int accv, i64 B) {
  extern __shared__ __align__(16) unsigned short fm_smem[];
  // K, V, then two stages of Q and dO (fm_smem kind 2)
  unsigned short(*sh)[KP + 8] = (unsigned short(*)[KP + 8])fm_smem, (*vs)[KP + 8] = sh + FM_ROWS;
  __shared__ __align__(16) float ls[2][QT], ds[2][QT];
  int warp = threadIdx.x / 32, g = threadIdx.x % 32 / 4;
  i64 b, gi;
  if (!fa_head(b, gi, B, G)) return;
  i64 j0 = (i64)blockIdx.y * FM_ROWS, per = H / G;
  i64 c0 = j0 + warp * 16 + g;   // this thread's keys: c0 and c0 + 8
  float sl = scale * LOG2E;      // S in log2 units
  fm_tile<FM_ROWS, KP>(sh, k + b * T * G * K + gi * K, j0, T, G * K, (int)K, 1.0f);
  fm_tile<FM_ROWS, KP>(vs, v + b * T * G * K + gi * K, j0, T, G * K, (int)K, 1.0f);
  float dka[KP / 8][4], dva[KP / 8][4];
  for (int nt = 0; nt < KP / 8; nt++)
    for (int i = 0; i < 4; i++) dka[nt][i] = dva[nt][i] = 0;
  // steps: the query tiles i0 = j0, j0 + QT, .. below T of each head of the group in turn
  i64 i0 = j0, h1 = gi * per, i1 = j0;   // this step's first query; the next step's head and query
  unsigned short(*stage)[KP + 8] = sh + 2 * FM_ROWS;
  fm_dkv_stage<KP, QT>(stage, ls[0], ds[0], q, dout, lse, dd, b, h1, i1, T, H, K), lmc_cp_async_commit();
  for (int st = 0;; st ^= 1) {
    if ((i1 += QT) >= T) i1 = j0, h1++;
    bool more = h1 < (gi + 1) * per;
    if (more) {
      fm_dkv_stage<KP, QT>(stage + (st ^ 1) * 2 * QT, ls[st ^ 1], ds[st ^ 1], q, dout, lse, dd, b, h1, i1, T, H, K);
      lmc_cp_async_commit();
      lmc_cp_async_wait1();
    } else lmc_cp_async_wait0();
    __syncthreads();
    unsigned short(*qs)[KP + 8] = stage + st * 2 * QT, (*dos)[KP + 8] = stage + st * 2 * QT + QT;
    float st_[QT / 8][4], dpt[QT / 8][4];   // S^T and dP^T: this warp's 16 keys x QT queries
    for (int nt = 0; nt < QT / 8; nt++)
      for (int i = 0; i < 4; i++) st_[nt][i] = dpt[nt][i] = 0;
    fm_mul_nk<KP, QT / 8, KP / 16>(st_, sh, warp * 16, qs);
    fm_mul_nk<KP, QT / 8, KP / 16>(dpt, vs, warp * 16, dos);
    // the causal mask where a query of the tile comes before a key of the
    // block; a query past T adds nothing (its Q and dO are zeros)
    fm_dkv_probs<QT>(st_, dpt, ls[st], ds[st], i0 < j0 + FM_ROWS - 1, (int)(c0 - i0), sl);
    fm_mul_kn<KP, QT / 8>(dva, st_, dos);   // dV += P^T dO
    fm_mul_kn<KP, QT / 8>(dka, dpt, qs);    // dK += dS^T Q (times scale at the end)
    __syncthreads();
    if (!more) break;
    i0 = i1;
  }
  if (dk) fm_put<KP>(dk + b * T * G * K + gi * K, G * K, dka, c0, T, (int)K, scale, scale, acck);
  if (dv) fm_put<KP>(dv + b * T * G * K + gi * K, G * K, dva, c0, T, (int)K, 1.0f, 1.0f, accv);
}

// dK and dV on the warpgroup's matrix instructions (sm_90a; see
// fw_forward): a block is one warpgroup of 64 keys of a kv group, warp w
// keys 16w..; the queries of the group's heads 64 a step, Q's and dO's
// tiles in two stages of core matrices by cp.async beside K's and V's.
// S^T = K Q^T and dP^T = V dO^T take A (K, V) and B (Q, dO, K-major) from
// shared memory, N 64; dV += P^T dO and dK += dS^T Q take P^T and dS^T
// from registers and dO and Q N-major, the head dim in chunks.
template <int KP, int NW = 1, int QT = FW_ROWS>
__device__ void fw_backward_dkv(act *dk, act *dv, const act *dout, const act *q, const act *k, const act *v,
                                const real *lse, const real *dd, i64 T, i64 H, i64 G, i64 K, float scale, int acck,
                                int accv, i64 B) {
#ifdef LMC_WGMMA
  enum { KS = KP / 16, TILE = FW_ROWS * KP, QTILE = QT * KP };   // a K or V tile's elements, a Q or dO tile's
  extern __shared__ __align__(16) unsigned short fm_smem[];
  // K and V (a tile each a warpgroup), then two stages of Q and dO (fm_smem kind 4)
  unsigned short *ks = fm_smem, *vs = ks + NW * TILE, *stage = vs + NW * TILE;
  __shared__ __align__(16) float ls[2][QT], ds[2][QT];
  int wg = fw_wg<NW>(), warp = fw_x<NW>() / 32, g = threadIdx.x % 32 / 4;
  i64 b, gi;
  if (!fa_head(b, gi, B, G)) return;
  i64 per = H / G;
  // the block's first key, this warpgroup's (jw) and this thread's (c0, c0 + 8; T < 2^31)
  int j0 = blockIdx.y * NW * FW_ROWS, jw = j0 + wg * FW_ROWS, c0 = jw + warp * 16 + g;
  float sl = scale * LOG2E;   // S in log2 units
  ks += wg * TILE, vs += wg * TILE;
  fw_load<KP, NW>(ks, k + b * T * G * K + gi * K, jw, T, G * K, (int)K);
  fw_load<KP, NW>(vs, v + b * T * G * K + gi * K, jw, T, G * K, (int)K);
  float dka[KP / 8][4], dva[KP / 8][4];
  fm_zero<KP>(dka), fm_zero<KP>(dva);
  // K's and V's descriptors (K-major), the first stage's Q (K- and
  // N-major; its dO's QTILE / 8 on, the second stage's 2 QTILE / 8)
  unsigned long long kd = fw_desc_k<KP>(ks), vd = fw_desc_k<KP>(vs), qk0 = fw_desc_k<KP>(stage),
                     qn0 = fw_desc_n<KP>(stage);
  // steps: the query tiles i0 = j0, j0 + QT, .. below T of each head of the group in turn
  int i0 = j0, i1 = j0;   // this step's first query; the next step's first query
  i64 h1 = gi * per;      // and head
  fw_dkv_stage<KP, NW, QT>(stage, ls[0], ds[0], q, dout, lse, dd, b, h1, i1, T, H, K, wg), lmc_cp_async_commit();
  for (int st = 0;; st ^= 1) {
    if ((i1 += QT) >= T) i1 = j0, h1++;
    bool more = h1 < (gi + 1) * per;
    // this step's tiles landed and seen by the tensor cores; every warp
    // done with the other stage, which takes the next step's
    lmc_cp_async_wait0();
    lmc_fence_proxy_async();
    __syncthreads();
    if (more) {
      fw_dkv_stage<KP, NW, QT>(stage + (st ^ 1) * 2 * QTILE, ls[st ^ 1], ds[st ^ 1], q, dout, lse, dd, b, h1, i1, T, H,
                               K, wg);
      lmc_cp_async_commit();
    }
    // queries all before this warpgroup's keys (its first tile of a
    // head, past the first warpgroup's), or no keys below T: nothing
    if (NW > 1 && (i0 + QT <= jw || jw >= T)) {
      if (!more) break;
      i0 = i1;
      continue;
    }
    unsigned long long qk = qk0 + st * (QTILE / 4), qn = qn0 + st * (QTILE / 4);   // this stage's Q; dO QTILE / 8 on
    float st_[QT / 8][4], dpt[QT / 8][4];   // S^T and dP^T: this warp's 16 keys x QT queries
    lmc_wg_fence();
    fw_mul_ss<QT, KS>(st_, kd, qk);
    fw_mul_ss<QT, KS>(dpt, vd, qk + QTILE / 8);
    lmc_wg_commit();
    lmc_wg_wait<0>();
    lmc_wg_hold<QT / 8>(st_), lmc_wg_hold<QT / 8>(dpt);
    fm_dkv_probs<QT>(st_, dpt, ls[st], ds[st], i0 < jw + FW_ROWS - 1, c0 - i0, sl);
    unsigned pa[QT / 16][4], da[QT / 16][4];   // 16 queries a step: rows 16 kk.. of dO's and Q's tiles
    fw_frags<QT>(pa, st_), fw_frags<QT>(da, dpt);
    lmc_wg_hold<KP / 8>(dva), lmc_wg_hold<KP / 8>(dka);
    lmc_wg_fence();
    fw_mul_rows<KP, QT / 16>(dva, pa, qn + QTILE / 8);   // dV += P^T dO
    fw_mul_rows<KP, QT / 16>(dka, da, qn);               // dK += dS^T Q
    lmc_wg_commit();
    lmc_wg_wait<0>();
    lmc_wg_hold<KP / 8>(dva), lmc_wg_hold<KP / 8>(dka);
    if (!more) break;
    i0 = i1;
  }
  if (dk) fm_put<KP>(dk + b * T * G * K + gi * K, G * K, dka, c0, T, (int)K, scale, scale, acck);
  if (dv) fm_put<KP>(dv + b * T * G * K + gi * K, G * K, dva, c0, T, (int)K, 1.0f, 1.0f, accv);
#else
  __trap();   // (the runtime launches it on sm_90a alone)
#endif
}

// dK and dV on wgmma with a step's probabilities beside the tensor cores'
// work (as fw_forward_pipe; one warpgroup a block): step i's S^T and dP^T
// and step i-1's dV += P^T dO and dK += dS^T Q go out together, the
// warpgroup waits for the first two alone, makes step i's P^T and dS^T
// while the updates run, then waits for them and only then packs P^T and
// dS^T into the registers the updates read. The updates read their
// step's Q and dO a step later than the scores do, so Q and dO take
// three stages: as step i starts, step i+1's go into the stage step i-2
// used, whose updates were waited for in step i-1.
template <int KP, int QT>
__device__ void fw_backward_dkv_pipe(act *dk, act *dv, const act *dout, const act *q, const act *k, const act *v,
                                     const real *lse, const real *dd, i64 T, i64 H, i64 G, i64 K, float scale,
                                     int acck, int accv, i64 B) {
#ifdef LMC_WGMMA
  enum { KS = KP / 16, TILE = FW_ROWS * KP, QTILE = QT * KP, PQ = QT / 16 };
  extern __shared__ __align__(16) unsigned short fm_smem[];
  // K and V, then three stages of Q and dO (fm_smem kind 6)
  unsigned short *ks = fm_smem, *vs = ks + TILE, *stage = vs + TILE;
  __shared__ __align__(16) float ls[3][QT], ds[3][QT];
  int warp = threadIdx.x / 32, g = threadIdx.x % 32 / 4;
  i64 b, gi;
  if (!fa_head(b, gi, B, G)) return;
  i64 per = H / G;
  int j0 = blockIdx.y * FW_ROWS, c0 = j0 + warp * 16 + g;   // the block's first key, this thread's (c0, c0 + 8)
  float sl = scale * LOG2E;
  fw_load<KP, 1>(ks, k + b * T * G * K + gi * K, j0, T, G * K, (int)K);
  fw_load<KP, 1>(vs, v + b * T * G * K + gi * K, j0, T, G * K, (int)K);
  float dka[KP / 8][4], dva[KP / 8][4];
  fm_zero<KP>(dka), fm_zero<KP>(dva);
  unsigned long long kd = fw_desc_k<KP>(ks), vd = fw_desc_k<KP>(vs), qk0 = fw_desc_k<KP>(stage),
                     qn0 = fw_desc_n<KP>(stage);
  int i0 = j0, i1 = j0;   // this step's first query; the next step's
  i64 h1 = gi * per;      // and head
  fw_dkv_stage<KP, 1, QT>(stage, ls[0], ds[0], q, dout, lse, dd, b, h1, i1, T, H, K, 0), lmc_cp_async_commit();
  unsigned pa[PQ][4], da[PQ][4];   // P^T and dS^T of the step before (in its updates until the wait), then this one's
  int st = 0, prev = -1;            // this step's stage; the step before's (-1: none)
  for (;;) {
    if ((i1 += QT) >= T) i1 = j0, h1++;
    bool more = h1 < (gi + 1) * per;
    lmc_cp_async_wait0(), lmc_fence_proxy_async(), __syncthreads();   // this step's tiles landed
    int nx = st == 2 ? 0 : st + 1;
    if (more) {
      fw_dkv_stage<KP, 1, QT>(stage + nx * 2 * QTILE, ls[nx], ds[nx], q, dout, lse, dd, b, h1, i1, T, H, K, 0);
      lmc_cp_async_commit();
    }
    unsigned long long qk = qk0 + st * (QTILE / 4);
    float st_[QT / 8][4], dpt[QT / 8][4];   // S^T and dP^T: this warp's 16 keys x QT queries
    lmc_wg_hold<KP / 8>(dva), lmc_wg_hold<KP / 8>(dka);
    lmc_wg_fence();
    fw_mul_ss<QT, KS>(st_, kd, qk);
    fw_mul_ss<QT, KS>(dpt, vd, qk + QTILE / 8);
    lmc_wg_commit();
    if (prev >= 0) {   // the step before's updates, from its stage
      unsigned long long qn = qn0 + prev * (QTILE / 4);
      fw_mul_rows<KP, PQ>(dva, pa, qn + QTILE / 8);   // dV += P^T dO
      fw_mul_rows<KP, PQ>(dka, da, qn);               // dK += dS^T Q
      lmc_wg_commit();
      lmc_wg_wait<1>();
    } else lmc_wg_wait<0>();
    lmc_wg_hold<QT / 8>(st_), lmc_wg_hold<QT / 8>(dpt);
    fm_dkv_probs<QT>(st_, dpt, ls[st], ds[st], i0 < j0 + FW_ROWS - 1, c0 - i0, sl);
    if (prev >= 0) {
      lmc_wg_wait<0>();
      lmc_wg_hold<KP / 8>(dva), lmc_wg_hold<KP / 8>(dka), lmc_wg_hold_a<PQ>(pa), lmc_wg_hold_a<PQ>(da);
    }
    fw_frags<QT>(pa, st_), fw_frags<QT>(da, dpt);
    prev = st, st = nx;
    if (!more) break;
    i0 = i1;
  }
  // the last step's updates
  unsigned long long qn = qn0 + prev * (QTILE / 4);
  lmc_wg_hold<KP / 8>(dva), lmc_wg_hold<KP / 8>(dka);
  lmc_wg_fence();
  fw_mul_rows<KP, PQ>(dva, pa, qn + QTILE / 8), fw_mul_rows<KP, PQ>(dka, da, qn);
  lmc_wg_commit();
  lmc_wg_wait<0>();
  lmc_wg_hold<KP / 8>(dva), lmc_wg_hold<KP / 8>(dka);
  if (dk) fm_put<KP>(dk + b * T * G * K + gi * K, G * K, dka, c0, T, (int)K, scale, scale, acck);
  if (dv) fm_put<KP>(dv + b * T * G * K + gi * K, G * K, dva, c0, T, (int)K, 1.0f, 1.0f, accv);
#else
  __trap();   // (the runtime launches it on sm_90a alone)
#endif
}

// blocks of R keys of a kv group (fa_head over B G groups); a group's
// blocks of early keys (the most queries) first
template <int D, int P>
__device__ void fa_backward_dkv(act *dk, act *dv, const act *dout, const act *q, const act *k, const act *v,
                                const real *lse, const real *dd, i64 T, i64 H, i64 G, i64 K, float scale, int acck,
                                int accv, i64 B) {
  const int W = D * P, R = FA_THREADS / P;
  __shared__ __align__(16) float qs[FA_TILE][W], dos[FA_TILE][W];
  __shared__ float ls[FA_TILE], ds[FA_TILE];
  i64 b, g;
  if (!fa_head(b, g, B, G)) return;
  i64 j = (i64)blockIdx.y * R + threadIdx.x / P, per = H / G;
  const act *kr = k + (b * T + j) * G * K + g * K, *vr = v + (b * T + j) * G * K + g * K;
  float kx[D], vx[D], dkx[D], dvx[D];
  fa_row<D, P>(kx, kr, j < T, (int)K, scale);
  fa_row<D, P>(vx, vr, j < T, (int)K, 1.0f);
  for (int e = 0; e < D; e++) dkx[e] = dvx[e] = 0;
  for (i64 h = g * per; h < (g + 1) * per; h++)
    for (i64 i0 = (i64)blockIdx.y * R / FA_TILE * FA_TILE; i0 < T; i0 += FA_TILE) {
      __syncthreads();
      fa_tile<W>(qs, q + b * T * H * K + h * K, i0, T, H * K, (int)K);
      fa_tile<W>(dos, dout + b * T * H * K + h * K, i0, T, H * K, (int)K);
      for (int c = threadIdx.x; c < FA_TILE; c += FA_THREADS) {
        bool ok = i0 + c < T;
        ls[c] = ok ? lse[(b * H + h) * T + i0 + c] : 0, ds[c] = ok ? dd[(b * H + h) * T + i0 + c] : 0;
      }
      __syncthreads();
#pragma unroll 4
      for (int c = 0; c < FA_TILE; c++) {
        float s = fa_dot<D, P>(kx, qs[c]), dp = fa_dot<D, P>(vx, dos[c]);
        float pc = i0 + c >= j && i0 + c < T ? expf(s - ls[c]) : 0.0f;
        fa_axpy<D, P>(dvx, pc, dos[c]);
        fa_axpy<D, P>(dkx, pc * (dp - ds[c]), qs[c]);
      }
    }
  if (j >= T) return;
  if (dk) fa_put<D, P>(dk + (b * T + j) * G * K + g * K, dkx, (int)K, scale, acck);
  if (dv) fa_put<D, P>(dv + (b * T + j) * G * K + g * K, dvx, (int)K, 1.0f, accv);
}

// @kernel silu
extern "C" __global__ void lmc_silu(act *y, const act *x, i64 n) {
  ew1(y, x, n, 0, ew_silu);
}

// @kernel gelu
extern "C" __global__ void lmc_gelu(act *y, const act *x, i64 n) {
  ew1(y, x, n, 0, ew_gelu);
}

// @kernel swiglu
extern "C" __global__ void lmc_swiglu(act *y, const act *g, const act *u, i64 n) {
  ew2(y, g, u, n, 0, ew_swiglu);
}

// @kernel swiglu_bwd
extern "C" __global__ void lmc_swiglu_bwd(act *dg, act *du, const act *dy, const act *g, const act *u, i64 n,
                                          int accg, int accu) {
  ew3x2(dg, du, dy, g, u, n, accg, accu, ew_swiglu_bwd_g, [](float d, float a, float) { return ew_swiglu_bwd_u(d, a); });
}

// @kernel mul
extern "C" __global__ void lmc_mul(act *y, const act *a, const act *b, i64 n) {
  ew2(y, a, b, n, 0, [](float u, float v) { return u * v; });
}

// @kernel add
// y = a + b; lmc_add_bias: b a bias (a parameter) broadcast over rows
extern "C" __global__ void lmc_add(act *y, const act *a, const act *b, i64 n, i64 nb) {
  if (nb == n) return ew2(y, a, b, n, 0, [](float u, float v) { return u + v; });
  GRID_LOOP(i, n) y[i] = a[i] + b[i % nb];
}
// 8 elements of a row at a time when the row width is a multiple of 8
extern "C" __global__ void lmc_add_bias(act *y, const act *a, const real *b, i64 n, i64 nb) {
  if (nb % 8 == 0 && al16(y) && al16(a) && al16(b)) {
    GRID_LOOP(g, n / 8) {
      float u[8], v[8];
      ld8(u, a + g * 8), ld8(v, b + g * 8 % nb);
      for (int e = 0; e < 8; e++) u[e] += v[e];
      st8(y + g * 8, u);
    }
    return;
  }
  GRID_LOOP(i, n) y[i] = a[i] + b[i % nb];
}

// @kernel silu_bwd
extern "C" __global__ void lmc_silu_bwd(act *dx, const act *dy, const act *x, i64 n, int acc) {
  ew2(dx, dy, x, n, acc, ew_silu_bwd);
}

// @kernel gelu_bwd
extern "C" __global__ void lmc_gelu_bwd(act *dx, const act *dy, const act *x, i64 n, int acc) {
  ew2(dx, dy, x, n, acc, ew_gelu_bwd);
}

// @kernel mul_bwd
extern "C" __global__ void lmc_mul_bwd(act *da, act *db, const act *dy, const act *a, const act *b, i64 n,
                                       int acca, int accb) {
  ew3x2(da, db, dy, a, b, n, acca, accb, [](float d, float u, float v) { return d * v; },
        [](float d, float u, float v) { return d * u; });
}

// @kernel add_bwd
extern "C" __global__ void lmc_add_bwd(act *da, const act *dy, i64 n, int acc) {
  ew1(da, dy, n, acc, [](float d) { return d; });
}

// a bias's gradient, the column sums of dy as rows x nb: pass 1
extern "C" __global__ void lmc_add_bwd_bias(real *part, const act *dy, i64 rows, i64 nb, i64 per) {
  i64 j = COL_J;
  bool v = COL8(nb, dy, 0);
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0}, a[8];
  if (j < nb) COL_ROWS(r, rows, per) {
      colld(a, dy + r * nb, j, nb, v);
      for (int e = 0; e < 8; e++) s[e] += a[e];
    }
  col_store(part, s, nb);
}

// @kernel cross_entropy
// per-row loss: logsumexp(logits) - logits[target]; the runtime sums rows
extern "C" __global__ void lmc_xent(real *row_loss, const act *logits, const int *y, i64 n, i64 v) {
  i64 row = blockIdx.x;
  const act *l = logits + row * v;
  float z = row_logsumexp(l, v);
  if (threadIdx.x == 0) row_loss[row] = z - l[y[row]];
}

// @kernel cross_entropy_bwd
extern "C" __global__ void lmc_xent_bwd(act *dl, const act *logits, const int *y, i64 n, i64 v, float scale, int acc) {
  i64 row = blockIdx.x;
  const act *l = logits + row * v;
  act *d = dl + row * v;
  float z = row_logsumexp(l, v);
  for (i64 j = threadIdx.x; j < v; j += blockDim.x)
    PUT(d, j, scale * (lmc_exp(l[j] - z) - (j == y[row] ? 1.0f : 0.0f)), acc);
}

// @kernel xent_max
extern "C" __global__ void lmc_xent_max(real *mx, const act *logits, i64 n, i64 v) {
  i64 row = blockIdx.x;
  float m = NEG_INF;
  for (i64 j = threadIdx.x; j < v; j += blockDim.x) m = fmaxf(m, logits[row * v + j]);
  m = block_max(m);
  if (threadIdx.x == 0) mx[row] = m;
}

// @kernel xent_stats
extern "C" __global__ void lmc_xent_stats(real *sumexp, real *tlogit, const act *logits, const int *y, const real *mx,
                                          i64 n, i64 v, i64 v0) {
  i64 row = blockIdx.x, t = y[row] - v0;
  float s = 0;
  for (i64 j = threadIdx.x; j < v; j += blockDim.x) s += lmc_exp(logits[row * v + j] - mx[row]);
  s = block_sum(s);
  if (threadIdx.x == 0) sumexp[row] = s, tlogit[row] = t >= 0 && t < v ? (float)logits[row * v + t] : 0.0f;
}

// @kernel xent_loss
extern "C" __global__ void lmc_xent_loss_rows(real *row_loss, const real *mx, const real *sumexp, const real *tlogit,
                                              i64 n) {
  GRID_LOOP(i, n) row_loss[i] = mx[i] + logf(sumexp[i]) - tlogit[i];
}

// @kernel xent_tp_bwd
extern "C" __global__ void lmc_xent_tp_bwd(act *dl, const act *logits, const int *y, const real *mx,
                                           const real *sumexp, i64 n, i64 v, i64 v0, float scale, int acc) {
  GRID_LOOP(e, n * v) {
    i64 row = e / v, j = e % v;
    float g = lmc_exp(logits[e] - mx[row]) / sumexp[row] - (j + v0 == y[row] ? 1.0f : 0.0f);
    PUT(dl, e, scale * g, acc);
  }
}

// @kernel head_xent
// the fused LM head: one chunk of logits rows (made by cuBLASLt, stored
// as the activations are: bf16 under bf16 storage) to each row's
// log-sum-exp and loss, in fp32
extern "C" __global__ void lmc_head_rows(real *row_loss, real *lse, const act *l, const int *y, i64 rows, i64 v) {
  i64 row = blockIdx.x;
  const act *r = l + row * v;
  float z = row_logsumexp(r, v);
  if (threadIdx.x == 0) lse[row] = z, row_loss[row] = z - r[y[row]];
}

// @kernel head_xent_bwd
// a chunk of logits rows to dlogits = scale (softmax - onehot), in place
// (bf16 under bf16 storage, as the backward's GEMMs then read it)
extern "C" __global__ void lmc_head_grad(act *l, const int *y, const real *lse, i64 rows, i64 v, float scale) {
  GRID_LOOP(e, rows * v) {
    i64 row = e / v;
    l[e] = scale * (lmc_exp(l[e] - lse[row]) - (e % v == y[row] ? 1.0f : 0.0f));
  }
}

// @kernel head_dl
// a row of logits (made by cuBLASLt, stored as the activations are) to its
// loss, log-sum-exp minus the target's logit, in fp32, and then in place to
// its gradient scale (softmax - onehot), which the head's backward GEMMs read
extern "C" __global__ void lmc_head_dl_rows(real *row_loss, act *l, const int *y, i64 rows, i64 v, float scale) {
  i64 row = blockIdx.x;
  act *r = l + row * v;
  int t = y[row];
  float z = row_logsumexp(r, v);
  if (threadIdx.x == 0) row_loss[row] = z - r[t];
  __syncthreads();   // the target's logit is read before it is overwritten
  row_parts(r, v, [&](i64 j) { r[j] = scale * (lmc_exp(r[j] - z) - (j == t ? 1.0f : 0.0f)); }, [&](i64 j, float *f) {
    for (int q = 0; q < 8; q++) f[q] = lmc_exp(f[q] - z);
    if ((unsigned long long)(t - j) < 8)   // the target among them: one test a step, not eight
      for (int q = 0; q < 8; q++) f[q] -= j + q == t ? 1.0f : 0.0f;
    for (int q = 0; q < 8; q++) f[q] *= scale;
    st8(r + j, f);
  });
}

// @kernel moe
// Mixture of Experts, the math of runtime/cpu_moe.inc: routing in double,
// one thread a token (its experts then as the CPU picks them); the
// balance statistics one thread an expert, over the tokens in order; expert
// ids and row positions as reals. The expert GEMMs go to cuBLASLt, one per
// segment of rows.
#define MOE_MAX_K 16
__device__ double moe_lse(const real *l, i64 E) {
  double mx = l[0], s = 0;
  for (i64 e = 1; e < E; e++) mx = l[e] > mx ? l[e] : mx;
  for (i64 e = 0; e < E; e++) s += exp((double)l[e] - mx);
  return mx + log(s);
}

// gates, idx [n,k]; lse[n] for the statistics
extern "C" __global__ void lmc_moe_route(real *gates, real *idx, double *lse, const real *logits, i64 n, i64 E, i64 k,
                                         int rn) {
  GRID_LOOP(t, n) {
    const real *l = logits + t * E;
    double z = moe_lse(l, E), sum = 0, p[MOE_MAX_K];
    i64 pick[MOE_MAX_K];
    for (i64 j = 0; j < k; j++) {
      i64 best = -1;
      double pb = 0;
      for (i64 e = 0; e < E; e++) {
        bool taken = false;
        for (i64 i = 0; i < j; i++) taken |= pick[i] == e;
        double pe = exp((double)l[e] - z);
        if (!taken && (best < 0 || pe > pb)) best = e, pb = pe;
      }
      pick[j] = best, p[j] = pb, sum += pb;
    }
    for (i64 j = 0; j < k; j++) gates[t * k + j] = (real)(rn ? p[j] / sum : p[j]), idx[t * k + j] = (real)pick[j];
    lse[t] = z;
  }
}

// stats[2E+1], a block an entry: per expert its assignments, its
// probabilities' sum; then the sum of logsumexp^2
extern "C" __global__ void lmc_moe_stats(real *stats, const real *logits, const real *idx, const double *lse, i64 n,
                                         i64 E, i64 k) {
  i64 e = blockIdx.x;
  double s = 0;
  for (i64 t = threadIdx.x; t < n; t += blockDim.x) {
    if (e < E)
      for (i64 j = 0; j < k; j++) s += (i64)idx[t * k + j] == e ? 1.0 : 0.0;
    else if (e < 2 * E) s += exp((double)logits[t * E + e - E] - lse[t]);
    else s += lse[t] * lse[t];
  }
  s = block_sum(s);
  if (threadIdx.x == 0) stats[e] = (real)s;
}

// aux = E sum_i f_i P_i and z = mean lse^2 over the ng tokens of the data
// group; this rank's share into the loss and the metrics
extern "C" __global__ void lmc_moe_loss(real *loss, real *metrics, const real *stats, i64 E, i64 k, double ng,
                                        double share, double aux_coef, double z_coef, int acc0, int acc1) {
  if (blockIdx.x || threadIdx.x) return;
  double aux = 0, hi = 0, lo = 1e300;
  for (i64 e = 0; e < E; e++) {
    double f = stats[e] / (ng * (double)k);
    aux += f * (stats[E + e] / ng);
    hi = f > hi ? f : hi, lo = f < lo ? f : lo;
  }
  aux *= (double)E;
  double z = stats[2 * E] / ng, m[4] = {aux, z, hi * (double)E, lo * (double)E};
  PUT(loss, 0, share * (aux_coef * aux + z_coef * z), acc0);
  for (int i = 0; i < 4; i++) PUT(metrics, i, share * m[i], acc1);
}

// dlogits: the gates' gradient through the renormalised top k and the
// softmax, plus the aux and z losses' (scale: 1 / the step's tokens)
extern "C" __global__ void lmc_moe_route_bwd(real *dl, const real *dg, const real *logits, const real *idx,
                                             const real *stats, i64 n, i64 E, i64 k, int rn, double aux_coef,
                                             double z_coef, double scale, double ng, int acc) {
  GRID_LOOP(t, n) {
    const real *l = logits + t * E;
    const real *ix = idx + t * k, *g = dg + t * k;
    double z = moe_lse(l, E), sum = 0, c = 0, dot = 0;
    for (i64 j = 0; j < k; j++) {
      double p = exp((double)l[(i64)ix[j]] - z);
      sum += p, c += (double)g[j] * p;
    }
    for (int pass = 0; pass < 2; pass++)
      for (i64 e = 0; e < E; e++) {
        double p = exp((double)l[e] - z), d = aux_coef * (double)E * stats[e] / (ng * (double)k) * scale;
        for (i64 j = 0; j < k; j++)
          if ((i64)ix[j] == e) d += rn ? g[j] / sum - c / (sum * sum) : (double)g[j];
        if (pass == 0) dot += p * d;
        else PUT(dl, t * E + e, p * (d - dot) + z_coef * 2 * z * p * scale, acc);
      }
  }
}

// The exclusive prefix sum of flag over the block's threads; *total gets
// the block's sum.
__device__ int block_scan(int flag, int *total) {
  __shared__ int warps[32];
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, v = flag;
  for (int o = 1; o < 32; o <<= 1) {
    int u = __shfl_up_sync(0xffffffff, v, o);
    if (lane >= o) v += u;
  }
  __syncthreads();
  if (lane == 31) warps[warp] = v;
  __syncthreads();
  int before = 0, all = 0, nw = (blockDim.x + 31) >> 5;
  for (int w = 0; w < nw; w++) {
    if (w < warp) before += warps[w];
    all += warps[w];
  }
  *total = all;
  return before + v - flag;
}

// Dispatch, the order of lmc's CPU: assignments by expert, in token then
// slot order within one. A block an expert ranks its assignments
// (rank[i]: how many of the expert's come before i) and counts them.
extern "C" __global__ void lmc_moe_rank(real *counts, real *rank, const real *idx, i64 nk) {
  i64 e = blockIdx.x, seen = 0;
  for (i64 base = 0; base < nk; base += blockDim.x) {
    i64 i = base + threadIdx.x;
    int mine = i < nk && (i64)idx[i] == e, total;
    int before = block_scan(mine, &total);
    if (mine) rank[i] = (real)(seen + before);
    seen += total;
  }
  if (threadIdx.x == 0) counts[e] = (real)seen;
}

// each expert's first row (at[E], one thread), then pos[i] = at[idx[i]] + rank[i]
extern "C" __global__ void lmc_moe_starts(i64 *at, const real *counts, i64 E) {
  if (blockIdx.x || threadIdx.x) return;
  for (i64 e = 0, r = 0; e < E; e++) at[e] = r, r += (i64)counts[e];
}

extern "C" __global__ void lmc_moe_place(real *pos, const i64 *at, const real *idx, i64 nk) {
  GRID_LOOP(i, nk) pos[i] = (real)(at[(i64)idx[i]] + (i64)pos[i]);
}

// The row moves of dispatch and combine, G columns of a row a thread-step
// (8 by 16-byte accesses where the width is a multiple of 8 and the
// operands aligned, else 1): row i, first column c, one division a group
// (a 64-bit division an element before)
#define ROWS_BY(i, c, rows, d, G)                                                                                     \
  for (i64 g_ = blockIdx.x * (i64)blockDim.x + threadIdx.x, w_ = (d) / (G); g_ < (rows) * w_;                        \
       g_ += (i64)gridDim.x * blockDim.x)                                                                            \
    for (i64 i = g_ / w_, c = g_ % w_ * (G), one_ = 1; one_; one_ = 0)
// y (+)= s, G values
template <int G, typename T> __device__ __forceinline__ void put_g(T *y, float *s, int acc) {
  float o[G];
  if (acc) {
    ldg<G>(o, y);
    for (int e = 0; e < G; e++) s[e] = o[e] + s[e];
  }
  stg<G>(y, s);
}

// xp[pos[i]] = x[i / k]
template <int G> __device__ void moe_gather(act *xp, const act *x, const real *pos, i64 nk, i64 k, i64 d) {
  ROWS_BY(i, c, nk, d, G) {
    float f[G];
    ldg<G>(f, x + i / k * d + c);
    stg<G>(xp + (i64)pos[i] * d + c, f);
  }
}
extern "C" __global__ void lmc_moe_gather(act *xp, const act *x, const real *pos, i64 nk, i64 k, i64 d) {
  if (ROW8(d, xp, x, 0, 0)) moe_gather<8>(xp, x, pos, nk, k, d);
  else moe_gather<1>(xp, x, pos, nk, k, d);
}

// dx[t] (+)= the sum of the token's k rows of dxp
template <int G>
__device__ void moe_dispatch_bwd(act *dx, const act *dxp, const real *pos, i64 n, i64 k, i64 d, int acc) {
  ROWS_BY(t, c, n, d, G) {
    float s[G], f[G];
    for (int e = 0; e < G; e++) s[e] = 0;
    for (i64 j = 0; j < k; j++) {
      ldg<G>(f, dxp + (i64)pos[t * k + j] * d + c);
      for (int e = 0; e < G; e++) s[e] += f[e];
    }
    put_g<G>(dx + t * d + c, s, acc);
  }
}
extern "C" __global__ void lmc_moe_dispatch_bwd(act *dx, const act *dxp, const real *pos, i64 n, i64 k, i64 d,
                                                int acc) {
  if (ROW8(d, dx, dxp, 0, 0)) moe_dispatch_bwd<8>(dx, dxp, pos, n, k, d, acc);
  else moe_dispatch_bwd<1>(dx, dxp, pos, n, k, d, acc);
}

// y[t] = sum_j gates[t,j] yp[pos[t,j]]
template <int G>
__device__ void moe_combine(act *y, const act *yp, const real *pos, const real *gates, i64 n, i64 k, i64 d, int acc) {
  ROWS_BY(t, c, n, d, G) {
    float s[G], f[G];
    for (int e = 0; e < G; e++) s[e] = 0;
    for (i64 j = 0; j < k; j++) {
      float gt = gates[t * k + j];
      ldg<G>(f, yp + (i64)pos[t * k + j] * d + c);
      for (int e = 0; e < G; e++) s[e] += gt * f[e];
    }
    put_g<G>(y + t * d + c, s, acc);
  }
}
extern "C" __global__ void lmc_moe_combine(act *y, const act *yp, const real *pos, const real *gates, i64 n, i64 k,
                                           i64 d, int acc) {
  if (ROW8(d, y, yp, 0, 0)) moe_combine<8>(y, yp, pos, gates, n, k, d, acc);
  else moe_combine<1>(y, yp, pos, gates, n, k, d, acc);
}

// dyp[pos[t,j]] = gates[t,j] dy[t]
template <int G>
__device__ void moe_combine_bwd_rows(act *dyp, const act *dy, const real *pos, const real *gates, i64 nk, i64 k, i64 d,
                                     int acc) {
  ROWS_BY(i, c, nk, d, G) {
    float f[G], gt = gates[i];
    ldg<G>(f, dy + i / k * d + c);
    for (int e = 0; e < G; e++) f[e] = gt * f[e];
    put_g<G>(dyp + (i64)pos[i] * d + c, f, acc);
  }
}
extern "C" __global__ void lmc_moe_combine_bwd_rows(act *dyp, const act *dy, const real *pos, const real *gates,
                                                    i64 nk, i64 k, i64 d, int acc) {
  if (ROW8(d, dyp, dy, 0, 0)) moe_combine_bwd_rows<8>(dyp, dy, pos, gates, nk, k, d, acc);
  else moe_combine_bwd_rows<1>(dyp, dy, pos, gates, nk, k, d, acc);
}

// dgates[t,j] = dy[t] . yp[pos[t,j]], a block an assignment
extern "C" __global__ void lmc_moe_combine_bwd_gates(real *dg, const act *dy, const act *yp, const real *pos, i64 k,
                                                     i64 d, int acc) {
  i64 i = blockIdx.x, r = (i64)pos[i];
  float s = 0;
  for (i64 c = threadIdx.x; c < d; c += blockDim.x) s += dy[i / k * d + c] * yp[r * d + c];
  s = block_sum(s);
  if (threadIdx.x == 0) PUT(dg, i, s, acc);
}

// a = silu(h1) * h3 (h rows [h1 | h3], 2f wide) or gelu(h)
template <int G> __device__ void moe_swiglu(act *a, const act *h, i64 rows, i64 f) {
  ROWS_BY(r, j, rows, f, G) {
    float g[G], u[G];
    ldg<G>(g, h + r * 2 * f + j), ldg<G>(u, h + r * 2 * f + f + j);
    for (int e = 0; e < G; e++) g[e] = ew_swiglu(g[e], u[e]);
    stg<G>(a + r * f + j, g);
  }
}
extern "C" __global__ void lmc_moe_act(act *a, const act *h, i64 rows, i64 f, int swiglu) {
  if (!swiglu)
    ew1(a, h, rows * f, 0, ew_gelu);
  else if (ROW8(f, a, h, 0, 0)) moe_swiglu<8>(a, h, rows, f);
  else moe_swiglu<1>(a, h, rows, f);
}

// dh from da through the activation, dh laid out as h
template <int G> __device__ void moe_swiglu_bwd(act *dh, const act *da, const act *h, i64 rows, i64 f) {
  ROWS_BY(r, j, rows, f, G) {
    float g[G], u[G], d[G];
    ldg<G>(g, h + r * 2 * f + j), ldg<G>(u, h + r * 2 * f + f + j), ldg<G>(d, da + r * f + j);
    for (int e = 0; e < G; e++) {
      float dh1 = ew_swiglu_bwd_g(d[e], g[e], u[e]);
      g[e] = ew_swiglu_bwd_u(d[e], g[e]), u[e] = dh1;   // dh3, dh1
    }
    stg<G>(dh + r * 2 * f + j, u), stg<G>(dh + r * 2 * f + f + j, g);
  }
}
extern "C" __global__ void lmc_moe_act_bwd(act *dh, const act *da, const act *h, i64 rows, i64 f, int swiglu) {
  if (!swiglu)
    ew2(dh, da, h, rows * f, 0, ew_gelu_bwd);
  else if (ROW8(f, dh, da, h, 0)) moe_swiglu_bwd<8>(dh, da, h, rows, f);
  else moe_swiglu_bwd<1>(dh, da, h, rows, f);
}

// @library moe_mm
// The experts' GEMMs as grouped GEMMs on the tensor cores, one launch for
// all segments, their row counts read on the device: no host wait, so an
// MoE bundle's programs can be CUDA graphs (runtime/cuda.c takes this way
// at --matmul-precision medium when every segment's rows are this rank's
// own). bf16 products with fp32 accumulation as cuBLASLt's at medium:
// fp32 operands are rounded to bf16 as their tiles are made. A block is 8
// warps over a 128 x 128 tile of C (a warp 64 rows x 32 columns, 4 x 4
// mma tiles), k in steps of 64 through two stages of dynamic shared
// memory, 72 KiB (runtime/cuda.c's gg_smem: past the 48 KiB of static
// shared memory; steps of 32 took two barriers and two tile loads per 32
// mma a warp), by cp.async where the source is bf16 and 16-byte aligned.
// flags: which of A, B and C are bf16 (1, 2, 4; else fp32).
#define GG_BM 128
#define GG_BN 128
#define GG_BK 64
#define GG_THREADS 256
#define GG_SA_MM (GG_BM * (GG_BK + 8))   // a stage of lmc_moe_mm's A ([m][k]) and of its B ([n][k] or [k][n])
#define GG_SA_TN (GG_BK * (GG_BM + 8))   // a stage of lmc_moe_mm_tn's A and B ([k][m], [k][n])

// an R x C block of a [.., ld] matrix (rows r0.. below rmax, columns c0..
// below cmax, zero past them) into the bf16 tile s of pitch P. A whole
// block of a bf16 source with 16-byte rows comes by cp.async in passes of
// constant stride (thread x copies chunk x % (C / 8) of rows x / (C / 8)
// + RP u), an instruction or three a copy; the rest chunk by chunk, the
// row and column worked out for each (ptxas, sm_90: the main loop took 731
// instructions for its 32 mma that way).
template <int R, int C, int P>
__device__ void gg_tile(unsigned short *s, const void *src, bool bf, i64 ld, i64 r0, i64 rmax, i64 c0, i64 cmax) {
  enum { CC = C / 8, RP = GG_THREADS / CC, NP = R / RP };
  static_assert(R % RP == 0, "whole passes");
  if (bf && ld % 8 == 0 && c0 % 8 == 0 && (unsigned long long)src % 16 == 0 && r0 + R <= rmax && c0 + C <= cmax) {
    int row = threadIdx.x / CC, col = threadIdx.x % CC * 8;
    const bf16 *p = (const bf16 *)src + (r0 + row) * ld + c0 + col;
    unsigned short *d = s + row * P + col;
    #pragma unroll
    for (int u = 0; u < NP; u++) lmc_cp_async16(d + u * RP * P, p + u * RP * ld, 16);
    return;
  }
  for (int e = threadIdx.x; e < R * C / 8; e += GG_THREADS) {
    int r = e / (C / 8), c = e % (C / 8) * 8;
    i64 gr = r0 + r, gc = c0 + c, off = gr * ld + gc;
    unsigned short *d = s + r * P + c;
    bool whole = gr < rmax && gc + 8 <= cmax;
    if (bf) {
      const bf16 *p = (const bf16 *)src + off;
      if (whole && (unsigned long long)p % 16 == 0) lmc_cp_async16(d, p, 16);
      else if (gr >= rmax || gc >= cmax) lmc_cp_async16(d, src, 0);
      else
        for (int q = 0; q < 8; q++) d[q] = gc + q < cmax ? p[q].b : 0;
    } else {
      const float *p = (const float *)src + off;
      float f[8];
      if (whole && (unsigned long long)p % 16 == 0) ld8(f, p);
      else
        for (int q = 0; q < 8; q++) f[q] = gr < rmax && gc + q < cmax ? p[q] : 0.0f;
      *(uint4 *)d = make_uint4(bf16_pair(f[0], f[1]), bf16_pair(f[2], f[3]), bf16_pair(f[4], f[5]), bf16_pair(f[6], f[7]));
    }
  }
}

// acc (this warp's 64 x 32 of C) += the stage's A ([m][k] pitch GG_BK + 8,
// or ta: [k][m] pitch GG_BM + 8) times B ([n][k] pitch GG_BK + 8, or kn:
// [k][n] pitch GG_BN + 8), the fragments at gg_offsets' ao and bo (this
// thread's part of the warp's first fragments) plus constants
template <bool ta, bool kn>
__device__ void gg_mul(float (*acc)[4][4], const unsigned short *sa, const unsigned short *sb, int ao, int bo) {
  #pragma unroll
  for (int kk = 0; kk < GG_BK / 16; kk++) {
    unsigned a[4][4];
    #pragma unroll
    for (int mt = 0; mt < 4; mt++) {
      if (ta) lmc_ldmatrix_x4_trans(a[mt], sa + ao + kk * 16 * (GG_BM + 8) + mt * 16);
      else lmc_ldmatrix_x4(a[mt], sa + ao + mt * 16 * (GG_BK + 8) + kk * 16);
    }
    #pragma unroll
    for (int n2 = 0; n2 < 2; n2++) {
      unsigned b[4];
      if (kn) lmc_ldmatrix_x4_trans(b, sb + bo + kk * 16 * (GG_BN + 8) + n2 * 16);
      else lmc_ldmatrix_x4(b, sb + bo + n2 * 16 * (GG_BK + 8) + kk * 16);
      #pragma unroll
      for (int mt = 0; mt < 4; mt++) {
        lmc_mma_bf16_16816(acc[mt][2 * n2], a[mt], b, acc[mt][2 * n2]);
        lmc_mma_bf16_16816(acc[mt][2 * n2 + 1], a[mt], b + 2, acc[mt][2 * n2 + 1]);
      }
    }
  }
}
// this thread's ldmatrix offsets for gg_mul, warp (wm, wn) of the block
template <bool ta, bool kn> __device__ void gg_offsets(int *ao, int *bo, int wm, int wn) {
  int lane = threadIdx.x % 32;
  *ao = ta ? (lane / 16 * 8 + lane % 8) * (GG_BM + 8) + wm * 64 + lane / 8 % 2 * 8
           : (wm * 64 + lane % 16) * (GG_BK + 8) + lane / 16 * 8;
  *bo = kn ? (lane / 8 % 2 * 8 + lane % 8) * (GG_BN + 8) + wn * 32 + lane / 16 * 8
           : (wn * 32 + lane / 16 * 8 + lane % 8) * (GG_BK + 8) + lane / 8 % 2 * 8;
}

// this warp's 64 x 32 of C into rows r0.. (below rmax) and columns c0..
// (below cmax) of a [.., ldc] matrix, bf16 or fp32, added to it with acc
__device__ void gg_put(void *C, bool bf, i64 ldc, float (*acc)[4][4], i64 r0, i64 rmax, i64 c0, i64 cmax, int accum) {
  int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  #pragma unroll
  for (int mt = 0; mt < 4; mt++)
    #pragma unroll
    for (int nt = 0; nt < 4; nt++)
      #pragma unroll
      for (int i = 0; i < 4; i++) {
        i64 r = r0 + mt * 16 + g + (i >> 1) * 8, c = c0 + nt * 8 + 2 * t + (i & 1);
        if (r >= rmax || c >= cmax) continue;
        if (bf) PUT((bf16 *)C, r * ldc + c, acc[mt][nt][i], accum);
        else PUT((float *)C, r * ldc + c, acc[mt][nt][i], accum);
      }
}

// C[r, :n] (+)= A[r, :k] B_e (B_e = B + e sB: [n][k], or kn: [k][n]) for
// the rows r of each segment s (counts[s] rows, after the segments before
// it), e = s % ne. Grid (an upper bound on the segments' row tiles, n
// tiles); a block finds its segment and tile from the counts.
// (kn a template argument: the B fragments' addressing without a branch)
template <bool kn>
__device__ void gg_mm(unsigned short (*sa)[GG_SA_MM], unsigned short (*sb)[GG_SA_MM], void *C,
                      const void *A, const void *B, const real *counts, i64 seg, i64 ne, i64 n, i64 k, i64 lda, i64 ldb,
                      i64 ldc, i64 sB, int flags, int accum) {
  i64 tile = blockIdx.x, r0 = -1, rend = 0, e = 0;
  for (i64 s = 0, at = 0; s < seg && r0 < 0; s++) {
    i64 c = (i64)counts[s], nt = (c + GG_BM - 1) / GG_BM;
    if (tile < nt) r0 = at + tile * GG_BM, rend = at + c, e = s % ne;
    tile -= nt, at += c;
  }
  if (r0 < 0) return;   // (the grid's upper bound past the tiles there are)
  i64 n0 = blockIdx.y * (i64)GG_BN;
  const char *Be = (const char *)B + e * sB * (flags & 2 ? 2 : 4);
  int warp = threadIdx.x / 32, wm = warp % 2, wn = warp / 2, steps = (int)((k + GG_BK - 1) / GG_BK), ao, bo;
  gg_offsets<false, kn>(&ao, &bo, wm, wn);
  float acc[4][4][4];
  for (int mt = 0; mt < 4; mt++)
    for (int nt = 0; nt < 4; nt++) acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0;
  for (int st = 0; st <= steps; st++) {   // load step st, multiply step st - 1
    if (st < steps) {
      i64 k0 = (i64)st * GG_BK;
      gg_tile<GG_BM, GG_BK, GG_BK + 8>(sa[st & 1], A, flags & 1, lda, r0, rend, k0, k);
      if (kn) gg_tile<GG_BK, GG_BN, GG_BN + 8>(sb[st & 1], Be, flags & 2, ldb, k0, k, n0, n);
      else gg_tile<GG_BN, GG_BK, GG_BK + 8>(sb[st & 1], Be, flags & 2, ldb, n0, n, k0, k);
      lmc_cp_async_commit();
    }
    if (st == 0) continue;
    if (st < steps) lmc_cp_async_wait1();
    else lmc_cp_async_wait0();
    __syncthreads();
    gg_mul<false, kn>(acc, sa[(st - 1) & 1], sb[(st - 1) & 1], ao, bo);
    __syncthreads();
  }
  gg_put(C, flags & 4, ldc, acc, r0 + wm * 64, rend, n0 + wn * 32, n, accum);
}
#if LMC_IN_PART(1)
extern "C" __global__ void __launch_bounds__(GG_THREADS) lmc_moe_mm(void *C, const void *A, const void *B,
                                                                    const real *counts, i64 seg, i64 ne, i64 n, i64 k,
                                                                    i64 lda, i64 ldb, i64 ldc, i64 sB, int flags, int kn,
                                                                    int accum) {
  extern __shared__ __align__(16) unsigned short gg_smem[];
  unsigned short(*sa)[GG_SA_MM] = (unsigned short(*)[GG_SA_MM])gg_smem, (*sb)[GG_SA_MM] = sa + 2;
  if (kn) gg_mm<true>(sa, sb, C, A, B, counts, seg, ne, n, k, lda, ldb, ldc, sB, flags, accum);
  else gg_mm<false>(sa, sb, C, A, B, counts, seg, ne, n, k, lda, ldb, ldc, sB, flags, accum);
}
#endif

// the next chunk [r0, r1) of at most GG_BK rows of expert e's segments
// (s % ne == e), in order; false past the last
struct GgChunks {
  const real *cnt;
  i64 seg, ne, e, s, end, r;
  __device__ bool next(i64 *r0, i64 *r1) {
    while (r >= end) {
      if (++s >= seg) return false;
      i64 start = end;
      end = start + (i64)cnt[s], r = s % ne == e ? start : end;
    }
    *r0 = r, *r1 = r + GG_BK < end ? r + GG_BK : end, r = *r1;
    return true;
  }
};

// C_e[m, n] (+)= sum over the rows r of expert e's segments of A[r, :m]'
// B[r, :n] (C_e = C + e sC, fp32: a weight's gradient), the rows in order.
// Grid (m tiles, n tiles, ne parts): with parts past 1 (split-k) block
// (.., e + ne p) takes the p-th of `parts` runs of the expert's chunks of
// rows and writes its sums to W_p,e = W + (p ne + e) sC, which
// lmc_gemm_parts_sum adds up in part order.
#if LMC_IN_PART(1)
extern "C" __global__ void __launch_bounds__(GG_THREADS) lmc_moe_mm_tn(real *C, real *W, const void *A, const void *B,
                                                                       const real *counts, i64 seg, i64 ne, i64 m, i64 n,
                                                                       i64 lda, i64 ldb, i64 ldc, i64 sC, int flags,
                                                                       int accum, int parts) {
  extern __shared__ __align__(16) unsigned short gg_smem[];
  unsigned short(*sa)[GG_SA_TN] = (unsigned short(*)[GG_SA_TN])gg_smem, (*sb)[GG_SA_TN] = sa + 2;
  i64 m0 = blockIdx.x * (i64)GG_BM, n0 = blockIdx.y * (i64)GG_BN, e = blockIdx.z % ne, p = blockIdx.z / ne;
  int warp = threadIdx.x / 32, wm = warp % 2, wn = warp / 2, ao, bo;
  gg_offsets<true, true>(&ao, &bo, wm, wn);
  i64 chunks = 0;   // the expert's, GgChunks' way: a segment's rows GG_BK at a time
  for (i64 s = e; s < seg; s += ne) chunks += ((i64)counts[s] + GG_BK - 1) / GG_BK;
  i64 skip = p * chunks / parts, left = (p + 1) * chunks / parts - skip;
  float acc[4][4][4];
  for (int mt = 0; mt < 4; mt++)
    for (int nt = 0; nt < 4; nt++) acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0;
  GgChunks ch = {counts, seg, ne, e, -1, 0, 0};
  i64 a0, a1, b0, b1;
  while (skip-- > 0) ch.next(&a0, &a1);
  bool have = left-- > 0 && ch.next(&a0, &a1);
  int stage = 0;
  if (have) {
    gg_tile<GG_BK, GG_BM, GG_BM + 8>(sa[0], A, flags & 1, lda, a0, a1, m0, m);
    gg_tile<GG_BK, GG_BN, GG_BN + 8>(sb[0], B, flags & 2, ldb, a0, a1, n0, n);
    lmc_cp_async_commit();
  }
  while (have) {
    bool more = left-- > 0 && ch.next(&b0, &b1);
    if (more) {
      gg_tile<GG_BK, GG_BM, GG_BM + 8>(sa[stage ^ 1], A, flags & 1, lda, b0, b1, m0, m);
      gg_tile<GG_BK, GG_BN, GG_BN + 8>(sb[stage ^ 1], B, flags & 2, ldb, b0, b1, n0, n);
      lmc_cp_async_commit();
      lmc_cp_async_wait1();
    } else lmc_cp_async_wait0();
    __syncthreads();
    gg_mul<true, true>(acc, sa[stage], sb[stage], ao, bo);
    __syncthreads();
    have = more, stage ^= 1;
  }
  if (parts > 1) gg_put(W + (p * ne + e) * sC, false, ldc, acc, m0 + wm * 64, m, n0 + wn * 32, n, 0);
  else gg_put(C + e * sC, false, ldc, acc, m0 + wm * 64, m, n0 + wn * 32, n, accum);
}
#endif

// @kernel gemm_parts
// C[i] (+)= W[0][i] + W[1][i] + .., a weight gradient's GEMM run in parts
// over its rows (runtime/cuda.c's gemm_in_parts, and MoE's lmc_moe_mm_tn),
// added in part order: the same bits every run. Four floats a thread
// where C and W are 16-byte aligned and the count a multiple of 4, the
// same sums either way.
__device__ __forceinline__ float4 f4_add(float4 a, float4 b) {
  return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}
extern "C" __global__ void lmc_gemm_parts_sum(real *C, const real *W, i64 total, int parts, int accum) {
  if (total % 4 == 0 && al16(C) && al16(W)) {
    float4 *c = (float4 *)C;
    const float4 *w = (const float4 *)W;
    i64 q = total / 4;
    GRID_LOOP(i, q) {
      float4 s = w[i];
      for (int p = 1; p < parts; p++) s = f4_add(s, w[p * q + i]);
      c[i] = accum ? f4_add(c[i], s) : s;
    }
    return;
  }
  GRID_LOOP(i, total) {
    float s = W[i];
    for (int p = 1; p < parts; p++) s += W[p * total + i];
    PUT(C, i, s, accum);
  }
}

// @kernel cast
// a weight's bf16 copy
extern "C" __global__ void lmc_cast(act *y, const real *x, i64 n) {
  ew1(y, x, n, 0, [](float u) { return u; });
}

// @kernel optimizer
// A step's zeros in one launch: block (x, y) zeros its part y of range x
// of base (ranges: pairs of offset and length, in reals), the gradients a
// step's first backward pass does not set (a memset a range before: 24 of
// them a GPT-2 step, 49 a llama-large one)
extern "C" __global__ void lmc_zero_ranges(real *base, const i64 *ranges) {
  i64 off = ranges[2 * blockIdx.x], len = ranges[2 * blockIdx.x + 1];
  for (i64 i = blockIdx.y * (i64)blockDim.x + threadIdx.x; i < len; i += (i64)gridDim.y * blockDim.x) base[off + i] = 0;
}

// sum of squares of x, one partial sum per block (the runtime adds them in order)
extern "C" __global__ void lmc_sumsq(float *part, const real *x, i64 n) {
  float s = 0;
  GRID_LOOP(i, n) s += x[i] * x[i];
  s = block_sum(s);
  if (threadIdx.x == 0) part[blockIdx.x] = s;
}

// the sum of n row values, in one block (row order within a thread)
extern "C" __global__ void lmc_sum_rows(real *out, const real *rows, i64 n, float scale, int acc) {
  float s = 0;
  for (i64 i = threadIdx.x; i < n; i += blockDim.x) s += rows[i];
  s = block_sum(s);
  if (threadIdx.x == 0) PUT(out, 0, s * scale, acc);
}

// AdamW: decoupled decay, then the bias-corrected update, on gradients
// scaled by gscale (clipping)
struct Adam {
  float lr, b1, b2, eps, wd, bc1, bc2, gscale;
  __device__ __forceinline__ void step(float &w, float g, float &m, float &v) const {
    float gi = g * gscale;
    m = b1 * m + (1.0f - b1) * gi;
    v = b2 * v + (1.0f - b2) * gi * gi;
    w = w * (1.0f - lr * wd) - lr / bc1 * m / (sqrtf(v / bc2) + eps);
  }
};

extern "C" __global__ void lmc_adamw(real *w, const real *g, real *m, real *v, i64 n, float lr, float b1, float b2,
                                     float eps, float wd, float bc1, float bc2, float gscale) {
  Adam a = {lr, b1, b2, eps, wd, bc1, bc2, gscale};
  GRID_LOOP(i, n) a.step(w[i], g[i], m[i], v[i]);
}

// The whole step over every parameter in four launches, no host wait:
// a table of the tensors (T[5t..5t+4] = w, g, m, v and w's bf16 copy or
// null; N[t] elements; WD[t] weight decay; in norm or not) and of blocks
// (tensor BT[b], first element BS[b], OPT_CHUNK elements each). A block
// takes its chunk 4 elements a thread-step with 16-byte accesses (the bf16
// copy's 8) when the tensor's arrays are 16-byte aligned, the last n % 4
// one at a time: 34 bytes an element in all, the step's floor.
#define OPT_CHUNK 4096
__device__ __forceinline__ i64 opt_end(const i64 *N, int t, i64 s) { return s + OPT_CHUNK < N[t] ? s + OPT_CHUNK : N[t]; }

extern "C" __global__ void lmc_sumsq_multi(float *part, real *const *T, const i64 *N, const int *BT, const i64 *BS) {
  int t = BT[blockIdx.x];
  const real *g = T[5 * t + 1];
  i64 s0 = BS[blockIdx.x], end = opt_end(N, t, s0), i = s0 + threadIdx.x;
  float s = 0;
  if (al16(g)) {
    i64 vend = s0 + (end - s0) / 4 * 4;
    for (i64 j = s0 + 4 * threadIdx.x; j < vend; j += 4 * blockDim.x) {
      float4 x = *(const float4 *)(g + j);
      s += x.x * x.x + x.y * x.y + x.z * x.z + x.w * x.w;
    }
    i = vend + threadIdx.x;
  }
  for (; i < end; i += blockDim.x) s += g[i] * g[i];
  s = block_sum(s);
  if (threadIdx.x == 0) part[blockIdx.x] = s;
}

// per[t] = tensor t's blocks' sums added in double in a fixed tree (one
// block a tensor: thread-strided, then block_sum), 0 for one outside the
// norm; then lmc_norm_finish: out[0] = the gradient norm (the tensors in
// order), out[1] = the clipping scale, clip / (norm + 1e-6) past clip.
// Where the norm is summed over ranks (tp, pp, ep) it finishes in two
// parts with the all-reduces between: part 1 leaves the squared sum in
// out[0], part 2 takes the groups' sum from there; part 0 does both.
extern "C" __global__ void lmc_norm_tensors(double *per, const float *part, const int *first, const int *in) {
  int t = blockIdx.x;
  double s = 0;
  for (int b = first[t] + threadIdx.x; b < first[t + 1]; b += blockDim.x) s += part[b];
  s = block_sum(s);
  if (threadIdx.x == 0) per[t] = in[t] ? s : 0.0;
}

extern "C" __global__ void lmc_norm_finish(double *out, const double *per, int count, float clip, int part) {
  if (threadIdx.x) return;
  double s = 0;
  if (part == 2) s = out[0];
  else
    for (int t = 0; t < count; t++) s += per[t];
  if (part == 1) return (void)(out[0] = s);
  out[0] = sqrt(s), out[1] = clip > 0 && out[0] > clip ? clip / (out[0] + 1e-6) : 1.0;
}

extern "C" __global__ void lmc_adamw_multi(real *const *T, const i64 *N, const float *WD, const int *BT, const i64 *BS,
                                           const double *ns, float lr, float b1, float b2, float eps, float bc1,
                                           float bc2) {
  int t = BT[blockIdx.x];
  i64 s0 = BS[blockIdx.x], end = opt_end(N, t, s0), i = s0 + threadIdx.x;
  Adam a = {lr, b1, b2, eps, WD[t], bc1, bc2, (float)ns[1]};
  real *w = T[5 * t], *g = T[5 * t + 1], *m = T[5 * t + 2], *v = T[5 * t + 3];
  bf16 *w16 = (bf16 *)T[5 * t + 4];
  if (al16(w) && al16(g) && al16(m) && al16(v) && al16(w16)) {
    i64 vend = s0 + (end - s0) / 4 * 4;
    for (i64 j = s0 + 4 * threadIdx.x; j < vend; j += 4 * blockDim.x) {
      float4 W = *(float4 *)(w + j), G = *(const float4 *)(g + j), M = *(float4 *)(m + j), V = *(float4 *)(v + j);
      a.step(W.x, G.x, M.x, V.x), a.step(W.y, G.y, M.y, V.y), a.step(W.z, G.z, M.z, V.z), a.step(W.w, G.w, M.w, V.w);
      *(float4 *)(w + j) = W, *(float4 *)(m + j) = M, *(float4 *)(v + j) = V;
      if (w16) *(uint2 *)(w16 + j) = make_uint2(bf16_pair(W.x, W.y), bf16_pair(W.z, W.w));
    }
    i = vend + threadIdx.x;
  }
  for (; i < end; i += blockDim.x) {
    a.step(w[i], g[i], m[i], v[i]);
    if (w16) w16[i] = w[i];
  }
}

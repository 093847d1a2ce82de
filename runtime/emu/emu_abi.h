/* emu_abi.h: what the emulated CUDA platform's engine (C, in
 * liblmc_cudaemu.so) and a kernel module (a bundle's kernels.cu compiled
 * as host C++ by the emulated NVRTC) share. The module exports
 * lmc_emu_module(); the engine fills in the thread variables before each
 * thread runs and answers the collective calls (barriers, warp exchanges)
 * through the api table. Plain C, included by both sides. */
#ifndef LMC_EMU_ABI_H
#define LMC_EMU_ABI_H

#include <stddef.h>
#include <string.h>

#define LMC_EMU_ABI 1
#define LMC_EMU_SLOT 64   /* bytes one lane puts into, or takes from, a warp exchange */

typedef struct EmuDim {
  unsigned x, y, z;
} EmuDim;

typedef struct EmuVars {   /* the running thread's built-in variables */
  EmuDim threadIdx, blockIdx, blockDim, gridDim;
} EmuVars;

/* A warp exchange: every lane of mask puts LMC_EMU_SLOT bytes in; the
 * last lane to arrive calls combine over all 32 slots (in and out,
 * indexed by lane) and each lane then reads its own out slot. */
typedef void (*EmuCombine)(const unsigned char *in, unsigned char *out, unsigned mask);

typedef struct EmuApi {
  void (*syncthreads)(void);
  int (*syncthreads_count)(int pred);           /* threads of the block with pred != 0 */
  const void *(*warp)(unsigned mask, const void *in, size_t n, EmuCombine combine, const char *what);
  unsigned (*activemask)(void);
  void *(*dyn_smem)(void);                      /* extern __shared__ of this block */
  void (*trap)(const char *what);               /* __trap, assert: the launch fails */
} EmuApi;

typedef struct EmuKernel {
  const char *name;
  int may_sync;             /* may reach a barrier or warp collective */
  int nparams;
  const unsigned short *sizes;
  void (*thunk)(void **args);
} EmuKernel;

typedef struct EmuModule {
  int abi;
  int nkernels;
  const EmuKernel *kernels;
  EmuVars *vars;
  const EmuApi **api;
} EmuModule;

/* bf16 and fp16 as the hardware converts them: round to nearest even,
 * overflow to infinity, canonical NaNs (0x7fff). Shared by the kernels'
 * header, the emulated cuBLASLt and NCCL. */
static inline unsigned lmc_bits(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
static inline float lmc_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }

static inline unsigned short lmc_f2bf(float f) {
  unsigned u = lmc_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fff;
  return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
static inline unsigned short lmc_f2bf_rz(float f) {
  unsigned u = lmc_bits(f);
  return (u & 0x7fffffffu) > 0x7f800000u ? (unsigned short)0x7fff : (unsigned short)(u >> 16);
}
static inline float lmc_bf2f(unsigned short h) { return lmc_float((unsigned)h << 16); }

static inline unsigned short lmc_f2h(float f) {
  unsigned u = lmc_bits(f), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return 0x7fff;
  if (a >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);   /* rounds to infinity */
  if (a < 0x38800000u) {                                           /* a half subnormal, or zero */
    if (a < 0x33000000u) return (unsigned short)sign;              /* below half the smallest one */
    unsigned m = (a & 0x7fffffu) | 0x800000u, shift = 126 - (a >> 23), r = m >> shift;
    unsigned rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) r++;
    return (unsigned short)(sign | r);
  }
  unsigned r = a - 0x38000000u, low = r & 0x1fffu;                 /* exponent 127 -> 15 */
  r >>= 13;
  if (low > 0x1000u || (low == 0x1000u && (r & 1u))) r++;
  return (unsigned short)(sign | r);
}
static inline float lmc_h2f(unsigned short h) {
  unsigned sign = (unsigned)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1f) return lmc_float(sign | 0x7f800000u | (m << 13));
  if (e == 0) return sign ? -(float)m * 5.9604644775390625e-8f : (float)m * 5.9604644775390625e-8f;   /* 2^-24 */
  return lmc_float(sign | ((e + 112) << 23) | (m << 13));
}

#endif

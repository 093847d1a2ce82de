/* emu_abi.h: what the emulated CUDA platform's engine (C, in
 * liblmc_cudaemu.so) and a kernel module (a bundle's kernels.cu compiled
 * as host C++ by the emulated NVRTC) share. The module exports
 * lmc_emu_module(); the engine fills in the thread variables before each
 * thread runs and answers the collective calls (barriers, warp exchanges)
 * through the api table. Plain C, included by both sides. */
#ifndef LMC_EMU_ABI_H
#define LMC_EMU_ABI_H

#include <stddef.h>

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

#endif

/* emu.h: the emulated CUDA platform's internal header, in sections named
 * after the file that owns them. liblmc_cudaemu.so exports the driver
 * (cu*), NVRTC (nvrtc*) and cuBLASLt (cublasLt*) entry points that
 * runtime/cuda.c loads with dlopen; host memory stands in for device
 * memory. */
#ifndef LMC_EMU_H
#define LMC_EMU_H

#include "emu_abi.h"
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

/* ---- engine.c: running one launch ---- */
enum { ORDER_FORWARD, ORDER_REVERSE, ORDER_SHUFFLE };

typedef struct EmuLaunch {
  const EmuModule *mod;
  const EmuKernel *k;
  EmuDim grid, block;
  size_t smem;
  void **args;
  int order;
  uint64_t seed;
} EmuLaunch;

/* 0, or -1 with the reason in emu_error (the launch is abandoned); -2
 * when the reason is an access outside every allocation. */
int engine_run(const EmuLaunch *l);
void engine_fault(const char *msg);       /* from the SIGSEGV handler: ends the launch */
void engine_timeout(void);                /* from the SIGALRM handler: ends a launch past LMC_CUDA_EMU_TIMEOUT */
extern const EmuApi engine_api;
extern const char *engine_kernel;        /* the kernel running now, or NULL */
extern EmuDim engine_block, engine_thread;
void engine_abort(void);                  /* after a fault: fibers to a clean state */
const char *engine_smem_describe(const void *addr, char *buf, size_t n);   /* NULL: not past dynamic smem */

/* ---- driver.c ---- */
extern char emu_error[1024];             /* the last failure, for cuGetErrorString */
int emu_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
typedef struct EmuAlloc {
  unsigned char *base, *map;
  size_t size, map_size;
  /* LMC_CUDA_EMU_CHECK: a page's bytes before a checked launch wrote it
   * (orig) and after its first run (after), and per page which of them
   * hold it (driver.c, "checked launches") */
  unsigned char *orig, *after, *page_state;
} EmuAlloc;
EmuAlloc *emu_find(const void *p);       /* the allocation holding p, or NULL */
bool emu_check_range(const char *what, const void *p, size_t bytes);
/* Runs fn(arg) now, queues it (lazy streams), or records it when the
 * stream is being captured. */
int emu_enqueue(void *stream, int (*fn)(void *arg), const void *arg, size_t size);
bool emu_lazy(void);                     /* LMC_CUDA_EMU_STREAMS=lazy */
/* While a stream's work blocks (an NCCL call waiting for a peer): the
 * other streams run what they can, as they would beside it on a GPU. */
void emu_progress(void);

/* ---- nvrtc.c ---- */
extern const char emu_device_h[], emu_abi_h[];   /* embedded by cmake/embed.cmake */
uint64_t emu_headers_hash(void);                  /* what a module was compiled against */

#endif

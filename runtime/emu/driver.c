/* driver.c: the emulated CUDA driver API. One device ("lmc emulated CUDA
 * device", compute capability 9.0, the limits of an H100); host memory
 * stands in for device memory. Each allocation starts on a page after an
 * inaccessible guard page and ends in a canary that runs to the next guard
 * page: an access before the start or past the page faults at once (the
 * launch fails with the kernel's name and the thread), a write into the
 * canary is found when the launch returns. New memory holds 0xff bytes,
 * as a GPU's holds garbage. Modules are the emulated NVRTC's shared
 * objects; launches check the device limits and run on engine.c. Streams
 * run their work at once, in order; a stream being captured records it
 * instead, and a graph replays the record. With LMC_CUDA_EMU_CHECK=1 every
 * launch runs three times, threads and blocks forward, reversed and
 * shuffled, from the same memory, and the results must be bitwise equal
 * (the pages a run writes are kept as it first writes them: "checked
 * launches" below).
 * With LMC_CUDA_EMU_STREAMS=lazy a stream's work waits in its queue until
 * something needs it done: a synchronisation of the stream, an event
 * recorded on it being waited for (by the host or by another stream, which
 * then runs it up to that event), or any call on the legacy stream or that
 * synchronises the device (synchronous copies and sets, cuMemFree,
 * cuCtxSynchronize), which run every queue, the oldest stream's first. So
 * work two streams share without an event between them runs in the wrong
 * order, as it may on a GPU, and gives wrong numbers instead of passing.
 * Lazy streams run a stream's work late; LMC_CUDA_EMU_STREAMS=skew runs
 * the first created stream's (and every other one's after it: the third,
 * ..) late and the rest's at once, as soon as queued: so work on a second
 * stream that should wait for the first's queued work but has no event
 * to wait on runs before it (lazily, it would have run after it all the
 * same when something waited). LMC_CUDA_EMU_STREAMS=shuffle (or
 * shuffle:SEED) queues every stream's work as lazy streams do and, when
 * something waits, runs the streams' queued items interleaved one by one
 * in a seeded random order (each stream's in its order, every event
 * wait kept): two streams that share a buffer without an event between
 * their uses then overwrite each other's work mid-way. Host memory registered with
 * cuMemHostRegister is the device's to read and write when a copy runs,
 * as on a GPU, and LMC_CUDA_EMU_HOST_LOG=FILE records registrations and,
 * at exit, the host's waits for the device by call ("host memory
 * registered" below). */
#include "emu.h"
#include <cuda.h>
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

enum { PAGE = 4096, CANARY = 0xa5, MAX_SMEM_DEFAULT = 48 << 10, MAX_SMEM_OPTIN = 232448 };

char emu_error[1024];

struct CUctx_st { int unused; };
struct CUmod_st {
  void *so;
  char path[256];
  const EmuModule *m;
  struct CUfunc_st *fns;
};
struct CUfunc_st {
  const EmuKernel *k;
  const EmuModule *m;
  int max_dyn_smem;
};
typedef struct Op {
  int (*fn)(void *arg);
  void *arg;
  size_t size;
} Op;
struct CUgraph_st {
  Op *ops;
  int n;
};
struct CUgraphExec_st {
  struct CUgraph_st g;
};
struct CUstream_st {
  struct CUgraph_st *capture;   /* being captured into, or NULL */
  Op *q;                        /* lazy: the work queued and not yet run, q[head..n) */
  int head, n, cap;
  uint64_t queued, ran;         /* work items enqueued and run so far (events count in these) */
  bool running;
  bool joined;                  /* capturing because it waited on an event of a capture (not its own Begin) */
  bool eager;                   /* skew: runs its work as it is queued */
  int in_graph, joined_upto;    /* joined: its items in the graph; how many of them a capturing stream waited for */
};
struct CUevent_st {
  double t;
  struct CUstream_st *s;        /* recorded on, at its item seq (NULL: nothing to wait for) */
  uint64_t seq;
  struct CUgraph_st *g;         /* recorded into this capture (then s is NULL) ... */
  struct CUstream_st *from;     /* ... by this stream, */
  int upto;                     /* its items in the graph then */
};

static struct CUctx_st the_ctx;
static EmuAlloc *allocs;
static int nallocs, check_orders, all_fibers, lazy, skew, shuffle;
static uint64_t shuffle_rng;   /* shuffle's: a 64-bit LCG from its seed */
static size_t dev_total = (size_t)80 << 30, dev_used;   /* LMC_CUDA_EMU_MEMORY=MiB sets the total */
static struct CUstream_st **streams;   /* in creation order; after them the destroyed ones (graves) */
static int nstreams, graves;
static int flush(struct CUstream_st *s, uint64_t upto);
static int flush_all(void);
static int sticky;   /* a failure of work run by emu_progress, reported by the next flush */
static uint64_t launches;
static int capturing;   /* streams being captured */
static void host_log_start(void);
static void host_waited(const char *what);

int emu_fail(int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(emu_error, sizeof emu_error, fmt, ap);
  va_end(ap);
  return code;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- faults: a guard page touched inside a kernel ends its launch ---- */

static const char *describe(const void *addr, char *buf, size_t n) {
  const unsigned char *a = addr;
  if (engine_smem_describe(addr, buf, n)) return buf;
  for (int i = 0; i < nallocs; i++) {
    EmuAlloc *x = &allocs[i];
    if (a >= x->map && a < x->base)
      return snprintf(buf, n, "an access %td bytes before the start of a %zu-byte allocation", x->base - a, x->size), buf;
    if (a >= x->base + x->size && a < x->map + x->map_size)
      return snprintf(buf, n, "an access %td bytes past the end of a %zu-byte allocation", a - (x->base + x->size),
                      x->size), buf;
  }
  return snprintf(buf, n, "an access to address %p, which no allocation holds", addr), buf;
}

static bool kept_write(const void *addr);

static void on_segv(int sig, siginfo_t *si, void *uc) {
  char buf[200];
  if (kept_write(si->si_addr)) return;   /* a checked launch's first write to a page */
  if (engine_kernel) engine_fault(describe(si->si_addr, buf, sizeof buf));
  signal(sig, SIG_DFL);   /* not in a kernel: fault again, as usual */
}

static void on_alarm(int sig) { engine_timeout(); }

static void install_handler(void) {
  static char altstack[64 << 10];
  stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack};
  sigaltstack(&ss, NULL);
  struct sigaction sa = {0};
  sa.sa_sigaction = on_segv;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
  sigaction(SIGSEGV, &sa, NULL);
  sigaction(SIGBUS, &sa, NULL);
  struct sigaction al = {0};   /* the watchdog of LMC_CUDA_EMU_TIMEOUT */
  al.sa_handler = on_alarm;
  al.sa_flags = SA_ONSTACK | SA_NODEFER;
  sigaction(SIGALRM, &al, NULL);
}

/* ---- init, device, context ---- */

CUresult cuInit(unsigned flags) {
  static int done;
  if (!done) {
    install_handler();
    const char *c = getenv("LMC_CUDA_EMU_CHECK"), *f = getenv("LMC_CUDA_EMU_FIBERS");
    check_orders = c && *c && strcmp(c, "0");
    all_fibers = f && *f && strcmp(f, "0");
    const char *z = getenv("LMC_CUDA_EMU_STREAMS");
    skew = z && !strcmp(z, "skew");
    shuffle = z && (!strcmp(z, "shuffle") || !strncmp(z, "shuffle:", 8));
    lazy = (z && !strcmp(z, "lazy")) || skew || shuffle;
    if (z && *z && !lazy)
      return emu_fail(CUDA_ERROR_INVALID_VALUE, "LMC_CUDA_EMU_STREAMS=%s: it takes lazy, skew, shuffle or shuffle:N", z);
    if (shuffle && z[7]) {
      char *end;
      shuffle_rng = strtoull(z + 8, &end, 10);
      if (*end || !z[8])
        return emu_fail(CUDA_ERROR_INVALID_VALUE, "LMC_CUDA_EMU_STREAMS=%s: shuffle takes a seed, shuffle:N", z);
    }
    const char *m = getenv("LMC_CUDA_EMU_MEMORY");
    if (m && *m) {
      char *end;
      long long mib = strtoll(m, &end, 10);
      if (*end || mib < 1 || mib > (1 << 24))
        return emu_fail(CUDA_ERROR_INVALID_VALUE, "LMC_CUDA_EMU_MEMORY=%s: it takes the device's MiB, 1 to 16777216", m);
      dev_total = (size_t)mib << 20;
    }
    host_log_start();
    done = 1;
  }
  return CUDA_SUCCESS;
}

CUresult cuDriverGetVersion(int *v) { return *v = 13000, CUDA_SUCCESS; }
CUresult cuDeviceGetCount(int *n) { return *n = 1, CUDA_SUCCESS; }

CUresult cuDeviceGet(CUdevice *d, int ordinal) {
  if (ordinal != 0) return emu_fail(CUDA_ERROR_INVALID_DEVICE, "the emulator has one device, 0 (asked for %d)", ordinal);
  return *d = 0, CUDA_SUCCESS;
}

CUresult cuDeviceGetName(char *name, int len, CUdevice d) {
  const char *as = getenv("LMC_CUDA_EMU_NAME");   /* a GPU's name, as its driver gives it (tests) */
  snprintf(name, len, "%s", as && *as ? as : "lmc emulated CUDA device");
  return CUDA_SUCCESS;
}

CUresult cuDeviceTotalMem(size_t *bytes, CUdevice d) { return *bytes = dev_total, CUDA_SUCCESS; }

CUresult cuDeviceGetAttribute(int *v, CUdevice_attribute a, CUdevice d) {
  switch (a) {
  case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *v = 9; break;
  case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *v = 0; break;
  case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *v = 1024; break;
  case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X: case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y: *v = 1024; break;
  case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z: *v = 64; break;
  case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X: *v = 0x7fffffff; break;
  case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y: case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z: *v = 65535; break;
  case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: *v = MAX_SMEM_DEFAULT; break;
  case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: *v = MAX_SMEM_OPTIN; break;
  case CU_DEVICE_ATTRIBUTE_WARP_SIZE: *v = 32; break;
  case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *v = 132; break;
  case CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE: *v = 50 << 20; break;
  case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR: *v = 2048; break;
  default: return emu_fail(CUDA_ERROR_NOT_SUPPORTED, "the emulator does not know device attribute %d", (int)a);
  }
  return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRetain(CUcontext *c, CUdevice d) { return *c = &the_ctx, CUDA_SUCCESS; }
CUresult cuDevicePrimaryCtxRelease(CUdevice d) { return CUDA_SUCCESS; }
/* The context current in each thread, as the driver keeps it: a thread
 * of the runtime's own that calls the driver makes it current first
 * (only host memory registration insists on it here). */
static __thread struct CUctx_st *current;
CUresult cuCtxSetCurrent(CUcontext c) { return current = c, CUDA_SUCCESS; }
CUresult cuCtxGetCurrent(CUcontext *c) { return *c = current, CUDA_SUCCESS; }

static CUresult no_sync_in_capture(const char *what) {
  if (capturing)
    return emu_fail(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
                    "%s while a stream is being captured (a host synchronisation inside a CUDA graph)", what);
  return CUDA_SUCCESS;
}

CUresult cuCtxSynchronize(void) {
  host_waited("cuCtxSynchronize");
  CUresult rc = no_sync_in_capture("cuCtxSynchronize");
  return rc ? rc : (CUresult)flush_all();
}

CUresult cuGetErrorString(CUresult rc, const char **s) {
  *s = emu_error[0] ? emu_error : rc == CUDA_SUCCESS ? "no error" : "error in the emulated CUDA platform";
  return CUDA_SUCCESS;
}

CUresult cuGetErrorName(CUresult rc, const char **s) {
  *s = rc == CUDA_SUCCESS ? "CUDA_SUCCESS" : "CUDA_ERROR";
  return CUDA_SUCCESS;
}

/* ---- memory ---- */

static size_t body_of(const EmuAlloc *x) { return x->map_size - 2 * PAGE; }   /* its bytes and canary */

EmuAlloc *emu_find(const void *p) {
  const unsigned char *a = p;
  for (int i = 0; i < nallocs; i++)
    if (a >= allocs[i].base && a < allocs[i].base + (allocs[i].size ? allocs[i].size : 1)) return &allocs[i];
  return NULL;
}

/* true when [p, p + bytes) lies in one allocation; else emu_error says why */
bool emu_check_range(const char *what, const void *p, size_t bytes) {
  EmuAlloc *x = emu_find(p);
  if (!x) return emu_fail(0, "%s: address %p is not in any device allocation", what, p), false;
  size_t off = (const unsigned char *)p - x->base;
  if (bytes > x->size - off)
    return emu_fail(0, "%s: %zu bytes at offset %zu run %zu bytes past the end of a %zu-byte allocation", what, bytes,
                    off, bytes - (x->size - off), x->size), false;
  return true;
}

/* The first canary byte a kernel overwrote, as an error; 0 when intact. */
static CUresult check_canaries(const char *kernel) {
  for (int i = 0; i < nallocs; i++) {
    EmuAlloc *x = &allocs[i];
    unsigned char *end = x->map + x->map_size - PAGE;
    for (unsigned char *c = x->base + x->size; c < end; c++)
      if (*c != CANARY)
        return emu_fail(CUDA_ERROR_ILLEGAL_ADDRESS, "kernel %s wrote past the end of a %zu-byte allocation, at byte %td",
                        kernel, x->size, c - x->base);
  }
  return CUDA_SUCCESS;
}

CUresult cuMemAlloc(CUdeviceptr *p, size_t bytes) {
  if (!bytes) return emu_fail(CUDA_ERROR_INVALID_VALUE, "cuMemAlloc of 0 bytes");
  if (bytes > dev_total - dev_used) return CUDA_ERROR_OUT_OF_MEMORY;   /* as a GPU: said by the caller */
  size_t body = (bytes + PAGE - 1) / PAGE * PAGE + (bytes % PAGE == 0 ? PAGE : 0);   /* room for a canary */
  size_t map_size = body + 2 * PAGE;
  unsigned char *m = mmap(NULL, map_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) return emu_fail(CUDA_ERROR_OUT_OF_MEMORY, "out of memory allocating %zu bytes", bytes);
  mprotect(m, PAGE, PROT_NONE);
  mprotect(m + map_size - PAGE, PAGE, PROT_NONE);
  EmuAlloc *grown = realloc(allocs, (nallocs + 1) * sizeof *allocs);
  if (!grown) return munmap(m, map_size), emu_fail(CUDA_ERROR_OUT_OF_MEMORY, "out of memory");
  allocs = grown;
  EmuAlloc *x = &allocs[nallocs++];
  *x = (EmuAlloc){m + PAGE, m, bytes, map_size, NULL, NULL, NULL};
  dev_used += bytes;
  memset(x->base, 0xff, bytes);
  memset(x->base + bytes, CANARY, body - bytes);
  *p = (CUdeviceptr)(uintptr_t)x->base;
  return CUDA_SUCCESS;
}

CUresult cuMemFree(CUdeviceptr p) {
  host_waited("cuMemFree");
  int rc = flush_all();   /* queued work may use it */
  if (rc) return rc;
  for (int i = 0; i < nallocs; i++)
    if (allocs[i].base == (unsigned char *)(uintptr_t)p) {
      munmap(allocs[i].map, allocs[i].map_size);
      dev_used -= allocs[i].size;
      if (allocs[i].page_state) {
        munmap(allocs[i].orig, body_of(&allocs[i])), munmap(allocs[i].after, body_of(&allocs[i]));
        free(allocs[i].page_state);
      }
      allocs[i] = allocs[--nallocs];
      return CUDA_SUCCESS;
    }
  return emu_fail(CUDA_ERROR_INVALID_VALUE, "cuMemFree of %p, which is not the start of an allocation", (void *)p);
}

CUresult cuMemGetInfo(size_t *free_b, size_t *total) {
  *free_b = dev_total - dev_used, *total = dev_total;
  return CUDA_SUCCESS;
}

/* ---- host memory registered (pinned) ----
 * Ranges of whole pages, none twice, unregistered by the address they
 * were registered at; copies to the host count their bytes by whether
 * they land in registered memory. LMC_CUDA_EMU_HOST_LOG=FILE appends a
 * line a registration and one at exit with those counts and the ranges
 * still registered (tests: a checkpoint's copies go to pinned memory). */
static struct { uintptr_t lo, hi; void *p; } *pins;
static int npins, cap_pins;
static size_t to_pinned, to_pageable;
static pthread_mutex_t pin_mu = PTHREAD_MUTEX_INITIALIZER;

static void host_log(const char *fmt, ...) {
  const char *f = getenv("LMC_CUDA_EMU_HOST_LOG");
  FILE *o = f && *f ? fopen(f, "a") : NULL;
  if (!o) return;
  va_list ap;
  va_start(ap, fmt);
  vfprintf(o, fmt, ap);
  va_end(ap);
  fclose(o);
}

/* The host's waits for the device, by the call that waited (the log's
 * "waits:" line at exit): the tests count a training step's. */
static struct { const char *what; uint64_t n; } waits[16];

static void host_waited(const char *what) {
  pthread_mutex_lock(&pin_mu);
  int i = 0;
  while (i < 15 && waits[i].what && strcmp(waits[i].what, what)) i++;
  waits[i].what = what, waits[i].n++;
  pthread_mutex_unlock(&pin_mu);
}

static void host_log_exit(void) {
  size_t still = 0;
  for (int i = 0; i < npins; i++) still += pins[i].hi - pins[i].lo;
  char w[512] = "";
  for (int i = 0, at = 0; i < 16 && waits[i].what && at < (int)sizeof w; i++)
    at += snprintf(w + at, sizeof w - at, " %s %llu", waits[i].what, (unsigned long long)waits[i].n);
  host_log("waits:%s\n", w);
  host_log("exit: %d range(s) of %zu bytes still registered; copied to the host: %zu bytes into registered memory, "
           "%zu into pageable\n", npins, still, to_pinned, to_pageable);
}

static void host_log_start(void) {
  static int once;
  const char *f = getenv("LMC_CUDA_EMU_HOST_LOG");
  if (!once++ && f && *f) atexit(host_log_exit);
}

CUresult cuMemHostRegister(void *p, size_t n, unsigned flags) {
  if (!current) return emu_fail(CUDA_ERROR_INVALID_CONTEXT, "cuMemHostRegister from a thread with no context current");
  if (!p || !n) return emu_fail(CUDA_ERROR_INVALID_VALUE, "cuMemHostRegister of %zu bytes at %p", n, p);
  uintptr_t lo = (uintptr_t)p / PAGE * PAGE, hi = ((uintptr_t)p + n + PAGE - 1) / PAGE * PAGE;
  CUresult rc = CUDA_SUCCESS;
  pthread_mutex_lock(&pin_mu);
  for (int i = 0; i < npins && !rc; i++)
    if (lo < pins[i].hi && pins[i].lo < hi)
      rc = emu_fail(CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED, "cuMemHostRegister of %p: its pages are registered", p);
  if (!rc && npins == cap_pins) {
    void *g = realloc(pins, (cap_pins * 2 + 4) * sizeof *pins);
    if (g) pins = g, cap_pins = cap_pins * 2 + 4;
    else rc = emu_fail(CUDA_ERROR_OUT_OF_MEMORY, "out of memory");
  }
  if (!rc) {
    pins[npins].lo = lo, pins[npins].hi = hi, pins[npins++].p = p;
    host_log("register %zu bytes\n", n);
  }
  pthread_mutex_unlock(&pin_mu);
  return rc;
}

CUresult cuMemHostUnregister(void *p) {
  if (!current) return emu_fail(CUDA_ERROR_INVALID_CONTEXT, "cuMemHostUnregister from a thread with no context current");
  bool found = false;
  pthread_mutex_lock(&pin_mu);
  for (int i = 0; i < npins && !found; i++)
    if ((found = pins[i].p == p)) {
      host_log("unregister %zu bytes\n", (size_t)(pins[i].hi - pins[i].lo));
      pins[i] = pins[--npins];
    }
  pthread_mutex_unlock(&pin_mu);
  if (!found)
    return emu_fail(CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED, "cuMemHostUnregister of %p, which was not registered", p);
  return CUDA_SUCCESS;
}

/* whether host memory [p, p + n) is registered; a copy to the host
 * (counted) counts its bytes by where it lands */
static bool pinned(const void *p, size_t n, bool counted) {
  uintptr_t a = (uintptr_t)p;
  bool in = false;
  pthread_mutex_lock(&pin_mu);
  for (int i = 0; i < npins && !in; i++) in = a >= pins[i].lo && a + n <= pins[i].hi;
  if (counted) *(in ? &to_pinned : &to_pageable) += n;
  pthread_mutex_unlock(&pin_mu);
  return in;
}

typedef struct Copy {
  void *dst;
  const void *src;
  size_t n;
  int value, width;   /* memset: the value and 1 or 4 bytes; copy: width 0 */
} Copy;

static int do_copy(void *arg) {
  Copy *c = arg;
  if (!c->width && !c->src) memmove(c->dst, c + 1, c->n);   /* from the host, taken when queued */
  else if (!c->width) memmove(c->dst, c->src, c->n);
  else if (c->width == 1) memset(c->dst, c->value, c->n);
  else
    for (size_t i = 0; i < c->n; i++) memcpy((unsigned char *)c->dst + 4 * i, &c->value, 4);
  return CUDA_SUCCESS;
}

static CUresult copy(const char *what, void *dst, bool dst_dev, const void *src, bool src_dev, size_t n,
                     CUstream s, bool sync) {
  if (sync) host_waited(what);
  if (sync && no_sync_in_capture(what)) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
  if (dst_dev && !emu_check_range(what, dst, n)) return CUDA_ERROR_INVALID_VALUE;
  if (src_dev && !emu_check_range(what, src, n)) return CUDA_ERROR_INVALID_VALUE;
  bool dst_pinned = !dst_dev && pinned(dst, n, true), src_pinned = !src_dev && pinned(src, n, false);
  Copy c = {dst, src, n, 0, 0};
  if (!lazy || sync || !s || s->capture) return emu_enqueue(s, do_copy, &c, sizeof c);
  /* registered host memory is the device's to read and write when the
   * copy runs, as a device's memory is: the host must wait for it */
  if (dst_pinned || src_pinned) return emu_enqueue(s, do_copy, &c, sizeof c);
  if (!dst_dev) {   /* into pageable host memory: done when the call returns */
    int rc = flush(s, UINT64_MAX);
    if (!rc) rc = emu_enqueue(s, do_copy, &c, sizeof c);
    return rc ? rc : flush(s, UINT64_MAX);
  }
  if (src_dev) return emu_enqueue(s, do_copy, &c, sizeof c);
  Copy *staged = malloc(sizeof c + n);   /* from pageable host memory: taken now, as a GPU stages it */
  if (!staged) return emu_fail(CUDA_ERROR_OUT_OF_MEMORY, "out of memory");
  *staged = (Copy){dst, NULL, n, 0, 0};
  memcpy(staged + 1, src, n);
  int rc = emu_enqueue(s, do_copy, staged, sizeof c + n);
  free(staged);
  return rc;
}

#define DEV(p) ((void *)(uintptr_t)(p))
CUresult cuMemcpyHtoD(CUdeviceptr d, const void *h, size_t n) { return copy("cuMemcpyHtoD", DEV(d), 1, h, 0, n, NULL, 1); }
CUresult cuMemcpyDtoH(void *h, CUdeviceptr d, size_t n) { return copy("cuMemcpyDtoH", h, 0, DEV(d), 1, n, NULL, 1); }
CUresult cuMemcpyDtoD(CUdeviceptr d, CUdeviceptr s, size_t n) {
  return copy("cuMemcpyDtoD", DEV(d), 1, DEV(s), 1, n, NULL, 1);
}
CUresult cuMemcpyHtoDAsync(CUdeviceptr d, const void *h, size_t n, CUstream s) {
  return copy("cuMemcpyHtoDAsync", DEV(d), 1, h, 0, n, s, 0);
}
CUresult cuMemcpyDtoHAsync(void *h, CUdeviceptr d, size_t n, CUstream s) {
  return copy("cuMemcpyDtoHAsync", h, 0, DEV(d), 1, n, s, 0);
}
CUresult cuMemcpyDtoDAsync(CUdeviceptr d, CUdeviceptr src, size_t n, CUstream s) {
  return copy("cuMemcpyDtoDAsync", DEV(d), 1, DEV(src), 1, n, s, 0);
}

static CUresult set(const char *what, CUdeviceptr d, int value, int width, size_t n, CUstream s, bool sync) {
  if (sync) host_waited(what);
  if (sync && no_sync_in_capture(what)) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
  if (!emu_check_range(what, DEV(d), n * width)) return CUDA_ERROR_INVALID_VALUE;
  Copy c = {DEV(d), NULL, n, value, width};
  return emu_enqueue(s, do_copy, &c, sizeof c);
}

CUresult cuMemsetD8(CUdeviceptr d, unsigned char v, size_t n) { return set("cuMemsetD8", d, v, 1, n, NULL, 1); }
CUresult cuMemsetD32(CUdeviceptr d, unsigned v, size_t n) { return set("cuMemsetD32", d, (int)v, 4, n, NULL, 1); }
CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, CUstream s) {
  return set("cuMemsetD8Async", d, v, 1, n, s, 0);
}
CUresult cuMemsetD32Async(CUdeviceptr d, unsigned v, size_t n, CUstream s) {
  return set("cuMemsetD32Async", d, (int)v, 4, n, s, 0);
}

/* ---- modules ---- */

static const char magic[8] = "LMCEMU1";

CUresult cuModuleLoadData(CUmodule *out, const void *image) {
  uint64_t hdr[2];
  if (memcmp(image, magic, 8))
    return emu_fail(CUDA_ERROR_INVALID_IMAGE, "cuModuleLoadData: not a module of the emulated NVRTC (a real cubin?)");
  memcpy(hdr, (const char *)image + 8, sizeof hdr);
  if (hdr[0] != emu_headers_hash())
    return emu_fail(CUDA_ERROR_INVALID_IMAGE, "cuModuleLoadData: the module was compiled by another version of the emulator");
  struct CUmod_st *m = calloc(1, sizeof *m);
  if (!m) return emu_fail(CUDA_ERROR_OUT_OF_MEMORY, "out of memory");
  const char *tmp = getenv("TMPDIR");
  snprintf(m->path, sizeof m->path, "%s/lmc-emu-module-XXXXXX", tmp && *tmp ? tmp : "/tmp");
  int fd = mkstemp(m->path);
  bool ok = fd >= 0 && write(fd, (const char *)image + 24, hdr[1]) == (ssize_t)hdr[1];
  if (fd >= 0) close(fd);
  m->so = ok ? dlopen(m->path, RTLD_NOW | RTLD_LOCAL) : NULL;
  if (fd >= 0) unlink(m->path);
  const EmuModule *(*get)(void) = m->so ? (const EmuModule *(*)(void))dlsym(m->so, "lmc_emu_module") : NULL;
  if (!get) {
    CUresult rc = emu_fail(CUDA_ERROR_INVALID_IMAGE, "cuModuleLoadData: cannot load the module: %s",
                           ok ? dlerror() : "cannot write it to a temporary file");
    if (m->so) dlclose(m->so);
    free(m);
    return rc;
  }
  m->m = get();
  if (m->m->abi != LMC_EMU_ABI) {
    dlclose(m->so), free(m);
    return emu_fail(CUDA_ERROR_INVALID_IMAGE, "cuModuleLoadData: module built for another emulator version");
  }
  *m->m->api = &engine_api;
  m->fns = calloc(m->m->nkernels + 1, sizeof *m->fns);
  for (int i = 0; i < m->m->nkernels; i++)
    m->fns[i] = (struct CUfunc_st){&m->m->kernels[i], m->m, MAX_SMEM_DEFAULT};
  *out = m;
  return CUDA_SUCCESS;
}

CUresult cuModuleUnload(CUmodule m) {
  int rc = flush_all();   /* queued launches run its code */
  if (rc) return rc;
  dlclose(m->so);
  free(m->fns), free(m);
  return CUDA_SUCCESS;
}

CUresult cuModuleGetFunction(CUfunction *f, CUmodule m, const char *name) {
  for (int i = 0; i < m->m->nkernels; i++)
    if (!strcmp(m->m->kernels[i].name, name)) return *f = &m->fns[i], CUDA_SUCCESS;
  return emu_fail(CUDA_ERROR_NOT_FOUND, "cuModuleGetFunction: the module has no kernel '%s'", name);
}

CUresult cuModuleGetGlobal(CUdeviceptr *p, size_t *bytes, CUmodule m, const char *name) {
  void *sym = dlsym(m->so, name);
  if (!sym) return emu_fail(CUDA_ERROR_NOT_FOUND, "cuModuleGetGlobal: the module has no global '%s'", name);
  if (p) *p = (CUdeviceptr)(uintptr_t)sym;
  if (bytes) *bytes = 0;
  return CUDA_SUCCESS;
}

CUresult cuFuncSetAttribute(CUfunction f, CUfunction_attribute a, int v) {
  if (a != CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES)
    return emu_fail(CUDA_ERROR_NOT_SUPPORTED, "cuFuncSetAttribute: the emulator supports only the dynamic shared memory size");
  if (v < 0 || v > MAX_SMEM_OPTIN)
    return emu_fail(CUDA_ERROR_INVALID_VALUE, "cuFuncSetAttribute: kernel %s asks for %d bytes of dynamic shared memory; "
                    "the device allows %d", f->k->name, v, MAX_SMEM_OPTIN);
  f->max_dyn_smem = v;
  return CUDA_SUCCESS;
}

CUresult cuFuncGetAttribute(int *v, CUfunction_attribute a, CUfunction f) {
  switch (a) {
  case CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *v = 1024; break;
  case CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: *v = f->max_dyn_smem; break;
  case CU_FUNC_ATTRIBUTE_NUM_REGS: case CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES: case CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES: *v = 0; break;
  default: return emu_fail(CUDA_ERROR_NOT_SUPPORTED, "cuFuncGetAttribute: attribute %d is not emulated", (int)a);
  }
  return CUDA_SUCCESS;
}

/* ---- launches ---- */

typedef struct Launch {   /* a launch with its arguments packed, as enqueued */
  struct CUfunc_st *f;
  EmuDim grid, block;
  size_t smem;
  void *args[64];
  unsigned char data[];
} Launch;

/* ---- checked launches (LMC_CUDA_EMU_CHECK): each run from the same
 * memory, each page a run wrote compared with the first run's ----
 * Copying every allocation before each launch and comparing all of them
 * after each run cost the tests more than the kernels (a 32 MiB cuBLASLt
 * workspace copied four times and compared twice a launch). Instead the
 * allocations are read-only while a checked launch runs: a kernel's first
 * write to a page faults, on_segv keeps the page's bytes (orig) and lets
 * the write through. Only the pages written are kept, put back and
 * compared. */
enum { P_ORIG = 1, P_AFTER = 2 };   /* page_state: orig holds the page; after holds it */
typedef struct Touched { int alloc; size_t page; } Touched;
static Touched *touched;
static size_t ntouched, touched_cap;
static volatile sig_atomic_t armed;

static void *shadow(size_t n) {
  void *m = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return m == MAP_FAILED ? NULL : m;
}

static void protect(int prot) {
  for (int i = 0; i < nallocs; i++) mprotect(allocs[i].base, body_of(&allocs[i]), prot);
}

/* Every allocation read-only, with room to keep each of its pages. */
static bool arm(void) {
  size_t pages = 0;
  for (int i = 0; i < nallocs; i++) {
    EmuAlloc *x = &allocs[i];
    size_t n = body_of(x);
    if (!x->page_state) {
      x->orig = shadow(n), x->after = shadow(n), x->page_state = calloc(n / PAGE, 1);
      if (!x->orig || !x->after || !x->page_state) return false;
    }
    pages += n / PAGE;
  }
  if (pages > touched_cap) {
    Touched *t = realloc(touched, pages * sizeof *t);
    if (!t) return false;
    touched = t, touched_cap = pages;
  }
  ntouched = 0, armed = 1;
  protect(PROT_READ);
  return true;
}

static void disarm(void) {
  armed = 0;
  protect(PROT_READ | PROT_WRITE);
  for (size_t i = 0; i < ntouched; i++) allocs[touched[i].alloc].page_state[touched[i].page] = 0;
  ntouched = 0;
}

/* From on_segv: a write to a page of allocation i while armed. */
static void keep_page(int i, size_t page) {
  EmuAlloc *x = &allocs[i];
  unsigned char *at = x->base + page * PAGE;
  if (!(x->page_state[page] & P_ORIG)) {
    memcpy(x->orig + page * PAGE, at, PAGE);
    x->page_state[page] |= P_ORIG;
    touched[ntouched++] = (Touched){i, page};
  }
  mprotect(at, PAGE, PROT_READ | PROT_WRITE);
}

/* true when addr is a page of an allocation's body while armed: kept and
 * made writable */
static bool kept_write(const void *addr) {
  if (!armed) return false;
  const unsigned char *a = addr;
  for (int i = 0; i < nallocs; i++)
    if (a >= allocs[i].base && a < allocs[i].base + body_of(&allocs[i]))
      return keep_page(i, (size_t)(a - allocs[i].base) / PAGE), true;
  return false;
}

/* After the first run: its pages to after. */
static void keep_first(void) {
  for (size_t i = 0; i < ntouched; i++) {
    EmuAlloc *x = &allocs[touched[i].alloc];
    size_t off = touched[i].page * PAGE;
    memcpy(x->after + off, x->base + off, PAGE);
    x->page_state[touched[i].page] |= P_AFTER;
  }
}

/* Every page a run wrote back to its bytes before the launch, read-only
 * again. */
static void restore(void) {
  for (size_t i = 0; i < ntouched; i++) {
    EmuAlloc *x = &allocs[touched[i].alloc];
    size_t off = touched[i].page * PAGE;
    memcpy(x->base + off, x->orig + off, PAGE);
    mprotect(x->base + off, PAGE, PROT_READ);
  }
}

/* A later run's pages against the first's (a page the first run left
 * alone against its bytes before): the first byte that differs, as an
 * error. */
static int differ(const char *kernel, const char *how) {
  int worst = -1;
  size_t at = 0;
  for (size_t i = 0; i < ntouched; i++) {
    EmuAlloc *x = &allocs[touched[i].alloc];
    size_t off = touched[i].page * PAGE;
    const unsigned char *want = (x->page_state[touched[i].page] & P_AFTER ? x->after : x->orig) + off;
    if (!memcmp(want, x->base + off, PAGE)) continue;
    size_t b = off;
    while (want[b - off] == x->base[b]) b++;
    if (worst < 0 || touched[i].alloc < worst || (touched[i].alloc == worst && b < at)) worst = touched[i].alloc, at = b;
  }
  if (worst < 0) return CUDA_SUCCESS;
  return emu_fail(CUDA_ERROR_LAUNCH_FAILED,
                  "kernel %s gives different results when its threads and blocks run %s: byte %zu of a %zu-byte "
                  "allocation differs (a missing __syncthreads, a race on shared or global memory, or "
                  "order-dependent atomics)", kernel, how, at, allocs[worst].size);
}

static int launch_code(int engine_rc) {
  return engine_rc == -2 ? CUDA_ERROR_ILLEGAL_ADDRESS : engine_rc == -3 ? CUDA_ERROR_LAUNCH_TIMEOUT
         : engine_rc ? CUDA_ERROR_LAUNCH_FAILED : CUDA_SUCCESS;
}

static int run_checked(EmuLaunch *l) {
  static const char *names[] = {"forward", "in reverse", "in a shuffled order"};
  if (!arm()) return disarm(), emu_fail(CUDA_ERROR_OUT_OF_MEMORY, "out of memory checking a launch");
  int rc = CUDA_SUCCESS;
  for (int o = 0; o < 3 && rc == CUDA_SUCCESS; o++) {
    if (o) restore();
    l->order = o;
    if ((rc = launch_code(engine_run(l)))) break;
    else if (!o) keep_first();
    else rc = differ(l->k->name, names[o]);
  }
  disarm();
  return rc;
}

static int do_launch(void *arg) {
  Launch *x = arg;
  EmuLaunch l = {x->f->m, x->f->k, x->grid, x->block, x->smem, x->args, ORDER_FORWARD, ++launches};
  EmuKernel k = *x->f->k;
  if (all_fibers) k.may_sync = 1, l.k = &k;
  int rc = check_orders ? run_checked(&l) : launch_code(engine_run(&l));
  return rc ? rc : (int)check_canaries(x->f->k->name);
}

static CUresult check_limits(CUfunction f, EmuDim g, EmuDim b, unsigned smem) {
  uint64_t threads = (uint64_t)b.x * b.y * b.z;
  if (!threads || !g.x || !g.y || !g.z)
    return emu_fail(CUDA_ERROR_INVALID_VALUE, "cuLaunchKernel: kernel %s launched with an empty grid or block", f->k->name);
  if (threads > 1024 || b.x > 1024 || b.y > 1024 || b.z > 64)
    return emu_fail(CUDA_ERROR_INVALID_VALUE, "cuLaunchKernel: kernel %s asks for a block of %ux%ux%u threads; the device "
                    "allows 1024 (x, y <= 1024, z <= 64)", f->k->name, b.x, b.y, b.z);
  if (g.y > 65535 || g.z > 65535 || g.x > 0x7fffffffu)
    return emu_fail(CUDA_ERROR_INVALID_VALUE, "cuLaunchKernel: kernel %s asks for a grid of %ux%ux%u blocks, over the "
                    "device's limits", f->k->name, g.x, g.y, g.z);
  if (smem > (unsigned)f->max_dyn_smem)
    return emu_fail(CUDA_ERROR_INVALID_VALUE, "cuLaunchKernel: kernel %s asks for %u bytes of dynamic shared memory per "
                    "block; it may use %d (up to %d after cuFuncSetAttribute)", f->k->name, smem, f->max_dyn_smem,
                    MAX_SMEM_OPTIN);
  return CUDA_SUCCESS;
}

CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned smem, CUstream s, void **params, void **extra) {
  EmuDim g = {gx, gy, gz}, b = {bx, by, bz};
  CUresult rc = check_limits(f, g, b, smem);
  if (rc) return rc;
  const EmuKernel *k = f->k;
  if (!params || extra)
    return emu_fail(CUDA_ERROR_NOT_SUPPORTED, "cuLaunchKernel: kernel %s: the emulator takes kernelParams, not extra", k->name);
  if (k->nparams > 64) return emu_fail(CUDA_ERROR_NOT_SUPPORTED, "kernel %s has over 64 parameters", k->name);
  size_t total = 0;
  for (int i = 0; i < k->nparams; i++) total += (k->sizes[i] + 15) / 16 * 16;
  Launch *x = calloc(1, sizeof *x + total);
  if (!x) return emu_fail(CUDA_ERROR_OUT_OF_MEMORY, "out of memory");
  *x = (Launch){f, g, b, smem, {0}};
  size_t off = 0;
  for (int i = 0; i < k->nparams; i++) {
    memcpy(x->data + off, params[i], k->sizes[i]);
    off += (k->sizes[i] + 15) / 16 * 16;
  }
  rc = emu_enqueue(s, do_launch, x, sizeof *x + total);
  free(x);
  return rc;
}

/* ---- streams, events, graphs ---- */

static void place_args(Launch *x) {
  size_t off = 0;
  for (int i = 0; i < x->f->k->nparams; i++) {
    x->args[i] = x->data + off;
    off += (x->f->k->sizes[i] + 15) / 16 * 16;
  }
}

static int run_op(Op *o) {
  if (o->fn == do_launch) place_args(o->arg);   /* its argument pointers point into itself */
  return o->fn(o->arg);
}

typedef struct Wait {
  struct CUstream_st *s;
  uint64_t seq;
} Wait;

static int do_wait(void *arg) {
  Wait *w = arg;
  return flush(w->s, w->seq);
}

/* Runs stream s's queued work up to item upto (lazy streams). A stream
 * asked for more while it is running one of its own items waits, through
 * events, on itself: on a GPU, a deadlock. */
/* Runs stream s's next queued item; the queue restarts at its start once empty. */
static int run_next(struct CUstream_st *s) {
  Op o = s->q[s->head++];
  s->ran++;
  int rc = run_op(&o);
  free(o.arg);
  if (s->head == s->n) s->head = s->n = 0;
  return rc;
}

/* whether stream t's next queued item can run now: it has one, is not
 * running, and an event it waits for first has been reached */
static bool ready(struct CUstream_st *t) {
  if (t->running || t->head == t->n) return false;
  if (t->q[t->head].fn != do_wait) return true;
  Wait *w = t->q[t->head].arg;
  return !w->s || w->s->ran >= w->seq;
}

/* Shuffled streams: until s has run up to item upto, the next item of a
 * stream picked at random among those whose next item can run, so that
 * two streams' work interleaves item by item in an order of the seed's,
 * a stream as likely to go next as its share of the items queued (so a
 * second stream's few items land anywhere among the first's many; lazy
 * and skewed streams run a stream's queue in one go). */
static int flush_shuffled(struct CUstream_st *s, uint64_t upto) {
  int rc = CUDA_SUCCESS;
  while (rc == CUDA_SUCCESS && s->ran < upto && s->head < s->n) {
    uint64_t items = 0;   /* the ready streams' queued items: each stream picked as likely as its share */
    for (int i = 0; i < nstreams; i++)
      if (ready(streams[i])) items += (uint64_t)(streams[i]->n - streams[i]->head);
    if (!items) return emu_fail(CUDA_ERROR_ILLEGAL_STATE, "streams wait on each other's events in a cycle (a deadlock on a GPU)");
    shuffle_rng = shuffle_rng * 6364136223846793005ull + 1442695040888963407ull;
    uint64_t at = (shuffle_rng >> 33) % items;
    struct CUstream_st *t = NULL;
    for (int i = 0; !t; i++)
      if (ready(streams[i]) && at < (uint64_t)(streams[i]->n - streams[i]->head)) t = streams[i];
      else if (ready(streams[i])) at -= (uint64_t)(streams[i]->n - streams[i]->head);
    t->running = true;
    rc = run_next(t);
    t->running = false;
  }
  return rc;
}

static int flush(struct CUstream_st *s, uint64_t upto) {
  if (sticky) {
    int rc = sticky;
    return sticky = 0, rc;
  }
  if (!s || s->ran >= upto || s->head == s->n) return CUDA_SUCCESS;
  if (s->running) return emu_fail(CUDA_ERROR_ILLEGAL_STATE, "streams wait on each other's events in a cycle (a deadlock on a GPU)");
  if (shuffle) return flush_shuffled(s, upto);
  s->running = true;
  int rc = CUDA_SUCCESS;
  while (rc == CUDA_SUCCESS && s->ran < upto && s->head < s->n) rc = run_next(s);
  s->running = false;
  return rc;
}

bool emu_lazy(void) { return lazy; }

/* Runs what stream s can run now: its items up to the first that waits
 * for a stream that cannot get there yet (one running an item that is
 * blocked, up the call stack). */
static void advance(struct CUstream_st *s) {
  if (s->running) return;
  s->running = true;
  while (!sticky && s->head < s->n) {
    Op *o = &s->q[s->head];
    if (o->fn == do_wait) {
      Wait *w = o->arg;
      if (w->s->ran < w->seq) advance(w->s);
      if (w->s->ran < w->seq) break;
    }
    sticky = run_next(s);
  }
  s->running = false;
}

void emu_progress(void) {
  for (int i = 0; lazy && i < nstreams; i++) advance(streams[i]);
}

/* Every stream's queued work, the oldest stream's first. */
static int flush_all(void) {
  for (int i = 0; i < nstreams; i++) {
    int rc = flush(streams[i], UINT64_MAX);
    if (rc) return rc;
  }
  return CUDA_SUCCESS;
}

int emu_enqueue(void *stream, int (*fn)(void *arg), const void *arg, size_t size) {
  struct CUstream_st *s = stream;
  void *copy = malloc(size);
  if (!copy) return emu_fail(CUDA_ERROR_OUT_OF_MEMORY, "out of memory");
  memcpy(copy, arg, size);
  Op op = {fn, copy, size};
  if (s && s->capture) {
    struct CUgraph_st *g = s->capture;
    Op *grown = realloc(g->ops, (g->n + 1) * sizeof *g->ops);
    if (!grown) return free(copy), emu_fail(CUDA_ERROR_OUT_OF_MEMORY, "out of memory");
    g->ops = grown;
    g->ops[g->n++] = op, s->in_graph++;
    return CUDA_SUCCESS;
  }
  if (lazy && s && !s->eager) {
    if (s->n == s->cap) {
      Op *grown = realloc(s->q, (s->cap = s->cap ? 2 * s->cap : 64) * sizeof *s->q);
      if (!grown) return free(copy), emu_fail(CUDA_ERROR_OUT_OF_MEMORY, "out of memory");
      s->q = grown;
    }
    s->q[s->n++] = op, s->queued++;
    return CUDA_SUCCESS;
  }
  int rc = lazy && !s ? flush_all() : CUDA_SUCCESS;   /* the legacy stream waits for the others */
  if (s) s->queued++, s->ran++;
  if (rc == CUDA_SUCCESS) rc = run_op(&op);
  free(copy);
  return rc;
}

CUresult cuStreamCreate(CUstream *s, unsigned flags) {
  struct CUstream_st **grown = realloc(streams, (nstreams + graves + 1) * sizeof *streams);
  if (!grown) return emu_fail(CUDA_ERROR_OUT_OF_MEMORY, "out of memory");
  streams = grown;
  *s = calloc(1, sizeof **s);
  if (!*s) return emu_fail(CUDA_ERROR_OUT_OF_MEMORY, "out of memory");
  if (graves) streams[nstreams + graves] = streams[nstreams];   /* a grave moves to the end */
  (*s)->eager = skew && nstreams % 2;
  streams[nstreams++] = *s;
  return CUDA_SUCCESS;
}

CUresult cuStreamDestroy(CUstream s) {
  if (s && s->capture) return emu_fail(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "cuStreamDestroy of a stream being captured");
  int rc = flush(s, UINT64_MAX);
  for (int i = 0; s && i < nstreams; i++)
    if (streams[i] == s) {   /* kept (empty) for the events recorded on it: a grave */
      memmove(&streams[i], &streams[i + 1], (nstreams + graves - i - 1) * sizeof *streams);
      nstreams--, streams[nstreams + graves] = s, graves++;
      break;
    }
  if (s) free(s->q), s->q = NULL, s->head = s->n = s->cap = 0;
  return rc;
}

CUresult cuStreamSynchronize(CUstream s) {
  host_waited("cuStreamSynchronize");
  if (s && s->capture) return emu_fail(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "cuStreamSynchronize of a stream being captured");
  return s ? flush(s, UINT64_MAX) : flush_all();
}

/* Done when asked: the lazy queue runs now. */
CUresult cuStreamQuery(CUstream s) {   /* (done here at once: a poll's wait, counted as one) */
  host_waited("cuStreamQuery");
  return s ? flush(s, UINT64_MAX) : flush_all();
}

/* The stream's later work waits for the event's last record: the stream
 * it was recorded on runs up to it first. */
/* A stream that waits on an event recorded into a capture joins it, as
 * CUDA's: what it queues next goes into the same graph (the graph's work
 * runs in the order it was queued, which keeps every wait); a capturing
 * stream that waits on a joined one's event joins it back up to there. */
CUresult cuStreamWaitEvent(CUstream s, CUevent e, unsigned flags) {
  if (e->g) {
    if (s && s->capture && s->capture != e->g)
      return emu_fail(CUDA_ERROR_STREAM_CAPTURE_ISOLATION, "cuStreamWaitEvent: an event of another capture");
    if (!s) return emu_fail(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "cuStreamWaitEvent: the legacy stream on a captured event");
    if (!s->capture) s->capture = e->g, s->joined = true, s->in_graph = s->joined_upto = 0;
    if (e->from != s && e->from->joined && e->upto > e->from->joined_upto) e->from->joined_upto = e->upto;
    return CUDA_SUCCESS;
  }
  if (!e->s) return CUDA_SUCCESS;
  Wait w = {e->s, e->seq};
  return emu_enqueue(s, do_wait, &w, sizeof w);
}

CUresult cuStreamBeginCapture(CUstream s, CUstreamCaptureMode mode) {
  if (!s) return emu_fail(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "cuStreamBeginCapture on the legacy NULL stream");
  if (s->capture) return emu_fail(CUDA_ERROR_ILLEGAL_STATE, "cuStreamBeginCapture: the stream is already being captured");
  s->capture = calloc(1, sizeof *s->capture);
  capturing++;
  return CUDA_SUCCESS;
}

CUresult cuStreamEndCapture(CUstream s, CUgraph *g) {
  if (!s || !s->capture) return emu_fail(CUDA_ERROR_ILLEGAL_STATE, "cuStreamEndCapture: the stream is not being captured");
  *g = s->capture;
  int unjoined = 0;
  for (int i = 0; i < nstreams; i++) {   /* the streams that joined it, joined back to the end? */
    struct CUstream_st *j = streams[i];
    if (j == s || j->capture != *g || !j->joined) continue;
    unjoined += j->in_graph > j->joined_upto;
    j->capture = NULL, j->joined = false;
  }
  s->capture = NULL;
  capturing--;
  if (unjoined)
    return emu_fail(CUDA_ERROR_STREAM_CAPTURE_UNJOINED, "cuStreamEndCapture: a stream that joined the capture has work "
                    "the capturing stream did not wait for (join it back with an event before the capture ends)");
  return CUDA_SUCCESS;
}

CUresult cuStreamIsCapturing(CUstream s, CUstreamCaptureStatus *st) {
  *st = s && s->capture ? CU_STREAM_CAPTURE_STATUS_ACTIVE : CU_STREAM_CAPTURE_STATUS_NONE;
  return CUDA_SUCCESS;
}

static void free_ops(struct CUgraph_st *g) {
  for (int i = 0; i < g->n; i++) free(g->ops[i].arg);
  free(g->ops);
}

CUresult cuGraphDestroy(CUgraph g) {
  free_ops(g), free(g);
  return CUDA_SUCCESS;
}

CUresult cuGraphInstantiate(CUgraphExec *e, CUgraph g, unsigned long long flags) {
  struct CUgraphExec_st *x = calloc(1, sizeof *x);
  if (!x || !(x->g.ops = calloc(g->n + 1, sizeof *x->g.ops))) return free(x), emu_fail(CUDA_ERROR_OUT_OF_MEMORY, "out of memory");
  for (int i = 0; i < g->n; i++) {
    Op *o = &x->g.ops[x->g.n];
    *o = g->ops[i];
    if (!(o->arg = malloc(o->size))) return cuGraphExecDestroy(x), emu_fail(CUDA_ERROR_OUT_OF_MEMORY, "out of memory");
    memcpy(o->arg, g->ops[i].arg, o->size);
    x->g.n++;
  }
  *e = x;
  return CUDA_SUCCESS;
}

CUresult cuGraphLaunch(CUgraphExec e, CUstream s) {
  for (int i = 0; i < e->g.n; i++) {
    int rc = s && s->capture ? emu_fail(CUDA_ERROR_NOT_SUPPORTED, "cuGraphLaunch into a stream being captured")
                             : emu_enqueue(s, e->g.ops[i].fn, e->g.ops[i].arg, e->g.ops[i].size);
    if (rc) return rc;
  }
  return CUDA_SUCCESS;
}

CUresult cuGraphExecDestroy(CUgraphExec e) {
  free_ops(&e->g), free(e);
  return CUDA_SUCCESS;
}

CUresult cuEventCreate(CUevent *e, unsigned flags) {
  *e = calloc(1, sizeof **e);
  return *e ? CUDA_SUCCESS : (CUresult)emu_fail(CUDA_ERROR_OUT_OF_MEMORY, "out of memory");
}

CUresult cuEventDestroy(CUevent e) { return free(e), CUDA_SUCCESS; }

static int stamp(void *arg) {
  (*(CUevent *)arg)->t = now();
  return CUDA_SUCCESS;
}

CUresult cuEventRecord(CUevent e, CUstream s) {
  bool captured = s && s->capture;
  e->s = captured ? NULL : s, e->seq = s && !captured ? s->queued + 1 : 0;   /* this record's item */
  e->g = captured ? s->capture : NULL, e->from = captured ? s : NULL;
  int rc = emu_enqueue(s, stamp, &e, sizeof e);
  e->upto = captured ? s->in_graph : 0;
  return rc;
}

CUresult cuEventQuery(CUevent e) {
  host_waited("cuEventQuery");
  return flush(e->s, e->seq);
}

CUresult cuEventSynchronize(CUevent e) {
  host_waited("cuEventSynchronize");
  CUresult rc = no_sync_in_capture("cuEventSynchronize");
  return rc ? rc : (CUresult)flush(e->s, e->seq);
}

CUresult cuEventElapsedTime(float *ms, CUevent a, CUevent b) {
  int rc = flush(a->s, a->seq);
  if (rc || (rc = flush(b->s, b->seq))) return rc;
  *ms = (float)((b->t - a->t) * 1e3);
  return CUDA_SUCCESS;
}

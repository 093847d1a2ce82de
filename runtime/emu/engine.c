/* engine.c: runs one kernel launch of the emulated CUDA platform. In: a
 * kernel of a loaded module, its grid, block, dynamic shared memory,
 * arguments and a thread order. The blocks run one after another on this
 * host thread, in the order's sequence. A kernel that can reach a barrier
 * or a warp collective runs each thread of a block as a fiber (its own
 * stack, created once; on x86-64 a six-register switch, elsewhere
 * _setjmp/_longjmp after makecontext):
 * the scheduler resumes the ready threads in the order's sequence, each
 * until it waits or ends, and releases a barrier when every thread still
 * running has reached it. A kernel that cannot (the emulated NVRTC decides
 * from its call graph) runs its threads as a plain loop. Different orders
 * must give bitwise equal results; the driver's check mode compares them.
 * Any fault ends the launch with emu_error set. */
#undef _FORTIFY_SOURCE   /* longjmp between stacks is this file's purpose */
#include "emu.h"
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <ucontext.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define ASAN 1
#endif

enum { T_READY, T_BAR, T_WARP, T_DONE };
enum { MAX_THREADS = 1024, WARPS = MAX_THREADS / 32 };
#ifdef ASAN
#define STACK_SIZE (1u << 20)
#else
#define STACK_SIZE (256u << 10)
#endif

typedef struct Thread {
#ifdef __x86_64__
  void *sp;              /* its saved stack pointer while switched out */
#else
  jmp_buf jb, start;     /* where it waits; where a fresh run begins */
#endif
  int state, parity, bar_result;
  bool booted, started;
  unsigned lin;
  EmuDim tid;
  unsigned char *stack;  /* STACK_SIZE above a guard page */
  void *fake;            /* ASan's fake stack while switched out */
} Thread;

typedef struct Warp {
  unsigned arrived, mask, exists;
  EmuCombine combine;
  const char *what;
  unsigned gen;
  _Alignas(16) unsigned char in[2][32][LMC_EMU_SLOT];   /* slots hold any lane type */
  _Alignas(16) unsigned char out[2][32][LMC_EMU_SLOT];
} Warp;

static Thread threads[MAX_THREADS];
static Warp warps[WARPS];
static Thread *cur;                 /* the fiber running, NULL in the scheduler or a plain loop */
#ifndef __x86_64__
static jmp_buf sched_jb;
static ucontext_t boot_caller;
static Thread *booting;
#endif
static sigjmp_buf fail_jb;
static const EmuLaunch *L;
static EmuVars *vars;
static unsigned nthr, nlive, nbar, bar_count;
static bool plain;
static unsigned char *smem, *smem_map;   /* dynamic shared memory: smem_cap bytes, then a guard page */
static size_t smem_cap, smem_map_size;
const char *engine_kernel;
EmuDim engine_block, engine_thread;

#ifdef ASAN
static const void *main_bottom;
static size_t main_size;
static void *sched_fake;
#define TO_FIBER(t) __sanitizer_start_switch_fiber(&sched_fake, (t)->stack, STACK_SIZE)
static bool main_known;
static void in_fiber(void *fake) {   /* the main stack's bounds, from the first switch off it */
  const void *b;
  size_t n;
  __sanitizer_finish_switch_fiber(fake, &b, &n);
  if (!main_known) main_bottom = b, main_size = n, main_known = true;
}
#define IN_FIBER(t) in_fiber((t)->fake)
#define FIBER_TO_FIBER(t, u) __sanitizer_start_switch_fiber(&(t)->fake, (u)->stack, STACK_SIZE)
#define TO_SCHED(t) __sanitizer_start_switch_fiber(&(t)->fake, main_bottom, main_size)
#define IN_SCHED() __sanitizer_finish_switch_fiber(sched_fake, NULL, NULL)
#else
#define TO_FIBER(t) ((void)0)
#define IN_FIBER(t) ((void)0)
#define FIBER_TO_FIBER(t, u) ((void)0)
#define TO_SCHED(t) ((void)0)
#define IN_SCHED() ((void)0)
#endif

/* Ends the launch from wherever it is (a fiber, a plain loop, a signal
 * handler): emu_error says why. */
static bool from_fiber;

static _Noreturn void fail(const char *fmt, ...) {
  va_list ap;
  char msg[700];
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  snprintf(emu_error, sizeof emu_error, "kernel %s, block (%u,%u,%u), thread (%u,%u,%u): %s", L->k->name,
           engine_block.x, engine_block.y, engine_block.z, engine_thread.x, engine_thread.y, engine_thread.z, msg);
  from_fiber = cur != NULL;
  if (cur) TO_SCHED(cur);
  siglongjmp(fail_jb, 1);
}

static bool illegal, timed_out;

void engine_fault(const char *msg) {
  illegal = true;
  fail("%s", msg);
}

/* LMC_CUDA_EMU_TIMEOUT=S: a launch still running after S seconds ends
 * (SIGALRM, from driver.c's handler) as a GPU's watchdog would end it;
 * unset, launches run as long as they take. */
static double timeout_s;

void engine_timeout(void) {
  if (!engine_kernel) return;
  timed_out = true;
  fail("ran past LMC_CUDA_EMU_TIMEOUT (%g s): an endless loop, or a wait for a block that has not run (the emulator "
       "runs a launch's blocks one at a time)", timeout_s);
}

static void watchdog(double s) {
  struct itimerval t = {{0, 0}, {(time_t)s, (suseconds_t)((s - (time_t)s) * 1e6)}};
  setitimer(ITIMER_REAL, &t, NULL);
}

static EmuDim tid_of(unsigned lin) {
  EmuDim b = L->block;
  return (EmuDim){lin % b.x, lin / b.x % b.y, lin / (b.x * b.y)};
}

/* ---- fibers ---- */

static void fiber_body(void) {
  IN_FIBER(cur);
  L->k->thunk(L->args);
  cur->state = T_DONE;
  nlive--;
}

#ifdef __x86_64__
/* switch(&from_sp, to_sp): pushes the callee-saved registers, swaps stacks,
 * pops the other side's and returns into it. */
void lmc_emu_switch(void **from, void *to);
__asm__(".text\n.globl lmc_emu_switch\n.type lmc_emu_switch,@function\nlmc_emu_switch:\n"
        "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
        "  movq %rsp, (%rdi)\n  movq %rsi, %rsp\n"
        "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n  ret\n"
        ".size lmc_emu_switch, .-lmc_emu_switch\n");

static void *sched_sp;
static const unsigned *pass;   /* the order of this pass over the threads */
static unsigned pass_at;        /* the position of the thread running */

static void fresh(Thread *t);

/* To the next ready thread of this pass, or back to the scheduler. */
static void yield(void) {
  Thread *t = cur;
  while (++pass_at < nthr) {
    Thread *u = &threads[pass[pass_at]];
    if (u->state != T_READY) continue;
    cur = u;
    vars->threadIdx = engine_thread = u->tid;
    if (!u->started) fresh(u), u->started = true;
    FIBER_TO_FIBER(t, u);
    lmc_emu_switch(&t->sp, u->sp);
    IN_FIBER(cur);
    return;
  }
  TO_SCHED(t);
  lmc_emu_switch(&t->sp, sched_sp);
  IN_FIBER(cur);
}

static _Noreturn void fiber_main(void) {
  for (;;) {   /* one run a pass; a new run resumes here after the last yield */
    fiber_body();
    yield();
  }
}

static void fresh(Thread *t) {   /* a stack whose first switch "returns" into fiber_main */
  /* staggered, so the threads' hot stack lines do not share cache sets */
  void **sp = (void **)(t->stack + STACK_SIZE - (t->lin % 61) * 64);
  *--sp = NULL;                  /* fiber_main's return address slot: keeps the ABI's alignment */
  *--sp = (void *)fiber_main;
  for (int i = 0; i < 6; i++) *--sp = NULL;
  t->sp = sp;
}

static void boot(Thread *t) {
  void *m = mmap(NULL, STACK_SIZE + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) fail("out of memory for thread stacks");
  mprotect(m, 4096, PROT_NONE);   /* a stack overflow faults */
  t->stack = (unsigned char *)m + 4096;
  t->booted = true;
}

/* Runs the pass from position i: each thread hands over to the next. */
static void run_pass(const unsigned *perm, unsigned i) {
  Thread *t = &threads[perm[i]];
  pass = perm, pass_at = i, cur = t;
  vars->threadIdx = engine_thread = t->tid;
  if (!t->started) fresh(t), t->started = true;
  TO_FIBER(t);
  lmc_emu_switch(&sched_sp, t->sp);
  IN_SCHED();
  cur = NULL;
}
#else
static void yield(void) {
  Thread *t = cur;
  if (!_setjmp(t->jb)) {
    TO_SCHED(t);
    _longjmp(sched_jb, 1);
  }
  IN_FIBER(cur);
}

static void fiber_main(void) {
  Thread *self = booting;
#ifdef ASAN
  __sanitizer_finish_switch_fiber(NULL, &main_bottom, &main_size);
#endif
  if (!_setjmp(self->start)) {   /* parked until its first run */
    ucontext_t here;
    TO_SCHED(self);
    swapcontext(&here, &boot_caller);
  }
  fiber_body();
  yield();   /* never resumed: a new run jumps to start */
  abort();
}

static void boot(Thread *t) {
  ucontext_t uc;
  void *m = mmap(NULL, STACK_SIZE + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) fail("out of memory for thread stacks");
  mprotect(m, 4096, PROT_NONE);   /* a stack overflow faults */
  t->stack = (unsigned char *)m + 4096;
  getcontext(&uc);
  uc.uc_stack.ss_sp = t->stack;
  uc.uc_stack.ss_size = STACK_SIZE;
  uc.uc_link = NULL;
  makecontext(&uc, fiber_main, 0);
  booting = t;
  TO_FIBER(t);
  swapcontext(&boot_caller, &uc);
  IN_SCHED();
  t->booted = true;
}

static void resume(Thread *t) {
  cur = t;
  vars->threadIdx = engine_thread = t->tid;
  if (!_setjmp(sched_jb)) {
    TO_FIBER(t);
    bool first = !t->started;
    t->started = true;
    _longjmp(first ? t->start : t->jb, 1);
  }
  IN_SCHED();
  cur = NULL;
}

static void run_pass(const unsigned *perm, unsigned i) {
  for (; i < nthr; i++)
    if (threads[perm[i]].state == T_READY) resume(&threads[perm[i]]);
}
#endif

/* After an abandoned launch: every fiber starts afresh next time. */
void engine_abort(void) {
  cur = NULL;
  for (int i = 0; i < MAX_THREADS; i++) {
    threads[i].started = false;
#ifdef ASAN
    if (threads[i].booted) __asan_unpoison_memory_region(threads[i].stack, STACK_SIZE);
#endif
  }
}

/* ---- what kernels call ---- */

static void need_fibers(const char *what) {
  if (plain)
    fail("reached %s, which the emulated NVRTC did not find on any path of this kernel's source "
         "(a call through a pointer?); set LMC_CUDA_EMU_FIBERS=1 to run every kernel on fibers", what);
}

static int syncthreads_count(int pred) {
  need_fibers("__syncthreads");
  cur->state = T_BAR;
  nbar++;
  bar_count += pred != 0;
  yield();
  return cur->bar_result;
}

static void syncthreads(void) { syncthreads_count(0); }

static const void *warp_exchange(unsigned mask, const void *in, size_t n, EmuCombine combine, const char *what) {
  need_fibers(what);
  Thread *t = cur;
  Warp *w = &warps[t->lin / 32];
  unsigned lane = t->lin % 32;
  if (!(mask >> lane & 1)) fail("%s with mask 0x%08x, which leaves out the calling lane %u", what, mask, lane);
  if (mask & ~w->exists)
    fail("%s with mask 0x%08x names lanes that do not exist in a block of %u threads", what, mask, nthr);
  if (!w->arrived) w->mask = mask, w->combine = combine, w->what = what;
  else if (w->mask != mask || w->combine != combine)
    fail("lane %u reached %s (mask 0x%08x) while lanes 0x%08x of its warp wait in %s (mask 0x%08x)", lane, what,
         mask, w->arrived, w->what, w->mask);
  int p = w->gen & 1;
  if (n) memcpy(w->in[p][lane], in, n);
  w->arrived |= 1u << lane;
  t->state = T_WARP, t->parity = p;
  if (w->arrived == w->mask) {
    combine(&w->in[p][0][0], &w->out[p][0][0], mask);
    for (unsigned l = 0; l < 32; l++)
      if (mask >> l & 1) threads[t->lin - lane + l].state = T_READY;
    w->arrived = 0, w->gen++;
  }
  yield();
  return w->out[cur->parity][lane];
}

static unsigned activemask(void) {
  if (plain || !cur) return warps[0].exists;
  unsigned base = cur->lin & ~31u, m = 0;
  for (unsigned l = 0; l < 32 && base + l < nthr; l++)
    if (threads[base + l].state != T_DONE) m |= 1u << l;
  return m;
}

static void *dyn_smem(void) { return smem; }

static void trap(const char *what) { fail("%s", what); }

const EmuApi engine_api = {syncthreads, syncthreads_count, warp_exchange, activemask, dyn_smem, trap};

/* ---- orders and blocks ---- */

static uint64_t mix(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/* p[0..n) = the order's sequence of 0..n-1 */
static void order(unsigned *p, unsigned n, int how, uint64_t *seed) {
  for (unsigned i = 0; i < n; i++) p[i] = how == ORDER_REVERSE ? n - 1 - i : i;
  if (how == ORDER_SHUFFLE)
    for (unsigned i = n; i > 1; i--) {
      unsigned j = (unsigned)(mix(seed) % i), x = p[i - 1];
      p[i - 1] = p[j], p[j] = x;
    }
}

static void run_plain(const unsigned *perm) {
  for (unsigned i = 0; i < nthr; i++) {
    vars->threadIdx = engine_thread = tid_of(perm[i]);
    L->k->thunk(L->args);
  }
}

static _Noreturn void deadlock(void) {
  char why[600];
  int n = snprintf(why, sizeof why, "deadlock: %u of %u threads still run, %u wait at __syncthreads", nlive, nthr, nbar);
  for (unsigned wi = 0; wi * 32 < nthr && n < (int)sizeof why - 120; wi++)
    if (warps[wi].arrived)
      n += snprintf(why + n, sizeof why - n, "; warp %u waits in %s for lanes 0x%08x (mask 0x%08x)", wi,
                    warps[wi].what, warps[wi].mask & ~warps[wi].arrived, warps[wi].mask);
  engine_thread = (EmuDim){0, 0, 0};
  fail("%s (a barrier or warp collective that not every thread reaches)", why);
}

static void run_fibers(const unsigned *perm) {
  for (unsigned i = 0; i < nthr; i++) {
    Thread *t = &threads[i];
    if (!t->booted) boot(t);
    t->state = T_READY, t->started = false, t->lin = i, t->tid = tid_of(i);
  }
  for (unsigned wi = 0; wi * 32 < nthr; wi++) warps[wi].arrived = 0, warps[wi].gen = 0;
  nlive = nthr, nbar = 0, bar_count = 0;
  for (;;) {
    bool progress = false;
    for (unsigned i = 0; i < nthr; i++)
      if (threads[perm[i]].state == T_READY) {
        run_pass(perm, i), progress = true;
        break;
      }
    if (!nlive) return;
    if (nbar && nbar == nlive) {
      for (unsigned i = 0; i < nthr; i++)
        if (threads[i].state == T_BAR) threads[i].state = T_READY, threads[i].bar_result = (int)bar_count;
      nbar = 0, bar_count = 0;
    } else if (!progress) deadlock();
  }
}

/* A launch's dynamic shared memory, its bytes (rounded up to 16) ending
 * where an inaccessible page begins: a kernel that reaches past what its
 * launch asked for faults at once, and engine_smem_describe says so. */
enum { SMEM_PAGE = 4096 };
static int set_smem(size_t bytes) {
  size_t page = SMEM_PAGE, need = (bytes + 15) / 16 * 16, size = (need + page - 1) / page * page + page;
  if (size > smem_map_size) {
    if (smem_map) munmap(smem_map, smem_map_size);
    smem_map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (smem_map == MAP_FAILED) return smem_map = NULL, smem_map_size = smem_cap = 0, -1;
    mprotect(smem_map + size - page, page, PROT_NONE);
    smem_map_size = size;
  }
  smem_cap = need, smem = smem_map + smem_map_size - SMEM_PAGE - need;
  return 0;
}

const char *engine_smem_describe(const void *addr, char *buf, size_t n) {
  const unsigned char *a = addr;
  if (!smem_map || a < smem + smem_cap || a >= smem_map + smem_map_size) return NULL;
  return snprintf(buf, n, "an access %td bytes past the %zu bytes of dynamic shared memory the launch asked for",
                  a - (smem + smem_cap), (size_t)L->smem), buf;
}

int engine_run(const EmuLaunch *l) {
  L = l;
  vars = l->mod->vars;
  nthr = l->block.x * l->block.y * l->block.z;
  plain = !l->k->may_sync;
  vars->gridDim = l->grid, vars->blockDim = l->block;
  engine_kernel = l->k->name;
  for (unsigned wi = 0; wi < WARPS; wi++) {
    unsigned have = nthr > wi * 32 ? nthr - wi * 32 : 0;
    warps[wi].exists = have >= 32 ? 0xffffffffu : (1u << have) - 1;
  }
  if (l->smem && set_smem(l->smem)) return snprintf(emu_error, sizeof emu_error, "out of memory"), -1;
  if (l->smem) memset(smem, 0xff, smem_cap);   /* shared memory starts as garbage */
  uint64_t nblocks = (uint64_t)l->grid.x * l->grid.y * l->grid.z, seed = l->seed;
  if (nblocks > (1u << 28))
    return snprintf(emu_error, sizeof emu_error, "kernel %s: the emulator runs at most 2^28 blocks a launch",
                    l->k->name), -1;
  unsigned *bperm = malloc(nblocks * sizeof *bperm), tperm[MAX_THREADS];
  if (!bperm) return snprintf(emu_error, sizeof emu_error, "out of memory"), -1;
  order(bperm, (unsigned)nblocks, l->order, &seed);
  order(tperm, nthr, l->order, &seed);
  volatile int rc = 0;
  illegal = timed_out = false;
  const char *to = getenv("LMC_CUDA_EMU_TIMEOUT");
  timeout_s = to ? atof(to) : 0;
  if (sigsetjmp(fail_jb, 1)) {
    if (from_fiber) IN_SCHED();
    engine_abort();
    rc = illegal ? -2 : timed_out ? -3 : -1;
  } else {
    if (timeout_s > 0) watchdog(timeout_s);
    for (uint64_t i = 0; i < nblocks; i++) {
      unsigned b = bperm[i];
      engine_block = vars->blockIdx = (EmuDim){b % l->grid.x, b / l->grid.x % l->grid.y, b / (l->grid.x * l->grid.y)};
      if (plain) run_plain(tperm);
      else run_fibers(tperm);
    }
  }
  if (timeout_s > 0) watchdog(0);
  free(bperm);
  engine_kernel = NULL;
  return rc;
}

/* test_nvrtc.c: every kernel lmc writes must compile. Compiles each
 * kernels.cu given on the command line with NVRTC (loaded with dlopen, as
 * the CUDA runtime will) for compute_80, checking that the PTX defines
 * every extern "C" __global__ kernel of the source, and for sm_90a (the
 * runtime's target on compute capability 9.0, with wgmma) down to a
 * cubin, so that ptxas assembles any inline PTX and reports every kernel
 * (checked by name too). Needs no GPU. Exits 77 (skipped) when no NVRTC
 * library can be loaded. (A third compile, compute_90's PTX, checked
 * nothing the sm_90a one does not, at a third of the test's time.)
 * Usage: test_nvrtc [-I DIR] [--ptx | --syntax | --cubin | --parts] FILE.cu...
 * (DIR: where included headers such as templates/tensor_cores.cuh are;
 * --ptx: the next file for compute_80 alone, a third of the time, where
 * its kernels' cubins are compiled in the other files; --syntax: the next
 * file through NVRTC's front end alone for compute_80
 * (--fdevice-syntax-only: every template the kernels use instantiated,
 * every error a full compile's front end finds, no PTX), where another
 * file's compute_80 PTX and sm_90a cubins generate the same code: a
 * hundredth of --ptx's time; --cubin: the next file for sm_90a alone,
 * where the other files' compute_80 compiles take the same code paths;
 * --parts: the next file's parts each alone, check_parts) */
#include <dlfcn.h>
#include <nvrtc.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef nvrtcResult (*Create)(nvrtcProgram *, const char *, const char *, int, const char *const *,
                              const char *const *);
typedef nvrtcResult (*Compile)(nvrtcProgram, int, const char *const *);
typedef nvrtcResult (*GetSize)(nvrtcProgram, size_t *);
typedef nvrtcResult (*GetText)(nvrtcProgram, char *);
typedef nvrtcResult (*Destroy)(nvrtcProgram *);
typedef const char *(*ErrStr)(nvrtcResult);

static struct {
  Create create;
  Compile compile;
  GetSize log_size, ptx_size, cubin_size;
  GetText log, ptx;
  Destroy destroy;
  ErrStr err;
} nv;

static void *load(void) {
  const char *names[] = {"libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12",
                         "/usr/local/cuda/lib64/libnvrtc.so", NULL};
  for (int i = 0; names[i]; i++) {
    void *h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (h) return h;
  }
  return NULL;
}

static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *s = malloc(n + 1);
  if (fread(s, 1, n, f) != (size_t)n) n = 0;
  s[n] = 0;
  fclose(f);
  return s;
}

/* ptxas's report (-v) per kernel: registers, shared memory, spills and the
 * stack frame; a spill or a stack frame in attention, the optimizer or a
 * generated kernel fails (they are written to fit in registers: a stack
 * frame without spills is a register array the compiler put in local
 * memory, which made attention's first 32-row forward 2.5x slower on an
 * H200, run 16). */
/* What ptxas spills today where it does (this toolkit, sm_90a; bytes of
 * stack frame plus spill stores and loads), by the bundle's storage: each
 * kernel here may spill up to its budget and no more, every other strict
 * kernel not at all. Found when this check learnt to read ptxas's report
 * (run 16: it had read none, so nothing could fail); remeasured when the
 * tile loader went to constant-stride passes, when attention's blocks
 * took their head from a section of the grid, and (2026-11-28) when the
 * budgets went by storage: a name's fp32-storage budget had let its bf16
 * kernel spill as much (the two-stage forward at head dim 96, 0 bytes in
 * bf16, could have spilled 400). fp32 storage (a checking mode) goes to
 * cubins at GPT-2's head dim 64 alone; at 96 and MoE's 32 through the
 * front end (e2e/kernels.sh). */
static const struct { const char *name; bool bf16; int bytes; } known_spills[] = {
    {"lmc_attention_bwd_dq_k96", true, 24},           /* fp32 products on the CUDA cores, below medium precision */
    {"lmc_attention_bwd_mma_dkv_k96", true, 88},      /* the 32-query kernel, not the default */
    {"lmc_attention_bwd_mma_dkv_k64", true, 36},      /* GPT-2's default: the thread's 64-bit key index,
                                                         * stored before the loop, 3 loads a step (SASS) */
    {"lmc_attention_bwd_mma_dkv_k64", false, 188},    /* fp32 storage: fp32 tiles loaded */
    {"lmc_attention_bwd_mma_dq_r64_k64", false, 120}, /* fp32 storage */
};

static int spill_budget(const char *name, bool bf16) {
  for (size_t i = 0; i < sizeof known_spills / sizeof *known_spills; i++)
    if (!strcmp(known_spills[i].name, name) && known_spills[i].bf16 == bf16) return known_spills[i].bytes;
  return 0;
}

/* a bundle's storage: bf16 where lmc typed its activations so */
static bool bf16_storage(const char *src) { return strstr(src, "\ntypedef bf16 act;") != NULL; }

static bool ptxas_stats(const char *path, const char *arch, const char *log, bool bf16) {
  bool ok = true;
  for (const char *p = log; (p = strstr(p, "Compiling entry function '"));) {
    char name[128] = "";
    sscanf(p + 26, "%127[A-Za-z0-9_]", name);
    const char *next = strstr(p + 1, "Compiling entry function '");
    /* "ptxas         .     672 bytes stack frame, 0 bytes spill stores, ..." */
    const char *stack = strstr(p, " bytes stack frame"), *used = strstr(p, "Used ");
    int stores = 0, loads = 0, regs = 0, smem = 0, frame = 0;
    if (stack && (!next || stack < next)) {
      const char *num = stack;
      while (num > p && num[-1] >= '0' && num[-1] <= '9') num--;
      if (sscanf(num, "%d bytes stack frame, %d bytes spill stores, %d bytes spill loads", &frame, &stores, &loads) != 3)
        printf("  %s %s: ptxas's report unread\n", arch, name), ok = false;
    }
    if (used && (!next || used < next)) {
      sscanf(used, "Used %d registers", &regs);
      const char *sm = strstr(used, "bytes smem");
      if (sm && (!next || sm < next)) {
        const char *q = sm - 2;
        while (q > used && q[-1] >= '0' && q[-1] <= '9') q--;
        smem = atoi(q);
      }
    }
    bool strict = !strncmp(name, "lmc_attention", 13) || !strncmp(name, "lmc_adamw", 9) || !strncmp(name, "lmc_fused", 9);
    int budget = spill_budget(name, bf16);
    bool bad = strict && stores + loads + frame > budget;
    printf("  %s %s: %d registers, %d bytes smem, %d/%d bytes spilled, %d bytes stack%s\n", arch, name, regs, smem,
           stores, loads, frame, !bad ? "" : budget ? "  FAIL (past its known spills)" : "  FAIL (no spills nor stack allowed)");
    ok &= !bad;
    p += 26;
  }
  if (!ok) printf("FAIL %s (%s): a kernel that must not spill spills or keeps an array in local memory\n", path, arch);
  /* "(C7520) Potential Performance Loss: wgmma.mma_async instructions are
   * serialized due to ... in the function 'NAME'" (C7513 and others give
   * other reasons): ptxas waits for each wgmma before the next, in the
   * whole kernel (a wgmma's register written after the fence before it
   * did it to attention's first wgmma forward; copies of P between two
   * tiles' registers, to the pipelined forward at head dim 64) */
  for (const char *p = log; (p = strstr(p, "wgmma.mma_async instructions are serialized")); p++) {
    const char *f = strstr(p, "in the function '");
    char name[128] = "?";
    if (f) sscanf(f + 17, "%127[A-Za-z0-9_]", name);
    printf("FAIL %s (%s): ptxas serializes the wgmma instructions of %s\n", path, arch, name), ok = false;
  }
  return ok;
}

/* The extern "C" __global__ kernels of src that out (PTX or ptxas's
 * report) does not name as fmt does (%s: the kernel's name), each said. */
/* The next __global__ kernel of the source from *p on: its name into
 * name (128 bytes), *p past it; false at the end */
static bool next_kernel(const char **p, char *name) {
  while ((*p = strstr(*p, "__global__ void "))) {
    const char *q = *p += 16;
    if (!strncmp(q, "__launch_bounds__(", 18) && (q = strchr(q, ')'))) q += 1 + strspn(q + 1, " ");
    if (q && sscanf(q, "%127[A-Za-z0-9_]", name) == 1) return true;
  }
  return false;
}

static int missing_kernels(const char *path, const char *arch, const char *src, const char *out, const char *fmt,
                           const char *what) {
  int missing = 0;
  char name[128], entry[192];
  for (const char *p = src; next_kernel(&p, name);) {
    snprintf(entry, sizeof entry, fmt, name);
    if (!strstr(out, entry)) printf("FAIL %s (%s): no kernel %s in %s\n", path, arch, name, what), missing++;
  }
  return missing;
}

/* Compiles src for one architecture; checks each kernel is in the PTX or
 * in ptxas's report. */
static const char *include_dir;   /* -I DIR */

static int check(const char *path, const char *src, const char *arch, bool syntax) {
  nvrtcProgram prog;
  char opt[64];
  snprintf(opt, sizeof opt, "--gpu-architecture=%s", arch);
  /* the toolkit's headers (cuda_bf16.h, cuda_fp16.h) for sources that include them */
  char inc[600], tpl[1100];
  const char *home = getenv("CUDA_HOME");
  snprintf(inc, sizeof inc, "--include-path=%s/include", home && *home ? home : "/usr/local/cuda");
  snprintf(tpl, sizeof tpl, "--include-path=%s", include_dir ? include_dir : ".");   /* -I: tensor_cores.cuh */
  const char *opts[] = {opt, "--std=c++17", "-default-device", inc, tpl,
                        syntax ? "--fdevice-syntax-only" : "--ptxas-options=-v"};
  bool cubin = !strncmp(arch, "sm_", 3);
  if (nv.create(&prog, src, path, 0, NULL, NULL) != NVRTC_SUCCESS) return 1;
  nvrtcResult rc = nv.compile(prog, cubin || syntax ? 6 : 5, opts);
  if (syntax && rc == NVRTC_ERROR_INVALID_OPTION) {   /* an NVRTC before the option: the whole compile */
    nv.destroy(&prog);
    return check(path, src, arch, false);
  }
  size_t n;
  nv.log_size(prog, &n);
  char *log = malloc(n + 1);
  nv.log(prog, log);
  if (rc != NVRTC_SUCCESS) {
    printf("FAIL %s (%s): %s\n%s\n", path, arch, nv.err(rc), log);
    nv.destroy(&prog);
    return 1;
  }
  if (syntax) {   /* the front end alone: no PTX to look in */
    int kernels = 0;
    char name[128];
    for (const char *p = src; next_kernel(&p, name);) kernels++;
    printf("ok   %s (%s, front end): %d kernels\n", path, arch, kernels);
    free(log);
    nv.destroy(&prog);
    return 0;
  }
  if (cubin) {   /* a real architecture: ptxas ran; the inline PTX assembled */
    size_t bin = 0;
    bool ok = nv.cubin_size && nv.cubin_size(prog, &bin) == NVRTC_SUCCESS && bin > 0;
    printf("%s %s (%s): %zu bytes of cubin\n", ok ? "ok  " : "FAIL", path, arch, bin);
    ok &= ptxas_stats(path, arch, log, bf16_storage(src));
    ok &= !missing_kernels(path, arch, src, log, "Compiling entry function '%s'", "ptxas's report");
    free(log);
    nv.destroy(&prog);
    return !ok;
  }
  nv.ptx_size(prog, &n);
  char *ptx = malloc(n + 1);
  nv.ptx(prog, ptx);
  int kernels = 0, missing = missing_kernels(path, arch, src, ptx, ".entry %s(", "the PTX");
  char name[128];
  for (const char *p = src; next_kernel(&p, name);) kernels++;
  if (!missing) printf("ok   %s (%s): %d kernels, %zu bytes of PTX%s%s\n", path, arch, kernels, n,
                       log[0] > ' ' ? ", log: " : "", log[0] > ' ' ? log : "");
  free(log), free(ptx);
  nv.destroy(&prog);
  return missing ? 1 : 0;
}

/* --parts: src compiled as each of its parts alone (kernels.cu's "//
 * @parts N": the runtime compiles a bundle as up to N programs, one a
 * thread) for sm_90a, as the runtime does on an H100 or H200: every part
 * compiles, ptxas's report of each passes ptxas_stats (in place of the
 * whole file's sm_90a compile, at about its cost), and every kernel of the
 * file is in exactly one part. */
static int check_parts(const char *path, const char *src) {
  const char *mark = strstr(src, "\n// @parts ");
  int parts = mark ? atoi(mark + 11) : 0;
  if (parts < 1 || parts > 1024) return printf("FAIL %s: no \"// @parts N\" line\n", path), 1;
  enum { MAXK = 512 };
  char *names[MAXK];
  int nk = 0, seen[MAXK] = {0}, bad = 0;
  char name[128];
  for (const char *p = src; nk < MAXK && next_kernel(&p, name);) names[nk++] = strdup(name);
  for (int p = 0; p < parts; p++) {
    nvrtcProgram prog;
    char P[48], I[48];
    snprintf(P, sizeof P, "-DLMC_PROGRAMS=%d", parts), snprintf(I, sizeof I, "-DLMC_PROGRAM=%d", p);
    const char *opts[] = {"--gpu-architecture=sm_90a", "--std=c++17", "-default-device", "--ptxas-options=-v", P, I};
    if (nv.create(&prog, src, path, 0, NULL, NULL) != NVRTC_SUCCESS) return 1;
    nvrtcResult rc = nv.compile(prog, 6, opts);
    size_t n;
    nv.log_size(prog, &n);
    char *log = malloc(n + 1), entry[192];
    nv.log(prog, log);
    if (rc != NVRTC_SUCCESS) printf("FAIL %s: part %d of %d alone does not compile: %s\n%s\n", path, p, parts, nv.err(rc), log), bad++;
    else {
      bad += !ptxas_stats(path, "sm_90a", log, bf16_storage(src));
      for (int k = 0; k < nk; k++) {
        snprintf(entry, sizeof entry, "Compiling entry function '%s'", names[k]);
        for (const char *e = log; (e = strstr(e, entry)); e++) seen[k]++;
      }
    }
    free(log), nv.destroy(&prog);
  }
  for (int k = 0; k < nk; k++) {
    if (seen[k] != 1) printf("FAIL %s: kernel %s is in %d of its %d parts (must be in one)\n", path, names[k], seen[k], parts), bad++;
    free(names[k]);
  }
  if (!bad) printf("ok   %s: %d kernels, each in one of its %d parts (sm_90a)\n", path, nk, parts);
  return bad ? 1 : 0;
}

int main(int argc, char **argv) {
  void *h = load();
  if (!h) {
    printf("skipped: no NVRTC library to load (install the CUDA toolkit)\n");
    return 77;
  }
  nv.create = (Create)dlsym(h, "nvrtcCreateProgram");
  nv.compile = (Compile)dlsym(h, "nvrtcCompileProgram");
  nv.log_size = (GetSize)dlsym(h, "nvrtcGetProgramLogSize");
  nv.log = (GetText)dlsym(h, "nvrtcGetProgramLog");
  nv.ptx_size = (GetSize)dlsym(h, "nvrtcGetPTXSize");
  nv.cubin_size = (GetSize)dlsym(h, "nvrtcGetCUBINSize");
  nv.ptx = (GetText)dlsym(h, "nvrtcGetPTX");
  nv.destroy = (Destroy)dlsym(h, "nvrtcDestroyProgram");
  nv.err = (ErrStr)dlsym(h, "nvrtcGetErrorString");
  if (!nv.create || !nv.compile || !nv.ptx || !nv.err) {
    printf("FAIL: the NVRTC library lacks its functions\n");
    return 1;
  }
  int failed = 0, total = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "-I") && i + 1 < argc) {
      include_dir = argv[++i];
      continue;
    }
    bool ptx_only = !strcmp(argv[i], "--ptx") && i + 1 < argc;   /* the next file to PTX alone, no ptxas */
    bool syntax = !strcmp(argv[i], "--syntax") && i + 1 < argc;   /* the next file through the front end alone */
    bool cubin_only = !strcmp(argv[i], "--cubin") && i + 1 < argc;   /* the next file for sm_90a alone */
    bool parts = !strcmp(argv[i], "--parts") && i + 1 < argc;   /* the next file part by part alone */
    if (ptx_only || syntax || cubin_only || parts) i++;
    char *src = slurp(argv[i]);
    if (!src) {
      printf("FAIL cannot read %s\n", argv[i]);
      failed++, total++;
      continue;
    }
    const char *archs[] = {"compute_80", "sm_90a"};
    if (parts) failed += check_parts(argv[i], src), total++;
    else if (syntax) failed += check(argv[i], src, archs[0], true), total++;
    else
    for (int a = cubin_only; a < (ptx_only ? 1 : 2); a++) failed += check(argv[i], src, archs[a], false), total++;
    free(src);
  }
  printf("%d passed, %d failed\n", total - failed, failed);
  return failed ? 1 : 0;
}

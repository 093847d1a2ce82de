/* cuda.c: the CUDA backend, behind the same interface as cpu.c. Nothing is
 * linked: the driver (libcuda.so.1), NVRTC and cuBLASLt are loaded with
 * dlopen when --backend cuda asks for them, so CPU-only runs never touch
 * CUDA. The bundle's kernels.cu is compiled with NVRTC for this device, in
 * parts as several programs at once, one a thread (cached on disk by
 * source hash and architecture); GEMMs go to cuBLASLt (the weights'
 * gradients' on a second stream, beside the rest of the backward pass),
 * attention to lmc's flash attention kernels; all-reduces to NCCL when
 * every rank has its own GPU (else, and for pipeline transfers, staged
 * through host memory and MPI). Storage is fp32, the products' precision
 * --matmul-precision's, or under a bf16 plan the kernels store the bf16
 * values in bf16 (`typedef bf16 act;`) and cuBLASLt takes them as they are. */
#include "lmrt.h"
#include <ctype.h>
#include <cublasLt.h>
#include <cuda.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <nccl.h>
#include <nvrtc.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

static struct {
  CUresult (*init)(unsigned);
  CUresult (*device_get)(CUdevice *, int);
  CUresult (*device_count)(int *);
  CUresult (*attr)(int *, CUdevice_attribute, CUdevice);
  CUresult (*retain)(CUcontext *, CUdevice);
  CUresult (*set_current)(CUcontext);
  CUresult (*alloc)(CUdeviceptr *, size_t);
  CUresult (*free)(CUdeviceptr);
  CUresult (*htod)(CUdeviceptr, const void *, size_t);
  CUresult (*htod_async)(CUdeviceptr, const void *, size_t, CUstream);
  CUresult (*dtoh)(void *, CUdeviceptr, size_t);
  CUresult (*dtoh_async)(void *, CUdeviceptr, size_t, CUstream);
  CUresult (*memset8)(CUdeviceptr, unsigned char, size_t);
  CUresult (*memset8_async)(CUdeviceptr, unsigned char, size_t, CUstream);
  CUresult (*stream_create)(CUstream *, unsigned);
  CUresult (*capture_begin)(CUstream, CUstreamCaptureMode);
  CUresult (*capture_end)(CUstream, CUgraph *);
  CUresult (*graph_instantiate)(CUgraphExec *, CUgraph, unsigned long long);
  CUresult (*graph_launch)(CUgraphExec, CUstream);
  CUresult (*graph_exec_destroy)(CUgraphExec);
  CUresult (*graph_destroy)(CUgraph);
  CUresult (*load)(CUmodule *, const void *);
  CUresult (*getfn)(CUfunction *, CUmodule, const char *);
  CUresult (*launch)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                     CUstream, void **, void **);
  CUresult (*sync)(void);
  CUresult (*errstr)(CUresult, const char **);
  nvrtcResult (*create)(nvrtcProgram *, const char *, const char *, int, const char *const *,
                        const char *const *);
  nvrtcResult (*compile)(nvrtcProgram, int, const char *const *);
  nvrtcResult (*log_size)(nvrtcProgram, size_t *);
  nvrtcResult (*log)(nvrtcProgram, char *);
  nvrtcResult (*cubin_size)(nvrtcProgram, size_t *);
  nvrtcResult (*cubin)(nvrtcProgram, char *);
  nvrtcResult (*destroy)(nvrtcProgram *);
  cublasStatus_t (*lt_create)(cublasLtHandle_t *);
  cublasStatus_t (*desc_create)(cublasLtMatmulDesc_t *, cublasComputeType_t, cudaDataType_t);
  cublasStatus_t (*desc_set)(cublasLtMatmulDesc_t, cublasLtMatmulDescAttributes_t, const void *, size_t);
  cublasStatus_t (*desc_destroy)(cublasLtMatmulDesc_t);
  cublasStatus_t (*layout_create)(cublasLtMatrixLayout_t *, cudaDataType, uint64_t, uint64_t, int64_t);
  cublasStatus_t (*layout_destroy)(cublasLtMatrixLayout_t);
  cublasStatus_t (*layout_set)(cublasLtMatrixLayout_t, cublasLtMatrixLayoutAttribute_t, const void *, size_t);
  cublasStatus_t (*matmul)(cublasLtHandle_t, cublasLtMatmulDesc_t, const void *, const void *,
                           cublasLtMatrixLayout_t, const void *, cublasLtMatrixLayout_t, const void *,
                           const void *, cublasLtMatrixLayout_t, void *, cublasLtMatrixLayout_t,
                           const cublasLtMatmulAlgo_t *, void *, size_t, cudaStream_t);
  cublasStatus_t (*pref_create)(cublasLtMatmulPreference_t *);
  cublasStatus_t (*pref_set)(cublasLtMatmulPreference_t, cublasLtMatmulPreferenceAttributes_t, const void *, size_t);
  cublasStatus_t (*pref_destroy)(cublasLtMatmulPreference_t);
  cublasStatus_t (*heuristic)(cublasLtHandle_t, cublasLtMatmulDesc_t, cublasLtMatrixLayout_t, cublasLtMatrixLayout_t,
                              cublasLtMatrixLayout_t, cublasLtMatrixLayout_t, cublasLtMatmulPreference_t, int,
                              cublasLtMatmulHeuristicResult_t *, int *);
  CUresult (*stream_query)(CUstream);
  CUresult (*func_set)(CUfunction, CUfunction_attribute, int);
} cu;

/* NCCL, when the all-reduces take it: one communicator per mesh axis */
static struct {
  ncclResult_t (*get_id)(ncclUniqueId *);
  ncclResult_t (*init)(ncclComm_t *, int, ncclUniqueId, int);
  ncclResult_t (*allreduce)(const void *, void *, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t, cudaStream_t);
  ncclResult_t (*async_error)(ncclComm_t, ncclResult_t *);
  ncclResult_t (*abort)(ncclComm_t);
  ncclResult_t (*send)(const void *, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t);
  ncclResult_t (*recv)(void *, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t);
  ncclResult_t (*group_start)(void), (*group_end)(void);
  const char *(*errstr)(ncclResult_t);
} nc;
static ncclComm_t ncomm[4];
static ncclComm_t pcomm[2];   /* the pipeline's transfers over the pp group: activations, gradients */
static int collectives;   /* CC_AUTO, CC_NCCL, CC_MPI */
static bool use_nccl;

static CUmodule modules[64];   /* the bundle's kernels: one module an NVRTC program (load_kernels) */
static int nmodules;
static CUstream st;   /* all of the backend's work, in order; it waits for the legacy stream and it for it */
static CUstream side_st;   /* the weights' gradients beside it (cuda_side_begin) */
static bool side_on, side_warm;   /* the weights' gradients on a second stream (cuda_side_begin): asked, allowed */
static bool emulated;   /* the emulated CUDA platform (runtime/emu/) stands in for the GPU */
static cublasLtHandle_t lt;
static CUdeviceptr workspace, scratch_rows, scratch_part;
static size_t workspace_size = 32 << 20, scratch_rows_n;
static int sm;   /* compute capability, e.g. 90 */
static int l2_bytes;   /* the device's L2 cache */
static int sm_count;   /* its multiprocessors */
static int precision = MP_MEDIUM;   /* MP_HIGHEST, MP_HIGH, MP_MEDIUM: cuda_matmul_precision */
static bool storage16;   /* the bundle's kernels store activations in bf16 (`typedef bf16 act;`) */

#define CK(call) check_cu((call), #call, __FILE__, __LINE__)
static void check_cu(CUresult rc, const char *what, const char *file, int line) {
  if (rc == CUDA_SUCCESS) return;
  const char *s = "unknown error";
  if (cu.errstr) cu.errstr(rc, &s);
  rt_die("CUDA: %s failed at %s:%d: %s", what, file, line, s);
}

#define LT(call) check_lt((call), #call, __FILE__, __LINE__)
static void check_lt(cublasStatus_t rc, const char *what, const char *file, int line) {
  if (rc != CUBLAS_STATUS_SUCCESS) rt_die("cuBLASLt: %s failed at %s:%d: status %d", what, file, line, (int)rc);
}

static void *open_lib(const char *const *names) {
  for (int i = 0; names[i]; i++) {
    void *h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (h) return h;
  }
  return NULL;
}

#define SYM(h, field, name) (*(void **)&cu.field = dlsym(h, name))

/* Optional: events, for the profile's op times (without them it times
 * each op with a host wait) and for the all-reduces overlapped with the
 * backward pass (without them they run at the wait). */
static struct {
  CUresult (*create)(CUevent *, unsigned);
  CUresult (*record)(CUevent, CUstream);
  CUresult (*sync)(CUevent);
  CUresult (*elapsed)(float *, CUevent, CUevent);
  CUresult (*wait)(CUstream, CUevent, unsigned);
  CUresult (*copy)(CUdeviceptr, CUdeviceptr, size_t, CUstream);   /* and for the pipeline's NCCL sends */
  CUresult (*destroy)(CUevent);
  CUresult (*query)(CUevent);   /* (and for a step's NCCL collectives watched at its end) */
} ev;
static CUresult (*device_name)(char *, int, CUdevice);   /* (optional: the attention tuner's file names the GPU) */
static CUresult (*mem_get_info)(size_t *, size_t *);      /* (optional: device memory free and in all) */
static CUdevice device;
static CUcontext context;   /* made current by other threads that call the driver (cuda_pin) */
static CUresult (*host_register)(void *, size_t, unsigned);   /* (optional: host memory pinned) */
static CUresult (*host_unregister)(void *);
static uint64_t kernels_hash;   /* kernels.cu's, as the cubin cache names it */
static void fa_file_at(const char *cache);
static void lt_file_at(const char *cache);
static size_t (*lt_version)(void);   /* (optional: the GEMM picks' file names the cuBLASLt version) */

/* Optional too: what cuBLASLt's heuristic picks (LMC_GEMM_SHOW=1) */
static cublasStatus_t (*algo_config_get)(const cublasLtMatmulAlgo_t *, cublasLtMatmulAlgoConfigAttributes_t, void *,
                                         size_t, size_t *);

/* The emulated platform's library: $LMC_CUDA_EMU_LIB, the one this build
 * made, or liblmc_cudaemu.so beside the program. */
static void *open_emu(void) {
  static char here[1100];
  const char *env = getenv("LMC_CUDA_EMU_LIB");
#ifdef LMC_EMU_LIB
  const char *built = LMC_EMU_LIB;
#else
  const char *built = NULL;
#endif
  ssize_t k = readlink("/proc/self/exe", here, sizeof here - 32);
  if (k > 0) {
    here[k] = 0;
    char *slash = strrchr(here, '/');
    strcpy(slash ? slash + 1 : here, "liblmc_cudaemu.so");
  }
  const char *names[] = {env && *env ? env : "-", built ? built : "-", k > 0 ? here : "-", NULL};
  return open_lib(names);
}

static bool load_driver(char *why, size_t n) {
  const char *drv[] = {"libcuda.so.1", "libcuda.so", NULL};
  const char *rtc[] = {"libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12", "/usr/local/cuda/lib64/libnvrtc.so", NULL};
  const char *blt[] = {"libcublasLt.so", "libcublasLt.so.13", "libcublasLt.so.12",
                       "/usr/local/cuda/lib64/libcublasLt.so", NULL};
  void *d = emulated ? open_emu() : open_lib(drv), *r = emulated ? d : open_lib(rtc), *b = emulated ? d : open_lib(blt);
  if (!d && emulated) return snprintf(why, n, "no emulated CUDA platform (liblmc_cudaemu.so; set LMC_CUDA_EMU_LIB)"), false;
  if (!d) return snprintf(why, n, "no CUDA driver (libcuda.so.1)"), false;
  if (!r || !b) return snprintf(why, n, "no NVRTC or cuBLASLt library"), false;
  SYM(d, init, "cuInit"), SYM(d, device_get, "cuDeviceGet"), SYM(d, device_count, "cuDeviceGetCount");
  SYM(d, attr, "cuDeviceGetAttribute"), SYM(d, retain, "cuDevicePrimaryCtxRetain");
  SYM(d, set_current, "cuCtxSetCurrent"), SYM(d, alloc, "cuMemAlloc_v2"), SYM(d, free, "cuMemFree_v2");
  SYM(d, htod, "cuMemcpyHtoD_v2"), SYM(d, htod_async, "cuMemcpyHtoDAsync_v2"), SYM(d, dtoh, "cuMemcpyDtoH_v2"), SYM(d, dtoh_async, "cuMemcpyDtoHAsync_v2"), SYM(d, memset8, "cuMemsetD8_v2");
  SYM(d, load, "cuModuleLoadData"), SYM(d, getfn, "cuModuleGetFunction"), SYM(d, launch, "cuLaunchKernel");
  SYM(d, sync, "cuCtxSynchronize"), SYM(d, errstr, "cuGetErrorString");
  SYM(d, memset8_async, "cuMemsetD8Async"), SYM(d, stream_create, "cuStreamCreate");
  SYM(d, capture_begin, "cuStreamBeginCapture_v2"), SYM(d, capture_end, "cuStreamEndCapture");
  SYM(d, graph_instantiate, "cuGraphInstantiateWithFlags"), SYM(d, graph_launch, "cuGraphLaunch");
  SYM(d, graph_exec_destroy, "cuGraphExecDestroy"), SYM(d, graph_destroy, "cuGraphDestroy");
  SYM(d, stream_query, "cuStreamQuery"), SYM(d, func_set, "cuFuncSetAttribute");
  SYM(r, create, "nvrtcCreateProgram"), SYM(r, compile, "nvrtcCompileProgram");
  SYM(r, log_size, "nvrtcGetProgramLogSize"), SYM(r, log, "nvrtcGetProgramLog");
  SYM(r, cubin_size, "nvrtcGetCUBINSize"), SYM(r, cubin, "nvrtcGetCUBIN"), SYM(r, destroy, "nvrtcDestroyProgram");
  SYM(b, lt_create, "cublasLtCreate"), SYM(b, desc_create, "cublasLtMatmulDescCreate");
  SYM(b, desc_set, "cublasLtMatmulDescSetAttribute"), SYM(b, desc_destroy, "cublasLtMatmulDescDestroy");
  SYM(b, layout_create, "cublasLtMatrixLayoutCreate"), SYM(b, layout_destroy, "cublasLtMatrixLayoutDestroy");
  SYM(b, layout_set, "cublasLtMatrixLayoutSetAttribute");
  SYM(b, matmul, "cublasLtMatmul"), SYM(b, pref_create, "cublasLtMatmulPreferenceCreate");
  SYM(b, pref_set, "cublasLtMatmulPreferenceSetAttribute"), SYM(b, pref_destroy, "cublasLtMatmulPreferenceDestroy");
  SYM(b, heuristic, "cublasLtMatmulAlgoGetHeuristic");
  *(void **)&ev.create = dlsym(d, "cuEventCreate"), *(void **)&ev.record = dlsym(d, "cuEventRecord");
  *(void **)&ev.sync = dlsym(d, "cuEventSynchronize"), *(void **)&ev.elapsed = dlsym(d, "cuEventElapsedTime_v2");
  if (!ev.elapsed) *(void **)&ev.elapsed = dlsym(d, "cuEventElapsedTime");
  *(void **)&ev.wait = dlsym(d, "cuStreamWaitEvent"), *(void **)&ev.copy = dlsym(d, "cuMemcpyDtoDAsync_v2");
  *(void **)&ev.destroy = dlsym(d, "cuEventDestroy_v2"), *(void **)&ev.query = dlsym(d, "cuEventQuery");
  *(void **)&device_name = dlsym(d, "cuDeviceGetName");
  *(void **)&mem_get_info = dlsym(d, "cuMemGetInfo_v2");
  *(void **)&host_register = dlsym(d, "cuMemHostRegister_v2");
  *(void **)&host_unregister = dlsym(d, "cuMemHostUnregister");
  *(void **)&algo_config_get = dlsym(b, "cublasLtMatmulAlgoConfigGetAttribute");
  *(void **)&lt_version = dlsym(b, "cublasLtGetVersion");
  void **f = (void **)&cu;
  for (size_t i = 0; i < sizeof cu / sizeof(void *); i++)
    if (!f[i]) return snprintf(why, n, "a CUDA library lacks a function this build needs"), false;
  int count = 0;
  CUresult rc = cu.init(0);
  if (rc != CUDA_SUCCESS && rc != CUDA_ERROR_NO_DEVICE) {
    const char *e = "unknown error";
    if (cu.errstr) cu.errstr(rc, &e);
    return snprintf(why, n, "the CUDA driver did not start: %s", e), false;
  }
  if (rc != CUDA_SUCCESS || cu.device_count(&count) != CUDA_SUCCESS || count == 0)
    return snprintf(why, n, "no CUDA device"), false;
  return true;
}

/* ---- kernels: NVRTC, cached on disk ---- */

/* path's bytes and a NUL after them (kernels.cu's text, the cached
 * cubins), their count in *n where n is given; NULL where it cannot be
 * read whole */
static char *read_file(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long len = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *s = rt_xmalloc(len > 0 ? len + 1 : 1);
  bool whole = len >= 0 && fread(s, 1, len, f) == (size_t)len;
  fclose(f);
  if (!whole) return free(s), NULL;
  s[len] = 0;
  if (n) *n = (size_t)len;
  return s;
}

/* The architecture's name's ending: sm_90a on compute capability 9.0
 * (its wgmma, kernels.cu's LMC_WGMMA), else none */
static const char *sm_feat(void) { return sm == 90 ? "a" : ""; }

/* One NVRTC program of a bundle's kernels.cu: program p of P (the
 * prelude's "Parts"), compiled by a thread of compile_programs; its cubin
 * or, where NVRTC fails, its log. */
typedef struct Program {
  const char *src, *name;
  int p, P;
  nvrtcResult rc;
  char *bin, *log;
  size_t n;
} Program;

static void compile_program(Program *x) {
  nvrtcProgram prog;
  char arch[32], programs[32], program[32];
  snprintf(arch, sizeof arch, "--gpu-architecture=sm_%d%s", sm, sm_feat());
  snprintf(programs, sizeof programs, "-DLMC_PROGRAMS=%d", x->P);
  snprintf(program, sizeof program, "-DLMC_PROGRAM=%d", x->p);
  const char *opts[] = {arch, "--std=c++17", "-default-device", programs, program};
  if ((x->rc = cu.create(&prog, x->src, x->name, 0, NULL, NULL)) != NVRTC_SUCCESS) return;
  x->rc = cu.compile(prog, 5, opts);
  size_t ln = 0;
  cu.log_size(prog, &ln);
  x->log = rt_xmalloc(ln + 1), x->log[0] = 0;
  cu.log(prog, x->log);
  if (x->rc == NVRTC_SUCCESS) {
    cu.cubin_size(prog, &x->n);
    x->bin = rt_xmalloc(x->n);
    cu.cubin(prog, x->bin);
  }
  cu.destroy(&prog);
}

static struct { Program *all; int n, next; pthread_mutex_t lock; } queue = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void *compile_worker(void *arg) {
  (void)arg;
  for (;;) {
    pthread_mutex_lock(&queue.lock);
    int i = queue.next < queue.n ? queue.next++ : -1;
    pthread_mutex_unlock(&queue.lock);
    if (i < 0) return NULL;
    compile_program(&queue.all[i]);
  }
}

/* Threads for NVRTC: LMC_JIT_THREADS (cuda_backend reads it), else the
 * CPUs this process may run on; at most 64 */
static int jit_threads_asked;
static int jit_threads(void) {
  int n = jit_threads_asked;
  if (n < 1) {
    cpu_set_t set;
    n = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
  }
  return n < 1 ? 1 : n > 64 ? 64 : n;
}

static double jit_seconds;   /* the last load_kernels: compiling (cold) or loading the cached cubins (warm) */
static bool jit_cold;
static int jit_programs, jit_nthreads;
static bool jit_saved;   /* the cubins cold compiled went into the cache */

/* src's kernels as P programs (P: the parts kernels.cu names, at most the
 * threads), compiled at once, one a thread: NVRTC takes about as long
 * for each kernel alone as in one program, and the attention kernels are
 * most of that (22 s of llama-large's bundle in one program on one core,
 * 1.6 s the longest kernel). Each program's cubin, in order; dies with
 * NVRTC's log where one does not compile. */
static Program *compile_programs(const char *src, const char *name, int *np) {
  const char *mark = strstr(src, "\n// @parts ");
  int parts = mark ? atoi(mark + 11) : 1, threads = jit_threads();
  int P = parts < 1 ? 1 : parts < threads ? parts : threads;
  Program *all = calloc(P, sizeof *all);
  if (!all) rt_die("out of memory");
  for (int p = 0; p < P; p++) all[p] = (Program){src, name, p, P, NVRTC_SUCCESS, NULL, NULL, 0};
  queue.all = all, queue.n = P, queue.next = 0;
  pthread_t tid[64];
  int started = 0;
  for (int t = 1; t < P && started < 63; t++)   /* (this thread is one of them) */
    if (pthread_create(&tid[started], NULL, compile_worker, NULL) == 0) started++;
  compile_worker(NULL);
  for (int t = 0; t < started; t++) pthread_join(tid[t], NULL);
  jit_nthreads = started + 1;
  for (int p = 0; p < P; p++)
    if (all[p].rc != NVRTC_SUCCESS)
      rt_die("NVRTC could not compile %s for sm_%d%s (program %d of %d):\n%s", name, sm, sm_feat(), p, P,
             all[p].log ? all[p].log : "(no log)");
  *np = P;
  return all;
}


void cuda_jit_time(double *seconds, bool *cold, int *programs, int *threads, bool *saved) {
  *seconds = jit_seconds, *cold = jit_cold, *programs = jit_programs, *threads = jit_nthreads, *saved = jit_saved;
}

/* The cache holds a bundle's programs in one file: "lmccubin", their
 * count, then each program's size and cubin (8-byte little-endian
 * counts), written whole and renamed into place. */
static const char cache_magic[8] = {'l', 'm', 'c', 'c', 'u', 'b', 'i', 'n'};

/* modules[] from the cubins in image (n bytes); false where they are not
 * a whole cache file or one does not load (stale, damaged: compiled
 * afresh) */
static bool load_modules(const char *image, size_t n) {
  uint64_t count, size;
  if (!image || n < 16 || memcmp(image, cache_magic, 8)) return false;
  memcpy(&count, image + 8, 8);
  if (count < 1 || count > 64) return false;
  size_t at = 16;
  for (uint64_t i = 0; i < count; i++) {
    if (n - at < 8) return false;
    memcpy(&size, image + at, 8), at += 8;
    if (size > n - at || cu.load(&modules[i], image + at) != CUDA_SUCCESS) return false;
    nmodules = (int)i + 1, at += size;
  }
  return at == n;
}

/* The cached cubins at file, loaded; false where there are none (or a
 * part of them did not load: then none is kept) */
static bool load_cached(const char *file) {
  size_t n = 0;
  char *image = read_file(file, &n);
  bool ok = load_modules(image, n);
  free(image);
  if (!ok) nmodules = 0;   /* (the driver keeps what loaded; unused) */
  return ok;
}

/* the programs' cubins as one cache file, written to a temporary name
 * and renamed (a rank or a run killed mid-write leaves no half file) */
static bool save_cache(const char *file, const Program *all, int P) {
  char tmp[1500];
  snprintf(tmp, sizeof tmp, "%s.tmp.%d", file, (int)getpid());
  FILE *o = fopen(tmp, "wb");
  if (!o) return false;
  uint64_t count = (uint64_t)P;
  bool ok = fwrite(cache_magic, 1, 8, o) == 8 && fwrite(&count, 8, 1, o) == 1;
  for (int p = 0; ok && p < P; p++) {
    uint64_t size = all[p].n;
    ok = fwrite(&size, 8, 1, o) == 1 && fwrite(all[p].bin, 1, all[p].n, o) == all[p].n;
  }
  ok = fclose(o) == 0 && ok && rename(tmp, file) == 0;
  if (!ok) unlink(tmp);
  return ok;
}

/* path.lock held (flock) until its descriptor is closed; -1 where
 * locking fails (each process then does the work itself) */
static int file_lock(const char *path) {
  char lock[1500];
  snprintf(lock, sizeof lock, "%s.lock", path);
  int fd = open(lock, O_RDWR | O_CREAT, 0666);
  if (fd >= 0 && flock(fd, LOCK_EX) != 0) close(fd), fd = -1;
  return fd;
}

/* Ranks on one machine share the cache: the first to miss compiles while
 * the others wait on file.lock, then load its cubins (N ranks had each
 * compiled the same kernels at once). */
static int cache_lock(const char *cache, const char *file) {
  rt_mkdirs(cache);   /* (where it cannot be made, the cubins are not kept, as before) */
  return file_lock(file);
}

static void load_kernels(const char *dir) {
  char path[1200], cache[1200], file[1400];
  double t0 = rt_now();
  snprintf(path, sizeof path, "%s/kernels.cu", dir);
  char *src = read_file(path, NULL);
  if (!src) rt_die("cannot read %s (recompile the bundle with this lmc)", path);
  storage16 = strstr(src, "\ntypedef bf16 act;") != NULL;
  const char *home = getenv("XDG_CACHE_HOME");
  snprintf(cache, sizeof cache, "%s%s/lmc/kernels", home ? home : getenv("HOME") ? getenv("HOME") : "/tmp",
           home ? "" : "/.cache");
  kernels_hash = rt_fnv1a(src, strlen(src), 0xcbf29ce484222325ULL);
  snprintf(file, sizeof file, "%s/%016llx-sm_%d%s%s.cubins", cache, (unsigned long long)kernels_hash, sm, sm_feat(),
           emulated ? "-emu" : "");
  fa_file_at(cache);
  lt_file_at(cache);
  jit_cold = false;
  if (!load_cached(file)) {
    int lock = cache_lock(cache, file);
    if (!load_cached(file)) {   /* (another rank's, compiled while this one waited) */
      int P = 0;
      Program *all = compile_programs(src, path, &P);
      jit_saved = save_cache(file, all, P);
      for (int p = 0; p < P; p++) CK(cu.load(&modules[p], all[p].bin)), free(all[p].bin), free(all[p].log);
      free(all);
      nmodules = P, jit_cold = true, jit_programs = P;
    }
    if (lock >= 0) close(lock);
  }
  free(src);
  jit_seconds = rt_now() - t0;
}

/* The modules' kernels by name, looked up once; smem: the dynamic shared
 * memory cuFuncSetAttribute allowed it (launch_smem) */
typedef struct Fn { char name[64]; CUfunction f; unsigned smem; } Fn;

static Fn *fn_find(const char *name) {   /* NULL where no module has it (a bundle an older lmc wrote) */
  static Fn cache[128], spare;
  static int n;
  for (int i = 0; i < n; i++)
    if (!strcmp(cache[i].name, name)) return &cache[i];
  CUfunction f = NULL;
  for (int m = 0; m < nmodules && !f; m++)
    if (cu.getfn(&f, modules[m], name) != CUDA_SUCCESS) f = NULL;
  if (!f) return NULL;
  Fn *e = n < 128 && strlen(name) < sizeof cache[n].name ? &cache[n++] : &spare;   /* spare: not kept */
  snprintf(e->name, sizeof e->name, "%s", name), e->smem = 0, e->f = f;
  return e;
}

static Fn *fn_entry(const char *name) {
  Fn *e = fn_find(name);
  if (!e) rt_die("this bundle's kernels.cu has no %s (an older lmc wrote it): compile the bundle again", name);
  return e;
}

static CUfunction fn(const char *name) { return fn_entry(name)->f; }
static bool fn_has(const char *name) { return fn_find(name) != NULL; }

static unsigned grid_for(int64_t n) {
  int64_t g = (n + 255) / 256;
  return (unsigned)(g < 1 ? 1 : g > 8192 ? 8192 : g);
}

/* Every launch goes to the backend's stream: a grid of gx x gy x gz blocks,
 * or (launch) gx blocks of 256 threads, one a row for row-wise kernels. */
static void launch_grid(const char *name, unsigned gx, unsigned gy, unsigned gz, unsigned threads, void **args) {
  CK(cu.launch(fn(name), gx, gy, gz, threads, 1, 1, 0, st, args, NULL));
}

static void launch(const char *name, unsigned grid, void **args) { launch_grid(name, grid, 1, 1, 256, args); }

/* The norms' row kernels, a block a row: as many warps as the row has
 * vectors of 8 (a 768-wide row used 96 threads of 256 before), at most
 * 256; a width not a multiple of 8 (one element a thread) gets 256. */
static void launch_row(const char *name, long long rows, long long d, void **args) {
  long long t = d % 8 ? 256 : (d / 8 + 31) / 32 * 32;
  launch_grid(name, (unsigned)rows, 1, 1, (unsigned)(t > 256 ? 256 : t), args);
}

/* launch_grid with `bytes` of dynamic shared memory, past the default 48
 * KiB once cuFuncSetAttribute allows it (the kernel's first launch) */
static void launch_smem(const char *name, unsigned gx, unsigned gy, unsigned gz, unsigned threads, unsigned bytes,
                        void **args) {
  Fn *e = fn_entry(name);
  if (e->smem < bytes) {
    CK(cu.func_set(e->f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, (int)bytes));
    e->smem = bytes;
  }
  CK(cu.launch(e->f, gx, gy, gz, threads, 1, 1, bytes, st, args, NULL));
}

/* ---- memory ---- */

static CUdeviceptr dptr(const void *p) { return (CUdeviceptr)(uintptr_t)p; }

/* What is allocated, for the peak next to the plan. */
static struct { CUdeviceptr p; size_t bytes; } *live;
static int nlive, cap_live;
static int64_t now_bytes, peak_bytes;

/* The GPU's name and memory (false where the driver cannot say). */
static bool cuda_memory(double *free_b, double *total, char *name, size_t n) {
  size_t f, t;
  if (!mem_get_info || mem_get_info(&f, &t) != CUDA_SUCCESS) return false;
  if (!device_name || device_name(name, (int)n, device) != CUDA_SUCCESS) snprintf(name, n, "the GPU");
  *free_b = (double)f, *total = (double)t;
  return true;
}

/* An allocation the GPU has no room for ends the run with what it held. */
static _Noreturn void out_of_memory(size_t bytes) {
  double f = 0, t = 0;
  char name[100], has[200] = "", z[4][32];
  if (cuda_memory(&f, &t, name, sizeof name)) snprintf(has, sizeof has, "; %s has %s free of %s", name, rt_bytes(z[2], f), rt_bytes(z[3], t));
  rt_die("out of GPU memory: %s more asked for, with %s allocated by this rank%s (lower the batch, raise "
         "microbatches or split the model; `lmc SPEC --plan N --plan-mem GIB` lists the layouts that fit)", rt_bytes(z[0], bytes),
         rt_bytes(z[1], now_bytes), has);
}

static CUdeviceptr dev_alloc(size_t bytes) {
  CUdeviceptr p;
  bytes = bytes ? bytes : 256;
  CUresult rc = cu.alloc(&p, bytes);
  if (rc == CUDA_ERROR_OUT_OF_MEMORY) out_of_memory(bytes);
  CK(rc);
  if (nlive == cap_live && !(live = realloc(live, (cap_live = cap_live * 2 + 64) * sizeof *live)))
    rt_die("out of memory");
  live[nlive].p = p, live[nlive++].bytes = bytes;
  now_bytes += bytes;
  if (now_bytes > peak_bytes) peak_bytes = now_bytes;
  return p;
}

static void dev_free(CUdeviceptr p) {
  for (int i = 0; i < nlive; i++)
    if (live[i].p == p) {
      now_bytes -= live[i].bytes, live[i] = live[--nlive];
      break;
    }
  CK(cu.free(p));
}

static int64_t cuda_peak_bytes(void) { return peak_bytes; }

static void *cuda_alloc(size_t bytes) {
  CUdeviceptr p = dev_alloc(bytes);
  CK(cu.memset8(p, 0, bytes ? bytes : 256));
  return (void *)(uintptr_t)p;
}

static void forget_sorted(CUdeviceptr ids);
static void forget_counts(CUdeviceptr p);

static void cuda_release(void *p) {
  if (p) forget_sorted(dptr(p)), forget_counts(0), dev_free(dptr(p));
}

static void cuda_upload(void *dst, const double *src, int64_t n) {
  forget_counts(dptr(dst));
  float *h = rt_xmalloc(n * sizeof(float));
  for (int64_t i = 0; i < n; i++) h[i] = (float)src[i];
  CK(cu.htod(dptr(dst), h, n * sizeof(float)));
  free(h);
}

/* Host memory pinned for the copies into it (a checkpoint's shard, kept
 * from save to save): the driver copies pageable memory through a staging
 * buffer of its own at a fraction of the bus's speed. From any thread
 * (ckpt.c pins from the thread that makes the buffer beside training). */
static bool cuda_pin(void *p, size_t n, bool on) {
  if (!host_register || !host_unregister || cu.set_current(context) != CUDA_SUCCESS) return false;
  return (on ? host_register(p, n, 0) : host_unregister(p)) == CUDA_SUCCESS;
}

static void cuda_read(void *dst, const void *src, int64_t n) { CK(cu.dtoh(dst, dptr(src), n * sizeof(float))); }

static void cuda_write(void *dst, const void *src, int64_t n) {
  forget_counts(dptr(dst));
  CK(cu.htod(dptr(dst), src, n * sizeof(float)));
}

static void cuda_download(double *dst, const void *src, int64_t n) {
  float *h = rt_xmalloc(n * sizeof(float));
  cuda_read(h, src, n);
  for (int64_t i = 0; i < n; i++) dst[i] = h[i];
  free(h);
}

static void cuda_zero(void *p, int64_t n) { CK(cu.memset8_async(dptr(p), 0, n * sizeof(float), st)); }

/* A step's scattered zeros in one launch (kernels.cu's lmc_zero_ranges):
 * the table goes to the device the first time (exec.c passes the same
 * one every step) and again only when another comes. */
static void cuda_zero_ranges(void *base, const int64_t (*ranges)[2], int n) {
  static int64_t (*have)[2];
  static int nhave;
  static CUdeviceptr table;
  static int64_t longest;
  static int kernel = -1;   /* the bundle has lmc_zero_ranges (one an older lmc wrote has not) */
  size_t bytes = (size_t)n * 2 * sizeof(int64_t);
  if (kernel < 0) kernel = fn_has("lmc_zero_ranges");
  if (!kernel) {
    for (int i = 0; i < n; i++) cuda_zero((float *)base + ranges[i][0], ranges[i][1]);
    return;
  }
  if (n != nhave || memcmp(have, ranges, bytes)) {
    if (table) dev_free(table);
    free(have);
    table = dev_alloc(bytes), have = rt_xmalloc(bytes), nhave = n;
    memcpy(have, ranges, bytes);
    CK(cu.htod(table, ranges, bytes));
    longest = 0;
    for (int i = 0; i < n; i++) longest = ranges[i][1] > longest ? ranges[i][1] : longest;
  }
  CUdeviceptr b = dptr(base);
  void *a[] = {&b, &table};
  int64_t parts = (longest + 256 * 16 - 1) / (256 * 16);   /* 16 elements a thread */
  launch_grid("lmc_zero_ranges", (unsigned)n, (unsigned)(parts < 1 ? 1 : parts > 65535 ? 65535 : parts), 1, 256, a);
}

/* The token ids an embedding's backward reads get, beside them on the
 * device, their positions sorted by id (stable), made on the host at each
 * upload: the backward sums each id's run of tokens in one block instead
 * of one thread a column walking all tokens. The backward asks for a
 * buffer the first time it meets it (running the plain kernel that once),
 * so other ids, the targets, are never sorted. */
typedef struct Sorted {
  CUdeviceptr ids, order;
  int64_t n;
  int32_t *last;   /* the ids it sorted last (their order is on the device): the same again sorts nothing */
} Sorted;
static Sorted *sorted;
static int nsorted;

static Sorted *sorted_of(CUdeviceptr ids) {
  for (int i = 0; i < nsorted; i++)
    if (sorted[i].ids == ids) return &sorted[i];
  return NULL;
}

/* A microbatch's ids, queued on st behind the work before them (the copy
 * from pageable memory takes the host's data at once), so loading the
 * next microbatch does not wait for the last one's kernels. */
static void cuda_upload_ids(void *dst, const int32_t *src, int64_t n) {
  CK(cu.htod_async(dptr(dst), src, n * sizeof(int32_t), st));
  Sorted *s = sorted_of(dptr(dst));
  if (!s || n <= 0) return;
  if (s->n == n && s->last && !memcmp(s->last, src, n * sizeof *src)) return;   /* (positions: every step the same) */
  if (s->n != n) {
    if (s->order) dev_free(s->order);
    free(s->last);
    s->order = dev_alloc(n * sizeof(int32_t)), s->last = rt_xmalloc(n * sizeof *src), s->n = n;
  }
  int32_t *order = rt_xmalloc(n * sizeof *order);
  rt_order_by_id(order, src, n);   /* (qsort took 0.65 ms of GPT-2's step on the host: util.c) */
  CK(cu.htod_async(s->order, order, n * sizeof *order, st));
  memcpy(s->last, src, n * sizeof *src);
  free(order);
}

static void forget_sorted(CUdeviceptr ids) {
  Sorted *s = sorted_of(ids);
  if (!s) return;
  if (s->order) dev_free(s->order);
  free(s->last);
  *s = sorted[--nsorted];
}

/* The sorted positions of n ids, or 0 (then the next upload makes them). */
static CUdeviceptr sorted_order(CUdeviceptr ids, int64_t n) {
  Sorted *s = sorted_of(ids);
  if (s) return s->n == n ? s->order : 0;
  if (!(sorted = realloc(sorted, (nsorted + 1) * sizeof *sorted))) rt_die("out of memory");
  sorted[nsorted++] = (Sorted){ids, 0, 0, NULL};
  return 0;
}

/* A device scratch buffer of at least n floats, grown as needed. */
static CUdeviceptr scratch(CUdeviceptr *buf, size_t *have, size_t n) {
  if (*have < n) {
    if (*buf) dev_free(*buf);
    *buf = dev_alloc(n * sizeof(float));
    *have = n;
  }
  return *buf;
}

/* ---- GEMM: row-major C[m,n] = alpha op(A) op(B) + beta C through
 * column-major cuBLASLt as C^T = op(B)^T op(A)^T. ty: which of A, B, C
 * are bf16 (G_A, G_B, G_C). Products of bf16 operands are exact and
 * accumulate in fp32 at every matmul precision; fp32 operands multiply at
 * the precision in force. ---- */
enum { G_A = 1, G_B = 2, G_C = 4 };

static void widen_to(CUdeviceptr y, CUdeviceptr x, int64_t n);
static void narrow_to(CUdeviceptr y, CUdeviceptr x, int64_t n);

/* An MoE expert's GEMMs get another row count every step (its share of
 * the tokens), and cublasLtMatmul without an algorithm looks one up for
 * each new shape: on an H200 in bf16 that lookup, not the product, was
 * most of an expert's GEMM. Such GEMMs (`ragged` set around them) look
 * their algorithm up once for the rows rounded up to one of eight sizes
 * an octave (only a dimension that is not the contiguous one of its
 * operands) and keep it; an algorithm cuBLASLt then refuses falls back to
 * its own choice, for that shape class from then on. */
static bool ragged;

typedef struct LtKey {
  int64_t m, n, k, lda, ldb, ldc;
  uint32_t align[3];
  unsigned ty;
  int prec, ep;   /* ep: the epilogue (tuned GEMMs; 0 for the ragged) */
  bool ta, tb, tuned;
} LtKey;
static struct { LtKey key; int state; cublasLtMatmulAlgo_t algo; } lt_algos[4096];   /* state: 0 free, 1 algo, 2 none */

/* the alignment cuBLASLt may assume of an operand (its heuristic takes
 * 256 bytes for granted): 16 (what its bf16 kernels load at a time) or
 * less, since an expert's rows start anywhere */
static uint32_t align_of(CUdeviceptr p) {
  uint32_t a = 16;
  while (a > 1 && p % a) a /= 2;
  return a;
}

static int64_t row_class(int64_t x) {
  int64_t g = 8;
  while (g * 16 <= x) g *= 2;
  return (x + g - 1) / g * g;
}

static int lt_slot(const LtKey *k) {
  uint64_t h = 1469598103934665603u;
  const unsigned char *p = (const unsigned char *)k;
  for (size_t i = 0; i < sizeof *k; i++) h = (h ^ p[i]) * 1099511628211u;
  for (int i = 0, at = (int)(h % 4096); i < 4096; i++, at = (at + 1) % 4096)
    if (!lt_algos[at].state || !memcmp(&lt_algos[at].key, k, sizeof *k)) return at;
  return -1;
}

static void lt_layouts(cublasLtMatrixLayout_t l[3], cudaDataType_t ab, cudaDataType_t cd, LtPlan p) {
  LT(cu.layout_create(&l[0], ab, p.a_rows, p.a_cols, p.a_ld));   /* our B */
  LT(cu.layout_create(&l[1], ab, p.b_rows, p.b_cols, p.b_ld));   /* our A */
  LT(cu.layout_create(&l[2], cd, p.c_rows, p.c_cols, p.c_ld));
}

/* The cache slot of a ragged GEMM's algorithm (looked up the first time),
 * or -1 when the cache is full. */
static int ragged_algo(cublasLtMatmulDesc_t desc, cudaDataType_t ab, cudaDataType_t cd, unsigned ty, bool ta, bool tb,
                       int64_t m, int64_t n, int64_t k, CUdeviceptr a, int64_t lda, CUdeviceptr b, int64_t ldb,
                       CUdeviceptr c, int64_t ldc) {
  static const cublasLtMatmulPreferenceAttributes_t at_least[] = {
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
  LtKey key;
  memset(&key, 0, sizeof key);   /* the padding too: keys compare as bytes */
  key.m = ta ? m : row_class(m), key.n = n, key.k = ta && !tb ? row_class(k) : k;
  key.lda = lda, key.ldb = ldb, key.ldc = ldc, key.ty = ty, key.prec = precision, key.ta = ta, key.tb = tb;
  key.align[0] = align_of(b), key.align[1] = align_of(a), key.align[2] = align_of(c);   /* cuBLASLt's A is our B */
  int at = lt_slot(&key);
  if (at >= 0 && !lt_algos[at].state) {
    cublasLtMatrixLayout_t l[3];
    cublasLtMatmulPreference_t pref;
    cublasLtMatmulHeuristicResult_t r;
    int got = 0;
    lt_layouts(l, ab, cd, lt_plan(ta, tb, key.m, n, key.k, lda, ldb, ldc));
    LT(cu.pref_create(&pref));
    LT(cu.pref_set(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_size, sizeof workspace_size));
    for (int i = 0; i < 4; i++) LT(cu.pref_set(pref, at_least[i], &key.align[i < 3 ? i : 2], sizeof key.align[0]));
    bool ok = cu.heuristic(lt, desc, l[0], l[1], l[2], l[2], pref, 1, &r, &got) == CUBLAS_STATUS_SUCCESS && got > 0;
    cu.pref_destroy(pref), cu.layout_destroy(l[0]), cu.layout_destroy(l[1]), cu.layout_destroy(l[2]);
    lt_algos[at].key = key, lt_algos[at].state = ok ? 1 : 2;
    if (ok) lt_algos[at].algo = r.algo;
  }
  return at;
}

/* ---- GEMM picks kept ----
 * What the tuner below picked for a GEMM (its key and the algorithm's 64
 * bytes, which cuBLASLt lets a program keep and give back to the same
 * library version) goes to a file beside the cubin cache, one per GPU
 * model and cuBLASLt version: later runs on that GPU take the same
 * algorithms without timing them, so they, and a run resumed, give the
 * same bits; deleting the file times them again. A line a pick: "M N K
 * LDA LDB LDC ALIGN0 ALIGN1 ALIGN2 TYPES PREC EPILOGUE TA TB" and the
 * algorithm's 8 words in hex. */
static char lt_file[1400];   /* (empty: kept in memory alone) */
typedef struct LtPick { LtKey key; cublasLtMatmulAlgo_t algo; } LtPick;
static LtPick *lt_picks;
static int nlt_picks;

/* The GPU model's name as a file name's part ("NVIDIA-H200") */
static void gpu_slug(char *dev, size_t n) {
  if (!device_name || device_name(dev, (int)n, device) != CUDA_SUCCESS) snprintf(dev, n, "gpu");
  for (char *c = dev; *c; c++)
    if (!isalnum((unsigned char)*c)) *c = '-';
}

/* A picks' file written whole: into tmp beside path (open_picks), then
 * renamed over it (close_picks), so a reader never sees half of one */
static FILE *open_picks(const char *path, char *tmp, size_t n) {
  snprintf(tmp, n, "%s.tmp.%d", path, (int)getpid());
  return fopen(tmp, "w");
}
static void close_picks(FILE *f, const char *tmp, const char *path) {
  if (f && fclose(f) == 0) rename(tmp, path);
  else unlink(tmp);
}

static char parts_file[1400];   /* the weight gradients' parts timed (parts_pick) */
static void lt_file_at(const char *cache) {
  char dev[100];
  gpu_slug(dev, sizeof dev);
  snprintf(lt_file, sizeof lt_file, "%s/%s-cublaslt%zu%s.gemm", cache, dev, lt_version ? lt_version() : (size_t)0,
           emulated ? "-emu" : "");
  snprintf(parts_file, sizeof parts_file, "%s/%s-cublaslt%zu%s.parts", cache, dev,
           lt_version ? lt_version() : (size_t)0, emulated ? "-emu" : "");
}

static LtPick *lt_known(const LtKey *k) {
  for (int i = 0; i < nlt_picks; i++)
    if (!memcmp(&lt_picks[i].key, k, sizeof *k)) return &lt_picks[i];
  return NULL;
}

static void lt_add(const LtKey *k, const cublasLtMatmulAlgo_t *a) {
  if (lt_known(k)) return;
  if (!(lt_picks = realloc(lt_picks, (nlt_picks + 1) * sizeof *lt_picks))) rt_die("out of memory");
  lt_picks[nlt_picks].key = *k, lt_picks[nlt_picks++].algo = *a;
}

static void lt_read(void) {
  FILE *f = lt_file[0] ? fopen(lt_file, "r") : NULL;
  char line[512];
  while (f && fgets(line, sizeof line, f)) {
    long long v[14];
    unsigned long long d[8];
    if (sscanf(line, "%lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %llx %llx %llx %llx %llx %llx %llx %llx",
               &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9], &v[10], &v[11], &v[12], &v[13],
               &d[0], &d[1], &d[2], &d[3], &d[4], &d[5], &d[6], &d[7]) != 22)
      continue;   /* (a damaged line: that GEMM is timed again) */
    LtKey k;
    memset(&k, 0, sizeof k);
    k.m = v[0], k.n = v[1], k.k = v[2], k.lda = v[3], k.ldb = v[4], k.ldc = v[5];
    k.align[0] = (uint32_t)v[6], k.align[1] = (uint32_t)v[7], k.align[2] = (uint32_t)v[8];
    k.ty = (unsigned)v[9], k.prec = (int)v[10], k.ep = (int)v[11], k.ta = v[12] != 0, k.tb = v[13] != 0, k.tuned = true;
    cublasLtMatmulAlgo_t a;
    for (int i = 0; i < 8; i++) a.data[i] = d[i];
    lt_add(&k, &a);
  }
  if (f) fclose(f);
}

static void lt_write(void) {
  if (!lt_file[0]) return;
  char tmp[1500];
  FILE *f = open_picks(lt_file, tmp, sizeof tmp);
  for (int i = 0; f && i < nlt_picks; i++) {
    const LtKey *k = &lt_picks[i].key;
    fprintf(f, "%lld %lld %lld %lld %lld %lld %u %u %u %u %d %d %d %d", (long long)k->m, (long long)k->n,
            (long long)k->k, (long long)k->lda, (long long)k->ldb, (long long)k->ldc, k->align[0], k->align[1],
            k->align[2], k->ty, k->prec, k->ep, (int)k->ta, (int)k->tb);
    for (int j = 0; j < 8; j++) fprintf(f, " %llx", (unsigned long long)lt_picks[i].algo.data[j]);
    fprintf(f, "\n");
  }
  close_picks(f, tmp, lt_file);
}

/* ---- GEMM algorithms timed (the tuner) ----
 * The first time a GEMM of a shape, operand types and epilogue runs
 * outside a graph capture, cuBLASLt's heuristic gives up to eight
 * algorithms; each runs once and then three times between two events,
 * into scratch outputs (D, and the aux or bias-gradient output of the
 * epilogues that write one; C and the inputs are read as the GEMM reads
 * them), and the fastest is kept, for the run and in the picks' file
 * above, so that later runs and resumes keep the bits of the first. Off
 * by default (LMC_GEMM_TUNE=1 asks for it): on an H200 (run 15) it made
 * llama-large's step 1.3% faster than the heuristic's first choices and
 * GPT-2's no faster, within a sitting's noise. */
static bool tune;
static bool capturing;   /* st is being recorded into a graph: nothing is timed */

enum { EP_NONE, EP_BIAS, EP_GELU_AUX_BIAS, EP_BGRADB, EP_BGRADA, EP_DGELU };

static int tuned_algo(cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t l[3], unsigned ty, bool ta, bool tb, int64_t m,
                      int64_t n, int64_t k, CUdeviceptr a, int64_t lda, CUdeviceptr b, int64_t ldb, float alpha,
                      float beta, CUdeviceptr c, int64_t ldc, int ep, CUdeviceptr bias, CUdeviceptr aux, int64_t len) {
  LtKey key;
  memset(&key, 0, sizeof key);
  key.m = m, key.n = n, key.k = k, key.lda = lda, key.ldb = ldb, key.ldc = ldc, key.ty = ty, key.prec = precision;
  key.ta = ta, key.tb = tb, key.ep = ep, key.tuned = true;
  key.align[0] = align_of(b), key.align[1] = align_of(a), key.align[2] = align_of(c);
  int at = lt_slot(&key);
  if (at < 0 || lt_algos[at].state || capturing) return at;
  static bool read;
  if (!read) read = true, lt_read();
  /* ranks on one machine time a GEMM once: the first holds the file's
   * lock while it times, the others wait and read its pick (each having
   * finished its queued work, so that no collective waits on a rank
   * blocked on the lock), as attention's tuner does */
  LtPick *p = lt_known(&key);
  int lock = -1;
  if (!p) {
    CK(cu.sync());
    lock = lt_file[0] ? file_lock(lt_file) : -1;
    lt_read();
    p = lt_known(&key);
  }
  if (p) {   /* picked before, on this GPU model (by a run before, or another rank) */
    lt_algos[at].key = key, lt_algos[at].state = 1, lt_algos[at].algo = p->algo;
    if (lock >= 0) close(lock);
    return at;
  }
  static CUdeviceptr sd, sx;
  static size_t nsd, nsx;
  cublasLtMatmulPreference_t pref;
  cublasLtMatmulHeuristicResult_t r[8];
  int got = 0;
  LT(cu.pref_create(&pref));
  LT(cu.pref_set(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_size, sizeof workspace_size));
  if (cu.heuristic(lt, desc, l[0], l[1], l[2], l[2], pref, 8, r, &got) != CUBLAS_STATUS_SUCCESS) got = 0;
  cu.pref_destroy(pref);
  CUdeviceptr d = scratch(&sd, &nsd, m * ldc);   /* reals: room for D of either type */
  void *xp = (void *)scratch(&sx, &nsx, ep == EP_BGRADA || ep == EP_BGRADB ? len : m * ldc);
  if (ep == EP_GELU_AUX_BIAS) LT(cu.desc_set(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &xp, sizeof xp));
  if (ep == EP_BGRADA || ep == EP_BGRADB) LT(cu.desc_set(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &xp, sizeof xp));
  CUevent t[2];
  CK(ev.create(&t[0], 0)), CK(ev.create(&t[1], 0));
  float best = 0;
  lt_algos[at].key = key, lt_algos[at].state = 2;
  for (int i = 0; i < got; i++) {
    if (r[i].state != CUBLAS_STATUS_SUCCESS) continue;
    bool ok = true;
    for (int rep = 0; rep < 4 && ok; rep++) {
      if (rep == 1) CK(ev.record(t[0], st));
      ok = cu.matmul(lt, desc, &alpha, (void *)b, l[0], (void *)a, l[1], &beta, (void *)c, l[2], (void *)d, l[2],
                     &r[i].algo, (void *)workspace, workspace_size, (cudaStream_t)st) == CUBLAS_STATUS_SUCCESS;
    }
    if (!ok) continue;
    float ms;
    CK(ev.record(t[1], st)), CK(ev.sync(t[1])), CK(ev.elapsed(&ms, t[0], t[1]));
    if (lt_algos[at].state == 2 || ms < best) lt_algos[at].algo = r[i].algo, lt_algos[at].state = 1, best = ms;
  }
  CK(ev.destroy(t[0])), CK(ev.destroy(t[1]));
  if (lt_algos[at].state == 1) lt_add(&key, &lt_algos[at].algo), lt_write();
  if (lock >= 0) close(lock);
  void *bp = (void *)bias, *ap = (void *)aux;   /* the real outputs back */
  if (ep == EP_GELU_AUX_BIAS) LT(cu.desc_set(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &ap, sizeof ap));
  if (ep == EP_BGRADA || ep == EP_BGRADB) LT(cu.desc_set(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp, sizeof bp));
  return at;
}

/* LMC_GEMM_SHOW=1: the first time a GEMM of a shape, types and epilogue
 * runs, what cuBLASLt's heuristic picks for it (as it does for the GEMMs
 * run without an algorithm of ours), on stderr: its tile (an id of
 * cublasLt.h's cublasLtMatmulTile_t, 20 is 128x128), split-k, stages and
 * waves (below 1, part of the GPU idle). For the question runs 11 to 16
 * left open: GPT-2's weight gradients with the BGRAD epilogue ran at 346
 * TFLOP/s (run 16's profile), the GEMMs without it at about 800. */
static bool show_gemms;

static void gemm_show(cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t l[3], unsigned ty, bool ta, bool tb, int64_t m,
                      int64_t n, int64_t k, int ep) {
  static int64_t seen[256][6];
  static int nseen;
  int64_t key[6] = {m, n, k, ty, ep, ta * 2 + tb};
  for (int i = 0; i < nseen; i++)
    if (!memcmp(seen[i], key, sizeof key)) return;
  if (nseen < 256) memcpy(seen[nseen++], key, sizeof key);
  static const char *eps[] = {"", " bias", " gelu+bias", " bgradb", " bgrada", " dgelu"};
  cublasLtMatmulPreference_t pref;
  cublasLtMatmulHeuristicResult_t r;
  int got = 0;
  LT(cu.pref_create(&pref));
  LT(cu.pref_set(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_size, sizeof workspace_size));
  bool ok = cu.heuristic(lt, desc, l[0], l[1], l[2], l[2], pref, 1, &r, &got) == CUBLAS_STATUS_SUCCESS && got > 0;
  cu.pref_destroy(pref);
  fprintf(stderr, "gemm %lld x %lld x %lld%s%s%s%s:", (long long)m, (long long)n, (long long)k, ta ? " A^T" : "",
          tb ? " B^T" : "", ty & G_A ? " bf16" : "", eps[ep]);
  if (!ok) {
    fprintf(stderr, " no algorithm from the heuristic\n");
    return;
  }
  uint32_t tile = 0, split = 0, stages = 0;
  if (algo_config_get) {
    algo_config_get(&r.algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof tile, NULL);
    algo_config_get(&r.algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &split, sizeof split, NULL);
    algo_config_get(&r.algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof stages, NULL);
  }
  fprintf(stderr, " tile %u, split-k %u, stages %u, %.2f waves\n", tile, split, stages, r.wavesCount);
}

/* A GEMM's description for operands of types ty and the plan p: the
 * compute type (fp32 accumulation; fp32 operands at the precision in
 * force) and the transposes; no epilogue */
static cublasLtMatmulDesc_t lt_desc(unsigned ty, LtPlan p) {
  cublasLtMatmulDesc_t desc;
  cublasOperation_t opa = p.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, opb = p.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  cublasComputeType_t ct = ty & G_A                ? CUBLAS_COMPUTE_32F
                           : precision == MP_HIGH   ? CUBLAS_COMPUTE_32F_FAST_TF32
                           : precision == MP_MEDIUM ? CUBLAS_COMPUTE_32F_FAST_16BF : CUBLAS_COMPUTE_32F;
  LT(cu.desc_create(&desc, ct, CUDA_R_32F));
  LT(cu.desc_set(desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
  LT(cu.desc_set(desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
  return desc;
}

/* gemm_t with an epilogue adding bias[n] (of C's type) over C's rows,
 * where bias is not 0, and with aux also GELU's (C = gelu(product + bias),
 * aux = product + bias, laid out as C); or, with bgrad (1: our A, 2: our
 * B), writing to bias (fp32) that operand's sums over k (BGRADB, BGRADA:
 * cuBLASLt's A is our B); or, with bgrad 3 (DGELU), C = product times
 * GELU's derivative at aux (laid out as C, of C's type); false where
 * cuBLASLt refuses that epilogue (nothing done). */
static bool gemm_ep(unsigned ty, bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, CUdeviceptr a,
                    int64_t lda, CUdeviceptr b, int64_t ldb, float beta, CUdeviceptr c, int64_t ldc, CUdeviceptr bias,
                    CUdeviceptr aux, int bgrad) {
  static CUdeviceptr wa, wb, wc;
  static size_t na, nb, ncw;
  if (!(ty & G_A) != !(ty & G_B)) {   /* one bf16 operand (an MoE router's GEMMs): widened, multiplied in fp32 */
    if (ty & G_A) widen_to(scratch(&wa, &na, (ta ? k : m) * lda), a, (ta ? k : m) * lda), a = wa;
    else widen_to(scratch(&wb, &nb, (tb ? n : k) * ldb), b, (tb ? n : k) * ldb), b = wb;
    ty &= ~(unsigned)(G_A | G_B);
  }
  if ((ty & G_C) && !(ty & G_A)) {    /* fp32 operands, a bf16 output: through an fp32 one */
    CUdeviceptr cw = scratch(&wc, &ncw, m * ldc);
    if (beta != 0) widen_to(cw, c, m * ldc);
    if (bias || bgrad) return false;   /* an epilogue on an fp32 D meant for a bf16 C: refused, the caller's way around */
    gemm_ep(ty & ~(unsigned)G_C, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, cw, ldc, 0, 0, 0);
    narrow_to(c, cw, m * ldc);
    return true;
  }
  cublasLtMatrixLayout_t l[3];
  LtPlan p = lt_plan(ta, tb, m, n, k, lda, ldb, ldc);
  cudaDataType_t ab = ty & G_A ? CUDA_R_16BF : CUDA_R_32F, ct_c = ty & G_C ? CUDA_R_16BF : CUDA_R_32F;
  cublasLtMatmulDesc_t desc = lt_desc(ty, p);
  if (bias || bgrad == 3) {   /* cuBLASLt's D is our C^T: its rows are our columns, as the bias runs */
    cublasLtEpilogue_t ep = bgrad == 3 ? CUBLASLT_EPILOGUE_DGELU
                            : bgrad ? (bgrad == 2 ? CUBLASLT_EPILOGUE_BGRADA : CUBLASLT_EPILOGUE_BGRADB)
                            : aux ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_BIAS;
    void *bp = (void *)bias, *xp = (void *)aux;
    int32_t bt = ct_c;   /* the output's type: cuBLASLt's rule */
    int64_t xld = ldc;
    LT(cu.desc_set(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep));
    if (bias) {
      LT(cu.desc_set(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp, sizeof bp));
      LT(cu.desc_set(desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt));
    }
    if (aux) {
      LT(cu.desc_set(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &xp, sizeof xp));
      LT(cu.desc_set(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &xld, sizeof xld));
    }
  }
  lt_layouts(l, ab, ct_c, p);
  int ep = bgrad == 3 ? EP_DGELU : bgrad ? (bgrad == 2 ? EP_BGRADA : EP_BGRADB) : !bias ? EP_NONE
           : aux ? EP_GELU_AUX_BIAS : EP_BIAS;
  int at = ragged ? ragged_algo(desc, ab, ct_c, ty, ta, tb, m, n, k, a, lda, b, ldb, c, ldc)
           : tune ? tuned_algo(desc, l, ty, ta, tb, m, n, k, a, lda, b, ldb, alpha, beta, c, ldc, ep, bias, aux,
                               bgrad == 2 ? n : m)
                  : -1;
  const cublasLtMatmulAlgo_t *algo = at >= 0 && lt_algos[at].state == 1 ? &lt_algos[at].algo : NULL;
  if (show_gemms) gemm_show(desc, l, ty, ta, tb, m, n, k, ep);
  cublasStatus_t rc = cu.matmul(lt, desc, &alpha, (void *)b, l[0], (void *)a, l[1], &beta, (void *)c, l[2], (void *)c,
                                l[2], algo, (void *)workspace, workspace_size, (cudaStream_t)st);
  if (rc != CUBLAS_STATUS_SUCCESS && algo) {   /* refused for this shape: cuBLASLt's own choice */
    lt_algos[at].state = 2;
    rc = cu.matmul(lt, desc, &alpha, (void *)b, l[0], (void *)a, l[1], &beta, (void *)c, l[2], (void *)c, l[2], NULL,
                   (void *)workspace, workspace_size, (cudaStream_t)st);
  }
  cu.layout_destroy(l[0]), cu.layout_destroy(l[1]), cu.layout_destroy(l[2]), cu.desc_destroy(desc);
  if (rc == CUBLAS_STATUS_NOT_SUPPORTED && bias) return false;
  if (rc != CUBLAS_STATUS_SUCCESS && bgrad) return false;   /* an epilogue never asked of this GPU: its GEMM plain after */
  check_lt(rc, "cublasLtMatmul", __FILE__, __LINE__);
  return true;
}

static bool gemm_bias(unsigned ty, bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, CUdeviceptr a,
                      int64_t lda, CUdeviceptr b, int64_t ldb, float beta, CUdeviceptr c, int64_t ldc,
                      CUdeviceptr bias, CUdeviceptr aux) {
  return gemm_ep(ty, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, bias, aux, 0);
}

static void gemm_t(unsigned ty, bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, CUdeviceptr a,
                   int64_t lda, CUdeviceptr b, int64_t ldb, float beta, CUdeviceptr c, int64_t ldc) {
  gemm_ep(ty, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, 0, 0, 0);
}

static void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, CUdeviceptr a, int64_t lda,
                 CUdeviceptr b, int64_t ldb, float beta, CUdeviceptr c, int64_t ldc) {
  gemm_t(0, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

/* bytes per element of an instruction's operand (RT_BF_OUT(j), RT_BF_IN(j)) */
static int64_t esz(const RtInst *x, unsigned bit) { return x->bf & bit ? 2 : 4; }

/* gemm_t's types of a GEMM of the operands with these bits */
static unsigned gty(const RtInst *x, unsigned a, unsigned b, unsigned c) {
  return (x->bf & a ? G_A : 0) | (x->bf & b ? G_B : 0) | (x->bf & c ? G_C : 0);
}

/* ---- ops ---- */

typedef long long i64;

/* Flash attention (templates/kernels.cu): the kernels lmc specialised to
 * the head dim, FA_THREADS threads a block, P threads a query row by the
 * rule of compiler/kernels.c. */
enum { FA_THREADS = 128 };

static int fa_rows(const RtInst *x) {
  if (x->k > 1024) rt_die("the CUDA backend's attention takes head dims up to 1024, not %lld", (long long)x->k);
  int p = 1;
  while ((x->k + p - 1) / p > 32) p *= 2;
  return FA_THREADS / p;
}

/* At --matmul-precision medium, head dims up to 128 run on the tensor
 * cores (kernels.cu's fm_*), 64 query rows or keys a block. */
static bool fa_mma(const RtInst *x) { return precision == MP_MEDIUM && x->k <= 128; }

/* The queries dK/dV's tensor core kernel steps at a time: 64 up to head
 * dim 96 (at 65..96 the two-block variant, lmc_attention_bwd_mma_dkv_q64:
 * 1.89 ms against the three-block 32-query kernel's 2.08 for llama-large's
 * backward on an H200, run 15), else 32; LMC_ATTENTION_DKV_QT=32
 * (cuda_attention_dkv_qt) asks for the 32-query kernel at 65..96. */
static bool fa_pinned;   /* a knob here asked for a kernel: the tuner (below) stays off */
static int dkv_qt_asked = 64;
void cuda_attention_dkv_qt(int qt) { dkv_qt_asked = qt, fa_pinned = true; }

static i64 dkv_qt(i64 k) {
  i64 kp = (k + 15) / 16 * 16;
  return kp <= 64 || (dkv_qt_asked == 64 && kp <= 96) ? 64 : 32;
}

/* The query rows a block of the tensor core forward (fwd) and of dQ take:
 * 64 (16 a warp, the _r64_ kernels, three blocks an SM) or, up to head dim
 * 96, 128 (32 a warp, two m-tiles sharing each K and V fragment, two
 * blocks). As measured on an H200 (run 16): the forward at 64 (its first
 * 128-row kernel kept 672 bytes of registers in local memory and took 2.5x
 * as long), dQ at 128 (llama-large's backward 1.82 ms against about 1.96).
 * LMC_ATTENTION_ROWS=64 or 128 (cuda_attention_rows) asks for one for
 * both; 0 is the default. */
static int rows_asked;
void cuda_attention_rows(int rows) { rows_asked = rows, fa_pinned = true; }

static i64 fm_rows(i64 k, bool fwd) {
  int r = rows_asked ? rows_asked : fwd ? 64 : 128;
  return (k + 15) / 16 * 16 <= 96 && r == 128 ? 128 : 64;
}

/* The stages of K and V tiles in the 64-row forward and the 128-row dQ
 * (up to head dim 96): 2 (lmc_attention_mma_s2_kK,
 * lmc_attention_bwd_mma_dq_s2_kK: each tile's copies go out as the tile
 * before starts, one barrier a tile instead of four in the forward and
 * three in dQ), or 1 (lmc_attention_mma_r64_kK, lmc_attention_bwd_mma_dq_kK,
 * the kernels timed on an H200 in runs 15 and 16). Two became the default
 * in a session without a GPU, on the SASS (no spills, fewer instructions
 * and barriers a tile, the same blocks an SM): LMC_ATTENTION_STAGES=1
 * (cuda_attention_stages) asks for one, and bench/gpu.sh times both. */
static int kv_stages = 2;
void cuda_attention_stages(int stages) { kv_stages = stages, fa_pinned = true; }
static bool fm_s2(i64 k, bool fwd) {
  return kv_stages == 2 && (k + 15) / 16 * 16 <= 96 && fm_rows(k, fwd) == (fwd ? 64 : 128);
}

/* Attention on Hopper's warpgroup matrix instructions (kernels.cu's
 * fw_forward, fw_backward_dq and fw_backward_dkv: lmc_attention_wg_kK,
 * lmc_attention_bwd_wg_dq_kK and lmc_attention_bwd_wg_dkv_kK; the tensor
 * cores read K, V, Q and dO tiles from shared memory, no ldmatrix of
 * them), on a GPU of compute capability 9.0 (the kernels compiled for
 * sm_90a) and on the emulated platform; head dims to 128 (dK/dV past 96
 * with 32 queries a step).
 * Checked against the CPU under the emulator only so far, so
 * LMC_ATTENTION_WGMMA=1 (cuda_attention_wgmma) asks for them and
 * bench/gpu.sh times them beside the default. */
static int wgmma_asked, wgmma_ok = -1;   /* wgmma_ok: lmc_wgmma_probe's verdict, -1 before it ran */

static uint16_t bf16_of_small(float f) {   /* exact for the small integers the probe uses */
  uint32_t u;
  memcpy(&u, &f, 4);
  return (uint16_t)(u >> 16);
}

/* kernels.cu's lmc_wgmma_probe against the host's products (small
 * integers: exact): where this GPU's wgmma reads the tiles otherwise
 * than the kernels lay them out, attention stays on mma.sync, and says
 * so once. Run when the kernels are loaded and wgmma is asked for (not
 * inside a step: it waits for the GPU). */
static bool wgmma_probe(void) {
  if (wgmma_ok >= 0) return wgmma_ok;
  if (!fn_has("lmc_wgmma_probe"))
    rt_die("LMC_ATTENTION_WGMMA=1: this bundle's kernels.cu has no wgmma kernels (an older lmc wrote it): compile the "
           "bundle again");
  uint16_t a[64 * 16], b[16 * 32];
  float A[64][16], B[16][32], d[3 * 64 * 32];
  for (int i = 0; i < 64; i++)
    for (int k = 0; k < 16; k++) A[i][k] = (float)((i * 7 + k * 3) % 11 - 5), a[i * 16 + k] = bf16_of_small(A[i][k]);
  for (int k = 0; k < 16; k++)
    for (int j = 0; j < 32; j++) B[k][j] = (float)((k * 5 + j * 13) % 9 - 4), b[k * 32 + j] = bf16_of_small(B[k][j]);
  CUdeviceptr da, db, dd;
  CK(cu.alloc(&da, sizeof a)), CK(cu.alloc(&db, sizeof b)), CK(cu.alloc(&dd, sizeof d));
  CK(cu.htod(da, a, sizeof a)), CK(cu.htod(db, b, sizeof b));
  void *args[] = {&dd, &da, &db};
  /* (4 KiB of tiles in 16: a GPU reading them otherwise stays inside) */
  launch_smem("lmc_wgmma_probe", 1, 1, 1, FA_THREADS, 16384, args);
  CK(cu.sync());
  CK(cu.dtoh(d, dd, sizeof d));
  CK(cu.free(da)), CK(cu.free(db)), CK(cu.free(dd));
  static const char *way[3] = {"B K-major", "B N-major", "A and B from shared memory"};
  int bad = -1;
  for (int v = 0; v < 3 && bad < 0; v++)
    for (int i = 0; i < 64 * 32; i++) {
      float s = 0;
      for (int k = 0; k < 16; k++) s += A[i / 32][k] * B[k][i % 32];
      if (d[v * 64 * 32 + i] != s) {
        bad = v;
        break;
      }
    }
  if (bad >= 0)
    fprintf(stderr, "lmrun: this GPU's wgmma reads its operands otherwise than lmc lays them out (%s): "
                    "attention runs on mma.sync (LMC_ATTENTION_WGMMA ignored)\n", way[bad]);
  wgmma_ok = bad < 0;
  return wgmma_ok;
}

int cuda_attention_wgmma(int on) {
  wgmma_asked = on, fa_pinned = true;
  if (!on || sm != 90) return -1;
  return nmodules ? wgmma_probe() : 1;   /* (before the kernels load: the backend probes then) */
}
static bool fa_wg(const RtInst *x) { return wgmma_asked && wgmma_ok == 1 && fa_mma(x); }   /* (the probe: 9.0 only) */
static bool fa_wg_bwd(const RtInst *x) { return fa_wg(x) && x->k <= 128; }

/* Warpgroups a block of the wgmma kernels: 1 (the default), or blocks of
 * 2 or 3 warpgroups of 64 query rows (64 keys in dK/dV) each that share
 * the K and V (Q and dO) tiles they copy, one block an SM, so that the
 * SM reads each tile from L2 once for 128 or 192 rows rather than 64:
 * the forward and dQ take up to 3 (lmc_attention_wg3_kK, twelve warps an
 * SM as their three one-warpgroup blocks), dK/dV up to 2 (eight warps,
 * as its two), head dims to 96, bf16 storage. LMC_ATTENTION_WARPGROUPS=N
 * (cuda_attention_warpgroups) asks for N; untimed on a GPU, so 1 stays
 * the default. */
static int wg_asked = 1;
void cuda_attention_warpgroups(int n) { wg_asked = n < 1 ? 1 : n, fa_pinned = true; }
static int fa_nw(const RtInst *x, int most) {   /* (the kernels are in bf16 storage's bundles alone) */
  return storage16 && (x->k + 15) / 16 * 16 <= 96 && wg_asked > 1 ? (wg_asked < most ? wg_asked : most) : 1;
}
static const char *wg_kind[4] = {"", "wg_", "wg2_", "wg3_"};

/* The heads a section of attention's launch order (kernels.cu's
 * fa_head: a section's blocks go out rank by rank across its heads, each
 * head's longest first): as many as fit what they read again and again in
 * half the L2, K and V of a kv group (the forward and dQ, each query head
 * a share of its group's) or Q and dO of a group's heads (dK/dV, a kv
 * group a head). By the order alone, blocks taking the time of their
 * tiles on a fixed number of slots (bench/launch_order.py), llama-large's
 * dK/dV (B 8, T 2048, 16 heads over 4 kv groups) would take 256
 * tile-times in sections of 8 against 336 a head at a time, the forward
 * 172 against 191 and dQ 134 against 152 (all its heads in one section),
 * not timed on a GPU yet. LMC_ATTENTION_SECTION=N (cuda_attention_section)
 * asks for N heads; 1 runs each head's blocks together, longest first, the
 * order before. */
static int section_asked;
void cuda_attention_section(int heads) { section_asked = heads, fa_pinned = true; }

static i64 fa_section(const RtInst *x, bool dkv) {
  if (section_asked) return section_asked;
  i64 per = x->h / x->g, kv = 2 * x->t * x->k * (storage16 ? 2 : 4);   /* a head's two T x K matrices */
  i64 bytes = dkv ? kv * per : (kv + per - 1) / per, s = l2_bytes / 2 / (bytes ? bytes : 1);
  return s < 1 ? 1 : s;
}

/* Launches an attention kernel over `heads` heads of nb blocks each in
 * sections of about sec heads, evened out (x a head of a section, y the
 * block's rank, z the section; the last section's spare blocks return). */
static void fa_launch(const char *name, i64 heads, i64 nb, i64 sec, int threads, unsigned smem, void **args) {
  i64 z = (heads + sec - 1) / sec;
  z = z > 65535 ? 65535 : z;   /* a grid's z: past it, longer sections */
  i64 x = (heads + z - 1) / z;
  if (nb > 65535) rt_die("attention: %lld blocks of queries or keys a head, past the 65535 a grid's y takes",
                         (long long)nb);
  launch_smem(name, (unsigned)x, (unsigned)nb, (unsigned)z, (unsigned)threads, smem, args);
}

/* ---- attention's three kernels, each by a configuration ----
 * The forward, dQ and dK/dV each run one of the kernels the bundle has
 * for the head dim (compiler/kernels.c); FaCfg says which, and the launch
 * order. fa_asked gives what the knobs above ask for (their defaults
 * where none is set); fa_cfg, below, what the tuner picked. */
enum { FA_FWD, FA_DQ, FA_DKV };
typedef struct FaCfg {
  int wg;        /* warpgroups a block on wgmma; 0: mma.sync (or the CUDA cores below medium precision) */
  bool pipe;     /* on wgmma, one warpgroup: a tile's softmax beside the products (fw_forward_pipe,
                    fw_backward_dq_pipe, fw_backward_dkv_pipe; bf16 storage's bundles alone have them) */
  int rows;      /* mma.sync forward and dQ: query rows a block, 64 or (head dims to 96) 128 */
  bool s2;       /* mma.sync forward at 64 rows and dQ at 128 (head dims to 96): two stages of K and V */
  int qt;        /* mma.sync dK/dV: queries a step, 64 or (past head dim 64) 32 */
  i64 section;   /* heads a section of the launch order */
} FaCfg;

static FaCfg fa_asked(const RtInst *x, int kind) {
  FaCfg c = {0, false, 0, false, 0, fa_section(x, kind == FA_DKV)};
  if (kind == FA_FWD ? fa_wg(x) : fa_wg_bwd(x))
    c.wg = fa_nw(x, kind == FA_DKV ? 2 : 3), c.pipe = c.wg == 1 && wgmma_asked == 2 && storage16;
  else if (kind == FA_DKV) c.qt = (int)dkv_qt(x->k);
  else c.rows = (int)fm_rows(x->k, kind == FA_FWD), c.s2 = fm_s2(x->k, kind == FA_FWD);
  return c;
}

/* the kernel's name: lmc_attention_[VARIANT]kK, lmc_attention_bwd_[VARIANT]dq_[VARIANT]kK,
 * lmc_attention_bwd_[VARIANT]dkv_[VARIANT]kK (kernels.c's names) */
static void fa_name(char *name, size_t n, const RtInst *x, int kind, FaCfg c) {
  i64 kp = (x->k + 15) / 16 * 16;
  bool mma = fa_mma(x);
  const char *pre = c.pipe ? "wgp_" : c.wg ? wg_kind[c.wg] : mma ? "mma_" : "", *var = "";
  if (kind == FA_FWD && mma && !c.wg && kp <= 96 && c.rows == 64) pre = c.s2 ? "mma_s2_" : "mma_r64_";
  if (kind == FA_DQ && mma && !c.wg && kp <= 96) var = c.rows == 64 ? "r64_" : c.s2 ? "s2_" : "";
  if (kind == FA_DKV && mma && !c.wg && kp > 64 && kp <= 96 && c.qt == 64) var = "q64_";
  if (kind == FA_FWD) snprintf(name, n, "lmc_attention_%sk%lld", pre, (long long)x->k);
  else snprintf(name, n, "lmc_attention_bwd_%s%s_%sk%lld", pre, kind == FA_DQ ? "dq" : "dkv", var, (long long)x->k);
}

/* Their dynamic shared memory: on mma.sync rows of bf16 tiles (the head
 * dim rounded up to 16, plus 8) as kernels.cu's fm_* lay them out: the
 * forward's Q, K and V (a stage each, or two), dQ's Q and dO and K and
 * V (a stage each, or two), dK/dV's K, V and two stages of Q and dO tiles
 * of qt queries; on wgmma tiles of 64 rows of core matrices (a warpgroup
 * of wg): the forward's Q (a tile a warpgroup) and two stages of K and V,
 * dQ's Q and dO (a tile each a warpgroup) and two stages of K and V,
 * dK/dV's K and V (a tile each a warpgroup) and two stages of Q and dO
 * (of 32 queries past head dim 96) */
static unsigned fa_smem(const RtInst *x, int kind, FaCfg c) {
  i64 kp = (x->k + 15) / 16 * 16, tile = 64 * kp * 2, row = (kp + 8) * 2, kv = (c.s2 ? 4 : 2) * 64;
  if (!fa_mma(x)) return 0;
  if (c.pipe && kind == FA_DKV) return (unsigned)((2 + (kp > 64 ? 3 : 6)) * tile);   /* three stages of Q and dO */
  if (c.pipe && kind == FA_DQ) return (unsigned)(7 * tile);   /* Q, dO, three stages of K, two of V */
  if (c.wg) return (unsigned)((kind == FA_FWD ? c.wg + 4 : kind == FA_DQ ? 2 * c.wg + 4 : 2 * c.wg + (kp > 96 ? 2 : 4)) * tile);
  return (unsigned)((kind == FA_FWD ? c.rows + kv : kind == FA_DQ ? 2 * c.rows + kv : 2 * 64 + 4 * c.qt) * row);
}

/* One of attention's kernels by configuration c: the forward's O and
 * log-sum-exps (out[0], out[1]) from in: q, k, v (of six: the rest
 * unread); or the backward's dQ
 * (out[0]) or dK and dV (out[1], out[2]) from in: dout, q, k, v, lse, o,
 * and dd (the rows' dO . O); acc: each output's accumulation flag */
static void fa_run(const RtInst *x, int kind, FaCfg c, const CUdeviceptr *out, const CUdeviceptr *in, CUdeviceptr dd,
                   const int *acc) {
  i64 B = x->b, T = x->t, H = x->h, G = x->g, K = x->k;
  i64 R = c.wg ? 64 * c.wg : !fa_mma(x) ? fa_rows(x) : kind == FA_DKV ? 64 : c.rows;
  float scale = 1.0f / sqrtf((float)K);
  CUdeviceptr o0 = out[0], o1 = out[1], o2 = out[2], i0 = in[0], i1 = in[1], i2 = in[2], i3 = in[3], i4 = in[4];
  int a0 = acc[0], a1 = acc[1], a2 = acc[2];
  void *fwd[] = {&o0, &o1, &i0, &i1, &i2, &T, &H, &G, &K, &scale, &B};
  void *dq[] = {&o0, &i0, &i1, &i2, &i3, &i4, &dd, &T, &H, &G, &K, &scale, &a0, &B};
  void *dkv[] = {&o1, &o2, &i0, &i1, &i2, &i3, &i4, &dd, &T, &H, &G, &K, &scale, &a1, &a2, &B};
  char name[64];
  fa_name(name, sizeof name, x, kind, c);
  fa_launch(name, B * (kind == FA_DKV ? G : H), (T + R - 1) / R, c.section, FA_THREADS * (c.wg ? c.wg : 1),
            fa_smem(x, kind, c), kind == FA_FWD ? fwd : kind == FA_DQ ? dq : dkv);
}

static FaCfg fa_cfg(const RtInst *x, int kind, const CUdeviceptr *in, CUdeviceptr dd);

static void op_attention(const RtInst *x, void **o, void **in) {
  CUdeviceptr out[3] = {dptr(o[0]), dptr(o[1]), 0}, i[6] = {dptr(in[0]), dptr(in[1]), dptr(in[2])};   /* (fa_run's six) */
  static const int acc[3];
  fa_run(x, FA_FWD, fa_cfg(x, FA_FWD, i, 0), out, i, 0, acc);
}

/* in: dout, q, k, v, lse, o */
static void op_attention_bwd(const RtInst *x, void **o, void **in) {
  static size_t have_dd;
  static CUdeviceptr scratch_dd;
  i64 B = x->b, T = x->t, H = x->h, K = x->k, rows = B * T * H;
  CUdeviceptr dd = scratch(&scratch_dd, &have_dd, rows), out[3] = {dptr(o[0]), dptr(o[1]), dptr(o[2])}, i[6];
  for (int j = 0; j < 6; j++) i[j] = dptr(in[j]);
  int acc[3] = {x->acc[0], x->acc[1], x->acc[2]};
  void *a[] = {&dd, &i[0], &i[5], &B, &T, &H, &K};
  launch("lmc_attention_dot", grid_for(rows * 32), a);
  if (o[0]) fa_run(x, FA_DQ, fa_cfg(x, FA_DQ, i, dd), out, i, dd, acc);
  if (o[1] || o[2]) fa_run(x, FA_DKV, fa_cfg(x, FA_DKV, i, dd), out, i, dd, acc);
}

/* ---- attention's kernels timed (the tuner) ----
 * The first time a shape's forward, dQ or dK/dV runs outside a graph
 * capture on a GPU, each kernel the bundle has for it runs on the op's
 * inputs into scratch outputs, once and then five times between two
 * events; a kernel whose outputs differ from the default's by more than
 * 2^-6 of their largest magnitude is not used (and said so), and the
 * fastest of the others is kept (by 2% over the one before it, so noise
 * keeps the default), then timed again in the launch order of one head at
 * a time (section 1). What it picked goes to a file beside
 * the cubin cache, per GPU model and kernels.cu, so later runs on that
 * GPU take the same kernels without timing them and resume to the same
 * bits; deleting the file times them again. On by default on a GPU (not
 * on the emulated platform, where times mean nothing):
 * LMC_ATTENTION_TUNE=0 keeps the defaults, 1 tunes on the emulator too.
 * Any of the knobs above (an env LMC_ATTENTION_* or its cuda_attention_*
 * call) asks for a kernel and turns the tuner off. */
static int fa_tune = -1;   /* LMC_ATTENTION_TUNE: -1 unset */
static char fa_file[1400];   /* the picks' file (empty: kept in memory alone) */
typedef struct FaPick { i64 key[6]; FaCfg c; bool said; } FaPick;
static FaPick fa_picks[64];
static int nfa_picks;
static bool fa_tune_on(void) { return !fa_pinned && (fa_tune == 1 || (fa_tune < 0 && !emulated)); }
static bool fa_tuning(const RtInst *x) { return fa_mma(x) && fa_tune_on() && ev.destroy; }

/* the picks' file, beside the cubin cache: one per kernels.cu and GPU model */
static void fa_file_at(const char *cache) {
  char dev[100];
  gpu_slug(dev, sizeof dev);
  snprintf(fa_file, sizeof fa_file, "%s/%016llx-%s%s.attention", cache, (unsigned long long)kernels_hash, dev,
           emulated ? "-emu" : "");
}

static void fa_key(i64 *key, const RtInst *x, int kind) {
  key[0] = kind, key[1] = x->b, key[2] = x->t, key[3] = x->h, key[4] = x->g, key[5] = x->k;
}

static FaPick *fa_find(const i64 *key) {
  for (int i = 0; i < nfa_picks; i++)
    if (!memcmp(fa_picks[i].key, key, sizeof fa_picks[i].key)) return &fa_picks[i];
  return NULL;
}

/* The picks' file: a line a pick, "KIND B T H G K WG PIPE ROWS S2 QT SECTION" */
static void fa_read(void) {
  FILE *f = fa_file[0] ? fopen(fa_file, "r") : NULL;
  FaPick p;
  int s2, pipe;
  while (f && nfa_picks < 64 &&
         fscanf(f, "%lld %lld %lld %lld %lld %lld %d %d %d %d %d %lld", &p.key[0], &p.key[1], &p.key[2], &p.key[3],
                &p.key[4], &p.key[5], &p.c.wg, &pipe, &p.c.rows, &s2, &p.c.qt, &p.c.section) == 12)
    if (!fa_find(p.key) && p.c.wg >= 0 && p.c.wg <= 3 && p.c.section >= 1)
      p.c.s2 = s2, p.c.pipe = pipe, p.said = false, fa_picks[nfa_picks++] = p;
  if (f) fclose(f);
}

static void fa_write(void) {
  if (!fa_file[0]) return;
  char tmp[1500];
  FILE *f = open_picks(fa_file, tmp, sizeof tmp);
  for (int i = 0; f && i < nfa_picks; i++) {
    const FaPick *p = &fa_picks[i];
    fprintf(f, "%lld %lld %lld %lld %lld %lld %d %d %d %d %d %lld\n", p->key[0], p->key[1], p->key[2], p->key[3],
            p->key[4], p->key[5], p->c.wg, (int)p->c.pipe, p->c.rows, (int)p->c.s2, p->c.qt, p->c.section);
  }
  close_picks(f, tmp, fa_file);
}

static bool fa_same(FaCfg a, FaCfg b) {
  return a.wg == b.wg && a.pipe == b.pipe && a.rows == b.rows && a.s2 == b.s2 && a.qt == b.qt &&
         a.section == b.section;
}

/* The kernels a shape's forward (dQ, dK/dV) can run: the default first */
static void fa_add(const RtInst *x, int kind, FaCfg *c, int *n, FaCfg d, int wg, bool pipe, int rows, bool s2,
                   int qt) {
  FaCfg e = {wg, pipe, rows, s2, qt, d.section};
  char name[64];
  fa_name(name, sizeof name, x, kind, e);
  if (!fa_same(e, d) && fn_has(name)) c[(*n)++] = e;   /* (a bundle an older lmc wrote may lack it) */
}
static int fa_candidates(const RtInst *x, int kind, FaCfg *c) {
  i64 kp = (x->k + 15) / 16 * 16;
  FaCfg d = fa_asked(x, kind);
  int n = 0;
  c[n++] = d;
  if (kind == FA_FWD && kp <= 96)
    fa_add(x, kind, c, &n, d, 0, false, 64, true, 0), fa_add(x, kind, c, &n, d, 0, false, 64, false, 0),
        fa_add(x, kind, c, &n, d, 0, false, 128, false, 0);
  if (kind == FA_DQ && kp <= 96)
    fa_add(x, kind, c, &n, d, 0, false, 128, true, 0), fa_add(x, kind, c, &n, d, 0, false, 128, false, 0),
        fa_add(x, kind, c, &n, d, 0, false, 64, false, 0);
  if (kind == FA_DKV && kp > 64 && kp <= 96)
    fa_add(x, kind, c, &n, d, 0, false, 0, false, 64), fa_add(x, kind, c, &n, d, 0, false, 0, false, 32);
  if (sm == 90 && wgmma_probe()) {
    for (int w = 1; w <= (kind == FA_DKV ? 2 : 3) && (w == 1 || (storage16 && kp <= 96)); w++)
      fa_add(x, kind, c, &n, d, w, false, 0, false, 0);
    fa_add(x, kind, c, &n, d, 1, true, 0, false, 0);
  }
  return n;
}

/* c one of them, in any launch order */
static bool fa_valid(const RtInst *x, int kind, FaCfg c) {
  FaCfg all[12];
  int n = fa_candidates(x, kind, all);
  for (int i = 0; i < n && c.section >= 1; i++)
    if (all[i].section = c.section, fa_same(all[i], c)) return true;
  return false;
}

/* an output's elements as floats (act: bf16 in bf16 storage) */
static float *fa_fetch(CUdeviceptr p, i64 n, bool act) {
  float *h = rt_xmalloc(n * sizeof(float));
  CK(cu.dtoh(h, p, n * (act && storage16 ? 2 : 4)));
  if (act && storage16)
    for (i64 i = n - 1; i >= 0; i--) {
      uint32_t u = (uint32_t)((uint16_t *)h)[i] << 16;
      memcpy(&h[i], &u, 4);
    }
  return h;
}

/* the largest difference of b from a over their largest magnitude (past
 * any sensible bound where b has a NaN a lacks) */
static double fa_diff(const float *a, const float *b, i64 n) {
  double big = 1e-30, d = 0;
  for (i64 i = 0; i < n; i++) {
    double e = fabs((double)a[i] - b[i]);
    if (e != e && a[i] == a[i]) return 1e30;
    big = fabs(a[i]) > big ? fabs(a[i]) : big, d = e > d ? e : d;
  }
  return d / big;
}

/* its outputs' sizes and whether each is an activation (bf16 in bf16 storage) */
static int fa_outputs(const RtInst *x, int kind, i64 *n, bool *act) {
  i64 q = x->b * x->t * x->h * x->k, kv = x->b * x->t * x->g * x->k;
  if (kind == FA_FWD) return n[0] = q, n[1] = x->b * x->h * x->t, act[0] = true, act[1] = false, 2;
  if (kind == FA_DQ) return n[0] = q, act[0] = true, 1;
  return n[0] = n[1] = kv, act[0] = act[1] = true, 2;
}

/* c's kernel five times on the inputs into outs (all zero: no
 * accumulation), after a first run: ms a run */
static float fa_time(const RtInst *x, int kind, FaCfg c, const CUdeviceptr *outs, const CUdeviceptr *in,
                     CUdeviceptr dd) {
  static const int acc[3];
  CUevent t[2];
  CK(ev.create(&t[0], 0)), CK(ev.create(&t[1], 0));
  for (int rep = 0; rep < 6; rep++) {
    if (rep == 1) CK(ev.record(t[0], st));
    fa_run(x, kind, c, outs, in, dd, acc);
  }
  float ms;
  CK(ev.record(t[1], st)), CK(ev.sync(t[1])), CK(ev.elapsed(&ms, t[0], t[1]));
  CK(ev.destroy(t[0])), CK(ev.destroy(t[1]));
  return ms / 5;
}

static const char *fa_what[3] = {"forward", "dQ", "dK/dV"};

/* what a kernel must beat the one kept so far by: 2%, so that the
 * timings' noise keeps the default rather than flipping a run's kernels */
#define FA_MARGIN 0.98f

/* c's launch order in words */
static const char *fa_sections(char *s, size_t n, const RtInst *x, int kind, FaCfg c) {
  i64 heads = x->b * (kind == FA_DKV ? x->g : x->h);
  if (heads == 1) snprintf(s, n, "one head");
  else if (c.section >= heads) snprintf(s, n, "all %lld heads in one section", heads);
  else if (c.section == 1) snprintf(s, n, "a head at a time");
  else snprintf(s, n, "sections of %lld heads", c.section);
  return s;
}

static void fa_tune_now(const RtInst *x, int kind, const CUdeviceptr *in, CUdeviceptr dd, FaPick *p) {
  FaCfg c[12];
  int ncand = fa_candidates(x, kind, c), nout;
  i64 n[2];
  bool act[2];
  nout = fa_outputs(x, kind, n, act);
  CUdeviceptr ref[3] = {0}, got[3] = {0};   /* (dK/dV's outputs are out[1], out[2]) */
  int base = kind == FA_DKV ? 1 : 0;
  for (int j = 0; j < nout; j++) {
    size_t bytes = n[j] * (act[j] && storage16 ? 2 : 4);
    ref[base + j] = dev_alloc(bytes), got[base + j] = dev_alloc(bytes);
  }
  float *want[2] = {NULL, NULL}, best = 0;
  bool me = comm_rank() == 0 || fa_tune == 1;   /* (every rank that times, where asked for) */
  const char *spoil = getenv("LMC_ATTENTION_TUNE_SPOIL");   /* (the tuner's test: a kernel's first output spoiled) */
  char who[32] = "";
  if (comm_world() > 1) snprintf(who, sizeof who, "rank %d ", comm_rank());
  if (me)
    fprintf(stderr, "lmrun: %stiming attention's %s kernels at b %lld t %lld h %lld (kv %lld) k %lld:", who,
            fa_what[kind], (long long)x->b, (long long)x->t, (long long)x->h, (long long)x->g, (long long)x->k),
        fflush(stderr);
  p->c = c[0];
  for (int i = 0; i < ncand; i++) {
    float ms = fa_time(x, kind, c[i], i ? got : ref, in, dd);
    char name[64];
    fa_name(name, sizeof name, x, kind, c[i]);
    const char *short_name = name + strlen(kind == FA_FWD ? "lmc_attention_" : "lmc_attention_bwd_");
    if (i && spoil && !strcmp(spoil, short_name)) CK(cu.memset8(got[base], 0xff, 4));   /* a NaN */
    double diff = 0;
    for (int j = 0; j < nout; j++) {
      float *h = fa_fetch((i ? got : ref)[base + j], n[j], act[j]);
      if (!i) want[j] = h;
      else {
        double e = fa_diff(want[j], h, n[j]);
        diff = e > diff ? e : diff;
        free(h);
      }
    }
    bool ok = diff <= 1.0 / 64;
    if (me) fprintf(stderr, "%s %s %.3f ms%s", i ? "," : "", short_name, ms, ok ? "" : " (differs from the default: not used)"),
            fflush(stderr);
    if (ok && (!i || ms < best * FA_MARGIN)) best = ms, p->c = c[i];
  }
  if (p->c.section != 1) {   /* the order of one head at a time */
    FaCfg one = p->c;
    one.section = 1;
    float ms = fa_time(x, kind, one, got, in, dd);
    if (me) fprintf(stderr, "; a head at a time %.3f ms", ms);
    if (ms < best * FA_MARGIN) p->c = one;
  }
  char name[64], sec[64];
  fa_name(name, sizeof name, x, kind, p->c);
  if (me) fprintf(stderr, "; picked %s, %s\n", name, fa_sections(sec, sizeof sec, x, kind, p->c));
  for (int j = 0; j < nout; j++) free(want[j]), dev_free(ref[base + j]), dev_free(got[base + j]);
}

/* The pick for key that a run before made (or another rank, read from
 * the file), said where asked for; NULL where there is none or it names a
 * kernel the bundle lacks (a damaged file: tuned anew) */
static FaPick *fa_known(const RtInst *x, int kind, const i64 *key) {
  FaPick *p = fa_find(key);
  if (p && !p->said && !fa_valid(x, kind, p->c)) *p = fa_picks[--nfa_picks], p = NULL;
  if (p && !p->said && comm_rank() == 0 && fa_tune == 1) {   /* (said where asked for: LMC_ATTENTION_TUNE=1) */
    char name[64], sec[64];
    fa_name(name, sizeof name, x, kind, p->c);
    fprintf(stderr, "lmrun: attention's %s at b %lld t %lld h %lld (kv %lld) k %lld: %s, %s (timed before: %s)\n",
            fa_what[kind], (long long)x->b, (long long)x->t, (long long)x->h, (long long)x->g, (long long)x->k, name,
            fa_sections(sec, sizeof sec, x, kind, p->c), fa_file);
  }
  return p;
}

/* The configuration a shape's forward (dQ, dK/dV) runs: the knobs' where
 * the tuner is off or recording a graph, else the tuner's pick, made now
 * if no run made it before */
static FaCfg fa_cfg(const RtInst *x, int kind, const CUdeviceptr *in, CUdeviceptr dd) {
  if (!fa_tuning(x)) return fa_asked(x, kind);
  i64 key[6];
  fa_key(key, x, kind);
  static bool read;
  if (!read) read = true, fa_read();
  FaPick *p = fa_known(x, kind, key);
  if (p) return p->said = true, p->c;
  if (capturing || nfa_picks == 64) return fa_asked(x, kind);
  /* ranks on one machine tune a shape once: the first holds the file's
   * lock while it times; the others wait, then read its pick, so they
   * run the same kernels (and a resumed run those of the first). Each
   * finishes its queued work first, so that no collective queued before
   * can wait on a rank blocked on the lock */
  CK(cu.sync());
  int lock = fa_file[0] ? file_lock(fa_file) : -1;
  fa_read();
  if (!(p = fa_known(x, kind, key)) && nfa_picks < 64) {
    p = &fa_picks[nfa_picks];
    memcpy(p->key, key, sizeof p->key);
    fa_tune_now(x, kind, in, dd, p);
    nfa_picks++;
    fa_write();
  }
  if (lock >= 0) close(lock);
  return p ? (p->said = true, p->c) : fa_asked(x, kind);
}

/* Column sums over n rows of d columns, kernels.cu's two passes: pass 1
 * (the op's kernel, launched by col_pass) leaves `sums` sets of partial
 * sums over chunks of `per` rows in a scratch buffer; col_finish adds each
 * set's chunks in order into out[s] (skipped where NULL). The chunking
 * depends on n alone: the same bits every run. */
typedef struct Cols { i64 per, chunks; CUdeviceptr part; } Cols;

/* A norm's backward in one pass (kernels.cu's norm_bwd_rows), when
 * LMC_NORM_BWD_ONE_PASS=1 asks: rows of a multiple of 8 up to 2048 wide,
 * dx (when wanted) and the first `aligned` inputs (dy, x, w) 16-byte
 * aligned. Off by default: on an H200 (run 16) llama-large's rmsnorm_bwd
 * took 3.8% of the step this way against 3.0% in two passes (run 15), and
 * GPT-2's layernorm_bwd 5.9% against 5.5%, when the kernel held each row
 * in registers (179, one block an SM). It reads rows twice now, as the
 * kernels lmc writes for a norm's backward do (group.c): untimed. */
static bool norm_one_pass;
void cuda_norm_bwd_one_pass(bool on) { norm_one_pass = on; }

static bool norm_rows(const RtInst *x, void *dx, void **in, int aligned) {
  if (!norm_one_pass || x->d % 8 || x->d > 2048 || dptr(dx) % 16) return false;
  for (int i = 0; i <= aligned; i++)
    if (dptr(in[i]) % 16) return false;
  return true;
}

/* its kernel for width d, as compiler/kernels.c's kernels_norm_groups
 * names it: lmc_*_bwd_rowsNG, NG 8-wide groups a lane */
static const char *norm_rows_kernel(const char *base, i64 d) {
  static char name[64];
  i64 g = (d + 255) / 256;
  snprintf(name, sizeof name, "%s%lld", base, g <= 4 ? g : g <= 6 ? 6 : 8);
  return name;
}

static Cols col_plan(i64 n, i64 d, int sums) {
  static size_t have;
  static CUdeviceptr buf;
  Cols c;
  c.per = n / 256 > 64 ? (n + 255) / 256 : 64, c.chunks = (n + c.per - 1) / c.per;
  c.part = scratch(&buf, &have, sums * c.chunks * d);
  return c;
}

static void col_pass(const char *name, const Cols *c, i64 d, void **args) {
  launch_grid(name, (unsigned)((d + 255) / 256), (unsigned)c->chunks, 1, 256, args);   /* 8 columns a thread */
}

static void col_finish(const Cols *c, i64 d, int s, void *out, int acc) {
  if (!out) return;
  CUdeviceptr o = dptr(out), p = c->part + s * c->chunks * d * 4;
  i64 chunks = c->chunks, dd = d;
  void *f[] = {&o, &p, &chunks, &dd, &acc};
  launch_grid("lmc_col_finish", (unsigned)((d + 31) / 32), 1, 1, 256, f);   /* 32 columns a block of 8 warps */
}

/* The backward's GEMM epilogues (BGRAD, DGELU) asked of cuBLASLt, or
 * (LMC_GEMM_BACKWARD_EPILOGUES=0) the plain GEMM and the kernels after it:
 * an epilogue narrows cuBLASLt's choice of algorithms (GPT-2's weight
 * gradients ran at 376 TFLOP/s with BGRADA on an H200, run 15, against
 * about 750 for its plain GEMMs), so which is faster is the GPU's to say. */
static bool bwd_epilogues = true;

/* ---- a weight's gradient in parts (split-k) ----
 * A weight's gradient GEMM (C[m, n] (+)= A' B over k rows, the step's
 * tokens) whose output is a few tiles leaves most of the GPU idle while
 * each tile's block runs over every row: GPT-2's weight gradients ran at
 * 346 to 380 TFLOP/s on an H200 (runs 15 and 16, with the BGRAD epilogue
 * and without it: cuBLASLt's heuristic did not split them) against about
 * 750 for its other GEMMs. Where lt_parts' model says so (ltplan.c), such
 * a GEMM runs as one strided-batched cuBLASLt call of s products over k /
 * s rows each into fp32 partial outputs (with matmul_bgrad's epilogue, a
 * partial bias gradient each at its batch stride), and lmc_gemm_parts_sum
 * adds them in part order (to C where the gradient adds to it), col_finish
 * the bias's. Each stream has its own partials, the second stream's
 * grown with the first's (in the first step, before any GEMM goes there).
 * On a GPU the model's parts are timed against the GEMM whole and against
 * half and twice as many (parts_pick, below). LMC_GEMM_SPLIT=0 runs them
 * whole, 1 in the model's parts untimed, N in N parts where k allows
 * (parts of a multiple of 8 rows). Where cuBLASLt refuses the batched call
 * (say the bias gradient's epilogue batched), that kind runs whole from
 * then on. */
static int split_asked = -1;   /* LMC_GEMM_SPLIT: unset (-1) the model's, timed on a GPU; 0 whole; 1 the model's; N */
static bool split_refused[2];   /* plain, with the BGRAD epilogue */
static CUdeviceptr part_buf[2], part_bias[2];   /* by stream: the first, the second */
static size_t part_n[2], part_bn[2];

static long long parts_run;   /* GEMMs run in parts */
void cuda_gemm_split(int parts) { split_asked = parts; }
long long cuda_gemms_in_parts(void) { return parts_run; }

/* the stream's buffer of at least n floats, the other stream's grown alike */
static CUdeviceptr parts_scratch(CUdeviceptr *buf, size_t *have, size_t n) {
  if (have[0] < n) scratch(&buf[0], &have[0], n), scratch(&buf[1], &have[1], n);
  return buf[st == side_st && side_st];
}

/* C (+= where acc) A' B of x's shape in s parts: the batched GEMM into
 * the partials W (and with bgrad the bias gradient's partials into G,
 * s vectors of len), then their sum into C; false where cuBLASLt refuses */
static bool parts_into(const RtInst *x, unsigned ty, int s, bool bgrad, const CUdeviceptr *I, CUdeviceptr C, int acc,
                       CUdeviceptr W, CUdeviceptr G) {
  i64 m = x->m, n = x->n, kc = x->k / s, total = m * n, len = x->bg ? n : m;
  LtPlan p = lt_plan(true, false, m, n, kc, m, n, n);   /* a part: A' [m, kc] B [kc, n] */
  cublasLtMatmulDesc_t desc = lt_desc(ty, p);
  cublasLtMatrixLayout_t l[3];
  lt_layouts(l, ty & G_A ? CUDA_R_16BF : CUDA_R_32F, CUDA_R_32F, p);
  int32_t count = s;
  int64_t off[3] = {kc * n, kc * m, total};   /* a part's rows on: cuBLASLt's A (our B), B (our A), D */
  for (int i = 0; i < 3; i++) {
    LT(cu.layout_set(l[i], CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count));
    LT(cu.layout_set(l[i], CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &off[i], sizeof off[i]));
  }
  if (bgrad) {   /* our B's sums (BGRADA) where dy is B, our A's (BGRADB) where it is A */
    cublasLtEpilogue_t ep = x->bg ? CUBLASLT_EPILOGUE_BGRADA : CUBLASLT_EPILOGUE_BGRADB;
    void *gp = (void *)G;
    int32_t gt = CUDA_R_32F;
    int64_t gs = len;
    LT(cu.desc_set(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep));
    LT(cu.desc_set(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &gp, sizeof gp));
    LT(cu.desc_set(desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &gt, sizeof gt));
    LT(cu.desc_set(desc, CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE, &gs, sizeof gs));
  }
  if (show_gemms) {
    static int64_t seen[64][5];
    static int nseen;
    int64_t key[5] = {m, n, x->k, ty * 2 + bgrad, s}, i = 0;
    while (i < nseen && memcmp(seen[i], key, sizeof key)) i++;
    if (i == nseen && nseen < 64) {
      memcpy(seen[nseen++], key, sizeof key);
      fprintf(stderr, "gemm %lld x %lld x %lld A^T%s%s: in %d parts of %lld rows\n", (long long)m, (long long)n,
              (long long)x->k, ty & G_A ? " bf16" : "", bgrad ? (x->bg ? " bgrada" : " bgradb") : "", s, (long long)kc);
      gemm_show(desc, l, ty, true, false, m, n, kc, bgrad ? (x->bg ? EP_BGRADA : EP_BGRADB) : EP_NONE);
    }
  }
  float one = 1, zero = 0;
  cublasStatus_t rc = cu.matmul(lt, desc, &one, (void *)I[1], l[0], (void *)I[0], l[1], &zero, (void *)W, l[2],
                                (void *)W, l[2], NULL, (void *)workspace, workspace_size, (cudaStream_t)st);
  cu.layout_destroy(l[0]), cu.layout_destroy(l[1]), cu.layout_destroy(l[2]), cu.desc_destroy(desc);
  if (rc != CUBLAS_STATUS_SUCCESS) return split_refused[bgrad] = true, false;
  void *a[] = {&C, &W, &total, &s, &acc};
  launch("lmc_gemm_parts_sum", grid_for((total + 3) / 4), a);
  return true;
}

static int parts_pick(const RtInst *x, unsigned ty, bool bgrad, int s, const CUdeviceptr *I);

/* the parts x's GEMM runs in (1: whole) */
static int matmul_parts(const RtInst *x, unsigned ty, bool bgrad, const CUdeviceptr *I) {
  if (!x->ta || x->tb || (ty & G_C) || !(ty & G_A) != !(ty & G_B) || split_refused[bgrad] || !split_asked) return 1;
  if (split_asked > 1) return x->k % split_asked == 0 && (x->k / split_asked) % 8 == 0 ? split_asked : 1;
  int s = lt_parts(x->m, x->n, x->k, sm_count, x->acc[0]);
  return s > 1 && split_asked < 0 ? parts_pick(x, ty, bgrad, s, I) : s;
}

/* x's GEMM (matmul, or matmul_bgrad with bgrad) in the parts matmul_parts
 * gives; false where it runs whole (nothing done) */
static bool gemm_in_parts(const RtInst *x, const CUdeviceptr *O, const CUdeviceptr *I, bool bgrad) {
  unsigned ty = gty(x, RT_BF_IN(0), RT_BF_IN(1), RT_BF_OUT(0));
  int s = matmul_parts(x, ty, bgrad, I);
  if (s < 2) return false;
  i64 len = x->bg ? x->n : x->m;
  CUdeviceptr W = parts_scratch(part_buf, part_n, (size_t)(s * x->m * x->n));
  CUdeviceptr G = bgrad ? parts_scratch(part_bias, part_bn, (size_t)(s * len)) : 0;
  if (!parts_into(x, ty, s, bgrad, I, O[0], x->acc[0], W, G)) return false;
  parts_run++;
  if (bgrad) {
    Cols c = {0, s, G};
    col_finish(&c, len, 0, (void *)(uintptr_t)O[1], x->acc[1]);
  }
  return true;
}

/* ---- the parts timed ----
 * The model's parts are a guess at cuBLASLt's tiles and the GPU's rates,
 * so on a GPU (LMC_GEMM_SPLIT unset; LMC_GEMM_SPLIT_TUNE=0 never times,
 * 1 times on the emulated platform too, whose times mean nothing) the first time a
 * weight gradient's shape that the model splits runs outside a graph's
 * recording, it runs in the model's parts, whole, and in half and twice
 * as many parts (where k allows), on the op's inputs into scratch outputs,
 * once and then three times between two events. A way whose product (and
 * bias gradient) differs from the whole GEMM's by more than 2^-10 of its
 * largest magnitude is said and never used (a cuBLASLt that got the
 * batched bias gradient wrong costs the line); the fastest of the rest is
 * kept where it beats the one kept before it by 2% (so noise keeps the
 * model's), and goes to a file beside the kernel cache per GPU model and
 * cuBLASLt version (a line a shape), so later runs and resumes take the
 * same parts, and the same bits, without timing them. Ranks on one
 * machine time a shape once, the first holding the file's lock. */
enum { PARTS_PICKS = 64 };
typedef struct PartsPick { int64_t key[6]; int parts; } PartsPick;   /* key: m n k types bgrad-and-bg acc */
static PartsPick parts_picks[PARTS_PICKS];
static int nparts_picks;
static int parts_tune = -1;   /* LMC_GEMM_SPLIT_TUNE: -1 unset (on a GPU), 0 never, 1 also on the emulator */

static void parts_key(int64_t *key, const RtInst *x, unsigned ty, bool bgrad) {
  key[0] = x->m, key[1] = x->n, key[2] = x->k, key[3] = ty, key[4] = bgrad * 2 + x->bg, key[5] = x->acc[0];
}

static PartsPick *parts_known(const int64_t *key) {
  for (int i = 0; i < nparts_picks; i++)
    if (!memcmp(parts_picks[i].key, key, sizeof parts_picks[i].key)) return &parts_picks[i];
  return NULL;
}

static void parts_read(void) {   /* "M N K TYPES BGRAD ACC PARTS" a line; a damaged one is timed again */
  FILE *f = parts_file[0] ? fopen(parts_file, "r") : NULL;
  char line[256];
  while (f && nparts_picks < PARTS_PICKS && fgets(line, sizeof line, f)) {
    PartsPick p;
    long long v[7];
    if (sscanf(line, "%lld %lld %lld %lld %lld %lld %lld", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6]) != 7 ||
        v[6] < 1 || v[6] > 16 || v[2] % v[6])
      continue;
    for (int i = 0; i < 6; i++) p.key[i] = v[i];
    p.parts = (int)v[6];
    if (!parts_known(p.key)) parts_picks[nparts_picks++] = p;
  }
  if (f) fclose(f);
}

static void parts_write(void) {
  if (!parts_file[0]) return;
  char tmp[1500];
  FILE *f = open_picks(parts_file, tmp, sizeof tmp);
  for (int i = 0; f && i < nparts_picks; i++) {
    const int64_t *k = parts_picks[i].key;
    fprintf(f, "%lld %lld %lld %lld %lld %lld %d\n", (long long)k[0], (long long)k[1], (long long)k[2],
            (long long)k[3], (long long)k[4], (long long)k[5], parts_picks[i].parts);
  }
  close_picks(f, tmp, parts_file);
}

/* one way (s parts; 1: whole) into C and the bias gradient G (s partial
 * vectors), without adding: its time (ms) once warm, or -1 where refused */
static float parts_time(const RtInst *x, unsigned ty, bool bgrad, int s, const CUdeviceptr *I, CUdeviceptr C,
                        CUdeviceptr G, CUevent t[2]) {
  CUdeviceptr W = s > 1 ? parts_scratch(part_buf, part_n, (size_t)(s * x->m * x->n)) : 0;
  for (int rep = 0; rep < 4; rep++) {
    if (rep == 1) CK(ev.record(t[0], st));
    bool ok = s > 1 ? parts_into(x, ty, s, bgrad, I, C, 0, W, G)
              : bgrad ? gemm_ep(ty, true, false, x->m, x->n, x->k, 1, I[0], x->m, I[1], x->n, 0, C, x->n, G, 0,
                                x->bg ? 2 : 1)
                      : (gemm_t(ty, true, false, x->m, x->n, x->k, 1, I[0], x->m, I[1], x->n, 0, C, x->n), true);
    if (!ok) return split_refused[bgrad] = false, -1;   /* (refused while timing: the others still tried) */
  }
  float ms;
  CK(ev.record(t[1], st)), CK(ev.sync(t[1])), CK(ev.elapsed(&ms, t[0], t[1]));
  return ms / 3;
}

/* the largest difference of C (and the bias gradient's s partials, added
 * in order) from the whole GEMM's, over the whole's largest magnitude */
static double parts_diff(const float *want, const float *wg, CUdeviceptr C, CUdeviceptr G, i64 total, i64 len, int s) {
  float *c = rt_xmalloc(total * sizeof *c), *g = rt_xmalloc((s * len + 1) * sizeof *g);
  CK(cu.dtoh(c, C, total * sizeof *c));
  if (G) CK(cu.dtoh(g, G, s * len * sizeof *g));
  double big = 0, diff = 0;
  for (i64 i = 0; i < total; i++) big = fmax(big, fabs(want[i]));
  for (i64 i = 0; i < len && G; i++) big = fmax(big, fabs(wg[i]));
  for (i64 i = 0; i < total; i++) diff = isnan(c[i]) ? INFINITY : fmax(diff, fabs(c[i] - want[i]));
  for (i64 i = 0; i < len && G; i++) {
    float v = g[i];
    for (int p = 1; p < s; p++) v += g[p * len + i];
    diff = isnan(v) ? INFINITY : fmax(diff, fabs(v - wg[i]));
  }
  free(c), free(g);
  return big > 0 ? diff / big : diff;
}

static int parts_tune_now(const RtInst *x, unsigned ty, bool bgrad, int s, const CUdeviceptr *I) {
  i64 total = x->m * x->n, len = bgrad ? (x->bg ? x->n : x->m) : 0;
  CUdeviceptr C = dev_alloc(total * 4), G = bgrad ? dev_alloc(16 * len * 4) : 0;
  CUevent t[2];
  CK(ev.create(&t[0], 0)), CK(ev.create(&t[1], 0));
  float *want = rt_xmalloc(total * sizeof *want), *wg = rt_xmalloc((len + 1) * sizeof *wg);
  bool me = comm_rank() == 0 || parts_tune == 1;
  const char *spoil = getenv("LMC_GEMM_SPLIT_TUNE_SPOIL");   /* (the tuner's test: that many parts' product spoiled) */
  float whole = parts_time(x, ty, bgrad, 1, I, C, G, t), best = whole;   /* the whole GEMM: the reference */
  int pick = 1;
  if (whole >= 0) {   /* (its epilogue refused: the op finds its own way, whole) */
    CK(cu.dtoh(want, C, total * sizeof *want));
    if (G) CK(cu.dtoh(wg, G, len * sizeof *wg));
    char who[32] = "";
    if (comm_world() > 1) snprintf(who, sizeof who, "rank %d ", comm_rank());
    if (me)
      fprintf(stderr, "lmrun: %stiming a weight gradient's GEMM %lld x %lld x %lld%s%s: whole %.3f ms", who,
              (long long)x->m, (long long)x->n, (long long)x->k, ty & G_A ? " bf16" : "",
              bgrad ? " with its bias's" : "", whole);
    int cand[3] = {s, s / 2, s * 2};   /* the model's first: where the rest are within 2%, it stays */
    for (int i = 0; i < 3; i++) {
      int c = cand[i];
      if (c < 2 || c > 16 || x->k % c || (x->k / c) % 64 || x->k / c < 512) continue;
      float ms = parts_time(x, ty, bgrad, c, I, C, G, t);
      if (ms >= 0 && spoil && atoi(spoil) == c) CK(cu.memset8(C, 0xff, 4));   /* a NaN */
      bool ok = ms >= 0 && parts_diff(want, wg, C, G, total, len, c) <= 1.0 / 1024;
      if (me)
        fprintf(stderr, ", %d parts %.3f ms%s", c, ms < 0 ? 0.0 : ms,
                ms < 0 ? " (refused)" : ok ? "" : " (differs from the whole GEMM's: not used)");
      if (ok && (i == 0 ? ms < best : ms < best * 0.98f)) best = ms, pick = c;
    }
    if (me && pick > 1) fprintf(stderr, "; picked %d parts\n", pick);
    if (me && pick == 1) fprintf(stderr, "; picked whole\n");
  }
  CK(ev.destroy(t[0])), CK(ev.destroy(t[1]));
  dev_free(C);
  if (G) dev_free(G);
  free(want), free(wg);
  return pick;
}

static int parts_pick(const RtInst *x, unsigned ty, bool bgrad, int s, const CUdeviceptr *I) {
  if (!(ev.create && ev.elapsed) || !parts_tune || (emulated && parts_tune != 1)) return s;
  int64_t key[6];
  parts_key(key, x, ty, bgrad);
  static bool read;
  if (!read) read = true, parts_read();
  PartsPick *p = parts_known(key);
  if (p) return p->parts;
  if (capturing || nparts_picks == PARTS_PICKS) return s;
  CK(cu.sync());   /* (queued work done before waiting on the lock: no collective waits on a rank blocked there) */
  int lock = parts_file[0] ? file_lock(parts_file) : -1;
  parts_read();
  if (!(p = parts_known(key)) && nparts_picks < PARTS_PICKS) {
    p = &parts_picks[nparts_picks];
    memcpy(p->key, key, sizeof p->key);
    p->parts = parts_tune_now(x, ty, bgrad, s, I);
    nparts_picks++;
    parts_write();
  }
  if (lock >= 0) close(lock);
  return p ? p->parts : s;
}

/* matmul_bgrad: a weight's gradient GEMM whose epilogue (BGRADA for dy
 * as our B, BGRADB as our A) sums dy over the rows into a scratch vector,
 * which one pass then adds to the bias's gradient; where cuBLASLt refuses
 * (once: not asked again), the GEMM and then the column sums. */
static int bgrad_state[2];   /* by x->bg: 0 not asked yet, 1 taken, 2 refused (not asked again) */

static void op_matmul_bgrad(const RtInst *x, const CUdeviceptr *O, const CUdeviceptr *I) {
  static CUdeviceptr sg;
  static size_t nsg;
  i64 len = x->bg ? x->n : x->m, rows = x->k, lda = x->ta ? x->m : x->k, ldb = x->tb ? x->k : x->n;
  unsigned ty = gty(x, RT_BF_IN(0), RT_BF_IN(1), RT_BF_OUT(0));
  float beta = x->acc[0] ? 1 : 0;
  if (bgrad_state[x->bg] != 2 && bwd_epilogues && gemm_in_parts(x, O, I, true)) {
    bgrad_state[x->bg] = 1;   /* (its own partials and pass, in order on the second stream too) */
    return;
  }
  if (bgrad_state[x->bg] != 2 && bwd_epilogues) {
    CUdeviceptr g = scratch(&sg, &nsg, len);
    if (gemm_ep(ty, x->ta, x->tb, x->m, x->n, x->k, 1, I[0], lda, I[1], ldb, beta, O[0], x->n, g, 0, x->bg ? 2 : 1)) {
      Cols c = {0, 1, g};
      col_finish(&c, len, 0, (void *)(uintptr_t)O[1], x->acc[1]);
      bgrad_state[x->bg] = 1;
      return;
    }
    bgrad_state[x->bg] = 2;
  }
  if (!gemm_in_parts(x, O, I, false)) gemm_t(ty, x->ta, x->tb, x->m, x->n, x->k, 1, I[0], lda, I[1], ldb, beta, O[0], x->n);
  CUdeviceptr dy = I[x->bg];
  Cols c = col_plan(rows, len, 1);
  void *a[] = {&c.part, &dy, &rows, &len, &c.per};
  col_pass("lmc_add_bwd_bias", &c, len, a);
  col_finish(&c, len, 0, (void *)(uintptr_t)O[1], x->acc[1]);
}

/* matmul_dgelu: the GEMM with cuBLASLt's DGELU epilogue (the product
 * times GELU's derivative at the pre-activation, in[2], laid out as the
 * output); where refused (once: not asked again), or the pre-activation
 * is not of the output's type, the GEMM and then GELU's backward in place. */
static void op_matmul_dgelu(const RtInst *x, const CUdeviceptr *O, const CUdeviceptr *I) {
  static bool refused;
  i64 mn = x->m * x->n, lda = x->ta ? x->m : x->k, ldb = x->tb ? x->k : x->n;
  unsigned ty = gty(x, RT_BF_IN(0), RT_BF_IN(1), RT_BF_OUT(0));
  bool same = !(x->bf & RT_BF_IN(2)) == !(x->bf & RT_BF_OUT(0));
  if (!refused && same && bwd_epilogues &&
      gemm_ep(ty, x->ta, x->tb, x->m, x->n, x->k, 1, I[0], lda, I[1], ldb, 0, O[0], x->n, 0, I[2], 3))
    return;
  refused |= same;
  gemm_t(ty, x->ta, x->tb, x->m, x->n, x->k, 1, I[0], lda, I[1], ldb, 0, O[0], x->n);
  CUdeviceptr y = O[0], pre = I[2];
  int acc = 0;
  void *a[] = {&y, &y, &pre, &mn, &acc};
  launch("lmc_gelu_bwd", grid_for(mn), a);
}

/* matmul_bias: the bias in cuBLASLt's epilogue, or after the GEMM in a
 * kernel where refused; matmul_bias_gelu: GELU too (GELU_AUX_BIAS: out 0
 * the GELU, out 1 the pre-activation), or the bias then GELU's kernel. */
static void op_matmul_bias(const RtInst *x, const CUdeviceptr *O, const CUdeviceptr *I) {
  bool gelu = x->op == OP_MATMUL_BIAS_GELU;
  i64 mn = x->m * x->n, n = x->n, lda = x->ta ? x->m : x->k, ldb = x->tb ? x->k : x->n;
  unsigned ty = gty(x, RT_BF_IN(0), RT_BF_IN(1), RT_BF_OUT(0));
  float beta = x->acc[0] ? 1 : 0;
  CUdeviceptr h = gelu ? O[1] : O[0], bias = I[2];   /* h: the product plus the bias */
  if (gemm_bias(ty, x->ta, x->tb, x->m, n, x->k, 1, I[0], lda, I[1], ldb, beta, O[0], n, bias, gelu ? h : 0)) return;
  if (!gelu || !gemm_bias(ty, x->ta, x->tb, x->m, n, x->k, 1, I[0], lda, I[1], ldb, beta, h, n, bias, 0)) {
    gemm_t(ty, x->ta, x->tb, x->m, n, x->k, 1, I[0], lda, I[1], ldb, beta, h, n);
    void *a[] = {&h, &h, &bias, &mn, &n};
    launch(x->bf & RT_BF_IN(2) ? "lmc_add" : "lmc_add_bias", grid_for(mn), a);
  }
  if (gelu) {
    CUdeviceptr y = O[0];
    void *a[] = {&y, &h, &mn};
    launch("lmc_gelu", grid_for(mn), a);
  }
}

/* RoPE's cosines and sines for t positions of head dim k (kernels.cu's
 * lmc_rope_table), made the first time a shape is met (before any graph
 * records the programs) and kept: every RoPE after reads them instead of
 * a powf and a sincosf per pair of elements. */
static CUdeviceptr rope_table(i64 t, i64 k, double theta) {
  static CUdeviceptr cs;
  static size_t have;
  static i64 ct, ck;
  static double cth;
  if (cs && ct == t && ck == k && cth == theta) return cs;
  scratch(&cs, &have, (size_t)(t * (k / 2) * 2));
  void *a[] = {&cs, &t, &k, &theta};
  launch("lmc_rope_table", grid_for(t * (k / 2)), a);
  ct = t, ck = k, cth = theta;
  return cs;
}

/* loss (+)= scale * sum of per-row losses, rows summed on the device */
static void sum_rows(CUdeviceptr rows, i64 n, void *loss, float scale, int acc) {
  CUdeviceptr l = dptr(loss);
  void *a[] = {&l, &rows, &n, &scale, &acc};
  launch("lmc_sum_rows", 1, a);
}

/* The fused LM head: logits a chunk of rows at a time in a scratch buffer
 * of at most 2^27 floats (512 MiB), the chunks of equal size: fewer and
 * larger GEMMs (GPT-2's vocab took 25 chunks of 333 rows at 2^24). */
static i64 head_chunk(const RtInst *x) {
  i64 most = ((i64)1 << 27) / x->n;
  most = most < 1 ? 1 : most;
  i64 chunks = (x->m + most - 1) / most;
  return (x->m + chunks - 1) / chunks;
}

static void op_head_xent(const RtInst *x, void **o, void **in) {
  static size_t have_l;
  static CUdeviceptr scratch_l;
  i64 chunk = head_chunk(x), n = x->n, k = x->k, ex = esz(x, RT_BF_IN(0));
  unsigned ty = x->bf & RT_BF_IN(0) ? G_A | G_B | G_C : 0;   /* the logits stored as the activations */
  CUdeviceptr l = scratch(&scratch_l, &have_l, chunk * n), rows = scratch(&scratch_rows, &scratch_rows_n, x->m);
  for (i64 r0 = 0; r0 < x->m; r0 += chunk) {
    i64 c = x->m - r0 < chunk ? x->m - r0 : chunk;
    gemm_t(ty, false, x->tb, c, n, k, 1, dptr(in[0]) + r0 * k * ex, k, dptr(in[1]), x->tb ? k : n, 0, l, n);
    CUdeviceptr rl = rows + r0 * 4, lse = dptr(o[1]) + r0 * 4, y = dptr(in[2]) + r0 * 4;
    void *a[] = {&rl, &lse, &l, &y, &c, &n};
    launch("lmc_head_rows", (unsigned)c, a);
  }
  sum_rows(rows, x->m, o[0], (float)x->scale, x->acc[0]);
}

/* head_dl: the logits in one GEMM into their gradient's buffer (stored as
 * the activations are), then a block a row takes its loss and turns the
 * row into its gradient; the backward pass is the head's two matmuls. */
static void op_head_dl(const RtInst *x, void **o, void **in) {
  i64 m = x->m, n = x->n, k = x->k;
  float scale = (float)x->scale;
  CUdeviceptr l = dptr(o[1]), y = dptr(in[2]), rows = scratch(&scratch_rows, &scratch_rows_n, m);
  gemm_t(gty(x, RT_BF_IN(0), RT_BF_IN(1), RT_BF_OUT(1)), false, x->tb, m, n, k, 1, dptr(in[0]), k, dptr(in[1]),
         x->tb ? k : n, 0, l, n);
  void *a[] = {&rows, &l, &y, &m, &n, &scale};
  launch("lmc_head_dl_rows", (unsigned)m, a);
  sum_rows(rows, m, o[0], scale, x->acc[0]);
}

/* The logits recomputed and their gradient made in place, both stored as
 * the activations are (bf16 under bf16 storage: the CPU backend rounds
 * them the same way); the gradient's two GEMMs read it so. */
static void op_head_xent_bwd(const RtInst *x, void **o, void **in) {
  static size_t have_l;
  static CUdeviceptr scratch_l;
  i64 chunk = head_chunk(x), n = x->n, k = x->k, ex = esz(x, RT_BF_IN(0));
  bool h = x->bf & RT_BF_IN(0);
  unsigned ty = h ? G_A | G_B : 0;
  float scale = (float)x->scale;
  CUdeviceptr l = scratch(&scratch_l, &have_l, chunk * n);
  for (i64 r0 = 0; r0 < x->m; r0 += chunk) {
    i64 c = x->m - r0 < chunk ? x->m - r0 : chunk;
    CUdeviceptr xr = dptr(in[0]) + r0 * k * ex, y = dptr(in[2]) + r0 * 4, lse = dptr(in[3]) + r0 * 4;
    gemm_t(ty | (h ? G_C : 0), false, x->tb, c, n, k, 1, xr, k, dptr(in[1]), x->tb ? k : n, 0, l, n);
    void *a[] = {&l, &y, &lse, &c, &n, &scale};
    launch("lmc_head_grad", grid_for(c * n), a);
    if (o[0]) gemm_t(ty | (x->bf & RT_BF_OUT(0) ? G_C : 0), false, !x->tb, c, k, n, 1, l, n, dptr(in[1]),
                     x->tb ? k : n, x->acc[0] ? 1 : 0, dptr(o[0]) + r0 * k * esz(x, RT_BF_OUT(0)), k);
    if (o[1]) {
      float beta = r0 == 0 && !x->acc[1] ? 0 : 1;
      if (x->tb) gemm_t(ty, true, false, n, k, c, 1, l, n, xr, k, beta, dptr(o[1]), k);
      else gemm_t(ty, true, false, k, n, c, 1, xr, k, l, n, beta, dptr(o[1]), n);
    }
  }
}

/* ---- Mixture of Experts (templates/kernels.cu "moe"): routing, dispatch
 * and combine kernels; the experts' GEMMs one per segment of rows, whose
 * counts come to the host first (one wait a layer and microbatch, which
 * is why an MoE bundle's programs are not recorded as graphs) ---- */

static CUdeviceptr moe_buf, moe_hbuf;
static size_t moe_buf_n, moe_hbuf_n;

/* Row counts come to the host once per value written: a layer's up and
 * down GEMMs and their backward read the same counts, which only a
 * dispatch or an all-to-all's upload writes (those forget them here). */
static struct { CUdeviceptr p; i64 n; double *c; } counts_seen[16];

static void forget_counts(CUdeviceptr p) {   /* 0: all (memory freed) */
  for (int i = 0; i < 16; i++)
    if (!p || counts_seen[i].p == p) counts_seen[i].p = 0;
}

static const double *host_counts(const void *counts, i64 n) {
  static int next;
  for (int i = 0; i < 16; i++)
    if (counts_seen[i].p == dptr(counts) && counts_seen[i].n == n) return counts_seen[i].c;
  int i = next++ % 16;
  free(counts_seen[i].c);
  counts_seen[i].c = rt_xmalloc(n * sizeof(double)), counts_seen[i].n = n, counts_seen[i].p = dptr(counts);
  cuda_download(counts_seen[i].c, counts, n);
  return counts_seen[i].c;
}

/* The rows of each of x's segments, checked against the buffer's m. */
static i64 *moe_counts(const RtInst *x, const void *counts, i64 *rows) {
  const double *c = host_counts(counts, x->seg);
  i64 *r = rt_xmalloc(x->seg * sizeof(i64));
  *rows = 0;
  for (i64 s = 0; s < x->seg; s++) {
    if (!(c[s] >= 0 && c[s] <= (double)x->m)) rt_die("an MoE expert's row count is %g (is this bundle as lmc wrote it?)", c[s]);
    r[s] = (i64)c[s], *rows += r[s];
  }
  if (*rows > x->m)
    rt_die("internal error: the experts got %lld rows, more than the %lld planned", (long long)*rows, (long long)x->m);
  return r;
}

static void op_moe_route(const RtInst *x, void **o, void **in) {
  CUdeviceptr lse = scratch(&moe_buf, &moe_buf_n, 2 * x->n), g = dptr(o[0]), ix = dptr(o[1]), st_ = dptr(o[2]);
  CUdeviceptr l = dptr(in[0]);
  i64 n = x->n, E = x->e, k = x->top;
  int rn = x->rn;
  if (k > 16) rt_die("the CUDA backend routes a token to at most 16 experts (top_k = %lld)", k);
  if (x->fixed) rt_die("holding MoE routing fixed (--gradcheck) needs the CPU backend (--backend cpu)");
  void *a[] = {&g, &ix, &lse, &l, &n, &E, &k, &rn};
  launch("lmc_moe_route", grid_for(n), a);
  void *b[] = {&st_, &l, &ix, &lse, &n, &E, &k};
  launch("lmc_moe_stats", (unsigned)(2 * E + 1), b);
}

static void op_moe_dispatch(const RtInst *x, void **o, void **in) {
  i64 nk = x->n * x->top, E = x->e, k = x->top, d = x->d;
  CUdeviceptr at = scratch(&moe_buf, &moe_buf_n, 4 * (E + 1)), xp = dptr(o[0]), cnt = dptr(o[1]), pos = dptr(o[2]);
  CUdeviceptr xx = dptr(in[0]), ix = dptr(in[1]);
  forget_counts(cnt);
  void *a[] = {&cnt, &pos, &ix, &nk};   /* pos holds each assignment's rank in its expert, then its row */
  launch("lmc_moe_rank", (unsigned)E, a);
  void *s[] = {&at, &cnt, &E};
  launch_grid("lmc_moe_starts", 1, 1, 1, 1, s);
  void *p[] = {&pos, &at, &ix, &nk};
  launch("lmc_moe_place", grid_for(nk), p);
  void *b[] = {&xp, &xx, &pos, &nk, &k, &d};
  launch("lmc_moe_gather", grid_for(nk * d), b);
}

/* The grouped way (kernels.cu's lmc_moe_mm and lmc_moe_mm_tn): each of
 * a layer's expert GEMMs one launch over all its segments, the counts
 * read on the device, so no host wait and CUDA graphs; at medium precision
 * (bf16 products, as cuBLASLt's there) where every segment's rows are this
 * rank's own (no ep: the rows are all x->m), unless LMC_MOE_GROUPED=0. */
static bool moe_grouped_off;
/* their dynamic shared memory: two stages of A and B tiles, bf16
 * (kernels.cu's GG_SA_MM and GG_SA_TN, 128 x (64 + 8) and 64 x (128 + 8)) */
enum { GG_SMEM_MM = 2 * 2 * 128 * (64 + 8) * 2, GG_SMEM_TN = 2 * 2 * 64 * (128 + 8) * 2 };
static bool moe_grouped(const RtInst *x) { return !moe_grouped_off && precision == MP_MEDIUM && x->seg == x->e; }

/* C (+)= A B_e over each segment's rows (kn: B_e stored [k][n], else [n][k]) */
static void gg_mm(const RtInst *x, CUdeviceptr C, CUdeviceptr A, CUdeviceptr B, const void *counts, i64 n, i64 k,
                  i64 lda, i64 ldb, i64 ldc, i64 sB, unsigned ty, int kn, int acc) {
  CUdeviceptr cnt = dptr(counts);
  i64 seg = x->seg, ne = x->e;
  int flags = (int)ty;
  void *a[] = {&C, &A, &B, &cnt, &seg, &ne, &n, &k, &lda, &ldb, &ldc, &sB, &flags, &kn, &acc};
  launch_smem("lmc_moe_mm", (unsigned)((x->m + 127) / 128 + seg), (unsigned)((n + 127) / 128), 1, 256, GG_SMEM_MM, a);
}

/* The parts lmc_moe_mm_tn splits each expert's rows into (split-k). A
 * weight gradient has few tiles and each block runs over all its expert's
 * rows: the bench's MoE (8 experts, D 512, F 688) gives 352 blocks for
 * w1's gradient and 192 for w2's, 1.33 and 0.73 waves of an H200's 264
 * slots (two blocks an SM). Parts fill the waves but write partial sums
 * that lmc_gemm_parts_sum then reads back: of 1 to 8, the fewest
 * microseconds by a model of an H100 or H200, the waves times a part's
 * chunks of 64 rows at 0.93 us a chunk (a 128 x 128 x 64 product at 4.5
 * TFLOP/s an SM, two blocks sharing it), plus the sums' pass at 3 TB/s;
 * the rows as if the experts shared them evenly (their counts are on the
 * device). It keeps 1 part at the bench's shape (w1's: 60 us against 67
 * at 2 parts) and splits where an expert's rows are many and its weight
 * small (16384 rows a w1 of 512 x 1376: 3 parts). LMC_MOE_SPLIT=N
 * (cuda_moe_split) asks for N. */
static int moe_split_asked;
void cuda_moe_split(int parts) { moe_split_asked = parts; }
static CUdeviceptr gg_work;
static size_t gg_work_n;

static int gg_parts(i64 blocks, i64 rows_per_expert, i64 total, bool acc) {
  if (moe_split_asked) return moe_split_asked;
  double chunks = (double)((rows_per_expert + 63) / 64), best = 0;
  i64 slots = 2 * (i64)(sm_count > 0 ? sm_count : 1);
  int parts = 1;
  for (int s = 1; s <= 8; s++) {
    double us = (double)((blocks * s + slots - 1) / slots) * (chunks / s) * 0.93;
    if (s > 1) us += (double)(s + 1 + acc) * (double)total * 4 / 3e6;   /* bytes at 3 TB/s, in us */
    if (s == 1 || us < best) best = us, parts = s;
  }
  return parts;
}

/* C_e (+)= A' B over expert e's rows: a weight's gradient, fp32 [m, n] */
static void gg_tn(const RtInst *x, CUdeviceptr C, CUdeviceptr A, CUdeviceptr B, const void *counts, i64 m, i64 n,
                  i64 lda, i64 ldb, unsigned ty, int acc) {
  CUdeviceptr cnt = dptr(counts);
  i64 seg = x->seg, ne = x->e, ldc = n, sC = m * n, mt = (m + 127) / 128, nt = (n + 127) / 128, total = ne * sC;
  int flags = (int)ty, parts = gg_parts(mt * nt * ne, x->m / ne, total, acc);
  if (ne * parts > 65535) parts = (int)(65535 / ne > 1 ? 65535 / ne : 1);   /* a grid's z */
  CUdeviceptr W = parts > 1 ? scratch(&gg_work, &gg_work_n, (size_t)(parts * total)) : 0;
  void *a[] = {&C, &W, &A, &B, &cnt, &seg, &ne, &m, &n, &lda, &ldb, &ldc, &sC, &flags, &acc, &parts};
  launch_smem("lmc_moe_mm_tn", (unsigned)mt, (unsigned)nt, (unsigned)(ne * parts), 256, GG_SMEM_TN, a);
  if (parts == 1) return;
  void *s[] = {&C, &W, &total, &parts, &acc};
  launch("lmc_gemm_parts_sum", grid_for((total + 3) / 4), s);
}

/* One GEMM per segment: C rows r0.. of each, expert s % e's weights. */
typedef struct Seg { i64 r0, rows, e; } Seg;
static Seg seg_at(const RtInst *x, const i64 *c, i64 s, i64 *r0) {
  Seg g = {*r0, c[s], s % x->e};
  *r0 += c[s];
  return g;
}

/* h = x w1' (| x w3'), a = act(h) */
static void op_moe_up(const RtInst *x, void **o, void **in) {
  bool swiglu = x->op == OP_MOE_UP;
  const void *counts = in[swiglu ? 3 : 2];
  i64 f = x->n, d = x->d, hw = swiglu ? 2 * f : f, rows = x->m, r0 = 0, *c = NULL;
  CUdeviceptr a = dptr(o[0]), h = dptr(o[1]), xx = dptr(in[0]), w1 = dptr(in[1]), w3 = swiglu ? dptr(in[2]) : 0;
  i64 ex = esz(x, RT_BF_IN(0)), ew = esz(x, RT_BF_IN(1)), eh = esz(x, RT_BF_OUT(1));
  unsigned ty = gty(x, RT_BF_IN(0), RT_BF_IN(1), RT_BF_OUT(1));
  if (moe_grouped(x)) {
    gg_mm(x, h, xx, w1, counts, f, d, d, d, hw, f * d, ty, 0, 0);
    if (swiglu) gg_mm(x, h + f * eh, xx, w3, counts, f, d, d, d, hw, f * d, ty, 0, 0);
  } else c = moe_counts(x, counts, &rows);
  for (i64 s = 0; c && s < x->seg; s++) {
    Seg g = seg_at(x, c, s, &r0);
    if (!g.rows) continue;
    gemm_t(ty, false, true, g.rows, f, d, 1, xx + g.r0 * d * ex, d, w1 + g.e * f * d * ew, d, 0, h + g.r0 * hw * eh, hw);
    if (swiglu)
      gemm_t(ty, false, true, g.rows, f, d, 1, xx + g.r0 * d * ex, d, w3 + g.e * f * d * ew, d, 0, h + (g.r0 * hw + f) * eh,
             hw);
  }
  int sw = swiglu;
  void *args[] = {&a, &h, &rows, &f, &sw};
  if (rows) launch("lmc_moe_act", grid_for(rows * f), args);
  free(c);
}

static void op_moe_down(const RtInst *x, void **o, void **in) {
  i64 f = x->n, d = x->d, rows, r0 = 0;
  i64 ea = esz(x, RT_BF_IN(0)), ew = esz(x, RT_BF_IN(1)), ey = esz(x, RT_BF_OUT(0));
  unsigned ty = gty(x, RT_BF_IN(0), RT_BF_IN(1), RT_BF_OUT(0));
  if (moe_grouped(x)) return gg_mm(x, dptr(o[0]), dptr(in[0]), dptr(in[1]), in[2], d, f, f, f, d, d * f, ty, 0, 0);
  i64 *c = moe_counts(x, in[2], &rows);
  for (i64 s = 0; s < x->seg; s++) {
    Seg g = seg_at(x, c, s, &r0);
    if (g.rows)
      gemm_t(ty, false, true, g.rows, d, f, 1, dptr(in[0]) + g.r0 * f * ea, f, dptr(in[1]) + g.e * d * f * ew, f, 0,
             dptr(o[0]) + g.r0 * d * ey, d);
  }
  free(c);
}

/* da = dy w2;  dw2[e] (+)= dy' a */
static void op_moe_down_bwd(const RtInst *x, void **o, void **in) {
  i64 f = x->n, d = x->d, rows, r0 = 0;
  i64 edy = esz(x, RT_BF_IN(0)), ea = esz(x, RT_BF_IN(1)), ew = esz(x, RT_BF_IN(2)), eda = esz(x, RT_BF_OUT(0));
  unsigned t0 = gty(x, RT_BF_IN(0), RT_BF_IN(2), RT_BF_OUT(0)), t1 = gty(x, RT_BF_IN(0), RT_BF_IN(1), RT_BF_OUT(1));
  if (moe_grouped(x)) {
    if (o[0]) gg_mm(x, dptr(o[0]), dptr(in[0]), dptr(in[2]), in[3], f, d, d, f, f, d * f, t0, 1, x->acc[0]);
    if (o[1]) gg_tn(x, dptr(o[1]), dptr(in[0]), dptr(in[1]), in[3], d, f, d, f, t1, x->acc[1]);
    return;
  }
  i64 *c = moe_counts(x, in[3], &rows);
  if (o[1] && !x->acc[1]) cuda_zero(o[1], x->e * d * f);
  for (i64 s = 0; s < x->seg; s++) {
    Seg g = seg_at(x, c, s, &r0);
    if (!g.rows) continue;
    CUdeviceptr dy = dptr(in[0]) + g.r0 * d * edy, a = dptr(in[1]) + g.r0 * f * ea;
    if (o[0]) gemm_t(t0, false, false, g.rows, f, d, 1, dy, d, dptr(in[2]) + g.e * d * f * ew, f, x->acc[0] ? 1 : 0,
                     dptr(o[0]) + g.r0 * f * eda, f);
    if (o[1]) gemm_t(t1, true, false, d, f, g.rows, 1, dy, d, a, f, 1, dptr(o[1]) + g.e * d * f * 4, f);
  }
  free(c);
}

/* dh from da, then dx = dh1 w1 (+ dh3 w3), dw1[e] (+)= dh1' x, dw3[e] (+)= dh3' x */
static void op_moe_up_bwd(const RtInst *x, void **o, void **in) {
  bool swiglu = x->op == OP_MOE_UP_BWD, gg = moe_grouped(x);
  const void *counts = in[swiglu ? 4 : 3];
  i64 f = x->n, d = x->d, hw = swiglu ? 2 * f : f, rows = x->m, r0 = 0, *c = gg ? NULL : moe_counts(x, counts, &rows);
  /* dh is stored as da is (bf16 under bf16 storage, as the CPU rounds it) */
  CUdeviceptr dh = scratch(&moe_hbuf, &moe_hbuf_n, (size_t)(rows ? rows : 1) * hw), da = dptr(in[0]),
              h = dptr(in[swiglu ? 5 : 4]), xx = dptr(in[1]), w1 = dptr(in[2]), w3 = swiglu ? dptr(in[3]) : 0;
  i64 edh = esz(x, RT_BF_IN(0)), ex = esz(x, RT_BF_IN(1)), ew = esz(x, RT_BF_IN(2)), edx = esz(x, RT_BF_OUT(0));
  unsigned hb = x->bf & RT_BF_IN(0) ? G_A : 0;
  unsigned t0 = hb | (x->bf & RT_BF_IN(2) ? G_B : 0) | (x->bf & RT_BF_OUT(0) ? G_C : 0),
           t1 = hb | (x->bf & RT_BF_IN(1) ? G_B : 0);
  int sw = swiglu;
  void *args[] = {&dh, &da, &h, &rows, &f, &sw};
  if (rows) launch("lmc_moe_act_bwd", grid_for(rows * f), args);
  void *dw1 = o[1], *dw3 = swiglu ? o[2] : NULL;
  if (gg) {
    if (o[0]) gg_mm(x, dptr(o[0]), dh, w1, counts, d, f, hw, d, d, f * d, t0, 1, x->acc[0]);
    if (o[0] && swiglu) gg_mm(x, dptr(o[0]), dh + f * edh, w3, counts, d, f, hw, d, d, f * d, t0, 1, 1);
    if (dw1) gg_tn(x, dptr(dw1), dh, xx, counts, f, d, hw, d, t1, x->acc[1]);
    if (dw3) gg_tn(x, dptr(dw3), dh + f * edh, xx, counts, f, d, hw, d, t1, x->acc[2]);
    return;
  }
  if (dw1 && !x->acc[1]) cuda_zero(dw1, x->e * f * d);
  if (dw3 && !x->acc[2]) cuda_zero(dw3, x->e * f * d);
  for (i64 s = 0; s < x->seg; s++) {
    Seg g = seg_at(x, c, s, &r0);
    if (!g.rows) continue;
    CUdeviceptr dh1 = dh + g.r0 * hw * edh, xs = xx + g.r0 * d * ex, dxs = dptr(o[0]) + g.r0 * d * edx;
    if (o[0]) {
      gemm_t(t0, false, false, g.rows, d, f, 1, dh1, hw, w1 + g.e * f * d * ew, d, x->acc[0] ? 1 : 0, dxs, d);
      if (swiglu) gemm_t(t0, false, false, g.rows, d, f, 1, dh1 + f * edh, hw, w3 + g.e * f * d * ew, d, 1, dxs, d);
    }
    if (dw1) gemm_t(t1, true, false, f, d, g.rows, 1, dh1, hw, xs, d, 1, dptr(dw1) + g.e * f * d * 4, d);
    if (dw3) gemm_t(t1, true, false, f, d, g.rows, 1, dh1 + f * edh, hw, xs, d, 1, dptr(dw3) + g.e * f * d * 4, d);
  }
  free(c);
}

static void op_moe(const RtInst *x, void **o, void **in) {
  CUdeviceptr O[3], I[RT_MAX_IN];
  for (int i = 0; i < 3; i++) O[i] = dptr(o[i]);
  for (int i = 0; i < RT_MAX_IN; i++) I[i] = dptr(in[i]);
  i64 n = x->n, d = x->d, k = x->top, E = x->e, nk = x->n * x->top;
  int acc0 = x->acc[0], acc1 = x->acc[1], rn = x->rn;
  double ng = (double)x->ng, share = x->share, aux = x->aux, zl = x->zl, scale = x->scale;
  switch (x->op) {
  case OP_MOE_ROUTE: op_moe_route(x, o, in); return;
  case OP_MOE_LOSS: { void *a[] = {&O[0], &O[1], &I[0], &E, &k, &ng, &share, &aux, &zl, &acc0, &acc1}; launch_grid("lmc_moe_loss", 1, 1, 1, 1, a); return; }
  case OP_MOE_ROUTE_BWD: {
    void *a[] = {&O[0], &I[0], &I[1], &I[2], &I[3], &n, &E, &k, &rn, &aux, &zl, &scale, &ng, &acc0};
    launch("lmc_moe_route_bwd", grid_for(n), a);
    return;
  }
  case OP_MOE_DISPATCH: op_moe_dispatch(x, o, in); return;
  case OP_MOE_DISPATCH_BWD: { void *a[] = {&O[0], &I[0], &I[1], &n, &k, &d, &acc0}; launch("lmc_moe_dispatch_bwd", grid_for(n * d), a); return; }
  case OP_MOE_COMBINE: { void *a[] = {&O[0], &I[0], &I[1], &I[2], &n, &k, &d, &acc0}; launch("lmc_moe_combine", grid_for(n * d), a); return; }
  case OP_MOE_COMBINE_BWD:
    if (o[0]) { void *a[] = {&O[0], &I[0], &I[2], &I[3], &nk, &k, &d, &acc0}; launch("lmc_moe_combine_bwd_rows", grid_for(nk * d), a); }
    if (o[1]) { void *a[] = {&O[1], &I[0], &I[1], &I[2], &k, &d, &acc1}; launch("lmc_moe_combine_bwd_gates", (unsigned)nk, a); }
    return;
  case OP_MOE_UP: case OP_MOE_UP_GELU: ragged = true, op_moe_up(x, o, in), ragged = false; return;
  case OP_MOE_DOWN: ragged = true, op_moe_down(x, o, in), ragged = false; return;
  case OP_MOE_DOWN_BWD: ragged = true, op_moe_down_bwd(x, o, in), ragged = false; return;
  case OP_MOE_UP_BWD: case OP_MOE_UP_GELU_BWD: ragged = true, op_moe_up_bwd(x, o, in), ragged = false; return;
  }
  rt_die("the CUDA backend cannot run op '%s'", rt_op_names[x->op]);
}

static void cuda_run(const RtInst *x, void **o, void **in) {
  CUdeviceptr O[3], I[RT_MAX_IN];
  for (int i = 0; i < 3; i++) O[i] = dptr(o[i]);
  for (int i = 0; i < RT_MAX_IN; i++) I[i] = dptr(in[i]);
  i64 n = x->n, d = x->d, v = x->v, v0 = x->v0, nb = x->nb;
  int acc0 = x->acc[0], acc1 = x->acc[1], acc2 = x->acc[2];
  float eps = (float)x->eps, scale = (float)x->scale;
  switch (x->op) {
  case OP_MATMUL: {
    if (gemm_in_parts(x, O, I, false)) return;
    gemm_t(gty(x, RT_BF_IN(0), RT_BF_IN(1), RT_BF_OUT(0)), x->ta, x->tb, x->m, x->n, x->k, 1, I[0],
           x->ta ? x->m : x->k, I[1], x->tb ? x->k : x->n, x->acc[0] ? 1 : 0, O[0], x->n);
    return;
  }
  case OP_MATMUL_BIAS: case OP_MATMUL_BIAS_GELU: op_matmul_bias(x, O, I); return;
  case OP_MATMUL_BGRAD: op_matmul_bgrad(x, O, I); return;
  case OP_MATMUL_DGELU: op_matmul_dgelu(x, O, I); return;
  case OP_EMBED: { void *a[] = {&O[0], &I[0], &I[1], &n, &d, &v, &v0}; launch("lmc_embed", grid_for(n * d), a); return; }
  case OP_EMBED_BWD: {
    if (!acc0) cuda_zero(o[0], v * d);
    CUdeviceptr order = sorted_order(I[1], n);
    if (order) {
      void *a[] = {&O[0], &I[0], &I[1], &order, &n, &d, &v, &v0};
      launch("lmc_embed_bwd_sorted", (unsigned)n, a);
      return;
    }
    void *a[] = {&O[0], &I[0], &I[1], &n, &d, &v, &v0};
    launch("lmc_embed_bwd", grid_for(d), a);
    return;
  }
  case OP_RMSNORM: { void *a[] = {&O[0], &O[1], &I[0], &I[1], &n, &d, &eps}; launch_row("lmc_rmsnorm", n, d, a); return; }
  case OP_RMSNORM_BWD: {
    if (o[1] && norm_rows(x, o[0], in, 2)) {   /* one pass */
      Cols c = col_plan(n, d, 1);
      CUdeviceptr none = 0;
      void *a[] = {&O[0], &c.part, &I[0], &I[1], &I[2], &none, &I[3], &n, &d, &c.per, &acc0};
      launch_grid(norm_rows_kernel("lmc_rmsnorm_bwd_rows", d), (unsigned)c.chunks, 1, 1, 256, a);
      col_finish(&c, d, 0, o[1], acc1);
      return;
    }
    if (o[0]) { void *a[] = {&O[0], &I[0], &I[1], &I[2], &I[3], &n, &d, &acc0}; launch_row("lmc_rmsnorm_bwd", n, d, a); }
    if (o[1]) {
      Cols c = col_plan(n, d, 1);
      void *a[] = {&c.part, &I[0], &I[1], &I[3], &n, &d, &c.per};
      col_pass("lmc_rmsnorm_bwd_dw", &c, d, a);
      col_finish(&c, d, 0, o[1], acc1);
    }
    return;
  }
  case OP_LAYERNORM: {
    void *a[] = {&O[0], &O[1], &O[2], &I[0], &I[1], &I[2], &n, &d, &eps};
    launch_row("lmc_layernorm", n, d, a);
    return;
  }
  case OP_LAYERNORM_BWD: {
    if (o[1] && o[2] && norm_rows(x, o[0], in, 2)) {   /* one pass */
      Cols c = col_plan(n, d, 2);
      void *a[] = {&O[0], &c.part, &I[0], &I[1], &I[2], &I[3], &I[4], &n, &d, &c.per, &acc0};
      launch_grid(norm_rows_kernel("lmc_layernorm_bwd_rows", d), (unsigned)c.chunks, 1, 1, 256, a);
      col_finish(&c, d, 0, o[1], acc1), col_finish(&c, d, 1, o[2], acc2);
      return;
    }
    if (o[0]) { void *a[] = {&O[0], &I[0], &I[1], &I[2], &I[3], &I[4], &n, &d, &acc0}; launch_row("lmc_layernorm_bwd", n, d, a); }
    if (o[1] || o[2]) {
      Cols c = col_plan(n, d, 2);
      void *a[] = {&c.part, &I[0], &I[1], &I[3], &I[4], &n, &d, &c.per};
      col_pass("lmc_layernorm_bwd_dwdb", &c, d, a);
      col_finish(&c, d, 0, o[1], acc1), col_finish(&c, d, 1, o[2], acc2);
    }
    return;
  }
  case OP_ROPE: case OP_ROPE_BWD: {
    i64 b = x->b, t = x->t, h = x->h, k = x->k;
    int dir = x->op == OP_ROPE ? 1 : -1, acc = x->op == OP_ROPE ? 0 : acc0;
    CUdeviceptr cs = rope_table(t, k, x->theta);
    void *a[] = {&O[0], &I[0], &cs, &b, &t, &h, &k, &dir, &acc};
    launch("lmc_rope", grid_for(b * t * h * k / (k / 2 % 8 ? 2 : 16)), a);   /* (8 pairs a thread-step) */
    return;
  }
  case OP_ATTENTION: op_attention(x, o, in); return;
  case OP_HEAD_XENT: op_head_xent(x, o, in); return;
  case OP_HEAD_XENT_BWD: op_head_xent_bwd(x, o, in); return;
  case OP_HEAD_DL: op_head_dl(x, o, in); return;
  case OP_ATTENTION_BWD: op_attention_bwd(x, o, in); return;
  case OP_SILU: { void *a[] = {&O[0], &I[0], &n}; launch("lmc_silu", grid_for(n), a); return; }
  case OP_GELU: { void *a[] = {&O[0], &I[0], &n}; launch("lmc_gelu", grid_for(n), a); return; }
  case OP_MUL: { void *a[] = {&O[0], &I[0], &I[1], &n}; launch("lmc_mul", grid_for(n), a); return; }
  case OP_SWIGLU: { void *a[] = {&O[0], &I[0], &I[1], &n}; launch("lmc_swiglu", grid_for(n), a); return; }
  case OP_SWIGLU_BWD: {
    void *a[] = {&O[0], &O[1], &I[0], &I[1], &I[2], &n, &acc0, &acc1};
    launch("lmc_swiglu_bwd", grid_for(n), a);
    return;
  }
  case OP_ADD: {   /* a bias (an fp32 parameter, broadcast over rows) has its own kernel */
    void *a[] = {&O[0], &I[0], &I[1], &n, &nb};
    launch(nb < n && !(x->bf & RT_BF_IN(1)) ? "lmc_add_bias" : "lmc_add", grid_for(n), a);
    return;
  }
  case OP_SILU_BWD: { void *a[] = {&O[0], &I[0], &I[1], &n, &acc0}; launch("lmc_silu_bwd", grid_for(n), a); return; }
  case OP_GELU_BWD: { void *a[] = {&O[0], &I[0], &I[1], &n, &acc0}; launch("lmc_gelu_bwd", grid_for(n), a); return; }
  case OP_MUL_BWD: {
    void *a[] = {&O[0], &O[1], &I[0], &I[1], &I[2], &n, &acc0, &acc1};
    launch("lmc_mul_bwd", grid_for(n), a);
    return;
  }
  case OP_ADD_BWD:
    if (o[0]) { void *a[] = {&O[0], &I[0], &n, &acc0}; launch("lmc_add_bwd", grid_for(n), a); }
    if (o[1] && nb == n) { void *a[] = {&O[1], &I[0], &n, &acc1}; launch("lmc_add_bwd", grid_for(n), a); }
    else if (o[1]) {
      i64 rows = n / nb;
      Cols c = col_plan(rows, nb, 1);
      void *a[] = {&c.part, &I[0], &rows, &nb, &c.per};
      col_pass("lmc_add_bwd_bias", &c, nb, a);
      col_finish(&c, nb, 0, o[1], acc1);
    }
    return;
  case OP_XENT: {
    CUdeviceptr rows = scratch(&scratch_rows, &scratch_rows_n, n);
    void *a[] = {&rows, &I[0], &I[1], &n, &v};
    launch("lmc_xent", (unsigned)n, a);
    sum_rows(rows, n, o[0], scale, acc0);
    return;
  }
  case OP_XENT_BWD: {
    void *a[] = {&O[0], &I[0], &I[1], &n, &v, &scale, &acc0};
    launch("lmc_xent_bwd", (unsigned)n, a);
    return;
  }
  case OP_XENT_MAX: { void *a[] = {&O[0], &I[0], &n, &v}; launch("lmc_xent_max", (unsigned)n, a); return; }
  case OP_XENT_STATS: {
    void *a[] = {&O[0], &O[1], &I[0], &I[1], &I[2], &n, &v, &v0};
    launch("lmc_xent_stats", (unsigned)n, a);
    return;
  }
  case OP_XENT_LOSS: {
    CUdeviceptr rows = scratch(&scratch_rows, &scratch_rows_n, n);
    void *a[] = {&rows, &I[2], &I[3], &I[4], &n};
    launch("lmc_xent_loss_rows", grid_for(n), a);
    sum_rows(rows, n, o[0], scale, acc0);
    return;
  }
  case OP_XENT_TP_BWD: {
    void *a[] = {&O[0], &I[0], &I[1], &I[2], &I[3], &n, &v, &v0, &scale, &acc0};
    launch("lmc_xent_tp_bwd", grid_for(n * v), a);
    return;
  }
  case OP_CAST: { void *a[] = {&O[0], &I[0], &n}; launch("lmc_cast", grid_for(n), a); return; }
  default:
    if (x->op >= OP_MOE_ROUTE && x->op <= OP_MOE_COMBINE_BWD) return op_moe(x, o, in);
  }
  rt_die("the CUDA backend cannot run op '%s'", rt_op_names[x->op]);
}

/* Partial sums per block on the device (at most 256 blocks a tensor, none
 * idle), copied back once for all the tensors and added in order. */
static double cuda_sumsq(const void *const *x, const int64_t *n, int count) {
  enum { BLOCKS = 256 };
  static size_t have;
  CUdeviceptr part = scratch(&scratch_part, &have, (size_t)BLOCKS * (count > 0 ? count : 1));
  unsigned *blocks = rt_xmalloc((count + 1) * sizeof *blocks), total = 0;
  for (int t = 0; t < count; t++) {
    CUdeviceptr p = part + (size_t)total * 4, xp = dptr(x[t]);
    i64 nn = n[t];
    blocks[t] = grid_for(nn) < BLOCKS ? grid_for(nn) : BLOCKS;
    void *a[] = {&p, &xp, &nn};
    launch("lmc_sumsq", blocks[t], a);
    total += blocks[t];
  }
  float *h = rt_xmalloc((total + 1) * sizeof *h);
  if (total) CK(cu.dtoh(h, part, total * sizeof *h));
  double s = 0;
  for (int t = 0, k = 0; t < count; t++) {
    double one = 0;
    for (unsigned i = 0; i < blocks[t]; i++) one += h[k++];
    s += one;
  }
  free(h), free(blocks);
  side_warm = true;   /* a step's gradients summed: the scratch buffers grown (cuda_side_begin) */
  return s;
}

static void cuda_adamw(void *w, const void *g, void *m, void *v, int64_t n, const AdamArgs *x) {
  CUdeviceptr W = dptr(w), Gr = dptr(g), M = dptr(m), V = dptr(v);
  i64 nn = n;
  float lr = x->lr, b1 = x->beta1, b2 = x->beta2, eps = x->eps, wd = x->wd, bc1 = x->bc1, bc2 = x->bc2,
        gs = x->gscale;
  void *a[] = {&W, &Gr, &M, &V, &nn, &lr, &b1, &b2, &eps, &wd, &bc1, &bc2, &gs};
  launch("lmc_adamw", grid_for(n), a);
}

/* A kernel lmc generated for a group of ops (compiler/group.c): every
 * size is compiled in, so its parameters are the values alone, and where
 * it has a finish kernel, a scratch buffer last (one for every group, as
 * they run one after another on the stream; grown before a CUDA graph
 * records it, as the other scratch buffers are), then that kernel. */
static CUdeviceptr scratch_fused;
static size_t scratch_fused_n;

static void cuda_run_fused(const RtInst *x, void **ops, int n) {
  CUdeviceptr p[RT_MAX_FUSED + 1];
  void *a[RT_MAX_FUSED + 1];
  for (int i = 0; i < n; i++) p[i] = dptr(ops[i]), a[i] = &p[i];
  if (x->scratch) p[n] = scratch(&scratch_fused, &scratch_fused_n, (size_t)(x->scratch + 3) / 4), a[n] = &p[n];
  launch_grid(x->kernel, (unsigned)x->grid, 1, 1, (unsigned)x->block, a);
  if (x->scratch) launch_grid(x->finish, (unsigned)x->fgrid, 1, 1, 256, a);
}

/* The whole optimizer step in four launches (kernels.cu's *_multi and
 * lmc_norm_*) and one copy back, the norm; AdamW writes each weight's
 * bf16 copy too, where it has one (the bf16 plan), so no forward pass
 * casts the weights again. The tables of tensors and
 * of blocks of OPT_CHUNK elements live in one device buffer, made again
 * only when the parameters change. */
enum { OPT_CHUNK = 4096 };

static bool same_params(const OptParam *x, const OptParam *y, int count) {   /* field by field: not the padding */
  for (int i = 0; i < count; i++)
    if (x[i].w != y[i].w || x[i].g != y[i].g || x[i].m != y[i].m || x[i].v != y[i].v || x[i].w16 != y[i].w16 || x[i].n != y[i].n ||
        x[i].wd != y[i].wd || x[i].in_norm != y[i].in_norm)
      return false;
  return true;
}

static CUdeviceptr opt_norm;   /* where the optimizer run last left the gradient norm (two doubles) */

static void nccl_wait(CUstream s, int64_t n, int axis);

static double cuda_optimizer(const OptParam *p, int count, const AdamArgs *a, double clip) {
  static OptParam *have;
  static int nhave;
  static i64 nblocks;
  static CUdeviceptr buf;
  static size_t off[10];   /* T, N, BS, PER, NS, WD, IN, FIRST, BT, PART */
  if (!have || nhave != count || !same_params(have, p, count)) {
    free(have);
    have = rt_xmalloc(count * sizeof *p), memcpy(have, p, count * sizeof *p), nhave = count;
    int *first = rt_xmalloc((count + 1) * sizeof *first), *in = rt_xmalloc(count * sizeof *in);
    float *wd = rt_xmalloc(count * sizeof *wd);
    i64 *n = rt_xmalloc(count * sizeof *n);
    CUdeviceptr *t = rt_xmalloc(5 * count * sizeof *t);
    nblocks = 0;
    for (int i = 0; i < count; i++) {
      first[i] = (int)nblocks, nblocks += (p[i].n + OPT_CHUNK - 1) / OPT_CHUNK;
      in[i] = p[i].in_norm, wd[i] = (float)p[i].wd, n[i] = p[i].n;
      t[5 * i] = dptr(p[i].w), t[5 * i + 1] = dptr(p[i].g), t[5 * i + 2] = dptr(p[i].m), t[5 * i + 3] = dptr(p[i].v);
      t[5 * i + 4] = p[i].w16 ? dptr(p[i].w16) : 0;
    }
    first[count] = (int)nblocks;
    int *bt = rt_xmalloc((nblocks + 1) * sizeof *bt);
    i64 *bs = rt_xmalloc((nblocks + 1) * sizeof *bs);
    for (int i = 0; i < count; i++)
      for (int b = first[i]; b < first[i + 1]; b++) bt[b] = i, bs[b] = (i64)(b - first[i]) * OPT_CHUNK;
    size_t sz[10] = {5 * count * 8, count * 8, nblocks * 8, count * 8, 16, count * 4, count * 4, (count + 1) * 4,
                     nblocks * 4, nblocks * 4};
    size_t total = 0;
    for (int i = 0; i < 10; i++) off[i] = total, total += (sz[i] + 15) / 16 * 16;
    if (buf) dev_free(buf);
    buf = dev_alloc(total);
    const void *src[8] = {t, n, bs, NULL, NULL, wd, in, first};
    for (int i = 0; i < 8; i++)
      if (src[i] && sz[i]) CK(cu.htod(buf + off[i], src[i], sz[i]));
    if (nblocks) CK(cu.htod(buf + off[8], bt, nblocks * 4));
    free(first), free(in), free(wd), free(n), free(t), free(bt), free(bs);
  }
  CUdeviceptr T = buf + off[0], N = buf + off[1], BS = buf + off[2], PER = buf + off[3], NS = buf + off[4],
              WD = buf + off[5], IN = buf + off[6], FIRST = buf + off[7], BT = buf + off[8], PART = buf + off[9];
  float fclip = (float)clip, lr = a->lr, b1 = a->beta1, b2 = a->beta2, eps = a->eps, bc1 = a->bc1, bc2 = a->bc2;
  int cnt = count;
  if (nblocks) {
    void *s[] = {&PART, &T, &N, &BT, &BS};
    launch("lmc_sumsq_multi", (unsigned)nblocks, s);
  }
  int part = a->norm_axes ? 1 : 0;
  void *nt[] = {&PER, &PART, &FIRST, &IN}, *f[] = {&NS, &PER, &cnt, &fclip, &part};
  if (count) launch("lmc_norm_tensors", (unsigned)count, nt);
  launch("lmc_norm_finish", 1, f);
  if (part) {   /* the squared sum over the groups that split the model (tp, pp, ep, in order), then the norm */
    for (int axis = 0; axis < 4; axis++) {
      if (!(a->norm_axes >> axis & 1)) continue;
      ncclResult_t rc = nc.allreduce((void *)NS, (void *)NS, 1, ncclDouble, ncclSum, ncomm[axis], (cudaStream_t)st);
      if (rc != ncclSuccess) rt_die("NCCL: the gradient norm's all-reduce over the %s group: %s", comm_axis_name(axis), nc.errstr(rc));
      nccl_wait(st, 1, axis);
    }
    part = 2;
    launch("lmc_norm_finish", 1, f);
  }
  if (nblocks) {
    void *w[] = {&T, &N, &WD, &BT, &BS, &NS, &lr, &b1, &b2, &eps, &bc1, &bc2};
    launch("lmc_adamw_multi", (unsigned)nblocks, w);
  }
  side_warm = true;   /* a step done: the scratch buffers grown (cuda_side_begin) */
  opt_norm = NS;
  if (a->later) return NAN;   /* (step_end copies it) */
  double ns[2];
  CK(cu.dtoh(ns, NS, sizeof ns));
  return ns[0];
}

/* ---- steps queued ahead (exec.c's rt_step_begin) ----
 * Each step's end queues copies of the state region (the loss, MoE's
 * metrics) and the optimizer's norm into one of two pinned host slots and
 * records an event; step_wait waits for the oldest slot's event (on
 * several ranks, watching the step's NCCL collectives: nccl_watch). Without
 * pinned memory the copies wait for the step when queued: correct, and
 * nothing ahead. */
static bool watch_end;     /* the step being queued is watched at its end (cuda_watch_at_end) */
static unsigned end_axes;  /* the groups its collectives went over, a bit each */
static void nccl_watch(CUstream s, CUevent e, int64_t n, unsigned axes);
static struct { unsigned char *p; size_t cap; int64_t n; bool pinned; CUevent done; unsigned axes; } slots[2];
static int slot_first, slot_count;

static void cuda_step_end(const void *state, int64_t n) {
  int k = (slot_first + slot_count) % 2;
  size_t need = (size_t)n * sizeof(float) + 2 * sizeof(double);
  if (slot_count == 2) rt_die("internal: a third step queued ahead");
  if (slots[k].cap < need) {
    if (slots[k].pinned) cuda_pin(slots[k].p, slots[k].cap, false);
    free(slots[k].p);
    size_t cap = (need + 4095) / 4096 * 4096;
    void *p;
    if (posix_memalign(&p, 4096, cap)) rt_die("out of memory");
    slots[k].p = p, slots[k].cap = cap, slots[k].pinned = cuda_pin(p, cap, true);
  }
  if (!slots[k].done) CK(ev.create(&slots[k].done, CU_EVENT_DISABLE_TIMING));
  slots[k].n = n;
  if (n) CK(cu.dtoh_async(slots[k].p + 2 * sizeof(double), dptr(state), (size_t)n * sizeof(float), st));
  CK(cu.dtoh_async(slots[k].p, opt_norm, 2 * sizeof(double), st));
  CK(ev.record(slots[k].done, st));
  slots[k].axes = end_axes, end_axes = 0;
  slot_count++;
}

static void cuda_step_wait(void *state, double *norm) {
  if (!slot_count) rt_die("internal: no step queued ahead to wait for");
  int k = slot_first;
  if (slots[k].axes) nccl_watch(NULL, slots[k].done, -2, slots[k].axes);   /* (a step's NCCL collectives) */
  else CK(ev.sync(slots[k].done));
  memcpy(norm, slots[k].p, sizeof *norm);
  memcpy(state, slots[k].p + 2 * sizeof(double), (size_t)slots[k].n * sizeof(float));
  slot_first = (slot_first + 1) % 2, slot_count--;
}

/* ---- collectives and transfers: staged through host memory ---- */

/* Waits for the NCCL collectives on stream s (or up to event e) against
 * the deadline of the MPI path (comm_timeout), so a stopped peer ends the
 * job, not hangs it; axes: the groups they go over (a bit each). n: the
 * values moved, 0 for the pipeline's sends, -1 for a CUDA graph's
 * all-reduces, -2 for a step's collectives watched at its end. While a
 * step is queued ahead (cuda_watch_at_end) the watch waits for its end. */
static void nccl_watch(CUstream s, CUevent e, int64_t n, unsigned axes) {
  if (watch_end && !e) {
    end_axes |= axes;
    return;
  }
  double t0 = rt_now();
  int axis = 0;   /* (the first group, for the messages) */
  while (axis < 3 && !(axes >> axis & 1)) axis++;
  for (;;) {
    CUresult rc = e ? ev.query(e) : cu.stream_query(s);
    if (rc == CUDA_SUCCESS) return;
    if (rc != CUDA_ERROR_NOT_READY) {   /* (the work failed: a driver's error, or the emulated NCCL's timeout) */
      const char *why = "unknown error";
      cu.errstr(rc, &why);
      rt_die("%s over the %s group failed: %s",
             n == -2 ? "a step's NCCL collectives" : n == -1 ? "a CUDA graph's NCCL all-reduces"
                                                   : n ? "an NCCL collective" : "the pipeline's NCCL sends",
             comm_axis_name(axis), why);
    }
    for (int a = 0; a < 4; a++) {
      if (!(axes >> a & 1)) continue;
      for (int c = 0; c < (a == AXIS_PP ? 3 : 1); c++) {   /* (the pp group's: its sends' too) */
        ncclComm_t comm = c ? pcomm[c - 1] : ncomm[a];
        ncclResult_t err = ncclSuccess;
        if (comm) nc.async_error(comm, &err);
        if (err != ncclSuccess) rt_die("NCCL: a collective over the %s group failed: %s", comm_axis_name(a), nc.errstr(err));
      }
    }
    if (rt_now() - t0 > comm_timeout) {
      for (int a = 0; a < 4; a++)
        if (ncomm[a]) nc.abort(ncomm[a]);
      for (int c = 0; c < 2; c++)
        if (pcomm[c]) nc.abort(pcomm[c]);
      if (!n) rt_die("no progress for %.0f s in the pipeline's NCCL sends over the %s group",
                     comm_timeout, comm_axis_name(axis));
      if (n == -1) rt_die("no progress for %.0f s in a CUDA graph's NCCL all-reduces over the %s group",
                          comm_timeout, comm_axis_name(axis));
      if (n == -2)
        rt_die("no progress for %.0f s in a step's NCCL collectives over the %s group", comm_timeout, comm_axis_name(axis));
      rt_die("no progress for %.0f s in an NCCL collective of %lld values over the %s group", comm_timeout,
             (long long)n, comm_axis_name(axis));
    }
    usleep(20);
  }
}

static void nccl_wait(CUstream s, int64_t n, int axis) { nccl_watch(s, NULL, n, 1u << axis); }

/* Multi-rank steps queued ahead (exec.c): whether every group this rank
 * has goes through NCCL, so that a step's collectives (and the gradient
 * norm's sum over groups, cuda_optimizer) are queued on the device with
 * its work; and, on, that those queued until step_end are watched by
 * step_wait (nccl_watch) rather than each as it is made. */
static bool cuda_device_collectives(void) {
  if (!use_nccl || !ev.query || !ev.create || !ev.record || !ev.wait) return false;
  for (int a = 0; a < 4; a++)
    if (comm_group_size(a) > 1 && !ncomm[a]) return false;
  return comm_group_size(AXIS_PP) < 2 || (pcomm[0] && ev.copy);   /* (the pipeline's sends: nccl_p2p) */
}

static void cuda_watch_at_end(bool on) { watch_end = on; }

static int captured_axis = -1;   /* a graph being recorded holds NCCL all-reduces over this group */

static void cuda_allreduce(void *x, int64_t n, int axis, int op) {
  if (use_nccl && ncomm[axis]) {
    ncclResult_t rc = nc.allreduce(x, x, (size_t)n, ncclFloat, op ? ncclMax : ncclSum, ncomm[axis], (cudaStream_t)st);
    if (rc != ncclSuccess) rt_die("NCCL: ncclAllReduce over the %s group: %s", comm_axis_name(axis), nc.errstr(rc));
    if (capturing) captured_axis = axis;   /* recorded: watched after each replay */
    else nccl_wait(st, n, axis);
    return;
  }
  if (capturing) rt_die("internal error: an all-reduce through the host inside a CUDA graph");
  float *h = rt_xmalloc(n * sizeof(float));
  CK(cu.dtoh(h, dptr(x), n * sizeof(float)));
  comm_allreduce(h, n, 4, axis, op);
  CK(cu.htod(dptr(x), h, n * sizeof(float)));
  free(h);
}

/* The gradient all-reduces overlapped with the backward pass: queued on
 * a stream of their own (cst) behind an event on st, so each starts once
 * the work queued before it (its bucket's last gradients) is done; the
 * wait puts an event of cst's in st's way and watches cst from the host
 * against the deadline. Without NCCL on the axis (or the driver's events)
 * they are refused and the interpreter runs them at the wait. */
static CUstream cst;
static CUevent ready_ev, done_ev;
static int64_t queued_n;
static int queued_axis = -1;

static bool cuda_allreduce_async(void *x, int64_t n, int axis) {
  if (!use_nccl || !ncomm[axis] || !ev.create || !ev.record || !ev.wait) return false;
  if (!cst) {
    CK(cu.stream_create(&cst, 0));
    CK(ev.create(&ready_ev, CU_EVENT_DISABLE_TIMING)), CK(ev.create(&done_ev, CU_EVENT_DISABLE_TIMING));
  }
  CK(ev.record(ready_ev, st));
  CK(ev.wait(cst, ready_ev, 0));
  ncclResult_t rc = nc.allreduce(x, x, (size_t)n, ncclFloat, ncclSum, ncomm[axis], (cudaStream_t)cst);
  if (rc != ncclSuccess) rt_die("NCCL: ncclAllReduce over the %s group: %s", comm_axis_name(axis), nc.errstr(rc));
  queued_n += n, queued_axis = axis;
  return true;
}

static void cuda_wait_allreduces(void) {
  if (queued_axis < 0) return;
  CK(ev.record(done_ev, cst));
  CK(ev.wait(st, done_ev, 0));
  nccl_wait(cst, queued_n, queued_axis);
  queued_n = 0, queued_axis = -1;
}

/* A bf16 value to reals and back (for the host, the collectives and the
 * GEMMs of mixed operand types). */
static void widen_to(CUdeviceptr y, CUdeviceptr x, int64_t n) {
  i64 nn = n;
  void *a[] = {&y, &x, &nn};
  launch("lmc_widen", grid_for(n), a);
}

static void narrow_to(CUdeviceptr y, CUdeviceptr x, int64_t n) {
  i64 nn = n;
  void *a[] = {&y, &x, &nn};
  launch("lmc_narrow", grid_for(n), a);
}

static void cuda_widen(void *reals, const void *x, int64_t n) { widen_to(dptr(reals), dptr(x), n); }
static void cuda_narrow(void *x, const void *reals, int64_t n) { narrow_to(dptr(x), dptr(reals), n); }

/* MoE's all-to-alls: a group of NCCL sends and receives, or staged
 * through host memory over MPI. */
static void cuda_alltoallv(const void *x, const int64_t *sc, const int64_t *sd, void *y, const int64_t *rc,
                           const int64_t *rd, int elem, int axis) {
  int n = comm_group_size(axis);
  if (use_nccl && ncomm[axis]) {
    ncclResult_t r = nc.group_start();
    ncclDataType_t t = elem == 2 ? ncclBfloat16 : ncclFloat;
    int64_t total = 0;
    for (int q = 0; q < n && r == ncclSuccess; q++) {
      if (sc[q]) r = nc.send((const char *)x + sd[q] * elem, (size_t)sc[q], t, q, ncomm[axis], (cudaStream_t)st);
      if (rc[q] && r == ncclSuccess) r = nc.recv((char *)y + rd[q] * elem, (size_t)rc[q], t, q, ncomm[axis], (cudaStream_t)st);
      total += sc[q];
    }
    ncclResult_t e = nc.group_end();
    if (r != ncclSuccess || e != ncclSuccess)
      rt_die("NCCL: an all-to-all over the %s group: %s", comm_axis_name(axis), nc.errstr(r != ncclSuccess ? r : e));
    nccl_wait(st, total, axis);
    return;
  }
  int64_t ns = 0, nr = 0;
  for (int q = 0; q < n; q++) {
    if (sd[q] + sc[q] > ns) ns = sd[q] + sc[q];
    if (rd[q] + rc[q] > nr) nr = rd[q] + rc[q];
  }
  char *hs = rt_xmalloc((ns + 1) * elem), *hr = rt_xmalloc((nr + 1) * elem);
  if (ns) CK(cu.dtoh(hs, dptr(x), ns * elem));
  comm_alltoallv(hs, sc, sd, hr, rc, rd, elem, axis);
  if (nr) CK(cu.htod(dptr(y), hr, nr * elem));
  free(hs), free(hr);
}

typedef struct Staged {
  void *buf;
  int slot;
} Staged;
static Staged *staged;
static int nstaged;

/* The pipeline's transfers through NCCL (each rank a GPU of its own).
 * A send copies the value into a buffer of its own on st (the
 * interpreter's widened bf16 scratch is reused at once) and goes on the
 * peer's send stream behind an event, so neither the host nor the compute
 * stream waits for the peer; a receive is NCCL work on st, so whatever
 * reads the value waits for it on the device. Activations and gradients
 * travel on communicators of their own, one direction each, and NCCL
 * matches a pair's transfers in the order they are issued, which the
 * compiler checks the schedules keep (sched-order). wait_sends(slot) puts
 * the slot's sends' completion in st's way before their buffers are used
 * again; wait_sends(-1) also watches the send streams from the host
 * against the deadline. */
typedef struct Outgoing {
  CUdeviceptr buf;
  int64_t cap;                 /* bytes */
  CUevent done;                /* recorded on the send stream after the send */
  int slot;                    /* the slot it was sent for, or -1: free */
} Outgoing;
static Outgoing *outgoing;
static int noutgoing;
static CUstream *send_st;      /* per peer in the pp group */
static CUevent sent_ev;

static bool nccl_p2p(int axis) {
  return use_nccl && axis == AXIS_PP && pcomm[0] && ev.create && ev.record && ev.wait && ev.copy;
}

static Outgoing *outgoing_for(int64_t bytes, int slot) {
  for (int i = 0; i < noutgoing; i++)
    if (outgoing[i].slot < 0 && outgoing[i].cap >= bytes) return outgoing[i].slot = slot, &outgoing[i];
  outgoing = realloc(outgoing, (noutgoing + 1) * sizeof *outgoing);
  if (!outgoing) rt_die("out of memory");
  Outgoing *o = &outgoing[noutgoing++];
  *o = (Outgoing){dev_alloc(bytes), bytes, NULL, slot};
  CK(ev.create(&o->done, CU_EVENT_DISABLE_TIMING));
  return o;
}

static void nccl_send(const void *x, int64_t n, int elem, int peer, bool grad, int slot) {
  if (!send_st) {
    send_st = calloc(comm_group_size(AXIS_PP), sizeof *send_st);
    if (!send_st) rt_die("out of memory");
    CK(ev.create(&sent_ev, CU_EVENT_DISABLE_TIMING));
  }
  if (!send_st[peer]) CK(cu.stream_create(&send_st[peer], 0));
  Outgoing *o = outgoing_for(n * elem, slot);
  CK(ev.copy(o->buf, dptr(x), n * elem, st));
  CK(ev.record(sent_ev, st));
  CK(ev.wait(send_st[peer], sent_ev, 0));
  ncclResult_t rc = nc.send((const void *)o->buf, (size_t)n, elem == 2 ? ncclBfloat16 : ncclFloat, peer, pcomm[grad],
                            (cudaStream_t)send_st[peer]);
  if (rc != ncclSuccess) rt_die("NCCL: ncclSend to pp rank %d: %s", peer, nc.errstr(rc));
  CK(ev.record(o->done, send_st[peer]));
}

static void nccl_wait_sends(int slot) {
  for (int i = 0; i < noutgoing; i++)
    if (outgoing[i].slot >= 0 && (slot < 0 || outgoing[i].slot == slot))
      CK(ev.wait(st, outgoing[i].done, 0)), outgoing[i].slot = -1;
  for (int p = 0; slot < 0 && send_st && p < comm_group_size(AXIS_PP); p++)
    if (send_st[p]) nccl_wait(send_st[p], 0, AXIS_PP);
}

static void cuda_send(const void *x, int64_t n, int elem, int peer, int tag, int axis, int slot) {
  if (nccl_p2p(axis)) return nccl_send(x, n, elem, peer, tag & 1, slot);
  void *h = rt_xmalloc(n * elem);
  CK(cu.dtoh(h, dptr(x), n * elem));
  comm_isend(h, n, elem, peer, tag, axis, slot);
  staged = realloc(staged, (nstaged + 1) * sizeof(Staged));
  if (!staged) rt_die("out of memory");
  staged[nstaged++] = (Staged){h, slot};
}

static void cuda_recv(void *x, int64_t n, int elem, int peer, int tag, int axis) {
  if (nccl_p2p(axis)) {
    ncclResult_t rc = nc.recv(x, (size_t)n, elem == 2 ? ncclBfloat16 : ncclFloat, peer, pcomm[tag & 1], (cudaStream_t)st);
    if (rc != ncclSuccess) rt_die("NCCL: ncclRecv from pp rank %d: %s", peer, nc.errstr(rc));
    return;
  }
  void *h = rt_xmalloc(n * elem);
  comm_recv(h, n, elem, peer, tag, axis);
  CK(cu.htod(dptr(x), h, n * elem));
  free(h);
}

static void cuda_wait_sends(int slot) {
  if (noutgoing) nccl_wait_sends(slot);
  comm_wait_sends(slot);
  int j = 0;
  for (int i = 0; i < nstaged; i++) {
    if (slot < 0 || staged[i].slot == slot) free(staged[i].buf);
    else staged[j++] = staged[i];
  }
  nstaged = j;
}

/* cuBLASLt's rate on a 4096^3 GEMM of the model's operand types (bf16
 * under bf16 storage, else fp32 at the matmul precision in force), in
 * FLOP/s. */
static double cuda_gemm_peak(void) {
  /* the probe's buffers are not the model's; on the emulated platform
   * (OpenBLAS behind cuBLASLt) a smaller square: its rate means nothing,
   * and 4096's took the e2e test 8 s */
  i64 n = emulated ? 1024 : 4096, keep = peak_bytes;
  CUdeviceptr a = dptr(cuda_alloc(n * n * 4)), b = dptr(cuda_alloc(n * n * 4)), c = dptr(cuda_alloc(n * n * 4));
  unsigned ty = storage16 ? G_A | G_B | G_C : 0;   /* the model's GEMMs' types */
  gemm_t(ty, false, false, n, n, n, 1, a, n, b, n, 0, c, n);
  CK(cu.sync());
  int reps = 10;
  double t = rt_now();
  for (int r = 0; r < reps; r++) gemm_t(ty, false, false, n, n, n, 1, a, n, b, n, 0, c, n);
  CK(cu.sync());
  double rate = 2.0 * n * n * (double)n * reps / (rt_now() - t);
  cuda_release((void *)a), cuda_release((void *)b), cuda_release((void *)c);
  peak_bytes = keep;
  return rate;
}

static void cuda_sync(void) { CK(cu.sync()); }

/* The rate a device-to-device copy of 512 MiB moves memory at (bytes read
 * plus bytes written, a second): the bound of an op that streams its
 * values once, against which bench_train puts such ops. */
static double cuda_copy_peak(void) {
  if (!ev.copy) return 0;
  i64 n = emulated ? (16 << 20) : (512 << 20), keep = peak_bytes;
  CUdeviceptr a = dptr(cuda_alloc(n)), b = dptr(cuda_alloc(n));
  CK(cu.memset8(a, 0, n)), CK(ev.copy(b, a, n, st));
  CK(cu.sync());
  int reps = 10;
  double t = rt_now();
  for (int r = 0; r < reps; r++) CK(ev.copy(r % 2 ? a : b, r % 2 ? b : a, n, st));
  CK(cu.sync());
  double rate = 2.0 * n * reps / (rt_now() - t);
  cuda_release((void *)a), cuda_release((void *)b);
  peak_bytes = keep;
  return rate;
}

/* The profile's clock: an event on the stream before each op, tagged with
 * its key; time_read waits for the last and adds each gap between two
 * events to the first one's key (key < 0: not counted). Ops are timed as
 * the GPU runs them, without a host wait between them. */
static CUevent *marks;
static int *mark_key, nmarks, capmarks;

static void cuda_time_mark(int key) {
  if (nmarks == capmarks) {
    int cap = capmarks ? 2 * capmarks : 256;
    marks = realloc(marks, cap * sizeof *marks), mark_key = realloc(mark_key, cap * sizeof *mark_key);
    if (!marks || !mark_key) rt_die("out of memory");
    for (int i = capmarks; i < cap; i++) CK(ev.create(&marks[i], 0));
    capmarks = cap;
  }
  mark_key[nmarks] = key;
  CK(ev.record(marks[nmarks++], st));
}

static void cuda_time_read(double *seconds) {
  if (!nmarks) return;
  CK(ev.sync(marks[nmarks - 1]));
  for (int i = 0; i + 1 < nmarks; i++) {
    float ms;
    CK(ev.elapsed(&ms, marks[i], marks[i + 1]));
    if (mark_key[i] >= 0) seconds[mark_key[i]] += ms * 1e-3;
  }
  nmarks = 0;
}

/* ---- the weights' gradients on a second stream (exec.c: run_ops) ----
 * A weight gradient's GEMM goes to side_st behind an event on st, with a
 * cuBLASLt workspace of its own; side_join puts its last event in st's
 * way. Only GEMMs that use nothing shared with st's work go there: plain
 * ones and matmul_bgrad once cuBLASLt has taken its epilogue (its own
 * scratch vector and column-sum pass, in order on side_st), and only
 * after a step has run (every scratch buffer grown: none is reallocated
 * while side_st may read it). A CUDA graph records both streams, side_st
 * joining st's capture through the event. LMC_SIDE_STREAM=0: one stream. */
enum { SIDE_EVENTS = 64 };
static CUstream main_st;
static CUevent fork_ev, side_ev[SIDE_EVENTS];   /* GEMM n's done: side_ev[n % SIDE_EVENTS] */
static int side_n;
static CUdeviceptr side_workspace, main_workspace;

static int64_t side_gemms;   /* sent there (outside graph replays) */

static bool cuda_side_begin(const RtInst *x) {
  bool bgrad_ok = bwd_epilogues && bgrad_state[x->bg] == 1;   /* (its own scratch and pass, on side_st in order) */
  if (!side_on || !side_warm || (x->op == OP_MATMUL_BGRAD && !bgrad_ok)) return false;
  CK(ev.record(fork_ev, st)), CK(ev.wait(side_st, fork_ev, 0));
  main_st = st, main_workspace = workspace;
  st = side_st, workspace = side_workspace;
  side_gemms++;
  return true;
}

bool cuda_side_used(void) { return side_gemms > 0; }

static int cuda_side_end(void) {
  side_n = side_n == INT_MAX ? 1 : side_n + 1;
  CK(ev.record(side_ev[side_n % SIDE_EVENTS], st));
  st = main_st, workspace = main_workspace;
  return side_n;
}

/* (an event recorded again since GEMM upto's is a later GEMM's: waiting
 * for it waits for upto's too, side_st running them in order) */
static void cuda_side_join(int upto) { CK(ev.wait(st, side_ev[upto % SIDE_EVENTS], 0)); }

/* CUDA graphs: the work queued between graph_begin and graph_end is
 * recorded, not run; graph_run replays it. The interpreter records each
 * program (per microbatch slot) once its scratch buffers have grown, so no
 * allocation or host wait falls inside. */
/* A recording, and the group of the NCCL all-reduces it holds (-1: none),
 * which each replay waits for against the deadline, as a launch of them
 * one by one does. */
typedef struct Graph {
  CUgraphExec x;
  int axis;
} Graph;

static void cuda_graph_begin(void) {
  CK(cu.capture_begin(st, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
  capturing = true, captured_axis = -1;
}

static void *cuda_graph_end(void) {
  CUgraph g;
  CUgraphExec x;
  CK(cu.capture_end(st, &g));
  capturing = false;
  CK(cu.graph_instantiate(&x, g, 0));
  CK(cu.graph_destroy(g));
  Graph *r = rt_xmalloc(sizeof *r);
  *r = (Graph){x, captured_axis};
  return r;
}

static void cuda_graph_run(void *p) {
  Graph *g = p;
  CK(cu.graph_launch(g->x, st));
  if (g->axis >= 0) nccl_wait(st, -1, g->axis);
}

static void cuda_graph_free(void *p) {
  Graph *g = p;
  CK(cu.graph_exec_destroy(g->x));
  free(g);
}

/* An all-reduce inside a program is recorded where it goes through NCCL. */
/* Ops a CUDA graph can hold: all but an all-reduce staged through the
 * host, MoE's all-to-all (host-sized) and its experts' GEMMs the ragged
 * way (their counts come to the host) */
static bool cuda_graph_ok(const RtInst *x) {
  switch (x->op) {
  case OP_ALLREDUCE: return use_nccl && ncomm[x->axis];
  case OP_MOE_A2A: case OP_MOE_A2A_REV: return false;
  case OP_MOE_UP: case OP_MOE_UP_GELU: case OP_MOE_DOWN: case OP_MOE_DOWN_BWD: case OP_MOE_UP_BWD:
  case OP_MOE_UP_GELU_BWD: return moe_grouped(x);
  default: return true;
  }
}

/* While a step queued ahead has NCCL work in flight that nothing has
 * watched yet (nccl_watch: the steps begun and not waited for, and the
 * one being queued), a call that holds the host until the device gets
 * somewhere (a synchronous copy, set or free, a context sync: MoE's
 * counts read each layer, a buffer grown in the first steps) first
 * watches that work on each stream that carries it, against the
 * deadline; else a stopped peer would hang the rank in that call rather
 * than end the job. The calls are cu's, wrapped once the driver loads. */
static struct {
  CUresult (*free)(CUdeviceptr);
  CUresult (*htod)(CUdeviceptr, const void *, size_t);
  CUresult (*dtoh)(void *, CUdeviceptr, size_t);
  CUresult (*memset8)(CUdeviceptr, unsigned char, size_t);
  CUresult (*sync)(void);
} blocking;
static CUevent in_flight_ev;

static void watch_in_flight(void) {
  unsigned axes = end_axes;
  for (int i = 0; i < slot_count; i++) axes |= slots[(slot_first + i) % 2].axes;
  if (!axes || capturing) return;
  if (!in_flight_ev) CK(ev.create(&in_flight_ev, CU_EVENT_DISABLE_TIMING));
  int peers = send_st ? comm_group_size(AXIS_PP) : 0;
  for (int i = -2; i < peers; i++) {   /* st, the buckets' stream, the sends' */
    CUstream s = i == -2 ? st : i == -1 ? cst : send_st[i];
    if (!s) continue;
    CK(ev.record(in_flight_ev, s));
    nccl_watch(NULL, in_flight_ev, -2, axes);
  }
}

static CUresult watched_free(CUdeviceptr p) { return watch_in_flight(), blocking.free(p); }
static CUresult watched_htod(CUdeviceptr d, const void *h, size_t n) { return watch_in_flight(), blocking.htod(d, h, n); }
static CUresult watched_dtoh(void *h, CUdeviceptr d, size_t n) { return watch_in_flight(), blocking.dtoh(h, d, n); }
static CUresult watched_memset8(CUdeviceptr d, unsigned char v, size_t n) { return watch_in_flight(), blocking.memset8(d, v, n); }
static CUresult watched_sync(void) { return watch_in_flight(), blocking.sync(); }

static void watch_blocking_calls(void) {
  if (cu.free == watched_free) return;   /* (wrapped already) */
  blocking.free = cu.free, blocking.htod = cu.htod, blocking.dtoh = cu.dtoh, blocking.memset8 = cu.memset8;
  blocking.sync = cu.sync;
  cu.free = watched_free, cu.htod = watched_htod, cu.dtoh = watched_dtoh, cu.memset8 = watched_memset8;
  cu.sync = watched_sync;
}

static Backend cuda = {
    .name = "cuda-f32", .elem = 4, .alloc = cuda_alloc, .release = cuda_release, .upload = cuda_upload,
    .download = cuda_download, .read = cuda_read, .write = cuda_write, .memory = cuda_memory, .pin = cuda_pin, .zero = cuda_zero, .zero_ranges = cuda_zero_ranges, .upload_ids = cuda_upload_ids, .run = cuda_run,
    .sumsq = cuda_sumsq, .adamw = cuda_adamw, .allreduce = cuda_allreduce, .allreduce_async = cuda_allreduce_async,
    .wait_allreduces = cuda_wait_allreduces, .send = cuda_send,
    .recv = cuda_recv, .wait_sends = cuda_wait_sends, .gemm_peak = cuda_gemm_peak, .copy_peak = cuda_copy_peak, .sync = cuda_sync,
    .peak_bytes = cuda_peak_bytes, .graph_begin = cuda_graph_begin, .graph_end = cuda_graph_end,
    .graph_run = cuda_graph_run, .graph_free = cuda_graph_free, .graph_ok = cuda_graph_ok, .optimizer = cuda_optimizer,
    .run_fused = cuda_run_fused,
    .alltoallv = cuda_alltoallv, .widen = cuda_widen, .narrow = cuda_narrow, .side_begin = cuda_side_begin,
    .side_end = cuda_side_end, .side_join = cuda_side_join};

void cuda_matmul_precision(int p) { precision = p; }
void cuda_collectives(int mode) { collectives = mode; }

/* NCCL for the all-reduces: the library (the emulated platform's own when
 * emulated), then one communicator per axis with more than one rank, made
 * by every rank in axis order (a unique id from the group's rank 0 over
 * MPI). Returns false with the reason when it cannot. */
static bool nccl_setup(void *emu, char *why, size_t n) {
  const char *names[] = {"libnccl.so.2", "libnccl.so", "/usr/local/cuda/lib64/libnccl.so.2", NULL};
  void *h = emu ? emu : open_lib(names);
  if (!h) return snprintf(why, n, "no NCCL library (libnccl.so.2)"), false;
  *(void **)&nc.get_id = dlsym(h, "ncclGetUniqueId"), *(void **)&nc.init = dlsym(h, "ncclCommInitRank");
  *(void **)&nc.allreduce = dlsym(h, "ncclAllReduce"), *(void **)&nc.async_error = dlsym(h, "ncclCommGetAsyncError");
  *(void **)&nc.abort = dlsym(h, "ncclCommAbort"), *(void **)&nc.errstr = dlsym(h, "ncclGetErrorString");
  *(void **)&nc.send = dlsym(h, "ncclSend"), *(void **)&nc.recv = dlsym(h, "ncclRecv");
  *(void **)&nc.group_start = dlsym(h, "ncclGroupStart"), *(void **)&nc.group_end = dlsym(h, "ncclGroupEnd");
  if (!nc.get_id || !nc.init || !nc.allreduce || !nc.async_error || !nc.abort || !nc.errstr || !nc.send || !nc.recv ||
      !nc.group_start || !nc.group_end)
    return snprintf(why, n, "the NCCL library lacks a function this build needs"), false;
  for (int a = 0; a < 4; a++) {
    if (comm_group_size(a) < 2) continue;
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    if (comm_group_rank(a) == 0 && nc.get_id(&id) != ncclSuccess) rt_die("NCCL: ncclGetUniqueId failed");
    comm_group_bcast(&id, sizeof id, a);
    ncclResult_t rc = nc.init(&ncomm[a], comm_group_size(a), id, comm_group_rank(a));
    if (rc != ncclSuccess) rt_die("NCCL: ncclCommInitRank over the %s group: %s", comm_axis_name(a), nc.errstr(rc));
  }
  for (int c = 0; c < 2 && comm_group_size(AXIS_PP) > 1; c++) {   /* the pipeline's two directions */
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    if (comm_group_rank(AXIS_PP) == 0 && nc.get_id(&id) != ncclSuccess) rt_die("NCCL: ncclGetUniqueId failed");
    comm_group_bcast(&id, sizeof id, AXIS_PP);
    ncclResult_t rc = nc.init(&pcomm[c], comm_group_size(AXIS_PP), id, comm_group_rank(AXIS_PP));
    if (rc != ncclSuccess) rt_die("NCCL: ncclCommInitRank over the pp group: %s", nc.errstr(rc));
  }
  return true;
}

/* A knob of the environment that takes a number from lo to hi (ends:
 * lo or hi alone) into *v, left as it is when unset or empty; anything
 * else is false, with "NAME=VALUE: it takes " and what in why. */
static bool env_int(const char *name, long lo, long hi, bool ends, const char *what, int *v, char *why, size_t n) {
  const char *s = getenv(name);
  if (!s || !*s) return true;
  char *end;
  long x = strtol(s, &end, 10);
  if (*end || x < lo || x > hi || (ends && x != lo && x != hi))
    return snprintf(why, n, "%s=%s: it takes %s", name, s, what), false;
  return *v = (int)x, true;
}
static bool env_on(const char *name) {   /* a switch: set, not empty and not 0 */
  const char *s = getenv(name);
  return s && *s && strcmp(s, "0");
}
static bool env_choice(const char *name, int a, int b, const char *what, int *v, char *why, size_t n) {
  return env_int(name, a, b, true, what, v, why, n);
}
static bool env_count(const char *name, long max, const char *what, int *v, char *why, size_t n) {
  return env_int(name, 1, max, false, what, v, why, n);
}

/* The CUDA backend for the bundle in dir, on a GPU or on the emulated
 * platform, or NULL with the reason. */
Backend *cuda_backend(const char *dir, bool emulate, char *why, size_t n) {
  emulated = emulate;
  static const char *names[2][3] = {{"cuda-f32", "cuda-f32-high", "cuda-f32-medium"},
                                    {"cuda-emu-f32", "cuda-emu-f32-high", "cuda-emu-f32-medium"}};
  cuda.name = names[emulate][precision];
  int ep = bwd_epilogues, grouped = !moe_grouped_off, side = 1, ahead = 1, gemm_tune = 0;
  if (!env_choice("LMC_ATTENTION_DKV_QT", 32, 64, "32 or 64 (queries a step of dK/dV)", &dkv_qt_asked, why, n) ||
      !env_choice("LMC_ATTENTION_ROWS", 64, 128, "64 or 128 (query rows a block of attention's forward and dQ)",
                  &rows_asked, why, n) ||
      !env_choice("LMC_ATTENTION_STAGES", 1, 2, "1 or 2 (stages of K and V tiles in attention's forward and dQ)",
                  &kv_stages, why, n) ||
      !env_int("LMC_ATTENTION_WGMMA", 0, 2, false,
               "0, 1 or 2 (attention on wgmma, compute capability 9.0; 2: pipelined)", &wgmma_asked, why, n) ||
      !env_count("LMC_ATTENTION_WARPGROUPS", 3, "1, 2 or 3 (warpgroups a block of attention's wgmma kernels)",
                 &wg_asked, why, n) ||
      !env_count("LMC_ATTENTION_SECTION", INT_MAX, "a count of heads, 1 or more (heads a section of attention's launch order)",
                 &section_asked, why, n) ||
      !env_choice("LMC_ATTENTION_TUNE", 0, 1, "0 (attention's default kernels) or 1 (timed, also on the emulator)",
                  &fa_tune, why, n) ||
      !env_choice("LMC_GEMM_BACKWARD_EPILOGUES", 0, 1, "0 (the GEMM, then kernels) or 1", &ep, why, n) ||
      !env_count("LMC_MOE_SPLIT", 64, "a count of parts from 1 to 64 (split-k of the MoE weight gradients' grouped GEMMs)",
                 &moe_split_asked, why, n) ||
      !env_choice("LMC_MOE_GROUPED", 0, 1, "0 (a GEMM a segment, counts on the host) or 1", &grouped, why, n) ||
      !env_choice("LMC_SIDE_STREAM", 0, 1, "0 (every GEMM on one stream) or 1 (weight gradients beside)", &side, why,
                  n) ||
      !env_int("LMC_GEMM_SPLIT", 0, 16, false,
               "0 (weight gradients' GEMMs whole), 1 (in the parts a model picks) or 2 to 16 parts", &split_asked, why,
               n) ||
      !env_choice("LMC_GEMM_SPLIT_TUNE", 0, 1, "0 (the model's parts untimed) or 1 (timed, also on the emulator)",
                  &parts_tune, why, n) ||
      !env_choice("LMC_GEMM_TUNE", 0, 1, "0 (cuBLASLt's heuristic's choice) or 1 (the fastest, timed once a GPU model)",
                  &gemm_tune, why, n) ||
      !env_choice("LMC_STEPS_AHEAD", 0, 1, "0 (the host waits for each step) or 1 (the next step queued before it ends)",
                  &ahead, why, n) ||
      !env_count("LMC_JIT_THREADS", 64, "a count of threads from 1 to 64 (NVRTC programs compiled at once)",
                 &jit_threads_asked, why, n))
    return NULL;
  side_on = side;
  bwd_epilogues = ep, moe_grouped_off = !grouped;
  static const char *knobs[] = {"LMC_ATTENTION_DKV_QT", "LMC_ATTENTION_ROWS", "LMC_ATTENTION_STAGES",
                                "LMC_ATTENTION_WGMMA", "LMC_ATTENTION_WARPGROUPS", "LMC_ATTENTION_SECTION"};
  for (size_t i = 0; i < sizeof knobs / sizeof *knobs; i++)
    if (getenv(knobs[i]) && *getenv(knobs[i])) fa_pinned = true;
  if (!load_driver(why, n)) return NULL;
  watch_blocking_calls();
  bool events = ev.create && ev.record && ev.sync && ev.elapsed;
  cuda.time_mark = events ? cuda_time_mark : NULL, cuda.time_read = events ? cuda_time_read : NULL;
  cuda.step_end = events && ahead ? cuda_step_end : NULL;
  cuda.step_wait = cuda.step_end ? cuda_step_wait : NULL;
  cuda.device_collectives = cuda_device_collectives, cuda.watch_at_end = cuda_watch_at_end;
  show_gemms = env_on("LMC_GEMM_SHOW"), norm_one_pass = env_on("LMC_NORM_BWD_ONE_PASS");
  tune = gemm_tune == 1 && events && ev.destroy;
  CUdevice dev;
  CUcontext ctx;
  int major = 0, minor = 0, count = 1;
  const char *local = getenv("OMPI_COMM_WORLD_LOCAL_RANK");   /* one device per local rank */
  CK(cu.device_count(&count));
  CK(cu.device_get(&dev, local ? atoi(local) % count : 0));
  device = dev;
  CK(cu.attr(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev));
  CK(cu.attr(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev));
  CK(cu.attr(&l2_bytes, CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE, dev));
  CK(cu.attr(&sm_count, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev));
  sm = major * 10 + minor;
  CK(cu.retain(&ctx, dev));
  CK(cu.set_current(ctx));
  context = ctx;
  LT(cu.lt_create(&lt));
  workspace = dev_alloc(workspace_size);
  CK(cu.stream_create(&st, 0));
  if (side_on && ev.create && ev.record && ev.wait) {
    CK(cu.stream_create(&side_st, 0));
    CK(ev.create(&fork_ev, CU_EVENT_DISABLE_TIMING));
    for (int i = 0; i < SIDE_EVENTS; i++) CK(ev.create(&side_ev[i], CU_EVENT_DISABLE_TIMING));
    side_workspace = dev_alloc(workspace_size);
  } else side_on = false;
  load_kernels(dir);
  if (sm == 90 && (wgmma_asked || fa_tune_on())) wgmma_probe();   /* (not inside a graph's recording) */
  static const char *names16[2][3] = {{"cuda-bf16", "cuda-bf16-high", "cuda-bf16-medium"},
                                      {"cuda-emu-bf16", "cuda-emu-bf16-high", "cuda-emu-bf16-medium"}};
  if (storage16) cuda.name = names16[emulate][precision];
  /* NCCL when asked, or (auto) when every rank of this machine has a GPU */
  const char *local_n = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  bool own = !local_n || atoi(local_n) <= count;
  if (comm_world() > 1 && (collectives == CC_NCCL || (collectives == CC_AUTO && own && !emulated))) {
    char nwhy[256];
    use_nccl = nccl_setup(emulated ? open_emu() : NULL, nwhy, sizeof nwhy);
    if (!use_nccl && collectives == CC_NCCL) rt_die("--collectives nccl: %s", nwhy);
  }
  static char name[64];
  snprintf(name, sizeof name, "%s%s%s", cuda.name, wgmma_ok == 1 ? "+wgmma" : "", use_nccl ? "+nccl" : "");
  cuda.name = name;
  return &cuda;
}

/* nvrtc.c: the emulated NVRTC. In: CUDA C++ source (a bundle's
 * kernels.cu). Out: a "cubin" that is the source compiled as host C++ into
 * a shared object: the host compiler (c++, or $LMC_CUDA_EMU_CXX) builds it
 * with device.h included first, and a table of the source's extern "C"
 * __global__ kernels appended. For each kernel a scan of the source's call
 * graph decides whether it may reach a barrier or a warp collective (then
 * its threads run as fibers) or not (a plain loop over the threads). The
 * image starts with a magic and a hash of the emulator's headers, so a
 * module cached by an older emulator is refused rather than run. */
#include "emu.h"
#include <ctype.h>
#include <fcntl.h>
#include <nvrtc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef LMC_EMU_SANITIZE
#define LMC_EMU_SANITIZE ""
#endif

struct _nvrtcProgram {
  char *src, *name;
  int nheaders;
  char **hsrc, **hname;
  char *log;
  unsigned char *image;
  size_t image_size;
  char opt[22][600];   /* options mapped for the host compiler (a program's own: programs compile in threads) */
};

static char *sdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  return d ? memcpy(d, s, n) : NULL;
}

nvrtcResult nvrtcVersion(int *major, int *minor) { return *major = 13, *minor = 0, NVRTC_SUCCESS; }

const char *nvrtcGetErrorString(nvrtcResult rc) {
  switch (rc) {
  case NVRTC_SUCCESS: return "NVRTC_SUCCESS";
  case NVRTC_ERROR_COMPILATION: return "NVRTC_ERROR_COMPILATION";
  case NVRTC_ERROR_INVALID_OPTION: return "NVRTC_ERROR_INVALID_OPTION";
  case NVRTC_ERROR_OUT_OF_MEMORY: return "NVRTC_ERROR_OUT_OF_MEMORY";
  default: return "NVRTC_ERROR (emulated)";
  }
}

nvrtcResult nvrtcCreateProgram(nvrtcProgram *p, const char *src, const char *name, int nh, const char *const *hs,
                               const char *const *hn) {
  struct _nvrtcProgram *x = calloc(1, sizeof *x);
  if (!x || !src) return free(x), NVRTC_ERROR_INVALID_INPUT;
  x->src = sdup(src), x->name = sdup(name ? name : "default_program");
  x->nheaders = nh;
  x->hsrc = calloc(nh + 1, sizeof(char *)), x->hname = calloc(nh + 1, sizeof(char *));
  for (int i = 0; i < nh; i++) x->hsrc[i] = sdup(hs[i]), x->hname[i] = sdup(hn[i]);
  x->log = sdup("");
  *p = x;
  return NVRTC_SUCCESS;
}

nvrtcResult nvrtcDestroyProgram(nvrtcProgram *p) {
  struct _nvrtcProgram *x = *p;
  for (int i = 0; i < x->nheaders; i++) free(x->hsrc[i]), free(x->hname[i]);
  free(x->hsrc), free(x->hname), free(x->src), free(x->name), free(x->log), free(x->image), free(x);
  *p = NULL;
  return NVRTC_SUCCESS;
}

/* ---- which kernels may reach a barrier: a scan of the call graph ---- */

typedef struct Tok {
  char s[64];
  bool ident, str, pp;   /* pp: part of a #define */
  int cond;              /* the conditional branch it is in: an index of Conds' snap, -1 none */
} Tok;

/* The source's conditional directives (#if .. #endif) around each token,
 * so that a kernel's entry in the table stands under the same ones as its
 * definition (a bundle's kernels.cu guards each by LMC_IN_PART: compiled
 * as one of several programs, the others' kernels are not there). open[i]
 * holds level i's directives so far ("#if A" then any "#elif B", "#else");
 * snap[j] all levels' at a point, depth[j] how many #endif close them. */
typedef struct Conds {
  char *open[64];
  int level, nsnap, cur;
  char **snap;
  int *depth;
  bool changed;
} Conds;

/* the directive line d (up to e) starts, continues or ends a level */
static void cond_directive(Conds *c, const char *d, const char *e) {
  const char *k = d + 1;
  while (*k == ' ' || *k == '\t') k++;
  size_t n = e - d;
  if (!strncmp(k, "if", 2) && c->level < 64) {   /* #if, #ifdef, #ifndef */
    c->open[c->level] = malloc(n + 2);
    memcpy(c->open[c->level], d, n), strcpy(c->open[c->level] + n, "\n");
    c->level++, c->changed = true;
  } else if ((!strncmp(k, "elif", 4) || !strncmp(k, "else", 4)) && c->level > 0) {
    char **o = &c->open[c->level - 1];
    size_t have = strlen(*o);
    *o = realloc(*o, have + n + 2);
    memcpy(*o + have, d, n), strcpy(*o + have + n, "\n");
    c->changed = true;
  } else if (!strncmp(k, "endif", 5) && c->level > 0) free(c->open[--c->level]), c->changed = true;
}

/* the branch a token now made is in (a snapshot when the levels changed) */
static int cond_now(Conds *c) {
  if (!c) return -1;
  if (c->changed) {
    c->changed = false, c->cur = -1;
    if (c->level) {
      size_t len = 1;
      for (int i = 0; i < c->level; i++) len += strlen(c->open[i]);
      char *all = malloc(len);
      all[0] = 0;
      for (int i = 0; i < c->level; i++) strcat(all, c->open[i]);
      c->snap = realloc(c->snap, (c->nsnap + 1) * sizeof *c->snap);
      c->depth = realloc(c->depth, (c->nsnap + 1) * sizeof *c->depth);
      c->snap[c->nsnap] = all, c->depth[c->nsnap] = c->level, c->cur = c->nsnap++;
    }
  }
  return c->cur;
}

static void conds_free(Conds *c) {
  for (int i = 0; i < c->level; i++) free(c->open[i]);
  for (int i = 0; i < c->nsnap; i++) free(c->snap[i]);
  free(c->snap), free(c->depth);
}

typedef struct Def {
  const char *name;
  int from, to;       /* its body's tokens */
  bool sync;
} Def;

static const char *collectives[] = {
    "__syncthreads", "__syncthreads_count", "__syncthreads_or", "__syncthreads_and", "__syncwarp", "__shfl_sync",
    "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync", "__ballot_sync", "__any_sync", "__all_sync",
    "lmc_mma_bf16_16816", "lmc_ldmatrix", "lmc_ldmatrix_x1", "lmc_ldmatrix_x2", "lmc_ldmatrix_x4",
    "lmc_ldmatrix_x2_trans", "lmc_ldmatrix_x4_trans", NULL};

/* Tokens of src without comments, literals' contents or directives other
 * than #define (whose name and body become a definition); conditional
 * directives are noted in c (NULL: not). */
static Tok *tokenize(const char *s, int *n, Def **defs, int *ndefs, Conds *c) {
  int cap = 1024;
  Tok *t = malloc(cap * sizeof *t);
  *n = 0;
  bool bol = true;
  while (*s) {
    if (*n + 2 >= cap) t = realloc(t, (cap *= 2) * sizeof *t);
    if (*s == '\n') { bol = true, s++; continue; }
    if (isspace((unsigned char)*s)) { s++; continue; }
    if (s[0] == '/' && s[1] == '/') { while (*s && *s != '\n') s++; continue; }
    if (s[0] == '/' && s[1] == '*') {
      const char *e = strstr(s + 2, "*/");
      s = e ? e + 2 : s + strlen(s);
      continue;
    }
    if (*s == '#' && bol) {   /* a directive: one logical line */
      const char *e = s;
      while (*e && !(*e == '\n' && e[-1] != '\\')) e++;
      const char *p = s + 1;
      while (*p == ' ' || *p == '\t') p++;
      if (!strncmp(p, "define", 6)) {
        char *line = strndup(p + 6, e - p - 6);
        int from = *n, m = 0;
        Def *d0 = NULL; int nd0 = 0;
        Tok *sub = tokenize(line, &m, &d0, &nd0, NULL);
        free(d0);
        if (m && sub[0].ident) {
          *defs = realloc(*defs, (*ndefs + 1) * sizeof **defs);
          if (*n + m + 2 >= cap) t = realloc(t, (cap = *n + m + 1024) * sizeof *t);
          for (int i = 0; i < m; i++) sub[i].pp = true;
          memcpy(t + *n, sub, m * sizeof *t);
          *n += m;
          (*defs)[(*ndefs)++] = (Def){strdup(sub[0].s), from + 1, *n, false};
        }
        free(sub), free(line);
      } else if (c) cond_directive(c, s, e);
      s = e;
      continue;
    }
    bol = false;
    Tok *k = &t[(*n)++];
    memset(k, 0, sizeof *k);
    k->cond = cond_now(c);
    if (isalpha((unsigned char)*s) || *s == '_') {
      int i = 0;
      while (isalnum((unsigned char)*s) || *s == '_') {
        if (i < 63) k->s[i++] = *s;
        s++;
      }
      k->ident = true;
    } else if (*s == '"' || *s == '\'') {
      char q = *s++;
      int i = 0;
      while (*s && *s != q) {
        if (*s == '\\' && s[1]) s++;
        if (i < 63) k->s[i++] = *s;
        s++;
      }
      if (*s) s++;
      k->str = true;
    } else k->s[0] = *s++;
  }
  return t;
}

static bool is(const Tok *t, const char *s) { return !t->str && !strcmp(t->s, s); }

/* Top-level definitions: a function's name is the last identifier before
 * its parameter list; a struct's the last before its brace. Kernels are
 * the extern "C" __global__ ones. */
typedef struct Kern { char *name; int cond; } Kern;

static void scan(Tok *t, int n, Def **defs, int *ndefs, Kern **kernels, int *nk) {
  int depth = 0, parens = 0, from = 0, extern_c = 0;
  const char *cand = NULL, *last = NULL;
  bool global = false, ext = false;
  for (int i = 0; i < n; i++) {
    if (t[i].pp) continue;
    if (depth == 0) {
      if (is(&t[i], "extern") && i + 1 < n && t[i + 1].str && !strcmp(t[i + 1].s, "C")) {
        ext = true;
        if (i + 2 < n && is(&t[i + 2], "{")) extern_c++, i += 2, ext = false;
        continue;
      }
      if (is(&t[i], "}") && extern_c) { extern_c--; continue; }
      if (t[i].ident) last = t[i].s;
      if (is(&t[i], "__global__")) global = true;
      if (is(&t[i], "(") && !parens++ && i > 0 && t[i - 1].ident && strcmp(t[i - 1].s, "__launch_bounds__"))
        cand = t[i - 1].s;
      if (is(&t[i], ")")) parens--;
      if (is(&t[i], ";")) cand = NULL, global = ext = false;
      if (is(&t[i], "{")) {
        depth = 1, from = i + 1;
        if (global && cand && (ext || extern_c)) {
          *kernels = realloc(*kernels, (*nk + 1) * sizeof **kernels);
          (*kernels)[(*nk)++] = (Kern){strdup(cand), t[i].cond};
        }
        *defs = realloc(*defs, (*ndefs + 1) * sizeof **defs);
        (*defs)[(*ndefs)++] = (Def){strdup(cand ? cand : last ? last : ""), from, from, false};
      }
      continue;
    }
    if (is(&t[i], "{")) depth++;
    else if (is(&t[i], "}") && --depth == 0) {
      (*defs)[*ndefs - 1].to = i;
      cand = NULL, global = ext = false;
    }
  }
}

static bool def_sync(Def *d, int nd, const char *name) {
  for (int i = 0; i < nd; i++)
    if (d[i].sync && !strcmp(d[i].name, name)) return true;
  return false;
}

static bool collective(const char *s) {
  for (int c = 0; collectives[c]; c++)
    if (!strcmp(s, collectives[c])) return true;
  return false;
}

/* A definition is sync when its body names a collective or a sync
 * definition (a mention, not only a call: the scan errs towards fibers). */
static void propagate(Tok *t, Def *d, int nd) {
  for (bool changed = true; changed;) {
    changed = false;
    for (int i = 0; i < nd; i++)
      for (int j = d[i].from; j < d[i].to && !d[i].sync; j++)
        if (t[j].ident && (collective(t[j].s) || (strcmp(t[j].s, d[i].name) && def_sync(d, nd, t[j].s))))
          d[i].sync = changed = true;
  }
}

/* ---- compiling ---- */

static bool put(const char *dir, const char *name, const char *text) {
  char path[1200];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "w");
  if (!f) return false;
  bool ok = fputs(text, f) >= 0;
  return fclose(f) == 0 && ok;
}

static char *slurp(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long len = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *s = malloc(len + 1);
  if (s && fread(s, 1, len, f) != (size_t)len) free(s), s = NULL;
  if (s) s[len] = 0, *n = len;
  fclose(f);
  return s;
}

static uint64_t fnv(const char *s, uint64_t h) {
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
  return h;
}

/* ---- extern __shared__: the block's dynamic shared memory ---- */

/* Brace depth at src + at, comments skipped. */
static int depth_at(const char *src, size_t at) {
  int d = 0;
  for (const char *p = src; p < src + at; p++) {
    if (p[0] == '/' && p[1] == '/') while (p < src + at && *p != '\n') p++;
    else if (p[0] == '/' && p[1] == '*') {
      const char *e = strstr(p + 2, "*/");
      p = e ? e + 1 : src + at;
    }
    if (*p == '{') d++;
    else if (*p == '}') d--;
  }
  return d;
}

static int line_at(const char *src, size_t at) {
  int line = 1;
  for (size_t i = 0; i < at; i++) line += src[i] == '\n';
  return line;
}

/* `extern __shared__ [__align__(n)] T name[];` becomes a pointer to the
 * engine's buffer for the block: a local in a function, a macro at file
 * scope (with #line, so messages keep their lines). */
static char *dynamic_shared(const char *src, const char *file) {
  size_t cap = strlen(src) * 2 + 256, len = 0;
  char *out = malloc(cap);
  const char *p = src, *hit;
  while ((hit = strstr(p, "extern __shared__"))) {
    const char *semi = strchr(hit, ';'), *br = semi ? memchr(hit, '[', semi - hit) : NULL;
    if (!br) break;
    const char *ne = br;
    while (ne > hit && isspace((unsigned char)ne[-1])) ne--;
    const char *nb = ne;
    while (nb > hit && (isalnum((unsigned char)nb[-1]) || nb[-1] == '_')) nb--;
    char type[128] = "", name[64];
    const char *tb = hit + strlen("extern __shared__");
    for (const char *q = tb; q < nb && strlen(type) < sizeof type - 2;) {   /* drop __align__(...) */
      if (!strncmp(q, "__align__", 9)) {
        q = strchr(q, ')');
        q = q ? q + 1 : nb;
        continue;
      }
      size_t l = strlen(type);
      type[l] = *q++, type[l + 1] = 0;
    }
    snprintf(name, sizeof name, "%.*s", (int)(ne - nb), nb);
    char repl[512];
    if (depth_at(src, hit - src) > 0)
      snprintf(repl, sizeof repl, "%s *const %s = (%s *)lmc_emu_api->dyn_smem();", type, name, type);
    else
      snprintf(repl, sizeof repl, "\n#define %s ((%s *)lmc_emu_api->dyn_smem())\n#line %d \"%s\"\n", name, type,
               line_at(src, hit - src), file);
    size_t pre = hit - p, rl = strlen(repl);
    if (len + pre + rl + 1 > cap) out = realloc(out, cap = (len + pre + rl) * 2 + 256);
    memcpy(out + len, p, pre), len += pre;
    memcpy(out + len, repl, rl), len += rl;
    p = semi + 1;
  }
  size_t rest = strlen(p);
  if (len + rest + 1 > cap) out = realloc(out, len + rest + 1);
  memcpy(out + len, p, rest + 1);
  return out;
}

/* The translation unit: device.h, the source, the kernel table (each
 * entry under its definition's conditional directives). */
static char *unit(struct _nvrtcProgram *x) {
  Tok *t;
  Def *defs = NULL;
  Kern *kernels = NULL;
  Conds conds = {.cur = -1};
  int n = 0, nd = 0, nk = 0;
  char *src = dynamic_shared(x->src, x->name);
  t = tokenize(x->src, &n, &defs, &nd, &conds);
  scan(t, n, &defs, &nd, &kernels, &nk);
  propagate(t, defs, nd);
  size_t cap = strlen(src) + 512 + nk * 160;
  for (int i = 0; i < nk; i++) cap += kernels[i].cond >= 0 ? strlen(conds.snap[kernels[i].cond]) + 8 * conds.depth[kernels[i].cond] : 0;
  char *u = malloc(cap);
  int len = snprintf(u, cap, "#include \"lmc_emu_device.h\"\n#line 1 \"%s\"\n%s\nstatic const EmuKernel lmc_emu_kernels[] = {\n",
                     x->name, src);
  free(src);
  for (int i = 0; i < nk; i++) {
    int c = kernels[i].cond;
    if (c >= 0) len += snprintf(u + len, cap - len, "%s", conds.snap[c]);
    len += snprintf(u + len, cap - len, "  LMC_EMU_KERNEL(%s, %d)\n", kernels[i].name, def_sync(defs, nd, kernels[i].name));
    for (int l = 0; c >= 0 && l < conds.depth[c]; l++) len += snprintf(u + len, cap - len, "#endif\n");
    free(kernels[i].name);
  }
  snprintf(u + len, cap - len,
           "  {0, 0, 0, 0, 0}};\nstatic EmuModule lmc_emu_mod = {LMC_EMU_ABI, sizeof lmc_emu_kernels / sizeof *lmc_emu_kernels - 1, "
           "lmc_emu_kernels, &lmc_emu_vars, &lmc_emu_api};\n"
           "extern \"C\" const EmuModule *lmc_emu_module(void) { return &lmc_emu_mod; }\n");
  for (int i = 0; i < nd; i++) free((char *)defs[i].name);
  conds_free(&conds);
  free(defs), free(kernels), free(t);
  return u;
}

/* argv for the host compiler: options NVRTC was given, mapped */
static int options(struct _nvrtcProgram *x, int n, const char *const *o, const char **argv, int m, char *log, size_t ln) {
  for (int i = 0; i < n; i++) {
    const char *s = o[i];
    if (!strncmp(s, "--gpu-architecture=", 19) || !strncmp(s, "-arch=", 6)) {
      const char *a = strchr(s, '=') + 1;
      int sm = atoi(a + (a[0] == 's' || a[0] == 'c' ? (strchr(a, '_') ? strchr(a, '_') - a + 1 : 0) : 0));
      snprintf(x->opt[i], sizeof x->opt[i], "-D__CUDA_ARCH__=%d", sm * 10);
      argv[m++] = x->opt[i];
    } else if (!strncmp(s, "-D", 2) || !strncmp(s, "-U", 2) || !strncmp(s, "-I", 2)) argv[m++] = s;
    else if (!strncmp(s, "--include-path=", 15) || !strncmp(s, "--define-macro=", 15)) {
      snprintf(x->opt[i], sizeof x->opt[i], "-%c%s", s[2] == 'i' ? 'I' : 'D', s + 15);   /* as -I / -D */
      argv[m++] = x->opt[i];
    }
    else if (!strncmp(s, "--std=", 6) || !strncmp(s, "-std=", 5)) {
      snprintf(x->opt[i], sizeof x->opt[i], "-std=%s", strchr(s, '=') + 1);
      argv[m++] = x->opt[i];
    } else if (strcmp(s, "-default-device") && strcmp(s, "--use_fast_math") && strcmp(s, "-lineinfo") &&
               strncmp(s, "--ptxas-options", 15) && strcmp(s, "--device-debug") && strcmp(s, "-G"))
      return snprintf(log, ln, "emulated NVRTC: option '%s' is not supported\n", s), -1;
  }
  return m;
}

static int run_compiler(const char **argv, const char *logpath) {
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    int fd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd >= 0) dup2(fd, 1), dup2(fd, 2);
    execvp(argv[0], (char *const *)argv);
    fprintf(stderr, "emulated NVRTC: cannot run the host compiler '%s'\n", argv[0]);
    _exit(127);
  }
  int st;
  while (waitpid(pid, &st, 0) < 0) {}
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

uint64_t emu_headers_hash(void) { return fnv(LMC_EMU_SANITIZE, fnv(emu_abi_h, fnv(emu_device_h, 0xcbf29ce484222325ULL))); }

nvrtcResult nvrtcCompileProgram(nvrtcProgram x, int nopt, const char *const *opts) {
  const char *tmp = getenv("TMPDIR");
  char dir[512], src[600], so[600], logp[600], errbuf[256] = "";
  snprintf(dir, sizeof dir, "%s/lmc-emu-nvrtc-XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(dir)) return NVRTC_ERROR_OUT_OF_MEMORY;
  snprintf(src, sizeof src, "%s/unit.cc", dir), snprintf(so, sizeof so, "%s/unit.so", dir);
  snprintf(logp, sizeof logp, "%s/log", dir);
  char *u = unit(x);
  bool ok = put(dir, "lmc_emu_device.h", emu_device_h) && put(dir, "emu_abi.h", emu_abi_h) && put(dir, "unit.cc", u);
  const char *inc = "#include \"lmc_emu_device.h\"\n";
  ok = ok && put(dir, "cuda_bf16.h", inc) && put(dir, "cuda_fp16.h", inc) && put(dir, "cuda_runtime.h", inc);
  for (int i = 0; ok && i < x->nheaders; i++) ok = put(dir, x->hname[i], x->hsrc[i]);
  free(u);
  const char *argv[160];
  char incdir[600], *extra = sdup(LMC_EMU_SANITIZE), *user = sdup(getenv("LMC_CUDA_EMU_CXXFLAGS") ? getenv("LMC_CUDA_EMU_CXXFLAGS") : "");
  int m = 0;
  argv[m++] = getenv("LMC_CUDA_EMU_CXX") ? getenv("LMC_CUDA_EMU_CXX") : "c++";
  snprintf(incdir, sizeof incdir, "-I%s", dir);
  const char *base[] = {"-std=c++17", "-O1", "-fPIC", "-shared", "-w", "-ffp-contract=off", "-fno-fast-math", incdir};
  for (size_t i = 0; i < sizeof base / sizeof *base; i++) argv[m++] = base[i];
  char *save;
  for (char *s = strtok_r(extra, " ", &save); s && m < 120; s = strtok_r(NULL, " ", &save)) argv[m++] = s;
  for (char *s = strtok_r(user, " ", &save); s && m < 130; s = strtok_r(NULL, " ", &save)) argv[m++] = s;
  m = options(x, nopt < 22 ? nopt : 22, opts, argv, m, errbuf, sizeof errbuf);
  nvrtcResult rc = NVRTC_SUCCESS;
  if (!ok) rc = NVRTC_ERROR_OUT_OF_MEMORY;
  else if (m < 0) rc = NVRTC_ERROR_INVALID_OPTION;
  else {
    argv[m++] = "-o", argv[m++] = so, argv[m++] = src, argv[m] = NULL;
    if (run_compiler(argv, logp) != 0) rc = NVRTC_ERROR_COMPILATION;
  }
  size_t ln = 0, sn = 0;
  char *log = slurp(logp, &ln);
  free(x->log);
  x->log = m < 0 ? sdup(errbuf) : log ? log : sdup("");
  if (m < 0) free(log);
  char *bin = rc == NVRTC_SUCCESS ? slurp(so, &sn) : NULL;
  if (rc == NVRTC_SUCCESS && !bin) rc = NVRTC_ERROR_COMPILATION;
  if (bin) {   /* magic, header hash, size, the shared object */
    free(x->image);
    x->image_size = 8 + 2 * sizeof(uint64_t) + sn;
    x->image = malloc(x->image_size);
    uint64_t h = emu_headers_hash(), len = sn;
    memcpy(x->image, "LMCEMU1", 8);
    memcpy(x->image + 8, &h, 8), memcpy(x->image + 16, &len, 8), memcpy(x->image + 24, bin, sn);
    free(bin);
  }
  free(extra), free(user);
  const char *names[] = {"lmc_emu_device.h", "emu_abi.h", "unit.cc", "unit.so", "log", "cuda_bf16.h", "cuda_fp16.h",
                         "cuda_runtime.h"};
  char p[1200];
  for (size_t i = 0; i < sizeof names / sizeof *names; i++) snprintf(p, sizeof p, "%s/%s", dir, names[i]), unlink(p);
  for (int i = 0; i < x->nheaders; i++) snprintf(p, sizeof p, "%s/%s", dir, x->hname[i]), unlink(p);
  rmdir(dir);
  return rc;
}

nvrtcResult nvrtcGetProgramLogSize(nvrtcProgram x, size_t *n) { return *n = strlen(x->log) + 1, NVRTC_SUCCESS; }
nvrtcResult nvrtcGetProgramLog(nvrtcProgram x, char *log) { return strcpy(log, x->log), NVRTC_SUCCESS; }

nvrtcResult nvrtcGetCUBINSize(nvrtcProgram x, size_t *n) {
  if (!x->image) return NVRTC_ERROR_INVALID_PROGRAM;
  return *n = x->image_size, NVRTC_SUCCESS;
}

nvrtcResult nvrtcGetCUBIN(nvrtcProgram x, char *out) {
  if (!x->image) return NVRTC_ERROR_INVALID_PROGRAM;
  return memcpy(out, x->image, x->image_size), NVRTC_SUCCESS;
}

nvrtcResult nvrtcGetPTXSize(nvrtcProgram x, size_t *n) { return nvrtcGetCUBINSize(x, n); }
nvrtcResult nvrtcGetPTX(nvrtcProgram x, char *out) { return nvrtcGetCUBIN(x, out); }

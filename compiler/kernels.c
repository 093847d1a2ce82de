/* kernels.c: the CUDA kernels of a bundle. In: the graph (which ops the
 * programs of all ranks use). Out: kernels.cu, the prelude of
 * templates/kernels.cu and, in template order, each section ("// @kernel
 * NAME") whose op the model uses, plus the optimizer's, with
 * templates/tensor_cores.cuh written where the prelude includes it; then
 * the kernels specialised to the model's shapes. Every kernel is in one
 * part (the prelude's "Parts": the sections' and groups' part 0, each
 * attention kernel its own), and "// @parts N" ends the file: the CUDA
 * runtime compiles it with NVRTC as up to N programs at once; the tests
 * compile it the same way on machines without a GPU. */
#include "lmc.h"
#include <stdarg.h>
#include <string.h>

extern const char tpl_kernels[], tpl_tensor_cores[];

/* The template section an op's kernels live in. */
static const char *section_of(int op) {
  switch (op) {
  case OP_PARAM: case OP_INPUT: case OP_MATMUL: case OP_ALLREDUCE: return NULL;
  case OP_ROPE_BWD: return "rope";
  case OP_MATMUL_BIAS: return "add";   /* lmc_add_bias, where cuBLASLt refuses the bias epilogue */
  case OP_MATMUL_BIAS_GELU: return "gelu";   /* lmc_gelu (and the add's), where it refuses GELU_AUX_BIAS */
  case OP_MATMUL_BGRAD: return "add_bwd";    /* the bias's column sums, where cuBLASLt refuses BGRADA/B */
  case OP_MATMUL_DGELU: return "gelu_bwd";   /* GELU's backward after the GEMM, where it refuses DGELU */
  case OP_MOE_A2A: case OP_MOE_A2A_REV: return NULL;   /* the runtime's all-to-alls */
  case OP_MOE_ROUTE: case OP_MOE_LOSS: case OP_MOE_DISPATCH: case OP_MOE_UP: case OP_MOE_UP_GELU: case OP_MOE_DOWN:
  case OP_MOE_COMBINE: case OP_MOE_ROUTE_BWD: case OP_MOE_DISPATCH_BWD: case OP_MOE_UP_BWD: case OP_MOE_UP_GELU_BWD:
  case OP_MOE_DOWN_BWD: case OP_MOE_COMBINE_BWD: return "moe";
  default: return op_names[op];
  }
}

static bool used(Graph *g, const char *section) {
  if (!strcmp(section, "optimizer") || !strcmp(section, "gemm_parts")) return true;   /* (weight gradients in parts) */
  if (!strcmp(section, "cast")) return g->ncasts > 0;   /* the bf16 copies, made at load */
  if (!strcmp(section, "moe_mm")) section = "moe";   /* MoE's grouped GEMMs (their own part) */
  for (int k = 0; k < g->nfwd + g->nbwd; k++) {
    Inst *in = k < g->nfwd ? g->fwd[k] : g->bwd[k - g->nfwd];
    if (group_takes(g, in)) continue;   /* a group's kernel does it */
    const char *s = section_of(in->op);
    if (s && !strcmp(s, section)) return true;
    if (in->op == OP_MATMUL_BIAS_GELU && !strcmp(section, "add")) return true;
  }
  return false;
}

/* Flash attention's split of a head dim K over threads: P threads a query
 * row (a power of two), D dims each (a multiple of 4). runtime/cuda.c
 * launches by the same rule. */
static void attention_split(int64_t k, int *d, int *p) {
  for (*p = 1; (k + *p - 1) / *p > 32; *p *= 2) {}
  *d = (int)((k + *p - 1) / *p + 3) / 4 * 4;
}

/* One extern "C" wrapper of an attention kernel: __launch_bounds__(bounds)
 * name, with the parameters of the forward, dQ or dK/dV (FA_FWD..),
 * calling call with them */
enum { FA_FWD, FA_DQ, FA_DKV };
static int next_part;   /* the part the next attention kernel is (the prelude's "Parts") */

/* Parts numbered from here on: 0 is the sections' and groups' kernels, 1
 * MoE's grouped GEMMs (kernels_emit; test_emu_ops writes its file so too) */
void kernels_parts_begin(void) { next_part = 2; }

/* the line that tells the runtime how many parts the file has */
void kernels_parts_end(FILE *out) { fprintf(out, "\n// @parts %d\n", next_part); }

static void fa_kernel(FILE *out, int kind, const char *bounds, const char *name, const char *call) {
  static const char *sig[] = {
      "act *o, real *lse, const act *q, const act *k, const act *v, i64 T, i64 H, i64 G, i64 K, float scale, i64 B",
      "act *dq, const act *dout, const act *q, const act *k, const act *v, const real *lse, const real *dd, i64 T, "
      "i64 H, i64 G, i64 K, float scale, int acc, i64 B",
      "act *dk, act *dv, const act *dout, const act *q, const act *k, const act *v, const real *lse, const real *dd, "
      "i64 T, i64 H, i64 G, i64 K, float scale, int acck, int accv, i64 B"};
  static const char *args[] = {"o, lse, q, k, v, T, H, G, K, scale, B",
                               "dq, dout, q, k, v, lse, dd, T, H, G, K, scale, acc, B",
                               "dk, dv, dout, q, k, v, lse, dd, T, H, G, K, scale, acck, accv, B"};
  fprintf(out, "#if LMC_IN_PART(%d)\nextern \"C\" __global__ void __launch_bounds__(%s) %s(%s) {\n  %s(%s);\n}\n#endif\n",
          next_part++, bounds, name, sig[kind], call, args[kind]);
}

/* a string by printf's rules, one of four in turn (a call's arguments) */
static const char *fmt(const char *f, ...) {
  static char buf[4][128];
  static int i;
  char *b = buf[i++ % 4];
  va_list ap;
  va_start(ap, f);
  vsnprintf(b, sizeof buf[0], f, ap);
  va_end(ap);
  return b;
}

/* The attention kernels specialised to head dim k: lmc_attention_kK, or
 * for the backward lmc_attention_bwd_dq_kK and lmc_attention_bwd_dkv_kK;
 * for head dims up to 128 also the tensor core ones (_mma_), which
 * runtime/cuda.c runs at --matmul-precision medium, bounded to the
 * registers of three blocks an SM (168 a thread) up to head dim 96, two
 * past it. Past head dim 64 dK/dV steps 32 queries at a time; there
 * lmc_attention_bwd_mma_dkv_q64_kK steps 64 in two blocks an SM (253
 * registers at 96, no spills), half the barriers a key block: the
 * runtime's default (9% faster on an H200, run 15; LMC_ATTENTION_DKV_QT=32
 * runs the other). */
void kernels_attention(FILE *out, int64_t k, bool bwd, bool bf16) {
  int d, p;
  long long K = (long long)k;
  attention_split(k, &d, &p);
  int kp = (int)(k + 15) / 16 * 16, qt = kp <= 64 ? 64 : 32, mb = kp <= 96 ? 3 : 2;   /* tensor cores: head dims to 128 */
  char bound[32];   /* (the tensor core kernels' blocks an SM) */
  snprintf(bound, sizeof bound, "FA_THREADS, %d", mb);
  fprintf(out, "\n// head dim %lld: %d threads a query row, %d dims each; on the tensor cores %d\n", K, p, d, kp);
  if (!bwd) {
    fa_kernel(out, FA_FWD, "FA_THREADS", fmt("lmc_attention_k%lld", K), fmt("fa_forward<%d, %d>", d, p));
    /* up to head dim 96 a warp takes 32 query rows (128 a block, two
     * blocks an SM), past it 16; lmc_attention_mma_r64_kK, 16 rows a warp
     * at head dims to 96, is the runtime's LMC_ATTENTION_ROWS=64 (and so
     * is dQ's lmc_attention_bwd_mma_dq_r64_kK below). The third template
     * argument rolls the tile loader's passes (fm_load) where unrolled
     * they cost spills at the kernel's register bound: this forward's
     * 32 rows a warp, dQ's 16. */
    if (k <= 128)
      fa_kernel(out, FA_FWD, fmt("FA_THREADS, %d", kp <= 96 ? 2 : mb), fmt("lmc_attention_mma_k%lld", K),
                fmt("fm_forward<%d, %d, %s>", kp, kp <= 96 ? 2 : 1, kp <= 96 ? "true" : "false"));
    if (kp <= 96) fa_kernel(out, FA_FWD, bound, fmt("lmc_attention_mma_r64_k%lld", K), fmt("fm_forward<%d, 1>", kp));
    /* and 16 rows a warp with two stages of K and V (the runtime's
     * LMC_ATTENTION_STAGES=2) */
    if (kp <= 96)
      fa_kernel(out, FA_FWD, bound, fmt("lmc_attention_mma_s2_k%lld", K), fmt("fm_forward<%d, 1, false, true>", kp));
    /* and on the warpgroup's matrix instructions (sm_90a: the runtime's
     * LMC_ATTENTION_WGMMA=1) */
    if (k <= 128) fa_kernel(out, FA_FWD, bound, fmt("lmc_attention_wg_k%lld", K), fmt("fw_forward<%d>", kp));
    /* and with a tile's softmax beside the tensor cores' products (the
     * runtime's LMC_ATTENTION_WGMMA=2, or its tuner's pick); the pipelined
     * kernels in bf16 storage only, as the blocks of several warpgroups
     * below (each kernel costs every bundle's JIT and kernels_nvrtc) */
    if (k <= 128 && bf16)
      fa_kernel(out, FA_FWD, "FA_THREADS, 2", fmt("lmc_attention_wgp_k%lld", K), fmt("fw_forward_pipe<%d>", kp));
    /* and in blocks of 2 and 3 warpgroups sharing their K and V tiles
     * (LMC_ATTENTION_WARPGROUPS), one block an SM; in bf16 storage only
     * (fp32 storage, a checking mode, has the one-warpgroup kernels) */
    for (int nw = 2; nw <= 3 && kp <= 96 && bf16; nw++)
      fa_kernel(out, FA_FWD, fmt("%d * FA_THREADS, 1", nw), fmt("lmc_attention_wg%d_k%lld", nw, K),
                fmt("fw_forward<%d, %d>", kp, nw));
    return;
  }
  if (k <= 128) {
    fa_kernel(out, FA_DQ, fmt("FA_THREADS, %d", kp <= 96 ? 2 : mb), fmt("lmc_attention_bwd_mma_dq_k%lld", K),
              fmt("fm_backward_dq<%d, %d>", kp, kp <= 96 ? 2 : 1));
    if (kp <= 96)   /* dQ's default with two stages of K and V (LMC_ATTENTION_STAGES=2), rolled copies past 64 */
      fa_kernel(out, FA_DQ, "FA_THREADS, 2", fmt("lmc_attention_bwd_mma_dq_s2_k%lld", K),
                fmt("fm_backward_dq<%d, 2, %s, true>", kp, kp > 64 ? "true" : "false"));
    /* dQ on the warpgroup's matrix instructions (LMC_ATTENTION_WGMMA=1),
     * head dims to 128; three blocks an SM to head dim 96 (159 registers
     * with Q and dO from shared memory, 72 KiB of it a block at 96) */
    if (kp <= 128)
      fa_kernel(out, FA_DQ, fmt("FA_THREADS, %d", kp <= 96 ? 3 : 2), fmt("lmc_attention_bwd_wg_dq_k%lld", K),
                fmt("fw_backward_dq<%d>", kp));
    /* and with a tile's dS beside the tensor cores' update (the runtime's
     * LMC_ATTENTION_WGMMA=2, or its tuner's pick): two blocks an SM, as its
     * seven tiles of shared memory allow at head dim 96 */
    if (kp <= 128 && bf16)
      fa_kernel(out, FA_DQ, "FA_THREADS, 2", fmt("lmc_attention_bwd_wgp_dq_k%lld", K), fmt("fw_backward_dq_pipe<%d>", kp));
    /* and in blocks of two and three warpgroups sharing K and V (LMC_ATTENTION_WARPGROUPS) */
    for (int nw = 2; nw <= 3 && kp <= 96 && bf16; nw++)
      fa_kernel(out, FA_DQ, fmt("%d * FA_THREADS, 1", nw), fmt("lmc_attention_bwd_wg%d_dq_k%lld", nw, K),
                fmt("fw_backward_dq<%d, %d>", kp, nw));
    if (kp <= 96)
      fa_kernel(out, FA_DQ, bound, fmt("lmc_attention_bwd_mma_dq_r64_k%lld", K), fmt("fm_backward_dq<%d, 1, true>", kp));
    fa_kernel(out, FA_DKV, bound, fmt("lmc_attention_bwd_mma_dkv_k%lld", K), fmt("fm_backward_dkv<%d, %d>", kp, qt));
    if (kp > 64 && kp <= 96)
      fa_kernel(out, FA_DKV, "FA_THREADS, 2", fmt("lmc_attention_bwd_mma_dkv_q64_k%lld", K),
                fmt("fm_backward_dkv<%d, 64>", kp));
    /* dK/dV on the warpgroup's matrix instructions (sm_90a: the runtime's
     * LMC_ATTENTION_WGMMA=1), 64 queries a step, 32 past head dim 96 (the
     * two accumulators leave too few registers for 64) */
    if (kp <= 128)
      fa_kernel(out, FA_DKV, "FA_THREADS, 2", fmt("lmc_attention_bwd_wg_dkv_k%lld", K),
                fmt("fw_backward_dkv<%d, 1, %d>", kp, kp > 96 ? 32 : 64));
    /* and with a step's probabilities beside the tensor cores' updates
     * (the runtime's LMC_ATTENTION_WGMMA=2, or its tuner's pick) */
    if (kp <= 128 && bf16)
      fa_kernel(out, FA_DKV, "FA_THREADS, 2", fmt("lmc_attention_bwd_wgp_dkv_k%lld", K),
                fmt("fw_backward_dkv_pipe<%d, %d>", kp, kp > 64 ? 32 : 64));
    if (kp <= 96 && bf16)   /* and in blocks of two warpgroups sharing Q and dO (LMC_ATTENTION_WARPGROUPS) */
      fa_kernel(out, FA_DKV, "2 * FA_THREADS, 1", fmt("lmc_attention_bwd_wg2_dkv_k%lld", K), fmt("fw_backward_dkv<%d, 2>", kp));
  }
  fa_kernel(out, FA_DQ, "FA_THREADS", fmt("lmc_attention_bwd_dq_k%lld", K), fmt("fa_backward_dq<%d, %d>", d, p));
  fa_kernel(out, FA_DKV, "FA_THREADS", fmt("lmc_attention_bwd_dkv_k%lld", K), fmt("fa_backward_dkv<%d, %d>", d, p));
}

/* Each head dim the programs' attention uses, forward and backward, once. */
static void attention_kernels(FILE *out, Graph *g) {
  int64_t done[2][8];
  int ndone[2] = {0, 0};
  for (int i = 0; i < g->nfwd + g->nbwd; i++) {
    Inst *in = i < g->nfwd ? g->fwd[i] : g->bwd[i - g->nfwd];
    if (in->op != OP_ATTENTION && in->op != OP_ATTENTION_BWD) continue;
    int bwd = in->op == OP_ATTENTION_BWD, seen = 0;
    int64_t k = ir_get(in, "k");
    for (int j = 0; j < ndone[bwd]; j++) seen |= done[bwd][j] == k;
    if (seen || ndone[bwd] == 8 || k > 1024) continue;   /* cuda.c refuses head dims past 1024 */
    done[bwd][ndone[bwd]++] = k;
    kernels_attention(out, k, bwd, precision_bf16(g));
  }
}

/* A norm's backward in one pass (kernels.cu's norm_bwd_rows) for rows of
 * width d, a multiple of 8 up to 2048: lmc_rmsnorm_bwd_rowsNG (ln false)
 * or lmc_layernorm_bwd_rowsNG, NG 8-wide groups a lane (1..4, 6 or 8: d
 * rounded up to 256 per group); the runtime (cuda.c's norm_rows) picks it
 * by the same rule. A kernel for each NG, its registers its own (108 at
 * NG 3 against 231 at 8, sm_90). */
int kernels_norm_groups(int64_t d) {
  int64_t g = (d + 255) / 256;
  return d % 8 || d > 2048 ? 0 : g <= 4 ? (int)g : g <= 6 ? 6 : 8;
}

/* Whether a norm backward of ng 8-wide groups a lane keeps its warps'
 * partial column sums in shared memory (kernels.cu's norm_bwd_rows' SM), in
 * bf16 storage: from 3 groups a lane, where in registers they leave too
 * few for dx's loads to go out with the row's first (128 registers at
 * GPT-2's 3, 106 at llama-large's 6 with dx one group at a time), and where
 * 8 warps' fit in a block's 48 KiB of static shared memory (RMSNorm 513 to
 * 1536 wide: llama-large's; LayerNorm's two sets 513 to 768: GPT-2's).
 * Not in fp32 storage, a checking mode, whose loads take twice the
 * registers: ptxas gave GPT-2's kernel 92 registers in one compile and 80
 * and a spill in the next, a third of the time, and bound to two blocks an
 * SM it spilled every time at llama-large's width; bf16's took 76 to 95
 * and never spilled in 40 compiles. Fewer groups keep the sums in
 * registers. group.c's kernels and the runtime's one-pass kernels below
 * both follow it. */
bool kernels_norm_shared(int64_t ng, bool ln) { return ng >= 3 && (ln ? 2 : 1) * 8 * ng * 256 * 4 <= 48 * 1024; }

void kernels_norm_bwd(FILE *out, int64_t d, bool ln) {
  int g = kernels_norm_groups(d);
  if (!g) return;
  const char *t = ln ? "true" : "false", *args = "(sh, dx, part, dy, x, w, mean, rstd, n, d, per)";
  fprintf(out, "\n// the %s backward of width %lld in one pass\n", ln ? "LayerNorm" : "RMSNorm", (long long)d);
  bool sm = kernels_norm_shared(g, ln);   /* (in bf16 storage: the kernel's SM) */
  fprintf(out, "#if LMC_IN_PART(0)\nextern \"C\" __global__ void __launch_bounds__(256) lmc_%s_bwd_rows%d(act *dx, real *part, "
          "const act *dy, const act *x, const real *w, const real *mean, const real *rstd, i64 n, i64 d, i64 per, "
          "int acc) {\n  enum { SM = %s };\n  __shared__ __align__(16) float sh[NormBwdShared<%d, %s, SM>::n];\n",
          ln ? "layernorm" : "rmsnorm", g, sm ? "sizeof(act) == 2" : "false", g, t);
  fprintf(out, "  if (!dx) norm_bwd_rows<%d, %s, false, false, SM>%s;\n"
          "  else if (acc) norm_bwd_rows<%d, %s, true, true, SM>%s;\n"
          "  else norm_bwd_rows<%d, %s, true, false, SM>%s;\n}\n#endif\n", g, t, args, g, t, args, g, t, args);
}

/* Each group count the programs' norm backwards use, once. */
static void norm_kernels(FILE *out, Graph *g) {
  bool done[2][9] = {{false}};
  for (int i = 0; i < g->nbwd; i++) {
    Inst *in = g->bwd[i];
    if ((in->op != OP_RMSNORM_BWD && in->op != OP_LAYERNORM_BWD) || group_takes(g, in)) continue;   /* (group.c's) */
    int64_t d = ir_get(in, "d");
    int ln = in->op == OP_LAYERNORM_BWD, ng = kernels_norm_groups(d);
    if (!ng || done[ln][ng]) continue;
    done[ln][ng] = true;
    kernels_norm_bwd(out, d, ln);
  }
}

/* A template marker's section name (up to a space or the line's end) */
static void marker_name(char *name, size_t n, const char *p) {
  size_t l = strcspn(p, " \n");
  snprintf(name, n, "%.*s", (int)(l < n - 1 ? l : n - 1), p);
}

/* Copies the template tpl: the prelude always, a section when g uses it
 * (every one where g is NULL: test_emu_ops's file), act typed after the
 * prelude. A section ("// @kernel NAME") is part 0, inside #if
 * LMC_IN_PART(0); a library ("// @library NAME": device code that the
 * parts of attention's and MoE's kernels call) goes into every program,
 * its own kernels guarded in the template. */
void kernels_template(FILE *out, const char *tpl, bool bf16, Graph *g) {
  const char *p = tpl;
  bool keep = false, typed = false, guarded = false;
  while (*p) {
    const char *e = strchr(p, '\n');
    size_t n = e ? (size_t)(e - p + 1) : strlen(p);
    bool kernel = !strncmp(p, "// @kernel ", 11), library = !strncmp(p, "// @library ", 12);
    if (!strncmp(p, "// @prelude", 11)) keep = true;
    else if (kernel || library) {
      if (!typed)   /* after the prelude, before the first section */
        fprintf(out, "\ntypedef %s act;   // the activations' storage (precision plan)\n", bf16 ? "bf16" : "float");
      typed = true;
      if (guarded) fprintf(out, "#endif\n");
      char name[64];
      marker_name(name, sizeof name, p + (kernel ? 11 : 12));
      keep = !g || used(g, name), guarded = keep && kernel;
      if (keep) fprintf(out, guarded ? "\n#if LMC_IN_PART(0)\n" : "\n");
    }
    if (keep && !strncmp(p, "// @include tensor_cores.cuh", 28)) fputs(tpl_tensor_cores, out);   /* the one file it names */
    else if (keep) fwrite(p, 1, n, out);
    p += n;
  }
  if (guarded) fprintf(out, "#endif\n");
}

/* The template's prelude and used sections, then the kernels specialised
 * to the model's shapes, each attention kernel a part of its own, and the
 * number of parts for the runtime. */
void kernels_emit(FILE *out, Graph *g) {
  fprintf(out, "// lmc kernels for model %s (from templates/kernels.cu)\n", g->prog->model->name);
  kernels_template(out, tpl_kernels, precision_bf16(g), g);
  kernels_parts_begin();
  attention_kernels(out, g);
  norm_kernels(out, g);
  group_kernels(out, g);
  kernels_parts_end(out);
}

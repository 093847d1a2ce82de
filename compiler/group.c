/* group.c: the kernels lmc writes from the graph. In: one stage's
 * scheduled instruction list. Out: the same list where a run of
 * instructions one generated kernel can do is one `fused` instruction
 * holding them (its body): a residual add and the RMSNorm or LayerNorm
 * that reads its sum, adjacent on the stage, as in every pre-norm block.
 * The members keep their values; the memory plan keeps every value a
 * group touches from its first member to its last (group_span), since one
 * kernel reads the inputs and writes the outputs together; the kernel
 * writes every output the members write (the sum stays, for
 * the residual stream and the norm's backward) and reads each input once.
 *
 * Each group's kernel is CUDA C written here for its shapes: the width,
 * the rows, epsilon and every operand's dtype are compile-time constants
 * and name it (lmc_fused_add_layernorm_r8192_d768_bf16_e1em05), so equal
 * groups share one kernel; one warp a row, eight
 * rows a 256-thread block, 16-byte loads and stores, the row kept in
 * registers up to a width of 2048 (read again past that). A value stored
 * in bf16 is rounded before the next member uses it, as the CPU backend,
 * which runs the members one by one, rounds it when it is written.
 *
 * Grouping is a function of each stage's list, asked by sched.c's live
 * ranges, emit.c and kernels.c alike; --fuse=never turns it off. */
#include "lmc.h"
#include <string.h>

static bool norm(int op) { return op == OP_RMSNORM || op == OP_LAYERNORM; }

/* add -> norm: the add writes the sum whole (no bias broadcast, no
 * accumulation), the norm reads it as its input, the width allows 16-byte
 * rows. */
static bool add_norm(Inst *add, Inst *nm) {
  if (add->op != OP_ADD || !norm(nm->op) || add->stage != nm->stage || nm->in[0] != add->out[0]) return false;
  if (add->acc[0] || nm->acc[0] || nm->acc[1] || nm->acc[2]) return false;
  if (ir_get(add, "nb") != ir_get(add, "n")) return false;
  int64_t d = (int64_t)ir_get(nm, "d");
  return d % 8 == 0 && d <= 65536;
}

static const char *dt(Value *v) { return v->dtype == DT_BF16 ? "bf16" : "f32"; }

static Inst *make_group(Inst *add, Inst *nm) {
  Inst *f = arena_alloc(sizeof(Inst));
  f->op = OP_FUSED, f->stage = add->stage, f->bwd = add->bwd, f->loc = add->loc, f->id = add->id;
  f->body = arena_alloc(2 * sizeof(Inst *));
  f->body[0] = add, f->body[1] = nm, f->nbody = 2;
  int64_t rows = (int64_t)ir_get(nm, "n"), d = (int64_t)ir_get(nm, "d");
  const char *t = dt(add->in[0]);   /* the dtypes: one, or each of a, b, the sum, y */
  if (strcmp(t, dt(add->in[1])) || strcmp(t, dt(add->out[0])) || strcmp(t, dt(nm->out[0])))
    t = arena_printf("%s_%s_%s_%s", t, dt(add->in[1]), dt(add->out[0]), dt(nm->out[0]));
  char eps[32];   /* epsilon too, as an identifier: 1e-05 -> 1em05 */
  snprintf(eps, sizeof eps, "%g", ir_get(nm, "eps"));
  for (char *c = eps; *c; c++) *c = *c == '-' ? 'm' : *c == '.' ? 'p' : *c == '+' ? 'x' : *c;
  f->kernel = arena_printf("lmc_fused_add_%s_r%lld_d%lld_%s_e%s", op_names[nm->op], (long long)rows, (long long)d, t,
                           eps);
  ir_set(f, "grid", (double)((rows + 7) / 8)), ir_set(f, "block", 256);
  return f;
}

int group_span(Graph *g, Inst **list, int n, int i) {
  return !g->no_groups && i + 1 < n && add_norm(list[i], list[i + 1]) ? 2 : 1;
}

Inst **group_list(Graph *g, Inst **list, int n, int *count) {
  Inst **out = arena_alloc((n + 1) * sizeof(Inst *));
  *count = 0;
  for (int i = 0, span; i < n; i += span) {
    span = group_span(g, list, n, i);
    out[(*count)++] = span > 1 ? make_group(list[i], list[i + 1]) : list[i];
  }
  return out;
}

/* fn on every group of every stage's programs, in stage order, forward
 * before backward. */
static void each_group(Graph *g, void (*fn)(FILE *, Graph *, int stage, bool bwd, Inst *f), FILE *out) {
  for (int s = 0; s < g->nstages; s++) {
    Part *p = part_stage(g, s);
    Inst **lists[] = {p->fwd, p->bwd};
    int counts[] = {p->nfwd, p->nbwd};
    for (int l = 0; l < 2; l++) {
      int n;
      Inst **gl = group_list(g, lists[l], counts[l], &n);
      for (int i = 0; i < n; i++)
        if (gl[i]->op == OP_FUSED) fn(out, g, s, l, gl[i]);
    }
  }
}

/* Its operands in the kernel's parameter order: each value once, in the
 * order the members name them, outputs before inputs. */
int group_operands(Inst *f, Value **ops) {
  int n = 0;
  for (int m = 0; m < f->nbody; m++) {
    Inst *in = f->body[m];
    Value *vs[MAX_IN + 3];
    int k = 0;
    for (int i = 0; i < in->nout; i++)
      if (in->out[i]) vs[k++] = in->out[i];
    for (int i = 0; i < in->nin; i++) vs[k++] = in->in[i];
    for (int i = 0; i < k; i++) {
      bool seen = false;
      for (int j = 0; j < n; j++) seen |= ops[j] == vs[i];
      if (!seen) ops[n++] = vs[i];
    }
  }
  return n;
}

static void dump_group(FILE *out, Graph *g, int stage, bool bwd, Inst *f) {
  fprintf(out, "stage %d %s: %s\n", stage, bwd ? "bwd" : "fwd", f->kernel);
  for (int m = 0; m < f->nbody; m++) ir_print_inst(out, g->prog, f->body[m]);
}

void group_dump(FILE *out, Graph *g) {
  fprintf(out, "// groups\n");
  each_group(g, dump_group, out);
}

/* ---- the kernels ---- */

static const char *ctype(Value *v) { return v->dtype == DT_BF16 ? "bf16" : "float"; }

/* x rounded as it is stored (bf16), for what reads it after */
static const char *stored(Value *v) { return v->dtype == DT_BF16 ? "(float)bf16" : ""; }

/* add -> rmsnorm / layernorm: a warp a row. The sum goes out as it is
 * stored and the norm's statistics come from that; held in registers
 * (V vectors of 8 a lane), or read back from the sum past 2048 wide. */
static void write_add_norm(FILE *out, Inst *f) {
  Inst *add = f->body[0], *nm = f->body[1];
  bool ln = nm->op == OP_LAYERNORM, hold = ir_get(nm, "d") <= 2048;
  long long rows = (long long)ir_get(nm, "n"), d = (long long)ir_get(nm, "d"), v = (d / 8 + 31) / 32;
  Value *ops[MAX_IN * 2 + 6];
  int nops = group_operands(f, ops);
  int at[8];   /* parameter index of: x, a, b, y, w, bias, mean, rstd */
  Value *want[8] = {add->out[0], add->in[0], add->in[1], nm->out[0], nm->in[1], ln ? nm->in[2] : NULL,
                    ln ? nm->out[1] : NULL, nm->out[ln ? 2 : 1]};
  for (int k = 0; k < 8; k++) {
    at[k] = -1;
    for (int i = 0; i < nops; i++)
      if (ops[i] == want[k]) at[k] = i;
  }
  fprintf(out, "\n// %s: add, then %s of the sum; a warp a row, %s\n", f->kernel, op_names[nm->op],
          hold ? "the row in registers" : "the row read back from the sum");
  fprintf(out, "extern \"C\" __global__ void __launch_bounds__(256) %s(", f->kernel);
  for (int i = 0; i < nops; i++) {
    bool written = false;
    for (int m = 0; m < f->nbody; m++)
      for (int k = 0; k < f->body[m]->nout; k++) written |= f->body[m]->out[k] == ops[i];
    fprintf(out, "%s%s%s *p%d", i ? ", " : "", written ? "" : "const ", ctype(ops[i]), i);
  }
  fprintf(out, ") {\n");
  fprintf(out, "  const i64 ROWS = %lld, D = %lld;\n  const int V = %lld;\n  const float EPS = %.9gf;\n", rows, d, v,
          ir_get(nm, "eps"));
  fprintf(out, "  i64 row = blockIdx.x * (i64)8 + threadIdx.x / 32;\n  int lane = threadIdx.x %% 32;\n"
               "  if (row >= ROWS) return;\n  float h[%s][8], f[8], g[8], s = 0;\n", hold ? "V" : "1");
  const char *hk = hold ? "h[k]" : "h[0]", *each = hold ? "#pragma unroll\n  for (int k = 0; k < V; k++) {\n"
                                                        : "  for (int k = 0; k < V; k++) {\n";
  const char *col = d % 256 ? "    i64 j = (k * 32 + lane) * (i64)8;\n    if (j >= D) continue;\n"
                            : "    i64 j = (k * 32 + lane) * (i64)8;\n";
  /* the sum, stored; what it stores summed (layernorm) or squared (rmsnorm) */
  fprintf(out, "%s%s    ld8(f, p%d + row * D + j), ld8(g, p%d + row * D + j);\n", each, col, at[1], at[2]);
  fprintf(out, "    for (int e = 0; e < 8; e++) %s[e] = %s(f[e] + g[e]);\n", hk, stored(add->out[0]));
  fprintf(out, "    st8(p%d + row * D + j, %s);\n", at[0], hk);
  if (ln) fprintf(out, "    for (int e = 0; e < 8; e++) s += %s[e];\n  }\n", hk);
  else fprintf(out, "    for (int e = 0; e < 8; e++) s += %s[e] * %s[e];\n  }\n", hk, hk);
  fprintf(out, "  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffff, s, o);\n");
  if (ln) {   /* the variance about the mean, in a second pass */
    fprintf(out, "  float mu = s / D, q = 0;\n%s", each);
    if (!hold) fprintf(out, "%s    ld8(h[0], p%d + row * D + j);\n", col, at[0]);
    else if (d % 256) fprintf(out, "    if ((k * 32 + lane) * 8 >= D) continue;\n");
    fprintf(out, "    for (int e = 0; e < 8; e++) q += (%s[e] - mu) * (%s[e] - mu);\n  }\n", hk, hk);
    fprintf(out, "  for (int o = 16; o > 0; o >>= 1) q += __shfl_xor_sync(0xffffffff, q, o);\n"
                 "  float r = rsqrtf(q / D + EPS);\n");
  } else
    fprintf(out, "  float r = rsqrtf(s / D + EPS);\n");
  fprintf(out, "%s%s", each, col);
  if (!hold) fprintf(out, "    ld8(h[0], p%d + row * D + j);\n", at[0]);
  fprintf(out, "    ld8(g, p%d + j);\n", at[4]);
  if (ln) fprintf(out, "    ld8(f, p%d + j);\n    for (int e = 0; e < 8; e++) f[e] = (%s[e] - mu) * r * g[e] + f[e];\n",
                  at[5], hk);
  else fprintf(out, "    for (int e = 0; e < 8; e++) f[e] = %s[e] * r * g[e];\n", hk);
  fprintf(out, "    st8(p%d + row * D + j, f);\n  }\n", at[3]);
  if (ln) fprintf(out, "  if (lane == 0) p%d[row] = mu, p%d[row] = r;\n}\n", at[6], at[7]);
  else fprintf(out, "  if (lane == 0) p%d[row] = r;\n}\n", at[7]);
}

/* Each kernel once, by name (equal groups share one). */
static const char **written;
static int nwritten;

static void write_group(FILE *out, Graph *g, int stage, bool bwd, Inst *f) {
  (void)g, (void)stage, (void)bwd;
  for (int k = 0; k < nwritten; k++)
    if (!strcmp(written[k], f->kernel)) return;
  if (!nwritten) fprintf(out, "\n// ---- kernels lmc wrote for this model's groups (compiler/group.c) ----\n");
  written[nwritten++] = f->kernel;
  write_add_norm(out, f);
}

void group_kernels(FILE *out, Graph *g) {
  written = arena_alloc((g->nfwd + g->nbwd + 1) * sizeof *written), nwritten = 0;   /* a group has 2 members */
  each_group(g, write_group, out);
}

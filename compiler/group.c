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
 * Element-wise instructions (SwiGLU, SiLU, GELU, products, sums and
 * their backward ops, every operand n elements) are groups too: a run of
 * adjacent ones of one size, each after the first reading what one
 * before it wrote (gelu(gate) * up: two, one kernel), or one alone. Their
 * kernel is written from the members' formulas, n and every operand's
 * dtype compile-time constants (lmc_fused_swiglu_n33554432_bf16): 8
 * elements a thread-step with 16-byte accesses, an accumulating output
 * read and added to as the CPU does (its flags name the kernel too).
 *
 * A norm's backward (rows of a multiple of 8 up to 2048 wide) is a group
 * of its own with two kernels, the rows and then the column sums' chunks
 * in order, over a scratch buffer the runtime gives it (write_nb).
 *
 * Grouping is a function of each stage's list, asked by sched.c's live
 * ranges, emit.c and kernels.c alike; --fuse=never turns it off (the
 * hand-written kernels of kernels.cu then run each op). */
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

/* element-wise: one element of each output from the same element of each
 * input, every operand n elements (an add broadcasting a bias, or the
 * backward of one, reducing, is not) */
static int64_t ew_n(Inst *in) {
  switch (in->op) {
  case OP_SILU: case OP_GELU: case OP_MUL: case OP_ADD: case OP_SWIGLU:
  case OP_SILU_BWD: case OP_GELU_BWD: case OP_MUL_BWD: case OP_ADD_BWD: case OP_SWIGLU_BWD: break;
  default: return 0;
  }
  int64_t n = shape_numel(&in->in[0]->shape);
  for (int i = 0; i < in->nout + in->nin; i++) {
    Value *v = i < in->nout ? in->out[i] : in->in[i - in->nout];
    if (v && (v->is_int || shape_numel(&v->shape) != n)) return 0;
  }
  return n;
}

enum { EW_MEMBERS = 8, EW_OPERANDS = 24 };

static bool reads_any(Inst *in, Inst **from, int n) {
  for (int m = 0; m < n; m++)
    for (int i = 0; i < in->nin; i++)
      for (int o = 0; o < from[m]->nout; o++)
        if (from[m]->out[o] && in->in[i] == from[m]->out[o]) return true;
  return false;
}

/* the run of element-wise instructions from list[i]: each of list[i]'s
 * size and stage, reading an earlier member's output, not an add whose
 * sum a norm takes next (add_norm's); 0 if list[i] is not element-wise */
static int ew_span(Inst **list, int n, int i) {
  int64_t size = ew_n(list[i]);
  if (!size) return 0;
  int span = 1, ops = list[i]->nout + list[i]->nin;
  while (i + span < n && span < EW_MEMBERS) {
    Inst *in = list[i + span];
    if (ew_n(in) != size || in->stage != list[i]->stage || !reads_any(in, list + i, span)) break;
    if (i + span + 1 < n && add_norm(in, list[i + span + 1])) break;
    if ((ops += in->nout + in->nin) > EW_OPERANDS) break;
    span++;
  }
  return span;
}

static Inst *make_fused(Inst **members, int n) {
  Inst *f = arena_alloc(sizeof(Inst));
  f->op = OP_FUSED, f->stage = members[0]->stage, f->bwd = members[0]->bwd, f->loc = members[0]->loc;
  f->id = members[0]->id, f->body = arena_alloc(n * sizeof(Inst *)), f->nbody = n;
  for (int m = 0; m < n; m++) f->body[m] = members[m];
  return f;
}

/* An element-wise group's kernel name: its ops, n, the operands' dtypes
 * (one where all agree) and, where an output accumulates, each output's
 * flag in the members' order */
static Inst *make_ew_group(Inst **members, int n) {
  Inst *f = make_fused(members, n);
  Value *ops[EW_OPERANDS + MAX_IN + 3];
  int nops = group_operands(f, ops);
  char *name = "lmc_fused", *acc = "";
  bool any = false, mixed = false;
  for (int m = 0; m < n; m++) {
    name = arena_printf("%s_%s", name, op_names[members[m]->op]);
    for (int o = 0; o < members[m]->nout; o++)
      if (members[m]->out[o]) acc = arena_printf("%s%d", acc, members[m]->acc[o]), any |= members[m]->acc[o];
  }
  name = arena_printf("%s_n%lld", name, (long long)ew_n(members[0]));
  for (int i = 1; i < nops; i++) mixed |= ops[i]->dtype != ops[0]->dtype;
  for (int i = 0; i < (mixed ? nops : 1); i++) name = arena_printf("%s_%s", name, dt(ops[i]));
  f->kernel = any ? arena_printf("%s_acc%s", name, acc) : name;
  if (strlen(f->kernel) > 88) {   /* a long run: its members by a hash of the name (the bundle holds 95 characters) */
    uint32_t h = 2166136261u;
    for (const char *c = f->kernel; *c; c++) h = (h ^ (unsigned char)*c) * 16777619u;
    f->kernel = arena_printf("lmc_fused_%d_ops_n%lld_%08x", n, (long long)ew_n(members[0]), h);
  }
  int64_t grid = ((ew_n(members[0]) + 7) / 8 + 255) / 256;   /* a thread 8 elements, at most 8192 blocks */
  ir_set(f, "grid", (double)(grid > 8192 ? 8192 : grid)), ir_set(f, "block", 256);
  return f;
}

static Inst *make_group(Inst *add, Inst *nm) {
  Inst *f = make_fused((Inst *[]){add, nm}, 2);
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

/* A norm's backward (its weight's gradient and bias's wanted), rows of a
 * multiple of 8 up to 2048 wide: two kernels, the rows (dx, and each
 * chunk of rows' column sums into a scratch buffer the runtime gives the
 * group) and then the chunks' sums in order (_finish) */
static bool norm_bwd(Inst *in) {
  bool ln = in->op == OP_LAYERNORM_BWD;
  if (in->op != OP_RMSNORM_BWD && !ln) return false;
  int64_t d = (int64_t)ir_get(in, "d");
  Value *dx = in->out[0];   /* (norm_bwd_rows takes one type for dy, x and dx) */
  bool one = in->in[0]->dtype == in->in[1]->dtype && (!dx || dx->dtype == in->in[0]->dtype);
  return d % 8 == 0 && d <= 2048 && in->out[1] && (!ln || in->out[2]) && one;
}

/* rows a block of the rows kernel: a multiple of 8, about 256 blocks */
static int64_t nb_per(Inst *in) {
  int64_t rows = (int64_t)ir_get(in, "n"), per = (rows + 255) / 256;
  return per < 8 ? 8 : (per + 7) / 8 * 8;
}

static Inst *make_nb_group(Inst *in) {
  Inst *f = make_fused(&in, 1);
  int64_t rows = (int64_t)ir_get(in, "n"), d = (int64_t)ir_get(in, "d"), chunks = (rows + nb_per(in) - 1) / nb_per(in);
  Value *dx = in->out[0];   /* (dy, x and dx of one dtype: norm_bwd) */
  const char *acc = arena_printf("%d%d%s", dx && in->acc[0], in->acc[1], in->op == OP_LAYERNORM_BWD ? (in->acc[2] ? "1" : "0") : "");
  f->kernel = arena_printf("lmc_fused_%s_r%lld_d%lld_%s_acc%s", op_names[in->op], (long long)rows, (long long)d,
                           dt(in->in[0]), acc);
  ir_set(f, "grid", (double)chunks), ir_set(f, "block", 256), ir_set(f, "fgrid", (double)((d + 31) / 32));
  ir_set(f, "scratch", (double)((in->op == OP_LAYERNORM_BWD ? 2 : 1) * chunks * d * 4));
  return f;
}

bool group_takes(Graph *g, Inst *in) {
  return (g->groups & GROUP_ELEMENTWISE && ew_n(in) > 0) || (g->groups & GROUP_NORM_BWD && norm_bwd(in));
}

unsigned group_kinds(const char *list) {
  static const char *names[] = {"add_norm", "elementwise", "norm_bwd"};
  if (!strcmp(list, "all")) return GROUP_ALL;
  if (!strcmp(list, "none")) return 0;
  if (!*list) return ~0u;
  unsigned kinds = 0;
  for (const char *p = list; *p;) {
    size_t n = strcspn(p, ",");
    int k = 0;
    while (k < 3 && (strlen(names[k]) != n || strncmp(p, names[k], n))) k++;
    if (k == 3) return ~0u;
    kinds |= 1u << k, p += n + (p[n] == ',');
  }
  return kinds;
}

static bool add_norm_at(Graph *g, Inst **list, int n, int i) {
  return g->groups & GROUP_ADD_NORM && i + 1 < n && add_norm(list[i], list[i + 1]);
}

int group_span(Graph *g, Inst **list, int n, int i) {
  if (add_norm_at(g, list, n, i)) return 2;
  int ew = g->groups & GROUP_ELEMENTWISE ? ew_span(list, n, i) : 0;
  return ew ? ew : 1;
}

Inst **group_list(Graph *g, Inst **list, int n, int *count) {
  Inst **out = arena_alloc((n + 1) * sizeof(Inst *));
  *count = 0;
  for (int i = 0, span; i < n; i += span) {
    span = group_span(g, list, n, i);
    if (add_norm_at(g, list, n, i)) out[(*count)++] = make_group(list[i], list[i + 1]);
    else if (g->groups & GROUP_ELEMENTWISE && ew_n(list[i])) out[(*count)++] = make_ew_group(list + i, span);
    else if (g->groups & GROUP_NORM_BWD && norm_bwd(list[i])) out[(*count)++] = make_nb_group(list[i]);
    else out[(*count)++] = list[i];
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
  /* the sum, stored; what it stores summed (layernorm) or squared
   * (rmsnorm). Held, the row's sums are all made before the first is
   * stored: a store between two groups' loads kept the next group's
   * loads waiting for it (the sum might alias the inputs), a trip to
   * memory a group (SASS: six a row at llama-large's width) */
  fprintf(out, "%s%s    ld8(f, p%d + row * D + j), ld8(g, p%d + row * D + j);\n", each, col, at[1], at[2]);
  fprintf(out, "    for (int e = 0; e < 8; e++) %s[e] = %s(f[e] + g[e]);\n", hk, stored(add->out[0]));
  if (hold) fprintf(out, "  }\n%s%s", each, col);
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

/* One member's formulas for element e: y[o] its outputs' registers (NULL:
 * not wanted), a[i] its inputs' (kernels.cu's formulas, which its kernels
 * for an op alone use too); round[o]: out[o] rounded as stored once written */
static void ew_formulas(FILE *out, Inst *in, char **y, char **a, const bool *round) {
  const char *f[2] = {NULL, NULL};
  switch (in->op) {   /* kernels.cu's ew_* */
  case OP_SILU: f[0] = arena_printf("ew_silu(%s)", a[0]); break;
  case OP_GELU: f[0] = arena_printf("ew_gelu(%s)", a[0]); break;
  case OP_MUL: f[0] = arena_printf("%s * %s", a[0], a[1]); break;
  case OP_ADD: f[0] = arena_printf("%s + %s", a[0], a[1]); break;
  case OP_SWIGLU: f[0] = arena_printf("ew_swiglu(%s, %s)", a[0], a[1]); break;
  case OP_SILU_BWD: f[0] = arena_printf("ew_silu_bwd(%s, %s)", a[0], a[1]); break;   /* dy, x */
  case OP_GELU_BWD: f[0] = arena_printf("ew_gelu_bwd(%s, %s)", a[0], a[1]); break;
  case OP_MUL_BWD: f[0] = arena_printf("%s * %s", a[0], a[2]), f[1] = arena_printf("%s * %s", a[0], a[1]); break;
  case OP_ADD_BWD: f[0] = f[1] = a[0]; break;
  case OP_SWIGLU_BWD:   /* dy, gate, up */
    f[0] = arena_printf("ew_swiglu_bwd_g(%s, %s, %s)", a[0], a[1], a[2]), f[1] = arena_printf("ew_swiglu_bwd_u(%s, %s)", a[0], a[1]);
    break;
  default: internal_error("not an element-wise op");
  }
  fprintf(out, "    { ");   /* every formula from the inputs first, then the outputs in order */
  for (int o = 0; o < in->nout; o++)
    if (in->out[o]) fprintf(out, "float f%d = %s; ", o, f[o]);
  for (int o = 0; o < in->nout; o++) {
    if (!in->out[o]) continue;
    fprintf(out, "%s = %sf%d; ", y[o], in->acc[o] ? arena_printf("%s + ", y[o]) : "", o);
    if (round[o]) fprintf(out, "%s = (float)bf16(%s); ", y[o], y[o]);
  }
  fprintf(out, "}\n");
}

/* whether out[o] of body[m], written, is read again in the group (by a
 * later member, or added to by a later output): then as stored */
static bool read_again(Inst *f, int m, int o) {
  Value *v = f->body[m]->out[o];
  for (int l = m; l < f->nbody; l++) {
    Inst *in = f->body[l];
    for (int i = 0; l > m && i < in->nin; i++)
      if (in->in[i] == v) return true;
    for (int k = l == m ? o + 1 : 0; k < in->nout; k++)
      if (in->out[k] == v && in->acc[k]) return true;
  }
  return false;
}

/* element-wise: a step of G elements from i (8 with 16-byte accesses, or
 * 1), the members in order on registers, each value loaded once where the
 * group reads it before writing it (or adds to it), each written one
 * stored once, as stored (bf16 rounded) where the group reads it again */
static void write_ew(FILE *out, Inst *f) {
  Value *ops[EW_OPERANDS + MAX_IN + 3];
  int nops = group_operands(f, ops);
  bool written[EW_OPERANDS + MAX_IN + 3] = {0}, loaded[EW_OPERANDS + MAX_IN + 3] = {0};
  for (int m = 0; m < f->nbody; m++) {
    Inst *in = f->body[m];
    for (int k = 0; k < nops; k++) {   /* (a member reads its inputs, then writes its outputs in order) */
      bool r = false;
      int o = 0;
      for (int i = 0; i < in->nin; i++) r |= in->in[i] == ops[k];
      while (o < in->nout && in->out[o] != ops[k]) o++;
      if (!written[k] && (r || (o < in->nout && in->acc[o]))) loaded[k] = true;
      written[k] |= o < in->nout;
    }
  }
  const char *params = "", *args = "";
  for (int k = 0; k < nops; k++) {
    params = arena_printf("%s%s%s%s *p%d", params, k ? ", " : "", written[k] ? "" : "const ", ctype(ops[k]), k);
    args = arena_printf("%s, p%d", args, k);
  }
  fprintf(out, "\n// %s: element-wise,", f->kernel);
  for (int m = 0; m < f->nbody; m++) fprintf(out, " %s", op_names[f->body[m]->op]);
  fprintf(out, "\ntemplate <int G> __device__ __forceinline__ void %s_step(i64 i, %s) {\n  float", f->kernel, params);
  for (int k = 0; k < nops; k++) fprintf(out, "%s v%d[G]", k ? "," : "", k);
  fprintf(out, ";\n");
  for (int k = 0; k < nops; k++)
    if (loaded[k]) fprintf(out, "  ldg<G>(v%d, p%d + i);\n", k, k);
  fprintf(out, "  #pragma unroll\n  for (int e = 0; e < G; e++) {\n");
  for (int m = 0; m < f->nbody; m++) {
    Inst *in = f->body[m];
    char *y[3] = {NULL, NULL, NULL}, *a[MAX_IN];
    bool round[3];
    for (int k = 0; k < nops; k++) {
      for (int o = 0; o < in->nout; o++)
        if (in->out[o] == ops[k]) y[o] = arena_printf("v%d[e]", k);
      for (int i = 0; i < in->nin; i++)
        if (in->in[i] == ops[k]) a[i] = arena_printf("v%d[e]", k);
    }
    for (int o = 0; o < in->nout; o++) round[o] = in->out[o] && in->out[o]->dtype == DT_BF16 && read_again(f, m, o);
    ew_formulas(out, in, y, a, round);
  }
  fprintf(out, "  }\n");
  for (int k = 0; k < nops; k++)
    if (written[k]) fprintf(out, "  stg<G>(p%d + i, v%d);\n", k, k);
  fprintf(out, "}\nextern \"C\" __global__ void __launch_bounds__(256) %s(%s) {\n", f->kernel, params);
  fprintf(out, "  const i64 N = %lld;\n  i64 t = blockIdx.x * (i64)256 + threadIdx.x, step = (i64)gridDim.x * 256;\n",
          (long long)ew_n(f->body[0]));
  fprintf(out, "  bool v = ");
  for (int k = 0; k < nops; k++) fprintf(out, "%sal16(p%d)", k ? " && " : "", k);
  fprintf(out, ";   // (the plan aligns every value)\n");
  fprintf(out, "  i64 n8 = v ? N / 8 : 0;\n  for (i64 g = t; g < n8; g += step) %s_step<8>(g * 8%s);\n", f->kernel, args);
  fprintf(out, "  for (i64 i = n8 * 8 + t; i < N; i += step) %s_step<1>(i%s);\n}\n", f->kernel, args);
}

/* A norm's backward: kernels.cu's norm_bwd_rows (a warp a row, dx and
 * each chunk of rows' column sums into part) and then col_finish for dw
 * (and db), each an extern "C" kernel with the group's sizes and flags
 * compiled in. Both take the group's values and then part, the runtime's
 * scratch. */
static void write_nb(FILE *out, Inst *f) {
  Inst *in = f->body[0];
  bool ln = in->op == OP_LAYERNORM_BWD;
  long long rows = (long long)ir_get(in, "n"), d = (long long)ir_get(in, "d"), per = (long long)nb_per(in);
  long long chunks = (rows + per - 1) / per;
  Value *ops[MAX_IN + 3];
  int nops = group_operands(f, ops);
  const char *params = "", *p[8];   /* the parameter of: dx, dw, db, dy, x, w, mean, rstd (0: absent) */
  Value *want[8] = {in->out[0], in->out[1], ln ? in->out[2] : NULL, in->in[0], in->in[1], in->in[2],
                    ln ? in->in[3] : NULL, in->in[ln ? 4 : 3]};
  for (int k = 0; k < 8; k++) {
    p[k] = "0";
    for (int i = 0; i < nops; i++)
      if (want[k] && ops[i] == want[k]) p[k] = arena_printf("p%d", i);
  }
  for (int i = 0; i < nops; i++) {
    bool written = ops[i] == in->out[0] || ops[i] == in->out[1] || (ln && ops[i] == in->out[2]);
    params = arena_printf("%s%s%s *p%d, ", params, written ? "" : "const ", ctype(ops[i]), i);
  }
  fprintf(out, "\n// %s: %s's backward, %lld rows a block (norm_bwd_rows), then _finish (col_finish)\n", f->kernel,
          op_names[ln ? OP_LAYERNORM : OP_RMSNORM], per);
  long long ng = (d / 8 + 31) / 32;
  /* (the partial sums in shared memory in bf16 storage where they fit: kernels_norm_shared) */
  bool shared = in->in[0]->dtype == DT_BF16 && kernels_norm_shared(ng, ln);
  const char *sm = shared ? "true" : "false", *lns = ln ? "true" : "false";
  fprintf(out, "extern \"C\" __global__ void __launch_bounds__(256) %s(%sfloat *part) {\n"
               "  __shared__ __align__(16) float sh[NormBwdShared<%lld, %s, %s>::n];\n", f->kernel, params, ng, lns, sm);
  fprintf(out, "  norm_bwd_rows<%lld, %s, %s, %s, %s>(sh, (%s *)%s, part, %s, %s, %s, %s, %s, %lld, %lld, %lld);\n}\n", ng,
          lns, in->out[0] ? "true" : "false", in->out[0] && in->acc[0] ? "true" : "false", sm, ctype(in->in[0]), p[0],
          p[3], p[4], p[5], p[6], p[7], rows, d, per);
  fprintf(out, "extern \"C\" __global__ void __launch_bounds__(256) %s_finish(%sfloat *part) {\n", f->kernel, params);
  fprintf(out, "  col_finish(%s, part, %lld, %lld, %d);\n", p[1], chunks, d, in->acc[1]);
  if (ln) fprintf(out, "  col_finish(%s, part + %lld, %lld, %lld, %d);\n", p[2], chunks * d, chunks, d, in->acc[2]);
  fprintf(out, "}\n");
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
  fprintf(out, "#if LMC_IN_PART(0)\n");   /* (kernels.cu's prelude: "Parts") */
  if (f->nbody == 2 && norm(f->body[1]->op)) write_add_norm(out, f);
  else if (norm_bwd(f->body[0])) write_nb(out, f);
  else write_ew(out, f);
  fprintf(out, "#endif\n");
}

void group_kernels(FILE *out, Graph *g) {
  written = arena_alloc((g->nfwd + g->nbwd + 1) * sizeof *written), nwritten = 0;   /* at most one a member */
  each_group(g, write_group, out);
}

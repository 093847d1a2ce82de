/* ir.c: the graph IR. Values are tensors (activations, parameters, their
 * gradients, inputs); instructions are ops over values with named numeric
 * attributes (sizes, eps, ...). Forward and backward instructions are kept
 * in two lists, each in execution order. The printer here is --dump=ir
 * and --dump=grad; the verifier is --verify-each. */
#include "lmc.h"
#include <stdlib.h>
#include <string.h>

const char *op_names[NUM_OPS] = {
#define OP(e, s, ni, no, c) s,
#include "ops.def"
#undef OP
};
const int op_nin[NUM_OPS] = {
#define OP(e, s, ni, no, c) ni,
#include "ops.def"
#undef OP
};
const int op_nout[NUM_OPS] = {
#define OP(e, s, ni, no, c) no,
#include "ops.def"
#undef OP
};
const int op_callable[NUM_OPS] = {
#define OP(e, s, ni, no, c) c,
#include "ops.def"
#undef OP
};

#define GROW(arr, n, cap)                                       \
  do {                                                          \
    if ((n) == (cap)) {                                         \
      int nc = (cap) ? 2 * (cap) : 64;                          \
      void *na = arena_alloc(nc * sizeof(*(arr)));              \
      if (n) memcpy(na, (arr), (n) * sizeof(*(arr)));           \
      (arr) = na, (cap) = nc;                                   \
    }                                                           \
  } while (0)

Graph *ir_new(Program *p) {
  Graph *g = arena_alloc(sizeof(Graph));
  g->prog = p;
  return g;
}

Loc ir_loc;

/* Every tensor is checked as it is made: absurd sizes (a batch of 10^15)
 * are an error at the expression that makes them, not a wrapped count. */
Value *ir_value(Graph *g, int kind, const char *name, Shape shape) {
  if (shape_numel(&shape) > ((int64_t)1 << 40)) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    for (int i = 0; i < shape.rank; i++)
      fprintf(f, "%s%s=%lld", i ? ", " : "", shape.dim[i] >= 0 ? g->prog->dims[shape.dim[i]].name : "?",
              (long long)shape.size[i]);
    fclose(f);
    char *dims = arena_strdup(text ? text : "");
    free(text);
    diag_error(ir_loc, "too-large", "a tensor of this expression would have more than 2^40 elements (%s)", dims);
  }
  Value *v = arena_alloc(sizeof(Value));
  v->id = g->nvals, v->kind = kind, v->name = name, v->shape = shape;
  GROW(g->vals, g->nvals, g->capvals);
  g->vals[g->nvals++] = v;
  if (kind == V_PARAM) {
    GROW(g->params, g->nparams, g->capparams);
    g->params[g->nparams++] = v;
  }
  return v;
}

Inst *ir_inst(Graph *g, int op, bool bwd, Loc loc) {
  Inst *in = arena_alloc(sizeof(Inst));
  in->op = op, in->bwd = bwd, in->loc = loc, in->stage = g->cur_stage;
  in->nin = op_nin[op], in->nout = op_nout[op];
  if (bwd) {
    in->id = g->nfwd + g->nbwd;
    GROW(g->bwd, g->nbwd, g->capbwd);
    g->bwd[g->nbwd++] = in;
  } else {
    in->id = g->nfwd;
    GROW(g->fwd, g->nfwd, g->capfwd);
    g->fwd[g->nfwd++] = in;
  }
  return in;
}

void ir_set(Inst *in, const char *key, double v) {
  for (int i = 0; i < in->nattr; i++)
    if (!strcmp(in->akey[i], key)) {
      in->aval[i] = v;
      return;
    }
  if (in->nattr == MAX_ATTRS)
    internal_error("too many attributes");
  in->akey[in->nattr] = key;
  in->aval[in->nattr++] = v;
}

bool ir_has(Inst *in, const char *key) {
  for (int i = 0; i < in->nattr; i++)
    if (!strcmp(in->akey[i], key)) return true;
  return false;
}

double ir_get(Inst *in, const char *key) {
  for (int i = 0; i < in->nattr; i++)
    if (!strcmp(in->akey[i], key))
      return in->aval[i];
  internal_error("missing attribute");
}

/* Saturates at INT64_MAX rather than wrap: the size checks compare it. */
int64_t shape_numel(const Shape *s) {
  int64_t n = 1;
  for (int i = 0; i < s->rank; i++)
    if (__builtin_mul_overflow(n, s->size[i], &n)) return INT64_MAX;
  return n;
}

void ir_print_shape(FILE *out, Program *p, const Shape *s) {
  fputc('[', out);
  for (int i = 0; i < s->rank; i++) {
    if (s->dim[i] >= 0)
      fprintf(out, "%s", p->dims[s->dim[i]].name);
    else
      fprintf(out, "%lld", (long long)s->size[i]);
    if (i + 1 < s->rank) fputc(',', out);
  }
  fputc(']', out);
}

const char *dtype_names[3] = {"f32", "bf16", "i32"};

static void print_value(FILE *out, Program *p, Value *v) {
  fprintf(out, "%%%d:", v->id);
  ir_print_shape(out, p, &v->shape);
  if (v->dtype == DT_BF16) fprintf(out, ":bf16");   /* f32 (or i32 ids) unless said */
}

void ir_print_inst(FILE *out, Program *p, Inst *in) {
  fprintf(out, "  ");
  for (int i = 0; i < in->nout; i++) {
    if (i) fprintf(out, ", ");
    if (!in->out[i]) { fprintf(out, "_"); continue; }
    print_value(out, p, in->out[i]);
    if (in->acc[i]) fprintf(out, " +");
  }
  fprintf(out, " = %s", op_names[in->op]);
  for (int i = 0; i < in->nin; i++)
    fprintf(out, "%s %%%d", i ? "," : "", in->in[i]->id);
  for (int i = 0; i < in->nattr; i++) {
    double v = in->aval[i];
    if (!strcmp(in->akey[i], "group"))   /* a collective's mesh axis */
      fprintf(out, " group=%s", axis_names[(int)v]);
    else if (v == (double)(long long)v)
      fprintf(out, " %s=%lld", in->akey[i], (long long)v);
    else
      fprintf(out, " %s=%g", in->akey[i], v);
  }
  fprintf(out, "\n");
}

static const char *kind_name(int k) {
  static const char *n[] = {"act", "param", "grad", "input", "state", "copy"};
  return n[k];
}

void ir_dump(FILE *out, Graph *g, bool bwd) {
  Program *p = g->prog;
  fprintf(out, "// %s\n", bwd ? "grad" : "ir");
  if (!bwd) {
    for (int i = 0; i < g->nvals; i++) {
      Value *v = g->vals[i];
      if (v->kind != V_PARAM && v->kind != V_INPUT) continue;
      fprintf(out, "  ");
      print_value(out, p, v);
      fprintf(out, " = %s %s", kind_name(v->kind), v->name);
      if (v->kind == V_PARAM && !strcmp(v->init, "normal"))
        fprintf(out, " init=normal(%g)", v->init_std);
      else if (v->kind == V_PARAM)
        fprintf(out, " init=%s", v->init);
      fprintf(out, "\n");
    }
  }
  if (!bwd && g->ncasts) fprintf(out, "  // bf16 copies: made at load, rewritten by each optimizer step\n");
  for (int i = 0; !bwd && i < g->ncasts; i++) ir_print_inst(out, p, g->casts[i]);
  Inst **list = bwd ? g->bwd : g->fwd;
  int n = bwd ? g->nbwd : g->nfwd;
  for (int i = 0; i < n; i++)
    ir_print_inst(out, p, list[i]);
  if (!bwd)
    fprintf(out, "  return %%%d\n", g->loss->id);
}

/* Every input is defined before its use; every output is written once
 * without accumulation before any accumulation into it. */
void ir_verify(Graph *g) {
  int total = g->nfwd + g->nbwd;
  char *defined = arena_alloc(g->nvals);
  for (int i = 0; i < g->nvals; i++)
    if (g->vals[i]->kind == V_PARAM || g->vals[i]->kind == V_INPUT ||
        g->vals[i]->kind == V_GRAD || g->vals[i]->kind == V_STATE || g->vals[i]->kind == V_COPY)
      defined[i] = 1;
  for (int k = 0; k < total; k++) {
    Inst *in = k < g->nfwd ? g->fwd[k] : g->bwd[k - g->nfwd];
    if (in->nin != op_nin[in->op] || in->nout != op_nout[in->op])
      internal_error("verify: arity");
    for (int i = 0; i < in->nin; i++)
      if (!in->in[i] || !defined[in->in[i]->id])
        internal_error("verify: use before definition");
    for (int i = 0; i < in->nout; i++) {
      Value *o = in->out[i];
      if (!o) continue;
      if (in->acc[i] && !defined[o->id])
        internal_error("verify: accumulation into an undefined value");
      defined[o->id] = 1;
    }
  }
}

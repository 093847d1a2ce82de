/* lower.c: AST -> forward graph IR. Inlines every block call, unrolls
 * `layers L = n { ... }` into n copies whose parameters are named
 * `layers.<i>.<name>`, infers every tensor's shape over named dims and
 * reports shape errors at the expression that caused them. The result is
 * one straight-line forward program ending in the scalar loss. */
#include "lmc.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct Bind {
  const char *name;
  Value *v;
} Bind;

typedef struct Env {
  Bind b[512];
  int n;
  const char *prefix;   /* parameter name prefix, e.g. "layers.3." */
  int64_t layer;        /* index in the innermost layer stack, or -1 */
} Env;

static Graph *G;
static Program *P;

static void bind(Env *e, const char *name, Value *v, Loc loc) {
  for (int i = 0; i < e->n; i++)
    if (!strcmp(e->b[i].name, name)) {
      e->b[i].v = v;
      return;
    }
  if (e->n == 512)
    diag_error(loc, "too-many-names", "too many names in one body (limit 512)");
  e->b[e->n++] = (Bind){name, v};
}

static Value *lookup(Env *e, const char *name) {
  for (int i = 0; i < e->n; i++)
    if (!strcmp(e->b[i].name, name))
      return e->b[i].v;
  return NULL;
}

/* ---- shapes ---- */

/* Shapes are per rank: a dim laid out on tp has size / tp on each rank. */
static bool tp_split(int dim) {
  return dim >= 0 && P->dims[dim].axis == AX_TP && P->s.mesh[AX_TP] > 1;
}

static int64_t local_size(int dim) {
  return P->dims[dim].size / (tp_split(dim) ? P->s.mesh[AX_TP] : 1);
}

static Shape shape_of_dims(int n, const int *dims) {
  Shape s = {.rank = n};
  for (int i = 0; i < n; i++)
    s.dim[i] = dims[i], s.size[i] = local_size(dims[i]);
  return s;
}

/* A tp-split dim that the inputs have and the output lacks was summed
 * over: each rank holds a partial sum. */
static bool partial(Value *a, Value *b, Value *out) {
  Value *in[2] = {a, b};
  for (int k = 0; k < 2; k++)
    for (int i = 0; in[k] && i < in[k]->shape.rank; i++) {
      int d = in[k]->shape.dim[i];
      bool kept = false;
      for (int j = 0; j < out->shape.rank; j++) kept |= out->shape.dim[j] == d;
      if (tp_split(d) && !kept) return true;
    }
  return false;
}

/* Sums (op 0) or maxes (op 1) v over the tp group, in place. */
static void allreduce(Value *v, int op, Loc loc) {
  Inst *in = ir_inst(G, OP_ALLREDUCE, false, loc);
  in->in[0] = in->out[0] = v;
  ir_set(in, "n", shape_numel(&v->shape)), ir_set(in, "op", op);
}

_Noreturn static void tp_unsupported(Loc loc, const char *what) {
  diag_error(loc, "tp-unsupported", "%s cannot be split by tp in this lmc", what);
}

static int dim_id(const char *name) {
  return (int)(sema_dim(P, name) - P->dims);
}

static bool same_dim(const Shape *a, int i, const Shape *b, int j) {
  if (a->dim[i] >= 0 && b->dim[j] >= 0)
    return a->dim[i] == b->dim[j];
  return a->dim[i] < 0 && b->dim[j] < 0 && a->size[i] == b->size[j];
}

static bool same_shape(const Shape *a, const Shape *b) {
  if (a->rank != b->rank) return false;
  for (int i = 0; i < a->rank; i++)
    if (!same_dim(a, i, b, i)) return false;
  return true;
}

static int find_dim(const Shape *s, const Shape *o, int j) {
  for (int i = 0; i < s->rank; i++)
    if (same_dim(s, i, o, j)) return i;
  return -1;
}

static char *shape_str(const Shape *s) {
  char *buf;
  size_t len;
  FILE *f = open_memstream(&buf, &len);
  ir_print_shape(f, P, s);
  fclose(f);
  char *r = arena_strdup(buf);
  free(buf);
  return r;
}

_Noreturn static void mismatch(Loc loc, const char *what, Value *a, Value *b) {
  diag_error(loc, "shape-mismatch", "shape mismatch in %s: %s vs %s", what,
             shape_str(&a->shape), shape_str(&b->shape));
}

static Shape drop_last(Shape s) {
  s.rank--;
  return s;
}

/* ---- op builders ---- */

static Value *act(const char *name, Shape s) { return ir_value(G, V_ACT, name, s); }

static Value *emit1(int op, Loc loc, Value *a, Value *b, Shape s) {
  Inst *in = ir_inst(G, op, false, loc);
  in->in[0] = a, in->in[1] = b;
  in->out[0] = act(NULL, s);
  in->out[0]->def = in;
  return in->out[0];
}

static Value *lower_embed(Loc loc, Value *ids, Value *w) {
  if (!ids->is_int)
    diag_error(loc, "embed-ids", "embed needs token ids (tokens or positions) as its first argument");
  if (w->shape.rank != 2)
    diag_error(loc, "shape-mismatch", "embed table must be [rows, D], got %s", shape_str(&w->shape));
  if (ids == G->positions && w->shape.size[0] < P->s.seq)
    diag_error(loc, "embed-positions", "position table has %lld rows but seq is %lld",
               (long long)w->shape.size[0], (long long)P->s.seq);
  Shape s = ids->shape;
  s.dim[s.rank] = w->shape.dim[1], s.size[s.rank] = w->shape.size[1], s.rank++;
  if (tp_split(w->shape.dim[1])) tp_unsupported(loc, "an embedding's width");
  Value *y = emit1(OP_EMBED, loc, ids, w, s);
  ir_set(y->def, "n", shape_numel(&ids->shape));
  ir_set(y->def, "d", w->shape.size[1]);
  ir_set(y->def, "v", w->shape.size[0]);
  if (tp_split(w->shape.dim[0])) {   /* vocab parallel: rows of other ranks are 0 */
    ir_set(y->def, "vsplit", 1);
    allreduce(y, 0, loc);
  }
  return y;
}

/* x[batch.., C..] contracted with w[C.., N..] (tb=0) or w[N.., C..] (tb=1):
 * the dims that w shares with x are contracted and must be x's last dims,
 * in w's order. */
static Value *lower_matmul(Loc loc, Value *x, Value *w) {
  const Shape *xs = &x->shape, *ws = &w->shape;
  int shared[MAX_RANK], ns = 0, first = -1, last = -1;
  for (int j = 0; j < ws->rank; j++)
    if (find_dim(xs, ws, j) >= 0) {
      shared[ns++] = j;
      if (first < 0) first = j;
      last = j;
    }
  if (ns == 0)
    diag_error(loc, "matmul-contract", "matmul of %s and %s shares no dim to contract",
               shape_str(xs), shape_str(ws));
  bool contiguous = last - first + 1 == ns;
  int tb = first == 0 ? 0 : 1;
  if (!contiguous || (first != 0 && last != ws->rank - 1) || ns == ws->rank)
    diag_error(loc, "matmul-contract", "matmul of %s and %s: the contracted dims must lead or trail %s and leave a dim",
               shape_str(xs), shape_str(ws), shape_str(ws));
  for (int i = 0; i < ns; i++)
    if (find_dim(xs, ws, shared[i]) != xs->rank - ns + i)
      diag_error(loc, "matmul-contract", "matmul of %s and %s: the contracted dims must be the last dims of %s, in the same order",
                 shape_str(xs), shape_str(ws), shape_str(xs));
  Shape s = *xs;
  s.rank -= ns;
  int64_t m = shape_numel(&s), k = 1, n = 1;
  for (int j = 0; j < ws->rank; j++) {
    if (j >= first && j <= last) { k *= ws->size[j]; continue; }
    if (s.rank == MAX_RANK)
      diag_error(loc, "shape-rank", "matmul result has more than %d dims", MAX_RANK);
    s.dim[s.rank] = ws->dim[j], s.size[s.rank++] = ws->size[j];
    n *= ws->size[j];
  }
  Value *y = emit1(OP_MATMUL, loc, x, w, s);
  ir_set(y->def, "m", m), ir_set(y->def, "n", n), ir_set(y->def, "k", k);
  ir_set(y->def, "ta", 0), ir_set(y->def, "tb", tb);
  if (partial(x, w, y)) allreduce(y, 0, loc);   /* row parallel */
  return y;
}

static void check_norm_weight(Loc loc, const char *what, Value *x, Value *w) {
  if (w->shape.rank != 1 || !same_dim(&w->shape, 0, &x->shape, x->shape.rank - 1))
    mismatch(loc, what, x, w);
}

static Value *lower_norm(Loc loc, int op, Value **a, double eps) {
  Value *x = a[0];
  if (x->shape.rank < 1)
    diag_error(loc, "shape-mismatch", "%s of a scalar", op_names[op]);
  check_norm_weight(loc, op_names[op], x, a[1]);
  if (tp_split(x->shape.dim[x->shape.rank - 1])) tp_unsupported(loc, "a normalised dim");
  if (op == OP_LAYERNORM)
    check_norm_weight(loc, op_names[op], x, a[2]);
  Inst *in = ir_inst(G, op, false, loc);
  for (int i = 0; i < op_nin[op]; i++) in->in[i] = a[i];
  in->out[0] = act(NULL, x->shape);
  for (int i = 1; i < op_nout[op]; i++) in->out[i] = act(NULL, drop_last(x->shape));
  for (int i = 0; i < op_nout[op]; i++) in->out[i]->def = in;
  int64_t d = x->shape.size[x->shape.rank - 1];
  ir_set(in, "n", shape_numel(&x->shape) / d), ir_set(in, "d", d), ir_set(in, "eps", eps);
  return in->out[0];
}

static int bt_dims(void) { return dim_id("B"); }

static void check_bt(Loc loc, const char *what, Value *x, int rank) {
  int b = bt_dims();
  if (x->shape.rank != rank || x->shape.dim[0] != b || x->shape.dim[1] != b + 1)
    diag_error(loc, "shape-mismatch", "%s needs a [B,T,...] tensor of rank %d, got %s", what, rank,
               shape_str(&x->shape));
}

static Value *lower_rope(Loc loc, Value *x, double theta) {
  check_bt(loc, "rope", x, 4);
  if (x->shape.size[3] % 2)
    diag_error(loc, "rope-odd", "rope needs an even head dim, got %lld", (long long)x->shape.size[3]);
  if (tp_split(x->shape.dim[3])) tp_unsupported(loc, "rope's head dim");
  Value *y = emit1(OP_ROPE, loc, x, NULL, x->shape);
  ir_set(y->def, "b", x->shape.size[0]), ir_set(y->def, "t", x->shape.size[1]);
  ir_set(y->def, "h", x->shape.size[2]), ir_set(y->def, "k", x->shape.size[3]);
  ir_set(y->def, "theta", theta);
  return y;
}

static Value *lower_attention(Loc loc, Value **a) {
  Value *q = a[0], *k = a[1], *v = a[2];
  check_bt(loc, "attention", q, 4);
  check_bt(loc, "attention", k, 4);
  if (!same_shape(&k->shape, &v->shape)) mismatch(loc, "attention (k vs v)", k, v);
  if (!same_dim(&q->shape, 3, &k->shape, 3)) mismatch(loc, "attention (head dim of q vs k)", q, k);
  if (tp_split(q->shape.dim[3])) tp_unsupported(loc, "attention's head dim");
  if (tp_split(q->shape.dim[2]) != tp_split(k->shape.dim[2]))
    diag_error(loc, "tp-heads", "attention: lay out both the query heads and the kv groups on tp, or neither");
  int64_t h = q->shape.size[2], g = k->shape.size[2];
  if (h % g)
    diag_error(loc, "gqa-groups", "attention: %lld query heads do not divide into %lld kv groups",
               (long long)h, (long long)g);
  Inst *in = ir_inst(G, OP_ATTENTION, false, loc);
  in->in[0] = q, in->in[1] = k, in->in[2] = v;
  in->out[0] = act(NULL, q->shape);
  /* the softmax's log-sum-exp per query row: the backward pass recomputes
   * the probabilities from it instead of keeping [B,H,T,T] */
  Shape ps = {.rank = 3, .dim = {q->shape.dim[0], q->shape.dim[2], q->shape.dim[1]},
              .size = {q->shape.size[0], h, q->shape.size[1]}};
  in->out[1] = act(NULL, ps);
  in->out[0]->def = in->out[1]->def = in;
  ir_set(in, "b", q->shape.size[0]), ir_set(in, "t", q->shape.size[1]);
  ir_set(in, "h", h), ir_set(in, "g", g), ir_set(in, "k", q->shape.size[3]);
  return in->out[0];
}

static Value *lower_pointwise(Loc loc, int op, Value *a, Value *b) {
  if (op == OP_MUL && !same_shape(&a->shape, &b->shape)) mismatch(loc, "'*'", a, b);
  if (op == OP_ADD && !same_shape(&a->shape, &b->shape)) {
    bool suffix = b->shape.rank <= a->shape.rank && b->shape.rank > 0;
    for (int i = 0; suffix && i < b->shape.rank; i++)
      suffix = same_dim(&b->shape, i, &a->shape, a->shape.rank - b->shape.rank + i);
    if (!suffix) mismatch(loc, "'+'", a, b);
  }
  if ((a->is_int || (b && b->is_int)))
    diag_error(loc, "int-operand", "%s of token ids", op_names[op]);
  Value *y = emit1(op, loc, a, b, a->shape);
  ir_set(y->def, "n", shape_numel(&a->shape));
  if (op == OP_ADD) ir_set(y->def, "nb", shape_numel(&b->shape));
  return y;
}

/* The scalar loss: cross-entropy and every MoE layer's balancing losses
 * add into it (the first to need it makes it, so it is the first state). */
static Value *loss_state(void) {
  if (!G->loss) G->loss = ir_value(G, V_STATE, "loss", (Shape){0});
  return G->loss;
}

/* Vocab-parallel cross-entropy: no rank holds all logits. The row max and
 * then the sums of exp and the target's logit are reduced over tp. */
static Value *lower_xent_tp(Loc loc, Value *logits, Value *targets) {
  Shape bt = drop_last(logits->shape);
  Inst *mx = ir_inst(G, OP_XENT_MAX, false, loc);
  mx->in[0] = logits, mx->out[0] = act(NULL, bt), mx->out[0]->def = mx;
  ir_set(mx, "n", shape_numel(&bt)), ir_set(mx, "v", logits->shape.size[2]);
  allreduce(mx->out[0], 1, loc);
  Inst *st = ir_inst(G, OP_XENT_STATS, false, loc);
  st->in[0] = logits, st->in[1] = targets, st->in[2] = mx->out[0];
  st->out[0] = act(NULL, bt), st->out[1] = act(NULL, bt);
  st->out[0]->def = st->out[1]->def = st;
  ir_set(st, "n", shape_numel(&bt)), ir_set(st, "v", logits->shape.size[2]), ir_set(st, "vsplit", 1);
  allreduce(st->out[0], 0, loc);
  allreduce(st->out[1], 0, loc);
  Inst *in = ir_inst(G, OP_XENT_LOSS, false, loc);
  Value *ins[5] = {logits, targets, mx->out[0], st->out[0], st->out[1]};
  for (int i = 0; i < 5; i++) in->in[i] = ins[i];
  in->out[0] = loss_state();
  in->out[0]->def = in;
  in->acc[0] = true;
  ir_set(in, "n", shape_numel(&bt)), ir_set(in, "v", logits->shape.size[2]), ir_set(in, "vsplit", 1);
  ir_set(in, "scale", 1.0 / ((double)P->s.batch * (double)P->s.seq));
  return in->out[0];
}

static Value *lower_xent(Loc loc, Value *logits, Value *targets) {
  check_bt(loc, "cross_entropy", logits, 3);
  if (!targets->is_int)
    diag_error(loc, "xent-targets", "cross_entropy needs token ids (targets) as its second argument");
  if (tp_split(logits->shape.dim[2])) return lower_xent_tp(loc, logits, targets);
  Inst *in = ir_inst(G, OP_XENT, false, loc);
  in->in[0] = logits, in->in[1] = targets;
  in->out[0] = loss_state();
  in->out[0]->def = in;
  in->acc[0] = true;   /* the loss sums over microbatches */
  ir_set(in, "n", shape_numel(&targets->shape));
  ir_set(in, "v", logits->shape.size[2]);
  ir_set(in, "scale", 1.0 / ((double)P->s.batch * (double)P->s.seq));
  return in->out[0];
}

static Value *lower_expr(Env *e, Node *n);

static double kwarg(Node *call, const char *key, double dflt) {
  for (Node *a = call->list; a; a = a->next)
    if (a->kind == N_KWARG && !strcmp(a->name, key))
      return sema_eval(P, a->a);
  return dflt;
}

/* ---- mixture of experts ---- */

static Shape anon(int rank, const int64_t *sizes) {
  Shape s = {.rank = rank};
  for (int i = 0; i < rank; i++) s.dim[i] = -1, s.size[i] = sizes[i];
  return s;
}

/* An instruction with fresh activations of the given shapes as outputs. */
static Inst *moe_inst(int op, Loc loc, Value **in, int nin, const Shape *outs, int nout) {
  Inst *x = ir_inst(G, op, false, loc);
  for (int i = 0; i < nin; i++) x->in[i] = in[i];
  for (int i = 0; i < nout; i++) x->out[i] = act(NULL, outs[i]), x->out[i]->def = x;
  return x;
}

/* Sums v over a data group axis (dp or ep) in place, inside the program. */
static void group_allreduce(Value *v, int axis, Loc loc) {
  Inst *in = ir_inst(G, OP_ALLREDUCE, false, loc);
  in->in[0] = in->out[0] = v;
  ir_set(in, "n", shape_numel(&v->shape)), ir_set(in, "op", 0), ir_set(in, "group", axis);
}

static bool ep_split(int dim) {
  return dim >= 0 && P->dims[dim].axis == AX_EP && P->s.mesh[AX_EP] > 1;
}

static void check_experts(Loc loc, Value *w, int e, int out, int in, const char *what) {
  const Shape *s = &w->shape;
  if (s->rank != 3 || s->dim[0] != e || s->dim[1] != out || s->dim[2] != in || w->kind != V_PARAM)
    diag_error(loc, "moe-shape", "moe: %s must be a parameter [%s, %s, %s] (experts, out, in), got %s", what,
               P->dims[e].name, P->dims[out].name, P->dims[in].name, shape_str(s));
  if (tp_split(s->dim[1]) && tp_split(s->dim[2]))
    diag_error(loc, "tp-unsupported", "moe: only the experts' hidden dim can be split by tp");
}

/* One MoE layer's dims and sizes: the experts' dim de (E of them, El on
 * this rank of ep), the model dim dd (D), the experts' hidden dim df (F,
 * this tp rank's), n tokens, top k, M = n * k assignments. */
typedef struct Moe {
  Loc loc;
  int de, dd, df;
  int64_t E, El, ep, n, D, F, k, M;
} Moe;

/* The shapes moe() needs, checked; the expert weights then hold this
 * rank's experts (dim 0 split by ep) and the router is marked whole. */
static Moe moe_check(Loc loc, Value *x, Value *router, Value *w1, Value *w3, Value *w2, int64_t k) {
  Moe m = {.loc = loc, .k = k};
  check_bt(loc, "moe", x, 3);
  m.dd = x->shape.dim[2];
  if (router->kind != V_PARAM || router->shape.rank != 2 || router->shape.dim[1] != m.dd || router->shape.dim[0] < 0)
    diag_error(loc, "moe-shape", "moe: the router must be a parameter [E, %s], got %s",
               m.dd >= 0 ? P->dims[m.dd].name : "D", shape_str(&router->shape));
  m.de = router->shape.dim[0], m.df = w2->shape.rank == 3 ? w2->shape.dim[2] : -1;
  if (m.df < 0)
    diag_error(loc, "moe-shape", "moe: the down weight must be a parameter [%s, %s, F] (experts, out, in), got %s",
               P->dims[m.de].name, P->dims[m.dd].name, shape_str(&w2->shape));
  check_experts(loc, w1, m.de, m.df, m.dd, w3 ? "the gate weight" : "the up weight");
  if (w3) check_experts(loc, w3, m.de, m.df, m.dd, "the up weight");
  check_experts(loc, w2, m.de, m.dd, m.df, "the down weight");
  if (tp_split(m.de))
    diag_error(loc, "layout-axis", "moe: the experts' dim %s can be laid out on ep, not tp", P->dims[m.de].name);
  m.E = P->dims[m.de].size, m.ep = ep_split(m.de) ? P->s.mesh[AX_EP] : 1, m.El = m.E / m.ep;
  if (k < 1 || k > m.E)
    diag_error(loc, "moe-top-k", "moe: top_k = %lld must be in 1..%lld, the number of experts", (long long)k,
               (long long)m.E);
  router->router = true;
  Value *ws[3] = {w1, w3, w2};
  for (int i = 0; i < 3; i++)
    if (ws[i]) ws[i]->shape.size[0] = m.El, ws[i]->esplit = m.ep > 1, ws[i]->top_k = k;
  m.n = x->shape.size[0] * x->shape.size[1], m.D = x->shape.size[2], m.F = w1->shape.size[1], m.M = m.n * k;
  return m;
}

/* [rows, D] or [rows, F] (anonymous rows) */
static Shape rows_of(int64_t rows, int dim, int64_t size) {
  int64_t s[] = {rows, size};
  Shape sh = anon(2, s);
  sh.dim[1] = dim;
  return sh;
}

/* The router's logits, top k and gates (gates[B,T,k], idx[B,T,k]), the
 * balance statistics summed over the data group, and the balance losses
 * into the loss and the layer's metrics. */
static void moe_route(Moe *m, const char *prefix, Value *x, Value *router, bool renorm, Value **gates, Value **idx) {
  Settings *t = &P->s;
  int64_t group = t->mesh[AX_DP] * t->mesh[AX_EP];   /* the ranks whose tokens one balance covers */
  Value *logits = lower_matmul(m->loc, x, router);          /* [B,T,E] */
  int64_t sg[] = {x->shape.size[0], x->shape.size[1], m->k}, ss[] = {2 * m->E + 1};
  Shape gs = anon(3, sg);
  gs.dim[0] = x->shape.dim[0], gs.dim[1] = x->shape.dim[1];
  Shape route_out[3] = {gs, gs, anon(1, ss)};
  Inst *rt = moe_inst(OP_MOE_ROUTE, m->loc, &logits, 1, route_out, 3);
  ir_set(rt, "n", m->n), ir_set(rt, "e", m->E), ir_set(rt, "top", m->k), ir_set(rt, "rn", renorm);
  ir_set(rt, "aux", t->aux_loss_coef), ir_set(rt, "zl", t->z_loss_coef);
  ir_set(rt, "scale", 1.0 / ((double)t->batch * (double)t->seq)), ir_set(rt, "ng", m->n * group);
  Value *stats = rt->out[2];
  *gates = rt->out[0], *idx = rt->out[1];
  if (t->mesh[AX_DP] > 1) group_allreduce(stats, AX_DP, m->loc);
  if (t->mesh[AX_EP] > 1) group_allreduce(stats, AX_EP, m->loc);
  Inst *ls = ir_inst(G, OP_MOE_LOSS, false, m->loc);
  int64_t four = 4;
  ls->in[0] = stats, ls->out[0] = loss_state(), ls->acc[0] = true;
  ls->out[1] = ir_value(G, V_STATE, arena_printf("%smoe", prefix), anon(1, &four));
  ls->out[1]->def = ls, ls->acc[1] = true;
  ir_set(ls, "e", m->E), ir_set(ls, "top", m->k), ir_set(ls, "aux", t->aux_loss_coef), ir_set(ls, "zl", t->z_loss_coef);
  ir_set(ls, "ng", m->n * group), ir_set(ls, "share", 1.0 / ((double)t->microbatches * (double)group));
}

/* The experts over rows xe with counts segc (rows buffer rows): a =
 * act(xe w1' [, xe w3']), then a w2'. */
static Value *moe_ffn(Moe *m, Value *xe, Value *segc, int64_t rows, Value *w1, Value *w3, Value *w2) {
  int64_t sh[] = {rows, w3 ? 2 * m->F : m->F};
  Shape up_out[2] = {rows_of(rows, m->df, m->F), anon(2, sh)};
  Value *uin[4] = {xe, w1, w3 ? w3 : segc, segc};
  Inst *up = moe_inst(w3 ? OP_MOE_UP : OP_MOE_UP_GELU, m->loc, uin, w3 ? 4 : 3, up_out, 2);
  Shape ys = rows_of(rows, m->dd, m->D);
  Value *dwn[3] = {up->out[0], w2, segc};
  Inst *down = moe_inst(OP_MOE_DOWN, m->loc, dwn, 3, &ys, 1);
  Inst *both[2] = {up, down};
  for (int i = 0; i < 2; i++)   /* E segments of rows (with ep: El per source rank); segment s runs expert s % El */
    ir_set(both[i], "m", rows), ir_set(both[i], "d", m->D), ir_set(both[i], "n", m->F), ir_set(both[i], "seg", m->E),
        ir_set(both[i], "e", m->El);
  return down->out[0];
}

/* moe(x, router, w1, w3, w2): each token's top k experts by the router's
 * softmax, their SwiGLU (or, without w3, GELU) MLPs summed with the gate
 * weights. Lowered to: router logits (a matmul), route (top k, gates,
 * balance statistics summed over the data group), the balancing losses,
 * dispatch (each expert's tokens contiguous), with ep an all-to-all to the
 * ranks holding the experts and back, the experts as grouped GEMMs over
 * however many tokens each got, and the gated combine. No token is
 * dropped: the expert buffers hold all N*k assignments (ep x that with ep,
 * where every peer may send all of theirs). */
static Value *lower_moe_call(Loc loc, const char *prefix, Value *x, Value *router, Value *w1, Value *w3, Value *w2,
                             int64_t k, bool renorm) {
  Moe m = moe_check(loc, x, router, w1, w3, w2, k);
  Value *gates, *idx;
  moe_route(&m, prefix, x, router, renorm, &gates, &idx);
  int64_t se[] = {m.E};
  Shape disp_out[3] = {rows_of(m.M, m.dd, m.D), anon(1, se), gates->shape};
  Value *din[2] = {x, idx};
  Inst *dp = moe_inst(OP_MOE_DISPATCH, loc, din, 2, disp_out, 3);
  ir_set(dp, "n", m.n), ir_set(dp, "d", m.D), ir_set(dp, "top", k), ir_set(dp, "e", m.E);
  Value *xe = dp->out[0], *counts = dp->out[1], *pos = dp->out[2], *segc = counts;
  if (m.ep > 1) {                                             /* to the experts' ranks */
    int64_t sc[] = {m.ep * m.El};
    Shape a2a_out[2] = {rows_of(m.ep * m.M, m.dd, m.D), anon(1, sc)};
    Value *ain[2] = {xe, counts};
    Inst *a2a = moe_inst(OP_MOE_A2A, loc, ain, 2, a2a_out, 2);
    ir_set(a2a, "m", m.M), ir_set(a2a, "d", m.D), ir_set(a2a, "e", m.E), ir_set(a2a, "seg", m.ep);
    xe = a2a->out[0], segc = a2a->out[1];
  }
  Value *ye = moe_ffn(&m, xe, segc, m.ep * m.M, w1, w3, w2);
  if (m.ep > 1) {                                             /* and back */
    Value *rin[3] = {ye, segc, counts};
    Inst *back = moe_inst(OP_MOE_A2A_REV, loc, rin, 3, &disp_out[0], 1);
    ir_set(back, "m", m.M), ir_set(back, "d", m.D), ir_set(back, "e", m.E), ir_set(back, "seg", m.ep);
    ye = back->out[0];
  }
  Value *cin[3] = {ye, pos, gates};
  Inst *cb = moe_inst(OP_MOE_COMBINE, loc, cin, 3, &x->shape, 1);
  ir_set(cb, "n", m.n), ir_set(cb, "d", m.D), ir_set(cb, "top", k);
  if (tp_split(m.df)) {                                       /* each tp rank summed its slice of F */
    ir_set(cb, "tpsum", 1);
    allreduce(cb->out[0], 0, loc);
  }
  return cb->out[0];
}

static Value *lower_moe(Env *e, Node *call, Value **a, int na) {
  int64_t k = (int64_t)kwarg(call, "top_k", (double)P->s.top_k);
  bool renorm = kwarg(call, "renorm", 1) != 0;
  return lower_moe_call(call->loc, e->prefix, a[0], a[1], a[2], na == 5 ? a[3] : NULL, na == 5 ? a[4] : a[3], k, renorm);
}

/* ---- experts = E: MLPs become MoE layers ---- */

static bool is_call(Node *n, const char *name, int nargs) {
  if (!n || n->kind != N_CALL || strcmp(n->name, name)) return false;
  int c = 0;
  for (Node *a = n->list; a; a = a->next) c++;
  return c == nargs;
}

/* A parameter of this layer that nothing has read yet. */
static Value *fresh_param(Env *e, Node *n) {
  if (!n || n->kind != N_IDENT) return NULL;
  Value *v = lookup(e, n->name);
  if (!v || v->kind != V_PARAM || v->shape.rank != 2 || strncmp(v->name, e->prefix, strlen(e->prefix))) return NULL;
  for (int k = 0; k < G->nfwd; k++)
    for (int i = 0; i < G->fwd[k]->nin; i++)
      if (G->fwd[k]->in[i] == v) return NULL;
  return v;
}

static Value *as_experts(Value *w, int de) {
  Shape s = w->shape;
  s.rank = 3;
  s.dim[2] = s.dim[1], s.size[2] = s.size[1], s.dim[1] = s.dim[0], s.size[1] = s.size[0];
  s.dim[0] = de, s.size[0] = P->dims[de].size;
  w->shape = s;
  return w;
}

int moe_layers;   /* MLPs turned into MoE layers */

/* matmul(silu(matmul(m, gate)) * matmul(m, up), down) or
 * matmul(gelu(matmul(m, up)), down), in a layer the settings experts and
 * moe_every pick, with gate, up [F, D] and down [D, F] parameters of the
 * layer: the same MLP as E experts, the weights [E, F, D] and [E, D, F],
 * and a router [E, D]. Anything else is left dense. */
static Value *try_experts(Env *e, Node *n) {
  Settings *t = &P->s;
  if (!t->experts || e->layer < 0 || e->layer % t->moe_every || !is_call(n, "matmul", 2)) return NULL;
  Node *inner = n->list, *wd = inner->next, *g = NULL, *u = NULL;
  if (inner->kind == N_BINOP && inner->op == '*') {
    Node *l = inner->a, *r = inner->b;
    if (is_call(r, "silu", 1)) { Node *x = l; l = r, r = x; }
    if (!is_call(l, "silu", 1) || !is_call(l->list, "matmul", 2) || !is_call(r, "matmul", 2)) return NULL;
    g = l->list, u = r;
    if (g->list->kind != N_IDENT || u->list->kind != N_IDENT || strcmp(g->list->name, u->list->name)) return NULL;
  } else if (is_call(inner, "gelu", 1) && is_call(inner->list, "matmul", 2)) {
    u = inner->list;
  } else
    return NULL;
  Value *wg = g ? fresh_param(e, g->list->next) : NULL, *wu = fresh_param(e, u->list->next), *wdn = fresh_param(e, wd);
  if ((g && !wg) || !wu || !wdn) return NULL;
  int de = dim_id("E"), dd = wdn->shape.dim[0], df = wdn->shape.dim[1];
  if (wu->shape.dim[0] != df || wu->shape.dim[1] != dd || (wg && (wg->shape.dim[0] != df || wg->shape.dim[1] != dd)))
    return NULL;   /* not the [out, in] layouts */
  Value *x = lower_expr(e, u->list);
  ir_loc = n->loc;
  int dims[2] = {de, dd};
  Value *router = ir_value(G, V_PARAM, arena_printf("%srouter", e->prefix), shape_of_dims(2, dims));
  router->init = "normal", router->init_std = 0.02;
  moe_layers++;
  return lower_moe_call(n->loc, e->prefix, x, router, as_experts(wg ? wg : wu, de), wg ? as_experts(wu, de) : NULL,
                        as_experts(wdn, de), t->top_k, true);
}

/* ---- expressions ---- */

static Value *lower_block(Node *blk, Value **args, Env *caller, Loc loc);


static Value *lower_call(Env *e, Node *n) {
  Value *a[8], *moe = try_experts(e, n);
  if (moe) return moe;
  int na = 0;
  for (Node *x = n->list; x; x = x->next)
    if (x->kind != N_KWARG) a[na++] = lower_expr(e, x);
  int op = sema_op(n->name);
  ir_loc = n->loc;
  switch (op) {
  case OP_EMBED: return lower_embed(n->loc, a[0], a[1]);
  case OP_MATMUL: return lower_matmul(n->loc, a[0], a[1]);
  case OP_RMSNORM:
  case OP_LAYERNORM: return lower_norm(n->loc, op, a, kwarg(n, "eps", 1e-5));
  case OP_ROPE: return lower_rope(n->loc, a[0], kwarg(n, "theta", 10000.0));
  case OP_ATTENTION: return lower_attention(n->loc, a);
  case OP_SILU:
  case OP_GELU: return lower_pointwise(n->loc, op, a[0], NULL);
  case OP_MUL:
  case OP_ADD: return lower_pointwise(n->loc, op, a[0], a[1]);
  case OP_XENT: return lower_xent(n->loc, a[0], a[1]);
  case OP_MOE: return lower_moe(e, n, a, na);
  }
  return lower_block(sema_block(P, n->name), a, e, n->loc);
}

static Value *lower_expr(Env *e, Node *n) {
  switch (n->kind) {
  case N_IDENT: return lookup(e, n->name);
  case N_BINOP: {
    Value *a = lower_expr(e, n->a), *b = lower_expr(e, n->b);
    ir_loc = n->loc;
    return lower_pointwise(n->loc, n->op == '+' ? OP_ADD : OP_MUL, a, b);
  }
  case N_CALL: return lower_call(e, n);
  default: internal_error("expression kinds are checked by sema");
  }
}

/* ---- statements ---- */

static Value *find_param(const char *name) {
  for (int i = 0; i < G->nparams; i++)
    if (!strcmp(G->params[i]->name, name))
      return G->params[i];
  return NULL;
}

static void lower_param(Env *e, Node *s) {
  const char *name = arena_printf("%s%s", e->prefix, s->name);
  if (find_param(name))
    diag_error(s->b->loc, "dup-param", "parameter '%s' is declared twice", name);
  int dims[MAX_RANK], n = 0;
  for (Node *d = s->list; d; d = d->next) {
    if (n == MAX_RANK)
      diag_error(d->loc, "shape-rank", "more than %d dims", MAX_RANK);
    dims[n++] = dim_id(d->name);
  }
  Shape sh = shape_of_dims(n, dims);
  ir_loc = s->loc;
  if (shape_numel(&sh) > ((int64_t)1 << 34))
    diag_error(s->loc, "too-large", "parameter '%s' has %lld elements (limit 2^34)", name,
               (long long)shape_numel(&sh));
  Value *v = ir_value(G, V_PARAM, name, sh);
  v->init = "normal", v->init_std = 0.02;
  if (s->a && s->a->kind == N_IDENT) v->init = s->a->name;
  if (s->a && s->a->kind == N_CALL) v->init_std = sema_eval(P, s->a->list);
  bind(e, s->name, v, s->loc);
}

static Value *lower_body(Env *e, Node *body);

/* Layer i runs on pipeline stage i / (n / pp) when the layer dim is laid
 * out on pp; what comes after the stack runs on the last stage. */
static void lower_layers(Env *e, Node *s) {
  Dim *d = &P->dims[dim_id(s->name)];
  int64_t n = d->size, pp = d->axis == AX_PP ? P->s.mesh[AX_PP] : 1;
  if (n > 4096)
    diag_error(s->a->loc, "too-large", "%lld layers (limit 4096)", (long long)n);
  const char *outer = e->prefix;
  for (int64_t i = 0; i < n; i++) {
    e->prefix = arena_printf("%slayers.%lld.", outer, (long long)i);
    e->layer = i;
    if (pp > 1) G->cur_stage = (int)(i / (n / pp));
    lower_body(e, s->list);
  }
  if (pp > 1) G->cur_stage = (int)pp - 1;
  e->prefix = outer, e->layer = -1;
}

static Value *lower_body(Env *e, Node *body) {
  for (Node *s = body; s; s = s->next) {
    switch (s->kind) {
    case N_DIM: break;
    case N_PARAM: lower_param(e, s); break;
    case N_ASSIGN: bind(e, s->name, lower_expr(e, s->a), s->loc); break;
    case N_LAYERS: lower_layers(e, s); break;
    case N_RETURN: return lower_expr(e, s->a);
    default: internal_error("statement kinds are checked by sema");
    }
  }
  return NULL;
}

static int depth;

/* experts = E found MLPs to turn into experts; what ep splits is experts. */
static void check_moe(Program *p) {
  if (p->s.experts && !moe_layers)
    diag_error(p->model->loc, "experts-no-mlp",
               "experts = %lld but model '%s' has no MLP to turn into experts: a layer's matmul(silu(matmul(m, gate)) * "
               "matmul(m, up), down) or matmul(gelu(matmul(m, up)), down) with [F, D] and [D, F] weights",
               (long long)p->s.experts, p->model->name);
  for (int i = 0; i < G->nparams; i++) {
    Value *v = G->params[i];
    for (int d = 0; d < v->shape.rank && !v->esplit && !v->router; d++)
      if (ep_split(v->shape.dim[d]))
        diag_error(p->model->loc, "ep-layout", "parameter '%s' has dim %s, laid out on ep, but is not an expert weight of moe()",
                   v->name, p->dims[v->shape.dim[d]].name);
  }
}

static Value *lower_block(Node *blk, Value **args, Env *caller, Loc loc) {
  if (++depth > 8)
    diag_error(loc, "too-deep", "block calls nest deeper than 8 (is '%s' recursive?)", blk->name);
  Env *e = arena_alloc(sizeof(Env));
  e->prefix = caller->prefix, e->layer = caller->layer;
  int i = 0;
  for (Node *q = blk->a; q; q = q->next) bind(e, q->name, args[i++], q->loc);
  Value *r = lower_body(e, blk->list);
  depth--;
  return r;
}

static Value *input(Env *e, const char *name) {
  int dims[2] = {dim_id("B"), dim_id("T")};
  ir_loc = P->model->loc;
  Value *v = ir_value(G, V_INPUT, name, shape_of_dims(2, dims));
  v->is_int = true;
  bind(e, name, v, P->model->loc);
  return v;
}

Graph *lower_program(Program *p) {
  P = p, G = ir_new(p), depth = 0;
  G->nstages = (int)p->s.mesh[AX_PP];
  Env *e = arena_alloc(sizeof(Env));
  e->prefix = "", e->layer = -1;
  moe_layers = 0;
  G->tokens = input(e, "tokens");
  G->targets = input(e, "targets");
  G->positions = input(e, "positions");
  Value *loss = lower_body(e, p->model->list);
  if (loss->shape.rank != 0 || !loss->def || (loss->def->op != OP_XENT && loss->def->op != OP_XENT_LOSS)) {
    Node *r = p->model->list;
    while (r->kind != N_RETURN) r = r->next;
    diag_error(r->a->loc, "loss-shape", "the model must return the scalar loss of cross_entropy, got %s",
               shape_str(&loss->shape));
  }
  G->loss = loss;
  check_moe(p);
  if (G->nparams == 0)
    diag_error(p->model->loc, "no-params", "model '%s' has no parameters", p->model->name);
  return G;
}

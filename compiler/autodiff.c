/* autodiff.c: reverse-mode differentiation of the forward program. Walks
 * the forward instructions backwards and appends, for each one whose
 * output has a gradient, the instructions that propagate it to its
 * inputs. A value used by several instructions gets its gradient summed:
 * the first contribution writes, the later ones accumulate (Inst.acc).
 * Parameter gradients always accumulate: the runtime zeroes them once per
 * step, so microbatches add up. */
#include "lmc.h"
#include <string.h>

static Graph *G;

static void mark_needs_grad(void) {
  for (int i = 0; i < G->nparams; i++)
    G->params[i]->needs_grad = true;
  for (int i = 0; i < G->nfwd; i++) {
    Inst *in = G->fwd[i];
    bool any = false;
    for (int j = 0; j < in->nin; j++)
      any |= in->in[j] && in->in[j]->needs_grad;
    for (int j = 0; j < in->nout; j++)
      in->out[j]->needs_grad = any && j == 0;
  }
}

/* The gradient buffer of v and whether this contribution accumulates. */
static Value *grad_of(Value *v, bool *acc) {
  if (!v->needs_grad) {
    *acc = false;
    return NULL;
  }
  if (v->grad) {
    *acc = true;
    return v->grad;
  }
  bool param = v->kind == V_PARAM;
  v->grad = ir_value(G, param ? V_GRAD : V_ACT,
                     param ? arena_printf("%s.grad", v->name) : NULL, v->shape);
  v->grad->of = v;
  *acc = param;
  return v->grad;
}

static Inst *bwd_inst(int op, Inst *fwd) {
  G->cur_stage = fwd->stage;         /* a backward runs where its forward ran */
  Inst *in = ir_inst(G, op, true, fwd->loc);
  for (int i = 0; i < fwd->nattr; i++)
    ir_set(in, fwd->akey[i], fwd->aval[i]);
  return in;
}

static void drop_attr(Inst *in, const char *key) {
  int j = 0;
  for (int i = 0; i < in->nattr; i++)
    if (strcmp(in->akey[i], key)) in->akey[j] = in->akey[i], in->aval[j++] = in->aval[i];
  in->nattr = j;
}

static void set_out(Inst *in, int i, Value *of) {
  in->out[i] = grad_of(of, &in->acc[i]);
  if (in->out[i] && !in->out[i]->def)
    in->out[i]->def = in;
}

static bool tp_split(int dim) {
  Program *p = G->prog;
  return dim >= 0 && p->dims[dim].axis == AX_TP && p->s.mesh[AX_TP] > 1;
}

/* Whether a backward matmul sums over a tp-split dim: each rank then holds
 * a partial gradient. */
static bool is_partial(Inst *in) {
  Value *o = in->out[0];
  for (int k = 0; k < 2; k++)
    for (int i = 0; i < in->in[k]->shape.rank; i++) {
      int d = in->in[k]->shape.dim[i];
      bool kept = false;
      for (int j = 0; j < o->shape.rank; j++) kept |= o->shape.dim[j] == d;
      if (tp_split(d) && !kept) return true;
    }
  return false;
}

/* Moves the instruction just appended to g->bwd to just after index pos. */
static void place_after(int pos) {
  Inst *in = G->bwd[G->nbwd - 1];
  memmove(&G->bwd[pos + 2], &G->bwd[pos + 1], (G->nbwd - 2 - pos) * sizeof(Inst *));
  G->bwd[pos + 1] = in;
}

static Inst *allreduce_after(int pos, Value *v, Loc loc) {
  Inst *ar = ir_inst(G, OP_ALLREDUCE, true, loc);
  ar->stage = G->bwd[pos]->stage;
  ar->in[0] = ar->out[0] = v;
  ir_set(ar, "n", shape_numel(&v->shape)), ir_set(ar, "op", 0);
  place_after(pos);
  return ar;
}

/* Partial gradients are summed over tp before they are read. A gradient
 * whose every contribution is partial (the input of q, k and v, or of the
 * MLP's gate and up) accumulates them and is all-reduced once, after the
 * last; one that also has replicated contributions all-reduces each
 * partial one in a temporary that is then added. */
static void reduce_partials(void) {
  int n0 = G->nvals;   /* not the temporaries this makes */
  for (int v = 0; v < n0; v++) {
    Value *gv = G->vals[v];
    int writers = 0, partial = 0, last = -1;
    for (int k = 0; k < G->nbwd; k++) {
      Inst *in = G->bwd[k];
      for (int j = 0; j < in->nout; j++)
        if (in->out[j] == gv) {
          writers++, last = k;
          partial += in->op == OP_MATMUL && j == 0 && is_partial(in);
        }
    }
    if (!partial) continue;
    if (partial == writers) {
      allreduce_after(last, gv, G->bwd[last]->loc);
      continue;
    }
    for (int k = 0; k < G->nbwd; k++) {
      Inst *in = G->bwd[k];
      if (in->out[0] != gv || in->op != OP_MATMUL || !is_partial(in)) continue;
      bool acc = in->acc[0];
      Value *tmp = ir_value(G, V_ACT, NULL, gv->shape);
      tmp->def = in, in->out[0] = tmp, in->acc[0] = false;
      allreduce_after(k, tmp, in->loc);
      Inst *add = ir_inst(G, OP_ADD_BWD, true, in->loc);   /* gv (+)= tmp */
      add->stage = in->stage;
      add->in[0] = tmp, add->out[0] = gv, add->acc[0] = acc;
      ir_set(add, "n", shape_numel(&tmp->shape)), ir_set(add, "nb", shape_numel(&tmp->shape));
      place_after(k + 1);
      if (gv->def == in) gv->def = add;
      k += 2;
    }
  }
}

static void bwd_matmul(Inst *f, Value *dy) {
  Value *x = f->in[0], *w = f->in[1];
  int64_t m = ir_get(f, "m"), n = ir_get(f, "n"), k = ir_get(f, "k");
  bool tb = ir_get(f, "tb");
  if (w->needs_grad) {            /* dW = x^T dy  or  dy^T x */
    Inst *in = bwd_inst(OP_MATMUL, f);
    in->in[0] = tb ? dy : x, in->in[1] = tb ? x : dy;
    ir_set(in, "m", tb ? n : k), ir_set(in, "n", tb ? k : n), ir_set(in, "k", m);
    ir_set(in, "ta", 1), ir_set(in, "tb", 0);
    set_out(in, 0, w);
  }
  if (x->needs_grad) {            /* dx = dy W^T  or  dy W */
    Inst *in = bwd_inst(OP_MATMUL, f);
    in->in[0] = dy, in->in[1] = w;
    ir_set(in, "m", m), ir_set(in, "n", k), ir_set(in, "k", n);
    ir_set(in, "ta", 0), ir_set(in, "tb", !tb);
    set_out(in, 0, x);
  }
}

static void bwd_generic(Inst *f, int op, Value *dy) {
  Inst *in = bwd_inst(op, f);
  in->in[0] = dy;
  switch (f->op) {
  case OP_EMBED:     in->in[1] = f->in[0]; set_out(in, 0, f->in[1]); return;
  case OP_ROPE:      set_out(in, 0, f->in[0]); return;
  case OP_SILU:
  case OP_GELU:      in->in[1] = f->in[0]; set_out(in, 0, f->in[0]); return;
  case OP_ADD:       set_out(in, 0, f->in[0]); set_out(in, 1, f->in[1]); return;
  case OP_MUL:
  case OP_SWIGLU:
    in->in[1] = f->in[0], in->in[2] = f->in[1];
    set_out(in, 0, f->in[0]), set_out(in, 1, f->in[1]);
    return;
  case OP_RMSNORM:   /* dy, x, w, rstd */
    in->in[1] = f->in[0], in->in[2] = f->in[1], in->in[3] = f->out[1];
    set_out(in, 0, f->in[0]), set_out(in, 1, f->in[1]);
    return;
  case OP_LAYERNORM: /* dy, x, w, mean, rstd */
    in->in[1] = f->in[0], in->in[2] = f->in[1], in->in[3] = f->out[1], in->in[4] = f->out[2];
    set_out(in, 0, f->in[0]), set_out(in, 1, f->in[1]), set_out(in, 2, f->in[2]);
    return;
  case OP_ATTENTION: /* do, q, k, v, lse, o (for rowsum(do * o)) */
    for (int i = 0; i < 3; i++) in->in[1 + i] = f->in[i];
    in->in[4] = f->out[1], in->in[5] = f->out[0];
    for (int i = 0; i < 3; i++) set_out(in, i, f->in[i]);
    return;
  }
  internal_error("no backward rule");
}

/* A tp all-reduce of v right after the instruction just appended. */
static void tp_sum(Value *v, Inst *after) {
  Inst *ar = ir_inst(G, OP_ALLREDUCE, true, after->loc);
  ar->stage = after->stage;
  ar->in[0] = ar->out[0] = v;
  ir_set(ar, "n", shape_numel(&v->shape)), ir_set(ar, "op", 0);
}

static bool moe_tp(Inst *f) {   /* the experts' hidden dim is split by tp */
  Value *a = f->op == OP_MOE_DOWN ? f->in[0] : f->out[0];
  return tp_split(a->shape.dim[1]);
}

/* The MoE ops: each backward reads what its forward read and saved. */
static void bwd_moe(Inst *f, Value *dy) {
  Inst *in;
  switch (f->op) {
  case OP_MOE_ROUTE:      /* dgates, logits, idx, stats: + the balancing losses' gradients */
    in = bwd_inst(OP_MOE_ROUTE_BWD, f);
    in->in[0] = dy, in->in[1] = f->in[0], in->in[2] = f->out[1], in->in[3] = f->out[2];
    set_out(in, 0, f->in[0]);
    return;
  case OP_MOE_DISPATCH:   /* dxp, pos */
    in = bwd_inst(OP_MOE_DISPATCH_BWD, f);
    in->in[0] = dy, in->in[1] = f->out[2];
    set_out(in, 0, f->in[0]);
    return;
  case OP_MOE_A2A:        /* the gradients go back the way the rows came */
    in = bwd_inst(OP_MOE_A2A_REV, f);
    in->in[0] = dy, in->in[1] = f->out[1], in->in[2] = f->in[1];
    set_out(in, 0, f->in[0]);
    return;
  case OP_MOE_A2A_REV:
    in = bwd_inst(OP_MOE_A2A, f);
    in->in[0] = dy, in->in[1] = f->in[2];
    set_out(in, 0, f->in[0]);
    in->out[1] = ir_value(G, V_ACT, NULL, f->in[1]->shape), in->out[1]->def = in;
    return;
  case OP_MOE_UP:         /* da, x, w1, w3, counts, h */
  case OP_MOE_UP_GELU:    /* da, x, w1, counts, h */
    in = bwd_inst(f->op == OP_MOE_UP ? OP_MOE_UP_BWD : OP_MOE_UP_GELU_BWD, f);
    in->in[0] = dy;
    for (int i = 0; i < f->nin; i++) in->in[1 + i] = f->in[i];
    in->in[1 + f->nin] = f->out[1];
    for (int i = 0; i < f->nin - 1; i++) set_out(in, i, f->in[i]);
    if (moe_tp(f) && in->out[0]) tp_sum(in->out[0], in);   /* dx sums over F */
    return;
  case OP_MOE_DOWN:       /* dy, a, w2, counts */
    in = bwd_inst(OP_MOE_DOWN_BWD, f);
    in->in[0] = dy;
    for (int i = 0; i < 3; i++) in->in[1 + i] = f->in[i];
    set_out(in, 0, f->in[0]), set_out(in, 1, f->in[1]);
    return;
  case OP_MOE_COMBINE:    /* dy, yp, pos, gates */
    in = bwd_inst(OP_MOE_COMBINE_BWD, f);
    in->in[0] = dy;
    for (int i = 0; i < 3; i++) in->in[1 + i] = f->in[i];
    set_out(in, 0, f->in[0]), set_out(in, 1, f->in[2]);
    for (int i = 0; i < f->nattr; i++)   /* yp is a partial sum over tp: so are the gates' gradients */
      if (!strcmp(f->akey[i], "tpsum")) tp_sum(in->out[1], in);
    return;
  }
  internal_error("no MoE backward rule");
}

static int bwd_op(int op) {
  switch (op) {
  case OP_EMBED: return OP_EMBED_BWD;
  case OP_RMSNORM: return OP_RMSNORM_BWD;
  case OP_LAYERNORM: return OP_LAYERNORM_BWD;
  case OP_ROPE: return OP_ROPE_BWD;
  case OP_ATTENTION: return OP_ATTENTION_BWD;
  case OP_SILU: return OP_SILU_BWD;
  case OP_GELU: return OP_GELU_BWD;
  case OP_MUL: return OP_MUL_BWD;
  case OP_SWIGLU: return OP_SWIGLU_BWD;
  case OP_ADD: return OP_ADD_BWD;
  }
  internal_error("no backward op");
}

/* y = a + b hands its gradient on unchanged, so a's gradient, when this
 * is its first contribution, can be y's gradient's own buffer: y's
 * gradient is read by this add_bwd alone and written before it, never
 * after. Later contributions to a's gradient accumulate into the buffer as
 * they would have into their own, in the same order: the same bits. b's
 * gradient (not a bias's) can be the same buffer too where every read of
 * it comes before a's next contribution and nothing else writes it (as in
 * a residual block: the branch's last matmul reads it, then the branch's
 * first op adds to a's), and b is made on this stage (a gradient sent to
 * another stage leaves at the end of the pass). Each saves a pass over
 * the activations and a buffer; an add_bwd left with nothing to do goes.
 * Not where a gradient is all-reduced in place (tp's partial sums), which
 * would sum y's part again. */
static bool allreduced(Value *v) {
  for (int k = 0; k < G->nbwd; k++)
    if (G->bwd[k]->op == OP_ALLREDUCE && G->bwd[k]->out[0] == v) return true;
  return false;
}

static bool writes(Inst *u, Value *v) {
  for (int i = 0; i < u->nout; i++)
    if (u->out[i] == v) return true;
  return false;
}

static bool reads(Inst *u, Value *v) {
  for (int i = 0; i < u->nin; i++)
    if (u->in[i] == v) return true;
  return false;
}

/* Whether output i of the add_bwd at k can be its input's buffer. */
static bool can_hand_on(int k, int i) {
  Inst *in = G->bwd[k];
  Value *g = in->out[i], *dy = in->in[0];
  if (!g || in->acc[i] || g == dy || g->kind != V_ACT || dy->kind != V_ACT || allreduced(g)) return false;
  if (i == 0) return true;
  if (ir_get(in, "nb") != ir_get(in, "n") || in->out[0] || !g->of || !g->of->def || g->of->def->stage != in->stage)
    return false;
  bool dy_written = false;
  for (int l = k + 1; l < G->nbwd; l++) {
    Inst *u = G->bwd[l];
    if (writes(u, g) || (dy_written && reads(u, g))) return false;
    dy_written |= writes(u, dy);
  }
  return true;
}

static void hand_on(int k, int i) {
  Inst *in = G->bwd[k];
  Value *g = in->out[i], *dy = in->in[0];
  for (int l = k + 1; l < G->nbwd; l++) {
    Inst *u = G->bwd[l];
    for (int j = 0; j < u->nin; j++) u->in[j] = u->in[j] == g ? dy : u->in[j];
    for (int j = 0; j < u->nout; j++) u->out[j] = u->out[j] == g ? dy : u->out[j];
  }
  if (g->of) g->of->grad = dy;
  in->out[i] = NULL;
}

static void forward_sums(void) {
  int j = 0;
  for (int k = 0; k < G->nbwd; k++) {
    Inst *in = G->bwd[k];
    if (in->op == OP_ADD_BWD)
      for (int i = 0; i < 2; i++)
        if (can_hand_on(k, i)) hand_on(k, i);
    if (in->op != OP_ADD_BWD || in->out[0] || in->out[1]) G->bwd[j++] = in;   /* else nothing left to do */
  }
  G->nbwd = j;
}

void ad_backward(Graph *g) {
  G = g;
  mark_needs_grad();
  for (int i = g->nfwd - 1; i >= 0; i--) {
    Inst *f = g->fwd[i];
    if (f->op == OP_XENT || f->op == OP_XENT_LOSS) {   /* the seed: d loss / d logits */
      if (f->out[0] != g->loss || !f->in[0]->needs_grad) continue;
      Inst *in = bwd_inst(f->op == OP_XENT ? OP_XENT_BWD : OP_XENT_TP_BWD, f);
      for (int k = 0; k < in->nin; k++) in->in[k] = f->in[k];
      set_out(in, 0, f->in[0]);
      continue;
    }
    if (f->op == OP_HEAD_XENT) {   /* the fused head's seed: dx and dw at once */
      if (f->out[0] != g->loss) continue;
      Inst *in = bwd_inst(OP_HEAD_XENT_BWD, f);
      for (int k = 0; k < 3; k++) in->in[k] = f->in[k];
      in->in[3] = f->out[1];
      set_out(in, 0, f->in[0]), set_out(in, 1, f->in[1]);
      continue;
    }
    if (f->op == OP_HEAD_DL) {     /* its second output is the logits' gradient: the head's matmuls' */
      if (f->out[0] != g->loss) continue;
      int from = g->nbwd;
      bwd_matmul(f, f->out[1]);
      for (int k = from; k < g->nbwd; k++) {   /* a matmul's attributes, in a matmul's order */
        double tb = ir_get(g->bwd[k], "tb");
        drop_attr(g->bwd[k], "scale"), drop_attr(g->bwd[k], "tb");
        ir_set(g->bwd[k], "tb", tb);
      }
      continue;
    }
    if (f->op == OP_ALLREDUCE || f->op == OP_XENT_MAX || f->op == OP_XENT_STATS || f->op == OP_MOE_LOSS)
      continue;   /* in place, or not on the gradient's path (moe_route_bwd has moe_loss's) */
    Value *dy = f->out[0]->grad;
    if (!dy) continue;            /* does not reach the loss */
    if (f->op == OP_MATMUL)
      bwd_matmul(f, dy);
    else if (f->op >= OP_MOE_ROUTE && f->op <= OP_MOE_A2A_REV)
      bwd_moe(f, dy);
    else
      bwd_generic(f, bwd_op(f->op), dy);
  }
  reduce_partials();
  forward_sums();
}

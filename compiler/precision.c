/* precision.c: the dtype of every value, after autodiff. Under the train
 * setting `precision = bf16` (mixed precision, the plan docs/cuda.md
 * gives): parameters stay f32 masters, and the ops that multiply by a
 * weight (matmul, embed, the fused head, the experts; a fused bias too)
 * read its bf16 copy, one per stage that reads it: a value of its own
 * region (V_COPY) that lives for the run, made by a `cast` (g->casts) when
 * the weights are loaded and rewritten by each optimizer step as it
 * updates the master (the CPU backend's optimizer leaves that to the casts
 * before the next forward pass). Activations and their gradients are bf16; what must stay exact or
 * wide stays f32: norm and softmax statistics, cross-entropy's row
 * statistics, the MoE router (its logits from the f32 weight, and their
 * gradient: a rounded logit flips a token's expert), its gates, expert
 * ids, counts and positions, the loss and every parameter's gradient.
 * Under `fp32` (the default) every value is f32. Token ids are i32 either
 * way.
 *
 * The CUDA kernels store the bf16 values in bf16 (kernels.c types them,
 * sched.c plans their bytes); the CPU backend rounds each bf16 value when
 * it is written, so it is the bf16 run's reference. */
#include "lmc.h"
#include <string.h>

/* Whether output i of op is a statistic or an index (kept f32). */
static bool wide_output(int op, int i) {
  switch (op) {
  case OP_RMSNORM: case OP_LAYERNORM: case OP_ATTENTION: case OP_HEAD_XENT: return i > 0;
  case OP_XENT_MAX: case OP_XENT_STATS: case OP_MOE_ROUTE: case OP_MOE_LOSS: return true;
  case OP_MOE_DISPATCH: case OP_MOE_A2A: return i > 0;
  case OP_MOE_COMBINE_BWD: return i == 1;          /* the gates' gradient */
  case OP_MOE_ROUTE_BWD: return true;              /* the router's logits' gradient from f32 gates */
  default: return false;
  }
}

static Graph *G;

/* Ops that multiply by a parameter: they read its bf16 copy (the router
 * its f32 weight). */
static bool reads_copy(const Inst *in, int j) {
  if (in->in[j]->router) return false;
  switch (in->op) {
  case OP_MATMUL: case OP_MATMUL_BIAS: case OP_MATMUL_BIAS_GELU: case OP_MATMUL_DGELU: case OP_HEAD_XENT:
  case OP_HEAD_XENT_BWD: case OP_HEAD_DL:
    return true;
  case OP_EMBED: return j == 1;
  case OP_MOE_UP: case OP_MOE_UP_GELU: case OP_MOE_DOWN: case OP_MOE_UP_BWD: case OP_MOE_UP_GELU_BWD:
  case OP_MOE_DOWN_BWD: return true;
  default: return false;
  }
}

/* The bf16 copy of parameter p on `stage`, made on first need with its
 * cast (kept apart from the programs, in g->casts). */
static Value *copy_of(Value *p, int stage, Value **copies) {
  Value **c = &copies[p->id * G->nstages + stage];
  if (*c) return *c;
  int cur = G->cur_stage;
  G->cur_stage = stage;
  Inst *in = ir_inst(G, OP_CAST, false, ir_loc);
  G->cur_stage = cur;
  G->nfwd--;                         /* not a forward instruction */
  G->casts[G->ncasts++] = in;
  in->in[0] = p;
  in->out[0] = *c = ir_value(G, V_COPY, arena_printf("%s.bf16", p->name), p->shape);
  (*c)->def = in, (*c)->dtype = DT_BF16, (*c)->of = p, (*c)->stage = stage;
  ir_set(in, "n", shape_numel(&p->shape));
  return *c;
}

bool precision_bf16(const Graph *g) { return !strcmp(g->prog->s.precision, "bf16"); }

void precision_plan(Graph *g) {
  G = g;
  for (int i = 0; i < g->nvals; i++) g->vals[i]->dtype = g->vals[i]->is_int ? DT_I32 : DT_F32;
  if (!precision_bf16(g)) return;
  int nfwd = g->nfwd, nbwd = g->nbwd, total = nfwd + nbwd;
  for (int k = 0; k < total; k++) {   /* activations: bf16 unless a statistic; gradients as their values */
    Inst *in = k < nfwd ? g->fwd[k] : g->bwd[k - nfwd];
    if (k == nfwd)                    /* a router's logits (what moe_route reads) stay f32, and so their gradient */
      for (int f = 0; f < nfwd; f++)
        if (g->fwd[f]->op == OP_MOE_ROUTE) g->fwd[f]->in[0]->dtype = DT_F32;
    for (int i = 0; i < in->nout; i++) {
      Value *v = in->out[i];
      if (!v || v->kind != V_ACT || in->op == OP_ALLREDUCE) continue;   /* in place: as its producer made it */
      if (!in->bwd) v->dtype = wide_output(in->op, i) ? DT_F32 : DT_BF16;
      else v->dtype = wide_output(in->op, i) ? DT_F32 : v->of ? v->of->dtype : DT_BF16;
    }
  }
  Value **copies = arena_alloc(((size_t)g->nvals * g->nstages + 1) * sizeof(Value *));
  g->casts = arena_alloc(((size_t)g->nparams * g->nstages + 1) * sizeof(Inst *));
  for (int k = 0; k < total; k++) {   /* weights: through their bf16 copies */
    Inst *in = k < nfwd ? g->fwd[k] : g->bwd[k - nfwd];
    for (int j = 0; j < in->nin; j++)
      if (in->in[j]->kind == V_PARAM && reads_copy(in, j)) in->in[j] = copy_of(in->in[j], in->stage, copies);
  }
  for (int k = 0; k < g->nfwd; k++) g->fwd[k]->id = k;
  for (int k = 0; k < g->nbwd; k++) g->bwd[k]->id = g->nfwd + k;
}

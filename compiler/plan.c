/* plan.c: what a scheduled plan costs, for lmc --plan. In: a Sched of one
 * candidate layout. Out: per rank, the planned memory (exact: the same
 * plan the bundle would carry) and an estimate of the step time from a
 * simple model: the busiest stage's GEMM FLOPs at a given rate, stretched
 * by the pipeline bubble (m + p - 1) / m, plus the bytes each rank moves
 * (tp all-reduces, pipeline transfers, MoE's all-to-alls and the ep
 * all-reduce of the gradients but the experts') at a given bandwidth, ring
 * all-reduces counting 2 (n-1)/n of their size, plus what the dp gradient
 * all-reduce, overlapped with the last backward pass bucket by bucket,
 * outlasts that pass (sched_dp_tail).
 * MoE experts are costed at balanced routing: each rank's experts get
 * their share of the rows. */
#include "lmc.h"
#include <string.h>

double plan_inst_flops(Inst *in) {
  switch (in->op) {
  case OP_MATMUL: case OP_MATMUL_BGRAD: case OP_MATMUL_DGELU: return 2 * ir_get(in, "m") * ir_get(in, "n") * ir_get(in, "k");
  case OP_MATMUL_BIAS: case OP_MATMUL_BIAS_GELU:
    return 2 * ir_get(in, "m") * ir_get(in, "n") * ir_get(in, "k") + ir_get(in, "m") * ir_get(in, "n");
  case OP_HEAD_XENT: case OP_HEAD_DL: return 2 * ir_get(in, "m") * ir_get(in, "n") * ir_get(in, "k");
  case OP_HEAD_XENT_BWD: return 6 * ir_get(in, "m") * ir_get(in, "n") * ir_get(in, "k");
  case OP_MOE_UP: case OP_MOE_UP_GELU: case OP_MOE_DOWN:
  case OP_MOE_UP_BWD: case OP_MOE_UP_GELU_BWD: case OP_MOE_DOWN_BWD: {
    double rows = ir_get(in, "m") / (ir_get(in, "seg") / ir_get(in, "e"));   /* of the ep x N x k buffer, a share */
    double f = 2 * rows * ir_get(in, "n") * ir_get(in, "d");
    if (in->op == OP_MOE_UP || in->op == OP_MOE_UP_BWD) f *= 2;               /* gate and up */
    return in->op == OP_MOE_UP || in->op == OP_MOE_UP_GELU || in->op == OP_MOE_DOWN ? f : 2 * f;
  }
  case OP_ATTENTION:
  case OP_ATTENTION_BWD: {
    double f = 2 * ir_get(in, "b") * ir_get(in, "h") * ir_get(in, "t") * ir_get(in, "t") * ir_get(in, "k");
    return in->op == OP_ATTENTION ? 2 * f : 5 * f;
  }
  default: return 0;
  }
}

static double ring(double bytes, int64_t n) { return n > 1 ? bytes * 2.0 * (n - 1) / n : 0; }

void plan_cost(Sched *s, double flops_rate, double bandwidth, PlanCost *c) {
  Graph *g = s->g;
  Settings *t = &g->prog->s;
  int64_t m = t->microbatches, tp = t->mesh[AX_TP], dp = t->mesh[AX_DP], ep = t->mesh[AX_EP];
  memset(c, 0, sizeof *c);
  for (int st = 0; st < g->nstages; st++) {
    sched_stage(s, st);
    Part *p = s->part;
    double flops = 0, tp_bytes = 0, pp_bytes = 0, a2a_bytes = 0, expert_grads = 0;
    for (int k = 0; k < p->nfwd + p->nbwd; k++) {
      Inst *in = k < p->nfwd ? p->fwd[k] : p->bwd[k - p->nfwd];
      bool group = false;
      for (int i = 0; i < in->nattr; i++) group |= !strcmp(in->akey[i], "group");
      flops += plan_inst_flops(in);
      if (in->op == OP_ALLREDUCE && !group) tp_bytes += 4.0 * ir_get(in, "n");
      if (in->op == OP_MOE_A2A || in->op == OP_MOE_A2A_REV)   /* what leaves the rank */
        a2a_bytes += 4.0 * ir_get(in, "m") * ir_get(in, "d") * (ep - 1) / ep;
    }
    for (int i = 0; i < g->nparams; i++)
      if (g->params[i]->esplit && sched_has(s, g->params[i])) expert_grads += 4.0 * shape_numel(&g->params[i]->shape);
    Xfer *lists[] = {p->fsend, p->bsend};
    int counts[] = {p->nfsend, p->nbsend};
    for (int l = 0; l < 2; l++)
      for (int i = 0; i < counts[l]; i++) pp_bytes += 4.0 * shape_numel(&lists[l][i].v->shape);
    double bytes = m * (ring(tp_bytes, tp) + pp_bytes + a2a_bytes) + ring(4.0 * s->region[V_GRAD] - expert_grads, ep);
    double comm = bytes / bandwidth + sched_dp_tail(s, flops_rate, bandwidth);
    double mem = s->slots * (sched_act_bytes(s) + 4.0 * s->region[V_INPUT]) + sched_state_bytes(s);
    if (mem > c->memory) c->memory = mem;
    if (m * flops > c->flops) c->flops = m * flops;
    if (bytes + ring(4.0 * s->region[V_GRAD], dp) > c->bytes) c->bytes = bytes + ring(4.0 * s->region[V_GRAD], dp);
    if (comm > c->comm) c->comm = comm;
  }
  sched_stage(s, 0);
  double pp = (double)t->mesh[AX_PP];
  c->compute = c->flops / flops_rate;
  c->bubble = c->compute * (pp - 1) / m;
  c->time = c->compute + c->bubble + c->comm;
}

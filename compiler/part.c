/* part.c: pipeline partitioning. In: the forward and backward programs,
 * each instruction stamped with its stage by lower.c (layer i on stage
 * i / (L/pp), the embedding on the first, the head on the last) and
 * autodiff.c (a backward runs where its forward ran). Out: each stage's
 * instructions and the values that cross between stages: an activation
 * made on stage d and read on stage u is sent d -> u after the forward
 * pass, and its gradient, made on u, is sent back u -> d after the
 * backward pass. A parameter lives on every stage that uses it (tied
 * embeddings: the first and the last); the copies' gradients are summed
 * over the pipeline group, so the copies stay equal. */
#include "lmc.h"
#include <string.h>

static void param_stages(Graph *g) {
  if (g->nstages > 64)
    diag_fatal("pp-range", "pp = %d: at most 64 pipeline stages", g->nstages);
  for (int i = 0; i < g->nparams; i++) g->params[i]->stages = 0;
  for (int k = 0; k < g->nfwd; k++) {
    Inst *in = g->fwd[k];
    for (int j = 0; j < in->nin; j++) {
      Value *v = in->in[j]->kind == V_COPY ? in->in[j]->of : in->in[j];   /* read through its bf16 copy */
      if (v->kind == V_PARAM) v->stages |= (uint64_t)1 << in->stage;
    }
  }
  for (int i = 0; i < g->nparams; i++) {  /* unused: keep it on the first stage */
    Value *v = g->params[i];
    if (!v->stages) v->stages = 1;
    v->stage = __builtin_ctzll(v->stages);
  }
}

void part_stages(Graph *g) {
  param_stages(g);
}

static int def_stage(Value *v) {
  return v->def ? v->def->stage : -1;
}

static Xfer *add_xfer(Xfer *list, int *n, Value *v, int peer) {
  for (int i = 0; i < *n; i++)
    if (list[i].v == v && list[i].peer == peer) return list;
  Xfer *nl = arena_alloc((*n + 1) * sizeof(Xfer));
  if (*n) memcpy(nl, list, *n * sizeof(Xfer));
  nl[(*n)++] = (Xfer){v, peer};
  return nl;
}

/* A pipeline hands each activation on to one later stage. A value read on
 * two later stages (a layer stack that reads what came before it without
 * carrying it: `y = f(x)` in every layer, never `x = ...`) is an error at
 * the second read. */
static void check_fanout(Graph *g) {
  int *to = arena_alloc((g->nvals + 1) * sizeof *to);
  for (int k = 0; k < g->nfwd; k++) {
    Inst *in = g->fwd[k];
    for (int j = 0; j < in->nin; j++) {
      Value *v = in->in[j];
      int d = def_stage(v);
      if (v->kind != V_ACT || d < 0 || d >= in->stage) continue;
      if (to[v->id] && to[v->id] != in->stage + 1)
        diag_error(in->loc, "pp-fanout", "a value made on pipeline stage %d is read here on stage %d and also on stage "
                   "%d; a pipeline passes a value to one later stage: carry it through the layers (x = ...)",
                   d, in->stage, to[v->id] - 1);
      to[v->id] = in->stage + 1;
    }
  }
}

/* Activations read by a forward instruction of another stage. */
static void find_crossings(Graph *g, Part *p) {
  check_fanout(g);
  for (int k = 0; k < g->nfwd; k++) {
    Inst *in = g->fwd[k];
    for (int j = 0; j < in->nin; j++) {
      Value *v = in->in[j];
      int d = def_stage(v);
      if (v->kind != V_ACT || d < 0 || d == in->stage) continue;
      if (in->stage < d)
        internal_error("a stage reads an activation of a later stage");
      if (d == p->stage) {
        p->fsend = add_xfer(p->fsend, &p->nfsend, v, in->stage);
        if (v->grad) p->brecv = add_xfer(p->brecv, &p->nbrecv, v->grad, in->stage);
      }
      if (in->stage == p->stage) {
        p->frecv = add_xfer(p->frecv, &p->nfrecv, v, d);
        if (v->grad) p->bsend = add_xfer(p->bsend, &p->nbsend, v->grad, d);
      }
    }
  }
  for (int i = 0; i < p->nbrecv; i++)     /* one consumer stage per gradient */
    for (int j = i + 1; j < p->nbrecv; j++)
      if (p->brecv[i].v == p->brecv[j].v)
        internal_error("an activation read on more than one later stage");
}

static Inst **select(Inst **list, int n, int stage, int *count) {
  Inst **out = arena_alloc((n + 1) * sizeof(Inst *));
  *count = 0;
  for (int i = 0; i < n; i++)
    if (list[i]->stage == stage) out[(*count)++] = list[i];
  return out;
}

Part *part_stage(Graph *g, int stage) {
  Part *p = arena_alloc(sizeof(Part));
  p->stage = stage;
  p->fwd = select(g->fwd, g->nfwd, stage, &p->nfwd);
  p->bwd = select(g->bwd, g->nbwd, stage, &p->nbwd);
  p->casts = select(g->casts, g->ncasts, stage, &p->ncasts);
  find_crossings(g, p);
  return p;
}

static void dump_xfers(FILE *out, const char *what, Xfer *x, int n, const char *dir) {
  for (int i = 0; i < n; i++)
    fprintf(out, "  %s %%%d %s stage %d\n", what, x[i].v->id, dir, x[i].peer);
}

void part_dump(FILE *out, Graph *g) {
  fprintf(out, "// part\n");
  for (int s = 0; s < g->nstages; s++) {
    Part *p = part_stage(g, s);
    fprintf(out, "stage %d: %d forward, %d backward instructions; params", s, p->nfwd, p->nbwd);
    for (int i = 0; i < g->nparams; i++)
      if (g->params[i]->stage == s) fprintf(out, " %s", g->params[i]->name);
    fprintf(out, "\n");
    dump_xfers(out, "send activation", p->fsend, p->nfsend, "to");
    dump_xfers(out, "recv activation", p->frecv, p->nfrecv, "from");
    dump_xfers(out, "send gradient", p->bsend, p->nbsend, "to");
    dump_xfers(out, "recv gradient", p->brecv, p->nbrecv, "from");
  }
}

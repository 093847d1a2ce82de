/* sched.c: the per-rank schedule and its static memory plan. In: the
 * forward and backward programs. Out: every value's region and offset.
 * Parameters, gradients, inputs and the loss live for the whole run in
 * their own regions; activations share one arena whose offsets come from
 * live ranges over the instruction order (fwd then bwd): a value lives
 * from the instruction that first writes it to the last one that reads
 * it, and its space is reused afterwards (best fit, else the top). The
 * arena's top is the planned activation peak. Offsets count elements, so
 * the same plan serves f32 and f64 runs. */
#include "lmc.h"
#include <string.h>

#define ALIGN 16

typedef struct Live {
  int64_t off, size;
  int last;
} Live;

static Inst *inst_at(Graph *g, int k) {
  return k < g->nfwd ? g->fwd[k] : g->bwd[k - g->nfwd];
}

static void live_ranges(Graph *g) {
  for (int i = 0; i < g->nvals; i++)
    g->vals[i]->first = g->vals[i]->last = -1;
  int total = g->nfwd + g->nbwd;
  for (int k = 0; k < total; k++) {
    Inst *in = inst_at(g, k);
    for (int i = 0; i < in->nout; i++)
      if (in->out[i]) {
        Value *v = in->out[i];
        if (v->first < 0) v->first = k;
        v->last = k;
      }
    for (int i = 0; i < in->nin; i++)
      if (in->in[i]) in->in[i]->last = k;
  }
}

static int64_t aligned(int64_t n) { return (n + ALIGN - 1) / ALIGN * ALIGN; }

/* Best-fit placement among the gaps between live blocks sorted by offset. */
static int64_t place(Live *live, int nlive, int64_t size) {
  int64_t best = -1, best_gap = INT64_MAX, cur = 0;
  for (int i = 0; i <= nlive; i++) {
    int64_t end = i < nlive ? live[i].off : INT64_MAX;
    int64_t gap = end - cur;
    if (gap >= size && (best < 0 || gap < best_gap)) best = cur, best_gap = gap;
    if (i < nlive) cur = live[i].off + live[i].size;
  }
  return best;
}

static int insert_live(Live *live, int nlive, Live b) {
  int i = nlive;
  while (i > 0 && live[i - 1].off > b.off) {
    live[i] = live[i - 1];
    i--;
  }
  live[i] = b;
  return nlive + 1;
}

static void plan_acts(Sched *s) {
  Graph *g = s->g;
  Live *live = arena_alloc((g->nvals + 1) * sizeof(Live));
  int nlive = 0, total = g->nfwd + g->nbwd;
  int64_t top = 0;
  for (int k = 0; k < total; k++) {
    int j = 0;                   /* free what is dead before k */
    for (int i = 0; i < nlive; i++)
      if (live[i].last >= k) live[j++] = live[i];
    nlive = j;
    Inst *in = inst_at(g, k);
    for (int i = 0; i < in->nout; i++) {
      Value *v = in->out[i];
      if (!v || v->kind != V_ACT || v->first != k) continue;
      int64_t size = aligned(shape_numel(&v->shape));
      v->offset = place(live, nlive, size);
      nlive = insert_live(live, nlive, (Live){v->offset, size, v->last});
      if (v->offset + size > top) top = v->offset + size;
    }
  }
  s->region[V_ACT] = top;
  s->peak_act = top;
}

/* Ranks are numbered with tp fastest, then pp, then dp, then ep:
 * rank = tp + TP * (pp + PP * (dp + DP * ep)). */
void sched_set_rank(Sched *s, int rank) {
  int64_t *m = s->g->prog->s.mesh;
  s->rank = rank;
  s->coord[AX_TP] = rank % m[AX_TP];
  s->coord[AX_PP] = rank / m[AX_TP] % m[AX_PP];
  s->coord[AX_DP] = rank / (m[AX_TP] * m[AX_PP]) % m[AX_DP];
  s->coord[AX_EP] = rank / (m[AX_TP] * m[AX_PP] * m[AX_DP]);
}

Sched *sched_plan(Graph *g) {
  Sched *s = arena_alloc(sizeof(Sched));
  s->g = g, s->world = 1;
  for (int a = 0; a < MAX_AXES; a++) s->world *= g->prog->s.mesh[a];
  sched_set_rank(s, 0);
  live_ranges(g);
  for (int i = 0; i < g->nvals; i++) {   /* a gradient sits where its param does */
    Value *v = g->vals[i];
    if (v->kind == V_ACT || v->kind == V_GRAD) continue;
    v->offset = s->region[v->kind];
    s->region[v->kind] += aligned(shape_numel(&v->shape));
  }
  for (int i = 0; i < g->nvals; i++)
    if (g->vals[i]->kind == V_GRAD) g->vals[i]->offset = g->vals[i]->of->offset;
  s->region[V_GRAD] = s->region[V_PARAM];
  plan_acts(s);
  return s;
}

void sched_dump(FILE *out, Sched *s) {
  emit_schedule(out, s);
}

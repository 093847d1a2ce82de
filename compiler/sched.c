/* sched.c: per-rank schedules and their static memory plan.
 *
 * Memory: parameters, gradients, inputs and the loss live for the whole
 * run in their own regions; activations share one arena whose offsets come
 * from live ranges over the stage's instructions (fwd then bwd): a value
 * lives from the instruction that first writes it to the last that reads
 * it (values sent to or received from other stages are pinned wider), and
 * its space is reused afterwards (best fit, else the top). A rank keeps
 * `slots` copies of the arena, one per microbatch in flight: GPipe holds
 * all m, 1F1B at most pp - stage. Offsets count elements, so one plan
 * serves f32 and f64 runs.
 *
 * Actions: the step is zero_grads, the microbatches' forward and backward
 * passes in GPipe or 1F1B order with their sends and receives, the data
 * parallel gradient all-reduce (bucketed), the loss all-reduces, and the
 * optimizer. sched_check() runs every rank's list against the others and
 * rejects unmatched transfers, mismatched collectives and deadlocks. */
#include "lmc.h"
#include <string.h>

#define ALIGN 16

/* ---- ranks ---- */

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

static int rank_of(Graph *g, const int *coord) {
  int64_t *m = g->prog->s.mesh;
  return (int)(coord[AX_TP] + m[AX_TP] * (coord[AX_PP] + m[AX_PP] * (coord[AX_DP] + m[AX_DP] * coord[AX_EP])));
}

/* ---- memory ---- */

typedef struct Live {
  int64_t off, size;
  int last;
} Live;

static int64_t aligned(int64_t n) { return (n + ALIGN - 1) / ALIGN * ALIGN; }

static Inst *inst_at(Part *p, int k) { return k < p->nfwd ? p->fwd[k] : p->bwd[k - p->nfwd]; }

static void touch(Value *v, int k) {
  if (v->first < 0 || k < v->first) v->first = k;
  if (k > v->last) v->last = k;
}

static void live_ranges(Graph *g, Part *p) {
  for (int i = 0; i < g->nvals; i++) g->vals[i]->first = g->vals[i]->last = -1;
  int total = p->nfwd + p->nbwd;
  for (int k = 0; k < total; k++) {
    Inst *in = inst_at(p, k);
    for (int i = 0; i < in->nout; i++)
      if (in->out[i]) touch(in->out[i], k);
    for (int i = 0; i < in->nin; i++) touch(in->in[i], k);
  }
  /* transfers: received values exist from the start of their pass, sent
   * ones until the end of the step (sends complete asynchronously) */
  for (int i = 0; i < p->nfrecv; i++) touch(p->frecv[i].v, 0);
  for (int i = 0; i < p->nfsend; i++) touch(p->fsend[i].v, total - 1);
  for (int i = 0; i < p->nbrecv; i++) touch(p->brecv[i].v, p->nfwd), touch(p->brecv[i].v, total - 1);
  for (int i = 0; i < p->nbsend; i++) touch(p->bsend[i].v, total - 1);
  /* a weight's gradient GEMM runs on the CUDA backend's second stream,
   * beside the ops after it (runtime/exec.c): its operands live on until
   * the next one starts, so that those ops do not write over them (the
   * runtime would wait for it before such an op, and nothing would run
   * beside it) */
  for (int k = total - 1, next = total - 1; k >= p->nfwd; k--) {
    Inst *in = inst_at(p, k);
    if ((in->op != OP_MATMUL && in->op != OP_MATMUL_BGRAD) || !in->out[0] || in->out[0]->kind != V_GRAD) continue;
    for (int i = 0; i < in->nin; i++) touch(in->in[i], next);
    next = k;
  }
  /* a group's generated kernel reads and writes at once: what its members
   * touch lives from the first to the last (group.c) */
  Inst **lists[] = {p->fwd, p->bwd};
  int counts[] = {p->nfwd, p->nbwd}, base[] = {0, p->nfwd};
  for (int l = 0; l < 2; l++)
    for (int i = 0, span; i < counts[l]; i += span) {
      span = group_span(g, lists[l], counts[l], i);
      for (int m = i; span > 1 && m < i + span; m++) {
        Inst *in = lists[l][m];
        for (int j = 0; j < in->nout + in->nin; j++) {
          Value *v = j < in->nout ? in->out[j] : in->in[j - in->nout];
          if (v) touch(v, base[l] + i), touch(v, base[l] + i + span - 1);
        }
      }
    }
}

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

/* Places the activations by live range: in elements (bytes 0: every value
 * a real of the backend's width, as fp32 storage keeps them), or in bytes
 * at each value's dtype's size (bf16 storage); returns the arena's top. */
static int64_t plan_acts(Sched *s, bool bytes) {
  Graph *g = s->g;
  Live *live = arena_alloc((g->nvals + 1) * sizeof(Live));
  int nlive = 0, total = s->part->nfwd + s->part->nbwd;
  int64_t top = 0;
  for (int k = 0; k < total; k++) {
    int j = 0;                   /* free what is dead before k */
    for (int i = 0; i < nlive; i++)
      if (live[i].last >= k) live[j++] = live[i];
    nlive = j;
    for (int i = 0; i < g->nvals; i++) {   /* then place what starts at k */
      Value *v = g->vals[i];
      if (v->kind != V_ACT || v->first != k) continue;
      int64_t n = shape_numel(&v->shape), size = bytes ? aligned(n * (v->dtype == DT_BF16 ? 2 : 4)) : aligned(n);
      int64_t at = place(live, nlive, size);
      *(bytes ? &v->boffset : &v->offset) = at;
      nlive = insert_live(live, nlive, (Live){at, size, v->last});
      if (at + size > top) top = at + size;
    }
  }
  return top;
}

static bool param_here(Sched *s, Value *v) {
  Value *p = v->kind == V_GRAD ? v->of : v;
  return p->stages >> s->part->stage & 1;
}

/* One slot's activations in bytes: the byte plan under bf16 storage, else
 * 4-byte reals. */
double sched_act_bytes(Sched *s) { return s->act_bytes ? (double)s->act_bytes : 4.0 * s->peak_act; }

/* What lives for the whole run, in bytes: weights, gradients and Adam's
 * two moments in fp32, the weights' bf16 copies. */
double sched_state_bytes(Sched *s) { return 16.0 * s->region[V_PARAM] + 2.0 * s->region[V_COPY]; }

/* Whether value v appears in this stage's schedule. */
bool sched_has(Sched *s, Value *v) {
  if (v->kind == V_PARAM || v->kind == V_GRAD) return param_here(s, v);
  if (v->kind == V_ACT) return v->first >= 0;
  if (v->kind == V_COPY) return v->stage == s->part->stage;
  return true;                   /* inputs and the loss: every stage */
}

static void plan_regions(Sched *s) {
  Graph *g = s->g;
  for (int r = V_PARAM; r < NUM_KINDS; r++) s->region[r] = 0;
  for (int i = 0; i < g->nvals; i++) {   /* a gradient sits where its param does */
    Value *v = g->vals[i];
    if (v->kind == V_ACT || v->kind == V_GRAD || !sched_has(s, v)) continue;
    v->offset = s->region[v->kind];
    s->region[v->kind] += aligned(shape_numel(&v->shape));
  }
  for (int i = 0; i < g->nvals; i++)
    if (g->vals[i]->kind == V_GRAD) g->vals[i]->offset = g->vals[i]->of->offset;
  s->region[V_GRAD] = s->region[V_PARAM];
}

void sched_stage(Sched *s, int stage) {
  Settings *t = &s->g->prog->s;
  s->part = part_stage(s->g, stage);
  live_ranges(s->g, s->part);
  plan_regions(s);
  s->region[V_ACT] = s->peak_act = plan_acts(s, false);
  s->act_bytes = precision_bf16(s->g) ? plan_acts(s, true) : 0;
  int64_t inflight = !strcmp(t->schedule, "gpipe") ? t->microbatches : t->mesh[AX_PP] - stage;
  s->slots = (int)(inflight < t->microbatches ? inflight : t->microbatches);
  if (t->mesh[AX_PP] == 1) s->slots = 1;   /* one microbatch at a time */
}

Sched *sched_plan(Graph *g) {
  Sched *s = arena_alloc(sizeof(Sched));
  s->g = g, s->world = 1;
  for (int a = 0; a < MAX_AXES; a++) s->world *= g->prog->s.mesh[a];
  part_stages(g);
  sched_set_rank(s, 0);
  sched_stage(s, 0);
  return s;
}

/* ---- actions ---- */

typedef struct List {
  Action *a;
  int n, cap;
} List;

static Action *push(List *l, int kind) {
  if (l->n == l->cap) {
    l->cap = l->cap ? 2 * l->cap : 64;
    Action *na = arena_alloc(l->cap * sizeof(Action));
    if (l->n) memcpy(na, l->a, l->n * sizeof(Action));
    l->a = na;
  }
  Action *a = &l->a[l->n++];
  memset(a, 0, sizeof *a);
  a->kind = kind;
  return a;
}

static void xfers(List *l, int kind, Xfer *x, int n, int mb, bool grad) {
  for (int i = 0; i < n; i++) {
    Action *a = push(l, kind);
    a->v = x[i].v, a->peer = x[i].peer, a->mb = mb, a->grad = grad, a->axis = AX_PP;
  }
}

static void forward(List *l, Part *p, int mb) {
  push(l, ACT_LOAD)->mb = mb;
  xfers(l, ACT_RECV, p->frecv, p->nfrecv, mb, false);
  push(l, ACT_FWD)->mb = mb;
  xfers(l, ACT_SEND, p->fsend, p->nfsend, mb, false);
}

static void backward(List *l, Part *p, int mb) {
  xfers(l, ACT_RECV, p->brecv, p->nbrecv, mb, true);
  push(l, ACT_BWD)->mb = mb;
  xfers(l, ACT_SEND, p->bsend, p->nbsend, mb, true);
}

static void allreduce(List *l, int region, int64_t off, int64_t n, int axis) {
  Action *a = push(l, ACT_ALLREDUCE);
  a->region = region, a->off = off, a->n = n, a->axis = axis;
}

/* GPipe: every forward, then every backward. 1F1B: pp - stage - 1
 * forwards to fill the pipe, then one forward and one backward in turn,
 * then the remaining backwards. */
static void passes(List *l, Sched *s) {
  Settings *t = &s->g->prog->s;
  int m = (int)t->microbatches, stage = s->part->stage;
  if (!strcmp(t->schedule, "gpipe") || t->mesh[AX_PP] == 1) {
    if (t->mesh[AX_PP] == 1) {   /* one rank per model: accumulate in turn */
      for (int mb = 0; mb < m; mb++) forward(l, s->part, mb), backward(l, s->part, mb);
      return;
    }
    for (int mb = 0; mb < m; mb++) forward(l, s->part, mb);
    for (int mb = 0; mb < m; mb++) backward(l, s->part, mb);
    return;
  }
  int warm = (int)t->mesh[AX_PP] - stage - 1;
  if (warm > m) warm = m;
  for (int mb = 0; mb < warm; mb++) forward(l, s->part, mb);
  for (int i = 0; i < m - warm; i++) forward(l, s->part, warm + i), backward(l, s->part, i);
  for (int mb = m - warm; mb < m; mb++) backward(l, s->part, mb);
}

/* A parameter held by several stages (tied embeddings) gets the sum of its
 * copies' gradients on each: every rank of the pipeline group joins, those
 * without a copy with zeros. */
static void shared_grads(List *l, Sched *s) {
  Graph *g = s->g;
  for (int i = 0; i < g->nparams; i++) {
    Value *p = g->params[i];
    if (__builtin_popcountll(p->stages) < 2 || !p->grad) continue;
    allreduce(l, V_GRAD, p->offset, shape_numel(&p->shape), AX_PP);
    l->a[l->n - 1].zeros = !(p->stages >> s->part->stage & 1);
  }
}

/* The loss and MoE's metrics (the state region up to its last value) are
 * summed over the stages and the data parallel ranks. */
static void loss_allreduce(List *l, Sched *s) {
  Settings *t = &s->g->prog->s;
  int64_t n = 1;
  for (int i = 0; i < s->g->nvals; i++) {
    Value *v = s->g->vals[i];
    if (v->kind == V_STATE && v->offset + shape_numel(&v->shape) > n) n = v->offset + shape_numel(&v->shape);
  }
  if (t->mesh[AX_PP] > 1) allreduce(l, V_STATE, 0, n, AX_PP);
  if (t->mesh[AX_DP] > 1) allreduce(l, V_STATE, 0, n, AX_DP);
  if (t->mesh[AX_EP] > 1) allreduce(l, V_STATE, 0, n, AX_EP);
}

/* Gradient all-reduces over axis of [off, off + n) of the gradient
 * region, in buckets. */
#define MAX_BUCKETS 4096   /* a stage's gradient buckets: each an all-reduce and maybe a segment */

static int64_t bucket(Sched *s) {   /* in elements of 4 bytes, at least 16 */
  double n = s->g->prog->s.bucket_mb * (1 << 18);
  return n < 16 ? 16 : n > 1e15 ? (int64_t)1e15 : (int64_t)n;
}

static void grad_buckets(List *l, Sched *s, int64_t off, int64_t n, int axis) {
  int64_t size = bucket(s);
  for (int64_t o = off; o < off + n; o += size) allreduce(l, V_GRAD, o, off + n - o < size ? off + n - o : size, axis);
}

/* ep ranks are data parallel for all but the experts: the gradients of
 * the other parameters are summed over ep too, run by run of neighbours
 * (plan_regions lays the parameters out in value order). */
static void ep_grads(List *l, Sched *s) {
  Graph *g = s->g;
  int64_t start = -1, end = -1;
  for (int i = 0; i < g->nvals; i++) {
    Value *p = g->vals[i];
    if (p->kind != V_PARAM || !sched_has(s, p)) continue;
    if (p->esplit) {                 /* an expert's: summed over dp only */
      if (start >= 0) grad_buckets(l, s, start, end - start, AX_EP), start = -1;
      continue;
    }
    if (start < 0) start = p->offset;
    end = p->offset + shape_numel(&p->shape);
  }
  if (start >= 0) grad_buckets(l, s, start, end - start, AX_EP);
}

/* The stage's backward program as the bundle holds it: groups as one
 * instruction each (a segment's bounds count these). */
static Inst **bwd_program(Sched *s, int *n) { return group_list(s->g, s->part->bwd, s->part->nbwd, n); }

/* bucket b's ready point: after the last instruction of the backward
 * program that reads or writes a gradient in it */
static void touch_grads(Inst *in, int k, int *ready, int nb, int64_t size) {
  for (int j = 0; j < in->nout + in->nin; j++) {
    Value *v = j < in->nout ? in->out[j] : in->in[j - in->nout];
    if (!v || v->kind != V_GRAD) continue;
    int64_t end = v->offset + shape_numel(&v->shape);
    for (int64_t b = v->offset / size; b < nb && b * size < end; b++) ready[b] = k + 1;
  }
  for (int m = 0; m < in->nbody; m++) touch_grads(in->body[m], k, ready, nb, size);
}

static Action *segment(List *l, int mb, int from, int to, int n) {
  Action *a = push(l, ACT_BWD);
  a->mb = mb;
  if (from > 0 || to < n) a->from = from, a->to = to;
  return a;
}


/* The gradient buckets of this stage in the order they are ready in its
 * backward program (prog, n instructions): ready[b] is the instruction
 * count after which bucket b is final, order the buckets by it (the top
 * of the model's first among equals). Returns the number of buckets. */
static int bucket_order(Sched *s, Inst ***prog, int *n, int **ready, int **order) {
  int64_t count = (s->region[V_GRAD] + bucket(s) - 1) / bucket(s);
  if (count > MAX_BUCKETS)
    diag_fatal("sched-buckets", "bucket_mb = %g cuts stage %d's %lld gradients into %lld buckets, over %d: raise it",
               s->g->prog->s.bucket_mb, s->part->stage, (long long)s->region[V_GRAD], (long long)count, MAX_BUCKETS);
  int nb = (int)count;
  *prog = bwd_program(s, n);
  *ready = arena_alloc((nb + 1) * sizeof(int)), *order = arena_alloc((nb + 1) * sizeof(int));
  for (int k = 0; k < *n; k++) touch_grads((*prog)[k], k, *ready, nb, bucket(s));
  for (int b = 0; b < nb; b++) (*order)[b] = nb - 1 - b;
  for (int i = 1; i < nb; i++)
    for (int j = i; j > 0 && (*ready)[(*order)[j - 1]] > (*ready)[(*order)[j]]; j--) {
      int x = (*order)[j];
      (*order)[j] = (*order)[j - 1], (*order)[j - 1] = x;
    }
  return nb;
}

static int64_t bucket_size(Sched *s, int b) {
  int64_t o = (int64_t)b * bucket(s);
  return s->region[V_GRAD] - o < bucket(s) ? s->region[V_GRAD] - o : bucket(s);
}

static void async_bucket(List *l, Sched *s, int b) {
  allreduce(l, V_GRAD, (int64_t)b * bucket(s), bucket_size(s, b), AX_DP);
  l->a[l->n - 1].async = true;
}

/* For the cost model: the seconds the dp all-reduce of this stage's
 * gradients outlasts its last backward pass (at flops FLOP/s), each
 * bucket a ring all-reduce at bw bytes/s started when it is ready and
 * the one before it is done. */
double sched_dp_tail(Sched *s, double flops, double bw) {
  int64_t dp = s->g->prog->s.mesh[AX_DP];
  int n, *ready, *order;
  Inst **prog;
  if (dp < 2) return 0;
  int nb = bucket_order(s, &prog, &n, &ready, &order);
  if (nb == 0) return 0;
  double *at = arena_alloc((n + 1) * sizeof(double));   /* seconds into the pass after k instructions */
  for (int k = 0; k < n; k++) at[k + 1] = at[k] + plan_inst_flops(prog[k]) / flops;
  double t = 0;
  for (int i = 0; i < nb; i++) {
    double start = at[ready[order[i]]] > t ? at[ready[order[i]]] : t;
    t = start + 4.0 * bucket_size(s, order[i]) * 2.0 * (dp - 1) / dp / bw;
  }
  return t > at[n] ? t - at[n] : 0;
}

/* The data parallel gradient all-reduce overlapped with the step's last
 * backward pass: that pass is cut into segments, and each bucket goes,
 * asynchronously, as soon as the last instruction touching its gradients
 * has run (the top of the model's first, as the backward runs); buckets
 * finished only at the end go after the pass's sends. A wait ends them. */
static void overlapped_grads(List *l, Sched *s) {
  int last = -1, n, *ready, *order;
  Inst **prog;
  for (int i = 0; i < l->n; i++)
    if (l->a[i].kind == ACT_BWD) last = i;
  int nb = bucket_order(s, &prog, &n, &ready, &order);
  if (last < 0 || nb == 0) return;
  List out = {0};
  int mb = l->a[last].mb, pos = 0, b = 0;
  for (int i = 0; i < last; i++) *push(&out, l->a[i].kind) = l->a[i];
  for (; b < nb && ready[order[b]] < n; b++) {
    if (ready[order[b]] > pos) segment(&out, mb, pos, ready[order[b]], n), pos = ready[order[b]];
    async_bucket(&out, s, order[b]);
  }
  if (pos < n || n == 0) segment(&out, mb, pos, n, n);
  for (int i = last + 1; i < l->n; i++) *push(&out, l->a[i].kind) = l->a[i];
  for (; b < nb; b++) async_bucket(&out, s, order[b]);
  push(&out, ACT_WAIT)->axis = AX_DP;
  *l = out;
}

void sched_actions(Sched *s) {
  Settings *t = &s->g->prog->s;
  List step = {0}, eval = {0};
  push(&step, ACT_ZERO_GRADS);
  passes(&step, s);
  if (t->mesh[AX_DP] > 1) overlapped_grads(&step, s);
  shared_grads(&step, s);
  if (t->mesh[AX_EP] > 1) ep_grads(&step, s);
  loss_allreduce(&step, s);
  Action *opt = push(&step, ACT_OPTIMIZER);
  opt->norm_tp = t->mesh[AX_TP] > 1, opt->norm_pp = t->mesh[AX_PP] > 1, opt->norm_ep = t->mesh[AX_EP] > 1;
  opt->axis = opt->norm_tp || opt->norm_pp || opt->norm_ep ? MAX_AXES : -1;   /* a collective over one replica */
  push(&eval, ACT_ZERO_STATE);
  for (int mb = 0; mb < t->microbatches; mb++) forward(&eval, s->part, mb);
  loss_allreduce(&eval, s);
  s->step = step.a, s->nstep = step.n, s->eval = eval.a, s->neval = eval.n;
}

/* ---- the static check ---- */

typedef struct Msg {
  int src, dst, vid, mb;
  bool grad;
  int count;
} Msg;

typedef struct RankRun {
  Action *a;
  int n, pc;
  int coord[MAX_AXES];
} RankRun;

static Msg *find_msg(Msg *m, int n, int src, int dst, const Action *a) {
  for (int i = 0; i < n; i++)
    if (m[i].src == src && m[i].dst == dst && m[i].vid == a->v->id && m[i].mb == a->mb &&
        m[i].grad == a->grad)
      return &m[i];
  return NULL;
}

static int peer_rank(Graph *g, RankRun *r, const Action *a) {
  int c[MAX_AXES];
  memcpy(c, r->coord, sizeof c);
  c[AX_PP] = a->peer;
  return rank_of(g, c);
}

/* The group of a collective: the ranks that differ only on its axis; for
 * the optimizer's norm (axis MAX_AXES), the ranks of one model replica,
 * which agree on dp (ep ranks hold different experts of one replica). */
static bool same_group(RankRun *a, RankRun *b, int axis, int kind) {
  if (kind == ACT_OPTIMIZER)   /* ep ranks hold different experts: one replica spans them */
    return a->coord[AX_DP] == b->coord[AX_DP];
  for (int x = 0; x < MAX_AXES; x++)
    if (x != axis && a->coord[x] != b->coord[x]) return false;
  return true;
}

static const char *kind_name(int k) {
  static const char *n[] = {"zero_grads", "zero_state", "load", "recv", "run fwd", "send",
                            "run bwd", "allreduce", "optimizer", "wait"};
  return n[k];
}

static const char *coll_name(const Action *a) {
  return a->kind == ACT_ALLREDUCE && a->region == -2 ? "all-to-all" : kind_name(a->kind);
}

/* Try to finish the collective that rank r waits at: every member of its
 * group must wait at the same one. */
static bool collective(RankRun *runs, int world, int r) {
  Action *a = &runs[r].a[runs[r].pc];
  int axis = a->axis;
  if (a->kind == ACT_OPTIMIZER && axis < 0) return true;
  for (int q = 0; q < world; q++) {
    if (!same_group(&runs[r], &runs[q], axis, a->kind)) continue;
    if (runs[q].pc >= runs[q].n) return false;
    Action *b = &runs[q].a[runs[q].pc];
    if (b->kind != ACT_ALLREDUCE && b->kind != ACT_OPTIMIZER) return false;
    if (b->axis != a->axis) return false;            /* still on another group's */
    if (b->kind != a->kind || b->region != a->region || b->n != a->n)
      diag_fatal("sched-collective", "ranks %d and %d issue different collectives on their %s group: "
                 "%s n=%lld vs %s n=%lld", r, q, axis < MAX_AXES ? axis_names[axis] : "replica", coll_name(a),
                 (long long)a->n, coll_name(b), (long long)b->n);
  }
  return true;
}

static void advance_group(RankRun *runs, int world, int r) {
  Action *a = &runs[r].a[runs[r].pc];
  if (a->kind == ACT_OPTIMIZER && a->axis < 0) { runs[r].pc++; return; }
  RankRun me = runs[r];
  for (int q = 0; q < world; q++)
    if (same_group(&me, &runs[q], a->axis, a->kind)) runs[q].pc++;
}

static Sched *world_sched(Graph *g) {
  Sched *s = arena_alloc(sizeof(Sched));
  s->g = g, s->world = 1;
  for (int a = 0; a < MAX_AXES; a++) s->world *= g->prog->s.mesh[a];
  return s;
}

/* The collectives inside a program, in order, as actions for the check:
 * all-reduces over their group (region -1) and MoE's all-to-alls over ep
 * (region -2), each to be met by every rank of its group. */
static void program_collectives(List *l, Inst **prog, int n) {
  for (int k = 0; k < n; k++) {
    Inst *in = prog[k];
    bool a2a = in->op == OP_MOE_A2A || in->op == OP_MOE_A2A_REV;
    if (in->op != OP_ALLREDUCE && !a2a) continue;
    Action *c = push(l, ACT_ALLREDUCE);
    c->region = a2a ? -2 : -1, c->axis = AX_TP;
    c->n = a2a ? (int64_t)ir_get(in, "m") : (int64_t)ir_get(in, "n");
    for (int i = 0; i < in->nattr; i++)
      if (!strcmp(in->akey[i], "group")) c->axis = (int)in->aval[i];
    if (a2a) c->axis = AX_EP;
  }
}

/* Rank r's step actions into runs[r], each run of a program followed by
 * the collectives inside it; s is left on r's stage. */
static void rank_run(Sched *s, RankRun *runs, int r) {
  sched_set_rank(s, r);
  sched_stage(s, s->coord[AX_PP]);
  sched_actions(s);
  List l = {0};
  int nbwd;
  Inst **bwd = bwd_program(s, &nbwd);
  for (int i = 0; i < s->nstep; i++) {
    Action *a = &s->step[i];
    *push(&l, a->kind) = *a;
    if (a->kind == ACT_FWD) program_collectives(&l, s->part->fwd, s->part->nfwd);
    if (a->kind == ACT_BWD) program_collectives(&l, bwd + a->from, (a->to ? a->to : nbwd) - a->from);
  }
  runs[r] = (RankRun){l.a, l.n, 0, {0}};
  memcpy(runs[r].coord, s->coord, sizeof s->coord);
}

/* The k-th transfer of a kind (activation or gradient) from rank src to
 * rank dst in src's list (send) or dst's (receive), or NULL. */
static Action *nth_transfer(Graph *g, RankRun *runs, int me, int kind, int other, bool grad, int k) {
  for (int i = 0; i < runs[me].n; i++) {
    Action *a = &runs[me].a[i];
    if (a->kind == kind && a->grad == grad && peer_rank(g, &runs[me], a) == other && k-- == 0) return a;
  }
  return NULL;
}

/* NCCL matches the transfers between two ranks in the order they are
 * issued, activations and gradients each on a communicator of their own:
 * each pair's receives must come in the order of its sends. */
static void in_order(Graph *g, RankRun *runs, int src) {
  for (int i = 0; i < runs[src].n; i++) {
    Action *a = &runs[src].a[i];
    if (a->kind != ACT_SEND) continue;
    int dst = peer_rank(g, &runs[src], a), k = 0;
    for (int j = 0; j < i; j++) {
      Action *b = &runs[src].a[j];
      k += b->kind == ACT_SEND && b->grad == a->grad && peer_rank(g, &runs[src], b) == dst;
    }
    Action *r = nth_transfer(g, runs, dst, ACT_RECV, src, a->grad, k);
    if (r && (r->v != a->v || r->mb != a->mb))
      diag_fatal("sched-order", "rank %d sends %%%d (mb %d) to rank %d as its transfer %d there, where rank %d "
                 "receives %%%d (mb %d): transfers between two ranks must be received in the order they are sent",
                 src, a->v->id, a->mb, dst, k + 1, dst, r->v->id, r->mb);
  }
}

void sched_check(Graph *g) {
  Sched *s = world_sched(g);
  int world = s->world, nmsg = 0;
  RankRun *runs = arena_alloc(world * sizeof(RankRun));
  int total = 0;
  for (int r = 0; r < world; r++) rank_run(s, runs, r), total += runs[r].n;
  Msg *msgs = arena_alloc((total + 1) * sizeof(Msg));
  for (bool progress = true; progress;) {
    progress = false;
    for (int r = 0; r < world; r++) {
      while (runs[r].pc < runs[r].n) {
        Action *a = &runs[r].a[runs[r].pc];
        if (a->kind == ACT_SEND) {
          int dst = peer_rank(g, &runs[r], a);
          Msg *m = find_msg(msgs, nmsg, r, dst, a);
          if (!m) m = &msgs[nmsg++], *m = (Msg){r, dst, a->v->id, a->mb, a->grad, 0};
          m->count++;
        } else if (a->kind == ACT_RECV) {
          Msg *m = find_msg(msgs, nmsg, peer_rank(g, &runs[r], a), r, a);
          if (!m || m->count == 0) break;
          m->count--;
        } else if (a->kind == ACT_ALLREDUCE || a->kind == ACT_OPTIMIZER) {
          if (!collective(runs, world, r)) break;
          advance_group(runs, world, r);
          progress = true;
          continue;
        }
        runs[r].pc++;
        progress = true;
      }
    }
  }
  for (int r = 0; r < world; r++)
    if (runs[r].pc < runs[r].n) {
      Action *a = &runs[r].a[runs[r].pc];
      diag_fatal("sched-deadlock", "the schedule deadlocks: rank %d waits at action %d (%s mb=%d)",
                 r, runs[r].pc, kind_name(a->kind), a->mb);
    }
  for (int i = 0; i < nmsg; i++)
    if (msgs[i].count)
      diag_fatal("sched-unmatched", "rank %d sends %%%d (mb %d) to rank %d, which never receives it",
                 msgs[i].src, msgs[i].vid, msgs[i].mb, msgs[i].dst);
  for (int r = 0; r < world; r++) in_order(g, runs, r);
}

/* ---- the planned timeline: the static check's walk, with clocks ---- */

typedef struct Arrival {
  int src, dst, vid, mb;
  bool grad;
  double t;
  bool taken;
} Arrival;

static double prog_seconds(Inst **prog, int n, double flops, double bw, int64_t tp) {
  double f = 0, bytes = 0;
  for (int k = 0; k < n; k++) {
    Inst *in = prog[k];
    f += plan_inst_flops(in);
    if (in->op == OP_ALLREDUCE) bytes += 4.0 * ir_get(in, "n") * 2.0 * (tp - 1) / tp;
  }
  return f / flops + bytes / bw;
}

static void span(FILE *out, bool *first, int rank, int tid, const char *name, double t0, double t1, const char *args) {
  fprintf(out, "%s{\"name\":\"%s\",\"ph\":\"X\",\"pid\":%d,\"tid\":%d,\"ts\":%.3f,\"dur\":%.3f,\"args\":{%s}}",
          *first ? "" : ",\n", name, rank, tid, t0 * 1e6, (t1 - t0) * 1e6, args);
  *first = false;
}

void sched_timeline(FILE *out, Graph *g, double flops, double bw) {
  Sched *s = world_sched(g);
  int world = s->world, narr = 0, total = 0;
  int64_t tp = g->prog->s.mesh[AX_TP];
  RankRun *runs = arena_alloc(world * sizeof(RankRun));
  double *t = arena_alloc(world * sizeof(double)), *tc = arena_alloc(world * sizeof(double)),
         *grads = arena_alloc(world * sizeof(double));
  double **secs = arena_alloc(world * sizeof(double *));   /* each action's compute, by rank */
  fprintf(out, "{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n");
  bool first = true;
  for (int r = 0; r < world; r++) {
    rank_run(s, runs, r);
    int nbwd;
    Inst **bwd = bwd_program(s, &nbwd);
    secs[r] = arena_alloc((runs[r].n + 1) * sizeof(double));
    for (int i = 0; i < runs[r].n; i++) {
      Action *a = &runs[r].a[i];
      if (a->kind == ACT_FWD) secs[r][i] = prog_seconds(s->part->fwd, s->part->nfwd, flops, bw, tp);
      if (a->kind == ACT_BWD) secs[r][i] = prog_seconds(bwd + a->from, (a->to ? a->to : nbwd) - a->from, flops, bw, tp);
    }
    grads[r] = 4.0 * s->region[V_GRAD];
    total += s->nstep;
    fprintf(out, "%s{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":%d,\"args\":{\"name\":\"rank %d (dp %d tp %d pp %d)\"}}",
            first ? "" : ",\n", r, r, s->coord[AX_DP], s->coord[AX_TP], s->coord[AX_PP]);
    first = false;
  }
  Arrival *arr = arena_alloc((total + 1) * sizeof(Arrival));
  char args[96];
  for (bool progress = true; progress;) {
    progress = false;
    for (int r = 0; r < world; r++)
      while (runs[r].pc < runs[r].n) {
        Action *a = &runs[r].a[runs[r].pc];
        snprintf(args, sizeof args, "\"microbatch\":%d", a->mb);
        if (a->kind == ACT_FWD || a->kind == ACT_BWD) {
          double d = secs[r][runs[r].pc];
          span(out, &first, r, 0, a->kind == ACT_FWD ? "forward" : "backward", t[r], t[r] + d, args);
          t[r] += d;
        } else if (a->kind == ACT_WAIT) {   /* the compute waits for the overlapped all-reduces */
          if (tc[r] > t[r]) span(out, &first, r, 0, "wait", t[r], tc[r], args), t[r] = tc[r];
        } else if (a->kind == ACT_SEND) {
          double d = 4.0 * shape_numel(&a->v->shape) / bw;
          arr[narr++] = (Arrival){r, peer_rank(g, &runs[r], a), a->v->id, a->mb, a->grad, t[r] + d, false};
          span(out, &first, r, 1, "send", t[r], t[r] + d, args);
        } else if (a->kind == ACT_RECV) {
          int src = peer_rank(g, &runs[r], a), k = 0;
          while (k < narr && (arr[k].taken || arr[k].src != src || arr[k].dst != r || arr[k].vid != a->v->id ||
                              arr[k].mb != a->mb || arr[k].grad != a->grad)) k++;
          if (k == narr) break;   /* not sent yet */
          arr[k].taken = true;
          if (arr[k].t > t[r]) span(out, &first, r, 0, "wait", t[r], arr[k].t, args), t[r] = arr[k].t;
        } else if (a->kind == ACT_ALLREDUCE || a->kind == ACT_OPTIMIZER) {
          if (!collective(runs, world, r)) break;
          RankRun me = runs[r];
          double start = 0, d = 0;
          for (int q = 0; q < world; q++)
            if (a->kind == ACT_OPTIMIZER ? (a->axis < 0 ? q == r : same_group(&me, &runs[q], a->axis, a->kind))
                                         : same_group(&me, &runs[q], a->axis, a->kind)) {
              start = t[q] > start ? t[q] : start;
              if (a->async) start = tc[q] > start ? tc[q] : start;   /* the stream of collectives is in order */
            }
          if (a->kind == ACT_ALLREDUCE) {
            int64_t n = g->prog->s.mesh[a->axis];
            d = n > 1 ? 4.0 * a->n * 2.0 * (n - 1) / n / bw : 0;
          } else d = 3.0 * grads[r] / bw;   /* AdamW reads and writes the state once: memory bound */
          for (int q = 0; q < world; q++)
            if (a->kind == ACT_OPTIMIZER && a->axis < 0 ? q == r : same_group(&me, &runs[q], a->axis, a->kind)) {
              span(out, &first, q, a->kind == ACT_ALLREDUCE, a->kind == ACT_ALLREDUCE ? "allreduce" : "optimizer",
                   start, start + d, "");
              *(a->async ? &tc[q] : &t[q]) = start + d;
            }
          advance_group(runs, world, r);
          progress = true;
          continue;
        }
        runs[r].pc++;
        progress = true;
      }
  }
  fprintf(out, "\n]}\n");
}

/* The schedule of one rank, or of every rank when rank is -1. */
void sched_dump_all(FILE *out, Sched *s, int rank) {
  for (int r = 0; r < s->world; r++) {
    if (rank >= 0 && r != rank) continue;
    sched_set_rank(s, r);
    sched_stage(s, s->coord[AX_PP]);
    emit_schedule(out, s);
  }
  if (rank >= s->world)
    diag_fatal("bad-rank", "--rank %d: the plan has %d ranks", rank, s->world);
  sched_set_rank(s, 0);
  sched_stage(s, 0);
}

/* exec.c: the schedule interpreter. It lays out the regions the compiler
 * planned (one allocation each), points every value at its offset, fills
 * the parameters from the counter-based RNG, and runs the step's action
 * list (zero_grads, load, run fwd/bwd, optimizer) through the backend.
 * It never asks which backend it drives. */
#include "lmrt.h"
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct RunGraph {
  const RtInst *prog;
  int slot, from, to;
  int runs;                /* before it is recorded */
  void *exec;              /* the recording, or NULL */
} RunGraph;

static size_t elem_of(Run *r, int region) {
  return region == R_INPUT ? sizeof(int32_t) : region == R_COPY && r->typed ? 2 : (size_t)r->be->elem;
}

/* Activations and inputs get one copy per slot (microbatch in flight). */
static int64_t copies(Bundle *b, int region) {
  return region == R_ACT || region == R_INPUT ? b->slots : 1;
}

/* A region's bytes a slot: the activations under bf16 storage by the byte
 * plan, else elements at the backend's width. */
static int64_t region_bytes(Run *r, int region) {
  return region == R_ACT && r->typed ? r->b->act_bytes : r->b->region[region] * (int64_t)elem_of(r, region);
}

/* A plan the device has no room for ends the run before anything is
 * allocated, saying what it needs and what would shrink it. */
static void check_room(Run *r) {
  Bundle *b = r->b;
  double fr, total, all = 2.0 * (double)b->region[R_PARAM] * r->be->elem;   /* Adam's moments */
  char name[100], z[5][32];
  if (!r->be->memory || !r->be->memory(&fr, &total, name, sizeof name)) return;
  for (int i = 0; i < NUM_REGIONS; i++) all += (double)copies(b, i) * region_bytes(r, i);
  double state = rt_state_bytes(r), act = all - state;   /* activation slots, inputs, state values */
  if (all <= fr) return;
  rt_die("the plan needs %s of device memory on rank %d (activations %s: %d microbatch slot%s; weights, gradients "
         "and Adam %s) and %s has %s free of %s: lower the batch or seq, raise microbatches, store activations in "
         "bf16 (--set precision=bf16) or split the model (tp, pp); `lmc SPEC --plan N --plan-mem GIB` lists "
         "the layouts of N ranks that fit", rt_bytes(z[0], all), b->rank, rt_bytes(z[1], act), b->slots, b->slots == 1 ? "" : "s",
         rt_bytes(z[2], state), name, rt_bytes(z[3], fr), rt_bytes(z[4], total));
}

static int by_offset(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

/* The first backward pass of a step (bwd_first, for microbatch
 * first_mb): each gradient's first write in program order sets it where
 * the program adds to it, so those need no zeros first (GPT-2 124M: 0.5
 * GB of memset a step, all but 38,400 reals of it). A gradient read
 * before it is written, first touched by a generated kernel (whose
 * members keep their flags) or by a collective, and the region's gaps are
 * zeroed as before (the ranges in zero). Where another microbatch's
 * backward runs before the first's is done, every step zeroes all. */
static void plan_first_writes(Run *r) {
  Bundle *b = r->b;
  r->first_mb = -1;
  bool others = false;   /* another microbatch's backward before the first's is done: */
  for (int i = 0; i < b->nactions; i++)
    if (b->actions[i].kind == A_RUN_BWD && r->first_mb < 0) r->first_mb = b->actions[i].mb;
    else if (b->actions[i].kind == A_RUN_BWD && b->actions[i].mb != r->first_mb) others = true;
    else if (b->actions[i].kind == A_RUN_BWD && others) return;   /* it would add to what the first sets later */
  if (r->first_mb < 0 || !b->region[R_GRAD]) return;
  r->bwd_first = rt_xmalloc((b->nbwd + 1) * sizeof *r->bwd_first);
  memcpy(r->bwd_first, b->bwd, b->nbwd * sizeof *b->bwd);
  char *seen = rt_xmalloc(b->nvals), *set = rt_xmalloc(b->nvals);
  for (int i = 0; i < b->nbwd; i++) {
    RtInst *x = &r->bwd_first[i];
    for (int k = 0; k < x->nbody; k++)   /* a generated kernel's values: touched, never set */
      for (int j = 0; j < 3 + RT_MAX_IN; j++) {
        int v = j < 3 ? x->body[k].out[j] : x->body[k].in[j - 3];
        if (v >= 0) seen[v] = 1;
      }
    for (int j = 0; j < RT_MAX_IN; j++)
      if (x->in[j] >= 0) seen[x->in[j]] = 1;
    for (int j = 0; j < 3; j++) {
      int v = x->out[j];
      if (v < 0 || seen[v] || b->vals[v].region != R_GRAD) continue;
      seen[v] = 1;
      if (x->acc[j] && x->op != OP_ALLREDUCE) x->acc[j] = false, set[v] = 1;
    }
  }
  int64_t (*sets)[2] = rt_xmalloc((b->nvals + 1) * sizeof *sets), at = 0;   /* what it sets, by offset */
  int nsets = 0;
  for (int v = 0; v < b->nvals; v++)
    if (set[v]) sets[nsets][0] = b->vals[v].off, sets[nsets++][1] = b->vals[v].n;
  qsort(sets, nsets, sizeof *sets, by_offset);
  for (int i = 0; i <= nsets; i++) {   /* the rest: the gaps between them */
    int64_t upto = i < nsets ? sets[i][0] : b->region[R_GRAD];
    if (upto > at) {
      r->zero = realloc(r->zero, (r->nzero + 1) * sizeof *r->zero);
      if (!r->zero) rt_die("out of memory");
      r->zero[r->nzero][0] = at, r->zero[r->nzero++][1] = upto - at;
    }
    if (i < nsets && sets[i][0] + sets[i][1] > at) at = sets[i][0] + sets[i][1];
  }
  free(seen), free(set), free(sets);
  const char *p = getenv("LMC_POISON_GRADS");
  r->poison = p && *p && strcmp(p, "0");
}

/* A step's zeros: the gradients its first backward pass does not set (all
 * of them without one), and the state values. Under $LMC_POISON_GRADS the
 * whole gradient region is NaN first, so that a gradient neither wholly
 * set nor wholly zeroed shows in the loss. */
static void poison_grads(Run *r) {
  enum { CHUNK = 1 << 16 };
  double *nan = rt_xmalloc(CHUNK * sizeof(double));
  for (int i = 0; i < CHUNK; i++) nan[i] = NAN;
  for (int64_t c = 0, n = r->b->region[R_GRAD]; c < n; c += CHUNK)
    r->be->upload((char *)r->region[R_GRAD] + c * r->be->elem, nan, n - c < CHUNK ? n - c : CHUNK);
  free(nan);
}

static void zero_step(Run *r) {
  Bundle *b = r->b;
  if (!r->bwd_first) {
    rt_zero_grads(r);
    return;
  }
  if (r->poison) poison_grads(r);
  if (r->be->zero_ranges && r->nzero) r->be->zero_ranges(r->region[R_GRAD], (const int64_t(*)[2])r->zero, r->nzero);
  else
    for (int i = 0; i < r->nzero; i++)
      r->be->zero((char *)r->region[R_GRAD] + r->zero[i][0] * r->be->elem, r->zero[i][1]);
  r->be->zero(r->region[R_STATE], b->region[R_STATE]);
}

static bool ahead_ok(Run *r);

Run *rt_new(Bundle *b, Backend *be) {
  Run *r = rt_xmalloc(sizeof(Run));
  r->b = b, r->be = be;
  r->typed = b->bf16 && be->widen;   /* the backend keeps bf16 values in bf16 */
  check_room(r);
  for (int i = 0; i < NUM_REGIONS; i++)
    r->region[i] = be->alloc(copies(b, i) * region_bytes(r, i));
  r->adam_m = be->alloc(b->region[R_PARAM] * be->elem);
  r->adam_v = be->alloc(b->region[R_PARAM] * be->elem);
  r->ptr = rt_xmalloc((size_t)b->slots * b->nvals * sizeof(void *));
  for (int s = 0; s < b->slots; s++)
    for (int v = 0; v < b->nvals; v++) {
      RtValue *val = &b->vals[v];
      if (!val->present) continue;
      int64_t base = copies(b, val->region) > 1 ? s * region_bytes(r, val->region) : 0;
      int64_t at = val->region == R_ACT && r->typed ? val->boff : val->off * (int64_t)elem_of(r, val->region);
      r->ptr[s * b->nvals + v] = (char *)r->region[val->region] + base + at;
    }
  r->inputs = rt_xmalloc(3 * b->B * b->T * sizeof(int32_t));
  r->slot_mb = rt_xmalloc(b->slots * sizeof(int));
  for (int s = 0; s < b->slots; s++) r->slot_mb[s] = -1;
  r->graphs = be->graph_begin != NULL;
  int64_t ar = 0;   /* the largest bf16 value all-reduced inside a program */
  for (int i = 0; i < b->nfwd + b->nbwd; i++) {   /* a tp all-reduce through the host; MoE's counts */
    const RtInst *x = i < b->nfwd ? &b->fwd[i] : &b->bwd[i - b->nfwd];
    if ((x->op == OP_ALLREDUCE || (x->op >= OP_MOE_ROUTE && x->op <= OP_MOE_COMBINE_BWD)) &&
        !(be->graph_ok && be->graph_ok(x)))
      r->graphs = false;
    if (x->op == OP_ALLREDUCE && r->typed && b->vals[x->out[0]].bf16 && b->vals[x->out[0]].n > ar) ar = b->vals[x->out[0]].n;
  }
  if (ar) r->wide_ar = be->alloc(ar * be->elem);
  plan_first_writes(r);
  r->device_comm = b->world > 1 && be->device_collectives && be->device_collectives();
  r->ahead_ok = ahead_ok(r);
  return r;
}

/* What lives for the run, in bytes: weights, gradients, Adam's moments,
 * the weights' bf16 copies. */
double rt_state_bytes(Run *r) {
  return 4.0 * (double)r->b->region[R_PARAM] * r->be->elem + (double)region_bytes(r, R_COPY);
}

double rt_slot_bytes(Run *r) { return (double)region_bytes(r, R_ACT) + (double)r->b->region[R_INPUT] * 4; }

/* Activation memory in use: a microbatch fills its slot from its forward
 * pass to its backward pass; a slot is never filled twice. */
static void fill_slot(Run *r, int slot, int mb) {
  if (r->slot_mb[slot] >= 0)
    rt_die("internal error: microbatch %d needs slot %d, still held by microbatch %d", mb, slot,
           r->slot_mb[slot]);
  r->slot_mb[slot] = mb;
  if (++r->inflight > r->max_inflight) r->max_inflight = r->inflight;
}

static void free_slot(Run *r, int slot) {
  if (r->slot_mb[slot] >= 0) r->slot_mb[slot] = -1, r->inflight--;
}

void rt_free(Run *r) {
  for (int i = 0; i < r->ngraphs; i++)
    if (r->graph[i].exec) r->be->graph_free(r->graph[i].exec);
  free(r->graph), free(r->deferred);
  for (int i = 0; i < NUM_REGIONS; i++) r->be->release(r->region[i]);
  r->be->release(r->adam_m), r->be->release(r->adam_v);
  if (r->wide) r->be->release(r->wide);
  if (r->wide_ar) r->be->release(r->wide_ar);
  if (r->zeros) r->be->release(r->zeros);
  for (int64_t i = 0; r->routes && i < r->b->train.microbatches * r->b->nfwd; i++) free(r->routes[i]);
  free(r->routes);
  free(r->ptr), free(r->inputs), free(r->slot_mb), free(r->side), free(r->bwd_first), free(r->zero), free(r->state_host);
  free(r);
}

/* The index in the whole parameter of element i of this rank's part:
 * tp splits dim `split` into equal parts, this rank holds part coord[tp];
 * ep splits an expert weight's dim 0, this rank holds part coord[ep]. */
int64_t rt_global_index(Bundle *b, RtParam *p, int64_t i) {
  int64_t block = p->esplit ? (int64_t)b->coord[3] * (p->numel / b->mesh[3]) : 0;   /* the experts are dim 0 */
  if (p->split < 0) return block + i;
  int64_t inner = 1;
  for (int d = p->split + 1; d < p->rank; d++) inner *= p->shape[d];
  int64_t lsplit = p->shape[p->split] / b->mesh[1];
  int64_t outer = i / (lsplit * inner), rest = i % (lsplit * inner);
  return block + outer * p->shape[p->split] * inner + (int64_t)b->coord[1] * lsplit * inner + rest;
}

/* Element i of a parameter is a function of (name, seed, global i); it is
 * made and uploaded a chunk at a time, so no full host copy is needed. */
void rt_init_params(Run *r, uint64_t seed) {
  Bundle *b = r->b;
  enum { CHUNK = 1 << 20 };
  double *host = rt_xmalloc(CHUNK * sizeof(double));
  for (int p = 0; p < b->nparams; p++) {
    RtParam *pp = &b->params[p];
    if (pp->value < 0) continue;       /* another stage's */
    uint64_t key = rng_key(pp->name, seed);
    char *dst = r->ptr[pp->value];
    int fill = !strcmp(pp->init, "ones") ? 1 : !strcmp(pp->init, "zeros") ? 0 : -1;
    for (int64_t c = 0; c < pp->local; c += CHUNK) {
      int64_t n = pp->local - c < CHUNK ? pp->local - c : CHUNK;
      /* each value a function of (key, index) alone: the same bits on any
       * number of threads (one a core: llama-large's 693M draws took half
       * a minute on one) */
      #pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < n; i++)
        host[i] = fill >= 0 ? fill : pp->std * rng_normal(key, (uint64_t)rt_global_index(b, pp, c + i));
      r->be->upload(dst + c * r->be->elem, host, n);
    }
  }
  free(host);
  r->be->zero(r->adam_m, b->region[R_PARAM]);
  r->be->zero(r->adam_v, b->region[R_PARAM]);
  r->step = 0;
  r->stale = true;
}

void rt_zero_grads(Run *r) {
  r->be->zero(r->region[R_GRAD], r->b->region[R_GRAD]);
  r->be->zero(r->region[R_STATE], r->b->region[R_STATE]);
}

/* rows: nrows x (T+1) token ids, the microbatch's share of the batch,
 * into the inputs of slot 0 (rt_load_slot: of any slot). */
void rt_load_micro(Run *r, const int32_t *rows, int64_t nrows) { rt_load_slot(r, rows, nrows, 0); }

void rt_load_slot(Run *r, const int32_t *rows, int64_t nrows, int slot) {
  Bundle *b = r->b;
  int64_t T = b->T, n = nrows * T;
  int32_t *tok = r->inputs, *tgt = tok + n, *pos = tgt + n;
  for (int64_t i = 0; i < nrows; i++)
    for (int64_t t = 0; t < T; t++) {
      tok[i * T + t] = rows[i * (T + 1) + t];
      tgt[i * T + t] = rows[i * (T + 1) + t + 1];
      pos[i * T + t] = (int32_t)t;
    }
  void **ptr = r->ptr + (size_t)slot * b->nvals;
  r->be->upload_ids(ptr[b->tokens], tok, n);
  r->be->upload_ids(ptr[b->targets], tgt, n);
  r->be->upload_ids(ptr[b->positions], pos, n);
}

/* ---- tracing: Chrome trace events (Perfetto reads them), one span per
 * op, transfer, collective and optimizer step; compute on thread 0,
 * communication on thread 1 of the rank's process ---- */

static void trace(Run *r, const char *name, const char *cat, int tid, double t0, const char *args) {
  if (!r->trace) return;
  if (r->be->sync) r->be->sync();   /* a GPU's queued work belongs to this span */
  double t1 = rt_now();
  fprintf(r->trace, ",\n{\"name\":\"%s\",\"cat\":\"%s\",\"ph\":\"X\",\"pid\":%d,\"tid\":%d,\"ts\":%.3f,\"dur\":%.3f,"
          "\"args\":{%s}}", name, cat, r->b->rank, tid, (t0 - r->trace_t0) * 1e6, (t1 - t0) * 1e6, args);
}

void rt_trace_open(Run *r, const char *path) {
  char part[1200];
  snprintf(part, sizeof part, "%s.rank%d", path, r->b->rank);
  if (!(r->trace = fopen(part, "w"))) rt_die("cannot write trace '%s': %s", part, strerror(errno));
  r->trace_t0 = rt_now();
  fprintf(r->trace, "{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":%d,\"args\":{\"name\":\"rank %d (stage %d)\"}}",
          r->b->rank, r->b->rank, r->b->stage);
}

void rt_trace_close(Run *r, const char *path) {
  if (!r->trace) return;
  if (fclose(r->trace)) rt_die("cannot write trace '%s.rank%d'", path, r->b->rank);
  r->trace = NULL;
  comm_barrier();
  if (r->b->rank != 0) return;
  FILE *out = fopen(path, "w");
  if (!out) rt_die("cannot write trace '%s': %s", path, strerror(errno));
  fputs("{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n", out);
  for (int k = 0; k < r->b->world; k++) {
    char part[1200], buf[65536];
    snprintf(part, sizeof part, "%s.rank%d", path, k);
    FILE *in = fopen(part, "r");
    if (!in) rt_die("cannot read trace part '%s' (ranks on other machines need a shared folder)", part);
    if (k) fputs(",\n", out);
    for (size_t n; (n = fread(buf, 1, sizeof buf, in));) fwrite(buf, 1, n, out);
    fclose(in), unlink(part);
  }
  fputs("\n]}\n", out);
  if (fclose(out)) rt_die("cannot write trace '%s': %s", path, strerror(errno));
}

static void run_ops(Run *r, const RtInst *prog, int n, int slot);
static void side_join(Run *r);

/* Per rank of a group: elements from a prefix of counts grouped per rank. */
static void per_rank(const double *counts, int64_t per, int ranks, int64_t d, int64_t *n, int64_t *displ) {
  for (int q = 0; q < ranks; q++) {
    n[q] = 0;
    for (int64_t e = 0; e < per; e++) n[q] += (int64_t)counts[q * per + e] * d;
    displ[q] = q ? displ[q - 1] + n[q - 1] : 0;
  }
}

/* Expert parallelism's all-to-alls over ep. moe_a2a: the rows of each
 * expert (sorted by expert, counts per expert) to the rank holding it,
 * which receives them by source rank, and the counts with them (rcounts,
 * source-major); moe_a2a_rev: the same rows back. The counts come to the
 * host to size the exchange. */
static bool half(Run *r, int v);

static void moe_a2a(Run *r, const RtInst *x, void **out, void **in) {
  int ep = (int)x->seg;
  int64_t E = x->e, El = E / ep;
  double *c = rt_xmalloc(2 * E * sizeof(double)), *rc = c + E;
  int64_t *n = rt_xmalloc(4 * ep * sizeof(int64_t)), *sd = n + ep, *rn = sd + ep, *rd = rn + ep;
  if (x->op == OP_MOE_A2A) {
    r->be->download(c, in[1], E);
    double rows = 0;
    for (int64_t e = 0; e < E; e++) {
      if (!(c[e] >= 0 && c[e] <= (double)x->m && c[e] == (double)(int64_t)c[e]))
        rt_die("an MoE expert's row count is %g, not one of 0..%lld (is this bundle as lmc wrote it?)", c[e], (long long)x->m);
      rows += c[e];
    }
    if (rows > (double)x->m) rt_die("the MoE row counts add up to %g, more than the %lld rows sent", rows, (long long)x->m);
    int64_t *one = rt_xmalloc(2 * ep * sizeof(int64_t)), *at = one + ep;
    for (int q = 0; q < ep; q++) one[q] = El, at[q] = q * El;
    comm_alltoallv(c, one, at, rc, one, at, 8, AXIS_EP);
    free(one);
    r->be->upload(out[1], rc, E);
    per_rank(c, El, ep, x->d, n, sd), per_rank(rc, El, ep, x->d, rn, rd);
  } else {
    r->be->download(rc, in[1], E), r->be->download(c, in[2], E);
    per_rank(rc, El, ep, x->d, n, sd), per_rank(c, El, ep, x->d, rn, rd);
  }
  r->be->alltoallv(in[0], n, sd, out[0], rn, rd, half(r, x->in[0]) ? 2 : r->be->elem, AXIS_EP);
  int me = comm_group_rank(AXIS_EP);
  for (int q = 0; q < ep; q++) r->a2a_sent += q == me ? 0 : (double)n[q];
  free(c), free(n);
}

static RunGraph *graph_of(Run *r, const RtInst *prog, int slot, int from, int to) {
  for (int i = 0; i < r->ngraphs; i++) {
    RunGraph *g = &r->graph[i];
    if (g->prog == prog && g->slot == slot && g->from == from && g->to == to) return g;
  }
  r->graph = realloc(r->graph, (r->ngraphs + 1) * sizeof *r->graph);
  if (!r->graph) rt_die("out of memory");
  r->graph[r->ngraphs] = (RunGraph){prog, slot, from, to, 0, NULL};
  return &r->graph[r->ngraphs++];
}

/* A program's ops [from, to), or on a GPU their recording: the third run
 * of a (program, slot, segment) records it (the first two grow the
 * scratch buffers), and later runs replay it. Profiling and tracing time
 * each op, so they run the ops. */
static void run_program(Run *r, const RtInst *prog, int from, int to, int slot) {
  if (!r->graphs || r->op_time || r->trace || (prog != r->b->fwd && prog != r->b->bwd && prog != r->bwd_first)) {
    run_ops(r, prog + from, to - from, slot);
    side_join(r);
    return;
  }
  RunGraph *g = graph_of(r, prog, slot, from, to);
  if (!g->exec && ++g->runs > 2) {
    r->be->graph_begin();
    run_ops(r, prog + from, to - from, slot);
    side_join(r);   /* (a graph's second stream joins its first before the recording ends) */
    g->exec = r->be->graph_end();
  }
  if (g->exec) r->be->graph_run(g->exec);
  else run_ops(r, prog + from, to - from, slot), side_join(r);
}

/* moe_route when the routing is held fixed (a gradient check's finite
 * differences must not flip an expert): the first forward of each
 * microbatch records each layer's experts, later ones use them. */
static void route_fixed(Run *r, const RtInst *x, int i, void **out, void **in) {
  int64_t n = x->n * x->top, m = r->b->train.microbatches;
  i += (int)(r->forwards % m) * r->b->nfwd;
  if (!r->routes) r->routes = calloc(m * r->b->nfwd, sizeof(double *));
  if (!r->routes) rt_die("out of memory");
  if (r->routing == 2 && r->routes[i]) {
    RtInst fixed = *x;
    fixed.fixed = true;
    r->be->upload(out[1], r->routes[i], n);
    r->be->run(&fixed, out, in);
    return;
  }
  r->be->run(x, out, in);
  if (!r->routes[i]) r->routes[i] = rt_xmalloc(n * sizeof(double));
  r->be->download(r->routes[i], out[1], n);
}

/* Whether value v is held in bf16 (bf16 storage on a backend that keeps
 * it): the host and the collectives see it widened to reals in a scratch
 * buffer meanwhile (wide returns where the reals are, narrow writes them
 * back). */
static bool half(Run *r, int v) { return v >= 0 && r->typed && r->b->vals[v].bf16; }

static void *reals_for(Run *r, int64_t n) {   /* the scratch buffer, room for n reals */
  if (r->wide_n < n) {
    if (r->wide) r->be->release(r->wide);
    r->wide = r->be->alloc(n * r->be->elem), r->wide_n = n;
  }
  return r->wide;
}

static void *wide(Run *r, int v, void *p) {
  if (!half(r, v)) return p;
  r->be->widen(reals_for(r, r->b->vals[v].n), p, r->b->vals[v].n);
  return r->wide;
}

static void narrow(Run *r, int v, void *p, const void *reals) {
  if (half(r, v)) r->be->narrow(p, reals, r->b->vals[v].n);
}

/* A group's generated kernel, on its values each once in the order its
 * members name them, outputs first (compiler/group.c's order; the
 * loader lists them). */
static void fused(Run *r, const RtInst *x, void **ptr) {
  void *ops[RT_MAX_FUSED];
  for (int i = 0; i < x->nops; i++) ops[i] = ptr[x->ops[i]];
  r->be->run_fused(x, ops, x->nops);
}

/* ---- the weights' gradients on a second stream ----
 * A weight's gradient GEMM (matmul or matmul_bgrad into the gradients)
 * feeds nothing in the backward pass but the optimizer and the gradient
 * all-reduces, and its M x N output is often a fraction of a wave of the
 * GPU's tiles (GPT-2's: 36 to 144 tiles of 128 x 128 for 132 SMs, K 8192
 * tokens): on the backend's second stream it runs beside the ops queued
 * after it, which take the SMs it leaves idle. What it reads and writes
 * is noted (the values' bytes: the memory plan puts other values in the
 * same bytes later); before an op that writes any of those bytes or reads
 * what it writes, and at the end of a program, the main stream waits for
 * it (side_join). */
typedef struct Span { const char *lo, *hi; bool write; int n; } Span;   /* n: side_end's number */

static int64_t value_bytes(Run *r, int v) {
  RtValue *x = &r->b->vals[v];
  return x->n * (int64_t)(x->region == R_INPUT ? 4 : half(r, v) || (x->region == R_COPY && r->typed) ? 2 : r->be->elem);
}

/* f over the values x reads (write false) and writes, a fused op's members' too */
static void each_value(Run *r, const RtInst *x, void **ptr, void (*f)(Run *, const char *, int64_t, bool, void *), void *u) {
  if (x->op == OP_FUSED)
    for (int k = 0; k < x->nbody; k++) each_value(r, &x->body[k], ptr, f, u);
  for (int j = 0; j < 3; j++)
    if (x->out[j] >= 0) f(r, ptr[x->out[j]], value_bytes(r, x->out[j]), true, u);
  for (int j = 0; j < RT_MAX_IN; j++)
    if (x->in[j] >= 0) f(r, ptr[x->in[j]], value_bytes(r, x->in[j]), false, u);
}

static void side_note(Run *r, const char *p, int64_t bytes, bool write, void *u) {
  if (r->nside == r->cap_side && !(r->side = realloc(r->side, (r->cap_side = 2 * r->cap_side + 16) * sizeof *r->side)))
    rt_die("out of memory");
  r->side[r->nside++] = (Span){p, p + bytes, write, *(int *)u};
}

/* *u: the latest GEMM whose bytes this value's access clashes with */
static void side_clash(Run *r, const char *p, int64_t bytes, bool write, void *u) {
  for (int i = 0; i < r->nside; i++)
    if ((write || r->side[i].write) && p < r->side[i].hi && r->side[i].lo < p + bytes && r->side[i].n > *(int *)u)
      *(int *)u = r->side[i].n;
}

/* waits for the second stream's GEMMs up to number upto (INT_MAX: all),
 * forgetting their bytes */
static void side_join_upto(Run *r, int upto) {
  int j = 0, last = 0;
  for (int i = 0; i < r->nside; i++) {
    if (r->side[i].n > upto) r->side[j++] = r->side[i];
    else if (r->side[i].n > last) last = r->side[i].n;
  }
  if (last) r->be->side_join(last);
  r->nside = j;
}

static void side_join(Run *r) { side_join_upto(r, INT_MAX); }

/* A profile's key for x: its kind, or with inst_time its index in the
 * forward and backward programs past the kinds' keys */
static int inst_key(Run *r, const RtInst *x, int kind) {
  Bundle *b = r->b;
  if (!r->inst_time) return kind;
  if (x >= b->fwd && x < b->fwd + b->nfwd) return NUM_OPS + 1 + (int)(x - b->fwd);
  if (x >= b->bwd && x < b->bwd + b->nbwd) return NUM_OPS + 1 + b->nfwd + (int)(x - b->bwd);
  if (r->bwd_first && x >= r->bwd_first && x < r->bwd_first + b->nbwd)
    return NUM_OPS + 1 + b->nfwd + (int)(x - r->bwd_first);
  return kind;
}

/* The op kind a profile books x under: a kernel of one op, that op's */
int rt_op_kind(const RtInst *x) { return x->op == OP_FUSED && x->nbody == 1 ? x->body[0].op : x->op; }

static bool names(const int *ids, int n, int v) {   /* v among the n ids */
  for (int i = 0; i < n; i++)
    if (ids[i] == v) return true;
  return false;
}

/* The bytes x moves at the least: each value it reads or writes once, in
 * the type the plan stores it in (an output it adds to: read and written).
 * A generated kernel's values are its parameters: those its members write
 * (and read only where a member adds to them), those they only read;
 * each value's bytes as the second stream notes them (value_bytes), an
 * embedding's table as the rows its tokens name. */
static double touched(Run *r, const RtInst *x, int v) {
  int kind = rt_op_kind(x);
  double bytes = (double)value_bytes(r, v);
  if ((kind == OP_EMBED || kind == OP_EMBED_BWD) && r->b->vals[v].n == x->v * x->d && x->n < x->v)
    bytes *= (double)x->n / (double)x->v;
  return bytes;
}

double rt_inst_bytes(Run *r, const RtInst *x) {
  double bytes = 0;
  if (x->op == OP_FUSED && x->ops) {
    for (int i = 0; i < x->nops; i++) {
      int v = x->ops[i];
      bool written = false, added = false, read = false;
      for (int m = 0; m < x->nbody; m++) {
        const RtInst *y = &x->body[m];
        for (int j = 0; j < 3; j++)
          if (y->out[j] == v) written = true, added |= y->acc[j];
        read |= names(y->in, RT_MAX_IN, v);
      }
      bytes += (double)value_bytes(r, v) * (written + (added || (read && !written)));
    }
    return bytes;
  }
  for (int j = 0; j < RT_MAX_IN; j++)
    if (x->in[j] >= 0 && !names(x->in, j, x->in[j]) && !names(x->out, 3, x->in[j])) bytes += touched(r, x, x->in[j]);
  for (int j = 0; j < 3; j++)
    if (x->out[j] >= 0) bytes += touched(r, x, x->out[j]) * (x->acc[j] ? 2 : 1);
  return bytes;
}

static bool side_candidate(Run *r, const RtInst *x) {
  return (x->op == OP_MATMUL || x->op == OP_MATMUL_BGRAD) && x->out[0] >= 0 && r->b->vals[x->out[0]].region == R_GRAD &&
         r->be->side_begin && !r->op_time && !r->trace;
}

static void run_ops(Run *r, const RtInst *prog, int n, int slot) {
  void *out[3], *in[RT_MAX_IN], **ptr = r->ptr + (size_t)slot * r->b->nvals;
  for (int i = 0; i < n; i++) {
    const RtInst *x = &prog[i];
    if (x->op == OP_FUSED && !r->be->run_fused) {   /* the members, one by one: the reference */
      run_ops(r, x->body, x->nbody, slot);
      continue;
    }
    bool side = side_candidate(r, x) && r->be->side_begin(x);
    int clash = 0;
    if (!side && r->nside) {
      each_value(r, x, ptr, side_clash, &clash);
      if (clash) side_join_upto(r, clash);
    }
    for (int j = 0; j < 3; j++) out[j] = x->out[j] >= 0 ? ptr[x->out[j]] : NULL;
    for (int j = 0; j < RT_MAX_IN; j++) in[j] = x->in[j] >= 0 ? ptr[x->in[j]] : NULL;
    double t = r->op_time || r->trace ? rt_now() : 0;
    int kind = rt_op_kind(x);
    if (r->op_time && r->be->time_mark) r->be->time_mark(inst_key(r, x, kind));
    if (x->op == OP_ALLREDUCE) {   /* a bf16 value widened in a buffer of its own (graphs record it) */
      void *w = half(r, x->out[0]) ? r->wide_ar : out[0];
      if (w != out[0]) r->be->widen(w, out[0], r->b->vals[x->out[0]].n);
      r->be->allreduce(w, x->n, x->axis, x->red);
      narrow(r, x->out[0], out[0], w);
    } else if (x->op == OP_MOE_A2A || x->op == OP_MOE_A2A_REV) moe_a2a(r, x, out, in);
    else if (x->op == OP_MOE_ROUTE && r->routing && prog == r->b->fwd) route_fixed(r, x, i, out, in);
    else if (x->op == OP_FUSED) fused(r, x, ptr);
    else r->be->run(x, out, in);
    for (int j = 0; j < 3; j++)   /* what the plan stores in bf16, as bf16 (in fp32 storage: rounded) */
      if (x->out[j] >= 0 && r->b->vals[x->out[j]].bf16 && !half(r, x->out[j]))
        r->be->round_bf16(out[j], r->b->vals[x->out[j]].n);
    if (side) {
      int number = r->be->side_end();
      each_value(r, x, ptr, side_note, &number);
    }
    if (r->op_time && r->be->time_mark) r->be->time_mark(-1);   /* profiling: the device's time, or */
    else if (r->op_time && r->be->sync) r->be->sync();           /* a GPU op's own time with a wait */
    if (r->op_time && !r->be->time_mark) r->op_time[kind] += rt_now() - t;
    if (r->trace) {
      char args[96];
      snprintf(args, sizeof args, "\"microbatch\":%d,\"n\":%lld", r->slot_mb ? r->slot_mb[slot] : 0, (long long)x->n);
      trace(r, rt_op_names[kind], prog == r->b->bwd || prog == r->bwd_first ? "backward" : "forward", x->op == OP_ALLREDUCE, t, args);
    }
  }
}

/* The weights' bf16 copies, made again where the weights changed other
 * than by the backend's optimizer (loaded, set, or stepped by rt_adamw). */
static void fresh_copies(Run *r) {
  if (r->stale) run_ops(r, r->b->casts, r->b->ncasts, 0);
  r->stale = false;
}

void rt_forward(Run *r) {
  fresh_copies(r);
  run_program(r, r->b->fwd, 0, r->b->nfwd, 0);
  r->forwards += r->routing != 0;
}
void rt_backward(Run *r) { run_program(r, r->b->bwd, 0, r->b->nbwd, 0); }

double rt_loss(Run *r) {
  double l;
  r->be->download(&l, r->ptr[r->b->loss], 1);
  return l;
}

/* Whether a parameter of this rank counts in the gradient norm: one that
 * every tp rank holds whole counts once (on tp rank 0); one that several
 * stages hold, once (on the first); one that every ep rank holds (all but
 * the experts), once (on ep rank 0). */
static bool in_norm(const Bundle *b, const RtParam *pp) {
  return !(pp->copy || (b->mesh[1] > 1 && pp->split < 0 && b->coord[1] != 0) ||
           (b->mesh[3] > 1 && !pp->esplit && b->coord[3] != 0));
}

/* The global gradient norm: this rank's parameters, summed over the
 * groups that split the model. */
static double grad_norm(Run *r, bool over_tp, bool over_pp, bool over_ep) {
  Bundle *b = r->b;
  const void **x = rt_xmalloc((b->nparams + 1) * sizeof *x);
  int64_t *n = rt_xmalloc((b->nparams + 1) * sizeof *n);
  int count = 0;
  for (int p = 0; p < b->nparams; p++) {
    RtParam *pp = &b->params[p];
    if (pp->value < 0 || !in_norm(b, pp)) continue;
    x[count] = (char *)r->region[R_GRAD] + b->vals[pp->value].off * r->be->elem, n[count++] = pp->local;
  }
  double ss = r->be->sumsq(x, n, count);   /* one wait for a GPU */
  free(x), free(n);
  if (over_tp) comm_allreduce_sum(&ss, 1, 8, AXIS_TP);
  if (over_pp) comm_allreduce_sum(&ss, 1, 8, AXIS_PP);
  if (over_ep) comm_allreduce_sum(&ss, 1, 8, AXIS_EP);
  return sqrt(ss);
}

double rt_grad_norm(Run *r) { return grad_norm(r, false, false, false); }

/* The next optimizer step's arguments (the step counted). */
static AdamArgs next_step(Run *r, double lr, double gscale) {
  Train *t = &r->b->train;
  r->step++;
  return (AdamArgs){.lr = lr, .beta1 = t->beta1, .beta2 = t->beta2, .eps = t->eps,
                    .bc1 = 1 - pow(t->beta1, (double)r->step), .bc2 = 1 - pow(t->beta2, (double)r->step),
                    .gscale = gscale};
}

void rt_adamw(Run *r, double lr, double gscale) {
  Bundle *b = r->b;
  Train *t = &b->train;
  AdamArgs a = next_step(r, lr, gscale);
  size_t e = r->be->elem;
  for (int p = 0; p < b->nparams; p++) {
    RtParam *pp = &b->params[p];
    if (pp->value < 0) continue;
    RtValue *w = &b->vals[pp->value];
    a.wd = pp->decay ? t->wd : 0.0;
    int64_t off = w->off * e;
    r->be->adamw(r->ptr[pp->value], (char *)r->region[R_GRAD] + off, (char *)r->adam_m + off,
                 (char *)r->adam_v + off, pp->local, &a);
  }
  r->stale = true;
}

/* The optimizer step in the backend (a GPU's: no host wait until the norm
 * comes back), for a rank whose gradient norm needs no other group's or
 * whose backend sums it over the groups on the device (axes): the same
 * tensors, clipping and AdamW as grad_norm and rt_adamw. */
static double device_optimizer(Run *r, double lr, bool later, unsigned axes) {
  Bundle *b = r->b;
  Train *t = &b->train;
  AdamArgs a = next_step(r, lr, 1.0);
  a.later = later, a.norm_axes = axes;
  OptParam *p = rt_xmalloc((b->nparams + 1) * sizeof *p);
  size_t e = r->be->elem;
  int count = 0;
  for (int i = 0; i < b->nparams; i++) {
    RtParam *pp = &b->params[i];
    if (pp->value < 0) continue;
    int64_t off = b->vals[pp->value].off * e;
    p[count++] = (OptParam){r->ptr[pp->value], (char *)r->region[R_GRAD] + off, (char *)r->adam_m + off,
                            (char *)r->adam_v + off, pp->copy16 >= 0 ? r->ptr[pp->copy16] : NULL, pp->local, pp->decay ? t->wd : 0.0,
                            in_norm(b, pp)};
  }
  double norm = r->be->optimizer(p, count, &a, t->clip);
  free(p);
  return norm;
}

static int slot_of(Bundle *b, const Action *a) { return (int)(a->mb % b->slots); }

/* A step's all-reduce, done when this returns. */
static void allreduce(Run *r, const Action *a) {
  double t = rt_now();
  if (a->zeros) {   /* no copy here: add nothing to the others' sum (zeros kept for the run: no free each step) */
    if (r->zeros_n < a->n) {
      if (r->zeros) r->be->release(r->zeros);
      r->zeros = r->be->alloc(a->n * r->be->elem), r->zeros_n = a->n;
    }
    r->be->zero(r->zeros, a->n);
    r->be->allreduce(r->zeros, a->n, a->axis, 0);
  } else
    r->be->allreduce((char *)r->region[a->region] + a->off * r->be->elem, a->n, a->axis, 0);
  char args[96];
  static const char *axes[] = {"dp", "tp", "pp", "ep"};
  snprintf(args, sizeof args, "\"group\":\"%s\",\"values\":%lld", axes[a->axis], (long long)a->n);
  trace(r, "allreduce", "collective", 1, t, args);
}

static void run_actions(Run *r, const Action *list, int n, const int32_t *rows, double lr,
                        double *gnorm) {
  Bundle *b = r->b;
  for (int i = 0; i < n; i++) {
    const Action *a = &list[i];
    switch (a->kind) {
    case A_ZERO_GRADS: zero_step(r); break;
    case A_ZERO_STATE: r->be->zero(r->region[R_STATE], b->region[R_STATE]); break;
    case A_LOAD:
      r->be->wait_sends(slot_of(b, a));    /* the slot's last sends must be done */
      rt_load_slot(r, rows + a->mb * b->B * (b->T + 1), b->B, slot_of(b, a));
      break;
    case A_RUN_FWD:
      fresh_copies(r);
      fill_slot(r, slot_of(b, a), (int)a->mb);
      run_program(r, b->fwd, 0, b->nfwd, slot_of(b, a));
      r->forwards += r->routing != 0;
      if (list == b->evals) free_slot(r, slot_of(b, a));   /* no backward follows */
      break;
    case A_RUN_BWD:   /* the whole program, or a segment; the slot is free after its last */
      run_program(r, a->mb == r->first_mb && r->bwd_first ? r->bwd_first : b->bwd, a->from, a->to, slot_of(b, a));
      if (a->to == b->nbwd) free_slot(r, slot_of(b, a));
      break;
    case A_WAIT:
      if (r->be->wait_allreduces) r->be->wait_allreduces();
      for (int k = 0; k < r->ndeferred; k++) allreduce(r, r->deferred[k]);
      r->ndeferred = 0;
      break;
    case A_SEND:
    case A_RECV: {
      void *x = r->ptr[(size_t)slot_of(b, a) * b->nvals + a->value];
      int tag = (int)(a->mb % 16000) * 2 + a->grad;
      double t = rt_now();
      int elem = half(r, a->value) ? 2 : r->be->elem;   /* bf16 values travel as bf16 */
      if (a->kind == A_SEND)   /* (send copies out before it returns) */
        r->be->send(x, b->vals[a->value].n, elem, a->peer, tag, a->axis, slot_of(b, a));
      else {
        r->be->recv(x, b->vals[a->value].n, elem, a->peer, tag, a->axis);
        r->t_wait += rt_now() - t;
      }
      char args[128];
      snprintf(args, sizeof args, "\"microbatch\":%lld,\"peer\":%d,\"values\":%lld,\"gradient\":%d", (long long)a->mb,
               a->peer, (long long)b->vals[a->value].n, a->grad);
      trace(r, a->kind == A_SEND ? "send" : "recv", "transfer", 1, t, args);
      break;
    }
    case A_ALLREDUCE:   /* a queued one done at once when tracing (each span its own time) */
      if (!a->async || r->trace) allreduce(r, a);
      else if (!r->be->allreduce_async ||
               !r->be->allreduce_async((char *)r->region[a->region] + a->off * r->be->elem, a->n, a->axis)) {
        r->deferred = realloc(r->deferred, (r->ndeferred + 1) * sizeof *r->deferred);
        if (!r->deferred) rt_die("out of memory");
        r->deferred[r->ndeferred++] = a;
      }
      break;
    case A_OPTIMIZER: {
      r->be->wait_sends(-1);
      double t = rt_now(), clip = b->train.clip, norm;
      if (r->op_time && r->be->time_mark) r->be->time_mark(NUM_OPS);
      unsigned axes = (a->norm_tp ? 1u << AXIS_TP : 0) | (a->norm_pp ? 1u << AXIS_PP : 0) | (a->norm_ep ? 1u << AXIS_EP : 0);
      if (r->be->optimizer && (!axes || r->device_comm)) *gnorm = device_optimizer(r, lr, r->queuing, axes);
      else {
        norm = grad_norm(r, a->norm_tp, a->norm_pp, a->norm_ep), *gnorm = norm;
        rt_adamw(r, lr, clip > 0 && norm > clip ? clip / (norm + 1e-6) : 1.0);
      }
      if (r->op_time && r->be->time_mark) r->be->time_mark(-1);
      else if (r->op_time && r->be->sync) r->be->sync();
      if (r->op_time && !r->be->time_mark) r->op_time[NUM_OPS] += rt_now() - t;
      trace(r, "optimizer", "optimizer", 0, t, "");
      break;
    }
    }
  }
}

/* Whether a step may be queued behind one not yet finished: a backend
 * that queues its work (step_end) and runs the optimizer, and on several
 * ranks moves every collective and transfer on the device (NCCL: watched
 * at the step's end, the gradient norm summed over the groups there), no
 * op timed or traced. */
static bool ahead_ok(Run *r) {   /* (what the bundle and backend allow: once, at rt_new) */
  if (!r->be->step_end || !r->be->step_wait || !r->be->optimizer) return false;
  if (r->b->world > 1 && !(r->device_comm && r->be->watch_at_end)) return false;
  int opt = 0;
  for (int i = 0; i < r->b->nactions; i++) opt += r->b->actions[i].kind == A_OPTIMIZER;
  return opt == 1;
}

bool rt_can_ahead(Run *r) { return r->ahead_ok && !r->op_time && !r->trace; }

/* Steps queued ahead: the host queues step s + 1 while the device runs
 * step s, so the device never waits between steps for the host's reads
 * of the loss and norm, its logging, the next batch's draw and upload
 * and the launches (run 16 measured GPT-2's step 1 ms longer than its
 * work; most of that was the ids' sort, now gone, util.c). A step
 * begun where rt_can_ahead says no runs now, as rt_step. */
void rt_step_begin(Run *r, const int32_t *rows, double lr) {
  if (r->nbegun == 2) rt_die("internal: a third step begun before the first finished");
  bool ahead = rt_can_ahead(r);
  double norm = 0;
  bool watch = ahead && r->b->world > 1;   /* the step's collectives watched at its end */
  r->queuing = ahead;
  if (watch) r->be->watch_at_end(true);
  run_actions(r, r->b->actions, r->b->nactions, rows, lr, &norm);
  if (watch) r->be->watch_at_end(false);
  r->queuing = false;
  int at = r->nbegun++;
  r->begun[at].ahead = ahead;
  if (ahead) r->be->step_end(r->region[R_STATE], r->b->region[R_STATE]);
  else r->begun[at].loss = rt_loss(r), r->begun[at].norm = norm;
}

double rt_step_finish(Run *r, double *gnorm) {
  if (!r->nbegun) rt_die("internal: a step finished that was not begun");
  double loss = r->begun[0].loss;
  *gnorm = r->begun[0].norm;
  r->state_snap = r->begun[0].ahead;
  if (r->state_snap) {
    if (!r->state_host) r->state_host = rt_xmalloc((r->b->region[R_STATE] + 1) * r->be->elem);
    r->be->step_wait(r->state_host, gnorm);
    rt_step_value(r, r->b->loss, &loss);
  }
  r->begun[0] = r->begun[1], r->nbegun--;
  return loss;
}

/* Value v of the state region (MoE's metrics) as the last step finished
 * left it: from the copy its end made where it was queued ahead (the
 * device's state is a later step's by then). */
void rt_step_value(Run *r, int v, double *dst) {
  if (!r->state_snap) {
    rt_get_value(r, v, dst);
    return;
  }
  RtValue *x = &r->b->vals[v];
  for (int64_t i = 0; i < x->n; i++)
    dst[i] = r->be->elem == 8 ? ((double *)r->state_host)[x->off + i] : ((float *)r->state_host)[x->off + i];
}

/* One training step as the schedule's action list says. rows holds the
 * rank's share of the batch: B x microbatches rows of T+1 ids. */
double rt_step(Run *r, const int32_t *rows, double lr, double *gnorm) {
  if (r->nbegun) rt_die("internal: rt_step with a step begun");
  rt_step_begin(r, rows, lr);
  return rt_step_finish(r, gnorm);
}

/* The loss of one batch (forward passes only), summed over the group. */
double rt_eval(Run *r, const int32_t *rows) {
  double unused;
  run_actions(r, r->b->evals, r->b->nevals, rows, 0, &unused);
  r->be->wait_sends(-1);
  return rt_loss(r);
}

void rt_get_param(Run *r, int p, double *dst) {
  if (r->b->params[p].value < 0) rt_die("parameter %s is on another stage", r->b->params[p].name);
  r->be->download(dst, r->ptr[r->b->params[p].value], r->b->params[p].local);
}

void rt_set_param(Run *r, int p, const double *src) {
  if (r->b->params[p].value < 0) rt_die("parameter %s is on another stage", r->b->params[p].name);
  r->be->upload(r->ptr[r->b->params[p].value], src, r->b->params[p].local);
  r->stale = true;
}

void rt_get_grad(Run *r, int p, double *dst) {
  RtValue *w = &r->b->vals[r->b->params[p].value];
  r->be->download(dst, (char *)r->region[R_GRAD] + w->off * r->be->elem, w->n);
}

void rt_get_value(Run *r, int v, double *dst) { r->be->download(dst, wide(r, v, r->ptr[v]), r->b->vals[v].n); }

/* exec.c: the schedule interpreter. It lays out the regions the compiler
 * planned (one allocation each), points every value at its offset, fills
 * the parameters from the counter-based RNG, and runs the step's action
 * list (zero_grads, load, run fwd/bwd, optimizer) through the backend.
 * It never asks which backend it drives. */
#include "lmrt.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

static size_t elem_of(Run *r, int region) {
  return region == R_INPUT ? sizeof(int32_t) : (size_t)r->be->elem;
}

Run *rt_new(Bundle *b, Backend *be) {
  Run *r = rt_xmalloc(sizeof(Run));
  r->b = b, r->be = be;
  for (int i = 0; i < NUM_REGIONS; i++)
    r->region[i] = be->alloc(b->region[i] * elem_of(r, i));
  r->adam_m = be->alloc(b->region[R_PARAM] * be->elem);
  r->adam_v = be->alloc(b->region[R_PARAM] * be->elem);
  r->ptr = rt_xmalloc(b->nvals * sizeof(void *));
  for (int v = 0; v < b->nvals; v++) {
    RtValue *val = &b->vals[v];
    r->ptr[v] = (char *)r->region[val->region] + val->off * elem_of(r, val->region);
  }
  r->inputs = rt_xmalloc(3 * b->B * b->T * sizeof(int32_t));
  return r;
}

void rt_free(Run *r) {
  for (int i = 0; i < NUM_REGIONS; i++) r->be->release(r->region[i]);
  r->be->release(r->adam_m), r->be->release(r->adam_v);
  free(r->ptr), free(r->inputs), free(r);
}

/* Element i of a parameter is a function of (name, seed, i); it is made
 * and uploaded a chunk at a time, so no full host copy is needed. */
void rt_init_params(Run *r, uint64_t seed) {
  Bundle *b = r->b;
  enum { CHUNK = 1 << 16 };
  double *host = rt_xmalloc(CHUNK * sizeof(double));
  for (int p = 0; p < b->nparams; p++) {
    RtParam *pp = &b->params[p];
    uint64_t key = rng_key(pp->name, seed);
    char *dst = r->ptr[pp->value];
    for (int64_t c = 0; c < pp->numel; c += CHUNK) {
      int64_t n = pp->numel - c < CHUNK ? pp->numel - c : CHUNK;
      for (int64_t i = 0; i < n; i++)
        host[i] = !strcmp(pp->init, "ones") ? 1.0 : !strcmp(pp->init, "zeros") ? 0.0
                : pp->std * rng_normal(key, (uint64_t)(c + i));
      r->be->upload(dst + c * r->be->elem, host, n);
    }
  }
  free(host);
  r->be->zero(r->adam_m, b->region[R_PARAM]);
  r->be->zero(r->adam_v, b->region[R_PARAM]);
  r->step = 0;
}

void rt_zero_grads(Run *r) {
  r->be->zero(r->region[R_GRAD], r->b->region[R_GRAD]);
  r->be->zero(r->region[R_STATE], r->b->region[R_STATE]);
}

/* rows: nrows x (T+1) token ids, the microbatch's share of the batch. */
void rt_load_micro(Run *r, const int32_t *rows, int64_t nrows) {
  Bundle *b = r->b;
  int64_t T = b->T, n = nrows * T;
  int32_t *tok = r->inputs, *tgt = tok + n, *pos = tgt + n;
  for (int64_t i = 0; i < nrows; i++)
    for (int64_t t = 0; t < T; t++) {
      tok[i * T + t] = rows[i * (T + 1) + t];
      tgt[i * T + t] = rows[i * (T + 1) + t + 1];
      pos[i * T + t] = (int32_t)t;
    }
  r->be->upload_ids(r->ptr[b->tokens], tok, n);
  r->be->upload_ids(r->ptr[b->targets], tgt, n);
  r->be->upload_ids(r->ptr[b->positions], pos, n);
}

static void run_program(Run *r, const RtInst *prog, int n) {
  void *out[3], *in[5];
  for (int i = 0; i < n; i++) {
    const RtInst *x = &prog[i];
    for (int j = 0; j < 3; j++) out[j] = x->out[j] >= 0 ? r->ptr[x->out[j]] : NULL;
    for (int j = 0; j < 5; j++) in[j] = x->in[j] >= 0 ? r->ptr[x->in[j]] : NULL;
    double t = r->op_time ? rt_now() : 0;
    r->be->run(x, out, in);
    if (r->op_time) r->op_time[x->op] += rt_now() - t;
  }
}

void rt_forward(Run *r) { run_program(r, r->b->fwd, r->b->nfwd); }
void rt_backward(Run *r) { run_program(r, r->b->bwd, r->b->nbwd); }

double rt_loss(Run *r) {
  double l;
  r->be->download(&l, r->ptr[r->b->loss], 1);
  return l;
}

double rt_grad_norm(Run *r) {
  return sqrt(r->be->sumsq(r->region[R_GRAD], r->b->region[R_GRAD]));
}

void rt_adamw(Run *r, double lr, double gscale) {
  Bundle *b = r->b;
  Train *t = &b->train;
  r->step++;
  AdamArgs a = {.lr = lr, .beta1 = t->beta1, .beta2 = t->beta2, .eps = t->eps,
                .bc1 = 1 - pow(t->beta1, (double)r->step),
                .bc2 = 1 - pow(t->beta2, (double)r->step), .gscale = gscale};
  size_t e = r->be->elem;
  for (int p = 0; p < b->nparams; p++) {
    RtParam *pp = &b->params[p];
    RtValue *w = &b->vals[pp->value];
    a.wd = pp->decay ? t->wd : 0.0;
    int64_t off = w->off * e;
    r->be->adamw(r->ptr[pp->value], (char *)r->region[R_GRAD] + off, (char *)r->adam_m + off,
                 (char *)r->adam_v + off, pp->numel, &a);
  }
}

static void run_actions(Run *r, const Action *list, int n, const int32_t *rows, double lr,
                        double *gnorm) {
  Bundle *b = r->b;
  for (int i = 0; i < n; i++) {
    const Action *a = &list[i];
    switch (a->kind) {
    case A_ZERO_GRADS: rt_zero_grads(r); break;
    case A_ZERO_STATE: r->be->zero(r->region[R_STATE], b->region[R_STATE]); break;
    case A_LOAD: rt_load_micro(r, rows + a->mb * b->B * (b->T + 1), b->B); break;
    case A_RUN_FWD: rt_forward(r); break;
    case A_RUN_BWD: rt_backward(r); break;
    case A_ALLREDUCE:
      r->be->allreduce((char *)r->region[a->region] + a->off * r->be->elem, a->n, a->axis);
      break;
    case A_OPTIMIZER: {
      double t = rt_now(), norm = rt_grad_norm(r), clip = b->train.clip;
      *gnorm = norm;
      rt_adamw(r, lr, clip > 0 && norm > clip ? clip / (norm + 1e-6) : 1.0);
      if (r->op_time) r->op_time[NUM_OPS] += rt_now() - t;
      break;
    }
    }
  }
}

/* One training step as the schedule's action list says. rows holds the
 * rank's share of the batch: B x microbatches rows of T+1 ids. */
double rt_step(Run *r, const int32_t *rows, double lr, double *gnorm) {
  run_actions(r, r->b->actions, r->b->nactions, rows, lr, gnorm);
  return rt_loss(r);
}

/* The loss of one batch (forward passes only), summed over the group. */
double rt_eval(Run *r, const int32_t *rows) {
  double unused;
  run_actions(r, r->b->evals, r->b->nevals, rows, 0, &unused);
  return rt_loss(r);
}

void rt_get_param(Run *r, int p, double *dst) {
  r->be->download(dst, r->ptr[r->b->params[p].value], r->b->params[p].numel);
}

void rt_set_param(Run *r, int p, const double *src) {
  r->be->upload(r->ptr[r->b->params[p].value], src, r->b->params[p].numel);
}

void rt_get_grad(Run *r, int p, double *dst) {
  RtValue *w = &r->b->vals[r->b->params[p].value];
  r->be->download(dst, (char *)r->region[R_GRAD] + w->off * r->be->elem, w->n);
}

void rt_get_value(Run *r, int v, double *dst) {
  r->be->download(dst, r->ptr[v], r->b->vals[v].n);
}

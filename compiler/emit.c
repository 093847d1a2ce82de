/* emit.c: writes the bundle, a folder the runtime loads:
 *   manifest.txt   model, dims, plan, train settings, parameters
 *   rank<N>.sched  one rank's values (region, offset, shape) and its
 *                  programs (fwd, bwd; cast: the bf16 copies of the
 *                  weights, run at load) and per-step action list
 *   kernels.cu     the CUDA kernels its programs need (kernels.c)
 * Both are plain text, deterministic (ids, no pointers or times), and
 * written to a temporary name then renamed, so a bundle is never half
 * written. --dump=sched prints the same schedule text. */
#include "lmc.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *region_names[] = {"act", "param", "grad", "input", "state", "copy"};

/* The shortest text that reads back as the same double. */
static const char *num(double v) {
  static char buf[16][40];
  static int k;
  char *b = buf[k++ & 15];
  for (int prec = 6; prec <= 17; prec++) {
    snprintf(b, 40, "%.*g", prec, v);
    if (strtod(b, NULL) == v) break;
  }
  return b;
}

static void print_sizes(FILE *out, const Shape *s) {
  if (s->rank == 0) fprintf(out, "1");
  for (int i = 0; i < s->rank; i++)
    fprintf(out, "%s%lld", i ? "x" : "", (long long)s->size[i]);
}

/* The index of v's dim that tp splits, or -1. */
static int split_dim(Program *p, Value *v) {
  for (int i = 0; i < v->shape.rank; i++) {
    int d = v->shape.dim[i];
    if (d >= 0 && p->dims[d].axis == AX_TP && p->s.mesh[AX_TP] > 1) return i;
  }
  return -1;
}

/* A parameter's whole shape (what a checkpoint stores), not one rank's. */
static void print_global_sizes(FILE *out, Program *p, const Shape *s) {
  for (int i = 0; i < s->rank; i++)
    fprintf(out, "%s%lld", i ? "x" : "", (long long)(s->dim[i] >= 0 ? p->dims[s->dim[i]].size : s->size[i]));
}

static int s_stage;   /* the stage being printed */
static bool s_bytes;  /* its activations have a byte plan too (bf16 storage) */

static void print_value(FILE *out, Program *p, Value *v) {
  fprintf(out, "value %%%d %s off=%lld n=%lld shape=", v->id, region_names[v->kind],
          (long long)v->offset, (long long)shape_numel(&v->shape));
  print_sizes(out, &v->shape);
  if (v->kind == V_PARAM && split_dim(p, v) >= 0) fprintf(out, " split=%d", split_dim(p, v));
  if (v->kind == V_PARAM && v->esplit) fprintf(out, " esplit=1");
  if (v->dtype == DT_BF16) fprintf(out, " dtype=bf16");
  if (v->kind == V_ACT && s_bytes) fprintf(out, " boff=%lld", (long long)v->boffset);
  if (v->kind == V_PARAM && v->stages != ((uint64_t)1 << v->stage) && s_stage != v->stage)
    fprintf(out, " copy=1");   /* another stage holds the primary copy */
  fprintf(out, " ");
  ir_print_shape(out, p, &v->shape);
  if (v->is_int) fprintf(out, " i32");
  if (v->name) fprintf(out, " %s", v->name);
  else if (v->of && v->of->name) fprintf(out, " %s.grad", v->of->name);
  fprintf(out, "\n");
}

static void print_inst(FILE *out, Inst *in);

/* A group: its kernel, launch and members (group.c), the members one
 * level in. */
static void print_fused(FILE *out, Inst *f) {
  fprintf(out, "  fused kernel=%s grid=%lld block=%lld", f->kernel, (long long)ir_get(f, "grid"),
          (long long)ir_get(f, "block"));
  if (ir_has(f, "scratch"))   /* a second kernel after the first (the same values) and a scratch buffer */
    fprintf(out, " finish=%s_finish fgrid=%lld scratch=%lld", f->kernel, (long long)ir_get(f, "fgrid"),
            (long long)ir_get(f, "scratch"));
  fprintf(out, " body=%d\n", f->nbody);
  for (int m = 0; m < f->nbody; m++) fprintf(out, "  "), print_inst(out, f->body[m]);
}

static void print_inst(FILE *out, Inst *in) {
  if (in->op == OP_FUSED) return print_fused(out, in);
  fprintf(out, "  %s out=", op_names[in->op]);
  for (int i = 0; i < in->nout; i++) {
    if (i) fputc(',', out);
    if (in->out[i]) fprintf(out, "%%%d%s", in->out[i]->id, in->acc[i] ? "+" : "");
    else fputc('_', out);
  }
  fprintf(out, " in=");
  for (int i = 0; i < in->nin; i++)
    fprintf(out, "%s%%%d", i ? "," : "", in->in[i]->id);
  for (int i = 0; i < in->nattr; i++) {
    double v = in->aval[i];
    if (!strcmp(in->akey[i], "group"))   /* a collective's mesh axis */
      fprintf(out, " group=%s", axis_names[(int)v]);
    else if (v == (double)(long long)v)
      fprintf(out, " %s=%lld", in->akey[i], (long long)v);
    else
      fprintf(out, " %s=%s", in->akey[i], num(v));
  }
  fprintf(out, "\n");
}

static const char *axis_name(int a) { return axis_names[a]; }

static void print_action(FILE *out, Action *a) {
  static const char *regions[] = {"act", "param", "grad", "input", "state"};
  switch (a->kind) {
  case ACT_ZERO_GRADS: fprintf(out, "  zero_grads\n"); break;
  case ACT_ZERO_STATE: fprintf(out, "  zero_state\n"); break;
  case ACT_LOAD: fprintf(out, "  load mb=%d\n", a->mb); break;
  case ACT_FWD: fprintf(out, "  run fwd mb=%d\n", a->mb); break;
  case ACT_BWD:
    if (a->to) fprintf(out, "  run bwd mb=%d from=%d to=%d\n", a->mb, a->from, a->to);
    else fprintf(out, "  run bwd mb=%d\n", a->mb);
    break;
  case ACT_WAIT: fprintf(out, "  wait allreduce group=%s\n", axis_name(a->axis)); break;
  case ACT_SEND:
  case ACT_RECV:
    fprintf(out, "  %s %s %%%d %s=%d mb=%d group=pp\n", a->kind == ACT_SEND ? "send" : "recv",
            a->grad ? "grad" : "act", a->v->id, a->kind == ACT_SEND ? "to" : "from", a->peer, a->mb);
    break;
  case ACT_ALLREDUCE:
    if (a->zeros) fprintf(out, "  allreduce zeros n=%lld group=%s\n", (long long)a->n, axis_name(a->axis));
    else fprintf(out, "  allreduce %s off=%lld n=%lld group=%s%s\n", regions[a->region], (long long)a->off,
                 (long long)a->n, axis_name(a->axis), a->async ? " async" : "");
    break;
  case ACT_OPTIMIZER: {
    const char *g[3] = {a->norm_tp ? "tp" : NULL, a->norm_pp ? "pp" : NULL, a->norm_ep ? "ep" : NULL};
    fprintf(out, "  optimizer");
    for (int i = 0, first = 1; i < 3; i++)
      if (g[i]) fprintf(out, "%s%s", first ? " norm=" : ",", g[i]), first = 0;
    fprintf(out, "\n");
    break;
  }
  }
}

void emit_schedule(FILE *out, Sched *s) {
  Graph *g = s->g;
  Program *p = g->prog;
  fprintf(out, "lmc-schedule 1\nmodel %s\nrank %d world %d dp %d tp %d pp %d ep %d\n",
          p->model->name, s->rank, s->world, s->coord[AX_DP], s->coord[AX_TP], s->coord[AX_PP],
          s->coord[AX_EP]);
  fprintf(out, "stage %d of %d schedule %s microbatches %lld slots %d\n", s->part->stage,
          g->nstages, p->s.schedule, (long long)p->s.microbatches, s->slots);
  for (int r = 0; r < NUM_KINDS; r++)   /* the copies' only under bf16 */
    if (r != V_COPY || s->region[r]) fprintf(out, "region %s %lld\n", region_names[r], (long long)s->region[r]);
  if (s->act_bytes) fprintf(out, "bytes act %lld\n", (long long)s->act_bytes);   /* bf16 storage's plan */
  s_stage = s->part->stage, s_bytes = s->act_bytes > 0;
  for (int i = 0; i < g->nvals; i++)
    if (sched_has(s, g->vals[i])) print_value(out, p, g->vals[i]);
  fprintf(out, "inputs tokens=%%%d targets=%%%d positions=%%%d loss=%%%d\n",
          g->tokens->id, g->targets->id, g->positions->id, g->loss->id);
  Part *pt = s->part;
  Inst **lists[] = {pt->fwd, pt->bwd};
  int counts[] = {pt->nfwd, pt->nbwd};
  for (int l = 0; l < 2; l++) {   /* with the groups generated kernels run */
    int n;
    Inst **list = group_list(g, lists[l], counts[l], &n);
    fprintf(out, "program %s %d\n", l ? "bwd" : "fwd", n);
    for (int i = 0; i < n; i++) print_inst(out, list[i]);
  }
  if (pt->ncasts) fprintf(out, "program cast %d\n", pt->ncasts);
  for (int i = 0; i < pt->ncasts; i++) print_inst(out, pt->casts[i]);
  sched_actions(s);
  fprintf(out, "step\n");
  for (int i = 0; i < s->nstep; i++) print_action(out, &s->step[i]);
  fprintf(out, "end\neval\n");
  for (int i = 0; i < s->neval; i++) print_action(out, &s->eval[i]);
  fprintf(out, "end\n");
}

/* The whole vocabulary: the last dim of the loss's logits. */
static int64_t vocab(Graph *g) {
  if (g->loss->def->op == OP_HEAD_XENT || g->loss->def->op == OP_HEAD_DL) return (int64_t)ir_get(g->loss->def, "n");
  Value *logits = g->loss->def->in[0];
  int d = logits->shape.dim[2];
  return d >= 0 ? g->prog->dims[d].size : logits->shape.size[2];
}

void emit_manifest(FILE *out, Sched *s) {
  Graph *g = s->g;
  Program *p = g->prog;
  Settings *t = &p->s;
  fprintf(out, "lmc-bundle 1\nmodel %s\nworld %d\nvocab %lld\ndims", p->model->name,
          s->world, (long long)vocab(g));
  for (int i = 0; i < p->ndims; i++)
    fprintf(out, " %s=%lld", p->dims[i].name, (long long)p->dims[i].size);
  fprintf(out, "\nmesh dp=%lld tp=%lld pp=%lld ep=%lld schedule=%s microbatches=%lld\n",
          (long long)t->mesh[0], (long long)t->mesh[1], (long long)t->mesh[2],
          (long long)t->mesh[3], t->schedule, (long long)t->microbatches);
  fprintf(out, "train batch=%lld seq=%lld steps=%lld warmup=%lld seed=%lld eval_every=%lld "
          "eval_batches=%lld save_every=%lld lr=%s min_lr=%s beta1=%s beta2=%s "
          "eps=%s wd=%s clip=%s val_fraction=%s decay=%s\n",
          (long long)t->batch, (long long)t->seq, (long long)t->steps, (long long)t->warmup,
          (long long)t->seed, (long long)t->eval_every, (long long)t->eval_batches,
          (long long)t->save_every, num(t->lr), num(t->min_lr), num(t->beta1), num(t->beta2),
          num(t->eps), num(t->wd), num(t->clip), num(t->val_fraction), t->decay);
  fprintf(out, "data %s\n", t->data);
  if (strcmp(t->precision, "fp32")) fprintf(out, "precision %s\n", t->precision);
  int64_t total = 0, active = 0;   /* active: what one token runs (top k of E experts) */
  for (int i = 0; i < g->nparams; i++) {
    Value *v = g->params[i];
    fprintf(out, "param %s shape=", v->name);
    print_global_sizes(out, p, &v->shape);
    fprintf(out, " init=%s std=%s decay=%d\n", v->init, num(v->init_std), v->shape.rank >= 2);
    int64_t n = 1;
    for (int k = 0; k < v->shape.rank; k++) n *= v->shape.dim[k] >= 0 ? p->dims[v->shape.dim[k]].size : v->shape.size[k];
    total += n, active += v->top_k ? n / p->dims[v->shape.dim[0]].size * v->top_k : n;
  }
  fprintf(out, "params %lld\n", (long long)total);
  if (active < total) fprintf(out, "active %lld\n", (long long)active);
  fprintf(out, "end\n");
}

static void mkdirs(const char *dir) {
  char *p = arena_strdup(dir);
  for (char *q = p + 1; *q; q++)
    if (*q == '/') {
      *q = 0;
      mkdir(p, 0777);
      *q = '/';
    }
  if (mkdir(p, 0777) != 0 && errno != EEXIST)
    diag_fatal("emit-io", "cannot create bundle folder '%s': %s", dir, strerror(errno));
}

static void write_kernels(FILE *out, Sched *s) { kernels_emit(out, s->g); }

static void write_file(const char *dir, const char *name, Sched *s,
                       void (*fn)(FILE *, Sched *)) {
  const char *path = arena_printf("%s/%s", dir, name);
  const char *tmp = arena_printf("%s.tmp.%d", path, (int)getpid());
  FILE *f = fopen(tmp, "w");
  if (!f)
    diag_fatal("emit-io", "cannot write '%s': %s", tmp, strerror(errno));
  fn(f, s);
  if (fflush(f) != 0 || fsync(fileno(f)) != 0 || fclose(f) != 0 || rename(tmp, path) != 0) {
    unlink(tmp);
    diag_fatal("emit-io", "cannot write '%s': %s", path, strerror(errno));
  }
}

void emit_bundle(Sched *s, const char *dir) {
  mkdirs(dir);
  write_file(dir, "manifest.txt", s, emit_manifest);
  write_file(dir, "kernels.cu", s, write_kernels);
  for (int stage = 0; stage < s->g->nstages; stage++) {
    sched_stage(s, stage);
    for (int r = 0; r < s->world; r++) {
      sched_set_rank(s, r);
      if (s->coord[AX_PP] == stage)
        write_file(dir, arena_printf("rank%d.sched", r), s, emit_schedule);
    }
  }
  sched_set_rank(s, 0);
  sched_stage(s, 0);
}

/* bundle.c: reads a bundle written by lmc: manifest.txt (model, train
 * settings, parameters) and rank<N>.sched (values, programs). Any line
 * that does not parse ends the run with the file and line named. */
#include "lmrt.h"
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

typedef struct Reader {
  FILE *f;
  const char *path;
  int line;
  char buf[8192];
} Reader;

_Noreturn static void bad(Reader *r, const char *what) {
  if (r->f) fclose(r->f), r->f = NULL;   /* for a caller that recovers (the fuzz target) */
  rt_die("%s:%d: %s (is this an lmc bundle? recompile it with lmc)", r->path, r->line, what);
}

static bool next_line(Reader *r) {
  if (!fgets(r->buf, sizeof r->buf, r->f)) return false;
  r->line++;
  r->buf[strcspn(r->buf, "\n")] = 0;
  return true;
}

static void open_reader(Reader *r, const char *dir, const char *name, const char *magic) {
  static char path[2][1200];
  static int k;
  char *p = path[k++ & 1];
  snprintf(p, 1200, "%s/%s", dir, name);
  r->path = p, r->line = 0;
  r->f = fopen(p, "r");
  if (!r->f) rt_die("cannot read bundle file '%s' (run lmc SPEC -o %s first)", p, dir);
  if (!next_line(r) || strncmp(r->buf, magic, strlen(magic))) bad(r, "wrong header");
}

/* The value of KEY=... in a line of space-separated words. */
static const char *field(const char *line, const char *key) {
  size_t n = strlen(key);
  for (const char *p = line; (p = strstr(p, key)); p += n)
    if ((p == line || p[-1] == ' ') && p[n] == '=')
      return p + n + 1;
  return NULL;
}

static int region_of(struct Reader *r, const char *s);

static int64_t ifield(Reader *r, const char *key) {
  const char *v = field(r->buf, key);
  if (!v) bad(r, "missing field");
  char *end;
  long long x = strtoll(v, &end, 10);
  if (end == v || (*end && *end != ' ')) bad(r, "bad integer");
  return x;
}

static double ffield(Reader *r, const char *key) {
  const char *v = field(r->buf, key);
  if (!v) bad(r, "missing field");
  char *end;
  double x = strtod(v, &end);
  if (end == v || (*end && *end != ' ')) bad(r, "bad number");
  return x;
}

static void sfield(Reader *r, const char *key, char *dst, size_t cap) {
  const char *v = field(r->buf, key);
  if (!v) bad(r, "missing field");
  size_t n = strcspn(v, " ");
  if (n >= cap) bad(r, "field too long");
  memcpy(dst, v, n);
  dst[n] = 0;
}

static int parse_shape(Reader *r, const char *s, int64_t *shape) {
  int n = 0;
  if (!s) bad(r, "missing shape");
  while (*s && *s != ' ') {
    if (n == 6) bad(r, "shape has too many dims");
    char *end;
    shape[n++] = strtoll(s, &end, 10);
    if (end == s || shape[n - 1] <= 0) bad(r, "bad shape");
    s = *end == 'x' ? end + 1 : end;
  }
  return n;
}

static void read_train(Reader *r, Train *t) {
  t->batch = ifield(r, "batch"), t->seq = ifield(r, "seq"), t->steps = ifield(r, "steps");
  t->warmup = ifield(r, "warmup"), t->seed = ifield(r, "seed");
  t->eval_every = ifield(r, "eval_every"), t->eval_batches = ifield(r, "eval_batches");
  t->save_every = ifield(r, "save_every");
  t->lr = ffield(r, "lr"), t->min_lr = ffield(r, "min_lr");
  t->beta1 = ffield(r, "beta1"), t->beta2 = ffield(r, "beta2"), t->eps = ffield(r, "eps");
  t->wd = ffield(r, "wd"), t->clip = ffield(r, "clip"), t->val_fraction = ffield(r, "val_fraction");
  sfield(r, "decay", t->decay, sizeof t->decay);
}

static void read_param(Reader *r, Bundle *b) {
  RtParam *p = &b->params[b->nparams++];
  if (sscanf(r->buf, "param %127s", p->name) != 1) bad(r, "bad param line");
  const char *s = field(r->buf, "shape");
  if (!s) bad(r, "missing shape");
  p->rank = parse_shape(r, s, p->shape);
  p->numel = 1;
  for (int i = 0; i < p->rank; i++) p->numel *= p->shape[i];
  sfield(r, "init", p->init, sizeof p->init);
  p->std = ffield(r, "std");
  p->decay = ifield(r, "decay");
  p->value = p->copy16 = -1;
}

static void read_manifest(Bundle *b, const char *dir) {
  Reader r;
  open_reader(&r, dir, "manifest.txt", "lmc-bundle 1");
  int cap = 0;
  bool end = false;
  while (!end && next_line(&r)) {
    char *l = r.buf;
    if (!strncmp(l, "model ", 6)) snprintf(b->model, sizeof b->model, "%.127s", l + 6);
    else if (!strncmp(l, "world ", 6)) b->world = atoi(l + 6);
    else if (!strncmp(l, "vocab ", 6)) b->vocab = atoll(l + 6);
    else if (!strncmp(l, "dims ", 5)) b->B = ifield(&r, "B"), b->T = ifield(&r, "T");
    else if (!strncmp(l, "mesh ", 5)) {
      b->train.microbatches = ifield(&r, "microbatches");
      b->mesh[0] = ifield(&r, "dp"), b->mesh[1] = ifield(&r, "tp");
      b->mesh[2] = ifield(&r, "pp"), b->mesh[3] = ifield(&r, "ep");
    }
    else if (!strncmp(l, "train ", 6)) read_train(&r, &b->train);
    else if (!strncmp(l, "data ", 5) || !strcmp(l, "data")) snprintf(b->train.data, sizeof b->train.data, "%.1023s", l[4] ? l + 5 : "");
    else if (!strncmp(l, "param ", 6)) {
      if (b->nparams == cap) {
        cap = cap ? 2 * cap : 64;
        b->params = realloc(b->params, cap * sizeof(RtParam));
        if (!b->params) rt_die("out of memory");
      }
      read_param(&r, b);
    } else if (!strncmp(l, "params ", 7)) b->nparam_elems = b->nparam_active = atoll(l + 7);
    else if (!strncmp(l, "active ", 7)) b->nparam_active = atoll(l + 7);
    else if (!strcmp(l, "precision bf16")) b->bf16 = true;
    else if (!strcmp(l, "end")) end = true;
    else bad(&r, "unknown line");
  }
  fclose(r.f), r.f = NULL;
  if (!end) bad(&r, "truncated manifest (no 'end' line)");
  if (b->vocab <= 0 || b->B <= 0 || b->T <= 0 || b->nparams == 0 || b->train.batch <= 0)
    bad(&r, "incomplete manifest");
}

RtInst rt_inst(int op) {
  RtInst x;
  memset(&x, 0, sizeof x);
  x.op = op;
  for (int i = 0; i < 3; i++) x.out[i] = -1;
  for (int i = 0; i < RT_MAX_IN; i++) x.in[i] = -1;
  return x;
}

static Bundle *cur_bundle;   /* whose values parse_ids checks */

static void parse_ids(Reader *r, const char *s, int *ids, bool *acc, int max, int nvals) {
  int n = 0;
  for (int i = 0; i < max; i++) ids[i] = -1;
  if (!s) bad(r, "missing operand list");
  while (*s && *s != ' ') {
    if (n == max) bad(r, "too many operands");
    if (*s == '_') { s++; n++; }
    else {
      if (*s != '%') bad(r, "bad operand");
      char *end;
      ids[n] = strtol(s + 1, &end, 10);
      if (ids[n] < 0 || ids[n] >= nvals || !cur_bundle->vals[ids[n]].present) bad(r, "operand out of range");
      s = end;
      if (*s == '+') { if (acc) acc[n] = true; s++; }
      n++;
    }
    if (*s == ',') s++;
  }
}

static double opt_f(Reader *r, const char *key, double dflt) {
  return field(r->buf, key) ? ffield(r, key) : dflt;
}

static int axis_of(Reader *r, const char *s);

static void read_fused(Reader *r, Bundle *b, RtInst *x);
static void verify_inst(Reader *r, Bundle *b, const RtInst *x);

static void read_inst(Reader *r, Bundle *b, RtInst *in) {
  char name[64];
  if (sscanf(r->buf, " %63s", name) != 1) bad(r, "bad instruction");
  in->op = -1;
  for (int i = 0; i < NUM_OPS; i++)
    if (!strcmp(rt_op_names[i], name)) in->op = i;
  if (in->op < 0) bad(r, "unknown op");
  if (in->op == OP_FUSED) return read_fused(r, b, in);
  const char *o = field(r->buf, "out"), *i = field(r->buf, "in");
  if (!o || !i) bad(r, "instruction without out= or in=");
  parse_ids(r, o, in->out, in->acc, 3, b->nvals);
  parse_ids(r, i, in->in, NULL, RT_MAX_IN, b->nvals);
  in->m = opt_f(r, "m", 0), in->n = opt_f(r, "n", 0), in->k = opt_f(r, "k", 0);
  in->d = opt_f(r, "d", 0), in->v = opt_f(r, "v", 0), in->b = opt_f(r, "b", 0);
  in->t = opt_f(r, "t", 0), in->h = opt_f(r, "h", 0), in->g = opt_f(r, "g", 0);
  in->nb = opt_f(r, "nb", 0), in->ta = opt_f(r, "ta", 0), in->tb = opt_f(r, "tb", 0);
  in->eps = opt_f(r, "eps", 0), in->theta = opt_f(r, "theta", 0), in->scale = opt_f(r, "scale", 0);
  in->red = opt_f(r, "op", 0), in->bg = opt_f(r, "bg", 0);
  in->axis = field(r->buf, "group") ? axis_of(r, field(r->buf, "group")) : AXIS_TP;
  in->e = opt_f(r, "e", 0), in->top = opt_f(r, "top", 0), in->seg = opt_f(r, "seg", 0), in->ng = opt_f(r, "ng", 0);
  in->rn = opt_f(r, "rn", 0), in->aux = opt_f(r, "aux", 0), in->zl = opt_f(r, "zl", 0);
  in->share = opt_f(r, "share", 0);
  if (opt_f(r, "vsplit", 0)) in->v0 = (int64_t)b->coord[1] * in->v;   /* tp rank x rows */
}

static void read_value(Reader *r, Bundle *b) {
  int id;
  char region[16];
  /* ids are global, so a rank's have gaps, but never of a million values */
  if (sscanf(r->buf, "value %%%d %15s", &id, region) != 2 || id < b->nvals || id > b->nvals + 1000000)
    bad(r, "bad value line");
  b->vals = realloc(b->vals, (id + 1) * sizeof(RtValue));
  if (!b->vals) rt_die("out of memory");
  memset(b->vals + b->nvals, 0, (id + 1 - b->nvals) * sizeof(RtValue));
  b->nvals = id + 1;
  RtValue *v = &b->vals[id];
  v->present = true;
  v->region = region_of(r, strstr(r->buf, region));
  v->off = ifield(r, "off"), v->n = ifield(r, "n");
  v->rank = parse_shape(r, field(r->buf, "shape"), v->shape);
  v->split = field(r->buf, "split") ? (int)ifield(r, "split") : -1;
  v->copy = field(r->buf, "copy") != NULL;
  v->esplit = field(r->buf, "esplit") != NULL;
  const char *dt = field(r->buf, "dtype");
  if (dt && strncmp(dt, "bf16", 4)) bad(r, "unknown dtype");
  v->bf16 = dt != NULL;
  if (v->split >= v->rank) bad(r, "bad split");
  if (v->off < 0 || v->n <= 0 || v->off + v->n > b->region[v->region]) bad(r, "value outside its region");
  v->boff = -1;
  if (v->region == R_ACT && b->bf16) {   /* its place in the byte plan */
    if (!field(r->buf, "boff") || !b->act_bytes) bad(r, "an activation without its byte offset (bf16 storage)");
    v->boff = ifield(r, "boff");
    if (v->boff < 0 || v->boff % 16 || v->boff + v->n * (v->bf16 ? 2 : 4) > b->act_bytes)
      bad(r, "value outside its region's byte plan");
  }
  const char *last = strrchr(r->buf, ' ');
  if (last && last[1] != '[' && strcmp(last + 1, "i32")) snprintf(v->name, sizeof v->name, "%s", last + 1);
}

/* The MoE ops' operands; x->e is the experts on this rank in the expert
 * GEMMs (segments seg), all of them elsewhere. */
static void moe_needs(const RtInst *x, int64_t in[RT_MAX_IN], int64_t out[3]) {
  int64_t nk = x->n * x->top, md = x->m * x->d, mf = x->m * x->n, w = x->e * x->n * x->d;
  switch (x->op) {
  case OP_MOE_ROUTE: in[0] = x->n * x->e, out[0] = out[1] = nk, out[2] = 2 * x->e + 1; break;
  case OP_MOE_LOSS: in[0] = 2 * x->e + 1, out[0] = 1, out[1] = 4; break;
  case OP_MOE_DISPATCH: in[0] = x->n * x->d, in[1] = nk, out[0] = nk * x->d, out[1] = x->e, out[2] = nk; break;
  case OP_MOE_UP: in[0] = md, in[1] = in[2] = w, in[3] = x->seg, out[0] = mf, out[1] = 2 * mf; break;
  case OP_MOE_UP_GELU: in[0] = md, in[1] = w, in[2] = x->seg, out[0] = out[1] = mf; break;
  case OP_MOE_DOWN: in[0] = mf, in[1] = w, in[2] = x->seg, out[0] = md; break;
  case OP_MOE_COMBINE: in[0] = nk * x->d, in[1] = in[2] = nk, out[0] = x->n * x->d; break;
  /* the all-to-alls: m rows to send, seg peers, each of which may send m */
  case OP_MOE_A2A: in[0] = md, in[1] = x->e, out[0] = x->seg * md, out[1] = x->e; break;
  case OP_MOE_A2A_REV: in[0] = x->seg * md, in[1] = in[2] = x->e, out[0] = md; break;
  case OP_MOE_ROUTE_BWD: in[0] = in[2] = nk, in[1] = x->n * x->e, in[3] = 2 * x->e + 1, out[0] = x->n * x->e; break;
  case OP_MOE_DISPATCH_BWD: in[0] = nk * x->d, in[1] = nk, out[0] = x->n * x->d; break;
  case OP_MOE_UP_BWD:
    in[0] = mf, in[1] = md, in[2] = in[3] = w, in[4] = x->seg, in[5] = 2 * mf, out[0] = md, out[1] = out[2] = w;
    break;
  case OP_MOE_UP_GELU_BWD: in[0] = mf, in[1] = md, in[2] = w, in[3] = x->seg, in[4] = mf, out[0] = md, out[1] = w; break;
  case OP_MOE_DOWN_BWD: in[0] = md, in[1] = mf, in[2] = w, in[3] = x->seg, out[0] = mf, out[1] = w; break;
  case OP_MOE_COMBINE_BWD: in[0] = x->n * x->d, in[1] = nk * x->d, in[2] = in[3] = nk, out[0] = nk * x->d, out[1] = nk; break;
  }
}

/* What a kernel will touch: elements of each operand (0: not an operand),
 * and which operands are token ids. A schedule that disagrees with its
 * values is rejected here rather than read or written out of bounds. */
static void needs(const RtInst *x, int64_t in[RT_MAX_IN], int64_t out[3], bool ids[RT_MAX_IN]) {
  int64_t bthk = x->b * x->t * x->h * x->k, btgk = x->b * x->t * x->g * x->k, nd = x->n * x->d;
  for (int i = 0; i < RT_MAX_IN; i++) in[i] = 0, ids[i] = false;
  for (int i = 0; i < 3; i++) out[i] = 0;
  switch (x->op) {
  case OP_EMBED: out[0] = nd, in[0] = x->n, ids[0] = true, in[1] = x->v * x->d; break;
  case OP_EMBED_BWD: out[0] = x->v * x->d, in[0] = nd, in[1] = x->n, ids[1] = true; break;
  case OP_MATMUL: out[0] = x->m * x->n, in[0] = x->m * x->k, in[1] = x->k * x->n; break;
  case OP_MATMUL_BIAS: out[0] = x->m * x->n, in[0] = x->m * x->k, in[1] = x->k * x->n, in[2] = x->n; break;
  case OP_MATMUL_BIAS_GELU:
    out[0] = out[1] = x->m * x->n, in[0] = x->m * x->k, in[1] = x->k * x->n, in[2] = x->n;
    break;
  case OP_MATMUL_DGELU: out[0] = in[2] = x->m * x->n, in[0] = x->m * x->k, in[1] = x->k * x->n; break;
  case OP_RMSNORM: out[0] = in[0] = nd, out[1] = x->n, in[1] = x->d; break;
  case OP_RMSNORM_BWD: out[0] = in[0] = in[1] = nd, out[1] = in[2] = x->d, in[3] = x->n; break;
  case OP_LAYERNORM: out[0] = in[0] = nd, out[1] = out[2] = x->n, in[1] = in[2] = x->d; break;
  case OP_LAYERNORM_BWD:
    out[0] = in[0] = in[1] = nd, out[1] = out[2] = in[2] = x->d, in[3] = in[4] = x->n;
    break;
  case OP_ROPE: case OP_ROPE_BWD: out[0] = in[0] = bthk; break;
  case OP_ATTENTION:
    out[0] = in[0] = bthk, in[1] = in[2] = btgk, out[1] = x->b * x->h * x->t;
    break;
  case OP_ATTENTION_BWD:
    out[0] = in[0] = in[1] = bthk, out[1] = out[2] = in[2] = in[3] = btgk;
    in[4] = x->b * x->h * x->t, in[5] = bthk;
    break;
  case OP_SILU: case OP_GELU: out[0] = in[0] = x->n; break;
  case OP_MUL: case OP_SWIGLU: out[0] = in[0] = in[1] = x->n; break;
  case OP_ADD: out[0] = in[0] = x->n, in[1] = x->nb; break;
  case OP_SILU_BWD: case OP_GELU_BWD: out[0] = in[0] = in[1] = x->n; break;
  case OP_MUL_BWD: case OP_SWIGLU_BWD: out[0] = out[1] = in[0] = in[1] = in[2] = x->n; break;
  case OP_ADD_BWD: out[0] = in[0] = x->n, out[1] = x->nb; break;
  case OP_XENT: out[0] = 1, in[0] = x->n * x->v, in[1] = x->n, ids[1] = true; break;
  case OP_XENT_BWD: out[0] = in[0] = x->n * x->v, in[1] = x->n, ids[1] = true; break;
  case OP_ALLREDUCE: case OP_CAST: out[0] = in[0] = x->n; break;
  case OP_XENT_MAX: out[0] = x->n, in[0] = x->n * x->v; break;
  case OP_XENT_STATS:
    out[0] = out[1] = in[2] = x->n, in[0] = x->n * x->v, in[1] = x->n, ids[1] = true;
    break;
  case OP_XENT_LOSS:
    out[0] = 1, in[0] = x->n * x->v, in[1] = in[2] = in[3] = in[4] = x->n, ids[1] = true;
    break;
  case OP_XENT_TP_BWD:
    out[0] = in[0] = x->n * x->v, in[1] = in[2] = in[3] = x->n, ids[1] = true;
    break;
  case OP_HEAD_XENT:
    out[0] = 1, out[1] = x->m, in[0] = x->m * x->k, in[1] = x->n * x->k, in[2] = x->m, ids[2] = true;
    break;
  case OP_MATMUL_BGRAD:
    out[0] = x->m * x->n, in[0] = x->m * x->k, in[1] = x->k * x->n, out[1] = x->bg ? x->n : x->m;
    break;
  case OP_HEAD_DL:
    out[0] = 1, out[1] = x->m * x->n, in[0] = x->m * x->k, in[1] = x->n * x->k, in[2] = x->m, ids[2] = true;
    break;
  case OP_HEAD_XENT_BWD:
    out[0] = in[0] = x->m * x->k, out[1] = in[1] = x->n * x->k, in[2] = in[3] = x->m, ids[2] = true;
    break;
  default: moe_needs(x, in, out); break;
  }
}

static bool sane(const RtInst *x) {
  int64_t v[] = {x->m, x->n, x->k, x->d, x->v, x->b, x->t, x->h, x->g, x->nb};
  for (size_t i = 0; i < sizeof v / sizeof *v; i++)
    if (v[i] < 0 || v[i] > ((int64_t)1 << 36)) return false;
  if (x->op == OP_ATTENTION || x->op == OP_ATTENTION_BWD)
    if (x->g <= 0 || x->h % x->g || x->t <= 0 || x->k <= 0) return false;
  if ((x->op == OP_ROPE || x->op == OP_ROPE_BWD) && (x->k <= 0 || x->k % 2 || x->t <= 0)) return false;
  if ((x->op == OP_ADD || x->op == OP_ADD_BWD) && (x->nb <= 0 || x->n % x->nb)) return false;
  int64_t u[] = {x->e, x->top, x->seg, x->ng};
  for (size_t i = 0; i < sizeof u / sizeof *u; i++)
    if (u[i] < 0 || u[i] > ((int64_t)1 << 36)) return false;
  bool combine = x->op == OP_MOE_COMBINE || x->op == OP_MOE_COMBINE_BWD;
  if (x->op >= OP_MOE_ROUTE && x->op <= OP_MOE_COMBINE_BWD && !combine && x->e <= 0) return false;
  if ((x->op == OP_MOE_ROUTE || x->op == OP_MOE_ROUTE_BWD) && (x->top < 1 || x->top > x->e)) return false;
  if ((x->op >= OP_MOE_UP && x->op <= OP_MOE_DOWN) || x->op == OP_MOE_UP_BWD || x->op == OP_MOE_UP_GELU_BWD ||
      x->op == OP_MOE_DOWN_BWD)
    if (x->seg < x->e || x->seg % x->e) return false;   /* segment s runs expert s % e */
  if ((x->op == OP_MOE_A2A || x->op == OP_MOE_A2A_REV) && (x->seg <= 0 || x->e % x->seg)) return false;
  if ((x->op == OP_MATMUL || x->op == OP_MATMUL_BIAS || x->op == OP_MATMUL_BIAS_GELU || x->op == OP_HEAD_XENT ||
       x->op == OP_HEAD_XENT_BWD || x->op == OP_HEAD_DL || x->op == OP_MATMUL_BGRAD || x->op == OP_MATMUL_DGELU) &&
      (x->m <= 0 || x->n <= 0 || x->k <= 0))
    return false;
  if (x->op == OP_MATMUL_BGRAD && (x->bg < 0 || x->bg > 1 || (x->bg ? x->tb : !x->ta))) return false;   /* dy k x len */
  if (x->op == OP_MATMUL_DGELU && x->acc[0]) return false;   /* the epilogue's product is not added to */
  return true;
}

static void verify_inst(Reader *r, Bundle *b, const RtInst *x) {
  int64_t in[RT_MAX_IN], out[3];
  bool ids[RT_MAX_IN];
  if (!sane(x)) bad(r, "instruction sizes out of range");
  needs(x, in, out, ids);
  int nout = 0;
  for (int i = 0; i < RT_MAX_IN; i++) {
    if (!in[i]) continue;
    if (x->in[i] < 0) bad(r, "missing input");
    RtValue *v = &b->vals[x->in[i]];
    if (v->n < in[i] || (v->region == R_INPUT) != ids[i]) bad(r, "input of the wrong size or kind");
  }
  for (int i = 0; i < 3; i++) {
    if (x->out[i] < 0) continue;
    RtValue *v = &b->vals[x->out[i]];
    if (!out[i] || v->n < out[i] || v->region == R_INPUT || v->region == R_PARAM)
      bad(r, "output of the wrong size or kind");
    nout++;
  }
  if (nout == 0) bad(r, "instruction without an output");
  if (!x->acc[0] && out[0] && x->out[0] < 0 && x->op != OP_ADD_BWD && x->op != OP_MUL_BWD &&
      x->op != OP_RMSNORM_BWD && x->op != OP_LAYERNORM_BWD && x->op != OP_ATTENTION_BWD &&
      x->op != OP_HEAD_XENT_BWD && x->op != OP_SWIGLU_BWD)
    bad(r, "missing output");
}

/* fused kernel=NAME grid=G block=B [finish=NAME2 fgrid=G2 scratch=BYTES]
 * body=N, then the N members, each an instruction of its own, verified as
 * such. */
static void kernel_name(Reader *r, const char *key, char *name, size_t size) {
  const char *k = field(r->buf, key);
  size_t len = k ? strcspn(k, " ") : 0;
  if (!len || len >= size) bad(r, "a fused instruction without its kernel's name");
  for (size_t i = 0; i < len; i++)
    if (!isalnum((unsigned char)k[i]) && k[i] != '_') bad(r, "a fused instruction's kernel name is not an identifier");
  memcpy(name, k, len), name[len] = 0;
}

static void read_fused(Reader *r, Bundle *b, RtInst *x) {
  kernel_name(r, "kernel", x->kernel, sizeof x->kernel);
  for (int i = 0; i < 3; i++) x->out[i] = -1;
  for (int i = 0; i < RT_MAX_IN; i++) x->in[i] = -1;
  x->grid = ifield(r, "grid"), x->block = ifield(r, "block");
  if (field(r->buf, "finish")) {   /* a second kernel and a scratch buffer */
    kernel_name(r, "finish", x->finish, sizeof x->finish);
    x->fgrid = ifield(r, "fgrid"), x->scratch = ifield(r, "scratch");
    if (x->fgrid < 1 || x->fgrid > INT32_MAX || x->scratch < 1 || x->scratch > ((int64_t)1 << 40))
      bad(r, "a fused instruction's launch or body out of range");
  }
  int64_t n = ifield(r, "body");
  if (x->grid < 1 || x->grid > INT32_MAX || x->block < 1 || x->block > 1024 || n < 1 || n > 16)
    bad(r, "a fused instruction's launch or body out of range");
  x->body = rt_xmalloc(n * sizeof(RtInst)), x->nbody = (int)n;
  x->ops = rt_xmalloc(RT_MAX_FUSED * sizeof(int));   /* the values, in the members' order, outputs first */
  for (int m = 0; m < n; m++) {
    if (!next_line(r)) bad(r, "truncated fused instruction");
    RtInst *y = &x->body[m];
    read_inst(r, b, y);
    if (y->op == OP_FUSED) bad(r, "a fused instruction inside another");
    verify_inst(r, b, y);
    for (int i = 0; i < 3 + RT_MAX_IN; i++) {   /* each value once: at most RT_MAX_FUSED */
      int v = i < 3 ? y->out[i] : y->in[i - 3], seen = 0;
      for (int j = 0; j < x->nops; j++) seen |= x->ops[j] == v;
      if (v < 0 || seen) continue;
      if (x->nops == RT_MAX_FUSED) bad(r, "a fused instruction with too many values");
      x->ops[x->nops++] = v;
    }
  }
}

static void read_program(Reader *r, Bundle *b, RtInst **prog, int *n) {
  if (*prog) bad(r, "a program appears twice");   /* before its length changes: freeing walks the first */
  *n = atoi(strrchr(r->buf, ' ') + 1);
  if (*n < 0 || *n > 10000000) bad(r, "bad program length");
  *prog = rt_xmalloc((*n + 1) * sizeof(RtInst));
  for (int i = 0; i < *n; i++) {
    if (!next_line(r)) bad(r, "truncated program");
    read_inst(r, b, &(*prog)[i]);
    if ((*prog)[i].op != OP_FUSED) verify_inst(r, b, &(*prog)[i]);
  }
}


static int region_of(Reader *r, const char *s) {
  static const char *names[] = {"act", "param", "grad", "input", "state", "copy"};
  for (int i = 0; i < NUM_REGIONS; i++)
    if (!strncmp(s, names[i], strlen(names[i])) && s[strlen(names[i])] == ' ') return i;
  bad(r, "unknown region");
}

static int axis_of(Reader *r, const char *s) {
  static const char *names[] = {"dp", "tp", "pp", "ep"};
  for (int i = 0; i < 4; i++)
    if (!strncmp(s, names[i], 2)) return i;
  bad(r, "unknown group");
}

static void read_action(Reader *r, Bundle *b, Action *a) {
  const char *l = r->buf;
  a->mb = field(l, "mb") ? ifield(r, "mb") : 0;
  if (!strcmp(l, "  zero_grads")) a->kind = A_ZERO_GRADS;
  else if (!strcmp(l, "  zero_state")) a->kind = A_ZERO_STATE;
  else if (!strncmp(l, "  load ", 7)) a->kind = A_LOAD;
  else if (!strncmp(l, "  run fwd", 9)) a->kind = A_RUN_FWD;
  else if (!strncmp(l, "  run bwd", 9)) {
    a->kind = A_RUN_BWD;
    a->to = b->nbwd;
    if (field(l, "from") || field(l, "to")) {
      int64_t from = ifield(r, "from"), to = ifield(r, "to");
      if (from < 0 || to <= from || to > b->nbwd) bad(r, "a backward segment outside the backward program");
      a->from = (int)from, a->to = (int)to;
    }
  } else if (!strncmp(l, "  wait allreduce", 16)) a->kind = A_WAIT;
  else if (!strncmp(l, "  optimizer", 11)) {
    const char *norm = field(l, "norm");
    a->kind = A_OPTIMIZER;
    a->norm_tp = norm && strstr(norm, "tp"), a->norm_pp = norm && strstr(norm, "pp");
    a->norm_ep = norm && strstr(norm, "ep");
  } else if (!strncmp(l, "  send ", 7) || !strncmp(l, "  recv ", 7)) {
    char what[8];
    int id;
    bool send = l[2] == 's';
    if (sscanf(l + 7, "%7s %%%d", what, &id) != 2 || id < 0 || id >= b->nvals || !b->vals[id].present)
      bad(r, "bad send or receive");
    a->kind = send ? A_SEND : A_RECV, a->value = id, a->grad = !strcmp(what, "grad");
    a->peer = (int)ifield(r, send ? "to" : "from");
    const char *g = field(l, "group");
    if (!g) bad(r, "send or receive without a group");
    a->axis = axis_of(r, g);
    if (a->peer < 0 || a->peer >= b->mesh[a->axis]) bad(r, "peer outside the group");
  }
  else if (!strncmp(l, "  allreduce zeros ", 18)) {
    a->kind = A_ALLREDUCE, a->zeros = true, a->n = ifield(r, "n");
    const char *g = field(l, "group");
    if (!g || a->n <= 0 || a->n > (int64_t)1 << 34) bad(r, "bad allreduce");
    a->axis = axis_of(r, g);
  } else if (!strncmp(l, "  allreduce ", 12)) {
    char reg[16];
    sscanf(l + 12, "%14s", reg);   /* room for the space below */
    strcat(reg, " ");
    a->kind = A_ALLREDUCE, a->region = region_of(r, reg);
    a->off = ifield(r, "off"), a->n = ifield(r, "n");
    size_t len = strlen(l);
    a->async = len > 6 && !strcmp(l + len - 6, " async");
    if (a->async && a->region != R_GRAD) bad(r, "an asynchronous allreduce of a region other than the gradients");
    const char *g = field(l, "group");
    if (!g) bad(r, "allreduce without a group");
    a->axis = axis_of(r, g);
    if (a->off < 0 || a->n <= 0 || a->off + a->n > b->region[a->region]) bad(r, "allreduce outside its region");
  } else bad(r, "unknown step action");
  if (a->mb < 0 || a->mb >= b->train.microbatches) bad(r, "microbatch out of range");
}

/* A microbatch's backward pass runs its program's segments in order, all
 * of them; an asynchronous all-reduce is waited for. */
static void check_actions(Reader *r, Bundle *b, const Action *list, int n) {
  int64_t m = b->train.microbatches;
  int *next = calloc(m, sizeof *next), queued = 0;   /* the next segment's start, per microbatch */
  if (!next) rt_die("out of memory");
  for (int i = 0; i < n; i++) {
    const Action *a = &list[i];
    if (a->kind == A_ALLREDUCE && a->async) queued++;
    if (a->kind == A_WAIT) queued = 0;
    if (a->kind != A_RUN_BWD) continue;
    if (a->from != next[a->mb]) {
      free(next);
      bad(r, "a backward segment does not start where the microbatch's last one ended");
    }
    next[a->mb] = a->to == b->nbwd ? 0 : a->to;
  }
  for (int64_t mb = 0; mb < m; mb++)
    if (next[mb]) free(next), bad(r, "a microbatch's backward pass stops before the end of its program");
  free(next);
  if (queued) bad(r, "an asynchronous allreduce with no wait after it");
}

static void read_actions(Reader *r, Bundle *b, Action **list, int *n) {
  int cap = 16;
  if (*list) bad(r, "an action list appears twice");
  *list = rt_xmalloc(cap * sizeof(Action));
  while (next_line(r)) {
    if (!strcmp(r->buf, "end")) return check_actions(r, b, *list, *n);
    if (*n == cap) {
      cap *= 2;
      *list = realloc(*list, cap * sizeof(Action));
      if (!*list) rt_die("out of memory");
    }
    memset(&(*list)[*n], 0, sizeof(Action));
    read_action(r, b, &(*list)[(*n)++]);
  }
  bad(r, "truncated action list (no 'end' line)");
}

static void read_schedule(Bundle *b, const char *dir, int rank) {
  Reader r;
  cur_bundle = b;
  char name[64];
  snprintf(name, sizeof name, "rank%d.sched", rank);
  open_reader(&r, dir, name, "lmc-schedule 1");
  bool end = false;
  while (!end && next_line(&r)) {
    char *l = r.buf, reg[16];
    long long size;
    if (sscanf(l, "region %14s %lld", reg, &size) == 2) {   /* room for the space below */
      strcat(reg, " ");
      b->region[region_of(&r, reg)] = size;
    } else if (sscanf(l, "bytes act %lld", &size) == 1) {
      if (!b->bf16 || size <= 0) bad(&r, "a byte plan without the bf16 precision plan");
      b->act_bytes = size;
    } else if (!strncmp(l, "value ", 6)) read_value(&r, b);
    else if (!strncmp(l, "inputs ", 7)) {
      int ids[1];
      parse_ids(&r, field(l, "tokens"), ids, NULL, 1, b->nvals), b->tokens = ids[0];
      parse_ids(&r, field(l, "targets"), ids, NULL, 1, b->nvals), b->targets = ids[0];
      parse_ids(&r, field(l, "positions"), ids, NULL, 1, b->nvals), b->positions = ids[0];
      parse_ids(&r, field(l, "loss"), ids, NULL, 1, b->nvals), b->loss = ids[0];
    } else if (!strncmp(l, "program fwd", 11)) read_program(&r, b, &b->fwd, &b->nfwd);
    else if (!strncmp(l, "program bwd", 11)) read_program(&r, b, &b->bwd, &b->nbwd);
    else if (!strncmp(l, "program cast", 12)) read_program(&r, b, &b->casts, &b->ncasts);
    else if (!strcmp(l, "step")) read_actions(&r, b, &b->actions, &b->nactions);
    else if (!strcmp(l, "eval")) read_actions(&r, b, &b->evals, &b->nevals), end = true;
    else if (!strncmp(l, "stage ", 6)) {
      int np;
      long long mb;
      char sch[16];
      if (sscanf(l, "stage %d of %d schedule %15s microbatches %lld slots %d", &b->stage, &np, sch, &mb,
                 &b->slots) != 5 || np != b->mesh[2] || b->slots < 1 || b->slots > mb || b->stage >= np)
        bad(&r, "bad stage line");
    } else if (!strncmp(l, "rank ", 5)) {
      int rk, w;
      if (sscanf(l, "rank %d world %d dp %d tp %d pp %d ep %d", &rk, &w, &b->coord[0], &b->coord[1],
                 &b->coord[2], &b->coord[3]) != 6 || rk != rank || w != b->world)
        bad(&r, "rank line does not match the manifest");
    }
  }
  fclose(r.f), r.f = NULL;
  if (!end || !b->fwd || !b->bwd || !b->actions || !b->slots) bad(&r, "truncated schedule");
}

/* Each parameter's value on this rank; -1 for those of other stages. */
static void link_params(Bundle *b) {
  int held = 0;
  for (int i = 0; i < b->nparams; i++) {
    RtParam *p = &b->params[i];
    for (int v = 0; v < b->nvals; v++)
      if (b->vals[v].present && b->vals[v].region == R_PARAM && !strcmp(b->vals[v].name, p->name))
        p->value = v;
    if (p->value < 0) continue;
    RtValue *v = &b->vals[p->value];
    p->local = v->n, p->split = v->split, p->copy = v->copy, p->esplit = v->esplit;
    int64_t parts = p->split >= 0 ? b->mesh[1] : 1, eparts = p->esplit ? b->mesh[3] : 1;
    if (v->rank != p->rank || v->n * parts * eparts != p->numel || (p->esplit && p->split == 0) ||
        (p->split >= 0 && v->shape[p->split] * parts != p->shape[p->split]) ||
        (p->esplit && v->shape[0] * eparts != p->shape[0]))
      rt_die("bundle %s: parameter '%s' has the wrong size in the schedule", b->dir, p->name);
    held++;
  }
  if (b->world == 1 && held != b->nparams)
    rt_die("bundle %s: a parameter is missing from the schedule", b->dir);
}

/* The bf16 copies: only the cast program writes them, each from a
 * parameter of its size, and only under the bf16 plan; each parameter
 * learns its copy (RtParam.copy16), which the optimizer writes. */
static void link_copies(Bundle *b) {
  for (int i = 0; i < b->ncasts; i++) {
    RtInst *x = &b->casts[i];
    if (x->op != OP_CAST || b->vals[x->in[0]].region != R_PARAM || b->vals[x->out[0]].region != R_COPY ||
        b->vals[x->in[0]].n != b->vals[x->out[0]].n || !b->vals[x->out[0]].bf16 || !b->bf16)
      rt_die("bundle %s: the cast program's instruction %d is not a parameter's bf16 copy", b->dir, i + 1);
    for (int p = 0; p < b->nparams; p++)
      if (b->params[p].value == x->in[0]) b->params[p].copy16 = x->out[0];
  }
  RtInst *progs[] = {b->fwd, b->bwd};
  int counts[] = {b->nfwd, b->nbwd};
  for (int p = 0; p < 2; p++)
    for (int i = 0; i < counts[p]; i++)
      for (int j = 0; j < 3; j++)
        if (progs[p][i].out[j] >= 0 && b->vals[progs[p][i].out[j]].region == R_COPY)
          rt_die("bundle %s: the %s program writes a weight's bf16 copy", b->dir, p ? "bwd" : "fwd");
}

static void mark_one(Bundle *b, RtInst *x) {
  for (int j = 0; j < 3; j++)
    if (x->out[j] >= 0 && b->vals[x->out[j]].bf16) x->bf |= RT_BF_OUT(j);
  for (int j = 0; j < RT_MAX_IN; j++)
    if (x->in[j] >= 0 && b->vals[x->in[j]].bf16) x->bf |= RT_BF_IN(j);
}

/* Under the bf16 plan, each instruction's operands held in bf16 (RtInst.bf). */
static void mark_bf16(Bundle *b) {
  if (!b->bf16) return;
  RtInst *progs[] = {b->fwd, b->bwd, b->casts};
  int counts[] = {b->nfwd, b->nbwd, b->ncasts};
  for (int p = 0; p < 3; p++)
    for (int i = 0; i < counts[p]; i++) {
      mark_one(b, &progs[p][i]);
      for (int m = 0; m < progs[p][i].nbody; m++) mark_one(b, &progs[p][i].body[m]);
    }
}

Bundle *bundle_open(const char *dir) {
  Bundle *b = rt_xmalloc(sizeof(Bundle));
  cur_bundle = b;                  /* still reachable if loading fails */
  snprintf(b->dir, sizeof b->dir, "%s", dir);
  read_manifest(b, dir);
  return b;
}

void bundle_load_rank(Bundle *b, int rank) {
  if (rank >= b->world)
    rt_die("bundle %s plans %d rank%s, not %d or more: run it with mpirun -np %d", b->dir, b->world,
           b->world == 1 ? "" : "s", rank + 1, b->world);
  b->rank = rank;
  read_schedule(b, b->dir, rank);
  link_params(b);
  link_copies(b);
  mark_bf16(b);
}

Bundle *bundle_load(const char *dir, int rank) {
  Bundle *b = bundle_open(dir);
  bundle_load_rank(b, rank);
  return b;
}

/* After a loading error that did not end the process: the bundle being
 * loaded, freed. */
void bundle_abandon(void) {
  if (cur_bundle) bundle_free(cur_bundle);
  cur_bundle = NULL;
}

static void free_bodies(RtInst *prog, int n) {
  for (int i = 0; prog && i < n; i++) free(prog[i].body), free(prog[i].ops);
}

void bundle_free(Bundle *b) {
  if (b == cur_bundle) cur_bundle = NULL;
  free_bodies(b->fwd, b->nfwd), free_bodies(b->bwd, b->nbwd);
  free(b->params), free(b->vals), free(b->fwd), free(b->bwd), free(b->casts), free(b->actions), free(b->evals);
  free(b);
}

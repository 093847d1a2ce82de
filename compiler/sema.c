/* sema.c: the checks that need no shapes. In: the parsed items and the
 * --set overrides. Out: a Program with every dim evaluated, the train and
 * parallel settings resolved, and the plan checked for legality (mesh
 * axes divide their dims, mesh product equals the world size). Names are
 * checked here too: every call names an op or a block, every tensor name
 * is defined before use, every dim in a shape exists. Shapes are checked
 * by lower.c, which knows them. */
#include "lmc.h"
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

const char *axis_names[MAX_AXES] = {"dp", "tp", "pp", "ep"};

static Set *sets;
static int nsets;

/* ---- small helpers ---- */

static int edit_distance(const char *a, const char *b) {
  int la = strlen(a), lb = strlen(b);
  if (la > 30 || lb > 30)
    return 99;
  int d[31][31];
  for (int i = 0; i <= la; i++) d[i][0] = i;
  for (int j = 0; j <= lb; j++) d[0][j] = j;
  for (int i = 1; i <= la; i++)
    for (int j = 1; j <= lb; j++) {
      int c = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
      if (d[i - 1][j] + 1 < c) c = d[i - 1][j] + 1;
      if (d[i][j - 1] + 1 < c) c = d[i][j - 1] + 1;
      d[i][j] = c;
    }
  return d[la][lb];
}

static const char *closest(const char *name, const char **cands, int n) {
  const char *best = NULL;
  int bd = 3;
  for (int i = 0; i < n; i++) {
    int d = edit_distance(name, cands[i]);
    if (d < bd) bd = d, best = cands[i];
  }
  return best;
}

static const char *set_value(const char *name) {   /* the last --set wins */
  for (int i = nsets - 1; i >= 0; i--)
    if (!strcmp(sets[i].name, name))
      return sets[i].value;
  return NULL;
}

Dim *sema_dim(Program *p, const char *name) {
  for (int i = 0; i < p->ndims; i++)
    if (!strcmp(p->dims[i].name, name))
      return &p->dims[i];
  return NULL;
}

Node *sema_block(Program *p, const char *name) {
  for (Node *it = p->items; it; it = it->next)
    if (it->kind == N_BLOCK && !strcmp(it->name, name))
      return it;
  return NULL;
}

int sema_op(const char *name) {
  for (int i = 0; i < NUM_OPS; i++)
    if (op_callable[i] && !strcmp(op_names[i], name))
      return i;
  return -1;
}

/* ---- dims ---- */

static double eval_num(Program *p, Node *e);

static int64_t eval_int(Program *p, Node *e, const char *what) {
  double v = eval_num(p, e);
  if (v != floor(v) || fabs(v) > 1e15)
    diag_error(e->loc, "not-integer", "%s must be an integer, got %g", what, v);
  return (int64_t)v;
}

static double eval_num(Program *p, Node *e) {
  switch (e->kind) {
  case N_NUM: return e->num;
  case N_NEG: return -eval_num(p, e->a);
  case N_IDENT: {
    Dim *d = sema_dim(p, e->name);
    if (!d)
      diag_error(e->loc, "undefined-dim", "undefined dim '%s'", e->name);
    return (double)d->size;
  }
  case N_BINOP: {
    double a = eval_num(p, e->a), b = eval_num(p, e->b);
    switch (e->op) {
    case '+': return a + b;
    case '-': return a - b;
    case '*':
      if (fabs(a * b) > 1e15)
        diag_error(e->loc, "num-range", "value %g is too large", a * b);
      return a * b;
    case '/':
      if (b == 0)
        diag_error(e->loc, "div-zero", "division by zero");
      if (a == floor(a) && b == floor(b) && fmod(a, b) != 0)
        diag_error(e->loc, "dim-inexact", "%g / %g is not a whole number", a, b);
      return a / b;
    }
  }
  /* fallthrough */
  default:
    diag_error(e->loc, "not-number", "expected a number here");
  }
}

static void add_dim(Program *p, const char *name, Loc loc, Node *val) {
  if (sema_dim(p, name))
    diag_error(loc, "dup-dim", "dim '%s' is defined twice", name);
  if (!strcmp(name, "B") || !strcmp(name, "T"))
    diag_hint("B (batch) and T (sequence) come from the train section"),
        diag_error(loc, "reserved-dim", "dim '%s' is reserved", name);
  if (p->ndims == MAX_DIMS - 3)   /* B, T and E come after */
    diag_error(loc, "too-many-dims", "more than %d dims", MAX_DIMS - 3);
  const char *ov = set_value(name);
  int64_t v;
  if (ov) {
    char *end;
    v = strtoll(ov, &end, 10);
    if (*end || v <= 0 || v > (int64_t)1e12)
      diag_fatal("bad-set", "--set %s=%s: expected a positive integer", name, ov);
  } else {
    v = eval_int(p, val, "a dim");
  }
  if (v <= 0)
    diag_error(val->loc, "dim-nonpositive", "dim '%s' must be positive, got %lld", name, (long long)v);
  if (v > (int64_t)1 << 31)
    diag_error(val->loc, "dim-overflow", "dim '%s' = %lld is too large (limit 2^31)", name, (long long)v);
  p->dims[p->ndims++] = (Dim){name, v, loc, -1};
}

static void collect_dims(Program *p, Node *body) {
  for (Node *s = body; s; s = s->next) {
    if (s->kind == N_DIM)
      add_dim(p, s->name, s->b->loc, s->a);
    else if (s->kind == N_LAYERS) {
      add_dim(p, s->name, s->b->loc, s->a);
      collect_dims(p, s->list);
    }
  }
}

/* ---- settings ---- */

typedef struct Key {
  const char *name;
  char kind;           /* 'i' int, 'f' float, 's' word/string, 't' tuple */
  size_t off;          /* offset in Settings */
} Key;

#define SI(f) 'i', offsetof(Settings, f)
#define SF(f) 'f', offsetof(Settings, f)
#define SS(f) 's', offsetof(Settings, f)
static const Key train_keys[] = {
    {"batch", SI(batch)}, {"seq", SI(seq)}, {"steps", SI(steps)},
    {"warmup", SI(warmup)}, {"seed", SI(seed)}, {"eval_every", SI(eval_every)},
    {"eval_batches", SI(eval_batches)}, {"save_every", SI(save_every)},
    {"lr", SF(lr)}, {"min_lr", SF(min_lr)}, {"beta1", SF(beta1)},
    {"beta2", SF(beta2)}, {"eps", SF(eps)}, {"wd", SF(wd)}, {"clip", SF(clip)},
    {"val_fraction", SF(val_fraction)}, {"decay", SS(decay)}, {"data", SS(data)},
    {"experts", SI(experts)}, {"top_k", SI(top_k)}, {"moe_every", SI(moe_every)}, {"precision", SS(precision)},
    {"aux_loss_coef", SF(aux_loss_coef)}, {"z_loss_coef", SF(z_loss_coef)},
    {"betas", 't', offsetof(Settings, beta1)}, {NULL, 0, 0}};
static const Key parallel_keys[] = {
    {"dp", SI(mesh[AX_DP])}, {"tp", SI(mesh[AX_TP])}, {"pp", SI(mesh[AX_PP])},
    {"ep", SI(mesh[AX_EP])}, {"microbatches", SI(microbatches)},
    {"schedule", SS(schedule)}, {"bucket_mb", SF(bucket_mb)}, {NULL, 0, 0}};

static const Key *find_key(const Key *keys, const char *name) {
  for (; keys->name; keys++)
    if (!strcmp(keys->name, name))
      return keys;
  return NULL;
}

static void unknown_key(Node *s, const Key *keys, const char *section) {
  const char *names[32];
  int n = 0;
  for (; keys->name; keys++) names[n++] = keys->name;
  const char *c = closest(s->name, names, n);
  if (c)
    diag_hint("did you mean '%s'?", c);
  diag_error(s->b->loc, "unknown-setting", "unknown %s setting '%s'", section, s->name);
}

static void store(Settings *st, const Key *k, Program *p, Node *v, const char *sv) {
  char *base = (char *)st + k->off;
  if (k->kind == 's') {
    if (sv) { *(const char **)base = sv; return; }
    if (v->kind != N_IDENT && v->kind != N_STR)
      diag_error(v->loc, "bad-setting", "'%s' takes a word or a string", k->name);
    *(const char **)base = v->name;
  } else if (k->kind == 't') {
    if (v->kind != N_TUPLE || !v->list->next || v->list->next->next)
      diag_error(v->loc, "bad-setting", "'%s' takes a pair, e.g. (0.9, 0.95)", k->name);
    ((double *)base)[0] = eval_num(p, v->list);
    st->beta2 = eval_num(p, v->list->next);
  } else if (sv) {
    char *end;
    double d = strtod(sv, &end);
    if (*end || !*sv)
      diag_fatal("bad-set", "--set %s=%s: expected a number", k->name, sv);
    if (k->kind == 'i') {   /* the sign is checked with the setting's other limits */
      if (d != floor(d) || fabs(d) > 1e15)
        diag_fatal("bad-set", "--set %s=%s: expected a whole number", k->name, sv);
      *(int64_t *)base = (int64_t)d;
    } else
      *(double *)base = d;
  } else if (k->kind == 'i') {
    *(int64_t *)base = eval_int(p, v, k->name);
  } else
    *(double *)base = eval_num(p, v);
}

static void read_settings(Program *p, Node *sec, const Key *keys, const char *name) {
  if (!sec) return;
  for (Node *s = sec->list; s; s = s->next) {
    if (s->kind == N_LAYOUT) {
      if (keys != parallel_keys)
        diag_error(s->loc, "unknown-setting", "'layout' belongs in the parallel section");
      continue;
    }
    const Key *k = find_key(keys, s->name);
    if (!k)
      unknown_key(s, keys, name);
    for (Node *t = s->next; t; t = t->next)
      if (t->kind == N_SETTING && !strcmp(t->name, s->name))
        diag_error(t->b->loc, "dup-setting", "'%s' is set twice", s->name);
    store(&p->s, k, p, s->a, NULL);
  }
}

static void apply_sets(Program *p) {
  for (int i = 0; i < nsets; i++) {
    const char *n = sets[i].name;
    if (sema_dim(p, n)) continue;
    const Key *k = find_key(train_keys, n);
    if (!k) k = find_key(parallel_keys, n);
    if (!k)
      diag_fatal("set-unknown", "--set %s: not a dim, train or parallel setting", n);
    if (k->kind == 't')
      diag_fatal("set-unknown", "--set %s: set beta1 and beta2 separately", n);
    store(&p->s, k, p, NULL, sets[i].value);
  }
}

static void defaults(Settings *s) {
  *s = (Settings){.batch = 8, .seq = 64, .steps = 100, .warmup = 0, .seed = 1234,
                  .microbatches = 1, .eval_every = 50, .eval_batches = 4,
                  .save_every = 0, .lr = 1e-3, .min_lr = -1, .beta1 = 0.9,
                  .beta2 = 0.95, .eps = 1e-8, .wd = 0.0, .clip = 0.0,
                  .val_fraction = 0.1, .decay = "cosine", .data = "",
                  .schedule = "1f1b", .top_k = 2, .moe_every = 1,
                  .aux_loss_coef = 0.01, .z_loss_coef = 0.001, .precision = "fp32", .bucket_mb = 16};
  for (int i = 0; i < MAX_AXES; i++) s->mesh[i] = 1;
}

static Node *setting_node(Node *sec, const char *key) {
  if (sec)
    for (Node *s = sec->list; s; s = s->next)
      if (s->kind == N_SETTING && !strcmp(s->name, key))
        return s;
  return NULL;
}

/* A value from --set is reported at the command-line argument. */
static Loc set_loc(const char *key, const char *value) {
  SrcFile *f = arena_alloc(sizeof *f);
  f->name = "<command line>";
  f->text = arena_printf("--set %s=%s", key, value);
  f->len = (long)strlen(f->text);
  return (Loc){f, 1, 7, 1, (int)f->len + 1};
}

static Loc setting_loc(Program *p, Node *sec, const char *key) {
  const char *sv = set_value(key);
  if (sv) return set_loc(key, sv);
  Node *s = setting_node(sec, key);
  return s ? s->loc : (sec ? sec->loc : p->model->loc);
}

static void check_settings(Program *p) {
  Settings *s = &p->s;
  struct { const char *k; double v; } pos[] = {
      {"batch", s->batch}, {"seq", s->seq}, {"steps", s->steps}, {"lr", s->lr},
      {"microbatches", s->microbatches}, {"eps", s->eps}, {"bucket_mb", s->bucket_mb}};
  for (size_t i = 0; i < sizeof pos / sizeof *pos; i++)
    if (pos[i].v <= 0)
      diag_error(setting_loc(p, !strcmp(pos[i].k, "microbatches") || !strcmp(pos[i].k, "bucket_mb") ? p->parallel : p->train, pos[i].k),
                 "bad-setting", "'%s' must be positive", pos[i].k);
  if (s->beta1 < 0 || s->beta1 >= 1 || s->beta2 < 0 || s->beta2 >= 1)
    diag_error(setting_loc(p, p->train, setting_node(p->train, "betas") ? "betas" : "beta1"),
               "bad-setting", "adam betas must be in [0, 1)");
  if (s->val_fraction <= 0 || s->val_fraction >= 1)
    diag_error(setting_loc(p, p->train, "val_fraction"), "bad-setting", "'val_fraction' must be in (0, 1)");
  if (strcmp(s->decay, "cosine") && strcmp(s->decay, "linear") && strcmp(s->decay, "constant"))
    diag_error(setting_loc(p, p->train, "decay"), "bad-setting",
               "unknown decay '%s'; use cosine, linear or constant", s->decay);
  if (strcmp(s->precision, "fp32") && strcmp(s->precision, "bf16"))
    diag_error(setting_loc(p, p->train, "precision"), "bad-setting", "unknown precision '%s'; use fp32 or bf16",
               s->precision);
  if (strcmp(s->schedule, "1f1b") && strcmp(s->schedule, "gpipe"))
    diag_error(setting_loc(p, p->parallel, "schedule"), "bad-setting",
               "unknown pipeline schedule '%s'; use gpipe or 1f1b", s->schedule);
  for (int a = 0; a < MAX_AXES; a++)
    if (s->mesh[a] <= 0 || s->mesh[a] > 4096)
      diag_error(setting_loc(p, p->parallel, axis_names[a]), "bad-setting",
                 "mesh axis %s must be in 1..4096", axis_names[a]);
  struct { const char *k; int64_t v; } nonneg[] = {
      {"warmup", s->warmup}, {"seed", s->seed}, {"eval_every", s->eval_every},
      {"eval_batches", s->eval_batches}, {"save_every", s->save_every}};
  for (size_t i = 0; i < sizeof nonneg / sizeof *nonneg; i++)
    if (nonneg[i].v < 0)
      diag_error(setting_loc(p, p->train, nonneg[i].k), "bad-setting", "'%s' must not be negative", nonneg[i].k);
  if (s->min_lr < 0) s->min_lr = s->lr * 0.1;
  if (s->experts < 0 || s->experts > 4096)
    diag_error(setting_loc(p, p->train, "experts"), "bad-setting", "'experts' must be in 0..4096 (0: no MoE)");
  if (s->top_k < 1 || s->moe_every < 1)
    diag_error(setting_loc(p, p->train, s->top_k < 1 ? "top_k" : "moe_every"), "bad-setting", "'%s' must be positive",
               s->top_k < 1 ? "top_k" : "moe_every");
  if (s->experts && s->top_k > s->experts)
    diag_error(setting_loc(p, p->train, "top_k"), "moe-top-k", "top_k = %lld is more than the %lld experts",
               (long long)s->top_k, (long long)s->experts);
  if (s->aux_loss_coef < 0 || s->z_loss_coef < 0)
    diag_error(setting_loc(p, p->train, s->aux_loss_coef < 0 ? "aux_loss_coef" : "z_loss_coef"), "bad-setting",
               "'%s' must not be negative", s->aux_loss_coef < 0 ? "aux_loss_coef" : "z_loss_coef");
  if (s->batch > ((int64_t)1 << 31))
    diag_error(setting_loc(p, p->train, "batch"), "bad-setting", "batch %lld is too large (limit 2^31)",
               (long long)s->batch);
  if (s->seq > (1 << 20))
    diag_error(setting_loc(p, p->train, "seq"), "bad-setting", "seq %lld is too long (limit 2^20)", (long long)s->seq);
  int64_t per = s->mesh[AX_DP] * s->mesh[AX_EP] * s->microbatches;
  if (s->batch % per && s->mesh[AX_EP] > 1)
    diag_error(setting_loc(p, p->train, "batch"), "batch-indivisible",
               "batch %lld is not divisible by dp x ep x microbatches = %lld x %lld x %lld", (long long)s->batch,
               (long long)s->mesh[AX_DP], (long long)s->mesh[AX_EP], (long long)s->microbatches);
  if (s->batch % per)
    diag_error(setting_loc(p, p->train, "batch"), "batch-indivisible",
               "batch %lld is not divisible by dp x microbatches = %lld x %lld",
               (long long)s->batch, (long long)s->mesh[AX_DP], (long long)s->microbatches);
}

/* ---- plan ---- */

static int axis_of(const char *name) {
  for (int a = 0; a < MAX_AXES; a++)
    if (!strcmp(axis_names[a], name))
      return a;
  return -1;
}

static bool is_layer_dim(Program *p, const char *name) {
  for (Node *it = p->model->list; it; it = it->next)
    if (it->kind == N_LAYERS && !strcmp(it->name, name)) return true;
  return false;
}

/* Which dims an axis may split: pp cuts a layer stack, tp and ep split
 * other dims; dp splits the batch by itself and takes no dim. */
static void check_axis_fits(Program *p, Node *r, Dim *d, int a) {
  bool layer = is_layer_dim(p, d->name);
  if (a == AX_DP)
    diag_error(r->loc, "layout-axis", "dp splits the batch by itself; no dim is laid out on dp");
  if (a == AX_PP && !layer)
    diag_error(r->loc, "layout-axis", "only a layer stack's dim can be laid out on pp; '%s' is not one (layers %s = ...)",
               d->name, d->name);
  if (a != AX_PP && layer)
    diag_error(r->loc, "layout-axis", "'%s' counts layers: it can be laid out on pp only, not on %s", d->name,
               axis_names[a]);
}

static void check_layout(Program *p) {
  if (!p->parallel) return;
  for (Node *s = p->parallel->list; s; s = s->next) {
    if (s->kind != N_LAYOUT) continue;
    for (Node *r = s->list; r; r = r->next) {
      Dim *d = sema_dim(p, r->name);
      if (!d)
        diag_error(r->b->loc, "undefined-dim", "layout names undefined dim '%s'", r->name);
      int a = axis_of(r->a->name);
      if (a < 0)
        diag_error(r->a->loc, "unknown-axis", "unknown mesh axis '%s'; use dp, tp, pp or ep", r->a->name);
      if (d->axis >= 0)
        diag_error(r->b->loc, "dup-layout", "dim '%s' is laid out twice", r->name);
      check_axis_fits(p, r, d, a);
      d->axis = a;
      int64_t n = p->s.mesh[a];
      if (a == AX_PP && n > d->size)
        diag_error(r->loc, "pp-layers", "pp = %lld is more than the %lld layers of '%s'",
                   (long long)n, (long long)d->size, d->name);
      if (d->size % n)
        diag_error(r->loc, "indivisible", "dim %s = %lld is not divisible by %s = %lld",
                   d->name, (long long)d->size, axis_names[a], (long long)n);
    }
  }
}

/* Whether some dim is laid out on mesh axis a. */
static bool laid_on(Program *p, int a) {
  for (int i = 0; i < p->ndims; i++)
    if (p->dims[i].axis == a) return true;
  return false;
}

static void check_world(Program *p, int world) {
  int64_t prod = 1;
  for (int a = 0; a < MAX_AXES; a++) prod *= p->s.mesh[a];
  Loc l = p->parallel ? p->parallel->loc : p->model->loc;
  if (world > 0 && prod != world)
    diag_error(l, "world-size", "the mesh dp x tp x pp x ep = %lld x %lld x %lld x %lld = %lld ranks, but the world size is %d",
               (long long)p->s.mesh[0], (long long)p->s.mesh[1], (long long)p->s.mesh[2],
               (long long)p->s.mesh[3], (long long)prod, world);
  if (p->s.mesh[AX_PP] > 1) {
    bool laid = false;
    for (Node *it = p->model->list; it; it = it->next)
      if (it->kind == N_LAYERS && sema_dim(p, it->name)->axis == AX_PP) laid = true;
    if (!laid)
      diag_error(setting_loc(p, p->parallel, "pp"), "pp-layout",
                 "pp = %lld needs the model's layer stack laid out on it, e.g. layout L: pp",
                 (long long)p->s.mesh[AX_PP]);
  }
  if (p->s.mesh[AX_TP] > 1 && !laid_on(p, AX_TP))
    diag_hint("lay out the heads, the MLP width and the vocab, e.g. layout H: tp, F: tp, V: tp"),
        diag_error(setting_loc(p, p->parallel, "tp"), "tp-layout",
                   "tp = %lld but no dim is laid out on tp: every tp rank would repeat the same work",
                   (long long)p->s.mesh[AX_TP]);
  if (p->s.mesh[AX_EP] > 1 && !laid_on(p, AX_EP))
    diag_hint("ep splits the experts of moe() layers: lay out their dim, e.g. layout E: ep, or set experts"),
        diag_error(setting_loc(p, p->parallel, "ep"), "ep-layout",
                   "ep = %lld but no dim is laid out on ep", (long long)p->s.mesh[AX_EP]);
}

/* experts = E turns MLPs into MoE layers over a new dim E, split by ep. */
static void experts_dim(Program *p) {
  Settings *s = &p->s;
  if (!s->experts) return;
  Loc l = setting_loc(p, p->train, "experts");
  if (sema_dim(p, "E"))
    diag_error(l, "experts-dim", "experts = %lld makes a dim E for the experts, but the model defines E already",
               (long long)s->experts);
  p->dims[p->ndims++] = (Dim){"E", s->experts, l, -1};
  if (s->experts % s->mesh[AX_EP])
    diag_error(setting_loc(p, p->parallel, "ep"), "indivisible", "experts = %lld is not divisible by ep = %lld",
               (long long)s->experts, (long long)s->mesh[AX_EP]);
}

/* With ep and experts, E goes on ep unless the layout put it elsewhere. */
static void experts_axis(Program *p) {
  Dim *e = p->s.experts ? sema_dim(p, "E") : NULL;
  if (e && e->axis < 0 && p->s.mesh[AX_EP] > 1) e->axis = AX_EP;
}

/* ---- names ---- */

typedef struct Scope {
  const char *names[512];
  int n;
} Scope;

static void scope_add(Scope *sc, const char *n, Loc loc) {
  if (sc->n == 512)
    diag_error(loc, "too-many-names", "too many names in one body (limit 512)");
  sc->names[sc->n++] = n;
}

static bool scope_has(Scope *sc, const char *n) {
  for (int i = sc->n - 1; i >= 0; i--)
    if (!strcmp(sc->names[i], n))
      return true;
  return false;
}

static void unknown_call(Program *p, Node *e) {
  const char *cands[NUM_OPS + 64];
  int n = 0;
  for (int i = 0; i < NUM_OPS; i++)
    if (op_callable[i]) cands[n++] = op_names[i];
  for (Node *it = p->items; it && n < NUM_OPS + 64; it = it->next)
    if (it->kind == N_BLOCK) cands[n++] = it->name;
  const char *c = closest(e->name, cands, n);
  if (c)
    diag_hint("did you mean '%s'?", c);
  diag_error(e->a->loc, "unknown-op", "unknown op or block '%s'", e->name);
}

static bool has_word(const char *words, const char *w) {
  size_t n = strlen(w);
  for (const char *p = words; (p = strstr(p, w)); p += n)
    if ((p == words || p[-1] == ' ') && (p[n] == ' ' || !p[n])) return true;
  return false;
}

static const char *kwargs_of(int op) {
  switch (op) {
  case OP_RMSNORM: case OP_LAYERNORM: return "eps";
  case OP_ROPE: return "theta";
  case OP_MOE: return "top_k renorm";
  default: return "";
  }
}

static void check_expr(Program *p, Scope *sc, Node *e) {
  switch (e->kind) {
  case N_NUM:
    diag_error(e->loc, "bad-operand", "a number cannot be used as a tensor here");
  case N_STR:
    diag_error(e->loc, "bad-operand", "a string cannot be used as a tensor here");
  case N_TUPLE:
    diag_error(e->loc, "bad-operand", "a tuple cannot be used as a tensor here");
  case N_NEG:
    diag_error(e->loc, "bad-operand", "unary minus on tensors is not supported");
  case N_IDENT:
    if (!scope_has(sc, e->name))
      diag_error(e->loc, "undefined-name", "undefined tensor '%s'", e->name);
    return;
  case N_BINOP:
    if (e->op == '-' || e->op == '/')
      diag_error(e->loc, "bad-operand", "'%c' is not defined on tensors; use + or *", e->op);
    check_expr(p, sc, e->a);
    check_expr(p, sc, e->b);
    return;
  case N_CALL: {
    int op = sema_op(e->name);
    Node *blk = op < 0 ? sema_block(p, e->name) : NULL;
    if (op < 0 && !blk)
      unknown_call(p, e);
    int npos = 0;
    for (Node *a = e->list; a; a = a->next) {
      if (a->kind == N_KWARG) {
        if (op < 0 || !has_word(kwargs_of(op), a->name))
          diag_error(a->b->loc, "unknown-kwarg", "'%s' takes no argument '%s'", e->name, a->name);
        eval_num(p, a->a);
        continue;
      }
      npos++;
      check_expr(p, sc, a);
    }
    int want = 0;
    if (op >= 0) want = op_nin[op];
    else for (Node *q = blk->a; q; q = q->next) want++;
    if (op == OP_MOE && (npos == 4 || npos == 5)) return;   /* gelu or swiglu experts */
    if (op == OP_MOE)
      diag_error(e->loc, "op-arity", "'moe' takes 5 tensor arguments (x, router, gate, up, down) or 4 (x, router, up, down), got %d",
                 npos);
    if (npos != want)
      diag_error(e->loc, op >= 0 ? "op-arity" : "block-arity", "'%s' takes %d tensor argument%s, got %d",
                 e->name, want, want == 1 ? "" : "s", npos);
    return;
  }
  default: internal_error("unexpected node in expression");
  }
}

static void check_init(Program *p, Node *init) {
  if (!init) return;
  if (init->kind == N_IDENT && (!strcmp(init->name, "ones") || !strcmp(init->name, "zeros")))
    return;
  if (init->kind == N_CALL && !strcmp(init->name, "normal") && init->list && !init->list->next &&
      init->list->kind != N_KWARG) {
    if (eval_num(p, init->list) <= 0)
      diag_error(init->list->loc, "bad-init", "normal() needs a positive standard deviation");
    return;
  }
  diag_error(init->loc, "bad-init", "unknown init; use ones, zeros or normal(STD)");
}

static void check_body(Program *p, Scope *sc, Node *body, bool in_block, int depth) {
  if (depth > 8)
    diag_error(body ? body->loc : p->model->loc, "too-deep", "blocks nest deeper than 8");
  for (Node *s = body; s; s = s->next) {
    switch (s->kind) {
    case N_DIM:
      if (in_block)
        diag_error(s->loc, "dim-in-block", "dims are declared in the model, not in a block");
      break;
    case N_PARAM:
      for (Node *d = s->list; d; d = d->next)
        if (!sema_dim(p, d->name))
          diag_hint("declare it in the model: dim %s = ...;", d->name),
              diag_error(d->loc, "undefined-dim", "undefined dim '%s' in the shape of '%s'", d->name, s->name);
      if (!s->list)
        diag_error(s->loc, "bad-param", "parameter '%s' needs at least one dim", s->name);
      check_init(p, s->a);
      scope_add(sc, s->name, s->loc);
      break;
    case N_ASSIGN:
      check_expr(p, sc, s->a);
      scope_add(sc, s->name, s->loc);
      break;
    case N_RETURN:
      check_expr(p, sc, s->a);
      if (s->next)
        diag_error(s->next->loc, "after-return", "statement after return");
      break;
    case N_LAYERS:
      if (in_block)
        diag_error(s->loc, "layers-in-block", "'layers' belongs in the model, not in a block");
      check_body(p, sc, s->list, false, depth + 1);
      break;
    default: internal_error("unexpected statement");
    }
  }
}

static bool has_return(Node *body) {
  for (Node *s = body; s; s = s->next)
    if (s->kind == N_RETURN) return true;
  return false;
}

static void check_names(Program *p) {
  for (Node *it = p->items; it; it = it->next) {
    if (it->kind != N_BLOCK) continue;
    for (Node *o = it->next; o; o = o->next)
      if (o->kind == N_BLOCK && !strcmp(o->name, it->name))
        diag_error(o->b->loc, "dup-block", "block '%s' is defined twice", o->name);
    if (sema_op(it->name) >= 0)
      diag_error(it->b->loc, "dup-block", "block '%s' has the name of a primitive op", it->name);
    Scope sc = {0};
    for (Node *q = it->a; q; q = q->next) scope_add(&sc, q->name, q->loc);
    check_body(p, &sc, it->list, true, 0);
    if (!has_return(it->list))
      diag_error(it->loc, "missing-return", "block '%s' has no return statement", it->name);
  }
  Scope sc = {0};
  Loc none = p->model->loc;
  scope_add(&sc, "tokens", none);
  scope_add(&sc, "targets", none);
  scope_add(&sc, "positions", none);
  check_body(p, &sc, p->model->list, false, 0);
  if (!has_return(p->model->list))
    diag_hint("end the model with: return cross_entropy(logits, targets);"),
        diag_error(p->model->loc, "missing-return", "model '%s' has no return statement", p->model->name);
}

/* ---- driver ---- */

static void find_sections(Program *p) {
  for (Node *it = p->items; it; it = it->next) {
    Node **slot = it->kind == N_MODEL ? &p->model : it->kind == N_TRAIN ? &p->train
                : it->kind == N_PARALLEL ? &p->parallel : NULL;
    if (!slot) continue;
    if (*slot)
      diag_error(it->loc, "dup-section", "a second %s section",
                 it->kind == N_MODEL ? "model" : it->kind == N_TRAIN ? "train" : "parallel");
    *slot = it;
  }
  if (!p->model)
    diag_fatal("missing-model", "no model section in the spec");
  if (!p->train)
    diag_hint("add: train { batch = 8; seq = 64; steps = 100; lr = 1e-3; }"),
        diag_error(p->model->loc, "missing-train", "model '%s' has no train section", p->model->name);
}

Program *sema_check(Node *items, Set *s, int ns, int world) {
  sets = s, nsets = ns;
  Program *p = arena_alloc(sizeof(Program));
  p->items = items;
  find_sections(p);
  collect_dims(p, p->model->list);
  defaults(&p->s);
  read_settings(p, p->train, train_keys, "train");
  read_settings(p, p->parallel, parallel_keys, "parallel");
  apply_sets(p);
  check_settings(p);
  /* ep ranks take their own rows of the batch, as dp ranks do */
  int64_t rows = p->s.batch / (p->s.mesh[AX_DP] * p->s.mesh[AX_EP] * p->s.microbatches);
  p->dims[p->ndims++] = (Dim){"B", rows, p->model->loc, -1};
  p->dims[p->ndims++] = (Dim){"T", p->s.seq, p->model->loc, -1};
  experts_dim(p);
  check_layout(p);
  experts_axis(p);
  check_names(p);
  check_world(p, world);
  return p;
}

void sema_dump(FILE *out, Program *p) {
  fprintf(out, "// sema\nmodel %s\n", p->model->name);
  for (int i = 0; i < p->ndims; i++) {
    fprintf(out, "dim %s = %lld", p->dims[i].name, (long long)p->dims[i].size);
    if (p->dims[i].axis >= 0) fprintf(out, " : %s", axis_names[p->dims[i].axis]);
    fprintf(out, "\n");
  }
  Settings *s = &p->s;
  fprintf(out, "mesh dp=%lld tp=%lld pp=%lld ep=%lld microbatches=%lld schedule=%s\n",
          (long long)s->mesh[0], (long long)s->mesh[1], (long long)s->mesh[2],
          (long long)s->mesh[3], (long long)s->microbatches, s->schedule);
  fprintf(out, "train batch=%lld seq=%lld steps=%lld lr=%g min_lr=%g warmup=%lld decay=%s "
          "beta1=%g beta2=%g eps=%g wd=%g clip=%g seed=%lld\n",
          (long long)s->batch, (long long)s->seq, (long long)s->steps, s->lr, s->min_lr,
          (long long)s->warmup, s->decay, s->beta1, s->beta2, s->eps, s->wd, s->clip,
          (long long)s->seed);
  if (s->experts)
    fprintf(out, "moe experts=%lld top_k=%lld moe_every=%lld aux_loss_coef=%g z_loss_coef=%g\n", (long long)s->experts,
            (long long)s->top_k, (long long)s->moe_every, s->aux_loss_coef, s->z_loss_coef);
  if (strcmp(s->precision, "fp32")) fprintf(out, "precision %s\n", s->precision);
}

double sema_eval(Program *p, Node *e) { return eval_num(p, e); }

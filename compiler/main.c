/* main.c: the lmc driver. compile() runs the phases in order, each
 * optionally followed by its dump:
 *   parse -> sema -> lower -> autodiff -> sched -> emit
 * With --split-input-file, each chunk between `// -----` lines compiles
 * on its own (line numbers kept), so one test file holds many cases. */
#include "lmc.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct Options {
  const char *input, *out;
  const char *dumps;
  Set sets[64];
  int nsets;
  const char *inc[16];
  int ninc;
  int world, rank;
  int plan;            /* --plan N: rank the layouts for N ranks */
  double plan_flops, plan_bw, plan_mem;
  bool split, verify, quiet;
  int fuse;            /* FUSE_AUTO, ... */
  unsigned groups;     /* GROUP_*: --groups */
} Options;

static bool dumping(Options *o, const char *name) {
  if (!o->dumps) return false;
  size_t n = strlen(name);
  for (const char *p = o->dumps; (p = strstr(p, name)); p += n)
    if ((p == o->dumps || p[-1] == ',') && (p[n] == 0 || p[n] == ','))
      return true;
  return false;
}

/* The planned memory of each pipeline stage (every rank of a stage plans
 * the same): activations for its microbatches in flight, then parameters,
 * gradients and the two Adam moments. */
static void summary(Sched *s, const char *out) {
  Graph *g = s->g;
  int64_t total = 0;   /* the whole model: dims at their full size */
  double active = 0;   /* what one token runs: top_k of an MoE layer's E experts */
  for (int i = 0; i < g->nparams; i++) {
    int64_t n = 1;
    Shape *sh = &g->params[i]->shape;
    for (int k = 0; k < sh->rank; k++) n *= sh->dim[k] >= 0 ? g->prog->dims[sh->dim[k]].size : sh->size[k];
    total += n;
    Value *p = g->params[i];
    active += p->top_k ? (double)(n / g->prog->dims[sh->dim[0]].size * p->top_k) : (double)n;
  }
  double mib = 1.0 / (1 << 20);
  char actv[64] = "";
  if (active < total) snprintf(actv, sizeof actv, " (%.2fM active per token)", active / 1e6);
  fprintf(stderr, "lmc: model %s: %d tensors, %.2fM parameters%s, %d rank%s -> %s\n",
          g->prog->model->name, g->nparams, total / 1e6, actv, s->world, s->world > 1 ? "s" : "", out);
  for (int st = 0; st < g->nstages; st++) {
    sched_stage(s, st);
    double act = s->slots * (sched_act_bytes(s) + 4.0 * s->region[V_INPUT]);
    fprintf(stderr, "lmc:   stage %d: %d x %.1f MiB activations + %.1f MiB params+grads+adam%s = "
            "peak %.1f MiB per rank\n", st, s->slots, sched_act_bytes(s) * mib, sched_state_bytes(s) * mib,
            s->region[V_COPY] ? "+bf16 copies" : "", (act + sched_state_bytes(s)) * mib);
  }
  sched_stage(s, 0);
}

static int compile(Options *o, const char *text, long len) {
  jmp_buf jb;
  diag_jmp = &jb;
  if (setjmp(jb)) {
    diag_jmp = NULL;
    return 1;
  }
  Node *items = parse_program(o->input, text, len, o->inc, o->ninc);
  if (dumping(o, "ast")) ast_dump(stdout, items);
  Program *p = sema_check(items, o->sets, o->nsets, o->world);
  if (dumping(o, "sema")) sema_dump(stdout, p);
  Graph *g = lower_program(p);
  if (o->verify) ir_verify(g);
  if (dumping(o, "ir")) ir_dump(stdout, g, false);
  if (o->fuse != FUSE_NEVER) fuse_graph(g, o->fuse);
  if (o->verify) ir_verify(g);
  if (dumping(o, "fused")) ir_dump(stdout, g, false);
  ad_backward(g);
  if (o->verify) ir_verify(g);
  if (dumping(o, "grad")) ir_dump(stdout, g, true);
  if (o->fuse != FUSE_NEVER) fuse_bias(g);
  precision_plan(g);
  if (o->verify) ir_verify(g);
  if (dumping(o, "precision")) ir_dump(stdout, g, false), ir_dump(stdout, g, true);
  g->groups = o->fuse == FUSE_NEVER ? 0 : o->groups;
  Sched *s = sched_plan(g);
  if (dumping(o, "part")) part_dump(stdout, g);
  if (dumping(o, "groups")) group_dump(stdout, g);
  sched_check(g);
  if (dumping(o, "sched")) sched_dump_all(stdout, s, o->rank);
  if (dumping(o, "timeline")) sched_timeline(stdout, g, o->plan_flops, o->plan_bw);
  if (o->out) {
    emit_bundle(s, o->out);
    if (!o->quiet) summary(s, o->out);
  }
  diag_jmp = NULL;
  return 0;
}

/* The program scheduled under o's sets, or NULL if that is not a legal
 * plan (nothing printed while diag_quiet). */
static Sched *build(Options *o, const char *text, long len) {
  jmp_buf jb;
  diag_jmp = &jb;
  if (setjmp(jb)) {
    diag_jmp = NULL;
    return NULL;
  }
  Node *items = parse_program(o->input, text, len, o->inc, o->ninc);
  Program *p = sema_check(items, o->sets, o->nsets, 0);
  Graph *g = lower_program(p);
  if (o->fuse != FUSE_NEVER) fuse_graph(g, o->fuse);
  ad_backward(g);
  if (o->fuse != FUSE_NEVER) fuse_bias(g);
  precision_plan(g);
  g->groups = o->fuse == FUSE_NEVER ? 0 : o->groups;   /* as compile() plans it */
  Sched *s = sched_plan(g);
  sched_check(g);
  diag_jmp = NULL;
  return s;
}

typedef struct Row {
  int dp, tp, pp, ep, m;
  PlanCost c;
} Row;

/* By estimated time (equal to a part in 10^9: sums in another order),
 * then memory. */
static int by_time(const void *a, const void *b) {
  const Row *x = a, *y = b;
  if (fabs(x->c.time - y->c.time) > 1e-9 * (x->c.time + y->c.time)) return x->c.time < y->c.time ? -1 : 1;
  return x->c.memory < y->c.memory ? -1 : x->c.memory > y->c.memory;
}

static void add_set(Options *o, const char *name, int v) {
  o->sets[o->nsets++] = (Set){name, arena_printf("%d", v)};
}

/* Whether the spec has experts that ep could split. */
static bool has_experts(Sched *s) {
  Program *p = s->g->prog;
  for (int i = 0; i < p->ndims; i++)
    if (p->dims[i].axis == AX_EP) return true;
  return p->s.experts > 0;
}

/* lmc --plan N: every dp x tp x pp (x ep, with experts) = N and microbatch
 * count the spec allows, each compiled and scheduled, ranked by estimated
 * step time. */
static int plan_search(Options *o, const char *text, long len) {
  Sched *first = build(o, text, len);          /* the spec itself, loudly */
  if (!first) return 1;
  bool moe = has_experts(first);
  Row *rows = arena_alloc(4096 * sizeof(Row));
  int nrows = 0, tried = 0, over = 0, base = o->nsets, n = o->plan;
  for (int ep = 1; ep <= (moe ? n : 1); ep++)
  for (int dp = 1; dp * ep <= n; dp++)
    for (int tp = 1; dp * tp * ep <= n; tp++)
      for (int m = 1; m <= 64 && nrows < 4096; m *= 2) {
        if (n % (dp * tp * ep)) continue;
        int pp = n / (dp * tp * ep);
        if (pp == 1 && m > 1 && tp > 1) continue;   /* accumulation: once per dp is enough */
        o->nsets = base;
        add_set(o, "dp", dp), add_set(o, "tp", tp), add_set(o, "pp", pp), add_set(o, "microbatches", m);
        if (moe) add_set(o, "ep", ep);
        diag_quiet = true;
        Sched *s = build(o, text, len);
        diag_quiet = false;
        tried++;
        if (!s) continue;
        Row r = {dp, tp, pp, ep, m, {.memory = 0}};
        plan_cost(s, o->plan_flops, o->plan_bw, &r.c);
        if (o->plan_mem > 0 && r.c.memory > o->plan_mem) { over++; continue; }
        rows[nrows++] = r;
      }
  o->nsets = base;
  qsort(rows, nrows, sizeof(Row), by_time);
  printf("plans for %d ranks: %d legal of %d tried%s; cost model: %.3g FLOP/s, %.3g B/s per rank\n", n,
         nrows + over, tried, over ? arena_printf(", %d over the memory limit", over) : "", o->plan_flops,
         o->plan_bw);
  printf("  dp  tp  pp%s   m  memory/rank   step (est)   compute    bubble      comm\n", moe ? "  ep" : "");
  for (int i = 0; i < nrows && i < 20; i++) {
    Row *r = &rows[i];
    printf("  %2d  %2d  %2d%s  %2d  %8.1f MiB  %9.2f ms  %7.2f ms  %7.2f ms  %7.2f ms\n", r->dp, r->tp, r->pp,
           moe ? arena_printf("  %2d", r->ep) : "", r->m,
           r->c.memory / (1 << 20), 1e3 * r->c.time, 1e3 * r->c.compute, 1e3 * r->c.bubble, 1e3 * r->c.comm);
  }
  if (nrows > 20) printf("  ... %d more\n", nrows - 20);
  if (nrows == 0) {
    fprintf(stderr, "lmc: error: no legal plan for %d ranks%s [plan-none]\n", n, over ? " within the memory limit" : "");
    return 1;
  }
  return 0;
}

static void usage(int code) {
  fprintf(code ? stderr : stdout,
          "usage: lmc SPEC.lm [-o BUNDLE_DIR] [options]\n"
          "  -o DIR              write the bundle (manifest + per-rank schedules)\n"
          "  --dump=LIST         print phases: ast,sema,ir,fused,grad,precision,part,groups,sched;\n"
          "                      timeline: every rank's step simulated at --plan-flops and\n"
          "                      --plan-bw, as a Chrome trace (Perfetto)\n"
          "  --fuse=MODE         auto (default: fuse the LM head and loss when the logits\n"
          "                      reach 128 MiB), always, recompute (a head that recomputes\n"
          "                      its logits in the backward pass), or never (also --no-fuse:\n"
          "                      no fusion, no kernels generated for groups of ops)\n"
          "  --groups=LIST       the groups of ops lmc writes kernels for: all (default),\n"
          "                      none, or of add_norm, elementwise, norm_bwd\n"
          "  --set NAME=VALUE    override a dim, train or parallel setting\n"
          "  -I DIR              search DIR for imports\n"
          "  --world N           check the plan against N ranks\n"
          "  --rank R            the rank whose schedule --dump=sched prints (default 0;\n"
          "                      -1: every rank)\n"
          "  --verify-each       run the IR verifier after every pass\n"
          "  --split-input-file  compile each '// -----' chunk separately\n"
          "  --plan N            rank every legal dp x tp x pp x microbatches for N ranks by\n"
          "                      planned memory and estimated step time (no bundle)\n"
          "  --plan-flops X      the cost model's FLOP/s per rank (default 1e14)\n"
          "  --plan-bw X         its bytes/s per rank for collectives and transfers (default 1e11)\n"
          "  --plan-mem GIB      leave out plans over GIB per rank\n"
          "  -q                  no summary line\n");
  exit(code);
}

static void parse_args(Options *o, int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) usage(0);
    else if (!strcmp(a, "-o") && i + 1 < argc) o->out = argv[++i];
    else if (!strncmp(a, "--dump=", 7)) o->dumps = a + 7;
    else if (!strcmp(a, "-I") && i + 1 < argc) {
      if (o->ninc == 16) usage(1);
      o->inc[o->ninc++] = argv[++i];
    } else if (!strcmp(a, "--set") && i + 1 < argc) {
      char *kv = argv[++i], *eq = strchr(kv, '=');
      if (!eq || eq == kv || o->nsets == 64) {
        fprintf(stderr, "lmc: error: --set takes NAME=VALUE, got '%s'\n", kv);
        exit(1);
      }
      *eq = 0;
      o->sets[o->nsets++] = (Set){kv, eq + 1};
    } else if (!strcmp(a, "--world") && i + 1 < argc) {
      o->world = atoi(argv[++i]);
      if (o->world <= 0) {
        fprintf(stderr, "lmc: error: --world takes a positive number\n");
        exit(1);
      }
    } else if (!strcmp(a, "--plan") && i + 1 < argc) {
      o->plan = atoi(argv[++i]);
      if (o->plan <= 0 || o->plan > 4096) { fprintf(stderr, "lmc: error: --plan takes 1..4096 ranks\n"); exit(1); }
    } else if (!strcmp(a, "--plan-flops") && i + 1 < argc) {
      o->plan_flops = atof(argv[++i]);
    } else if (!strcmp(a, "--plan-bw") && i + 1 < argc) {
      o->plan_bw = atof(argv[++i]);
    } else if (!strcmp(a, "--plan-mem") && i + 1 < argc) {
      o->plan_mem = atof(argv[++i]) * (1 << 30);
    } else if (!strcmp(a, "--rank") && i + 1 < argc) {
      o->rank = atoi(argv[++i]);
    } else if (!strcmp(a, "--verify-each")) o->verify = true;
    else if (!strcmp(a, "--split-input-file")) o->split = true;
    else if (!strcmp(a, "--no-fuse") || !strcmp(a, "--fuse=never")) o->fuse = FUSE_NEVER;
    else if (!strcmp(a, "--fuse=always")) o->fuse = FUSE_ALWAYS;
    else if (!strcmp(a, "--fuse=recompute")) o->fuse = FUSE_RECOMPUTE;
    else if (!strcmp(a, "--fuse=auto")) o->fuse = FUSE_AUTO;
    else if (!strncmp(a, "--groups=", 9)) {
      if ((o->groups = group_kinds(a + 9)) == ~0u) {
        fprintf(stderr, "lmc: error: --groups takes all, none or a list of add_norm, elementwise, norm_bwd: '%s'\n", a + 9);
        exit(1);
      }
    }
    else if (!strcmp(a, "-q")) o->quiet = true;
    else if (a[0] == '-' && a[1]) {
      fprintf(stderr, "lmc: error: unknown option '%s'\n", a);
      usage(1);
    } else if (o->input) {
      fprintf(stderr, "lmc: error: more than one input file\n");
      exit(1);
    } else o->input = a;
  }
  if (!o->input) usage(1);
}

/* Chunk k of the text, other chunks blanked to newlines so that line
 * numbers stay those of the whole file. */
static int run_split(Options *o, const SrcFile *sf) {
  const char *sep = "// -----";
  int status = 0;
  const char *start = sf->text, *end = sf->text + sf->len;
  while (start <= end) {
    const char *s = start, *stop = end;
    for (const char *p = start; p < end; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : end)
      if (!strncmp(p, sep, strlen(sep)) && (p == sf->text || p[-1] == '\n')) {
        stop = p;
        break;
      }
    long n = end - sf->text;
    char *buf = malloc(n + 1);
    for (long i = 0; i < n; i++) {
      const char *c = sf->text + i;
      buf[i] = (c >= s && c < stop) ? *c : (*c == '\n' ? '\n' : ' ');
    }
    status |= compile(o, buf, n);
    fflush(stdout);
    fflush(stderr);
    free(buf);
    if (stop == end) break;
    start = strchr(stop, '\n') ? strchr(stop, '\n') + 1 : end;
    if (start == end) break;
  }
  return status;
}

int main(int argc, char **argv) {
  Options o = {.groups = GROUP_ALL};
  parse_args(&o, argc, argv);
  SrcFile *sf = parse_load(o.input);
  if (!sf) {
    fprintf(stderr, "lmc: error: cannot read '%s'\n", o.input);
    return 1;
  }
  if (o.plan_flops <= 0) o.plan_flops = 1e14;
  if (o.plan_bw <= 0) o.plan_bw = 1e11;
  int status = o.plan ? plan_search(&o, sf->text, sf->len)
             : o.split ? run_split(&o, sf) : compile(&o, sf->text, sf->len);
  arena_free_all();
  return status;
}

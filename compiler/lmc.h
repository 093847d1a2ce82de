/* lmc.h: the compiler's one internal header, in sections named after the
 * file that owns them. Pipeline (main.c:compile):
 *   parse -> sema -> lower -> autodiff -> sched -> emit
 * Every phase allocates from the compilation's arena; errors longjmp back
 * to compile() after printing a located diagnostic. */
#ifndef LMC_H
#define LMC_H

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

typedef struct Node Node;
typedef struct Value Value;
typedef struct Inst Inst;

/* ---- arena.c ---- */
void *arena_alloc(size_t n);            /* zeroed, freed by arena_free_all */
char *arena_strdup(const char *s);
char *arena_strndup(const char *s, size_t n);
char *arena_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void arena_free_all(void);

/* ---- diag.c ---- */
typedef struct SrcFile {
  const char *name;
  const char *text;
  long len;
} SrcFile;

typedef struct Loc {
  const SrcFile *file;
  int line, col, end_line, end_col;
} Loc;

extern jmp_buf *diag_jmp;               /* where errors unwind to */
extern bool diag_quiet;                 /* report nothing (lmc --plan tries many plans) */
_Noreturn void diag_error(Loc loc, const char *id, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void diag_hint(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void diag_note(Loc loc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
_Noreturn void diag_fatal(const char *id, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
#define internal_error(msg) diag_internal(__FILE__, __LINE__, msg)
_Noreturn void diag_internal(const char *file, int line, const char *msg);

/* ---- ast.c ---- */
typedef enum {
  N_NUM, N_IDENT, N_STR, N_BINOP, N_NEG, N_CALL, N_KWARG, N_TUPLE,
  N_DIM, N_PARAM, N_ASSIGN, N_LAYERS, N_RETURN,
  N_IMPORT, N_BLOCK, N_MODEL, N_PARALLEL, N_TRAIN, N_SETTING, N_LAYOUT,
} NodeKind;

struct Node {
  NodeKind kind;
  Loc loc;
  const char *name;   /* identifier, op name, setting key, string */
  double num;         /* N_NUM */
  bool is_int;        /* N_NUM written without '.' or exponent */
  int op;             /* N_BINOP: '+', '-', '*', '/' */
  Node *a, *b;        /* operands, value, count, init */
  Node *list;         /* args, dims, body, params */
  Node *next;         /* sibling in a list */
  int depth;          /* expression nesting, bounded so later phases may recurse */
};

Node *ast_new(NodeKind kind, Loc loc);
Node *ast_num(Loc loc, const char *text);
Node *ast_ident(Loc loc, const char *name);
Node *ast_str(Loc loc, const char *text);  /* text includes quotes */
Node *ast_binop(Loc loc, int op, Node *a, Node *b);
Node *ast_neg(Loc loc, Node *a);
Node *ast_call(Loc loc, Node *fn, Node *args);
Node *ast_kwarg(Loc loc, Node *key, Node *val);
Node *ast_tuple(Loc loc, Node *items);
Node *ast_dim(Loc loc, Node *name, Node *val);
Node *ast_param(Loc loc, Node *name, Node *dims, Node *init);
Node *ast_assign(Loc loc, Node *name, Node *val);
Node *ast_layers(Loc loc, Node *name, Node *count, Node *body);
Node *ast_return(Loc loc, Node *val);
Node *ast_import(Loc loc, Node *path);
Node *ast_block(Loc loc, Node *name, Node *params, Node *body);
Node *ast_model(Loc loc, Node *name, Node *body);
Node *ast_section(Loc loc, NodeKind kind, Node *settings);
Node *ast_setting(Loc loc, Node *key, Node *val);
Node *ast_layout(Loc loc, Node *rules);
Node *ast_append(Node *list, Node *item);
void ast_dump(FILE *out, Node *items);
void ast_print_expr(FILE *out, Node *e);

/* ---- parse.c (driver around parser.y / lexer.l) ---- */
typedef struct Parser {
  const SrcFile *file;
  Node *items;
  int depth;          /* nesting depth, bounded */
} Parser;
Node *parse_program(const char *path, const char *text, long len,
                    const char **incdirs, int nincdirs);
SrcFile *parse_load(const char *path);   /* NULL if unreadable */

/* ---- sema.c ---- */
#define MAX_DIMS 64
#define MAX_RANK 6
#define MAX_AXES 4

enum { AX_DP, AX_TP, AX_PP, AX_EP };
extern const char *axis_names[MAX_AXES];

typedef struct Dim {
  const char *name;
  int64_t size;
  Loc loc;
  int axis;           /* mesh axis from the layout, or -1 */
} Dim;

typedef struct Settings {
  int64_t batch, seq, steps, warmup, seed, microbatches, eval_every,
      eval_batches, save_every;
  double lr, min_lr, beta1, beta2, eps, wd, clip, val_fraction;
  int64_t experts, top_k, moe_every;   /* experts > 0: every moe_every-th MLP becomes an MoE */
  const char *precision;               /* "fp32" or "bf16": precision.c */
  double aux_loss_coef, z_loss_coef;   /* MoE load balancing and router z-loss */
  const char *decay, *data, *schedule;
  int64_t mesh[MAX_AXES];
  double bucket_mb;                    /* the data parallel gradient all-reduce's buckets, MiB of fp32 */
} Settings;

typedef struct Set {                   /* --set NAME=VALUE */
  const char *name, *value;
} Set;

typedef struct Program {
  Node *items;
  Node *model;
  Dim dims[MAX_DIMS];
  int ndims;
  Settings s;
  Node *parallel, *train;
} Program;

Program *sema_check(Node *items, Set *sets, int nsets, int world);
Dim *sema_dim(Program *p, const char *name);
Node *sema_block(Program *p, const char *name);
int sema_op(const char *name);         /* callable op id or -1 */
double sema_eval(Program *p, Node *e); /* a numeric expression over dims */
void sema_dump(FILE *out, Program *p);

/* ---- ir.c ---- */
enum {
#define OP(e, s, ni, no, c) OP_##e,
#include "ops.def"
#undef OP
  NUM_OPS
};
extern const char *op_names[NUM_OPS];
extern const int op_nin[NUM_OPS], op_nout[NUM_OPS], op_callable[NUM_OPS];

typedef struct Shape {
  int rank;
  int dim[MAX_RANK];   /* index into Program.dims, or -1 for anonymous */
  int64_t size[MAX_RANK];
} Shape;

/* V_COPY: a parameter's bf16 copy (precision.c), kept for the run and
 * rewritten by each optimizer step */
enum { V_ACT, V_PARAM, V_GRAD, V_INPUT, V_STATE, V_COPY, NUM_KINDS };
enum { DT_F32, DT_BF16, DT_I32 };   /* a value's dtype (precision.c) */
extern const char *dtype_names[3];

struct Value {
  int id;
  int kind;            /* V_ACT, ... */
  const char *name;
  Shape shape;
  bool is_int;         /* token ids */
  int dtype;           /* DT_*, decided by precision.c */
  Inst *def;
  Value *grad;         /* gradient value (autodiff) */
  Value *of;           /* V_GRAD: the value it is the gradient of; V_COPY: the parameter */
  bool needs_grad;
  bool esplit;         /* param: an expert weight whose dim 0 (the experts) ep splits */
  bool router;         /* param: an MoE router, whole on every rank */
  int64_t top_k;       /* param: an expert weight, the experts a token runs of its layer's */
  /* param only */
  const char *init;    /* "normal", "ones", "zeros" */
  double init_std;
  /* sched */
  int stage;           /* param: the first stage that holds it; copy: its stage */
  uint64_t stages;     /* param: every stage that holds a copy */
  int first, last;     /* live range over the instruction list */
  int64_t offset;      /* in elements, within its region */
  int64_t boffset;     /* act under bf16 storage: in bytes, within the byte plan */
};

#define MAX_ATTRS 10
#define MAX_IN 6      /* inputs of an instruction; attention_bwd has the most */
struct Inst {
  int id;
  int op;
  Value *in[MAX_IN];
  Value *out[3];
  bool acc[3];         /* out += (instead of =) */
  int nin, nout;
  const char *akey[MAX_ATTRS];
  double aval[MAX_ATTRS];
  int nattr;
  bool bwd;
  int stage;           /* pipeline stage that runs it */
  Loc loc;
  Inst **body;         /* OP_FUSED (group.c): the instructions it runs */
  int nbody;
  const char *kernel;  /* OP_FUSED: its generated kernel's name */
};

typedef struct Graph {
  Program *prog;
  Value **vals; int nvals, capvals;
  Inst **fwd; int nfwd, capfwd;
  Inst **bwd; int nbwd, capbwd;
  Value **params; int nparams, capparams;
  Inst **casts; int ncasts;   /* precision.c: each copy's cast, run at load (the optimizer rewrites them) */
  Value *tokens, *targets, *positions, *loss;
  int cur_stage;       /* stamped on each new instruction */
  unsigned groups;     /* the kinds of group.c's groups made (GROUP_*; --groups, none under --fuse=never) */
  int nstages;
} Graph;

Graph *ir_new(Program *p);
Value *ir_value(Graph *g, int kind, const char *name, Shape shape);
Inst *ir_inst(Graph *g, int op, bool bwd, Loc loc);
void ir_set(Inst *in, const char *key, double v);
double ir_get(Inst *in, const char *key);
bool ir_has(Inst *in, const char *key);
extern Loc ir_loc;                      /* the expression lower is building, for size errors */
int64_t shape_numel(const Shape *s);
void ir_print_shape(FILE *out, Program *p, const Shape *s);
void ir_dump(FILE *out, Graph *g, bool bwd);
void ir_print_inst(FILE *out, Program *p, Inst *in);
void ir_verify(Graph *g);

/* ---- lower.c ---- */
Graph *lower_program(Program *p);

/* ---- fuse.c ---- */
enum { FUSE_AUTO, FUSE_ALWAYS, FUSE_NEVER, FUSE_RECOMPUTE };   /* lmc --fuse= */
void fuse_graph(Graph *g, int mode);      /* the head by mode (never: not called) */
void fuse_bias(Graph *g);                 /* after autodiff: bias adds into their matmuls */

/* ---- autodiff.c ---- */
void ad_backward(Graph *g);

/* ---- precision.c ---- */
void precision_plan(Graph *g);   /* every value's dtype; bf16 weight copies */
/* Under precision = bf16 the GPU kernels store the bf16 values in bf16
 * (`act`) and the activations get a byte plan; the CPU backend holds them
 * as reals, rounded. */
bool precision_bf16(const Graph *g);

/* ---- part.c ---- */
typedef struct Xfer {  /* a value that crosses between pipeline stages */
  Value *v;
  int peer;            /* the other stage */
} Xfer;

typedef struct Part {  /* one pipeline stage's share of the graph */
  int stage;
  Inst **fwd; int nfwd;
  Inst **bwd; int nbwd;
  Inst **casts; int ncasts;            /* the bf16 copies this stage makes */
  Xfer *fsend, *frecv, *bsend, *brecv;   /* activations out/in, gradients out/in */
  int nfsend, nfrecv, nbsend, nbrecv;
} Part;

void part_stages(Graph *g);             /* stage of every instruction and param */
Part *part_stage(Graph *g, int stage);  /* the stage's instructions and transfers */
void part_dump(FILE *out, Graph *g);

/* ---- group.c ---- */
/* list with each run of instructions a generated kernel does as one
 * OP_FUSED; its operands in the kernel's parameter order; --dump=groups;
 * the kernels, for kernels.cu */
int group_span(Graph *g, Inst **list, int n, int i);   /* instructions of the group at list[i] (1: none) */
Inst **group_list(Graph *g, Inst **list, int n, int *count);
int group_operands(Inst *fused, Value **ops);
enum { GROUP_ADD_NORM = 1, GROUP_ELEMENTWISE = 2, GROUP_NORM_BWD = 4, GROUP_ALL = 7 };
bool group_takes(Graph *g, Inst *in);   /* an op group.c writes kernels for, alone or in a run */
unsigned group_kinds(const char *list);  /* --groups=LIST: add_norm,elementwise,norm_bwd, all or none; ~0u if bad */
void group_dump(FILE *out, Graph *g);
void group_kernels(FILE *out, Graph *g);

/* ---- sched.c ---- */
enum { ACT_ZERO_GRADS, ACT_ZERO_STATE, ACT_LOAD, ACT_RECV, ACT_FWD, ACT_SEND, ACT_BWD,
       ACT_ALLREDUCE, ACT_OPTIMIZER, ACT_WAIT };

typedef struct Action {
  int kind;
  int mb, peer, axis;  /* peer: a stage (send/recv); axis: a mesh axis */
  Value *v;            /* send/recv */
  int region;          /* allreduce */
  int64_t off, n;
  bool grad;           /* send/recv of a gradient */
  bool norm_tp, norm_pp, norm_ep;   /* optimizer: sum the gradient norm over these groups */
  bool zeros;          /* allreduce: this rank holds no copy and adds zeros */
  bool async;          /* allreduce: overlapped with what follows, up to the next wait */
  int from, to;        /* bwd: a segment, the (grouped) program's instructions [from, to); to 0: all */
} Action;

typedef struct Sched {
  Graph *g;
  Part *part;          /* the stage being emitted */
  int rank, world;
  int coord[MAX_AXES]; /* this rank's place on each mesh axis */
  int slots;           /* microbatches whose activations are alive at once */
  int64_t region[NUM_KINDS];   /* elements per region: act, param, grad, input, state, copy */
  int64_t peak_act;    /* one slot's arena */
  int64_t act_bytes;   /* under bf16 storage: one slot's arena in bytes, each value at its dtype's size (else 0) */
  Action *step; int nstep;
  Action *eval; int neval;
} Sched;
Sched *sched_plan(Graph *g);            /* stage 0; then sched_stage for others */
void sched_stage(Sched *s, int stage);
double sched_act_bytes(Sched *s);      /* one slot's activations, in bytes */
double sched_state_bytes(Sched *s);    /* weights, gradients, Adam, bf16 copies */
void sched_set_rank(Sched *s, int rank);
void sched_actions(Sched *s);           /* this rank's step and eval lists */
double sched_dp_tail(Sched *s, double flops, double bw);   /* the dp all-reduce past the last backward, seconds */
void sched_check(Graph *g);             /* sends match receives, no deadlock */
bool sched_has(Sched *s, Value *v);     /* v appears in this stage's schedule */
void sched_dump_all(FILE *out, Sched *s, int rank);
/* Every rank's step simulated at flops FLOP/s and bw bytes/s, as a Chrome trace. */
void sched_timeline(FILE *out, Graph *g, double flops, double bw);

/* ---- plan.c ---- */
typedef struct PlanCost {
  double memory;       /* bytes, the largest rank's plan */
  double flops;        /* GEMM FLOPs per step, the busiest rank */
  double bytes;        /* bytes moved per step, the busiest rank */
  double compute, bubble, comm, time;   /* seconds, estimated */
} PlanCost;
void plan_cost(Sched *s, double flops_rate, double bandwidth, PlanCost *c);
double plan_inst_flops(Inst *in);       /* GEMM and attention FLOPs of one instruction */

/* ---- kernels.c ---- */
void kernels_emit(FILE *out, Graph *g);
void kernels_template(FILE *out, const char *tpl, bool bf16, Graph *g);   /* its sections, all where g is NULL */
void kernels_parts_begin(void);          /* kernels.cu's parts (the template's prelude): numbered from 2 */
void kernels_parts_end(FILE *out);       /* "// @parts N" */
void kernels_attention(FILE *out, int64_t k, bool bwd, bool bf16);   /* the kernels for head dim k */
int kernels_norm_groups(int64_t d);                        /* a norm backward's kernel for width d: 0 none */
bool kernels_norm_shared(int64_t ng, bool ln);              /* its partial sums in shared memory (bf16 storage) */
void kernels_norm_bwd(FILE *out, int64_t d, bool ln);

/* ---- emit.c ---- */
void emit_bundle(Sched *s, const char *dir);
void emit_schedule(FILE *out, Sched *s);
void emit_manifest(FILE *out, Sched *s);

#endif

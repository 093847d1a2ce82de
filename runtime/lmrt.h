/* lmrt.h: the runtime's one internal header, in sections named after the
 * file that owns them. A run: load a bundle (bundle.c), pick a backend
 * (cpu.c), lay out its regions and initialise the weights (exec.c, rng.c),
 * then train (train.c): data (data.c), schedule steps (exec.c), AdamW and
 * clipping (backend), checkpoints (ckpt.c). */
#ifndef LMRT_H
#define LMRT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

enum {
#define OP(e, s, ni, no, c) OP_##e,
#include "ops.def"
#undef OP
  NUM_OPS
};
extern const char *rt_op_names[NUM_OPS];

/* ---- util.c ---- */
_Noreturn void rt_die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
extern void (*rt_die_hook)(const char *msg);   /* under MPI: reports and ends the other ranks too */
extern void (*rt_die_first)(void);              /* before that: puts a checkpoint being written in place */
void *rt_xmalloc(size_t n);
double rt_now(void);
const char *rt_bytes(char buf[32], double bytes);   /* "712.0 MiB", "46.41 GiB" */
double rt_peak_tflops(const char *device);           /* a GPU's dense bf16 peak by its name; 0: unknown */
void rt_order_by_id(int32_t *order, const int32_t *id, int64_t n);   /* 0..n-1 sorted by id[], stable */
uint64_t rt_fnv1a(const void *p, size_t n, uint64_t h);
int rt_mkdirs(const char *path);     /* mkdir -p */

/* ---- comm.c ---- */
enum { AXIS_DP, AXIS_TP, AXIS_PP, AXIS_EP };
extern double comm_timeout;          /* seconds without progress that end the job */
void comm_init(int *argc, char ***argv);
int comm_rank(void);
int comm_world(void);
void comm_groups(const int coord[4], const int mesh[4]);
void comm_allreduce_sum(void *buf, int64_t n, int elem, int axis);
void comm_allreduce(void *buf, int64_t n, int elem, int axis, int op);
int comm_group_size(int axis);
int comm_group_rank(int axis);
void comm_group_bcast(void *buf, int bytes, int axis);   /* from the group's rank 0 */
const char *comm_axis_name(int axis);
/* counts and displacements in elements, one per rank of the group */
void comm_alltoallv(const void *send, const int64_t *scount, const int64_t *sdispl, void *recv, const int64_t *rcount,
                    const int64_t *rdispl, int elem, int axis);
void comm_isend(const void *buf, int64_t n, int elem, int peer, int tag, int axis, int slot);
void comm_recv(void *buf, int64_t n, int elem, int peer, int tag, int axis);
void comm_wait_sends(int slot);
void comm_barrier(void);
void comm_gather(const double *mine, int n, double *all);   /* rank 0 gets n per rank */
bool comm_all(bool ok);
void comm_finalize(void);

/* ---- rng.c ---- */
uint64_t rng_hash(uint64_t a, uint64_t b, uint64_t c);
double rng_uniform(uint64_t key, uint64_t i);          /* (0, 1) */
double rng_normal(uint64_t key, uint64_t i);
uint64_t rng_key(const char *name, uint64_t seed);

/* ---- bundle.c ---- */
/* R_COPY: the weights' bf16 copies (bf16 plan): held in bf16 by a backend
 * with widen, else as reals rounded to bf16 */
enum { R_ACT, R_PARAM, R_GRAD, R_INPUT, R_STATE, R_COPY, NUM_REGIONS };

typedef struct RtValue {
  bool present;            /* ids are global; a rank has only its stage's */
  int region;
  int64_t off, n;
  int64_t boff;            /* act under bf16 storage: its byte offset in the byte plan */
  int rank;
  int64_t shape[6];
  int split;               /* param: the dim tp splits, or -1 */
  bool esplit;             /* param: an expert weight, its dim 0 split by ep */
  bool bf16;               /* the plan stores it in bf16: the backends round it when written */
  bool copy;               /* param: another stage holds the primary copy */
  char name[128];
} RtValue;

#define RT_MAX_IN 6   /* inputs of an instruction; attention_bwd has the most */
typedef struct RtInst {
  int op;
  int out[3], in[RT_MAX_IN]; /* value ids, -1 for none */
  bool acc[3];
  int64_t m, n, k, d, v, b, t, h, g, nb;
  int64_t v0;              /* vocab parallel: the first row this rank holds */
  int ta, tb, red;         /* red: allreduce op, 0 sum 1 max */
  int bg;                  /* matmul_bgrad: the input whose sums over k are out[1] */
  int axis;                /* allreduce: its group (AXIS_TP unless group= says) */
  double eps, theta, scale;
  /* MoE: experts (here e: on this rank for the expert GEMMs), top k, row
   * segments, tokens one balance covers, renormalise the gates, the loss
   * coefficients and this rank's share of the balance losses */
  int64_t e, top, seg, ng;
  int rn;
  bool fixed;              /* moe_route: keep the experts in idx (a gradient check's) */
  double aux, zl, share;
  unsigned bf;             /* under bf16 storage: the operands stored in bf16 (RT_BF_OUT, RT_BF_IN) */
  /* fused: instructions one kernel lmc generated runs (compiler/group.c),
   * launched grid x block with the members' values, each once in the
   * order they name them, outputs first; where it has a finish kernel,
   * that next (fgrid x 256, the same values), both given a scratch buffer
   * of `scratch` bytes as their last parameter; a backend without
   * run_fused runs the members */
  struct RtInst *body;
  int nbody;
  int *ops, nops;          /* fused: the kernel's parameters, the members' values each once (read_fused) */
  char kernel[96], finish[104];
  int64_t grid, block, fgrid, scratch;
} RtInst;
#define RT_MAX_FUSED 32    /* values of a fused instruction */
#define RT_BF_OUT(j) (1u << (j))
#define RT_BF_IN(j) (1u << (3 + (j)))

typedef struct RtParam {
  char name[128];
  int rank;
  int64_t shape[6], numel;   /* the whole parameter */
  int64_t local;             /* elements on this rank */
  int split;                 /* the dim tp splits, or -1 */
  bool esplit;               /* an expert weight: ep splits dim 0 (the experts) */
  bool copy;                 /* a copy of a parameter another stage holds too */
  char init[16];
  double std;
  bool decay;
  int value;               /* value id in the schedule, -1 if on another stage */
  int copy16;              /* its bf16 copy's value id (the cast program writes it), or -1 */
} RtParam;

typedef struct Train {
  int64_t batch, seq, steps, warmup, seed, eval_every, eval_batches, save_every,
      microbatches;
  double lr, min_lr, beta1, beta2, eps, wd, clip, val_fraction;
  char decay[16];
  char data[1024];
} Train;

enum { A_ZERO_GRADS, A_ZERO_STATE, A_LOAD, A_RUN_FWD, A_RUN_BWD, A_ALLREDUCE, A_OPTIMIZER,
       A_SEND, A_RECV, A_WAIT };
typedef struct Action {
  int kind;
  int64_t mb;
  int region, axis;        /* allreduce: what and over which group */
  bool norm_tp, norm_pp, norm_ep;   /* optimizer: sum the gradient norm over these groups */
  bool zeros;              /* allreduce: join the group with zeros (no copy here) */
  bool async;              /* allreduce: may overlap what follows, up to a wait */
  int from, to;            /* run bwd: the program's instructions [from, to) */
  int64_t off, n;
  int value, peer;         /* send/recv: the value, the peer's index in the group */
  bool grad;
} Action;

typedef struct Bundle {
  char dir[1024];
  char model[128];
  int world, rank;
  int coord[4], mesh[4];   /* dp, tp, pp, ep */
  int stage, slots;        /* pipeline stage; microbatches in flight */
  int64_t vocab, B, T;
  Train train;
  RtParam *params; int nparams;
  int64_t nparam_elems;
  int64_t nparam_active;   /* what one token runs: MoE layers' top k of E experts (else all) */
  bool bf16;               /* the precision plan is bf16 (values tagged dtype=bf16; the kernels store them in bf16) */
  int64_t act_bytes;       /* bf16 storage: one slot's activations in bytes, each value at its dtype's size */
  int64_t region[NUM_REGIONS];
  RtValue *vals; int nvals;
  RtInst *fwd; int nfwd;
  RtInst *bwd; int nbwd;
  RtInst *casts; int ncasts;       /* the weights' bf16 copies, made after loading (the optimizer keeps them) */
  int tokens, targets, positions, loss;
  Action *actions; int nactions;   /* one training step */
  Action *evals; int nevals;       /* one validation batch */
} Bundle;

RtInst rt_inst(int op);                            /* op with no operands (-1s) and no sizes */
Bundle *bundle_open(const char *dir);              /* the manifest only */
void bundle_load_rank(Bundle *b, int rank);       /* then one rank's schedule */
Bundle *bundle_load(const char *dir, int rank);   /* both */
void bundle_free(Bundle *b);
void bundle_abandon(void);                         /* after a caught loading error: free what was loaded */

/* ---- cpu.c (the backend interface and its CPU implementation) ---- */
typedef struct AdamArgs {
  double lr, beta1, beta2, eps, wd, bc1, bc2, gscale;
  bool later;   /* Backend.optimizer: leave the norm for step_end to copy (returns NAN) */
  unsigned norm_axes;   /* Backend.optimizer: the groups (1 << AXIS_*) that sum the squared norm, on the
                         * device (Backend.device_collectives), before the clipping */
} AdamArgs;

typedef struct OptParam {     /* one parameter, for Backend.optimizer */
  void *w, *g, *m, *v;
  void *w16;                  /* its bf16 copy, to write from the updated w, or NULL */
  int64_t n;
  double wd;                  /* its weight decay */
  bool in_norm;               /* counts in the gradient norm */
} OptParam;

typedef struct Backend {
  const char *name;
  int elem;                              /* bytes per real */
  void *(*alloc)(size_t bytes);          /* zeroed */
  void (*release)(void *p);
  void (*upload)(void *dst, const double *src, int64_t n);   /* host f64 -> real */
  void (*download)(double *dst, const void *src, int64_t n); /* real -> host f64 */
  void (*read)(void *dst, const void *src, int64_t n);       /* n reals as they are, to host memory */
  void (*write)(void *dst, const void *src, int64_t n);      /* n reals as they are, from host memory */
  /* optional: the device's memory free and in all, in bytes, and its
   * name (false where it cannot say) */
  bool (*memory)(double *free_b, double *total, char *name, size_t n);
  /* optional: host memory [p, p + n) registered with the device (on) so
   * that read copies into it at the bus's speed, or registered no more;
   * callable from any thread; false where it cannot be (read still works) */
  bool (*pin)(void *p, size_t n, bool on);
  void (*zero)(void *p, int64_t n);
  /* optional: zero n ranges of base at once (pairs of offset and length,
   * in reals; the same table every call: a backend may keep its copy) */
  void (*zero_ranges)(void *base, const int64_t (*ranges)[2], int n);
  void (*upload_ids)(void *dst, const int32_t *src, int64_t n);
  void (*run)(const RtInst *in, void **out, void **in_ptrs);
  void (*run_fused)(const RtInst *x, void **ops, int n);   /* optional: a generated kernel (RtInst.body) */
  double (*sumsq)(const void *const *x, const int64_t *n, int count);   /* of count tensors */
  void (*allreduce)(void *x, int64_t n, int axis, int op);  /* op 0 sum, 1 max */
  /* optional: a sum all-reduce queued to overlap the work queued after it
   * (false: it cannot, the interpreter runs it at the wait instead);
   * wait_allreduces: what follows waits for every one queued, which must
   * finish within the collectives' deadline */
  bool (*allreduce_async)(void *x, int64_t n, int axis);
  void (*wait_allreduces)(void);
  /* the pipeline's transfers of n values of elem bytes (reals, or 2: bf16
   * values held in bf16); send is asynchronous, copying out first */
  void (*send)(const void *x, int64_t n, int elem, int peer, int tag, int axis, int slot);
  void (*recv)(void *x, int64_t n, int elem, int peer, int tag, int axis);
  void (*wait_sends)(int slot);                             /* slot < 0: all */
  /* rows to and from every rank of the group (MoE's dispatch): counts and
   * displacements in elements of elem bytes (reals, or bf16 held in bf16),
   * per rank of the group */
  void (*alltoallv)(const void *send, const int64_t *scount, const int64_t *sdispl, void *recv,
                    const int64_t *rcount, const int64_t *rdispl, int elem, int axis);
  void (*adamw)(void *w, const void *g, void *m, void *v, int64_t n, const AdamArgs *a);
  double (*gemm_peak)(void);         /* the GEMM rate this device reaches, FLOP/s */
  double (*copy_peak)(void);         /* the rate it copies memory at, bytes read and written a second */
  void (*sync)(void);                /* wait for queued work (timing) */
  /* optional, for profiles: a mark on the device's queue keyed key (an op,
   * or < 0 for time not counted); time_read waits and adds the time from
   * each mark to the next to seconds[key] */
  void (*time_mark)(int key);
  void (*time_read)(double *seconds);
  int64_t (*peak_bytes)(void);       /* device memory: the most allocated at once; NULL on the CPU */
  /* graphs (NULL on the CPU): record the work queued between begin and
   * end instead of running it; run replays it */
  void (*graph_begin)(void);
  void *(*graph_end)(void);
  void (*graph_run)(void *graph);
  void (*graph_free)(void *graph);
  /* optional: whether an all-reduce inside a program may be recorded
   * (NULL: none may; MoE's host-sized exchanges never are) */
  bool (*graph_ok)(const RtInst *x);
  /* optional: a whole optimizer step on the device, gradient norm (of the
   * in_norm tensors), clipping to clip (0: none) and AdamW of every
   * tensor; a->gscale and a->wd are ignored. Returns the norm. */
  double (*optimizer)(const OptParam *p, int count, const AdamArgs *a, double clip);
  /* round n reals to bf16 in place (a value the plan stores in bf16, on
   * a backend that holds it as reals: one without widen) */
  void (*round_bf16)(void *x, int64_t n);
  /* optional: the backend stores bf16 values in bf16 under a bundle's
   * bf16 plan, laid out by its byte plan (else it holds them as
   * reals, rounded, in the element plan); widen copies n such values into
   * n reals, narrow back, for the host and the collectives, which see reals */
  void (*widen)(void *reals, const void *x, int64_t n);
  void (*narrow)(void *x, const void *reals, int64_t n);
  /* optional: a second stream for a weight's gradient GEMM (x: matmul or
   * matmul_bgrad into the gradients), which then runs beside the work
   * queued after it. side_begin: false where x cannot go there (then it
   * runs as ever); true: x's work goes behind what was queued so far, on
   * the second stream, until side_end, which returns its number (1, 2,
   * ..). side_join(n): what is queued next waits for the second stream's
   * work up to number n. The interpreter joins before anything that reads
   * what such work writes or writes what it reads or writes, and at a
   * program's end (exec.c's run_ops). */
  bool (*side_begin)(const RtInst *x);
  int (*side_end)(void);
  void (*side_join)(int upto);
  /* optional: steps queued ahead, the host not waiting for one to end
   * before it queues the next (exec.c's rt_step_begin). step_end queues,
   * behind the step's work, copies to the host of the n reals at state
   * (the loss, MoE's metrics) and of the gradient norm of the optimizer
   * run last with AdamArgs.later; step_wait waits for the oldest step so
   * ended and gives them. At most two steps in flight. */
  void (*step_end)(const void *state, int64_t n);
  void (*step_wait)(void *state, double *norm);
  /* optional, steps queued ahead on several ranks: whether every group
   * this rank has moves its collectives on the device (NCCL), and, on,
   * that those made until step_end are watched by step_wait against the
   * comm timeout rather than each as it is made */
  bool (*device_collectives)(void);
  void (*watch_at_end)(bool on);
} Backend;

/* ---- ltplan.c ---- */
typedef struct LtPlan {
  bool trans_a, trans_b;                     /* cuBLASLt's op(A), op(B) */
  int64_t a_rows, a_cols, a_ld, b_rows, b_cols, b_ld, c_rows, c_cols, c_ld;
} LtPlan;
LtPlan lt_plan(bool ta, bool tb, int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc);
/* the parts (split-k) a weight gradient's m x n GEMM over k rows runs in, on sms SMs; acc: it adds to C */
int lt_parts(int64_t m, int64_t n, int64_t k, int sms, bool acc);

Backend *cpu_backend(bool f64);
Backend *cuda_backend(const char *bundle_dir, bool emulated, char *why, size_t n);   /* NULL: why */
/* Before cuda_backend, as PyTorch's float32 matmul precision: MP_HIGHEST
 * fp32 products (the checking mode); MP_HIGH GEMMs in tf32 on the tensor
 * cores; MP_MEDIUM (the default) GEMMs and attention's products in bf16 on
 * the tensor cores. Storage and accumulation stay fp32. */
enum { MP_HIGHEST, MP_HIGH, MP_MEDIUM };
void cuda_matmul_precision(int p);
/* The queries a step of dK/dV's tensor core kernel at head dims 65..96:
 * 64 (two blocks an SM, the default) or 32 (three); $LMC_ATTENTION_DKV_QT
 * sets it at cuda_backend. */
void cuda_attention_dkv_qt(int qt);
/* The query rows a block of attention's tensor core forward and dQ at
 * head dims to 96: 64 or 128 for both, or 0 (the default: the forward 64,
 * dQ 128); $LMC_ATTENTION_ROWS sets it. */
void cuda_attention_rows(int rows);
/* The stages of K and V tiles in attention's 64-row forward and 128-row
 * dQ at head dims to 96: 2 (the default) or 1; $LMC_ATTENTION_STAGES
 * sets it. */
void cuda_attention_stages(int stages);
/* The heads a section of attention's launch order (each section's
 * blocks go out longest first across its heads): 0 (the default) as many
 * as half the L2 holds the data of, 1 each head's blocks together;
 * $LMC_ATTENTION_SECTION sets it. */
void cuda_attention_section(int heads);
/* asks for attention on wgmma (on 1, off 0; 2 on with the forward's
 * softmax beside its products, fw_forward_pipe): 1 where it will run, 0 where
 * this GPU's wgmma failed the runtime's probe, -1 where it is off or the
 * GPU is not of compute capability 9.0 */
int cuda_attention_wgmma(int on);
/* Warpgroups a block of attention's wgmma kernels, sharing their tiles: 1
 * (the default), 2 or 3 (the forward takes up to 3, dQ and dK/dV 2);
 * $LMC_ATTENTION_WARPGROUPS sets it. */
void cuda_attention_warpgroups(int n);
/* The parts (split-k) the grouped GEMMs of MoE weight gradients split each
 * expert's rows into: 0 (the default) by the waves they fill, or N;
 * $LMC_MOE_SPLIT sets it. */
void cuda_moe_split(int parts);
/* The parts a weight gradient's GEMM runs in (split-k over the tokens):
 * -1 (the default) as runtime/ltplan.c's model picks, timed against the
 * GEMM whole on a GPU; 1 the model's untimed; 0 whole; N in N where the
 * rows allow; $LMC_GEMM_SPLIT sets it. cuda_gemms_in_parts counts the
 * GEMMs run so (not their replays in CUDA graphs). */
void cuda_gemm_split(int parts);
long long cuda_gemms_in_parts(void);
/* A norm's backward in one pass (off by default; $LMC_NORM_BWD_ONE_PASS=1
 * turns it on at cuda_backend) */
void cuda_norm_bwd_one_pass(bool on);
/* Before cuda_backend: how a CUDA backend's all-reduces travel. CC_AUTO
 * NCCL when it loads and every rank on a machine has a GPU of its own,
 * else CC_MPI (staged through host memory); CC_NCCL insists. */
enum { CC_AUTO, CC_NCCL, CC_MPI };
void cuda_collectives(int mode);
int matmul_precision_of(const char *name);   /* MP_*, or -1 */
/* After cuda_backend: how long the bundle's kernels took to get ready,
 * compiled by NVRTC (cold) or loaded from the cubin cache (warm). */
bool cuda_side_used(void);   /* whether weight gradients' GEMMs went to a second stream (Backend.side_begin) */
void cuda_jit_time(double *seconds, bool *cold, int *programs, int *threads, bool *saved);   /* the last kernels' load: compiled (cold, as programs on threads; saved: into the cache) or cached */

/* ---- exec.c ---- */
typedef struct Run {
  Bundle *b;
  Backend *be;
  void *region[NUM_REGIONS];
  int32_t *inputs;         /* host-side ids: tokens, targets, positions */
  void *adam_m, *adam_v;
  void **ptr;              /* per slot, per value: its address (ptr[slot * nvals + id]) */
  int64_t step;            /* optimizer steps taken */
  double *op_time;         /* seconds per op kind, when profiling (else NULL) */
  bool inst_time;          /* profiling by device events: op_time[NUM_OPS + 1 + i] per instruction i of the
                              forward and then the backward program instead of per kind (bench_train's GEMMs) */
  int *slot_mb;            /* the microbatch whose activations fill each slot, or -1 */
  int inflight, max_inflight;   /* microbatches past forward, not yet past backward */
  double t_wait;           /* seconds blocked on receives from other stages */
  FILE *trace;             /* Chrome trace events of the steps being traced, or NULL */
  double trace_t0;
  bool graphs;             /* replay each program as a recorded graph (a GPU backend, no tp all-reduce) */
  struct RunGraph *graph;  /* per program, slot and segment: its runs and recording */
  int ngraphs;
  const Action **deferred; /* async all-reduces the backend could not queue, run at the wait */
  int ndeferred;
  int routing;             /* MoE: 0 route, 1 route and record the experts, 2 replay them */
  double **routes;         /* per microbatch and forward instruction: the experts recorded (moe_route) */
  int64_t forwards;        /* forward passes run while routing is recorded or replayed */
  double a2a_sent;         /* MoE all-to-alls: elements this rank sent to other ranks */
  bool typed;              /* bf16 values held in bf16 by the byte plan (bf16 storage, a backend with widen) */
  bool stale;              /* the weights changed since their bf16 copies were made (the casts run before a forward) */
  void *wide;              /* a bf16 value widened to reals for the host or a collective */
  int64_t wide_n;
  void *wide_ar;           /* the same for the all-reduces inside the programs: made once, as graphs record it */
  struct Span *side;       /* what the weight gradients' GEMMs on the backend's second stream read and write, */
  int nside, cap_side;     /* not yet joined (exec.c's run_ops) */
  /* a step's first backward pass writes each gradient it makes first
   * instead of adding it to zeros: the backward program with those
   * writes' accumulate flags off, the microbatch it runs for, and what a
   * step must still zero (the rest of the gradients' region), in reals */
  RtInst *bwd_first;
  int64_t first_mb;
  int64_t (*zero)[2];
  int nzero;
  bool poison;             /* $LMC_POISON_GRADS: the gradients NaN before a step's zeros (tests) */
  /* steps begun and not finished, oldest first (rt_step_begin): queued
   * ahead (their loss and norm come from Backend.step_wait), or run
   * (their loss and norm here) */
  struct { bool ahead; double loss, norm; } begun[2];
  int nbegun;
  bool ahead_ok;           /* the backend and bundle allow steps queued ahead (rt_can_ahead adds the run's state) */
  bool device_comm;        /* several ranks, each group's collectives on the device (Backend.device_collectives) */
  void *zeros;             /* an all-reduce's addend where a rank has no copy (Action.zeros) */
  int64_t zeros_n;
  bool queuing;            /* a step being queued ahead: the optimizer leaves its norm on the device */
  void *state_host;        /* the state region as the last step finished ahead left it */
  bool state_snap;         /* which the last finished step's values are in (else on the device) */
} Run;

Run *rt_new(Bundle *b, Backend *be);
void rt_free(Run *r);
void rt_init_params(Run *r, uint64_t seed);
void rt_zero_grads(Run *r);
void rt_load_micro(Run *r, const int32_t *rows, int64_t nrows);  /* rows of T+1 ids */
void rt_load_slot(Run *r, const int32_t *rows, int64_t nrows, int slot);
void rt_forward(Run *r);
void rt_backward(Run *r);
double rt_loss(Run *r);
double rt_grad_norm(Run *r);
void rt_adamw(Run *r, double lr, double gscale);
double rt_step(Run *r, const int32_t *rows, double lr, double *gnorm); /* the schedule's step */
/* The step in two halves: begin queues it (ahead: behind a step begun
 * before and not yet finished, where rt_can_ahead) and finish waits for
 * the oldest step begun, giving its loss and gradient norm. */
bool rt_can_ahead(Run *r);
void rt_step_begin(Run *r, const int32_t *rows, double lr);
double rt_step_finish(Run *r, double *gnorm);
void rt_step_value(Run *r, int v, double *dst);   /* a state value (MoE's metrics) as the last finished step left it */
double rt_eval(Run *r, const int32_t *rows);                           /* forward only */
double rt_slot_bytes(Run *r);      /* activations + inputs of one microbatch */
double rt_state_bytes(Run *r);     /* weights, gradients, Adam's moments, bf16 copies */
int64_t rt_global_index(Bundle *b, RtParam *p, int64_t i);
int rt_op_kind(const RtInst *x);   /* the op kind a profile books x under (a generated kernel of one op: that op's) */
double rt_inst_bytes(Run *r, const RtInst *x);   /* what x reads and writes at the least, in bytes */
void rt_get_param(Run *r, int p, double *dst);
void rt_set_param(Run *r, int p, const double *src);
void rt_get_grad(Run *r, int p, double *dst);
void rt_get_value(Run *r, int v, double *dst);
void rt_trace_open(Run *r, const char *path);     /* events go to PATH.rank<k> */
void rt_trace_close(Run *r, const char *path);    /* rank 0 merges the ranks' events into PATH */

/* ---- data.c ---- */
typedef struct Data {
  char path[1024];         /* a file or a glob of shards */
  struct DataShards *sh;   /* the files, memory-mapped */
  int64_t ntok, ntrain;    /* tokens [0, ntrain) train, [ntrain, ntok) val */
  int64_t vocab;
} Data;

Data *data_load(const char *path, int64_t vocab, double val_fraction, int64_t need);
void data_free(Data *d);
void data_abandon(void);             /* after a caught loading error: free what was mapped */
uint64_t data_hash(const Data *d);   /* identifies the tokens (a sample of them and the count) */
void data_train_batch(Data *d, uint64_t seed, int64_t step, int64_t B, int64_t T, int32_t *rows);
void data_val_batch(Data *d, int64_t i, int64_t nbatches, int64_t B, int64_t T, int32_t *rows);

/* ---- ckpt.c ---- */
typedef struct CkptInfo {
  int64_t step;
  uint64_t seed;
  int64_t data_ntok;       /* the training data's identity: tokens, a hash, its name (0: not recorded) */
  uint64_t data_hash;
  char data[256];
} CkptInfo;

/* A save in two parts, on every rank. ckpt_save copies this rank's shard
 * to host memory (waiting first for a save still in flight) and leaves a
 * thread writing it while training goes on; ckpt_settle installs it as
 * step_<N>/ and `latest` once every rank's write is done (wait: waits for
 * them) and returns its step, else 0. The times: the copy (training
 * paused) and the write beside it. */
typedef struct CkptTimes {
  double copy_s, write_s, bytes;
} CkptTimes;
void ckpt_save(Run *r, const char *dir, const CkptInfo *info);
int64_t ckpt_settle(Run *r, bool wait, CkptTimes *t);
void ckpt_reserve(Run *r);   /* the first save's host memory, made beside the first steps */
void ckpt_release(void);     /* the host memory kept for the next save (none in flight) */
void ckpt_load(Run *r, const char *path, CkptInfo *info);
uint64_t ckpt_checksum(const unsigned char *shard, size_t n);   /* what a shard of n bytes must end with */
void ckpt_prune(const char *dir, int64_t keep);   /* rank 0: all but the newest keep */
void ckpt_abandon(void);                  /* after a caught load error: free what the load held */

/* ---- hf.c ---- */
void hf_export(Run *r, const char *dir);   /* config.json + model.safetensors, HF Llama names */
void hf_import(Run *r, const char *dir);   /* the parameters from a HF Llama folder */
int64_t hf_parts(const RtParam *p);      /* HF tensors of a parameter: E for an expert weight, else 1 */
bool hf_part_name(const RtParam *p, int64_t part, char *out, size_t n);   /* the HF name of one */
void hf_abandon(void);                     /* after a caught import error: free what it held */

/* ---- tblog.c ---- */
typedef struct TbLog TbLog;
TbLog *tb_open(const char *out_dir, int64_t start_step);   /* OUT/tb/events.out.tfevents.* */
void tb_scalar(TbLog *t, const char *tag, int64_t step, double v);
void tb_close(TbLog *t);

/* ---- train.c ---- */
typedef struct TrainOpts {
  const char *data, *resume, *out_dir;
  int64_t max_steps, steps, log_interval, save_interval, eval_interval, eval_batches;
  int64_t keep;              /* checkpoints kept (0: all) */
  const char *trace;         /* a Chrome trace of trace_steps steps (after the first) goes here */
  const char *init_hf;       /* start from a Hugging Face Llama's weights */
  double peak_tflops;        /* the device's peak, for MFU in the progress line (0: not shown) */
  int64_t trace_steps;
  int64_t seed;
  double lr;
  bool quiet;
} TrainOpts;

double lr_at(const Train *t, int64_t steps, int64_t step);
int train_run(Run *r, TrainOpts *o);

#endif

/* fuse.c: rewrites of the forward graph, between lower and autodiff.
 * silu(gate) * up, the SwiGLU of a Llama MLP, becomes one swiglu: one
 * pass instead of two, and silu(gate) is never stored.
 *
 * The LM head and its loss, matmul(x, w) -> cross_entropy(logits, targets)
 * where nothing else reads the logits, become one op in two ways:
 * - head_dl (llm.c's way): one GEMM writes the logits into a [B,T,V]
 *   buffer, and one pass over each row takes its log-sum-exp and loss and
 *   turns the row into its gradient, scale (softmax - onehot), in place.
 *   The backward is the head's two matmuls reading that gradient. Unfused,
 *   the logits and their gradient are two buffers and two more passes.
 * - head_xent: the logits a chunk of rows at a time, each row's
 *   log-sum-exp kept; its backward recomputes them, so nothing of size
 *   [B,T,V] is ever stored, at the cost of a third GEMM of the head's size.
 * --fuse=auto (the default) fuses logits of 2^25 elements (128 MiB) or
 * more, as head_dl up to 2^31 elements and as head_xent past that;
 * --fuse=always makes every head a head_dl, --fuse=recompute a head_xent,
 * --fuse=never (--no-fuse) leaves it apart.
 *
 * After autodiff, fuse_bias rewrites a matmul whose output only a bias
 * add reads (x w + b, b a parameter over the output's columns, on the same
 * stage) into one matmul_bias: the GEMM's epilogue adds the bias, so the
 * product is never stored and read back.
 * A GELU that alone reads such a product (its backward reading it too)
 * joins it as matmul_bias_gelu: the epilogue writes gelu(x w + b) and,
 * for the GELU's backward, x w + b (cuBLASLt's GELU_AUX_BIAS).
 * The bias gradient stays the add's backward (a column sum of dy); under
 * bf16 storage the epilogue reads the bias's bf16 copy, as it reads the
 * weight's (cuBLASLt takes a bias of the output's type). A
 * tensor-parallel row-split matmul is followed by its all-reduce, not the
 * add, so it stays apart, as it must (the bias is added once, after the
 * sum).
 *
 * In the backward pass the bias's gradient, the column sums of dy (the
 * add's backward), joins its weight's gradient GEMM, which reads the same
 * dy: one matmul_bgrad, whose GEMM sums dy over its inner dimension in
 * cuBLASLt's BGRADA or BGRADB epilogue (or, refused, the runtime's column
 * sums after it). And a GELU's backward whose dy only a matmul makes
 * (GPT-2's dh = dy W^T in the MLP) joins that matmul as matmul_dgelu:
 * cuBLASLt's DGELU epilogue multiplies the product by GELU's derivative
 * at the saved pre-activation before storing it, so the product is never
 * stored and read back (refused: the runtime's GELU backward after it). */
#include "lmc.h"
#include <string.h>

static int uses(Graph *g, Value *v) {
  int n = 0;
  for (int k = 0; k < g->nfwd; k++)
    for (int i = 0; i < g->fwd[k]->nin; i++) n += g->fwd[k]->in[i] == v;
  return n;
}

/* head_dl (dl) or head_xent in place of the cross-entropy at index k, the
 * matmul dropped. */
static void fuse_head(Graph *g, int k, bool dl) {
  Inst *xent = g->fwd[k], *mm = xent->in[0]->def;
  Inst *h = ir_inst(g, dl ? OP_HEAD_DL : OP_HEAD_XENT, false, xent->loc);   /* appended; moved below */
  g->nfwd--;
  h->stage = xent->stage;
  h->in[0] = mm->in[0], h->in[1] = mm->in[1], h->in[2] = xent->in[1];
  h->out[0] = xent->out[0], h->acc[0] = true;
  h->out[1] = dl ? mm->out[0] : ir_value(g, V_ACT, NULL, xent->in[1]->shape);   /* dlogits, or lse[B,T] */
  h->out[0]->def = h->out[1]->def = h;
  const char *keys[] = {"m", "n", "k", "tb"};
  for (int i = 0; i < 4; i++) ir_set(h, keys[i], ir_get(mm, keys[i]));
  ir_set(h, "scale", ir_get(xent, "scale"));
  g->fwd[k] = h;
  int j = 0;
  for (int i = 0; i < g->nfwd; i++)
    if (g->fwd[i] != mm) g->fwd[j++] = g->fwd[i];
  g->nfwd = j;
  for (int i = 0; i < g->nfwd; i++) g->fwd[i]->id = i;
}

/* swiglu in place of the mul at index k, the silu dropped. */
static void fuse_swiglu(Graph *g, int k, int gate_side) {
  Inst *mul = g->fwd[k], *silu = mul->in[gate_side]->def;
  mul->op = OP_SWIGLU;
  mul->in[0] = silu->in[0], mul->in[1] = mul->in[1 - gate_side];
  int j = 0;
  for (int i = 0; i < g->nfwd; i++)
    if (g->fwd[i] != silu) g->fwd[j++] = g->fwd[i];
  g->nfwd = j;
  for (int i = 0; i < g->nfwd; i++) g->fwd[i]->id = i;
}

static void fuse_swiglus(Graph *g) {
  for (int k = 0; k < g->nfwd; k++) {
    Inst *m = g->fwd[k];
    if (m->op != OP_MUL) continue;
    for (int side = 0; side < 2; side++) {
      Value *a = m->in[side];
      if (a->def && a->def->op == OP_SILU && uses(g, a) == 1) {
        fuse_swiglu(g, k, side);
        k = -1;                  /* the list changed: start over */
        break;
      }
    }
  }
}

void fuse_graph(Graph *g, int mode) {
  fuse_swiglus(g);
  for (int k = 0; k < g->nfwd; k++) {
    Inst *x = g->fwd[k];
    if (x->op != OP_XENT) continue;
    Value *logits = x->in[0];
    int64_t n = shape_numel(&logits->shape);
    bool big = n >= ((int64_t)1 << 25), huge = n > ((int64_t)1 << 31);
    if ((mode != FUSE_AUTO || big) && logits->def && logits->def->op == OP_MATMUL && uses(g, logits) == 1) {
      fuse_head(g, k, mode == FUSE_ALWAYS || (mode == FUSE_AUTO && !huge));
      return;
    }
  }
}

/* Instructions (forward and backward) that read v. */
static int readers(Graph *g, Value *v) {
  int n = uses(g, v);
  for (int k = 0; k < g->nbwd; k++)
    for (int i = 0; i < g->bwd[k]->nin; i++) n += g->bwd[k]->in[i] == v;
  return n;
}

/* Whether v's readers are one forward GELU and backward GELUs' only. */
static Inst *gelu_alone(Graph *g, Value *v) {
  Inst *gelu = NULL;
  for (int k = 0; k < g->nfwd; k++)
    for (int i = 0; i < g->fwd[k]->nin; i++)
      if (g->fwd[k]->in[i] == v) {
        if (gelu || g->fwd[k]->op != OP_GELU) return NULL;
        gelu = g->fwd[k];
      }
  for (int k = 0; k < g->nbwd; k++)
    for (int i = 0; i < g->bwd[k]->nin; i++)
      if (g->bwd[k]->in[i] == v && g->bwd[k]->op != OP_GELU_BWD) return NULL;
  return gelu;
}

/* matmul_bias_gelu in place of a matmul_bias and the GELU reading it. */
static void fuse_gelus(Graph *g) {
  int j = 0;
  for (int k = 0; k < g->nfwd; k++) {
    Inst *gelu = g->fwd[k], *mm = gelu->op == OP_GELU ? gelu->in[0]->def : NULL;
    if (!mm || mm->op != OP_MATMUL_BIAS || mm->stage != gelu->stage || gelu->acc[0] || gelu_alone(g, mm->out[0]) != gelu) {
      g->fwd[j++] = gelu;
      continue;
    }
    mm->op = OP_MATMUL_BIAS_GELU, mm->nout = 2;
    mm->out[1] = mm->out[0];   /* the pre-activation, which the GELU's backward reads */
    mm->out[0] = gelu->out[0], mm->out[0]->def = mm;
  }
  g->nfwd = j;
}

/* The weight-gradient matmul that reads dy as its k-by-len operand (dy
 * whole, ta=1 for in[0], tb=0 for in[1]), on add_bwd's stage, and which
 * of its inputs dy is; NULL where none. */
static Inst *weight_grad_of(Graph *g, Inst *ab, int *bg) {
  Value *dy = ab->in[0];
  int64_t len = (int64_t)ir_get(ab, "nb"), rows = (int64_t)ir_get(ab, "n") / len;
  for (int k = 0; k < g->nbwd; k++) {
    Inst *mm = g->bwd[k];
    if (mm->op != OP_MATMUL || mm->stage != ab->stage || !mm->out[0] || mm->out[0]->kind != V_GRAD ||
        !ir_get(mm, "ta") || ir_get(mm, "k") != rows)
      continue;
    if (mm->in[1] == dy && !ir_get(mm, "tb") && ir_get(mm, "n") == len) return *bg = 1, mm;
    if (mm->in[0] == dy && mm->in[1] != dy && ir_get(mm, "m") == len) return *bg = 0, mm;
  }
  return NULL;
}

/* add_bwd -> _, db and dW = matmul(.., dy) into one matmul_bgrad at the
 * matmul's place. */
static void fuse_bgrads(Graph *g) {
  int j = 0;
  for (int k = 0; k < g->nbwd; k++) {
    Inst *ab = g->bwd[k], *mm;
    int bg;
    if (ab->op != OP_ADD_BWD || ab->out[0] || !ab->out[1] || ab->out[1]->kind != V_GRAD ||
        ir_get(ab, "nb") >= ir_get(ab, "n") || !(mm = weight_grad_of(g, ab, &bg))) {
      g->bwd[j++] = ab;
      continue;
    }
    mm->op = OP_MATMUL_BGRAD, mm->nout = 2;
    mm->out[1] = ab->out[1], mm->acc[1] = ab->acc[1];
    ir_set(mm, "bg", bg);
  }
  g->nbwd = j;
}

/* Instructions (forward and backward) that write v. */
static int writers(Graph *g, Value *v) {
  int n = 0;
  for (int k = 0; k < g->nfwd + g->nbwd; k++) {
    Inst *in = k < g->nfwd ? g->fwd[k] : g->bwd[k - g->nfwd];
    for (int i = 0; i < in->nout; i++) n += in->out[i] == v;
  }
  return n;
}

/* gelu_bwd(dy, x) where dy is a backward matmul's product that nothing
 * else reads or writes: one matmul_dgelu at the matmul's place. (The
 * GELU backwards are found first and dropped after, as the counts of
 * readers and writers scan the whole list.) */
static void fuse_dgelus(Graph *g) {
  bool *drop = arena_alloc((g->nbwd + 1) * sizeof(bool));
  for (int k = 0; k < g->nbwd; k++) {
    Inst *gb = g->bwd[k], *mm = gb->op == OP_GELU_BWD ? gb->in[0]->def : NULL;
    if (!mm || mm->op != OP_MATMUL || !mm->bwd || mm->stage != gb->stage || mm->acc[0] || gb->acc[0] ||
        readers(g, mm->out[0]) != 1 || writers(g, mm->out[0]) != 1)
      continue;
    mm->op = OP_MATMUL_DGELU, mm->nin = 3;
    mm->in[2] = gb->in[1];
    mm->out[0] = gb->out[0], mm->out[0]->def = mm;
    drop[k] = true;
  }
  int j = 0;
  for (int k = 0; k < g->nbwd; k++)
    if (!drop[k]) g->bwd[j++] = g->bwd[k];
  g->nbwd = j;
}

void fuse_bias(Graph *g) {
  int j = 0;
  for (int k = 0; k < g->nfwd; k++) {
    Inst *add = g->fwd[k], *mm = add->in[0] ? add->in[0]->def : NULL;
    bool fuse = add->op == OP_ADD && mm && mm->op == OP_MATMUL && add->in[1]->kind == V_PARAM &&
                ir_get(add, "nb") == ir_get(mm, "n") && ir_get(add, "nb") < ir_get(add, "n") && !add->acc[0] &&
                !mm->acc[0] && mm->stage == add->stage && readers(g, mm->out[0]) == 1;
    if (!fuse) {
      g->fwd[j++] = add;
      continue;
    }
    mm->op = OP_MATMUL_BIAS, mm->nin = 3;
    mm->in[2] = add->in[1];
    mm->out[0] = add->out[0], mm->out[0]->def = mm;
  }
  g->nfwd = j;
  fuse_gelus(g);
  fuse_bgrads(g);
  fuse_dgelus(g);
  for (int k = 0; k < g->nfwd; k++) g->fwd[k]->id = k;
  for (int k = 0; k < g->nbwd; k++) g->bwd[k]->id = g->nfwd + k;
}

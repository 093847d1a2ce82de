// kernels.cu: the CUDA kernels lmc writes into a bundle, one section per
// op ("// @kernel NAME" up to the next marker); lmc copies the prelude and
// the sections the model's programs use. GEMMs (matmul, and attention's
// QK^T and PV) go to cuBLASLt, so they have no kernel here. Sizes come as
// arguments; `acc` adds into the output instead of writing it, as on the
// CPU backend. One thread block per row for row-wise ops (blockDim.x a
// power of two, at most 1024), a grid-stride loop for element-wise ones.
// @prelude
typedef float real;
typedef long long i64;
#define NEG_INF __int_as_float(0xff800000)   // NVRTC has no math.h: -infinity by its bits

#define GRID_LOOP(i, n) for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)
#define PUT(dst, i, v, acc) ((dst)[i] = (acc) ? (dst)[i] + (real)(v) : (real)(v))

__device__ float block_sum(float v) {
  __shared__ float part[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) part[warp] = v;
  __syncthreads();
  int nw = (blockDim.x + 31) >> 5;
  v = threadIdx.x < nw ? part[threadIdx.x] : 0.0f;
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  if (threadIdx.x == 0) part[0] = v;
  __syncthreads();
  return part[0];
}

__device__ float block_max(float v) {
  __shared__ float part[32];
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) part[warp] = v;
  __syncthreads();
  int nw = (blockDim.x + 31) >> 5;
  v = threadIdx.x < nw ? part[threadIdx.x] : NEG_INF;
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
  if (threadIdx.x == 0) part[0] = v;
  __syncthreads();
  return part[0];
}

// log(sum(exp(r[j]))) of one row, by the whole block
__device__ float row_logsumexp(const real *r, i64 v) {
  float mx = NEG_INF;
  for (i64 j = threadIdx.x; j < v; j += blockDim.x) mx = fmaxf(mx, r[j]);
  mx = block_max(mx);
  float s = 0;
  for (i64 j = threadIdx.x; j < v; j += blockDim.x) s += expf(r[j] - mx);
  return mx + logf(block_sum(s));
}

// @kernel embed
// out[n,d] = w[ids - v0]; rows of other tp ranks are zero
extern "C" __global__ void lmc_embed(real *out, const int *ids, const real *w, i64 n, i64 d, i64 v, i64 v0) {
  GRID_LOOP(i, n * d) {
    i64 row = ids[i / d] - v0;
    out[i] = row >= 0 && row < v ? w[row * d + i % d] : (real)0;
  }
}

// @kernel embed_bwd
// one thread per column adds the tokens' gradients in token order: no
// atomics, so the result does not depend on the order threads run in
extern "C" __global__ void lmc_embed_bwd(real *dw, const real *dy, const int *ids, i64 n, i64 d, i64 v, i64 v0) {
  GRID_LOOP(j, d) {
    for (i64 i = 0; i < n; i++) {
      i64 row = ids[i] - v0;
      if (row >= 0 && row < v) dw[row * d + j] += dy[i * d + j];
    }
  }
}

// @kernel rmsnorm
// one block per row: y = x / rms(x) * w, rstd[row]
extern "C" __global__ void lmc_rmsnorm(real *y, real *rstd, const real *x, const real *w, i64 n, i64 d, float eps) {
  i64 row = blockIdx.x;
  const real *xr = x + row * d;
  float ss = 0;
  for (i64 j = threadIdx.x; j < d; j += blockDim.x) ss += xr[j] * xr[j];
  float r = rsqrtf(block_sum(ss) / d + eps);
  for (i64 j = threadIdx.x; j < d; j += blockDim.x) y[row * d + j] = xr[j] * r * w[j];
  if (threadIdx.x == 0) rstd[row] = r;
}

// @kernel rmsnorm_bwd
extern "C" __global__ void lmc_rmsnorm_bwd(real *dx, const real *dy, const real *x, const real *w, const real *rstd,
                                           i64 n, i64 d, int acc) {
  i64 row = blockIdx.x;
  const real *xr = x + row * d, *g = dy + row * d;
  float r = rstd[row], dot = 0;
  for (i64 j = threadIdx.x; j < d; j += blockDim.x) dot += g[j] * w[j] * xr[j] * r;
  dot = block_sum(dot) / d;
  for (i64 j = threadIdx.x; j < d; j += blockDim.x) PUT(dx, row * d + j, r * (g[j] * w[j] - xr[j] * r * dot), acc);
}

// dw[j] (+)= sum over rows of dy * x * rstd, rows in order (deterministic)
extern "C" __global__ void lmc_rmsnorm_bwd_dw(real *dw, const real *dy, const real *x, const real *rstd, i64 n, i64 d,
                                              int acc) {
  GRID_LOOP(j, d) {
    float s = 0;
    for (i64 i = 0; i < n; i++) s += dy[i * d + j] * x[i * d + j] * rstd[i];
    PUT(dw, j, s, acc);
  }
}

// @kernel layernorm
extern "C" __global__ void lmc_layernorm(real *y, real *mean, real *rstd, const real *x, const real *w,
                                         const real *b, i64 n, i64 d, float eps) {
  i64 row = blockIdx.x;
  const real *xr = x + row * d;
  float s = 0;
  for (i64 j = threadIdx.x; j < d; j += blockDim.x) s += xr[j];
  float mu = block_sum(s) / d, v = 0;
  for (i64 j = threadIdx.x; j < d; j += blockDim.x) v += (xr[j] - mu) * (xr[j] - mu);
  float r = rsqrtf(block_sum(v) / d + eps);
  for (i64 j = threadIdx.x; j < d; j += blockDim.x) y[row * d + j] = (xr[j] - mu) * r * w[j] + b[j];
  if (threadIdx.x == 0) mean[row] = mu, rstd[row] = r;
}

// @kernel layernorm_bwd
extern "C" __global__ void lmc_layernorm_bwd(real *dx, const real *dy, const real *x, const real *w, const real *mean,
                                             const real *rstd, i64 n, i64 d, int acc) {
  i64 row = blockIdx.x;
  const real *xr = x + row * d, *g = dy + row * d;
  float mu = mean[row], r = rstd[row], s1 = 0, s2 = 0;
  for (i64 j = threadIdx.x; j < d; j += blockDim.x) {
    float gh = g[j] * w[j];
    s1 += gh, s2 += gh * (xr[j] - mu) * r;
  }
  s1 = block_sum(s1) / d;
  s2 = block_sum(s2) / d;
  for (i64 j = threadIdx.x; j < d; j += blockDim.x)
    PUT(dx, row * d + j, r * (g[j] * w[j] - s1 - (xr[j] - mu) * r * s2), acc);
}

extern "C" __global__ void lmc_layernorm_bwd_dwdb(real *dw, real *db, const real *dy, const real *x, const real *mean,
                                                  const real *rstd, i64 n, i64 d, int accw, int accb) {
  GRID_LOOP(j, d) {
    float sw = 0, sb = 0;
    for (i64 i = 0; i < n; i++) sw += dy[i * d + j] * (x[i * d + j] - mean[i]) * rstd[i], sb += dy[i * d + j];
    if (dw) PUT(dw, j, sw, accw);
    if (db) PUT(db, j, sb, accb);
  }
}

// @kernel rope
// rotate-half RoPE over x[b,t,h,k]; dir = -1 rotates back (backward)
extern "C" __global__ void lmc_rope(real *y, const real *x, i64 b, i64 t, i64 h, i64 k, float theta, int dir, int acc) {
  i64 half = k / 2;
  GRID_LOOP(e, b * t * h * half) {
    i64 i = e % half, row = e / half, pos = row / h % t;
    float ang = pos * powf(theta, -2.0f * i / k), c, s;
    sincosf(ang, &s, &c);
    s *= dir;
    const real *xr = x + row * k;
    real *yr = y + row * k;
    float x1 = xr[i], x2 = xr[i + half];
    PUT(yr, i, x1 * c - x2 * s, acc);
    PUT(yr, i + half, x2 * c + x1 * s, acc);
  }
}

// @kernel attention
// causal softmax over rows of scores [rows = b*h*t, t] in place (cuBLASLt
// made the scaled scores); row i of each t x t block keeps j <= i. The
// row's log-sum-exp is kept for the backward pass, not the probabilities.
extern "C" __global__ void lmc_causal_softmax(real *p, real *lse, i64 rows, i64 t) {
  i64 row = blockIdx.x, i = row % t;
  real *pr = p + row * t;
  float mx = NEG_INF;
  for (i64 j = threadIdx.x; j <= i; j += blockDim.x) mx = fmaxf(mx, pr[j]);
  mx = block_max(mx);
  float s = 0;
  for (i64 j = threadIdx.x; j <= i; j += blockDim.x) s += expf(pr[j] - mx);
  s = block_sum(s);
  for (i64 j = threadIdx.x; j < t; j += blockDim.x) pr[j] = j <= i ? expf(pr[j] - mx) / s : (real)0;
  if (threadIdx.x == 0) lse[row] = mx + logf(s);
}

// @kernel attention_bwd
// P again from the scaled scores (recomputed by cuBLASLt) and the saved
// log-sum-exp, in place
extern "C" __global__ void lmc_softmax_recompute(real *p, const real *lse, i64 rows, i64 t) {
  GRID_LOOP(e, rows * t) {
    i64 row = e / t, i = row % t, j = e % t;
    p[e] = j <= i ? expf(p[e] - lse[row]) : (real)0;
  }
}

// dS = P * (dP - rowsum(P * dP)), in place over dP
extern "C" __global__ void lmc_softmax_bwd(real *dp, const real *p, i64 rows, i64 t) {
  i64 row = blockIdx.x;
  real *g = dp + row * t;
  const real *pr = p + row * t;
  float dot = 0;
  for (i64 j = threadIdx.x; j < t; j += blockDim.x) dot += g[j] * pr[j];
  dot = block_sum(dot);
  for (i64 j = threadIdx.x; j < t; j += blockDim.x) g[j] = pr[j] * (g[j] - dot);
}

// @kernel silu
extern "C" __global__ void lmc_silu(real *y, const real *x, i64 n) {
  GRID_LOOP(i, n) y[i] = x[i] / (1.0f + expf(-x[i]));
}

// @kernel gelu
extern "C" __global__ void lmc_gelu(real *y, const real *x, i64 n) {
  GRID_LOOP(i, n) {
    float u = x[i];
    y[i] = 0.5f * u * (1.0f + tanhf(0.7978845608028654f * (u + 0.044715f * u * u * u)));
  }
}

// @kernel swiglu
extern "C" __global__ void lmc_swiglu(real *y, const real *g, const real *u, i64 n) {
  GRID_LOOP(i, n) y[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

// @kernel swiglu_bwd
extern "C" __global__ void lmc_swiglu_bwd(real *dg, real *du, const real *dy, const real *g, const real *u, i64 n,
                                          int accg, int accu) {
  GRID_LOOP(i, n) {
    float s = 1.0f / (1.0f + expf(-g[i]));
    if (dg) PUT(dg, i, dy[i] * u[i] * s * (1.0f + g[i] * (1.0f - s)), accg);
    if (du) PUT(du, i, dy[i] * g[i] * s, accu);
  }
}

// @kernel mul
extern "C" __global__ void lmc_mul(real *y, const real *a, const real *b, i64 n) {
  GRID_LOOP(i, n) y[i] = a[i] * b[i];
}

// @kernel add
// y = a + b, b broadcast over rows when nb < n
extern "C" __global__ void lmc_add(real *y, const real *a, const real *b, i64 n, i64 nb) {
  GRID_LOOP(i, n) y[i] = a[i] + b[i % nb];
}

// @kernel silu_bwd
extern "C" __global__ void lmc_silu_bwd(real *dx, const real *dy, const real *x, i64 n, int acc) {
  GRID_LOOP(i, n) {
    float s = 1.0f / (1.0f + expf(-x[i]));
    PUT(dx, i, dy[i] * s * (1.0f + x[i] * (1.0f - s)), acc);
  }
}

// @kernel gelu_bwd
extern "C" __global__ void lmc_gelu_bwd(real *dx, const real *dy, const real *x, i64 n, int acc) {
  GRID_LOOP(i, n) {
    float u = x[i], c = 0.7978845608028654f, th = tanhf(c * (u + 0.044715f * u * u * u));
    float dinner = c * (1.0f + 3.0f * 0.044715f * u * u);
    PUT(dx, i, dy[i] * (0.5f * (1.0f + th) + 0.5f * u * (1.0f - th * th) * dinner), acc);
  }
}

// @kernel mul_bwd
extern "C" __global__ void lmc_mul_bwd(real *da, real *db, const real *dy, const real *a, const real *b, i64 n,
                                       int acca, int accb) {
  GRID_LOOP(i, n) {
    if (da) PUT(da, i, dy[i] * b[i], acca);
    if (db) PUT(db, i, dy[i] * a[i], accb);
  }
}

// @kernel add_bwd
extern "C" __global__ void lmc_add_bwd(real *da, const real *dy, i64 n, int acc) {
  GRID_LOOP(i, n) PUT(da, i, dy[i], acc);
}

// a bias's gradient: column sums over the rows, in order
extern "C" __global__ void lmc_add_bwd_bias(real *db, const real *dy, i64 n, i64 nb, int acc) {
  GRID_LOOP(j, nb) {
    float s = 0;
    for (i64 r = 0; r < n / nb; r++) s += dy[r * nb + j];
    PUT(db, j, s, acc);
  }
}

// @kernel cross_entropy
// per-row loss: logsumexp(logits) - logits[target]; the runtime sums rows
extern "C" __global__ void lmc_xent(real *row_loss, const real *logits, const int *y, i64 n, i64 v) {
  i64 row = blockIdx.x;
  const real *l = logits + row * v;
  float z = row_logsumexp(l, v);
  if (threadIdx.x == 0) row_loss[row] = z - l[y[row]];
}

// @kernel cross_entropy_bwd
extern "C" __global__ void lmc_xent_bwd(real *dl, const real *logits, const int *y, i64 n, i64 v, float scale, int acc) {
  i64 row = blockIdx.x;
  const real *l = logits + row * v;
  real *d = dl + row * v;
  float z = row_logsumexp(l, v);
  for (i64 j = threadIdx.x; j < v; j += blockDim.x)
    PUT(d, j, scale * (expf(l[j] - z) - (j == y[row] ? 1.0f : 0.0f)), acc);
}

// @kernel xent_max
extern "C" __global__ void lmc_xent_max(real *mx, const real *logits, i64 n, i64 v) {
  i64 row = blockIdx.x;
  float m = NEG_INF;
  for (i64 j = threadIdx.x; j < v; j += blockDim.x) m = fmaxf(m, logits[row * v + j]);
  m = block_max(m);
  if (threadIdx.x == 0) mx[row] = m;
}

// @kernel xent_stats
extern "C" __global__ void lmc_xent_stats(real *sumexp, real *tlogit, const real *logits, const int *y, const real *mx,
                                          i64 n, i64 v, i64 v0) {
  i64 row = blockIdx.x, t = y[row] - v0;
  float s = 0;
  for (i64 j = threadIdx.x; j < v; j += blockDim.x) s += expf(logits[row * v + j] - mx[row]);
  s = block_sum(s);
  if (threadIdx.x == 0) sumexp[row] = s, tlogit[row] = t >= 0 && t < v ? logits[row * v + t] : (real)0;
}

// @kernel xent_loss
extern "C" __global__ void lmc_xent_loss_rows(real *row_loss, const real *mx, const real *sumexp, const real *tlogit,
                                              i64 n) {
  GRID_LOOP(i, n) row_loss[i] = mx[i] + logf(sumexp[i]) - tlogit[i];
}

// @kernel xent_tp_bwd
extern "C" __global__ void lmc_xent_tp_bwd(real *dl, const real *logits, const int *y, const real *mx,
                                           const real *sumexp, i64 n, i64 v, i64 v0, float scale, int acc) {
  GRID_LOOP(e, n * v) {
    i64 row = e / v, j = e % v;
    float g = expf(logits[e] - mx[row]) / sumexp[row] - (j + v0 == y[row] ? 1.0f : 0.0f);
    PUT(dl, e, scale * g, acc);
  }
}

// @kernel head_xent
// the fused LM head: one chunk of logits rows (made by cuBLASLt) to each
// row's log-sum-exp and loss
extern "C" __global__ void lmc_head_rows(real *row_loss, real *lse, const real *l, const int *y, i64 rows, i64 v) {
  i64 row = blockIdx.x;
  const real *r = l + row * v;
  float z = row_logsumexp(r, v);
  if (threadIdx.x == 0) lse[row] = z, row_loss[row] = z - r[y[row]];
}

// @kernel head_xent_bwd
// a chunk of logits rows to dlogits = scale (softmax - onehot), in place
extern "C" __global__ void lmc_head_grad(real *l, const int *y, const real *lse, i64 rows, i64 v, float scale) {
  GRID_LOOP(e, rows * v) {
    i64 row = e / v;
    l[e] = scale * (expf(l[e] - lse[row]) - (e % v == y[row] ? 1.0f : 0.0f));
  }
}

// @kernel optimizer
// sum of squares of x, one partial sum per block (the runtime adds them in order)
extern "C" __global__ void lmc_sumsq(float *part, const real *x, i64 n) {
  float s = 0;
  GRID_LOOP(i, n) s += x[i] * x[i];
  s = block_sum(s);
  if (threadIdx.x == 0) part[blockIdx.x] = s;
}

// the sum of n row values, in one block (row order within a thread)
extern "C" __global__ void lmc_sum_rows(real *out, const real *rows, i64 n, float scale, int acc) {
  float s = 0;
  for (i64 i = threadIdx.x; i < n; i += blockDim.x) s += rows[i];
  s = block_sum(s);
  if (threadIdx.x == 0) PUT(out, 0, s * scale, acc);
}

// AdamW: decoupled decay, then the bias-corrected update, on gradients
// scaled by gscale (clipping)
extern "C" __global__ void lmc_adamw(real *w, const real *g, real *m, real *v, i64 n, float lr, float b1, float b2,
                                     float eps, float wd, float bc1, float bc2, float gscale) {
  GRID_LOOP(i, n) {
    float gi = g[i] * gscale;
    m[i] = b1 * m[i] + (1.0f - b1) * gi;
    v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
    w[i] = w[i] * (1.0f - lr * wd) - lr / bc1 * m[i] / (sqrtf(v[i] / bc2) + eps);
  }
}

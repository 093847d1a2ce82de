// Kernels for test_emu: the emulated CUDA platform's primitives against
// what the CUDA programming guide and the PTX ISA say they do, and planted
// faults it must report. The same file compiles with the real NVRTC (the
// kernels_nvrtc test, down to a cubin) and runs on a GPU (test_emu real,
// from scripts/gpu_check.sh), so the hardware checks the emulator.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
typedef long long i64;

#include "tensor_cores.cuh"   // templates/: the matrix wrappers the kernels use (inline PTX on a GPU)

// out[lane] for each shuffle kind over one warp, x = lane * 10
extern "C" __global__ void shuffles(int *out) {
  int lane = threadIdx.x, x = lane * 10;
  out[0 * 32 + lane] = __shfl_sync(0xffffffff, x, 7);
  out[1 * 32 + lane] = __shfl_sync(0xffffffff, x, lane + 3, 8);       // within groups of 8
  out[2 * 32 + lane] = __shfl_up_sync(0xffffffff, x, 2);
  out[3 * 32 + lane] = __shfl_down_sync(0xffffffff, x, 5, 16);
  out[4 * 32 + lane] = __shfl_xor_sync(0xffffffff, x, 9);
  out[5 * 32 + lane] = (int)__ballot_sync(0xffffffff, lane % 3 == 0);
  out[6 * 32 + lane] = __any_sync(0xffffffff, lane == 31) + 2 * __all_sync(0xffffffff, lane < 31);
  out[7 * 32 + lane] = __syncthreads_count(lane & 1);
}

// a block sum through shared memory, correctly synchronised
extern "C" __global__ void block_sum(float *out, const float *x, int n) {
  extern __shared__ float part[];
  float s = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) s += x[blockIdx.x * n + i];
  part[threadIdx.x] = s;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w /= 2) {
    if (threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = part[0];
}

// the same without the barrier inside the loop: a race
extern "C" __global__ void block_sum_racy(float *out, const float *x, int n) {
  extern __shared__ float part[];
  float s = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) s += x[blockIdx.x * n + i];
  part[threadIdx.x] = s;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w /= 2)
    if (threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
  if (threadIdx.x == 0) out[blockIdx.x] = part[0];
}

// the thread that runs first, unless it is thread 0, writes a page of its
// own: run forward it writes nothing to out, in reverse the last page
extern "C" __global__ void first_writer(float *out, int *counter) {
  if (atomicAdd(counter, 1) == 0 && threadIdx.x != 0) out[threadIdx.x * 1024] = 1;
}

// block 1 waits for block 0's flag; the emulator runs block 1 first in
// reverse order, and it never ends (as a GPU's would not, were block 0 not
// resident); ends only past LMC_CUDA_EMU_TIMEOUT
extern "C" __global__ void wait_for_block0(volatile int *flag) {
  if (blockIdx.x == 0) *flag = 1;
  else
    while (!*flag) {}
}

// writes one element past the end (into the canary) or a page past it
extern "C" __global__ void write_past(float *out, i64 n, i64 past) {
  i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x;
  if (i < n) out[i] = 1.0f;
  if (i == n - 1) out[n - 1 + past] = 2.0f;
}

// lane 5 leaves before the warp's shuffle that names it
extern "C" __global__ void shuffle_after_exit(float *out) {
  float v = threadIdx.x;
  if (threadIdx.x == 5) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffff, v, 1);
}

// bf16 and fp16 round trips of x[i], and the pair (x[i], -x[i]) by
// tensor_cores.cuh's cvt.rn.bf16x2.f32
extern "C" __global__ void convert(unsigned short *bf, unsigned short *h, float *back, unsigned *pair, const float *x,
                                   int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  __nv_bfloat16 b = __float2bfloat16(x[i]);
  __half hh = __float2half(x[i]);
  bf[i] = __bfloat16_as_ushort(b), h[i] = __half_as_ushort(hh);
  pair[i] = lmc_bf16x2(x[i], -x[i]);
  back[2 * i] = __bfloat162float(b), back[2 * i + 1] = __half2float(hh);
}

// 2^x by tensor_cores.cuh's ex2.approx.ftz.f32 (attention's softmax)
extern "C" __global__ void ex2(float *y, const float *x, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = lmc_ex2(x[i]);
}

// D[16x8] = A[16x16] B[16x8] on one warp: A and B (bf16, row-major) into
// shared memory, fragments by ldmatrix (B transposed), one mma, D by the
// accumulator layout (row g and g+8, columns 2t and 2t+1)
extern "C" __global__ void mma_tile(float *d, const unsigned short *a, const unsigned short *b) {
  __shared__ __align__(16) unsigned short sa[16 * 16], sb[16 * 8];
  int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
  for (int i = lane; i < 256; i += 32) sa[i] = a[i];
  for (int i = lane; i < 128; i += 32) sb[i] = b[i];
  __syncwarp();
  unsigned ra[4], rb[2];
  // x4: lanes 0-15 give rows 0-15 of columns 0-7, lanes 16-31 rows 0-15 of columns 8-15
  lmc_ldmatrix_x4(ra, &sa[(lane % 16) * 16 + (lane / 16) * 8]);
  // x2.trans: lanes 0-15 give rows k = 0..15 of B (8 columns each)
  lmc_ldmatrix_x2_trans(rb, &sb[(lane % 16) * 8]);
  float c[4] = {0, 0, 0, 0}, r[4];
  lmc_mma_bf16_16816(r, ra, rb, c);
  d[g * 8 + 2 * t] = r[0], d[g * 8 + 2 * t + 1] = r[1];
  d[(g + 8) * 8 + 2 * t] = r[2], d[(g + 8) * 8 + 2 * t + 1] = r[3];
}

#ifdef LMC_WGMMA
// B (16 x 32, row-major) into shared memory as 8 x 16-byte core matrices,
// K-major (tb 0: a core matrix's rows are 8 n, each 8 k) or N-major (tb 1:
// 8 k, each 8 n), core matrices lbo bytes apart in k and sbo in n
__device__ void wg_put_b(unsigned short *s, const unsigned short *b, int tb, int lbo, int sbo) {
  for (int e = threadIdx.x; e < 16 * 32; e += 128) {
    int k = e / 32, n = e % 32;
    s[((k / 8) * lbo + (n / 8) * sbo + (tb ? (k % 8) * 16 + (n % 8) * 2 : (n % 8) * 16 + (k % 8) * 2)) / 2] = b[e];
  }
}
__device__ unsigned long long wg_desc(const unsigned short *p, unsigned lbo, unsigned sbo) {
  return (unsigned long long)((lmc_smem(p) & 0x3ffffu) >> 4) | (unsigned long long)(lbo >> 4) << 16 |
         (unsigned long long)(sbo >> 4) << 32;
}
// warp w's rows 16w.. of A (64 x 16, row-major) in mma.sync's A layout
__device__ void wg_frag_a(unsigned ra[4], const unsigned short *a) {
  int w = threadIdx.x / 32, g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
  const unsigned short *r0 = a + (16 * w + g) * 16, *r1 = r0 + 8 * 16;
  ra[0] = r0[2 * t] | (unsigned)r0[2 * t + 1] << 16, ra[1] = r1[2 * t] | (unsigned)r1[2 * t + 1] << 16;
  ra[2] = r0[2 * t + 8] | (unsigned)r0[2 * t + 9] << 16, ra[3] = r1[2 * t + 8] | (unsigned)r1[2 * t + 9] << 16;
}
// warp w's rows 16w.. of D (64 x 32, row-major) from the accumulator layout
__device__ void wg_store(float *d, float (*acc)[4]) {
  int w = threadIdx.x / 32, g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
  for (int i = 0; i < 4; i++)
    for (int j = 0; j < 4; j++) d[(16 * w + g + (j >> 1) * 8) * 32 + 8 * i + 2 * t + (j & 1)] = acc[i][j];
}
#endif

// D[64x32] = 2 A[64x16] B[16x32] on one warpgroup by two wgmma (A from
// registers, or with ss from shared memory as K-major core matrices 128
// bytes apart in k and 256 in m; B by a descriptor): the first ignores
// D's values (acc 0; d starts at 1), the second adds to them. B goes into
// dynamic shared memory by wg_put_b (1 KiB). (A GPU that cannot run wgmma
// writes nothing: the check there fails.) With swap the descriptor says
// the two strides the other way round (test_emu's diagnosis when a GPU
// disagrees).
extern "C" __global__ void wgmma_tile(float *d, const unsigned short *a, const unsigned short *b, int tb, int lbo,
                                      int sbo, int ss, int swap) {
#ifdef LMC_WGMMA
  extern __shared__ __align__(16) unsigned short wsb[];
  wg_put_b(wsb, b, tb, lbo, sbo);
  unsigned short *wsa = wsb + 512;   // (A at byte 1024: 2 KiB)
  for (int e = threadIdx.x; e < 64 * 16; e += 128) {
    int m = e / 16, k = e % 16;
    wsa[((m / 8) * 256 + (k / 8) * 128 + (m % 8) * 16 + (k % 8) * 2) / 2] = a[e];
  }
  lmc_fence_proxy_async();
  __syncthreads();
  unsigned ra[4];
  wg_frag_a(ra, a);
  float acc[4][4];
  for (int i = 0; i < 4; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 1.0f;
  unsigned long long desc = wg_desc(wsb, swap ? sbo : lbo, swap ? lbo : sbo), adesc = wg_desc(wsa, 128, 256);
  lmc_wg_fence();
  if (ss) {
    lmc_wgmma_bf16_ss<32, 0>(acc, adesc, desc, 0);
    lmc_wgmma_bf16_ss<32, 0>(acc, adesc, desc, 1);
  } else if (tb) {
    lmc_wgmma_bf16<32, 1>(acc, ra, desc, 0);
    lmc_wgmma_bf16<32, 1>(acc, ra, desc, 1);
  } else {
    lmc_wgmma_bf16<32, 0>(acc, ra, desc, 0);
    lmc_wgmma_bf16<32, 0>(acc, ra, desc, 1);
  }
  lmc_wg_commit();
  lmc_wg_wait<0>();
  lmc_wg_hold<4>(acc);
  wg_store(d, acc);
#endif
}

// One wgmma (B K-major, lbo 512, sbo 128) whose B tile the block zeroes
// after the issue and before the wait: on the emulated platform the
// product reads B at the wait, so D is zero (on a GPU the result is
// undefined: test_emu runs it on the emulator only)
extern "C" __global__ void wgmma_late(float *d, const unsigned short *a, const unsigned short *b) {
#ifdef LMC_WGMMA
  extern __shared__ __align__(16) unsigned short wsb[];
  wg_put_b(wsb, b, 0, 512, 128);
  lmc_fence_proxy_async();
  __syncthreads();
  unsigned ra[4];
  wg_frag_a(ra, a);
  float acc[4][4];
  lmc_wg_fence();
  lmc_wgmma_bf16<32, 0>(acc, ra, wg_desc(wsb, 512, 128), 0);
  lmc_wg_commit();
  for (int e = threadIdx.x; e < 512; e += 128) wsb[e] = 0;   // (the tile: 1 KiB)
  __syncthreads();
  lmc_wg_wait<0>();
  lmc_wg_hold<4>(acc);
  wg_store(d, acc);
#endif
}

// cp.async on 32 threads: each copies 16 bytes of src into part 1 of a
// shared tile (group 1) and 16 zero bytes into part 2 (group 2). After
// wait1 and a barrier every thread reads part 1 (another thread's copy),
// after wait0 and a barrier part 2. before[] gets the thread's own part 2
// between the waits: on the emulator still what was there (on a GPU
// either).
extern "C" __global__ void cp_async_tile(unsigned *out, unsigned *before, const unsigned *src) {
  __shared__ __align__(16) unsigned s[256];
  int t = threadIdx.x;
  for (int i = 0; i < 8; i++) s[t * 8 + i] = 0xdeadbeefu;
  __syncthreads();
  lmc_cp_async16(&s[t * 4], src + t * 4, 16);
  lmc_cp_async_commit();
  lmc_cp_async16(&s[128 + t * 4], src, 0);
  lmc_cp_async_commit();
  lmc_cp_async_wait1();
  for (int i = 0; i < 4; i++) before[t * 4 + i] = s[128 + t * 4 + i];
  __syncthreads();
  for (int i = 0; i < 4; i++) out[t * 4 + i] = s[(t * 4 + i + 4) % 128];
  lmc_cp_async_wait0();
  __syncthreads();
  for (int i = 0; i < 4; i++) out[128 + t * 4 + i] = s[128 + (t * 4 + i + 4) % 128];
}

// needs blockDim.x floats of dynamic shared memory
extern "C" __global__ void uses_smem(float *out) {
  extern __shared__ float buf[];
  buf[threadIdx.x] = threadIdx.x;
  __syncthreads();
  out[threadIdx.x] = buf[blockDim.x - 1 - threadIdx.x];
}

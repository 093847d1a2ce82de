// tensor_cores.cuh: the warp-level matrix instructions as inline PTX, for
// a GPU (the emulated platform's device.h supplies the same names). lmc
// writes this file into a bundle's kernels.cu where the template says
// "// @include tensor_cores.cuh"; tests/emu/kernels.cu includes it, so the
// hardware check (test_emu real) runs the wrappers the kernels use.
#ifndef LMC_CUDA_EMU
__device__ __forceinline__ void lmc_mma_bf16_16816(float d[4], const unsigned a[4], const unsigned b[2],
                                                   const float c[4]) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
               "{%10,%11,%12,%13};\n"
               : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
                 "f"(c[2]), "f"(c[3]));
}
__device__ __forceinline__ unsigned lmc_smem(const void *p) { return (unsigned)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void lmc_ldmatrix_x4(unsigned r[4], const void *p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(lmc_smem(p)));
}
__device__ __forceinline__ void lmc_ldmatrix_x2_trans(unsigned r[2], const void *p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(lmc_smem(p)));
}
__device__ __forceinline__ void lmc_ldmatrix_x4_trans(unsigned r[4], const void *p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(lmc_smem(p)));
}
// cp.async.cg: 16 bytes from global into shared memory without passing
// through registers, n of them read (16, or 0: zeros), landing when the
// thread waits for its group (commit closes one; wait1 waits for all but
// the newest, wait0 for all)
__device__ __forceinline__ void lmc_cp_async16(void *dst, const void *src, int n) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(lmc_smem(dst)), "l"(src), "r"(n));
}
__device__ __forceinline__ void lmc_cp_async_commit(void) { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void lmc_cp_async_wait0(void) { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }
__device__ __forceinline__ void lmc_cp_async_wait1(void) { asm volatile("cp.async.wait_group 1;\n" ::: "memory"); }
// two floats to a pair of bf16 in one instruction (sm_80+): to nearest
// even, lo in the low half, NaN to the canonical 0x7fff
__device__ __forceinline__ unsigned lmc_bf16x2(float lo, float hi) {
  unsigned r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
// 2^x in one SFU instruction (ex2.approx.ftz.f32: within 2 ulp, results
// below 2^-126 flushed to zero, -inf to +0); exp2f wraps the same
// instruction in a range check and two multiplies for subnormal results,
// which softmax's probabilities need not keep
__device__ __forceinline__ float lmc_ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
#endif

// The warpgroup's matrix instructions (sm_90a: NVRTC defines
// __CUDA_ARCH_FEAT_SM90_ALL when it compiles for it; the emulated
// platform's device.h has the same names). wgmma.mma_async m64nNk16,
// bf16 x bf16 + f32, A from registers (lmc_wgmma_bf16) or from shared
// memory, K-major, by its descriptor (lmc_wgmma_bf16_ss): warp w of the warpgroup gives rows
// 16w..16w+15 of A in mma.sync's A layout (a[4]) and gets the same rows of
// D in its accumulator layout, d[N / 8][4]; B (16 x N) is read from shared
// memory through its descriptor, K-major (TB 0) or N-major (TB 1); acc 0
// ignores d's values (D = A B). The instruction runs asynchronously: d and
// a are the warpgroup's again, and B's shared memory may be written, only
// after lmc_wg_wait<M>() has waited for its group (lmc_wg_commit closes
// one; M groups newer may still run). lmc_wg_fence orders the registers'
// earlier accesses before the next wgmma; lmc_wg_hold keeps the compiler
// from moving an accumulator's reads and writes across the asm around it;
// lmc_fence_proxy_async orders this thread's earlier writes of shared
// memory (stores, landed cp.async) before the wgmma reads that follow a
// barrier.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL) && !defined(LMC_CUDA_EMU)
#define LMC_WGMMA 1
__device__ __forceinline__ void lmc_wg_fence(void) { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void lmc_wg_commit(void) { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int M> __device__ __forceinline__ void lmc_wg_wait(void) {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(M) : "memory");
}
template <int NT> __device__ __forceinline__ void lmc_wg_hold(float (*d)[4]) {
  #pragma unroll
  for (int i = 0; i < NT; i++)
    #pragma unroll
    for (int j = 0; j < 4; j++) asm volatile("" : "+f"(d[i][j])::"memory");
}
// and keeps A fragments in their registers until the asm (past a wait)
template <int NT> __device__ __forceinline__ void lmc_wg_hold_a(unsigned (*a)[4]) {
  #pragma unroll
  for (int i = 0; i < NT; i++)
    #pragma unroll
    for (int j = 0; j < 4; j++) asm volatile("" : "+r"(a[i][j])::"memory");
}
__device__ __forceinline__ void lmc_fence_proxy_async(void) { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
template <int N, int TB>
__device__ __forceinline__ void lmc_wgmma_bf16(float (*d)[4], const unsigned a[4], unsigned long long desc, int acc) {
  static_assert(N == 16 || N == 32 || N == 64, "lmc_wgmma_bf16 takes N 16, 32 or 64");
  if constexpr (N == 16)
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7}, {%8, %9, %10, %11}, %12, p, 1, 1, %14;\n}\n"
                 : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(acc), "n"(TB));
  else if constexpr (N == 32)
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, {%16, %17, %18, %19}, %20, p, 1, 1, %22;\n}\n"
                 : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(acc), "n"(TB));
  else if constexpr (N == 64)
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
                 : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(acc), "n"(TB));
}
// the same with A (64 x 16, K-major) from shared memory by its descriptor
template <int N, int TB>
__device__ __forceinline__ void lmc_wgmma_bf16_ss(float (*d)[4], unsigned long long adesc, unsigned long long bdesc,
                                                  int acc) {
  static_assert(N == 16 || N == 32 || N == 64, "lmc_wgmma_bf16_ss takes N 16, 32 or 64");
  if constexpr (N == 16)
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7}, %8, %9, p, 1, 1, 0, %11;\n}\n"
                 : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3])
                 : "l"(adesc), "l"(bdesc), "r"(acc), "n"(TB));
  else if constexpr (N == 32)
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, p, 1, 1, 0, %19;\n}\n"
                 : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3])
                 : "l"(adesc), "l"(bdesc), "r"(acc), "n"(TB));
  else if constexpr (N == 64)
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, %35;\n}\n"
                 : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
                 : "l"(adesc), "l"(bdesc), "r"(acc), "n"(TB));
}
#endif

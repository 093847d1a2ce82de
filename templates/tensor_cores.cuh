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

/* nocuda.c: the CUDA backend's entry point in a build made without the
 * CUDA headers: there is no such backend, and lmrun says so. */
#include "lmrt.h"

Backend *cuda_backend(const char *bundle_dir, bool emulated, char *why, size_t n) {
  (void)bundle_dir, (void)emulated;
  snprintf(why, n, "this lmrun was built without the CUDA headers (/usr/local/cuda/include)");
  return NULL;
}

void cuda_matmul_precision(int p) { (void)p; }
void cuda_attention_dkv_qt(int qt) { (void)qt; }
void cuda_attention_rows(int rows) { (void)rows; }
void cuda_norm_bwd_one_pass(bool on) { (void)on; }
void cuda_collectives(int mode) { (void)mode; }
bool cuda_side_used(void) { return false; }
long long cuda_gemms_in_parts(void) { return 0; }
void cuda_jit_time(double *seconds, bool *cold, int *programs, int *threads, bool *saved) {
  *seconds = 0, *cold = *saved = false, *programs = *threads = 0;
}

/* bench_order: the host's share of a GPU step before its first launch, the
 * order of a batch's token ids for the embedding backward (cuda.c's
 * upload, util.c's rt_order_by_id, a counting sort) against the qsort by
 * (id, position) it replaced, in the same run, at the benchmark's shapes:
 * GPT-2 (B 8 x T 1024 ids of a 50,304 vocabulary) and llama-large (B 8 x
 * T 2048 of 32,000). Both orders must agree. Usage: bench_order [REPS] */
#include "lmrt.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int by_id(const void *a, const void *b) {
  const int32_t *x = a, *y = b;
  return x[0] != y[0] ? (x[0] < y[0] ? -1 : 1) : (x[1] < y[1] ? -1 : x[1] > y[1]);
}

static void by_qsort(int32_t *order, int32_t *pair, const int32_t *id, int64_t n) {
  for (int64_t i = 0; i < n; i++) pair[2 * i] = id[i], pair[2 * i + 1] = (int32_t)i;
  qsort(pair, n, 2 * sizeof *pair, by_id);
  for (int64_t i = 0; i < n; i++) order[i] = pair[2 * i + 1];
}

int main(int argc, char **argv) {
  int reps = argc > 1 ? atoi(argv[1]) : 200;
  if (reps < 1) reps = 1;
  struct { const char *name; int64_t n, vocab; } shapes[] = {{"gpt2 B8 T1024", 8192, 50304}, {"llama-large B8 T2048", 16384, 32000}};
  for (int s = 0; s < 2; s++) {
    int64_t n = shapes[s].n;
    int32_t *id = rt_xmalloc(n * sizeof *id), *a = rt_xmalloc(n * sizeof *a), *b = rt_xmalloc(n * sizeof *b);
    int32_t *pair = rt_xmalloc(2 * n * sizeof *pair);
    for (int64_t i = 0; i < n; i++) id[i] = (int32_t)(rng_hash(9, i, (uint64_t)s) % (uint64_t)shapes[s].vocab);
    double t = rt_now();
    for (int r = 0; r < reps; r++) by_qsort(a, pair, id, n);
    double tq = (rt_now() - t) / reps;
    t = rt_now();
    for (int r = 0; r < reps; r++) rt_order_by_id(b, id, n);
    double tc = (rt_now() - t) / reps;
    printf("%-22s %6lld ids: qsort %.3f ms, counting sort %.3f ms: %.1fx%s\n", shapes[s].name, (long long)n, tq * 1e3,
           tc * 1e3, tq / tc, memcmp(a, b, n * sizeof *a) ? " | ORDERS DIFFER" : "");
    free(id), free(a), free(b), free(pair);
  }
  return 0;
}

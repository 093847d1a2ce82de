/* test_order.c: rt_order_by_id, the CUDA backend's order of a batch's
 * token ids for the embedding backward, gives qsort's order by (id,
 * position): sorted by id, ties in position order (the backward's sums
 * run in that order, so any other would change its bits). Random ids of
 * GPT-2's and a small vocabulary, one id, all ids equal, descending ids,
 * a single id and an id of 2^20. */
#include "lmrt.h"
#include <stdio.h>
#include <stdlib.h>

static int by_id(const void *a, const void *b) {
  const int32_t *x = a, *y = b;
  return x[0] != y[0] ? (x[0] < y[0] ? -1 : 1) : (x[1] < y[1] ? -1 : x[1] > y[1]);
}

static int check(const char *what, const int32_t *id, int64_t n) {
  int32_t *order = malloc((n + 1) * sizeof *order), *pair = malloc(2 * (n + 1) * sizeof *pair);
  rt_order_by_id(order, id, n);
  for (int64_t i = 0; i < n; i++) pair[2 * i] = id[i], pair[2 * i + 1] = (int32_t)i;
  qsort(pair, n, 2 * sizeof *pair, by_id);
  int64_t bad = -1;
  for (int64_t i = 0; i < n && bad < 0; i++)
    if (order[i] != pair[2 * i + 1]) bad = i;
  printf("%s %s (%lld ids)%s\n", bad < 0 ? "ok  " : "FAIL", what, (long long)n, bad < 0 ? "" : ": another order");
  free(order), free(pair);
  return bad >= 0;
}

int main(void) {
  enum { N = 8192 };
  static int32_t id[N];
  int failures = 0, checks = 0;
  srand(7);
  for (int i = 0; i < N; i++) id[i] = rand() % 50304;
  failures += check("GPT-2's vocabulary", id, N), checks++;
  for (int i = 0; i < N; i++) id[i] = rand() % 7;
  failures += check("7 ids, many ties", id, N), checks++;
  for (int i = 0; i < N; i++) id[i] = 3;
  failures += check("one id", id, N), checks++;
  for (int i = 0; i < N; i++) id[i] = N - i;
  failures += check("descending", id, N), checks++;
  id[0] = 42;
  failures += check("a single id", id, 1), checks++;
  id[0] = 5, id[1] = 0, id[2] = 1 << 20, id[3] = 0;
  failures += check("a large id", id, 4), checks++;
  printf("%d passed, %d failed\n", checks - failures, failures);
  return failures != 0;
}

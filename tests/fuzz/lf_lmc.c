/* lf_lmc.c: libFuzzer over lmc's front end and checks: an input is a spec
 * that goes through parse, sema, lower, fuse, autodiff, partition and
 * schedule as lmc runs them (nothing written). Every input must end in a
 * plan or a diagnostic: a crash, a sanitizer report, a hang or an
 * internal error is a bug. */
#include "lmc.h"
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t n) {
  char *text = malloc(n + 1);
  memcpy(text, data, n);
  text[n] = 0;
  jmp_buf jb;
  diag_quiet = true;
  diag_jmp = &jb;
  if (!setjmp(jb)) {
    Node *items = parse_program("fuzz.lm", text, (long)n, NULL, 0);
    Program *p = sema_check(items, NULL, 0, 0);
    Graph *g = lower_program(p);
    fuse_graph(g, FUSE_AUTO);
    ad_backward(g);
    sched_plan(g);
    sched_check(g);
  }
  diag_jmp = NULL;
  arena_free_all();
  free(text);
  return 0;
}

/* kernels.c: the CUDA kernels of a bundle. In: the graph (which ops the
 * programs of all ranks use). Out: kernels.cu, the prelude of
 * templates/kernels.cu and, in template order, each section ("// @kernel
 * NAME") whose op the model uses, plus the optimizer's. The CUDA runtime
 * compiles it with NVRTC; the tests compile it the same way on machines
 * without a GPU. */
#include "lmc.h"
#include <string.h>

extern const char tpl_kernels[];

/* The template section an op's kernels live in. */
static const char *section_of(int op) {
  switch (op) {
  case OP_PARAM: case OP_INPUT: case OP_MATMUL: case OP_ALLREDUCE: return NULL;
  case OP_ROPE_BWD: return "rope";
  default: return op_names[op];
  }
}

static bool used(Graph *g, const char *section) {
  if (!strcmp(section, "optimizer")) return true;
  for (int k = 0; k < g->nfwd + g->nbwd; k++) {
    Inst *in = k < g->nfwd ? g->fwd[k] : g->bwd[k - g->nfwd];
    const char *s = section_of(in->op);
    if (s && !strcmp(s, section)) return true;
  }
  return false;
}

/* Copies the template: the prelude always, a section when used. */
void kernels_emit(FILE *out, Graph *g) {
  fprintf(out, "// lmc kernels for model %s (from templates/kernels.cu)\n", g->prog->model->name);
  const char *p = tpl_kernels;
  bool keep = false;
  while (*p) {
    const char *e = strchr(p, '\n');
    size_t n = e ? (size_t)(e - p + 1) : strlen(p);
    if (!strncmp(p, "// @prelude", 11)) keep = true;
    else if (!strncmp(p, "// @kernel ", 11)) {
      char name[64];
      size_t l = strcspn(p + 11, "\n");
      snprintf(name, sizeof name, "%.*s", (int)(l < 63 ? l : 63), p + 11);
      keep = used(g, name);
      if (keep) fprintf(out, "\n");
    }
    if (keep) fwrite(p, 1, n, out);
    p += n;
  }
}

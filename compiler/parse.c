/* parse.c: the parse phase. Reads a file, runs the bison parser over it
 * and splices imported files in place of their import items, resolving
 * paths against the importing file's folder, then each -I folder. A file
 * imported twice is read once; an import cycle is an error. */
#include "lmc.h"
#include "parser.h"
#include "lexer.h"
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_IMPORT_DEPTH 32

static const char **inc;
static int ninc;
static const char *open_paths[MAX_IMPORT_DEPTH];
static int nopen;
static const char **seen;
static int nseen, capseen;

void yyerror(Loc *loc, void *scanner, Parser *P, const char *msg) {
  (void)scanner, (void)P;
  if (strstr(msg, "memory exhausted"))
    diag_error(*loc, "too-deep", "nesting too deep");
  diag_error(*loc, "syntax", "%s", msg);
}

SrcFile *parse_load(const char *path) {
  struct stat st;
  if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
    return NULL;
  FILE *f = fopen(path, "rb");
  if (!f)
    return NULL;
  SrcFile *sf = arena_alloc(sizeof(SrcFile));
  char *buf = arena_alloc(st.st_size + 1);
  sf->len = (long)fread(buf, 1, st.st_size, f);
  fclose(f);
  sf->name = arena_strdup(path), sf->text = buf;
  return sf;
}

static Node *parse_text(const SrcFile *sf) {
  Parser P = {.file = sf};
  yyscan_t scanner;
  yylex_init_extra(&P, &scanner);
  YY_BUFFER_STATE b = yy_scan_bytes(sf->text, (int)sf->len, scanner);
  jmp_buf here, *outer = diag_jmp;
  diag_jmp = &here;
  if (setjmp(here)) {            /* free the scanner, then keep unwinding */
    yy_delete_buffer(b, scanner);
    yylex_destroy(scanner);
    diag_jmp = outer;
    longjmp(*outer, 1);
  }
  yyparse(scanner, &P);
  yy_delete_buffer(b, scanner);
  yylex_destroy(scanner);
  diag_jmp = outer;
  return P.items;
}

static char *dir_of(const char *path) {
  const char *slash = strrchr(path, '/');
  return slash ? arena_strndup(path, slash - path) : arena_strdup(".");
}

static const char *resolve(const char *from, const char *rel) {
  if (rel[0] == '/')
    return rel;
  const char *cand = arena_printf("%s/%s", dir_of(from), rel);
  struct stat st;
  if (stat(cand, &st) == 0)
    return cand;
  for (int i = 0; i < ninc; i++) {
    cand = arena_printf("%s/%s", inc[i], rel);
    if (stat(cand, &st) == 0)
      return cand;
  }
  return NULL;
}

static bool mark_seen(const char *real) {
  for (int i = 0; i < nseen; i++)
    if (!strcmp(seen[i], real))
      return false;
  if (nseen == capseen) {
    capseen = capseen ? 2 * capseen : 16;
    const char **n = arena_alloc(capseen * sizeof(char *));
    if (nseen) memcpy(n, seen, nseen * sizeof(char *));
    seen = n;
  }
  seen[nseen++] = real;
  return true;
}

static Node *expand(Node *items, const char *path);

static Node *import_file(Node *imp, const char *from) {
  const char *path = resolve(from, imp->name);
  if (!path) {
    diag_error(imp->a->loc, "import-missing", "cannot find imported file '%s'", imp->name);
  }
  char real[PATH_MAX];
  if (!realpath(path, real))
    diag_error(imp->a->loc, "import-missing", "cannot find imported file '%s'", imp->name);
  for (int i = 0; i < nopen; i++)
    if (!strcmp(open_paths[i], real))
      diag_error(imp->a->loc, "import-cycle", "import cycle: '%s' imports itself", imp->name);
  if (!mark_seen(arena_strdup(real)))
    return NULL;
  if (nopen == MAX_IMPORT_DEPTH)
    diag_error(imp->loc, "too-deep", "imports nested deeper than %d", MAX_IMPORT_DEPTH);
  SrcFile *sf = parse_load(path);
  if (!sf)
    diag_error(imp->a->loc, "import-missing", "cannot read imported file '%s'", imp->name);
  open_paths[nopen++] = arena_strdup(real);
  Node *items = expand(parse_text(sf), path);
  nopen--;
  return items;
}

static Node *expand(Node *items, const char *path) {
  Node *out = NULL;
  for (Node *it = items, *next; it; it = next) {
    next = it->next;
    it->next = NULL;
    out = ast_append(out, it->kind == N_IMPORT ? import_file(it, path) : it);
  }
  return out;
}

Node *parse_program(const char *path, const char *text, long len,
                    const char **incdirs, int nincdirs) {
  inc = incdirs, ninc = nincdirs, nopen = 0, nseen = 0, capseen = 0, seen = NULL;
  SrcFile *sf = arena_alloc(sizeof(SrcFile));
  sf->name = path, sf->text = text, sf->len = len;
  char real[PATH_MAX];
  if (realpath(path, real)) {
    mark_seen(arena_strdup(real));
    open_paths[nopen++] = arena_strdup(real);
  }
  return expand(parse_text(sf), path);
}

/* ast.c: builders called from parser.y and the --dump=ast printer.
 * Nodes live in the arena; lists are chained through Node.next. */
#include "lmc.h"
#include <stdlib.h>
#include <string.h>

Node *ast_new(NodeKind kind, Loc loc) {
  Node *n = arena_alloc(sizeof(Node));
  n->kind = kind, n->loc = loc;
  return n;
}

Node *ast_num(Loc loc, const char *text) {
  Node *n = ast_new(N_NUM, loc);
  n->name = text;
  n->is_int = strspn(text, "0123456789") == strlen(text);
  n->num = strtod(text, NULL);
  if (n->is_int && (strlen(text) > 15 || n->num > 1e15))
    diag_error(loc, "num-range", "integer %s is too large (limit 10^15)", text);
  return n;
}

Node *ast_ident(Loc loc, const char *name) {
  Node *n = ast_new(N_IDENT, loc);
  n->name = name;
  return n;
}

Node *ast_str(Loc loc, const char *text) {
  Node *n = ast_new(N_STR, loc);
  n->name = arena_strndup(text + 1, strlen(text) - 2);
  return n;
}

/* Every phase after the parser walks expressions recursively: a nesting
 * deeper than this (a + b + ... of 150,000 terms) is an error here rather
 * than a stack overflow there. */
enum { MAX_DEPTH = 1000 };

static Node *nest(Node *n, Node *a, Node *b, Node *list) {
  int d = 0;
  if (a && a->depth > d) d = a->depth;
  if (b && b->depth > d) d = b->depth;
  for (Node *x = list; x; x = x->next)
    if (x->depth > d) d = x->depth;
  n->depth = d + 1;
  if (n->depth > MAX_DEPTH)
    diag_error(n->loc, "expr-depth", "expression nested more than %d levels deep; name some of its parts", MAX_DEPTH);
  return n;
}

Node *ast_binop(Loc loc, int op, Node *a, Node *b) {
  Node *n = ast_new(N_BINOP, loc);
  n->op = op, n->a = a, n->b = b;
  return nest(n, a, b, NULL);
}

Node *ast_neg(Loc loc, Node *a) {
  Node *n = ast_new(N_NEG, loc);
  n->a = a;
  return nest(n, a, NULL, NULL);
}

Node *ast_call(Loc loc, Node *fn, Node *args) {
  Node *n = ast_new(N_CALL, loc);
  n->name = fn->name, n->a = fn, n->list = args;
  return nest(n, NULL, NULL, args);
}

Node *ast_kwarg(Loc loc, Node *key, Node *val) {
  Node *n = ast_new(N_KWARG, loc);
  n->name = key->name, n->a = val, n->b = key;
  return n;
}

Node *ast_tuple(Loc loc, Node *items) {
  Node *n = ast_new(N_TUPLE, loc);
  n->list = items;
  return n;
}

Node *ast_dim(Loc loc, Node *name, Node *val) {
  Node *n = ast_new(N_DIM, loc);
  n->name = name->name, n->a = val, n->b = name;
  return n;
}

Node *ast_param(Loc loc, Node *name, Node *dims, Node *init) {
  Node *n = ast_new(N_PARAM, loc);
  n->name = name->name, n->list = dims, n->a = init, n->b = name;
  return n;
}

Node *ast_assign(Loc loc, Node *name, Node *val) {
  Node *n = ast_new(N_ASSIGN, loc);
  n->name = name->name, n->a = val, n->b = name;
  return n;
}

Node *ast_layers(Loc loc, Node *name, Node *count, Node *body) {
  Node *n = ast_new(N_LAYERS, loc);
  n->name = name->name, n->a = count, n->list = body, n->b = name;
  return n;
}

Node *ast_return(Loc loc, Node *val) {
  Node *n = ast_new(N_RETURN, loc);
  n->a = val;
  return n;
}

Node *ast_import(Loc loc, Node *path) {
  Node *n = ast_new(N_IMPORT, loc);
  n->name = path->name, n->a = path;
  return n;
}

Node *ast_block(Loc loc, Node *name, Node *params, Node *body) {
  Node *n = ast_new(N_BLOCK, loc);
  n->name = name->name, n->a = params, n->list = body, n->b = name;
  return n;
}

Node *ast_model(Loc loc, Node *name, Node *body) {
  Node *n = ast_new(N_MODEL, loc);
  n->name = name->name, n->list = body, n->b = name;
  return n;
}

Node *ast_section(Loc loc, NodeKind kind, Node *settings) {
  Node *n = ast_new(kind, loc);
  n->list = settings;
  return n;
}

Node *ast_setting(Loc loc, Node *key, Node *val) {
  Node *n = ast_new(N_SETTING, loc);
  n->name = key->name, n->a = val, n->b = key;
  return n;
}

Node *ast_layout(Loc loc, Node *rules) {
  Node *n = ast_new(N_LAYOUT, loc);
  n->name = "layout", n->list = rules;
  return n;
}

Node *ast_append(Node *list, Node *item) {
  if (!list)
    return item;
  Node *p = list;
  while (p->next)
    p = p->next;
  p->next = item;
  return list;
}

/* ---- printing ---- */

void ast_print_expr(FILE *out, Node *e) {
  switch (e->kind) {
  case N_NUM: fprintf(out, "%s", e->name); return;
  case N_IDENT: fprintf(out, "%s", e->name); return;
  case N_STR: fprintf(out, "\"%s\"", e->name); return;
  case N_NEG: fprintf(out, "(-"); ast_print_expr(out, e->a); fprintf(out, ")"); return;
  case N_KWARG: fprintf(out, "%s = ", e->name); ast_print_expr(out, e->a); return;
  case N_BINOP:
    fprintf(out, "(");
    ast_print_expr(out, e->a);
    fprintf(out, " %c ", e->op);
    ast_print_expr(out, e->b);
    fprintf(out, ")");
    return;
  case N_CALL:
  case N_TUPLE:
    fprintf(out, "%s(", e->kind == N_CALL ? e->name : "");
    for (Node *a = e->list; a; a = a->next) {
      ast_print_expr(out, a);
      if (a->next) fprintf(out, ", ");
    }
    fprintf(out, ")");
    return;
  default: internal_error("not an expression");
  }
}

static void indent(FILE *out, int n) { fprintf(out, "%*s", 2 * n, ""); }

static void dump_stmts(FILE *out, Node *s, int lvl);

static void dump_stmt(FILE *out, Node *s, int lvl) {
  indent(out, lvl);
  switch (s->kind) {
  case N_DIM: fprintf(out, "dim %s = ", s->name); ast_print_expr(out, s->a); break;
  case N_PARAM:
    fprintf(out, "param %s[", s->name);
    for (Node *d = s->list; d; d = d->next) fprintf(out, "%s%s", d->name, d->next ? ", " : "");
    fprintf(out, "]");
    if (s->a) { fprintf(out, " init "); ast_print_expr(out, s->a); }
    break;
  case N_ASSIGN: fprintf(out, "%s = ", s->name); ast_print_expr(out, s->a); break;
  case N_RETURN: fprintf(out, "return "); ast_print_expr(out, s->a); break;
  case N_LAYERS:
    fprintf(out, "layers %s = ", s->name);
    ast_print_expr(out, s->a);
    fprintf(out, " {\n");
    dump_stmts(out, s->list, lvl + 1);
    indent(out, lvl);
    fprintf(out, "}\n");
    return;
  case N_SETTING: fprintf(out, "%s = ", s->name); ast_print_expr(out, s->a); break;
  case N_LAYOUT:
    fprintf(out, "layout ");
    for (Node *r = s->list; r; r = r->next) fprintf(out, "%s: %s%s", r->name, r->a->name, r->next ? ", " : "");
    break;
  default: internal_error("not a statement");
  }
  fprintf(out, "  // line %d\n", s->loc.line);
}

static void dump_stmts(FILE *out, Node *s, int lvl) {
  for (; s; s = s->next)
    dump_stmt(out, s, lvl);
}

void ast_dump(FILE *out, Node *items) {
  fprintf(out, "// ast\n");
  for (Node *it = items; it; it = it->next) {
    switch (it->kind) {
    case N_IMPORT: fprintf(out, "import \"%s\"\n", it->name); break;
    case N_MODEL: fprintf(out, "model %s {\n", it->name); dump_stmts(out, it->list, 1); fprintf(out, "}\n"); break;
    case N_BLOCK:
      fprintf(out, "block %s(", it->name);
      for (Node *p = it->a; p; p = p->next) fprintf(out, "%s%s", p->name, p->next ? ", " : "");
      fprintf(out, ") {\n");
      dump_stmts(out, it->list, 1);
      fprintf(out, "}\n");
      break;
    case N_PARALLEL:
    case N_TRAIN:
      fprintf(out, "%s {\n", it->kind == N_TRAIN ? "train" : "parallel");
      dump_stmts(out, it->list, 1);
      fprintf(out, "}\n");
      break;
    default: internal_error("bad top-level item");
    }
  }
}

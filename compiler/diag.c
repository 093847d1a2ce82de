/* diag.c: located diagnostics. An error prints
 *   file:line:col: error: message [id]
 *     <source line>
 *     ^~~~
 * and unwinds to the compile driver through diag_jmp. */
#include "lmc.h"
#include <stdlib.h>
#include <string.h>

jmp_buf *diag_jmp;
bool diag_quiet;
static char hint[512];

static void show_line(Loc loc) {
  const SrcFile *f = loc.file;
  if (!f || !f->text || loc.line <= 0)
    return;
  const char *p = f->text, *end = f->text + f->len;
  for (int l = 1; l < loc.line && p < end; p++)
    if (*p == '\n')
      l++;
  const char *e = p;
  while (e < end && *e != '\n')
    e++;
  /* a very long line shows a window of it around the caret */
  const char *from = p;
  if (e - p > 400 && loc.col > 100) from = p + loc.col - 100;
  if (e - p > 400 && e - from > 300) e = from + 300;
  fprintf(stderr, "  %s", from > p ? "..." : "");
  for (const char *q = from; q < e; q++)
    fputc((unsigned char)*q >= 32 && (unsigned char)*q < 127 ? *q : (*q == '\t' ? '\t' : '?'), stderr);
  fprintf(stderr, "\n  %s", from > p ? "   " : "");
  for (const char *q = from; q < p + loc.col - 1 && q < e; q++)
    fputc(*q == '\t' ? '\t' : ' ', stderr);
  fputc('^', stderr);
  int width = loc.end_line == loc.line ? loc.end_col - loc.col : 1;
  for (int i = 1; i < width && p + loc.col - 1 + i < e; i++)
    fputc('~', stderr);
  fputc('\n', stderr);
}

static void vreport(Loc loc, const char *kind, const char *id,
                    const char *fmt, va_list ap) {
  if (diag_quiet) {
    hint[0] = 0;
    return;
  }
  if (loc.file)
    fprintf(stderr, "%s:%d:%d: %s: ", loc.file->name, loc.line, loc.col, kind);
  else
    fprintf(stderr, "lmc: %s: ", kind);
  vfprintf(stderr, fmt, ap);
  if (id)
    fprintf(stderr, " [%s]", id);
  fputc('\n', stderr);
  show_line(loc);
  if (hint[0])
    fprintf(stderr, "  hint: %s\n", hint);
  hint[0] = 0;
}

void diag_error(Loc loc, const char *id, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vreport(loc, "error", id, fmt, ap);
  va_end(ap);
  if (diag_jmp)
    longjmp(*diag_jmp, 1);
  exit(1);
}

void diag_note(Loc loc, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vreport(loc, "note", NULL, fmt, ap);
  va_end(ap);
}

/* Sets the hint that the next diag_error prints under its caret. */
void diag_hint(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(hint, sizeof hint, fmt, ap);
  va_end(ap);
}

void diag_fatal(const char *id, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  Loc none = {0};
  vreport(none, "error", id, fmt, ap);
  va_end(ap);
  if (diag_jmp)
    longjmp(*diag_jmp, 1);
  exit(1);
}

void diag_internal(const char *file, int line, const char *msg) {
  fprintf(stderr, "lmc: internal error at %s:%d: %s\n", file, line, msg);
  abort();
}

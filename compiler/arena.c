/* arena.c: one arena per compilation. Blocks are chained and freed at
 * once by arena_free_all(); nothing in the compiler frees piecemeal. */
#include "lmc.h"
#include <stdlib.h>
#include <string.h>

typedef struct Block {
  struct Block *next;
  size_t used, cap;
  _Alignas(16) char data[];
} Block;

static Block *head;

void *arena_alloc(size_t n) {
  n = (n + 15) & ~(size_t)15;
  if (!head || head->used + n > head->cap) {
    size_t cap = n > (1 << 20) ? n : (1 << 20);
    Block *b = malloc(sizeof(Block) + cap);
    if (!b) {
      fprintf(stderr, "lmc: error: out of memory\n");
      exit(1);
    }
    b->next = head, b->used = 0, b->cap = cap;
    head = b;
  }
  void *p = head->data + head->used;
  head->used += n;
  memset(p, 0, n);
  return p;
}

char *arena_strndup(const char *s, size_t n) {
  char *p = arena_alloc(n + 1);
  memcpy(p, s, n);
  p[n] = 0;
  return p;
}

char *arena_strdup(const char *s) { return arena_strndup(s, strlen(s)); }

char *arena_printf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  char *p = arena_alloc(n + 1);
  va_start(ap, fmt);
  vsnprintf(p, n + 1, fmt, ap);
  va_end(ap);
  return p;
}

void arena_free_all(void) {
  while (head) {
    Block *b = head->next;
    free(head);
    head = b;
  }
}

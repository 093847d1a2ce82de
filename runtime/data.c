/* data.c: training data, memory-mapped, never read whole. The data is one
 * path or a glob of them ("shards/train_*.bin", in name order), each file
 * either an llm.c token shard (.bin: a 256 int32 header, magic 20240520
 * version 1 with uint16 tokens, or magic 20240801 version 7 with uint32
 * tokens; then the token count; then the tokens) or raw text read as
 * bytes (token = byte value). The files form one stream of tokens whose
 * last val_fraction is the validation split. A training batch is B rows
 * of T+1 tokens at offsets drawn from (seed, step, row), so any step's
 * batch can be made again, by any rank, after a resume. Every token is
 * checked against the vocab on load, one pass through the mapping. */
#include "lmrt.h"
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct Shard {
  char path[1024];
  const unsigned char *map, *tok;   /* the mapping; its first token */
  size_t map_len;
  int64_t first, ntok;              /* place in the stream, tokens */
  int elem;                         /* 1 text byte, 2 or 4 shard token */
} Shard;

struct DataShards {
  Shard *s;
  int n;
};

static bool is_shard(const char *path) {
  size_t n = strlen(path);
  return n > 4 && !strcmp(path + n - 4, ".bin");
}

static void map_file(Shard *s) {
  struct stat st;
  if (stat(s->path, &st) != 0) rt_die("cannot open data file '%s': %s", s->path, strerror(errno));
  if (!S_ISREG(st.st_mode)) rt_die("data file '%s' is not a regular file", s->path);
  if (st.st_size == 0) rt_die("data file '%s' is empty", s->path);
  int fd = open(s->path, O_RDONLY);
  if (fd < 0) rt_die("cannot open data file '%s': %s", s->path, strerror(errno));
  void *m = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (m == MAP_FAILED) rt_die("cannot map data file '%s': %s", s->path, strerror(errno));
  s->map = m, s->map_len = st.st_size;
}

static void read_header(Shard *s) {
  int32_t hdr[256];
  if (s->map_len < sizeof hdr)
    rt_die("data file '%s' is truncated: %zu bytes, shorter than the 1024-byte shard header", s->path, s->map_len);
  memcpy(hdr, s->map, sizeof hdr);
  if (hdr[0] == 20240520 && hdr[1] == 1) s->elem = 2;
  else if (hdr[0] == 20240801 && hdr[1] == 7) s->elem = 4;
  else if (hdr[0] == 20240520 || hdr[0] == 20240801)
    rt_die("data file '%s': unsupported shard version %d for magic %d", s->path, hdr[1], hdr[0]);
  else rt_die("data file '%s' is not a token shard (magic %d, want 20240520 or 20240801)", s->path, hdr[0]);
  int64_t n = hdr[2], have = (int64_t)((s->map_len - sizeof hdr) / s->elem);
  if (n < 0 || have < n)
    rt_die("data file '%s' is truncated: header says %lld tokens, file holds %lld", s->path, (long long)n,
           (long long)have);
  s->tok = s->map + sizeof hdr, s->ntok = n;
}

/* The files a path names: itself, or a glob's matches in name order. */
static char **expand(const char *path, int *n) {
  glob_t g;
  if (strpbrk(path, "*?[") && glob(path, 0, NULL, &g) == 0) {
    char **list = rt_xmalloc(g.gl_pathc * sizeof *list);
    for (size_t i = 0; i < g.gl_pathc; i++) list[i] = strdup(g.gl_pathv[i]);
    *n = (int)g.gl_pathc;
    globfree(&g);
    return list;
  }
  if (strpbrk(path, "*?[")) rt_die("no data files match '%s'", path);
  char **list = rt_xmalloc(sizeof *list);
  list[0] = strdup(path), *n = 1;
  return list;
}

static uint32_t at(const Shard *s, int64_t k) {
  if (s->elem == 1) return s->tok[k];
  if (s->elem == 2) {
    uint16_t v;
    memcpy(&v, s->tok + 2 * k, 2);
    return v;
  }
  uint32_t v;
  memcpy(&v, s->tok + 4 * k, 4);
  return v;
}

static void check_vocab(const Shard *s, int64_t vocab) {
  if (s->elem == 1) return;   /* bytes: the vocab holds 256 */
  for (int64_t k = 0; k < s->ntok; k++) {
    uint32_t t = at(s, k);
    if (t >= (uint64_t)vocab)
      rt_die("data file '%s': token %u at %lld is outside the model's vocab of %lld", s->path, t, (long long)k,
             (long long)vocab);
  }
}

/* Token i of the stream. */
static int32_t token(const Data *d, int64_t i) {
  int lo = 0, hi = d->sh->n - 1;
  while (lo < hi) {   /* the last shard starting at or before i */
    int mid = (lo + hi + 1) / 2;
    if (d->sh->s[mid].first <= i) lo = mid;
    else hi = mid - 1;
  }
  return (int32_t)at(&d->sh->s[lo], i - d->sh->s[lo].first);
}

static void row(const Data *d, int64_t off, int64_t T, int32_t *out) {
  for (int64_t t = 0; t <= T; t++) out[t] = token(d, off + t);
}

void data_train_batch(Data *d, uint64_t seed, int64_t step, int64_t B, int64_t T, int32_t *rows) {
  int64_t span = d->ntrain - (T + 1) + 1;
  uint64_t key = rng_hash(seed, 0x64617461, (uint64_t)step);
  for (int64_t r = 0; r < B; r++) row(d, (int64_t)(rng_hash(key, (uint64_t)r, 7) % (uint64_t)span), T, rows + r * (T + 1));
}

/* Validation batch i of n: rows evenly spaced over the validation split. */
void data_val_batch(Data *d, int64_t i, int64_t n, int64_t B, int64_t T, int32_t *rows) {
  int64_t nval = d->ntok - d->ntrain, span = nval - (T + 1) + 1;
  for (int64_t r = 0; r < B; r++) {
    int64_t k = i * B + r, off = (int64_t)((double)k / (double)(n * B) * span);
    row(d, d->ntrain + off, T, rows + r * (T + 1));
  }
}

/* The data's identity for checkpoints: its token count and a hash of its
 * first and last 65,536 tokens (cheap on any size, and a different file or
 * tokenisation changes it). */
uint64_t data_hash(const Data *d) {
  int64_t k = d->ntok < 65536 ? d->ntok : 65536;
  uint64_t h = rt_fnv1a(&d->ntok, sizeof d->ntok, 0xcbf29ce484222325ULL);
  for (int64_t i = 0; i < k; i++) {
    int32_t a = token(d, i), z = token(d, d->ntok - k + i);
    h = rt_fnv1a(&a, 4, h), h = rt_fnv1a(&z, 4, h);
  }
  return h;
}

static Data *loading;   /* for data_abandon after a caught error */

Data *data_load(const char *path, int64_t vocab, double val_fraction, int64_t need) {
  if (!path || !*path)
    rt_die("no data file: pass --data FILE (text or .bin shard) or set data in the train section");
  Data *d = loading = rt_xmalloc(sizeof(Data));
  snprintf(d->path, sizeof d->path, "%s", path);
  d->vocab = vocab;
  d->sh = rt_xmalloc(sizeof *d->sh);
  char **files = expand(path, &d->sh->n);
  d->sh->s = rt_xmalloc(d->sh->n * sizeof(Shard));
  for (int i = 0; i < d->sh->n; i++) {
    Shard *s = &d->sh->s[i];
    snprintf(s->path, sizeof s->path, "%s", files[i]);
    free(files[i]);
    map_file(s);
    if (is_shard(s->path)) read_header(s), check_vocab(s, vocab);
    else {
      if (vocab < 256)
        rt_die("data file '%s' is text (byte tokens 0..255) but the model's vocab is %lld; "
               "use a vocab of at least 256 or .bin token shards", s->path, (long long)vocab);
      s->tok = s->map, s->ntok = (int64_t)s->map_len, s->elem = 1;
    }
    s->first = d->ntok;
    d->ntok += s->ntok;
  }
  free(files);   /* names past a failing file leak only on the way to exit */
  d->ntrain = (int64_t)(d->ntok * (1.0 - val_fraction));
  if (d->ntrain < need || d->ntok - d->ntrain < need)
    rt_die("data file '%s' has %lld tokens: too few for a batch row of %lld tokens in both the "
           "train split and the %.0f%% validation split", path, (long long)d->ntok, (long long)need,
           100 * val_fraction);
  loading = NULL;
  return d;
}

/* After a caught loading error: what the load mapped and allocated goes. */
void data_abandon(void) {
  if (loading && loading->sh) {
    for (int i = 0; i < loading->sh->n; i++)
      if (loading->sh->s && loading->sh->s[i].map) munmap((void *)loading->sh->s[i].map, loading->sh->s[i].map_len);
    free(loading->sh->s), free(loading->sh);
  }
  free(loading);
  loading = NULL;
}

void data_free(Data *d) {
  for (int i = 0; i < d->sh->n; i++) munmap((void *)d->sh->s[i].map, d->sh->s[i].map_len);
  free(d->sh->s), free(d->sh), free(d);
}

/* data.c: training data. A file is either an llm.c token shard (.bin:
 * 256 int32 header with magic 20240520, version 1, token count; then
 * uint16 tokens) or raw text, read as bytes (token = byte value). The
 * last val_fraction of the tokens is the validation split. A training
 * batch is B rows of T+1 tokens at offsets drawn from (seed, step, row),
 * so any step's batch can be made again, by any rank, after a resume. */
#include "lmrt.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static bool is_shard(const char *path) {
  size_t n = strlen(path);
  return n > 4 && !strcmp(path + n - 4, ".bin");
}

static unsigned char *slurp(const char *path, int64_t *len) {
  struct stat st;
  if (stat(path, &st) != 0)
    rt_die("cannot open data file '%s': %s", path, strerror(errno));
  if (!S_ISREG(st.st_mode)) rt_die("data file '%s' is not a regular file", path);
  FILE *f = fopen(path, "rb");
  if (!f) rt_die("cannot open data file '%s': %s", path, strerror(errno));
  unsigned char *buf = rt_xmalloc(st.st_size + 1);
  *len = (int64_t)fread(buf, 1, st.st_size, f);
  fclose(f);
  if (*len != st.st_size) rt_die("could not read all of data file '%s'", path);
  return buf;
}

static void load_shard(Data *d, const unsigned char *buf, int64_t len, int64_t vocab) {
  int32_t hdr[256];
  if (len < (int64_t)sizeof hdr)
    rt_die("data file '%s' is truncated: %lld bytes, shorter than the 1024-byte shard header",
           d->path, (long long)len);
  memcpy(hdr, buf, sizeof hdr);
  if (hdr[0] != 20240520) rt_die("data file '%s' is not a token shard (magic %d, want 20240520)", d->path, hdr[0]);
  if (hdr[1] != 1) rt_die("data file '%s': unsupported shard version %d", d->path, hdr[1]);
  int64_t n = hdr[2], have = (len - (int64_t)sizeof hdr) / 2;
  if (n < 0 || have < n)
    rt_die("data file '%s' is truncated: header says %lld tokens, file holds %lld",
           d->path, (long long)n, (long long)have);
  d->tok = rt_xmalloc(n * sizeof(int32_t));
  for (int64_t i = 0; i < n; i++) {
    uint16_t t;
    memcpy(&t, buf + sizeof hdr + 2 * i, 2);
    if (t >= vocab)
      rt_die("data file '%s': token %u at %lld is outside the model's vocab of %lld",
             d->path, t, (long long)i, (long long)vocab);
    d->tok[i] = t;
  }
  d->ntok = n;
}

static void load_text(Data *d, const unsigned char *buf, int64_t len, int64_t vocab) {
  if (vocab < 256)
    rt_die("data file '%s' is text (byte tokens 0..255) but the model's vocab is %lld; "
           "use a vocab of at least 256 or a .bin token shard", d->path, (long long)vocab);
  d->tok = rt_xmalloc((len + 1) * sizeof(int32_t));
  for (int64_t i = 0; i < len; i++) d->tok[i] = buf[i];
  d->ntok = len;
}

Data *data_load(const char *path, int64_t vocab, double val_fraction, int64_t need) {
  if (!path || !*path)
    rt_die("no data file: pass --data FILE (text or .bin shard) or set data in the train section");
  Data *d = rt_xmalloc(sizeof(Data));
  snprintf(d->path, sizeof d->path, "%s", path);
  int64_t len;
  unsigned char *buf = slurp(path, &len);
  if (len == 0) rt_die("data file '%s' is empty", path);
  if (is_shard(path)) load_shard(d, buf, len, vocab);
  else load_text(d, buf, len, vocab);
  free(buf);
  d->ntrain = (int64_t)(d->ntok * (1.0 - val_fraction));
  if (d->ntrain < need || d->ntok - d->ntrain < need)
    rt_die("data file '%s' has %lld tokens: too few for a batch row of %lld tokens in both the "
           "train split and the %.0f%% validation split", path, (long long)d->ntok,
           (long long)need, 100 * val_fraction);
  return d;
}

void data_free(Data *d) {
  free(d->tok);
  free(d);
}

void data_train_batch(Data *d, uint64_t seed, int64_t step, int64_t B, int64_t T, int32_t *rows) {
  int64_t span = d->ntrain - (T + 1) + 1;
  uint64_t key = rng_hash(seed, 0x64617461, (uint64_t)step);
  for (int64_t r = 0; r < B; r++) {
    int64_t off = (int64_t)(rng_hash(key, (uint64_t)r, 7) % (uint64_t)span);
    memcpy(rows + r * (T + 1), d->tok + off, (T + 1) * sizeof(int32_t));
  }
}

/* Validation batch i of n: rows evenly spaced over the validation split. */
void data_val_batch(Data *d, int64_t i, int64_t n, int64_t B, int64_t T, int32_t *rows) {
  int64_t nval = d->ntok - d->ntrain, span = nval - (T + 1) + 1;
  for (int64_t r = 0; r < B; r++) {
    int64_t k = i * B + r, off = (int64_t)((double)k / (double)(n * B) * span);
    memcpy(rows + r * (T + 1), d->tok + d->ntrain + off, (T + 1) * sizeof(int32_t));
  }
}

/* The data's identity for checkpoints: its token count and a hash of its
 * first and last 65,536 tokens (cheap on any size, and a different file or
 * tokenisation changes it). */
uint64_t data_hash(const Data *d) {
  int64_t k = d->ntok < 65536 ? d->ntok : 65536;
  uint64_t h = rt_fnv1a(&d->ntok, sizeof d->ntok, 0xcbf29ce484222325ULL);
  h = rt_fnv1a(d->tok, k * sizeof *d->tok, h);
  return rt_fnv1a(d->tok + d->ntok - k, k * sizeof *d->tok, h);
}

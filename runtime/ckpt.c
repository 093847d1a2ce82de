/* ckpt.c: checkpoints. One file per save:
 *   "LMCCKPT1", u32 header length, a text header (model, step, seed,
 *   dtype, every parameter's name and shape), then for each parameter its
 *   weights, Adam m and Adam v in the run's dtype, then a u64 FNV-1a
 *   checksum of all the bytes before it.
 * A save writes step_<N>.ckpt.tmp, fsyncs, renames it into place, fsyncs
 * the folder, then points the `latest` link at it the same way: a crash
 * at any moment leaves every earlier checkpoint intact. A load checks the
 * magic, the length, the checksum and that the parameters match the
 * bundle before it touches the run. */
#include "lmrt.h"
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAGIC "LMCCKPT1"

typedef struct Buf {
  unsigned char *p;
  size_t n, cap;
} Buf;

static void put(Buf *b, const void *src, size_t n) {
  if (b->n + n > b->cap) {
    b->cap = (b->n + n) * 2;
    b->p = realloc(b->p, b->cap);
    if (!b->p) rt_die("out of memory writing a checkpoint");
  }
  memcpy(b->p + b->n, src, n);
  b->n += n;
}

static void put_tensor(Buf *b, const double *x, int64_t n, bool f64) {
  if (f64) { put(b, x, n * sizeof(double)); return; }
  float *f = rt_xmalloc(n * sizeof(float));
  for (int64_t i = 0; i < n; i++) f[i] = (float)x[i];
  put(b, f, n * sizeof(float));
  free(f);
}

static char *header(Run *r, const CkptInfo *info) {
  Bundle *b = r->b;
  size_t cap = 256 + (size_t)b->nparams * 256, n = 0;
  char *h = rt_xmalloc(cap);
  n += snprintf(h + n, cap - n, "model %s\nstep %lld\nseed %llu\ndtype %s\nnparams %d\n",
                b->model, (long long)info->step, (unsigned long long)info->seed,
                r->be->elem == 8 ? "f64" : "f32", b->nparams);
  for (int p = 0; p < b->nparams; p++) {
    RtParam *pp = &b->params[p];
    n += snprintf(h + n, cap - n, "param %s %lld\n", pp->name, (long long)pp->numel);
  }
  snprintf(h + n, cap - n, "end\n");
  return h;
}

static void sync_dir(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY);
  if (fd >= 0) fsync(fd), close(fd);
}

static void write_atomic(const char *path, const Buf *b) {
  char tmp[1300];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) rt_die("cannot write checkpoint '%s': %s", tmp, strerror(errno));
  size_t done = 0;
  while (done < b->n) {
    ssize_t w = write(fd, b->p + done, b->n - done);
    if (w <= 0) {
      close(fd), unlink(tmp);
      rt_die("cannot write checkpoint '%s': %s", tmp, strerror(errno));
    }
    done += w;
  }
  if (fsync(fd) != 0 || close(fd) != 0 || rename(tmp, path) != 0) {
    unlink(tmp);
    rt_die("cannot write checkpoint '%s': %s", path, strerror(errno));
  }
}

static void link_latest(const char *dir, const char *name) {
  char tmp[1200], latest[1200];
  snprintf(tmp, sizeof tmp, "%s/latest.tmp", dir);
  snprintf(latest, sizeof latest, "%s/latest", dir);
  unlink(tmp);
  if (symlink(name, tmp) != 0 || rename(tmp, latest) != 0)
    rt_die("cannot update '%s': %s", latest, strerror(errno));
  sync_dir(dir);
}

void ckpt_save(Run *r, const char *dir, const CkptInfo *info) {
  if (mkdir(dir, 0777) != 0 && errno != EEXIST)
    rt_die("cannot create checkpoint folder '%s': %s", dir, strerror(errno));
  Bundle *b = r->b;
  bool f64 = r->be->elem == 8;
  Buf buf = {0};
  char *h = header(r, info);
  uint32_t hl = (uint32_t)strlen(h);
  put(&buf, MAGIC, 8), put(&buf, &hl, 4), put(&buf, h, hl);
  free(h);
  for (int p = 0; p < b->nparams; p++) {
    RtParam *pp = &b->params[p];
    double *x = rt_xmalloc(pp->numel * sizeof(double));
    int64_t off = b->vals[pp->value].off * r->be->elem;
    rt_get_param(r, p, x), put_tensor(&buf, x, pp->numel, f64);
    r->be->download(x, (char *)r->adam_m + off, pp->numel), put_tensor(&buf, x, pp->numel, f64);
    r->be->download(x, (char *)r->adam_v + off, pp->numel), put_tensor(&buf, x, pp->numel, f64);
    free(x);
  }
  uint64_t sum = rt_fnv1a(buf.p, buf.n, 0xcbf29ce484222325ULL);
  put(&buf, &sum, 8);
  char name[64], path[1200];
  snprintf(name, sizeof name, "step_%08lld.ckpt", (long long)info->step);
  snprintf(path, sizeof path, "%s/%s", dir, name);
  write_atomic(path, &buf);
  sync_dir(dir);
  link_latest(dir, name);
  free(buf.p);
}

/* ---- load ---- */

static const char *hline(const char *h, const char *key) {
  size_t n = strlen(key);
  for (const char *p = h; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
    if (!strncmp(p, key, n) && p[n] == ' ') return p + n + 1;
  return NULL;
}

static void check_params(Run *r, const char *path, const char *h) {
  Bundle *b = r->b;
  const char *np = hline(h, "nparams");
  if (!np || atoi(np) != b->nparams)
    rt_die("checkpoint '%s' has %d parameters, the bundle %d: it was saved from another model",
           path, np ? atoi(np) : -1, b->nparams);
  const char *p = strstr(h, "\nparam ");
  for (int i = 0; i < b->nparams; i++) {
    char name[128];
    long long numel;
    if (!p || sscanf(p, "\nparam %127s %lld", name, &numel) != 2)
      rt_die("checkpoint '%s' is corrupt: bad parameter list", path);
    RtParam *pp = &b->params[i];
    if (strcmp(name, pp->name) || numel != pp->numel)
      rt_die("checkpoint '%s' does not match the bundle: it has %s (%lld elements) where the "
             "bundle has %s (%lld elements)", path, name, numel, pp->name, (long long)pp->numel);
    p = strstr(p + 1, "\nparam ");
  }
}

static void get_tensor(const unsigned char **src, double *x, int64_t n, bool f64) {
  if (f64) memcpy(x, *src, n * sizeof(double));
  else
    for (int64_t i = 0; i < n; i++) {
      float f;
      memcpy(&f, *src + 4 * i, 4);
      x[i] = f;
    }
  *src += n * (f64 ? 8 : 4);
}

void ckpt_load(Run *r, const char *path, CkptInfo *info) {
  struct stat st;
  if (stat(path, &st) != 0) rt_die("cannot open checkpoint '%s': %s", path, strerror(errno));
  FILE *f = fopen(path, "rb");
  if (!f) rt_die("cannot open checkpoint '%s': %s", path, strerror(errno));
  size_t n = st.st_size;
  unsigned char *buf = rt_xmalloc(n + 1);
  if (fread(buf, 1, n, f) != n) rt_die("cannot read checkpoint '%s'", path);
  fclose(f);
  uint32_t hl;
  if (n < 20 || memcmp(buf, MAGIC, 8)) rt_die("'%s' is not an lmc checkpoint", path);
  memcpy(&hl, buf + 8, 4);
  uint64_t sum;
  memcpy(&sum, buf + n - 8, 8);
  if (hl > n - 20 || rt_fnv1a(buf, n - 8, 0xcbf29ce484222325ULL) != sum)
    rt_die("checkpoint '%s' is corrupt or truncated (checksum mismatch)", path);
  char *h = rt_xmalloc(hl + 1);
  memcpy(h, buf + 12, hl);
  const char *model = hline(h, "model"), *step = hline(h, "step"), *seed = hline(h, "seed");
  const char *dtype = hline(h, "dtype");
  if (!model || !step || !seed || !dtype) rt_die("checkpoint '%s' is corrupt: bad header", path);
  if (strncmp(model, r->b->model, strlen(r->b->model)) || model[strlen(r->b->model)] != '\n')
    rt_die("checkpoint '%s' was saved from another model than '%s'", path, r->b->model);
  check_params(r, path, h);
  bool f64 = !strncmp(dtype, "f64", 3);
  size_t need = 12 + hl + 8;
  for (int p = 0; p < r->b->nparams; p++) need += 3 * r->b->params[p].numel * (f64 ? 8 : 4);
  if (need != n) rt_die("checkpoint '%s' is corrupt: %zu bytes, expected %zu", path, n, need);
  const unsigned char *src = buf + 12 + hl;
  for (int p = 0; p < r->b->nparams; p++) {
    RtParam *pp = &r->b->params[p];
    double *x = rt_xmalloc(pp->numel * sizeof(double));
    int64_t off = r->b->vals[pp->value].off * r->be->elem;
    get_tensor(&src, x, pp->numel, f64), rt_set_param(r, p, x);
    get_tensor(&src, x, pp->numel, f64), r->be->upload((char *)r->adam_m + off, x, pp->numel);
    get_tensor(&src, x, pp->numel, f64), r->be->upload((char *)r->adam_v + off, x, pp->numel);
    free(x);
  }
  info->step = atoll(step);
  info->seed = strtoull(seed, NULL, 10);
  r->step = info->step;
  free(h), free(buf);
}

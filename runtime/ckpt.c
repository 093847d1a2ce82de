/* ckpt.c: checkpoints. A checkpoint is a folder, step_<N>/, of shards:
 * rank<R>.ckpt from each rank that holds a distinct part of the model (the
 * data parallel rank 0 of each pipeline stage). A shard is
 *   "LMCCKPT1", u32 header length, a text header (model, step, seed,
 *   dtype, the name and size of each parameter in it), then for each
 *   parameter its weights, Adam m and Adam v in the run's dtype, then a u64
 *   FNV-1a checksum of all the bytes before it.
 * Parameters are whole tensors named as in the spec, so a checkpoint loads
 * into any layout: each rank reads every shard and takes what it holds.
 * A save writes step_<N>.tmp/, fsyncs every shard, and only when all ranks
 * are done renames it to step_<N>/ and points `latest` at it: a crash at
 * any moment leaves every earlier checkpoint intact. A load checks each
 * shard's magic, length and checksum and that the parameters match the
 * bundle before it touches the run. */
#include "lmrt.h"
#include <dirent.h>
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
  int held = 0;
  for (int p = 0; p < b->nparams; p++) held += b->params[p].value >= 0;
  n += snprintf(h + n, cap - n, "model %s\nstep %lld\nseed %llu\ndtype %s\nnparams %d\n",
                b->model, (long long)info->step, (unsigned long long)info->seed,
                r->be->elem == 8 ? "f64" : "f32", held);
  for (int p = 0; p < b->nparams; p++) {
    RtParam *pp = &b->params[p];
    if (pp->value >= 0) n += snprintf(h + n, cap - n, "param %s %lld\n", pp->name, (long long)pp->numel);
  }
  snprintf(h + n, cap - n, "end\n");
  return h;
}

static void sync_dir(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY);
  if (fd >= 0) fsync(fd), close(fd);
}

static void write_all(const char *path, const Buf *b) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) rt_die("cannot write checkpoint '%s': %s", path, strerror(errno));
  size_t done = 0;
  while (done < b->n) {
    ssize_t w = write(fd, b->p + done, b->n - done);
    if (w <= 0) {
      close(fd), unlink(path);
      rt_die("cannot write checkpoint '%s': %s", path, strerror(errno));
    }
    done += w;
  }
  if (fsync(fd) != 0 || close(fd) != 0) rt_die("cannot write checkpoint '%s': %s", path, strerror(errno));
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

static void shard(Run *r, const CkptInfo *info, Buf *buf) {
  Bundle *b = r->b;
  bool f64 = r->be->elem == 8;
  char *h = header(r, info);
  uint32_t hl = (uint32_t)strlen(h);
  put(buf, MAGIC, 8), put(buf, &hl, 4), put(buf, h, hl);
  free(h);
  for (int p = 0; p < b->nparams; p++) {
    RtParam *pp = &b->params[p];
    if (pp->value < 0) continue;
    double *x = rt_xmalloc(pp->numel * sizeof(double));
    int64_t off = b->vals[pp->value].off * r->be->elem;
    rt_get_param(r, p, x), put_tensor(buf, x, pp->numel, f64);
    r->be->download(x, (char *)r->adam_m + off, pp->numel), put_tensor(buf, x, pp->numel, f64);
    r->be->download(x, (char *)r->adam_v + off, pp->numel), put_tensor(buf, x, pp->numel, f64);
    free(x);
  }
  uint64_t sum = rt_fnv1a(buf->p, buf->n, 0xcbf29ce484222325ULL);
  put(buf, &sum, 8);
}

/* Called on every rank. */
void ckpt_save(Run *r, const char *dir, const CkptInfo *info) {
  Bundle *b = r->b;
  char name[64], tmp[1200], final[1200], path[1300];
  snprintf(name, sizeof name, "step_%08lld", (long long)info->step);
  snprintf(tmp, sizeof tmp, "%s/%s.tmp", dir, name);
  snprintf(final, sizeof final, "%s/%s", dir, name);
  if (b->rank == 0) {
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
      rt_die("cannot create checkpoint folder '%s': %s", dir, strerror(errno));
    if (mkdir(tmp, 0777) != 0 && errno != EEXIST)
      rt_die("cannot create checkpoint folder '%s': %s", tmp, strerror(errno));
  }
  comm_barrier();
  if (b->coord[AXIS_DP] == 0) {          /* data parallel copies are identical */
    Buf buf = {0};
    shard(r, info, &buf);
    snprintf(path, sizeof path, "%s/rank%d.ckpt", tmp, b->rank);
    write_all(path, &buf);
    free(buf.p);
  }
  comm_barrier();
  if (b->rank == 0) {
    sync_dir(tmp);
    if (rename(tmp, final) != 0) rt_die("cannot rename '%s': %s", tmp, strerror(errno));
    sync_dir(dir);
    link_latest(dir, name);
  }
  comm_barrier();
}

/* ---- load ---- */

static const char *hline(const char *h, const char *key) {
  size_t n = strlen(key);
  for (const char *p = h; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
    if (!strncmp(p, key, n) && p[n] == ' ') return p + n + 1;
  return NULL;
}

static void get_tensor(const unsigned char *src, double *x, int64_t n, bool f64) {
  if (f64) memcpy(x, src, n * sizeof(double));
  else
    for (int64_t i = 0; i < n; i++) {
      float f;
      memcpy(&f, src + 4 * i, 4);
      x[i] = f;
    }
}

static unsigned char *read_shard(const char *path, size_t *len, char **hdr) {
  struct stat st;
  if (stat(path, &st) != 0) rt_die("cannot open checkpoint '%s': %s", path, strerror(errno));
  FILE *f = fopen(path, "rb");
  if (!f) rt_die("cannot open checkpoint '%s': %s", path, strerror(errno));
  size_t n = st.st_size;
  unsigned char *buf = rt_xmalloc(n + 1);
  if (fread(buf, 1, n, f) != n) rt_die("cannot read checkpoint '%s'", path);
  fclose(f);
  uint32_t hl;
  if (n < 20 || memcmp(buf, MAGIC, 8)) rt_die("'%s' is not an lmc checkpoint shard", path);
  memcpy(&hl, buf + 8, 4);
  uint64_t sum;
  memcpy(&sum, buf + n - 8, 8);
  if (hl > n - 20 || rt_fnv1a(buf, n - 8, 0xcbf29ce484222325ULL) != sum)
    rt_die("checkpoint '%s' is corrupt or truncated (checksum mismatch)", path);
  *hdr = rt_xmalloc(hl + 1);
  memcpy(*hdr, buf + 12, hl);
  *len = n;
  return buf;
}

/* Loads from one shard the parameters this rank holds; counts them. */
static int load_shard(Run *r, const char *path, CkptInfo *info, bool first) {
  size_t n;
  char *h;
  unsigned char *buf = read_shard(path, &n, &h);
  Bundle *b = r->b;
  const char *model = hline(h, "model"), *step = hline(h, "step"), *seed = hline(h, "seed");
  const char *dtype = hline(h, "dtype");
  if (!model || !step || !seed || !dtype) rt_die("checkpoint '%s' is corrupt: bad header", path);
  if (strncmp(model, b->model, strlen(b->model)) || model[strlen(b->model)] != '\n')
    rt_die("checkpoint '%s' was saved from another model than '%s'", path, b->model);
  if (first) info->step = atoll(step), info->seed = strtoull(seed, NULL, 10);
  else if (atoll(step) != info->step) rt_die("checkpoint '%s' mixes shards of different steps", path);
  int esz = !strncmp(dtype, "f64", 3) ? 8 : 4, found = 0;
  size_t off = 12 + strlen(h);
  for (const char *p = strstr(h, "\nparam "); p; p = strstr(p + 1, "\nparam ")) {
    char name[128];
    long long numel;
    if (sscanf(p, "\nparam %127s %lld", name, &numel) != 2 || numel <= 0)
      rt_die("checkpoint '%s' is corrupt: bad parameter list", path);
    if (off + 3 * numel * esz > n - 8) rt_die("checkpoint '%s' is corrupt: too short", path);
    int k = -1;
    for (int i = 0; i < b->nparams; i++)
      if (!strcmp(b->params[i].name, name)) k = i;
    if (k < 0) rt_die("checkpoint '%s' does not match the bundle: it has parameter %s, which the model does not", path, name);
    RtParam *pp = &b->params[k];
    if (numel != pp->numel)
      rt_die("checkpoint '%s' does not match the bundle: it has %s (%lld elements) where the bundle has %s "
             "(%lld elements)", path, name, numel, pp->name, (long long)pp->numel);
    if (pp->value >= 0) {
      double *x = rt_xmalloc(numel * sizeof(double));
      int64_t o = b->vals[pp->value].off * r->be->elem;
      get_tensor(buf + off, x, numel, esz == 8), rt_set_param(r, k, x);
      get_tensor(buf + off + numel * esz, x, numel, esz == 8), r->be->upload((char *)r->adam_m + o, x, numel);
      get_tensor(buf + off + 2 * numel * esz, x, numel, esz == 8), r->be->upload((char *)r->adam_v + o, x, numel);
      free(x);
      found++;
    }
    off += 3 * numel * esz;
  }
  if (off != n - 8) rt_die("checkpoint '%s' is corrupt: %zu bytes, expected %zu", path, n, off + 8);
  free(h), free(buf);
  return found;
}

static int by_name(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

void ckpt_load(Run *r, const char *path, CkptInfo *info) {
  DIR *d = opendir(path);
  if (!d) {
    struct stat st;
    if (stat(path, &st) != 0) rt_die("cannot open checkpoint '%s': %s", path, strerror(errno));
    rt_die("'%s' is not an lmc checkpoint (a step_N folder of rank*.ckpt shards)", path);
  }
  char **names = NULL;
  int n = 0;
  for (struct dirent *e; (e = readdir(d));) {
    size_t l = strlen(e->d_name);
    if (l > 5 && !strcmp(e->d_name + l - 5, ".ckpt")) {
      names = realloc(names, (n + 1) * sizeof(char *));
      names[n] = rt_xmalloc(strlen(path) + l + 2);
      sprintf(names[n++], "%s/%s", path, e->d_name);
    }
  }
  closedir(d);
  if (n == 0) rt_die("checkpoint '%s' holds no shards", path);
  qsort(names, n, sizeof(char *), by_name);
  int found = 0, held = 0;
  for (int i = 0; i < n; i++) found += load_shard(r, names[i], info, i == 0), free(names[i]);
  free(names);
  for (int p = 0; p < r->b->nparams; p++) held += r->b->params[p].value >= 0;
  if (found != held)
    rt_die("checkpoint '%s' does not hold all of this rank's %d parameters (found %d)", path, held, found);
  r->step = info->step;
}

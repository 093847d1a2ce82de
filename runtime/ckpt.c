/* ckpt.c: checkpoints. A checkpoint is a folder, step_<N>/, of shards:
 * rank<R>.ckpt from each rank that holds a distinct part of the model (the
 * data parallel rank 0 of each pipeline stage). A shard is
 *   "LMCCKPT2", u32 header length, a text header (model, step, seed,
 *   dtype, the name and size of each parameter in it), then for each
 *   parameter its weights, Adam m and Adam v in the run's dtype, then a u64
 *   checksum of all the bytes before it: their CRC-32 (format 1,
 *   "LMCCKPT1", read as well: FNV-1a, 5x slower to check).
 * Parameters are whole tensors named as in the spec, so a checkpoint loads
 * into any layout: each rank reads every shard and takes what it holds.
 * A save copies each rank's shard to host memory between two steps, then a
 * thread checksums, writes and fsyncs it as step_<N>.tmp/rank<R>.ckpt
 * while training goes on; once all ranks are done (asked after each
 * step) it is renamed to step_<N>/ and `latest` points at it: a crash at
 * any moment leaves every earlier checkpoint intact. A load checks each
 * shard's magic, length and checksum and that the parameters match the
 * bundle before it touches the run. */
#include "lmrt.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define MAGIC "LMCCKPT2"    /* what a save writes: its last 8 bytes the CRC-32 (zlib's) of all before */
#define MAGIC1 "LMCCKPT1"   /* read as well: the last 8 bytes FNV-1a's, byte by byte (0.85 GB/s here) */
#define CRC_CHUNK ((size_t)64 << 20)

/* The CRC-32 of n bytes: 64 MiB chunks on every core (threads: a load;
 * the writer's thread runs alone), combined in order. */
static uint64_t crc_of(const unsigned char *p, size_t n, bool threads) {
  if (!threads) return crc32_z(0, p, n);
  size_t chunks = (n + CRC_CHUNK - 1) / CRC_CHUNK;
  uLong *c = rt_xmalloc((chunks + 1) * sizeof *c), sum = 0;
  #pragma omp parallel for schedule(dynamic, 1)
  for (size_t i = 0; i < chunks; i++) c[i] = crc32_z(0, p + i * CRC_CHUNK, i + 1 < chunks ? CRC_CHUNK : n - i * CRC_CHUNK);
  for (size_t i = 0; i < chunks; i++) sum = crc32_combine(sum, c[i], i + 1 < chunks ? CRC_CHUNK : n - i * CRC_CHUNK);
  free(c);
  return sum;
}

uint64_t ckpt_checksum(const unsigned char *shard, size_t n) {
  return !memcmp(shard, MAGIC1, 8) ? rt_fnv1a(shard, n - 8, 0xcbf29ce484222325ULL) : crc_of(shard, n - 8, true);
}

typedef struct Buf {
  unsigned char *p;
  size_t n, cap;
} Buf;

static void put(Buf *b, const void *src, size_t n) {
  if (b->n + n > b->cap) rt_die("internal error: a checkpoint shard outgrew its %zu bytes", b->cap);
  memcpy(b->p + b->n, src, n);
  b->n += n;
}

/* This rank writes its part of p: the tp parts of a split parameter, or
 * a whole one if it is tp rank 0; the ep parts of an expert weight, or
 * any other parameter if it is ep rank 0; a stage holding a copy of
 * another stage's parameter writes nothing of it. */
static bool writes(Bundle *b, RtParam *p) {
  return p->value >= 0 && !p->copy && (p->split >= 0 || b->coord[1] == 0) && (p->esplit || b->coord[3] == 0);
}

static char *header(Run *r, const CkptInfo *info) {
  Bundle *b = r->b;
  size_t cap = 256 + (size_t)b->nparams * 256, n = 0;
  char *h = rt_xmalloc(cap);
  int held = 0;
  for (int p = 0; p < b->nparams; p++) held += writes(b, &b->params[p]);
  n += snprintf(h + n, cap - n, "model %s\nstep %lld\nseed %llu\ndtype %s\nnparams %d\n",
                b->model, (long long)info->step, (unsigned long long)info->seed,
                r->be->elem == 8 ? "f64" : "f32", held);
  if (info->data_ntok > 0)
    n += snprintf(h + n, cap - n, "data %lld %016llx %s\n", (long long)info->data_ntok,
                  (unsigned long long)info->data_hash, info->data);
  for (int p = 0; p < b->nparams; p++) {
    RtParam *pp = &b->params[p];
    if (!writes(b, pp)) continue;
    n += snprintf(h + n, cap - n, "param %s %lld split=%d part=%d parts=%d shape=", pp->name,
                  (long long)pp->local, pp->split, pp->split >= 0 ? b->coord[1] : 0,
                  pp->split >= 0 ? b->mesh[1] : 1);
    for (int d = 0; d < pp->rank; d++) n += snprintf(h + n, cap - n, "%s%lld", d ? "x" : "", (long long)pp->shape[d]);
    if (pp->esplit) n += snprintf(h + n, cap - n, " experts=%d/%d", b->coord[3], b->mesh[3]);   /* dim 0's part */
    n += snprintf(h + n, cap - n, "\n");
  }
  snprintf(h + n, cap - n, "end\n");
  return h;
}

static void sync_dir(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY);
  if (fd >= 0) fsync(fd), close(fd);
}

/* Writes and syncs path; 0, or the errno of what failed, with the file
 * removed (the writer thread's part of a save: it ends nothing). */
static int write_file(const char *path, const Buf *b) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644), e = 0;
  if (fd < 0) return errno;
  for (size_t done = 0; done < b->n && !e;) {
    ssize_t w = write(fd, b->p + done, b->n - done);
    if (w <= 0) e = w == 0 ? ENOSPC : errno;
    else done += w;
  }
  if (!e && fsync(fd) != 0) e = errno;
  if (close(fd) != 0 && !e) e = errno;
  if (e) unlink(path);
  return e;
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

/* The save in flight (one at most): this rank's shard, copied while
 * training waited, checksummed, written and synced by a thread while it
 * goes on; ckpt_settle puts it in place. */
static struct {
  bool on, writes, thread;   /* a save started; this rank writes a shard of it; by a thread, not yet joined */
  pthread_t th;
  atomic_bool done;          /* the thread's work is over */
  int err;                   /* its errno (0: written and synced) */
  Buf buf;
  int64_t step;
  char dir[1100], name[64], tmp[1200], path[1300];
  double copy_s, write_s;
  double slow;               /* $LMC_CKPT_SLOW_DISK: seconds each write waits first, as on a slow disk (tests) */
  unsigned char *kept;       /* the shards' host memory, kept from save to save (ckpt_release frees it) */
  size_t kept_cap;
  const Backend *be;         /* whose pin registers kept with the device */
  bool pinned;               /* kept is (the copies from a GPU run at the bus's speed) */
  pthread_t toucher;         /* ckpt_reserve's thread, making kept before the first save */
  bool touching;
} sv;

/* The bytes of this rank's shard: its parameters' weights and moments, a
 * header of hl bytes, the magic, its length and the checksum. */
static size_t shard_bytes(Run *r, size_t hl) {
  size_t n = 8 + 4 + hl + 8;
  for (int p = 0; p < r->b->nparams; p++)
    if (writes(r->b, &r->b->params[p])) n += 3 * (size_t)r->b->params[p].local * r->be->elem;
  return n;
}

/* The saves' threads run on the cores training leaves idle, alone (on
 * the CPU backend, a writer beside training's OpenMP threads made each
 * step 4x slower while it ran). */
static void idle_only(void) {
  struct sched_param none = {0};
  pthread_setschedparam(pthread_self(), SCHED_IDLE, &none);
}

/* kept made for n bytes, on whole pages (pinned pages are the buffer's
 * alone), and pinned where the backend can (not yet: keep_pin) */
static bool keep(size_t n) {
  void *p;
  if (posix_memalign(&p, 4096, (n + 4095) / 4096 * 4096)) return false;
  sv.kept = p, sv.kept_cap = n;
  return true;
}

static void keep_pin(void) {
  sv.pinned = sv.be->pin && sv.be->pin(sv.kept, sv.kept_cap, true);
}

static void unkeep(void) {
  if (sv.pinned) sv.be->pin(sv.kept, sv.kept_cap, false), sv.pinned = false;
  free(sv.kept), sv.kept = NULL, sv.kept_cap = 0;
}

static void *touch(void *arg) {
  idle_only();
  for (size_t i = 0; i < sv.kept_cap; i += 4096) sv.kept[i] = 0;
  keep_pin();
  return arg;
}

/* The first save's host memory made and touched by a thread while the
 * first steps run (first touches of GPT-2's 1.4 GiB took 2 to 5 s of the
 * first save's pause on this project's VM), then pinned on a GPU: the
 * copies of every save run at the bus's speed (llama-large's 8.3 GB
 * through pageable memory took about a second, estimated). */
void ckpt_reserve(Run *r) {
  sv.be = r->be;
  if (sv.kept || r->b->coord[AXIS_DP] != 0) return;
  CkptInfo big = {.step = INT64_MAX, .seed = UINT64_MAX, .data_ntok = INT64_MAX};
  memset(big.data, 'x', sizeof big.data - 1);
  char *h = header(r, &big);
  size_t n = shard_bytes(r, strlen(h));
  free(h);
  if (!keep(n)) return;   /* the save asks again, and says so if it cannot */
  sv.touching = pthread_create(&sv.toucher, NULL, touch, NULL) == 0;
}

static void touched(void) {
  if (sv.touching) pthread_join(sv.toucher, NULL), sv.touching = false;
}

/* This rank's shard in host memory, its checksum's 8 bytes left for the
 * writer: the backend's reals copied as they are (the file's dtype is
 * theirs), into one buffer sized up front. */
static void shard(Run *r, const CkptInfo *info, Buf *buf) {
  Bundle *b = r->b;
  int elem = r->be->elem;
  char *h = header(r, info);
  uint32_t hl = (uint32_t)strlen(h);
  buf->cap = shard_bytes(r, hl);
  touched();
  sv.be = r->be;
  if (buf->cap > sv.kept_cap) {   /* the host memory of an earlier save is kept: first touches cost */
    unkeep();
    if (!keep(buf->cap)) rt_die("out of memory writing a checkpoint (%zu bytes)", buf->cap);
    keep_pin();
  }
  buf->p = sv.kept, buf->n = 0;
  put(buf, MAGIC, 8), put(buf, &hl, 4), put(buf, h, hl);
  free(h);
  for (int p = 0; p < b->nparams; p++) {
    RtParam *pp = &b->params[p];
    if (!writes(b, pp)) continue;
    int64_t off = b->vals[pp->value].off * elem, bytes = pp->local * elem;
    const void *src[3] = {r->ptr[pp->value], (char *)r->adam_m + off, (char *)r->adam_v + off};
    for (int k = 0; k < 3; k++) r->be->read(buf->p + buf->n, src[k], pp->local), buf->n += bytes;
  }
  buf->n += 8;
}

/* Removes a checkpoint folder: its files, then itself. */
static void remove_dir(const char *path) {
  DIR *d = opendir(path);
  if (!d) return;
  char f[1500];
  for (struct dirent *e; (e = readdir(d));)
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
      snprintf(f, sizeof f, "%s/%s", path, e->d_name), unlink(f);
  closedir(d);
  rmdir(path);
}

/* Puts the finished tmp folder in place of final; an older save of the
 * same step is moved aside first and removed only once the new one is in. */
static void install(const char *tmp, const char *final) {
  char old[1300];
  snprintf(old, sizeof old, "%s.replaced", final);
  struct stat st;
  bool had = stat(final, &st) == 0;
  if (had) remove_dir(old);
  if ((had && rename(final, old) != 0) || rename(tmp, final) != 0)
    rt_die("cannot rename '%s' to '%s': %s", tmp, final, strerror(errno));
  if (had) remove_dir(old);
}

static void *write_shard(void *arg) {
  (void)arg;
  idle_only();
  double t = rt_now();
  if (sv.slow > 0) usleep((useconds_t)(sv.slow * 1e6));
  uint64_t sum = crc_of(sv.buf.p, sv.buf.n - 8, false);
  memcpy(sv.buf.p + sv.buf.n - 8, &sum, 8);
  sv.err = write_file(sv.path, &sv.buf);
  sv.write_s = rt_now() - t;
  atomic_store(&sv.done, true);
  return NULL;
}

/* Rank 0, once every shard is down: the save's folder renamed to
 * step_<N>/ and `latest` moved to it; returns its path. */
static const char *put_in_place(void) {
  static char final[1200];
  snprintf(final, sizeof final, "%s/%s", sv.dir, sv.name);
  sync_dir(sv.tmp);
  install(sv.tmp, final);
  sync_dir(sv.dir);
  link_latest(sv.dir, sv.name);
  return final;
}

/* This rank's write, joined when over (or waited for): whether it is. */
static bool written(bool wait) {
  if (sv.thread && (wait || atomic_load(&sv.done))) pthread_join(sv.th, NULL), sv.thread = false;
  return !sv.thread;
}

/* An error ends the run: a one-rank run still puts a save in flight in
 * place first, since that needs no other rank (rt_die's hook). */
static void settle_alone(void) {
  if (!sv.on || !sv.writes || comm_world() > 1) return;
  written(true);
  sv.on = false;   /* (an error putting it in place ends the run without coming back here) */
  if (sv.err) return;
  fprintf(stderr, "lmrun: the checkpoint of step %lld was written before the error: %s\n", (long long)sv.step,
          put_in_place());
}

/* Called on every rank, with no save in flight (ckpt_settle waits). */
void ckpt_save(Run *r, const char *dir, const CkptInfo *info) {
  Bundle *b = r->b;
  double t = rt_now();
  if (sv.on) rt_die("internal error: a checkpoint save began with another in flight");
  const char *slow = getenv("LMC_CKPT_SLOW_DISK");
  char *end = NULL;
  sv.slow = slow && *slow ? strtod(slow, &end) : 0;
  if (slow && *slow && (*end || !(sv.slow >= 0 && sv.slow <= 600)))
    rt_die("LMC_CKPT_SLOW_DISK=%s: it takes seconds from 0 to 600 (each checkpoint write waits that long first)", slow);
  snprintf(sv.dir, sizeof sv.dir, "%s", dir);
  snprintf(sv.name, sizeof sv.name, "step_%08lld", (long long)info->step);
  snprintf(sv.tmp, sizeof sv.tmp, "%s/%s.tmp", dir, sv.name);
  if (b->rank == 0) {
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
      rt_die("cannot create checkpoint folder '%s': %s", dir, strerror(errno));
    remove_dir(sv.tmp);                   /* left by a save that crashed */
    if (mkdir(sv.tmp, 0777) != 0)
      rt_die("cannot create checkpoint folder '%s': %s", sv.tmp, strerror(errno));
  }
  comm_barrier();
  rt_die_first = settle_alone;
  sv.on = true, sv.step = info->step, sv.err = 0, sv.write_s = 0, sv.buf = (Buf){0};
  sv.writes = b->coord[AXIS_DP] == 0;    /* data parallel copies are identical; ep ranks write their experts */
  atomic_store(&sv.done, !sv.writes);
  if (!sv.writes) return;
  snprintf(sv.path, sizeof sv.path, "%s/rank%d.ckpt", sv.tmp, b->rank);
  shard(r, info, &sv.buf);
  sv.copy_s = rt_now() - t;
  sv.thread = pthread_create(&sv.th, NULL, write_shard, NULL) == 0;
  if (!sv.thread) write_shard(NULL);     /* no thread to be had: written here */
}

int64_t ckpt_settle(Run *r, bool wait, CkptTimes *t) {
  if (!sv.on) return 0;
  bool mine = written(wait);
  if (mine && sv.err) {                  /* its file is gone; the folder too, when empty */
    sv.on = false, rmdir(sv.tmp);
    rt_die("cannot write checkpoint '%s': %s", sv.path, strerror(sv.err));
  }
  if (!comm_all(mine)) return 0;         /* the same verdict on every rank */
  if (r->b->rank == 0) put_in_place();
  comm_barrier();
  if (t) *t = (CkptTimes){sv.copy_s, sv.write_s, (double)sv.buf.n};
  sv.buf = (Buf){0}, sv.on = false;
  return sv.step;
}

void ckpt_release(void) {
  touched();
  if (!sv.on) unkeep();
}

/* Removes every step_<N> folder of dir but the newest keep. */
void ckpt_prune(const char *dir, int64_t keep) {
  DIR *d = opendir(dir);
  if (!d || keep <= 0) {
    if (d) closedir(d);
    return;
  }
  int64_t *steps = NULL;
  int n = 0;
  for (struct dirent *e; (e = readdir(d));) {
    long long st;
    char rest;
    if (sscanf(e->d_name, "step_%lld%c", &st, &rest) == 1) {
      steps = realloc(steps, (n + 1) * sizeof *steps);
      steps[n++] = st;
    }
  }
  closedir(d);
  for (int i = 0; i < n; i++) {   /* remove those with keep or more newer ones */
    int newer = 0;
    for (int j = 0; j < n; j++) newer += steps[j] > steps[i];
    if (newer >= keep) {
      char path[1300];
      snprintf(path, sizeof path, "%s/step_%08lld", dir, (long long)steps[i]);
      remove_dir(path);
    }
  }
  free(steps);
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

/* A piece of a parameter in a shard: part `part` of `parts` along dim
 * `split` (-1: the whole tensor), weights then Adam m and v. */
typedef struct Piece {
  char name[128];
  int split, part, parts, esz;
  int epart, eparts;       /* an expert weight's part of dim 0 (of 1 when whole) */
  int64_t n;
  const unsigned char *data;
} Piece;

typedef struct Shards {
  unsigned char **bufs;    /* each shard's file, mapped */
  size_t *lens;
  int nbufs;
  Piece *pieces;
  int npieces;
} Shards;

/* What a load holds while it runs, so that a caller that recovers from its
 * error (the fuzz target; lmrun exits) can free it: ckpt_abandon. */
static struct {
  char **names;
  int nnames;
  Shards sh;
  unsigned char *buf;      /* a shard mapped, of len bytes, not yet in sh */
  size_t len;
  char *hdr;
  double *whole, *piece;
  FILE *f;
} pending;

void ckpt_abandon(void) {
  for (int i = 0; i < pending.nnames; i++) free(pending.names[i]);
  for (int i = 0; i < pending.sh.nbufs; i++) munmap(pending.sh.bufs[i], pending.sh.lens[i]);
  if (pending.buf) munmap(pending.buf, pending.len);
  free(pending.names), free(pending.sh.bufs), free(pending.sh.lens), free(pending.sh.pieces), free(pending.hdr);
  free(pending.whole), free(pending.piece);
  if (pending.f) fclose(pending.f);
  memset(&pending, 0, sizeof pending);
}

static unsigned char *read_shard(const char *path, size_t *len, char **hdr) {
  struct stat st;
  if (stat(path, &st) != 0) rt_die("cannot open checkpoint '%s': %s", path, strerror(errno));
  FILE *f = fopen(path, "rb");
  if (!f) rt_die("cannot open checkpoint '%s': %s", path, strerror(errno));
  size_t n = st.st_size;
  pending.f = f;
  if (n < 20) rt_die("'%s' is not an lmc checkpoint shard", path);
  /* mapped, not read: no copy of its bytes, nor zeros first (GPT-2's 1.4
   * GiB: 6.8 s of a 15.8 s resume here went to calloc and fread) */
  unsigned char *buf = mmap(NULL, n, PROT_READ, MAP_PRIVATE, fileno(f), 0);
  if (buf == MAP_FAILED) rt_die("cannot read checkpoint '%s': %s", path, strerror(errno));
  pending.buf = buf, pending.len = n;
  fclose(f), pending.f = NULL;
  uint32_t hl;
  if (memcmp(buf, MAGIC, 8) && memcmp(buf, MAGIC1, 8)) rt_die("'%s' is not an lmc checkpoint shard", path);
  memcpy(&hl, buf + 8, 4);
  uint64_t sum;
  memcpy(&sum, buf + n - 8, 8);
  if (hl > n - 20 || ckpt_checksum(buf, n) != sum)
    rt_die("checkpoint '%s' is corrupt or truncated (checksum mismatch)", path);
  *hdr = pending.hdr = rt_xmalloc(hl + 1);
  memcpy(*hdr, buf + 12, hl);
  *len = n;
  return buf;
}

static void read_pieces(Run *r, const char *path, Shards *sh, CkptInfo *info, bool first) {
  size_t n;
  char *h;
  unsigned char *buf = read_shard(path, &n, &h);
  Bundle *b = r->b;
  sh->bufs = realloc(sh->bufs, (sh->nbufs + 1) * sizeof(*sh->bufs));
  sh->lens = realloc(sh->lens, (sh->nbufs + 1) * sizeof(*sh->lens));
  if (!sh->bufs || !sh->lens) rt_die("out of memory");
  sh->lens[sh->nbufs] = n, sh->bufs[sh->nbufs++] = buf, pending.buf = NULL;
  const char *model = hline(h, "model"), *step = hline(h, "step"), *seed = hline(h, "seed");
  const char *dtype = hline(h, "dtype");
  if (!model || !step || !seed || !dtype) rt_die("checkpoint '%s' is corrupt: bad header", path);
  if (strncmp(model, b->model, strlen(b->model)) || model[strlen(b->model)] != '\n')
    rt_die("checkpoint '%s' was saved from another model than '%s'", path, b->model);
  char *end;
  long long st = strtoll(step, &end, 10);
  unsigned long long sd = strtoull(seed, NULL, 10);
  if (end == step || *end != '\n' || st < 0 || st > (long long)1e15 || (strncmp(dtype, "f32\n", 4) && strncmp(dtype, "f64\n", 4)))
    rt_die("checkpoint '%s' is corrupt: bad step or dtype in its header", path);
  if (first) {
    info->step = st, info->seed = sd, info->data_ntok = 0;
    const char *data = hline(h, "data");
    long long ntok;
    unsigned long long dh;
    int used = 0;
    if (data && sscanf(data, "%lld %llx %n", &ntok, &dh, &used) == 2 && used > 0) {
      info->data_ntok = ntok, info->data_hash = dh;
      snprintf(info->data, sizeof info->data, "%.*s", (int)strcspn(data + used, "\n"), data + used);
    }
  }
  else if (st != info->step) rt_die("checkpoint '%s' mixes shards of different steps", path);
  int esz = !strncmp(dtype, "f64", 3) ? 8 : 4;
  if (first && esz != r->be->elem)
    fprintf(stderr, "lmrun: note: checkpoint '%s' holds %s values; continuing in %s\n", path, esz == 8 ? "f64" : "f32",
            r->be->elem == 8 ? "f64" : "f32");
  size_t off = 12 + strlen(h);
  if (off + 8 > n) rt_die("checkpoint '%s' is corrupt: too short", path);
  for (const char *p = strstr(h, "\nparam "); p; p = strstr(p + 1, "\nparam ")) {
    Piece pc = {.esz = esz};
    long long numel;
    if (sscanf(p, "\nparam %127s %lld split=%d part=%d parts=%d", pc.name, &numel, &pc.split, &pc.part,
               &pc.parts) != 5 || numel <= 0 || pc.parts < 1 || pc.parts > 4096 || pc.part < 0 ||
        pc.part >= pc.parts || pc.split < -1 || pc.split >= 6)
      rt_die("checkpoint '%s' is corrupt: bad parameter list", path);
    const char *eol = strchr(p + 1, '\n'), *ex = strstr(p + 1, " experts=");
    pc.epart = 0, pc.eparts = 1;
    if (ex && (!eol || ex < eol) &&
        (sscanf(ex, " experts=%d/%d", &pc.epart, &pc.eparts) != 2 || pc.eparts < 1 || pc.eparts > 4096 ||
         pc.epart < 0 || pc.epart >= pc.eparts || pc.split == 0))
      rt_die("checkpoint '%s' is corrupt: bad parameter list", path);
    pc.n = numel;
    if ((size_t)numel > (n - 8 - off) / (3 * (size_t)esz)) rt_die("checkpoint '%s' is corrupt: too short", path);
    pc.data = buf + off;
    off += 3 * numel * esz;
    sh->pieces = realloc(sh->pieces, (sh->npieces + 1) * sizeof(Piece));
    sh->pieces[sh->npieces++] = pc;
  }
  if (off != n - 8) rt_die("checkpoint '%s' is corrupt: %zu bytes, expected %zu", path, n, off + 8);
  free(h), pending.hdr = NULL;
}

/* Copies between a whole tensor (shape, rank) and its part `part` of
 * `parts` along dim `split`, within part `epart` of `eparts` of dim 0 (an
 * expert weight's, split by ep); to_whole picks the direction. */
static void copy_part(double *whole, double *piece, const int64_t *shape, int rank, int split,
                      int part, int parts, int epart, int eparts, bool to_whole) {
  int64_t sub[6], numel = 1;
  for (int d = 0; d < rank; d++) sub[d] = shape[d], numel *= shape[d];
  whole += epart * (numel / eparts), sub[0] /= eparts, shape = sub;   /* the experts' block is contiguous */
  if (split < 0) split = 0, parts = 1, part = 0;
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < split; d++) outer *= shape[d];
  for (int d = split + 1; d < rank; d++) inner *= shape[d];
  int64_t ls = shape[split] / parts, blk = ls * inner;
  for (int64_t o = 0; o < outer; o++) {
    double *w = whole + o * shape[split] * inner + part * blk, *pc = piece + o * blk;
    if (to_whole) memcpy(w, pc, blk * sizeof(double));
    else memcpy(pc, w, blk * sizeof(double));
  }
}

/* A parameter saved whole, in the run's dtype, that this rank holds whole
 * (a resume in the layout it was saved in, but tp and ep splits): its
 * bytes go to the backend as they are, without the trip through doubles
 * of a reshard (GPT-2 124M: the parameters' 4.9 s of a resume here). */
static bool load_whole(Run *r, Shards *sh, RtParam *pp) {
  Piece *one = NULL;
  for (int i = 0; i < sh->npieces; i++)
    if (!strcmp(sh->pieces[i].name, pp->name)) {
      if (one) return false;
      one = &sh->pieces[i];
    }
  if (!one || one->parts != 1 || one->eparts != 1 || one->n != pp->numel || pp->local != pp->numel ||
      one->esz != r->be->elem)
    return false;
  int64_t o = r->b->vals[pp->value].off * r->be->elem;
  void *dst[3] = {r->ptr[pp->value], (char *)r->adam_m + o, (char *)r->adam_v + o};
  for (int t = 0; t < 3; t++) r->be->write(dst[t], one->data + t * one->n * one->esz, one->n);
  r->stale = true;
  return true;
}

/* Rebuilds parameter p whole (weights, m, v) from its pieces, then uploads
 * this rank's part. */
static void load_param(Run *r, Shards *sh, int k, const char *path) {
  Bundle *b = r->b;
  RtParam *pp = &b->params[k];
  if (load_whole(r, sh, pp)) return;
  double *whole = pending.whole = rt_xmalloc(3 * pp->numel * sizeof(double));
  double *piece = pending.piece = rt_xmalloc(pp->numel * sizeof(double));
  int64_t covered = 0;
  for (int i = 0; i < sh->npieces; i++) {
    Piece *pc = &sh->pieces[i];
    if (strcmp(pc->name, pp->name)) continue;
    if (pc->split >= pp->rank || pc->n * pc->parts * pc->eparts != pp->numel || pp->shape[0] % pc->eparts ||
        (pc->split >= 0 && pp->shape[pc->split] % pc->parts))
      rt_die("checkpoint '%s' does not match the bundle: it has %s (%lld elements) where the bundle has "
             "%s (%lld elements)", path, pc->name, (long long)(pc->n * pc->parts), pp->name,
             (long long)pp->numel);
    for (int t = 0; t < 3; t++) {
      get_tensor(pc->data + t * pc->n * pc->esz, piece, pc->n, pc->esz == 8);
      copy_part(whole + t * pp->numel, piece, pp->shape, pp->rank, pc->split, pc->part, pc->parts, pc->epart,
                pc->eparts, true);
    }
    covered += pc->n;
  }
  if (covered != pp->numel)
    rt_die("checkpoint '%s' does not hold all of parameter %s (%lld of %lld elements)", path, pp->name,
           (long long)covered, (long long)pp->numel);
  int64_t o = b->vals[pp->value].off * r->be->elem;
  void *dst[3] = {r->ptr[pp->value], (char *)r->adam_m + o, (char *)r->adam_v + o};
  for (int t = 0; t < 3; t++) {
    copy_part(whole + t * pp->numel, piece, pp->shape, pp->rank, pp->split, b->coord[1],
              pp->split >= 0 ? b->mesh[1] : 1, pp->esplit ? b->coord[3] : 0, pp->esplit ? b->mesh[3] : 1, false);
    r->be->upload(dst[t], piece, pp->local);
  }
  r->stale = true;   /* its bf16 copy is made again before the next forward pass */
  free(whole), free(piece), pending.whole = pending.piece = NULL;
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
  for (struct dirent *e; (e = readdir(d));) {
    size_t l = strlen(e->d_name);
    if (l > 5 && !strcmp(e->d_name + l - 5, ".ckpt")) {
      pending.names = realloc(pending.names, (pending.nnames + 1) * sizeof(char *));
      pending.names[pending.nnames] = rt_xmalloc(strlen(path) + l + 2);
      sprintf(pending.names[pending.nnames++], "%s/%s", path, e->d_name);
    }
  }
  closedir(d);
  char **names = pending.names;
  int n = pending.nnames;
  if (n == 0) rt_die("checkpoint '%s' holds no shards", path);
  qsort(names, n, sizeof(char *), by_name);
  Shards *shp = &pending.sh, sh;
  for (int i = 0; i < n; i++) read_pieces(r, names[i], shp, info, i == 0);
  sh = *shp;
  for (int i = 0; i < sh.npieces; i++) {    /* every piece names a parameter of the model */
    bool known = false;
    for (int p = 0; p < r->b->nparams; p++) known |= !strcmp(r->b->params[p].name, sh.pieces[i].name);
    if (!known)
      rt_die("checkpoint '%s' does not match the bundle: it has parameter %s, which the model does not",
             path, sh.pieces[i].name);
  }
  for (int p = 0; p < r->b->nparams; p++)
    if (r->b->params[p].value >= 0) load_param(r, &sh, p, path);
  ckpt_abandon();   /* done: what the load held goes */
  r->step = info->step;
}

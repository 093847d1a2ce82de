/* tblog.c: TensorBoard event files, written directly. In: scalars by tag
 * and step. Out: OUT/tb/events.out.tfevents.<time>.<host>, which
 * `tensorboard --logdir OUT` reads: TFRecord framing (little-endian u64
 * length, masked CRC-32C of the length, the bytes, masked CRC-32C of the
 * bytes) around Event protocol buffers (wall_time = 1, step = 2,
 * file_version = 3, summary = 5 holding Value {tag = 1, simple_value =
 * 2}, session_log = 7). A resumed run starts a new file with a
 * SessionLog START at its first step, which tells TensorBoard to drop what
 * the earlier run logged from there on (as metrics.jsonl drops it). Every record is flushed when written, as
 * metrics.jsonl is. */
#include "lmrt.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct TbLog {
  FILE *f;
  char path[1200];
};

static uint32_t crc32c(const unsigned char *p, size_t n) {
  static uint32_t table[256];
  if (!table[1])
    for (uint32_t i = 0; i < 256; i++) {
      uint32_t c = i;
      for (int k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78u ^ (c >> 1) : c >> 1;
      table[i] = c;
    }
  uint32_t c = 0xffffffffu;
  for (size_t i = 0; i < n; i++) c = table[(c ^ p[i]) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffu;
}

static uint32_t masked(const unsigned char *p, size_t n) {
  uint32_t c = crc32c(p, n);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

/* ---- a few protocol buffer encodings ---- */

typedef struct Pb {
  unsigned char b[512];
  size_t n;
} Pb;

static void varint(Pb *pb, uint64_t v) {
  do {
    pb->b[pb->n++] = (unsigned char)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
    v >>= 7;
  } while (v);
}

static void bytes(Pb *pb, int field, const void *p, size_t n) {
  varint(pb, (uint64_t)field << 3 | 2);
  varint(pb, n);
  memcpy(pb->b + pb->n, p, n);
  pb->n += n;
}

static void event_head(Pb *pb, int64_t step) {
  double t;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  t = ts.tv_sec + ts.tv_nsec * 1e-9;
  pb->b[pb->n++] = 1 << 3 | 1;   /* wall_time, 64-bit */
  memcpy(pb->b + pb->n, &t, 8);
  pb->n += 8;
  if (step) varint(pb, 2 << 3 | 0), varint(pb, (uint64_t)step);
}

static void record(TbLog *t, const Pb *pb) {
  uint64_t len = pb->n;
  uint32_t lc = masked((const unsigned char *)&len, 8), dc = masked(pb->b, pb->n);
  fwrite(&len, 8, 1, t->f), fwrite(&lc, 4, 1, t->f), fwrite(pb->b, 1, pb->n, t->f), fwrite(&dc, 4, 1, t->f);
  if (fflush(t->f) || ferror(t->f)) rt_die("cannot write TensorBoard events '%s': %s", t->path, strerror(errno));
}

TbLog *tb_open(const char *out_dir, int64_t start_step) {
  TbLog *t = rt_xmalloc(sizeof *t);
  char dir[1100], host[64] = "host";
  snprintf(dir, sizeof dir, "%s/tb", out_dir);
  if (mkdir(dir, 0777) != 0 && errno != EEXIST) rt_die("cannot create '%s': %s", dir, strerror(errno));
  gethostname(host, sizeof host - 1);
  snprintf(t->path, sizeof t->path, "%s/events.out.tfevents.%lld.%s.%d", dir, (long long)time(NULL), host, (int)getpid());
  if (!(t->f = fopen(t->path, "wb"))) rt_die("cannot write TensorBoard events '%s': %s", t->path, strerror(errno));
  Pb pb = {.n = 0};
  event_head(&pb, 0);
  bytes(&pb, 3, "brain.Event:2", 13);
  record(t, &pb);
  if (start_step > 0) {   /* SessionLog { status: START } */
    Pb log = {.n = 0}, ev = {.n = 0};
    varint(&log, 1 << 3 | 0), varint(&log, 1);
    event_head(&ev, start_step + 1);   /* TensorBoard keeps the steps before it */
    bytes(&ev, 7, log.b, log.n);
    record(t, &ev);
  }
  return t;
}

void tb_scalar(TbLog *t, const char *tag, int64_t step, double v) {
  if (!t) return;
  Pb val = {.n = 0}, sum = {.n = 0}, ev = {.n = 0};
  float f = (float)v;
  bytes(&val, 1, tag, strlen(tag));
  val.b[val.n++] = 2 << 3 | 5;   /* simple_value, 32-bit */
  memcpy(val.b + val.n, &f, 4);
  val.n += 4;
  bytes(&sum, 1, val.b, val.n);
  event_head(&ev, step);
  bytes(&ev, 5, sum.b, sum.n);
  record(t, &ev);
}

void tb_close(TbLog *t) {
  if (!t) return;
  if (fclose(t->f)) rt_die("cannot write TensorBoard events '%s': %s", t->path, strerror(errno));
  free(t);
}

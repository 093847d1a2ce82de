/* comm.c: ranks and collectives over MPI. lmrun calls MPI only when a
 * launcher (mpirun) started it, so a plain single-rank run never touches
 * MPI. Each mesh axis gets one communicator per group: the ranks that
 * agree on every other axis. A fatal error on any rank aborts the whole
 * job (MPI_Abort), so no rank waits forever on a dead peer; and every
 * collective or transfer is started nonblocking and waited for against a
 * deadline (comm_timeout seconds, $LMC_COMM_TIMEOUT or --comm-timeout,
 * default 300), so a peer that is stopped or hung ends the job too, with
 * the operation this rank was waiting on. */
#include "lmrt.h"
#include <mpi.h>
#include <omp.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static bool active;
static int my_rank, my_world = 1;
static MPI_Comm groups[4];
static const char *axis_name[4] = {"dp", "tp", "pp", "ep"};
double comm_timeout = 300;

/* Waits for req, polling; past the deadline the job ends naming what
 * this rank waited for (what, printf style). */
static void wait_for(MPI_Request *req, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void wait_for(MPI_Request *req, const char *fmt, ...) {
  double t0 = rt_now();
  for (long spins = 0;; spins++) {
    int done = 0;
    if (MPI_Test(req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) rt_die("MPI_Test failed");
    if (done) return;
    if (spins % 1024 == 1023 && rt_now() - t0 > comm_timeout) {
      char what[256];
      va_list ap;
      va_start(ap, fmt);
      vsnprintf(what, sizeof what, fmt, ap);
      va_end(ap);
      rt_die("no progress for %g s in %s: a peer rank is stopped, hung or far behind; ending the job "
             "(the limit is --comm-timeout or LMC_COMM_TIMEOUT)", comm_timeout, what);
    }
  }
}

static MPI_Comm errcomm;   /* failing ranks compare their messages here */

/* A fatal error: when every rank fails with the same message within a
 * second (a bad data file, a plan that does not fit), rank 0 reports it
 * once for all; otherwise each failing rank reports its own, named. Then
 * the whole job ends. */
static void die(const char *msg) {
  long long h = (long long)(rt_fnv1a(msg, strlen(msg), 0xcbf29ce484222325ULL) >> 1), v[2] = {h, -h}, m[2];
  MPI_Request req;
  int done = 0;
  MPI_Iallreduce(v, m, 2, MPI_LONG_LONG, MPI_MIN, errcomm, &req);
  for (double t0 = rt_now(); !done && rt_now() - t0 < 1.0;) MPI_Test(&req, &done, MPI_STATUS_IGNORE);
  if (done && m[0] == -m[1]) {
    if (my_rank == 0) fprintf(stderr, "lmrun: error: %s (all %d ranks)\n", msg, my_world);
  } else fprintf(stderr, "lmrun: error: rank %d: %s\n", my_rank, msg);
  fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, 1);
}

static bool launched_by_mpi(void) {
  return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK");
}

void comm_init(int *argc, char ***argv) {
  if (!launched_by_mpi()) return;
  MPI_Init(argc, argv);
  active = true;
  MPI_Comm_rank(MPI_COMM_WORLD, &my_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &my_world);
  MPI_Comm_dup(MPI_COMM_WORLD, &errcomm);
  rt_die_hook = die;
  const char *t = getenv("LMC_COMM_TIMEOUT");
  if (t && atof(t) > 0) comm_timeout = atof(t);
  /* share the cores among the ranks on this node */
  const char *local = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  if (local && !getenv("OMP_NUM_THREADS")) {
    int n = (int)sysconf(_SC_NPROCESSORS_ONLN) / atoi(local);
    omp_set_num_threads(n > 0 ? n : 1);
  }
}

int comm_rank(void) { return my_rank; }
int comm_world(void) { return my_world; }

/* coord: this rank's place on each axis (dp, tp, pp, ep), mesh: sizes. */
void comm_groups(const int coord[4], const int mesh[4]) {
  if (!active) return;
  for (int a = 0; a < 4; a++) {
    int color = 0;
    for (int o = 3; o >= 0; o--)      /* the other axes name the group */
      if (o != a) color = color * mesh[o] + coord[o];
    MPI_Comm_split(MPI_COMM_WORLD, color, coord[a], &groups[a]);
  }
}

int comm_group_size(int axis) {
  int n = 1;
  if (active) MPI_Comm_size(groups[axis], &n);
  return n;
}

int comm_group_rank(int axis) {
  int r = 0;
  if (active) MPI_Comm_rank(groups[axis], &r);
  return r;
}

/* bytes from the group's rank 0 to the others (an NCCL unique id) */
void comm_group_bcast(void *buf, int bytes, int axis) {
  if (!active) return;
  MPI_Request req;
  if (MPI_Ibcast(buf, bytes, MPI_BYTE, 0, groups[axis], &req) != MPI_SUCCESS) rt_die("MPI_Ibcast failed");
  wait_for(&req, "a broadcast of %d bytes over the %s group", bytes, axis_name[axis]);
}

const char *comm_axis_name(int axis) { return axis_name[axis]; }

void comm_allreduce(void *buf, int64_t n, int elem, int axis, int op) {
  if (!active) return;
  MPI_Datatype t = elem == 8 ? MPI_DOUBLE : MPI_FLOAT;
  for (int64_t off = 0; off < n; off += 1 << 30) {
    int c = (int)(n - off < (1 << 30) ? n - off : (1 << 30));
    MPI_Request req;
    int rc = MPI_Iallreduce(MPI_IN_PLACE, (char *)buf + off * elem, c, t, op ? MPI_MAX : MPI_SUM, groups[axis], &req);
    if (rc != MPI_SUCCESS) rt_die("MPI_Iallreduce failed (%d)", rc);
    wait_for(&req, "an all-reduce of %d values over the %s group", c, axis_name[axis]);
  }
}

void comm_allreduce_sum(void *buf, int64_t n, int elem, int axis) {
  comm_allreduce(buf, n, elem, axis, 0);
}

/* Sends are asynchronous so that no two neighbours block on each other;
 * each remembers its slot, whose buffers must not change until it is done. */
typedef struct Pending {
  MPI_Request req;
  int slot;
} Pending;
static Pending *pending;
static int npending, cappending;

/* reals of 8 or 4 bytes, or bf16 values moved as they are (2) */
static MPI_Datatype type_of(int elem) { return elem == 8 ? MPI_DOUBLE : elem == 2 ? MPI_UINT16_T : MPI_FLOAT; }

void comm_isend(const void *buf, int64_t n, int elem, int peer, int tag, int axis, int slot) {
  if (!active) rt_die("a send needs ranks: run under mpirun");
  if (n > (1 << 30)) rt_die("a transfer of %lld elements is too large", (long long)n);
  if (npending == cappending) {
    cappending = cappending ? 2 * cappending : 64;
    pending = realloc(pending, cappending * sizeof(Pending));
    if (!pending) rt_die("out of memory");
  }
  Pending *p = &pending[npending++];
  p->slot = slot;
  if (MPI_Isend(buf, (int)n, type_of(elem), peer, tag, groups[axis], &p->req) != MPI_SUCCESS)
    rt_die("MPI_Isend failed");
}

void comm_recv(void *buf, int64_t n, int elem, int peer, int tag, int axis) {
  if (!active) rt_die("a receive needs ranks: run under mpirun");
  MPI_Request req;
  if (MPI_Irecv(buf, (int)n, type_of(elem), peer, tag, groups[axis], &req) != MPI_SUCCESS) rt_die("MPI_Irecv failed");
  wait_for(&req, "a receive of %lld values from %s peer %d (tag %d)", (long long)n, axis_name[axis], peer, tag);
}

void comm_wait_sends(int slot) {
  int j = 0;
  for (int i = 0; i < npending; i++) {
    if (slot < 0 || pending[i].slot == slot) wait_for(&pending[i].req, "a send to a pipeline peer");
    else pending[j++] = pending[i];
  }
  npending = j;
}

void comm_gather(const double *mine, int n, double *all) {
  if (!active) {
    memcpy(all, mine, n * sizeof(double));
    return;
  }
  MPI_Request req;
  MPI_Igather(mine, n, MPI_DOUBLE, all, n, MPI_DOUBLE, 0, MPI_COMM_WORLD, &req);
  wait_for(&req, "gathering the run's statistics");
}

void comm_barrier(void) {
  if (!active) return;
  MPI_Request req;
  MPI_Ibarrier(MPI_COMM_WORLD, &req);
  wait_for(&req, "a barrier of all ranks");
}

/* The same verdict on every rank: true only if all ranks pass ok. */
bool comm_all(bool ok) {
  if (!active) return ok;
  int v = ok, all = 0;
  MPI_Request req;
  MPI_Iallreduce(&v, &all, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD, &req);
  wait_for(&req, "agreeing with the other ranks");
  return all;
}

void comm_finalize(void) {
  if (!active) return;
  comm_wait_sends(-1);
  free(pending);
  for (int a = 0; a < 4; a++)
    if (groups[a] != MPI_COMM_NULL && groups[a]) MPI_Comm_free(&groups[a]);
  MPI_Finalize();
  active = false;
}

void comm_alltoallv(const void *send, const int64_t *scount, const int64_t *sdispl, void *recv, const int64_t *rcount,
                    const int64_t *rdispl, int elem, int axis) {
  if (!active) rt_die("an all-to-all needs ranks: run under mpirun");
  int n = comm_group_size(axis), *c = rt_xmalloc(4 * n * sizeof(int));
  for (int i = 0; i < n; i++) {
    int64_t v[4] = {scount[i], sdispl[i], rcount[i], rdispl[i]};
    for (int j = 0; j < 4; j++) {
      if (v[j] < 0 || v[j] > INT32_MAX) rt_die("an all-to-all of %lld values is too large", (long long)v[j]);
      c[j * n + i] = (int)v[j];
    }
  }
  MPI_Request req;
  if (MPI_Ialltoallv(send, c, c + n, type_of(elem), recv, c + 2 * n, c + 3 * n, type_of(elem), groups[axis], &req) !=
      MPI_SUCCESS)
    rt_die("MPI_Ialltoallv failed");
  wait_for(&req, "an all-to-all over the %s group", axis_name[axis]);
  free(c);
}

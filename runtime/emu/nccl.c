/* nccl.c: the emulated NCCL, over MPI, so that the NCCL path of a
 * multi-rank plan runs under mpirun on one machine. The application
 * initialises MPI (lmrun does). A unique id is a random 128 bytes its
 * creator hands to the others (over MPI, as with NCCL); ncclCommInitRank
 * splits MPI_COMM_WORLD by the id, so every rank of the world must create
 * its communicators in the same order (lmrun creates one per mesh axis,
 * in order, on every rank) and the split must give nranks ranks, in rank
 * order. Device memory is host memory; each call is work on its stream
 * (driver.c runs it at once, or with LMC_CUDA_EMU_STREAMS=lazy when the
 * stream is made to run, and a capture records it); point-to-point calls
 * inside ncclGroupStart/End complete at the end, on the last one's stream.
 * While a call waits for its peers the other streams run what they can
 * (emu_progress). Under lazy streams a send, as NCCL's, holds its stream
 * until the peer receives; where streams run at once (with the host) it
 * cannot, or two ranks sending to each other first would both wait, so
 * there it is buffered and completes later, as MPI's buffered sends do.
 * Reductions: sum, prod, max, min over float, double, bf16 (summed in
 * float, rounded to nearest even), int32, int64, uint8. */
#include "emu.h"
#include <mpi.h>
#include <nccl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct ncclComm {
  MPI_Comm comm;
  int rank, nranks;
};

static int group_depth;
static void reap(bool all);

/* At MPI_Finalize (which deletes MPI_COMM_SELF's attributes first): the
 * buffered sends still out are waited for. */
static int at_finalize(MPI_Comm c, int key, void *value, void *extra) {
  reap(true);
  return MPI_SUCCESS;
}
static MPI_Request *pending;
static int npending, cap_pending;

const char *ncclGetErrorString(ncclResult_t r) {
  return r == ncclSuccess ? "no error" : emu_error[0] ? emu_error : "error in the emulated NCCL";
}
const char *ncclGetLastError(ncclComm_t comm) { return emu_error; }
ncclResult_t ncclGetVersion(int *v) { return *v = NCCL_VERSION_CODE, ncclSuccess; }

static ncclResult_t fail(ncclResult_t r, const char *what) {
  snprintf(emu_error, sizeof emu_error, "emulated NCCL: %s", what);
  return r;
}

static bool mpi_ready(void) {
  int up = 0, down = 0;
  MPI_Initialized(&up), MPI_Finalized(&down);
  return up && !down;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
  static unsigned long long counter;
  unsigned long long v[4] = {0x4c4d43454d554e43ULL, (unsigned long long)getpid(), ++counter,
                             (unsigned long long)time(NULL) ^ (unsigned long long)(uintptr_t)id};
  memset(id, 0, sizeof *id);
  memcpy(id->internal, v, sizeof v);
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t *out, int nranks, ncclUniqueId id, int rank) {
  if (!mpi_ready()) return fail(ncclInvalidUsage, "ncclCommInitRank needs MPI initialised (run under mpirun)");
  if (nranks < 1 || rank < 0 || rank >= nranks) return fail(ncclInvalidArgument, "rank outside nranks");
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < sizeof id.internal; i++) h = (h ^ (unsigned char)id.internal[i]) * 0x100000001b3ULL;
  static int key = MPI_KEYVAL_INVALID;
  if (key == MPI_KEYVAL_INVALID && MPI_Comm_create_keyval(MPI_COMM_NULL_COPY_FN, at_finalize, &key, NULL) == MPI_SUCCESS)
    MPI_Comm_set_attr(MPI_COMM_SELF, key, NULL);
  struct ncclComm *c = calloc(1, sizeof *c);
  if (!c) return fail(ncclSystemError, "out of memory");
  if (MPI_Comm_split(MPI_COMM_WORLD, (int)(h & 0x3fffffff), rank, &c->comm) != MPI_SUCCESS)
    return free(c), fail(ncclSystemError, "MPI_Comm_split failed");
  int size, me;
  MPI_Comm_size(c->comm, &size), MPI_Comm_rank(c->comm, &me);
  if (size != nranks || me != rank) {
    MPI_Comm_free(&c->comm), free(c);
    return fail(ncclInvalidUsage, "the ranks sharing this unique id are not nranks ranks numbered 0..nranks-1 "
                "(every rank must create its communicators in the same order)");
  }
  c->rank = rank, c->nranks = nranks;
  *out = c;
  return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t c) {
  if (mpi_ready()) reap(true);
  if (c && mpi_ready()) MPI_Comm_free(&c->comm);
  free(c);
  return ncclSuccess;
}
ncclResult_t ncclCommFinalize(ncclComm_t c) { return ncclSuccess; }
ncclResult_t ncclCommAbort(ncclComm_t c) { return ncclCommDestroy(c); }
ncclResult_t ncclCommCount(const ncclComm_t c, int *n) { return *n = c->nranks, ncclSuccess; }
ncclResult_t ncclCommUserRank(const ncclComm_t c, int *r) { return *r = c->rank, ncclSuccess; }
ncclResult_t ncclCommCuDevice(const ncclComm_t c, int *d) { return *d = 0, ncclSuccess; }
ncclResult_t ncclCommGetAsyncError(ncclComm_t c, ncclResult_t *e) { return *e = ncclSuccess, ncclSuccess; }

/* ---- data ---- */

static int elem(ncclDataType_t t) {
  switch (t) {
  case ncclInt8: case ncclUint8: return 1;
  case ncclFloat16: case ncclBfloat16: return 2;
  case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
  case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
  default: return 0;
  }
}

static MPI_Datatype mpi_type(ncclDataType_t t) {
  switch (t) {
  case ncclInt8: return MPI_INT8_T;
  case ncclUint8: return MPI_UINT8_T;
  case ncclInt32: return MPI_INT32_T;
  case ncclUint32: return MPI_UINT32_T;
  case ncclInt64: return MPI_INT64_T;
  case ncclUint64: return MPI_UINT64_T;
  case ncclFloat32: return MPI_FLOAT;
  case ncclFloat64: return MPI_DOUBLE;
  default: return MPI_DATATYPE_NULL;   /* 16-bit floats: widened to float */
  }
}

static MPI_Op mpi_op(ncclRedOp_t op) {
  return op == ncclSum ? MPI_SUM : op == ncclProd ? MPI_PROD : op == ncclMax ? MPI_MAX : op == ncclMin ? MPI_MIN
                                                                                                       : MPI_OP_NULL;
}

/* Waits for req, letting the other streams run meanwhile. */
/* Waits for req, letting the other streams run meanwhile; past
 * $LMC_CUDA_EMU_NCCL_TIMEOUT seconds (300) without it, an error (a peer
 * that stopped), not a hang. */
static int wait_req(MPI_Request *req) {
  const char *e = getenv("LMC_CUDA_EMU_NCCL_TIMEOUT");
  double limit = e && atof(e) > 0 ? atof(e) : 300, t0 = MPI_Wtime();
  for (int done = 0;;) {
    MPI_Test(req, &done, MPI_STATUS_IGNORE);
    if (done) return ncclSuccess;
    if (MPI_Wtime() - t0 > limit)
      return fail(ncclRemoteError, "a peer did not join a collective or transfer within LMC_CUDA_EMU_NCCL_TIMEOUT");
    emu_progress();
    usleep(10);
  }
}

/* Buffered sends (streams that run at once): their copies, freed once sent. */
typedef struct Buffered {
  MPI_Request req;
  void *copy;
} Buffered;
static Buffered *buffered;
static int nbuffered;

static void reap(bool all) {
  int j = 0;
  for (int i = 0; i < nbuffered; i++) {
    int done = 0;
    if (all) done = wait_req(&buffered[i].req) == ncclSuccess;
    else MPI_Test(&buffered[i].req, &done, MPI_STATUS_IGNORE);
    if (done) free(buffered[i].copy);
    else buffered[j++] = buffered[i];
  }
  nbuffered = j;
}

/* A collective's arguments, run as work on its stream. */
typedef struct Coll {
  int kind;                     /* C_* */
  const void *send;
  void *recv;
  size_t count;
  ncclDataType_t t;
  ncclRedOp_t op;
  int root;                     /* broadcast; send/recv: the peer */
  ncclComm_t c;
  bool grouped;                 /* send/recv inside a group: completed by its end */
} Coll;
enum { C_ALLREDUCE, C_BROADCAST, C_ALLGATHER, C_REDUCE_SCATTER, C_SEND, C_RECV, C_GROUP_END };

static int allreduce(Coll *a) {
  if (a->t == ncclBfloat16) {   /* reduced in float, rounded once */
    float *x = malloc(a->count * sizeof *x + 1);
    if (!x) return fail(ncclSystemError, "out of memory");
    for (size_t i = 0; i < a->count; i++) x[i] = lmc_bf2f(((const uint16_t *)a->send)[i]);
    MPI_Request req;
    MPI_Iallreduce(MPI_IN_PLACE, x, (int)a->count, MPI_FLOAT, mpi_op(a->op), a->c->comm, &req);
    if (wait_req(&req)) return free(x), ncclRemoteError;
    for (size_t i = 0; i < a->count; i++) ((uint16_t *)a->recv)[i] = lmc_f2bf(x[i]);
    free(x);
    return ncclSuccess;
  }
  MPI_Request req;
  MPI_Iallreduce(a->send == a->recv ? MPI_IN_PLACE : a->send, a->recv, (int)a->count, mpi_type(a->t), mpi_op(a->op),
                 a->c->comm, &req);
  return wait_req(&req);
}

static int allgather(Coll *a) {
  size_t bytes = a->count * elem(a->t);
  const void *src = a->send;
  void *tmp = NULL;
  if ((const char *)a->send == (const char *)a->recv + a->c->rank * bytes) {   /* in place: this rank's part already there */
    if (!(tmp = malloc(bytes ? bytes : 1))) return fail(ncclSystemError, "out of memory");
    memcpy(tmp, a->send, bytes), src = tmp;
  }
  MPI_Request req;
  MPI_Iallgather(src, (int)bytes, MPI_BYTE, a->recv, (int)bytes, MPI_BYTE, a->c->comm, &req);
  int rc = wait_req(&req);
  free(tmp);
  return rc;
}

static int reduce_scatter(Coll *a) {
  size_t bytes = a->count * elem(a->t);
  void *tmp = malloc(bytes * a->c->nranks + 1);
  if (!tmp) return fail(ncclSystemError, "out of memory");
  memcpy(tmp, a->send, bytes * a->c->nranks);   /* send may hold recv in place */
  MPI_Request req;
  MPI_Ireduce_scatter_block(tmp, a->recv, (int)a->count, mpi_type(a->t), mpi_op(a->op), a->c->comm, &req);
  int rc = wait_req(&req);
  free(tmp);
  return rc;
}

static int p2p(Coll *a) {
  MPI_Request req;
  int bytes = (int)(a->count * elem(a->t));
  reap(false);
  if (a->kind == C_SEND && !a->grouped && !emu_lazy()) {   /* buffered: see the top */
    Buffered *grown = realloc(buffered, (nbuffered + 1) * sizeof *buffered);
    void *copy = malloc(bytes + 1);
    if (!grown || !copy) return free(copy), fail(ncclSystemError, "out of memory");
    buffered = grown;
    memcpy(copy, a->send, bytes);
    MPI_Isend(copy, bytes, MPI_BYTE, a->root, 7, a->c->comm, &buffered[nbuffered].req);
    buffered[nbuffered++].copy = copy;
    return ncclSuccess;
  }
  if (a->kind == C_SEND) MPI_Isend(a->send, bytes, MPI_BYTE, a->root, 7, a->c->comm, &req);
  else MPI_Irecv(a->recv, bytes, MPI_BYTE, a->root, 7, a->c->comm, &req);
  if (!a->grouped) return wait_req(&req);
  if (npending == cap_pending) {
    MPI_Request *grown = realloc(pending, (cap_pending ? 2 * cap_pending : 16) * sizeof *pending);
    if (!grown) return fail(ncclSystemError, "out of memory");
    pending = grown, cap_pending = cap_pending ? 2 * cap_pending : 16;
  }
  pending[npending++] = req;
  return ncclSuccess;
}

static int run_coll(void *arg) {
  Coll *a = arg;
  switch (a->kind) {
  case C_ALLREDUCE: return allreduce(a);
  case C_BROADCAST:
    if (a->c->rank == a->root && a->send != a->recv) memmove(a->recv, a->send, a->count * elem(a->t));
    MPI_Request req;
    MPI_Ibcast(a->recv, (int)(a->count * elem(a->t)), MPI_BYTE, a->root, a->c->comm, &req);
    return wait_req(&req);
  case C_ALLGATHER: return allgather(a);
  case C_REDUCE_SCATTER: return reduce_scatter(a);
  case C_SEND: case C_RECV: return p2p(a);
  default: {
    int rc = ncclSuccess;
    for (int i = 0; i < npending && !rc; i++) rc = wait_req(&pending[i]);
    npending = 0;
    return rc;
  }
  }
}

static cudaStream_t group_stream;   /* the stream of the open group's last send or receive */
static bool group_p2p;

static ncclResult_t queue(Coll a, cudaStream_t s) {
  if (group_depth && (a.kind == C_SEND || a.kind == C_RECV)) a.grouped = true, group_stream = s, group_p2p = true;
  return emu_enqueue(s, run_coll, &a, sizeof a) ? ncclUnhandledCudaError : ncclSuccess;   /* emu_error says why */
}

ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, ncclDataType_t t, ncclRedOp_t op,
                           ncclComm_t c, cudaStream_t s) {
  if (!c || !elem(t) || mpi_op(op) == MPI_OP_NULL) return fail(ncclInvalidArgument, "ncclAllReduce: bad type or op");
  if (count > (size_t)1 << 30) return fail(ncclInvalidArgument, "ncclAllReduce: over 2^30 elements");
  if (t != ncclBfloat16 && mpi_type(t) == MPI_DATATYPE_NULL) return fail(ncclInvalidArgument, "ncclAllReduce: fp16 is not emulated");
  return queue((Coll){C_ALLREDUCE, send, recv, count, t, op, 0, c, false}, s);
}

ncclResult_t ncclBroadcast(const void *send, void *recv, size_t count, ncclDataType_t t, int root, ncclComm_t c,
                           cudaStream_t s) {
  if (!c || !elem(t) || root < 0 || root >= c->nranks) return fail(ncclInvalidArgument, "ncclBroadcast: bad arguments");
  return queue((Coll){C_BROADCAST, send, recv, count, t, ncclSum, root, c, false}, s);
}

ncclResult_t ncclAllGather(const void *send, void *recv, size_t count, ncclDataType_t t, ncclComm_t c,
                           cudaStream_t s) {
  if (!c || !elem(t)) return fail(ncclInvalidArgument, "ncclAllGather: bad type");
  return queue((Coll){C_ALLGATHER, send, recv, count, t, ncclSum, 0, c, false}, s);
}

ncclResult_t ncclReduceScatter(const void *send, void *recv, size_t count, ncclDataType_t t, ncclRedOp_t op,
                               ncclComm_t c, cudaStream_t s) {
  if (!c || mpi_type(t) == MPI_DATATYPE_NULL || mpi_op(op) == MPI_OP_NULL)
    return fail(ncclInvalidArgument, "ncclReduceScatter: bad type or op (16-bit floats are not emulated here)");
  return queue((Coll){C_REDUCE_SCATTER, send, recv, count, t, op, 0, c, false}, s);
}

ncclResult_t ncclSend(const void *buf, size_t count, ncclDataType_t t, int peer, ncclComm_t c, cudaStream_t s) {
  if (!c || !elem(t) || peer < 0 || peer >= c->nranks) return fail(ncclInvalidArgument, "ncclSend/Recv: bad arguments");
  return queue((Coll){C_SEND, buf, NULL, count, t, ncclSum, peer, c, false}, s);
}

ncclResult_t ncclRecv(void *buf, size_t count, ncclDataType_t t, int peer, ncclComm_t c, cudaStream_t s) {
  if (!c || !elem(t) || peer < 0 || peer >= c->nranks) return fail(ncclInvalidArgument, "ncclSend/Recv: bad arguments");
  return queue((Coll){C_RECV, NULL, buf, count, t, ncclSum, peer, c, false}, s);
}

ncclResult_t ncclGroupStart(void) { return group_depth++, ncclSuccess; }

ncclResult_t ncclGroupEnd(void) {
  if (group_depth <= 0) return fail(ncclInvalidUsage, "ncclGroupEnd without ncclGroupStart");
  if (--group_depth || !group_p2p) return ncclSuccess;
  group_p2p = false;
  return queue((Coll){C_GROUP_END, NULL, NULL, 0, ncclFloat, ncclSum, 0, NULL, false}, group_stream);
}

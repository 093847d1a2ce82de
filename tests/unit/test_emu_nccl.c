/* test_emu_nccl.c: the emulated NCCL under mpirun. Rank 0 makes a unique
 * id and broadcasts it over MPI, every rank joins, then: all-reduce (float
 * sum in place, bf16 sum rounded once, double max), broadcast, all-gather
 * (in place), reduce-scatter, and a ring of sends and receives in one
 * group; every result against what it must be. Usage (under mpirun):
 * test_emu_nccl LIB */
#include <dlfcn.h>
#include <math.h>
#include <mpi.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *lib;
static int failures, ran, me, n;
#define F(name) ((__typeof__(&name))dlsym(lib, #name))

static void expect(int ok, const char *what) {
  int all = 0;
  MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
  if (me == 0) printf("%-56s %s\n", what, all ? "ok" : "FAIL");
  failures += !all, ran++;
}

static unsigned short bf(float f) {
  unsigned u;
  memcpy(&u, &f, 4);
  return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &me), MPI_Comm_size(MPI_COMM_WORLD, &n);
  if (argc < 2 || !(lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL))) printf("FAIL: cannot load the emulator\n"), exit(1);
  ncclUniqueId id;
  if (me == 0) F(ncclGetUniqueId)(&id);
  MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
  ncclComm_t c;
  expect(F(ncclCommInitRank)(&c, n, id, me) == ncclSuccess, "ncclCommInitRank of every rank");
  float x[5];
  for (int i = 0; i < 5; i++) x[i] = (float)(me + 1) * (i + 1);
  F(ncclAllReduce)(x, x, 5, ncclFloat32, ncclSum, c, NULL);
  int ok = 1;
  for (int i = 0; i < 5; i++) ok &= x[i] == (float)(n * (n + 1) / 2) * (i + 1);
  expect(ok, "all-reduce, float sum, in place");
  unsigned short b[3], r[3];
  for (int i = 0; i < 3; i++) b[i] = bf(1.0f + 0.00390625f * (i + me));   /* rounding to nearest even */
  F(ncclAllReduce)(b, r, 3, ncclBfloat16, ncclSum, c, NULL);
  ok = 1;
  for (int i = 0; i < 3; i++) {
    float s = 0;
    for (int k = 0; k < n; k++) {
      unsigned u = (unsigned)bf(1.0f + 0.00390625f * (i + k)) << 16;
      float f;
      memcpy(&f, &u, 4);
      s += f;
    }
    ok &= r[i] == bf(s);
  }
  expect(ok, "all-reduce, bf16 sum (in float, rounded once)");
  double d = me * 1.5, dm;
  F(ncclAllReduce)(&d, &dm, 1, ncclFloat64, ncclMax, c, NULL);
  expect(dm == (n - 1) * 1.5, "all-reduce, double max");
  int v[4] = {me, me, me, me};
  if (me == n - 1) for (int i = 0; i < 4; i++) v[i] = 40 + i;
  F(ncclBroadcast)(v, v, 4, ncclInt32, n - 1, c, NULL);
  expect(v[0] == 40 && v[3] == 43, "broadcast from the last rank");
  int *g = calloc(2 * n, sizeof *g);
  g[2 * me] = me * 10, g[2 * me + 1] = me * 10 + 1;
  F(ncclAllGather)(g + 2 * me, g, 2, ncclInt32, c, NULL);
  ok = 1;
  for (int k = 0; k < n; k++) ok &= g[2 * k] == k * 10 && g[2 * k + 1] == k * 10 + 1;
  expect(ok, "all-gather, in place");
  float *rs = malloc(2 * n * sizeof *rs), out[2];
  for (int i = 0; i < 2 * n; i++) rs[i] = (float)(i + me);
  F(ncclReduceScatter)(rs, out, 2, ncclFloat32, ncclSum, c, NULL);
  float w0 = 0, w1 = 0;
  for (int k = 0; k < n; k++) w0 += (float)(2 * me + k), w1 += (float)(2 * me + 1 + k);
  expect(out[0] == w0 && out[1] == w1, "reduce-scatter, float sum");
  int to = (me + 1) % n, from = (me + n - 1) % n, sv = 100 + me, rv = -1;
  F(ncclGroupStart)();
  F(ncclSend)(&sv, 1, ncclInt32, to, c, NULL);
  F(ncclRecv)(&rv, 1, ncclInt32, from, c, NULL);
  F(ncclGroupEnd)();
  expect(rv == 100 + from, "a ring of sends and receives in one group");
  expect(F(ncclAllReduce)(x, x, 1, (ncclDataType_t)99, ncclSum, c, NULL) == ncclInvalidArgument,
         "an unknown data type is an error");
  F(ncclCommDestroy)(c);
  free(g), free(rs);
  if (me == 0) printf("%d passed, %d failed\n", ran - failures, failures);
  MPI_Finalize();
  return failures ? 1 : 0;
}

/* lmrun.c: the runtime's command line. Loads a bundle, picks the backend
 * and either trains (train.c) or checks gradients against central finite
 * differences (--gradcheck, best with --f64). */
#include "lmrt.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

static void usage(int code) {
  fprintf(code ? stderr : stdout,
          "usage: lmrun BUNDLE [options]\n"
          "  --data FILE           text file (byte tokens) or .bin token shard\n"
          "  --max-steps N         stop after step N (default: the planned steps)\n"
          "  --steps N             planned steps: the length of the lr schedule\n"
          "  --log-interval N      print a progress line every N steps (default 10)\n"
          "  --peak-tflops X       one device's peak TFLOP/s: the progress line shows MFU (default\n"
          "                        on a GPU of known name: its dense bf16 peak)\n"
          "  --eval-interval N     validation loss every N steps (default: the spec's)\n"
          "  --eval-batches N      validation batches per evaluation\n"
          "  --save-interval N     checkpoint every N steps and at the end (default: the\n"
          "                        spec's save_every; 0: no checkpoints)\n"
          "  --keep N              keep only the newest N checkpoints (default: all)\n"
          "  --trace FILE          a Chrome trace (Perfetto, chrome://tracing) of every op,\n"
          "                        transfer and collective of each rank, for --trace-steps N\n"
          "                        steps (default 3) after the first\n"
          "  --resume CKPT         continue from a checkpoint (e.g. BUNDLE/ckpt/latest)\n"
          "  --out DIR             where metrics.jsonl and ckpt/ go (default: BUNDLE)\n"
          "  --seed N  --lr X      override the spec's seed / peak learning rate\n"
          "  --f64                 run in double precision\n"
          "  --backend NAME        auto (default: cuda when a GPU is usable, else cpu, said\n"
          "                        once), cpu, cuda, or cuda-emu (the CUDA backend on the\n"
          "                        emulated CUDA platform)\n"
          "  --matmul-precision P  CUDA backends, as PyTorch's float32 matmul precision:\n"
          "                        medium (default; GEMMs and attention in bf16 on the\n"
          "                        tensor cores), high (GEMMs in tf32), highest (fp32\n"
          "                        products, for checking) of fp32 operands; sums in fp32\n"
          "  --collectives C       a CUDA backend's all-reduces: auto (default; NCCL when every\n"
          "                        rank of a machine has its own GPU), nccl, or mpi (staged\n"
          "                        through host memory)\n"
          "  --no-cuda-graphs      on a CUDA backend, launch every op each step instead of\n"
          "                        replaying each program's recorded CUDA graph\n"
          "  --comm-timeout S      end the job when a collective or transfer makes no\n"
          "                        progress for S seconds (default 300, or $LMC_COMM_TIMEOUT)\n"
          "  --init-hf DIR         start from a Hugging Face Llama (config.json, model.safetensors)\n"
          "  --export-hf DIR       write the weights of --resume CKPT as a Hugging Face Llama\n"
          "  --gradcheck N         compare N gradient entries with finite differences\n"
          "  --sample TEXT         write --tokens N (default 200) tokens after TEXT with the\n"
          "                        weights of --resume CKPT, at --temperature X (default 0.8)\n"
          "  --quiet               no progress lines\n");
  exit(code);
}

static int64_t num_arg(const char *flag, const char *v) {
  char *end;
  long long x = strtoll(v, &end, 10);
  if (*end || end == v || x < 0) rt_die("%s takes a non-negative integer, got '%s'", flag, v);
  return x;
}

static int gradcheck(Run *r, TrainOpts *o, int64_t n) {
  Bundle *b = r->b;
  Data *d = data_load(o->data ? o->data : b->train.data, b->vocab, b->train.val_fraction, b->T + 1);
  int64_t nr = b->B * b->train.microbatches;
  int32_t *rows = rt_xmalloc(nr * (b->T + 1) * sizeof(int32_t));
  rt_init_params(r, o->seed >= 0 ? (uint64_t)o->seed : (uint64_t)b->train.seed);
  data_train_batch(d, b->train.seed, 0, nr, b->T, rows);
  rt_zero_grads(r);
  r->routing = 1;   /* MoE: each layer's experts stay as this pass chose them */
  for (int64_t mb = 0; mb < b->train.microbatches; mb++) {
    rt_load_micro(r, rows + mb * b->B * (b->T + 1), b->B);
    rt_forward(r), rt_backward(r);
  }
  r->routing = 2;
  double worst = 0, h = r->be->elem == 8 ? 1e-4 : 1e-2;
  int bad = 0;
  for (int64_t i = 0; i < n; i++) {
    int p = (int)(rng_hash(99, i, 1) % (uint64_t)b->nparams);
    RtParam *pp = &b->params[p];
    int64_t j = (int64_t)(rng_hash(99, i, 2) % (uint64_t)pp->local);
    double *w = rt_xmalloc(pp->local * sizeof(double)), *g = rt_xmalloc(pp->local * sizeof(double));
    rt_get_param(r, p, w), rt_get_grad(r, p, g);
    double w0 = w[j], f[4], off[4] = {2, 1, -1, -2};
    for (int k = 0; k < 4; k++)
      w[j] = w0 + off[k] * h, rt_set_param(r, p, w), f[k] = rt_eval(r, rows);
    w[j] = w0, rt_set_param(r, p, w);
    /* fourth-order central difference; the test is atol + rtol * |ref| */
    double fd = (-f[0] + 8 * f[1] - 8 * f[2] + f[3]) / (12 * h), diff = fabs(fd - g[j]);
    double err = diff / fmax(fabs(fd), 1e-30);
    bool f64 = r->be->elem == 8;
    bool ok = diff <= (f64 ? 1e-10 + 1e-6 * fabs(fd) : 1e-4 + 5e-2 * fabs(fd));
    if (fabs(fd) > 1e-7 && err > worst) worst = err;
    bad += !ok;
    printf("%-32s [%8lld] analytic % .10e  numeric % .10e  rel %.2e%s\n", pp->name, (long long)j,
           g[j], fd, err, ok ? "" : "  MISMATCH");
    free(w), free(g);
  }
  printf("gradcheck: %lld entries, max rel error %.3e (where |numeric| > 1e-7), %d mismatches\n", (long long)n, worst, bad);
  free(rows);
  data_free(d);
  return bad ? 1 : 0;
}

/* cpu, cuda, cuda-emu, or auto: cuda when it loads, else cpu. */
static Backend *pick_backend(const char *name, const char *dir, bool f64, bool quiet) {
  if (!strcmp(name, "cpu")) return cpu_backend(f64);
  bool emu = !strcmp(name, "cuda-emu");
  if (f64) {
    if (strcmp(name, "auto")) rt_die("--f64 runs on the CPU backend only");
    return cpu_backend(true);
  }
  char why[256];
  Backend *be = cuda_backend(dir, emu, why, sizeof why);
  if (be) return be;
  if (strcmp(name, "auto")) rt_die("the CUDA backend is not available: %s", why);
  if (!quiet && comm_rank() == 0) fprintf(stderr, "lmrun: %s; using the CPU backend\n", why);
  return cpu_backend(false);
}

/* Text from a trained model: the prompt in row 0 of a batch, one forward
 * pass per new token (the causal mask makes position t see tokens <= t
 * only), sampled at the temperature from the logits of the last position,
 * with a window of the last T tokens. Bytes print as text. */
static int sample(Run *r, TrainOpts *o, const char *prompt, int64_t ntok, double temp) {
  Bundle *b = r->b;
  const RtInst *last = &b->fwd[b->nfwd - 1];
  if (last->op != OP_XENT)
    rt_die("sampling needs the logits as a tensor: recompile the bundle with lmc --fuse=never");
  rt_init_params(r, o->seed >= 0 ? (uint64_t)o->seed : (uint64_t)b->train.seed);
  if (o->resume) {
    CkptInfo info;
    ckpt_load(r, o->resume, &info);
  }
  int64_t T = b->T, V = b->vocab, len = 0, cap = strlen(prompt) + ntok + 1;
  int32_t *text = rt_xmalloc(cap * sizeof(int32_t)), *rows = rt_xmalloc(b->B * (T + 1) * sizeof(int32_t));
  for (const char *p = prompt; *p; p++) text[len++] = (unsigned char)*p % V;
  if (len == 0) text[len++] = '\n' % V;
  double *logits = rt_xmalloc(b->vals[last->in[0]].n * sizeof(double));
  fputs(prompt, stdout);
  for (int64_t i = 0; i < ntok; i++) {
    int64_t start = len > T ? len - T : 0, n = len - start;
    memset(rows, 0, b->B * (T + 1) * sizeof(int32_t));
    memcpy(rows, text + start, n * sizeof(int32_t));
    rt_load_micro(r, rows, b->B);
    rt_forward(r);
    rt_get_value(r, last->in[0], logits);
    const double *l = logits + (n - 1) * V;            /* row 0, position n-1 */
    double mx = l[0], sum = 0, u = rng_uniform(rng_hash(0x73616d70, (uint64_t)o->seed, 0), (uint64_t)i);
    for (int64_t j = 1; j < V; j++) mx = l[j] > mx ? l[j] : mx;
    for (int64_t j = 0; j < V; j++) sum += exp((l[j] - mx) / temp);
    int64_t pick = V - 1;
    for (int64_t j = 0; j < V; j++) {
      u -= exp((l[j] - mx) / temp) / sum;
      if (u <= 0) { pick = j; break; }
    }
    text[len++] = (int32_t)pick;
    if (V <= 256) putchar((int)pick);
    else printf(" %lld", (long long)pick);
    fflush(stdout);
  }
  putchar('\n');
  free(text), free(rows), free(logits);
  return 0;
}

int main(int argc, char **argv) {
  comm_init(&argc, &argv);
  if (argc < 2) usage(1);
  if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) usage(0);
  const char *dir = argv[1], *backend = "auto";
  TrainOpts o = {.log_interval = 10, .seed = -1, .eval_interval = -1, .eval_batches = -1, .save_interval = -1,
                 .trace_steps = 3};
  bool f64 = false, graphs = true;
  int mp = MP_MEDIUM, cc = CC_AUTO;
  bool mp_set = false;
  int64_t gc = 0, ntok = 200;
  const char *prompt = NULL, *export_hf = NULL;
  double temp = 0.8;
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(flag) (!strcmp(a, flag) && (v || (rt_die("%s needs a value", flag), 0)) && ++i)
    if (ARG("--data")) o.data = v;
    else if (ARG("--max-steps")) o.max_steps = num_arg(a, v);
    else if (ARG("--steps")) o.steps = num_arg(a, v);
    else if (ARG("--log-interval")) o.log_interval = num_arg(a, v);
    else if (ARG("--eval-interval")) o.eval_interval = num_arg(a, v);
    else if (ARG("--eval-batches")) o.eval_batches = num_arg(a, v);
    else if (ARG("--save-interval")) o.save_interval = num_arg(a, v);
    else if (ARG("--keep")) o.keep = num_arg(a, v);
    else if (ARG("--trace")) o.trace = v;
    else if (ARG("--export-hf")) export_hf = v;
    else if (ARG("--init-hf")) o.init_hf = v;
    else if (ARG("--peak-tflops")) {
      o.peak_tflops = atof(v);
      if (!(o.peak_tflops > 0)) rt_die("--peak-tflops takes a positive number, got '%s'", v);
    }
    else if (ARG("--trace-steps")) o.trace_steps = num_arg(a, v);
    else if (ARG("--resume")) o.resume = v;
    else if (ARG("--out")) o.out_dir = v;
    else if (ARG("--seed")) o.seed = num_arg(a, v);
    else if (ARG("--lr")) o.lr = atof(v);
    else if (ARG("--backend")) backend = v;
    else if (ARG("--collectives")) {
      if (!strcmp(v, "auto")) cc = CC_AUTO;
      else if (!strcmp(v, "nccl")) cc = CC_NCCL;
      else if (!strcmp(v, "mpi")) cc = CC_MPI;
      else rt_die("--collectives takes auto, nccl or mpi, got '%s'", v);
    }
    else if (ARG("--matmul-precision")) {
      if ((mp = matmul_precision_of(v)) < 0) rt_die("--matmul-precision takes highest, high or medium, got '%s'", v);
      mp_set = true;
    }
    else if (ARG("--comm-timeout")) {
      comm_timeout = atof(v);
      if (!(comm_timeout > 0)) rt_die("--comm-timeout takes a positive number of seconds, got '%s'", v);
    }
    else if (ARG("--gradcheck")) gc = num_arg(a, v);
    else if (ARG("--sample")) prompt = v;
    else if (ARG("--tokens")) ntok = num_arg(a, v);
    else if (ARG("--temperature")) {
      temp = atof(v);
      if (!(temp > 0)) rt_die("--temperature takes a positive number, got '%s'", v);
    }
    else if (!strcmp(a, "--f64")) f64 = true;
    else if (!strcmp(a, "--no-cuda-graphs")) graphs = false;
    else if (!strcmp(a, "--quiet")) o.quiet = true;
    else if (!strcmp(a, "-h") || !strcmp(a, "--help")) usage(0);
    else rt_die("unknown option '%s' (see lmrun --help)", a);
#undef ARG
  }
  if (strcmp(backend, "cpu") && strcmp(backend, "auto") && strcmp(backend, "cuda") && strcmp(backend, "cuda-emu"))
    rt_die("unknown backend '%s'; use cpu, cuda, cuda-emu or auto", backend);
  if (cc != CC_AUTO && !strcmp(backend, "cpu"))
    rt_die("--collectives applies to the CUDA backends (--backend cuda, cuda-emu, auto)");
  cuda_collectives(cc);
  if (o.log_interval == 0) o.log_interval = 1;
  int rank = comm_rank(), world = comm_world();
  Bundle *b = bundle_open(dir);
  if (b->world != world) {   /* every rank knows: rank 0 says it for all */
    if (rank == 0)
      fprintf(stderr, "lmrun: error: bundle %s plans %d rank%s but %d %s started; run it with "
              "mpirun -np %d\n", dir, b->world, b->world == 1 ? "" : "s", world,
              world == 1 ? "was" : "were", b->world);
    comm_finalize();
    return 1;
  }
  bundle_load_rank(b, rank);
  comm_groups(b->coord, b->mesh);
  if (gc > 0 && world > 1) rt_die("--gradcheck runs on one rank");
  if (!o.out_dir) o.out_dir = dir;
  if (o.eval_interval < 0) o.eval_interval = b->train.eval_every;
  if (o.eval_batches <= 0) o.eval_batches = b->train.eval_batches > 0 ? b->train.eval_batches : 1;
  if (o.save_interval < 0) o.save_interval = b->train.save_every;   /* --save-interval 0: none */
  if (mp_set && (f64 || !strcmp(backend, "cpu")))
    rt_die("--matmul-precision applies to the CUDA backends (--backend cuda, cuda-emu, auto)");
  cuda_matmul_precision(mp);
  Backend *be = pick_backend(backend, dir, f64, o.quiet);
  Run *r = rt_new(b, be);
  r->graphs &= graphs;
  if (prompt && world > 1) rt_die("--sample runs on one rank");
  if (o.seed < 0) o.seed = b->train.seed;
  int rc = 0;
  if (export_hf) {   /* the weights of --resume (or --init-hf, or the seed's), as a HF Llama */
    rt_init_params(r, (uint64_t)o.seed);
    if (o.init_hf) hf_import(r, o.init_hf);
    CkptInfo info;
    if (o.resume) ckpt_load(r, o.resume, &info);
    hf_export(r, export_hf);
    if (!o.quiet) printf("wrote %s/config.json and %s/model.safetensors\n", export_hf, export_hf);
  } else rc = prompt ? sample(r, &o, prompt, ntok, temp) : gc > 0 ? gradcheck(r, &o, gc) : train_run(r, &o);
  rt_free(r);
  bundle_free(b);
  comm_finalize();
  return rc;
}

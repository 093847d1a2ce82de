/* train.c: the training loop. Per step: draw the batch for (seed, step),
 * run the schedule's step (forward, backward, clip, AdamW at the step's
 * learning rate), log; every eval interval measure the validation loss;
 * every save interval write a checkpoint. The learning-rate schedule
 * (linear warmup, then cosine, linear or constant decay to min_lr) spans
 * the planned steps, so stopping early and resuming changes nothing. */
#include "lmrt.h"
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <errno.h>
#include <unistd.h>

double lr_at(const Train *t, int64_t steps, int64_t step) {
  if (step < t->warmup) return t->lr * (double)(step + 1) / (double)t->warmup;
  if (!strcmp(t->decay, "constant") || steps <= t->warmup) return t->lr;
  double p = (double)(step - t->warmup) / (double)(steps - t->warmup);
  if (p > 1) p = 1;
  if (!strcmp(t->decay, "linear")) return t->lr - (t->lr - t->min_lr) * p;
  return t->min_lr + 0.5 * (t->lr - t->min_lr) * (1 + cos(M_PI * p));
}

/* This rank's rows of a global batch: data parallel rank d takes the
 * d-th block of B x microbatches rows, so every layout sees one batch. */
/* This rank's rows of the batch: dp and ep ranks each take their own (ep
 * ranks are data parallel outside the experts). Microbatch j of every
 * replica comes from the j-th m-th of the batch, so microbatch j of the
 * whole group holds the same rows in every layout: what MoE's balance
 * statistics sum over is then the same as in a one-rank run. */
static const int32_t *my_rows(Bundle *b, const int32_t *global, int32_t *mine) {
  int64_t reps = (int64_t)b->mesh[AXIS_DP] * b->mesh[AXIS_EP], rep = b->coord[AXIS_DP] + (int64_t)b->mesh[AXIS_DP] * b->coord[AXIS_EP];
  int64_t row = b->T + 1, m = b->train.microbatches;
  if (reps == 1) return global;
  for (int64_t j = 0; j < m; j++)
    memcpy(mine + j * b->B * row, global + (j * reps + rep) * b->B * row, b->B * row * sizeof(int32_t));
  return mine;
}

static void fmt_time(char *buf, size_t n, double s) {
  if (s < 60) snprintf(buf, n, "%.0fs", s);
  else if (s < 3600) snprintf(buf, n, "%dm%02ds", (int)s / 60, (int)s % 60);
  else snprintf(buf, n, "%dh%02dm", (int)s / 3600, (int)s % 3600 / 60);
}

typedef struct Loop {
  Run *r;
  TrainOpts *o;
  Data *d;
  FILE *metrics;
  char metrics_path[1200];
  TbLog *tb;               /* the same scalars for TensorBoard */
  bool tty;                /* progress updates one line in place */
  double best_val, last_val;
  int64_t last_saved;
  CkptInfo data_id;        /* the data's identity, for checkpoints */
  int32_t *rows;
  int64_t steps, max_steps, start;
  uint64_t seed;
  char ckpt_dir[1100];
  double t0;
  double t_steps, wait0;   /* time in steps after the first, and the wait before them */
  int *moe, nmoe;          /* MoE layers: their metrics values (aux, z, most and least load) */
  bool gpu, peak_auto;     /* a device that says its name and memory; MFU against its peak, known by the name */
  char device[100];
  double dev_free, dev_total;
} Loop;

/* The MoE layers' metrics values (layers.N.moe), by layer; -1 for a dense
 * layer between two. */
static void find_moe(Loop *L) {
  Bundle *b = L->r->b;
  int last = -1;
  for (int v = 0; v < b->nvals; v++) {
    int layer, used = 0;
    if (b->vals[v].present && b->vals[v].region == R_STATE && sscanf(b->vals[v].name, "layers.%d.moe%n", &layer, &used) == 1 &&
        !b->vals[v].name[used] && layer >= 0 && layer < 65536 && layer > last)
      last = layer;
  }
  L->nmoe = last + 1;
  L->moe = rt_xmalloc((L->nmoe + 1) * sizeof(int));
  for (int l = 0; l < L->nmoe; l++) {
    char name[64];
    snprintf(name, sizeof name, "layers.%d.moe", l);
    L->moe[l] = -1;
    for (int v = 0; v < b->nvals; v++)
      if (b->vals[v].present && b->vals[v].region == R_STATE && !strcmp(b->vals[v].name, name)) L->moe[l] = v;
  }
}

/* The MoE layers' balance losses as the loss weighs them, and each
 * layer's metrics into m (NULL: not needed), as the last step left them
 * (step) or the last evaluation. */
static double moe_penalty(Loop *L, double (*m)[4], bool step) {
  Bundle *b = L->r->b;
  double coef[2] = {0, 0}, sum = 0, mine[4];
  for (int i = 0; i < b->nfwd; i++)
    if (b->fwd[i].op == OP_MOE_LOSS) coef[0] = b->fwd[i].aux, coef[1] = b->fwd[i].zl;
  for (int l = 0; l < L->nmoe; l++) {
    double *x = m ? m[l] : mine;
    if (L->moe[l] < 0) continue;
    if (step) rt_step_value(L->r, L->moe[l], x);   /* (a step queued ahead has changed the device's) */
    else rt_get_value(L->r, L->moe[l], x);
    sum += coef[0] * x[0] + coef[1] * x[1];
  }
  return sum;
}

/* The validation loss: the cross-entropy (without MoE's balance losses). */
static double eval_loss(Loop *L, int64_t nbatches, int32_t *rows) {
  Bundle *b = L->r->b;
  double sum = 0;
  for (int64_t i = 0; i < nbatches; i++) {
    data_val_batch(L->d, i, nbatches, b->train.batch, b->T, rows);
    sum += rt_eval(L->r, my_rows(b, rows, rows + b->train.batch * (b->T + 1))) - moe_penalty(L, NULL, false);
  }
  return sum / nbatches;
}

/* v as a JSON number, in buf (32 bytes): null where it is not finite (an
 * inf or nan gradient norm, a diverged loss), which JSON has no number for
 * (printf's "inf" made the whole line unreadable to JSON readers) */
static const char *jnum(char *buf, double v, int digits) {
  if (!isfinite(v)) return "null";
  snprintf(buf, 32, "%.*g", digits, v);
  return buf;
}

/* The MoE layers' metrics: aux and z losses, the most and least loaded
 * expert's share over the balanced share (1 is balanced), per layer; and
 * the cross-entropy (the loss less the weighted balance losses). Returns
 * the largest load of any layer. */
static double log_moe(Loop *L, int64_t step, double loss) {
  Bundle *b = L->r->b;
  const char *keys[4] = {"aux", "z", "load_max", "load_min"};
  double worst = 0, (*m)[4] = rt_xmalloc((L->nmoe + 1) * sizeof *m);
  loss -= moe_penalty(L, m, true);
  char nb[32];
  fprintf(L->metrics, ",\"ce\":%s", jnum(nb, loss, 17));
  for (int k = 0; k < 4; k++) {
    fprintf(L->metrics, ",\"moe_%s\":[", keys[k]);
    for (int l = 0, first = 1; l < L->nmoe; l++)
      if (L->moe[l] >= 0) {
        fprintf(L->metrics, "%s%s", first ? "" : ",", jnum(nb, m[l][k], 9)), first = 0;
        char tag[64];
        snprintf(tag, sizeof tag, "moe/layer%d/%s", l, keys[k]);
        tb_scalar(L->tb, tag, step, m[l][k]);
        if (k == 2 && m[l][k] > worst) worst = m[l][k];
      }
    fprintf(L->metrics, "]");
  }
  if (b->mesh[3] > 1) {   /* what this rank's all-to-alls sent to other ranks this step */
    double mib = L->r->a2a_sent * L->r->be->elem / (1 << 20);
    fprintf(L->metrics, ",\"moe_a2a_mib\":%.4f", mib);
    tb_scalar(L->tb, "moe/a2a_mib", step, mib);
  }
  tb_scalar(L->tb, "train/ce", step, loss);
  free(m);
  return worst;
}

/* Each line reaches the file before the step goes on: a killed run keeps
 * every step it logged. A write that fails (a full disk) ends the run. */
static void flush_metrics(Loop *L) {
  if (fflush(L->metrics) || ferror(L->metrics))
    rt_die("cannot write metrics file '%s': %s", L->metrics_path, strerror(errno));
}

static void log_step(Loop *L, int64_t step, double loss, double lr, double norm, double dt) {
  Bundle *b = L->r->b;
  double toks = (double)b->train.batch * b->T;
  if (!L->metrics) return;               /* not the leader */
  char nb[3][32];
  fprintf(L->metrics, "{\"step\":%lld,\"loss\":%s,\"lr\":%s,\"grad_norm\":%s,\"ms\":%.2f,\"tokens\":%.0f",
          (long long)step, jnum(nb[0], loss, 17), jnum(nb[1], lr, 17), jnum(nb[2], norm, 17), dt * 1e3, toks * (double)step);
  double load = L->nmoe ? log_moe(L, step, loss) : 0;
  fprintf(L->metrics, "}\n");
  flush_metrics(L);
  tb_scalar(L->tb, "train/loss", step, loss), tb_scalar(L->tb, "train/lr", step, lr);
  tb_scalar(L->tb, "train/grad_norm", step, norm), tb_scalar(L->tb, "train/tokens_per_s", step, toks / dt);
  if (L->o->quiet || (!L->tty && step % L->o->log_interval && step != L->max_steps && step != L->start + 1)) return;
  double el = rt_now() - L->t0, per = el / (double)(step - L->start);
  char eta[32];
  fmt_time(eta, sizeof eta, per * (double)(L->max_steps - step));
  /* model FLOPs: 6 per parameter a token runs (attention's excluded) */
  double tflops = 6.0 * (double)b->nparam_active * toks / dt / 1e12;
  char mfu[32] = "", imb[32] = "";
  if (L->nmoe) snprintf(imb, sizeof imb, " | load %.2f", load);   /* the busiest expert over a balanced one */
  if (L->o->peak_tflops > 0) snprintf(mfu, sizeof mfu, " (MFU %.1f%%)", 100 * tflops / (L->o->peak_tflops * b->world));
  printf("%sstep %5lld/%lld | loss %.4f%s | lr %.2e | norm %.3f | %.0f tok/s | %.3g TFLOP/s%s | %.0f ms/step | ETA %s%s",
         L->tty ? "\r\033[K" : "", (long long)step, (long long)L->max_steps, loss, imb, lr, norm, toks / dt, tflops, mfu,
         dt * 1e3, eta, L->tty && step % L->o->log_interval && step != L->max_steps ? "" : "\n");
  fflush(stdout);
}

static void eval_and_log(Loop *L, int64_t step) {
  double vl = eval_loss(L, L->o->eval_batches, L->rows);
  if (!L->metrics) return;
  char nb[32];
  fprintf(L->metrics, "{\"step\":%lld,\"val_loss\":%s}\n", (long long)step, jnum(nb, vl, 17));
  flush_metrics(L);
  tb_scalar(L->tb, "val/loss", step, vl);
  L->last_val = vl;
  if (!(vl >= L->best_val)) L->best_val = vl;
  if (!L->o->quiet) printf("%sstep %5lld | val loss %.4f\n", L->tty ? "\r\033[K" : "", (long long)step, vl), fflush(stdout);
}

/* What checkpoints record of the data (its name, token count and hash),
 * worked out once per run. */
static void data_identity(const Data *d, CkptInfo *info) {
  const char *base = strrchr(d->path, '/');
  info->data_ntok = d->ntok, info->data_hash = data_hash(d);
  snprintf(info->data, sizeof info->data, "%.255s", base ? base + 1 : d->path);
}

/* A save in flight put in place once every rank has written its part
 * (wait: waiting for them), then said; every rank calls this at the same
 * points (after each step, before a save, at the end). */
static void settle(Loop *L, bool wait) {
  CkptTimes t;
  int64_t step = ckpt_settle(L->r, wait, &t);
  if (!step) return;
  if (L->r->b->rank == 0 && L->o->keep > 0) ckpt_prune(L->ckpt_dir, L->o->keep);
  L->last_saved = step;
  if (!L->o->quiet)
    printf("%sstep %5lld | saved %s/step_%08lld (%.1f MiB: copied in %.2f s, then written in %.2f s beside training)\n",
           L->tty ? "\r\033[K" : "", (long long)step, L->ckpt_dir, (long long)step, t.bytes / (1 << 20), t.copy_s,
           t.write_s);
}

/* SIGTERM (a scheduler's notice before it ends a job) or SIGINT (^C):
 * the step under way finishes, a checkpoint of it is saved and the run
 * ends with 128 + the signal's number; a second one ends it at once. */
static volatile sig_atomic_t stop_signal;

static void on_stop(int sig) {
  stop_signal = sig;
  signal(sig, SIG_DFL);
}

static void catch_stops(void) {
  struct sigaction sa = {0};
  sa.sa_handler = on_stop;
  sa.sa_flags = SA_RESTART;   /* the metrics' writes and the waits go on */
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL), sigaction(SIGINT, &sa, NULL);
}

/* Whether to stop after this step: every rank's answer (any rank's signal). */
static int stop_now(Loop *L) {
  int sig = stop_signal;
  if (L->r->b->world == 1) return sig;
  bool none = comm_all(!sig);               /* the same verdict on every rank */
  return none ? 0 : sig ? sig : SIGTERM;    /* (SIGTERM: another rank's) */
}

/* Whether the run queues each step before the one before it ends (a
 * GPU's, exec.c; not while tracing, which opens before the step it
 * records) */
static bool queues_ahead(Loop *L) { return !L->o->trace && rt_can_ahead(L->r); }

/* Step `step`'s batch drawn and the step begun (run, or queued ahead) */
static void begin_step(Loop *L, int64_t step) {
  Bundle *b = L->r->b;
  data_train_batch(L->d, L->seed, step, b->train.batch, b->T, L->rows);
  rt_step_begin(L->r, my_rows(b, L->rows, L->rows + b->train.batch * (b->T + 1)), lr_at(&b->train, L->steps, step));
}

/* Every rank takes part: each pipeline stage copies out its shard, which
 * a thread writes while the next steps run. */
static void save(Loop *L, int64_t step) {
  CkptInfo info = L->data_id;
  info.step = step, info.seed = L->seed;
  settle(L, true);
  ckpt_save(L->r, L->ckpt_dir, &info);
}

/* Stopped by sig after step: saved (unless checkpoints are off) and said. */
static void stop_here(Loop *L, int sig, int64_t step) {
  if (L->o->save_interval > 0) save(L, step), settle(L, true);
  L->max_steps = step;
  if (L->o->quiet) return;
  printf("%sstopped by %s after step %lld", L->tty ? "\r\033[K" : "", sig == SIGINT ? "SIGINT" : "SIGTERM", (long long)step);
  if (L->last_saved == step) printf("; to go on: --resume %s/latest", L->ckpt_dir);
  printf("\n");
}

/* A resume on other data than the checkpoint's trained on is allowed
 * (fine-tuning) but said. */
static void check_data(Loop *L, const CkptInfo *was) {
  const CkptInfo now = L->data_id;
  if (was->data_ntok > 0 && L->r->b->rank == 0 && (was->data_ntok != now.data_ntok || was->data_hash != now.data_hash))
    fprintf(stderr, "lmrun: warning: the checkpoint was trained on other data (%s, %lld tokens) than %s (%lld tokens)\n",
            was->data, (long long)was->data_ntok, L->d->path, (long long)now.data_ntok);
}

/* On resume the metrics keep the lines up to the checkpoint's step and
 * drop later ones (steps a killed run logged after its last checkpoint
 * run again) and a torn last line; rewritten aside, then renamed. */
static void trim_metrics(const char *path, int64_t upto) {
  FILE *in = fopen(path, "r");
  if (!in) return;
  char tmp[1300], line[4096];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *out = fopen(tmp, "w");
  if (!out) rt_die("cannot write metrics file '%s': %s", tmp, strerror(errno));
  while (fgets(line, sizeof line, in)) {
    long long s;
    if (!strchr(line, '\n') || (sscanf(line, "{\"step\":%lld", &s) == 1 && s > upto)) continue;
    fputs(line, out);
  }
  fclose(in);
  if (fflush(out) || ferror(out) || fsync(fileno(out)) || fclose(out) || rename(tmp, path))
    rt_die("cannot write metrics file '%s': %s", tmp, strerror(errno));
}

static void open_metrics(Loop *L) {
  if (L->r->b->rank != 0) return;
  if (rt_mkdirs(L->o->out_dir) != 0)
    rt_die("cannot create the output folder '%s': %s", L->o->out_dir, strerror(errno));
  snprintf(L->metrics_path, sizeof L->metrics_path, "%s/metrics.jsonl", L->o->out_dir);
  if (L->start > 0) trim_metrics(L->metrics_path, L->start);
  L->metrics = fopen(L->metrics_path, L->start > 0 ? "a" : "w");
  if (!L->metrics) rt_die("cannot write metrics file '%s': %s", L->metrics_path, strerror(errno));
  L->tb = tb_open(L->o->out_dir, L->start);
}

/* Each rank's measured activation peak next to the plan, gathered to rank
 * 0, printed and logged. */
static void report_memory(Loop *L) {
  Run *r = L->r;
  Bundle *b = r->b;
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  enum { N = 7 };
  double mine[N] = {b->stage, r->max_inflight * rt_slot_bytes(r), b->slots * rt_slot_bytes(r),
                    r->max_inflight, ru.ru_maxrss / 1024.0, r->t_wait - L->wait0, L->t_steps};
  double *all = rt_xmalloc(N * b->world * sizeof(double));
  comm_gather(mine, N, all);
  for (int k = 0; L->metrics && k < b->world; k++) {
    double *m = all + N * k, mib = 1.0 / (1 << 20);
    fprintf(L->metrics, "{\"rank\":%d,\"stage\":%.0f,\"act_peak_bytes\":%.0f,\"act_planned_bytes\":%.0f,"
            "\"inflight\":%.0f,\"rss_mib\":%.1f,\"wait_s\":%.6f,\"steps_s\":%.6f}\n", k, m[0], m[1],
            m[2], m[3], m[4], m[5], m[6]);
    if (!L->o->quiet)
      printf("rank %d stage %.0f: activations peak %.1f MiB (%.0f microbatches in flight), planned %.1f MiB; "
             "peak RSS %.1f MiB\n", k, m[0], m[1] * mib, m[3], m[2] * mib, m[4]);
  }
  free(all);
}

/* What runs, where it writes: said once before the first step. */
static void banner(Loop *L) {
  Run *r = L->r;
  Bundle *b = r->b;
  double mib = 1.0 / (1 << 20), state = rt_state_bytes(r);
  char ep[32] = "", act[48] = "";
  if (b->mesh[3] > 1) snprintf(ep, sizeof ep, " x ep %d", b->mesh[3]);
  if (b->nparam_active < b->nparam_elems) snprintf(act, sizeof act, " (%.2fM active)", b->nparam_active / 1e6);
  printf("model %s: %.2fM params%s | batch %lld x seq %lld, %lld microbatch(es) | layout dp %d x tp %d x pp %d%s | "
         "backend %s%s%s%s\n", b->model, b->nparam_elems / 1e6, act, (long long)b->train.batch, (long long)b->T,
         (long long)b->train.microbatches, b->mesh[0], b->mesh[1], b->mesh[2], ep, r->be->name,
         !b->bf16 ? "" : r->typed ? ", bf16 plan and storage" : ", bf16 plan (rounded, fp32 storage)",
         r->graphs ? ", CUDA graphs" : "", queues_ahead(L) ? ", steps queued ahead" : "");
  char dev[160] = "", z[2][32];
  if (L->gpu)   /* (the plan's allocations made) */
    snprintf(dev, sizeof dev, " | %s: %s free of %s", L->device, rt_bytes(z[0], L->dev_free), rt_bytes(z[1], L->dev_total));
  printf("  memory planned per rank: %.1f MiB activations + %.1f MiB weights, gradients and Adam%s%s | data %s "
         "(%lld tokens)\n", b->slots * rt_slot_bytes(r) * mib, state * mib, b->ncasts ? " (and bf16 copies)" : "", dev,
         L->d->path, (long long)L->d->ntok);
  double jit;
  bool cold, saved;
  int programs, threads;
  cuda_jit_time(&jit, &cold, &programs, &threads, &saved);   /* (a CUDA backend's kernels, compiled by this process) */
  if (cold)
    printf("  kernels compiled by NVRTC in %.1f s (%d program%s on %d thread%s), %s\n", jit, programs,
           programs == 1 ? "" : "s", threads, threads == 1 ? "" : "s",
           saved ? "cached for later runs" : "not cached (the cache folder cannot be written)");
  if (L->peak_auto)
    printf("  MFU against %.0f TFLOP/s, the %s's dense bf16 peak (--peak-tflops X to set another)\n",
           L->o->peak_tflops, L->device);
  printf("  steps %lld..%lld | logs %s (and tb/)", (long long)L->start, (long long)L->max_steps, L->metrics_path);
  if (L->o->save_interval > 0) printf(" | checkpoints %s every %lld steps", L->ckpt_dir, (long long)L->o->save_interval);
  printf("\n");
  fflush(stdout);
}

static void summary(Loop *L) {
  Bundle *b = L->r->b;
  char took[32];
  fmt_time(took, sizeof took, rt_now() - L->t0);
  printf("done: %lld steps in %s, %.3g tokens", (long long)(L->max_steps - L->start), took,
         (double)b->train.batch * b->T * (double)(L->max_steps - L->start));
  if (L->o->eval_interval <= 0) printf(" | no validation (eval interval 0)");
  else printf(" | val loss %.4f (best %.4f)", L->last_val, L->best_val);
  if (L->last_saved) printf(" | last checkpoint %s/step_%08lld", L->ckpt_dir, (long long)L->last_saved);
  printf("\n");
  if (cuda_side_used()) printf("  the weights' gradient GEMMs ran on a second stream, beside the backward pass (from step 2)\n");
  if (cuda_gemms_in_parts())
    printf("  the weights' gradient GEMMs with few tiles ran in parts over the tokens (split-k; LMC_GEMM_SPLIT=0: whole)\n");
}

int train_run(Run *r, TrainOpts *o) {
  Bundle *b = r->b;
  Loop L = {.r = r, .o = o, .seed = o->seed >= 0 ? (uint64_t)o->seed : (uint64_t)b->train.seed};
  if (o->lr > 0) b->train.lr = o->lr;
  L.steps = o->steps > 0 ? o->steps : b->train.steps;
  L.max_steps = o->max_steps > 0 ? o->max_steps : L.steps;
  snprintf(L.ckpt_dir, sizeof L.ckpt_dir, "%s/ckpt", o->out_dir);
  int64_t rowsz = b->train.batch * (b->T + 1);
  if (b->rank != 0) o->quiet = true;
  L.d = data_load(o->data ? o->data : b->train.data, b->vocab, b->train.val_fraction, b->T + 1);
  data_identity(L.d, &L.data_id);
  if (!o->resume) rt_init_params(r, L.seed);   /* a resume loads every parameter this rank holds, and Adam's moments */
  if (o->init_hf && o->resume) rt_die("--init-hf starts a run; --resume continues one: give one of them");
  if (o->init_hf) {
    hf_import(r, o->init_hf);
    if (!o->quiet) printf("weights from %s\n", o->init_hf);
  }
  if (o->resume) {
    CkptInfo info;
    ckpt_load(r, o->resume, &info);
    L.start = info.step, L.seed = info.seed;
    check_data(&L, &info);
    if (!o->quiet) printf("resumed from %s at step %lld\n", o->resume, (long long)L.start);
  }
  const char *smoke = getenv("LMC_SMOKE_STEPS");   /* the docs' and examples' tests: every run short */
  if (smoke && atoll(smoke) > 0 && L.start + atoll(smoke) < L.max_steps) L.max_steps = L.start + atoll(smoke);
  if (L.start >= L.max_steps)
    rt_die("nothing to do: the run is at step %lld and --max-steps is %lld",
           (long long)L.start, (long long)L.max_steps);
  open_metrics(&L);
  L.rows = rt_xmalloc(2 * rowsz * sizeof(int32_t));   /* the batch, then this rank's rows */
  find_moe(&L);
  L.tty = !o->quiet && isatty(fileno(stdout));
  L.gpu = r->be->memory && r->be->memory(&L.dev_free, &L.dev_total, L.device, sizeof L.device);
  if (o->peak_tflops <= 0 && L.gpu && rt_peak_tflops(L.device) > 0) o->peak_tflops = rt_peak_tflops(L.device), L.peak_auto = true;
  L.best_val = L.last_val = NAN;
  if (!o->quiet) banner(&L);
  if (o->save_interval > 0) ckpt_reserve(r);
  L.t0 = rt_now();
  catch_stops();
  int stop = 0;
  bool ahead = false;   /* this trip's step was begun in the trip before */
  bool may_ahead = queues_ahead(&L);
  double t_end = 0;     /* when the step before ended */
  for (int64_t step = L.start; step < L.max_steps; step++) {
    double t = ahead ? t_end : rt_now(), norm = 0, lr = lr_at(&b->train, L.steps, step);
    if (o->trace && step == L.start + 1) rt_trace_open(r, o->trace);   /* the first step warms up */
    r->a2a_sent = 0;
    if (!ahead) begin_step(&L, step);
    bool last = step + 1 == L.max_steps;
    bool evaluating = o->eval_interval > 0 && ((step + 1) % o->eval_interval == 0 || last);
    bool saving = o->save_interval > 0 && ((step + 1) % o->save_interval == 0 || last);
    /* the next step queued before this one ends (a GPU's, exec.c), where
     * nothing between them needs the device: no evaluation, save or stop
     * (the ranks agree on that now, while this step runs) */
    bool agree_now = may_ahead && !last && !evaluating && !saving;
    if (agree_now) stop = stop_now(&L);
    if ((ahead = agree_now && !stop)) begin_step(&L, step + 1);
    double loss = rt_step_finish(r, &norm);
    t_end = rt_now();
    if (o->trace && (step == L.start + o->trace_steps || step + 1 == L.max_steps)) rt_trace_close(r, o->trace);
    if (step > L.start) L.t_steps += t_end - t;
    else L.wait0 = r->t_wait;                  /* the first step warms up: not counted */
    settle(&L, false);
    if (!isfinite(loss)) rt_die("loss is %g at step %lld: training diverged (lower the lr?)", loss, (long long)step + 1);
    log_step(&L, step + 1, loss, lr, norm, t_end - t);
    if (evaluating) eval_and_log(&L, step + 1);
    if (!last && !ahead && (stop || (stop = stop_now(&L)))) {   /* (a signal during a step queued ahead: after that one) */
      stop_here(&L, stop, step + 1);
      break;
    }
    if (saving) save(&L, step + 1);
  }
  settle(&L, true);
  ckpt_release();
  report_memory(&L);
  if (!o->quiet) summary(&L);
  tb_close(L.tb);
  if (L.metrics) {
    flush_metrics(&L);
    if (fclose(L.metrics)) rt_die("cannot write metrics file '%s': %s", L.metrics_path, strerror(errno));
  }
  free(L.rows), free(L.moe);
  data_free(L.d);
  return stop ? 128 + stop : 0;
}

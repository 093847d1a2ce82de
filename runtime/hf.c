/* hf.c: Llama weights in the Hugging Face layout. Out (--export-hf DIR):
 * config.json (LlamaForCausalLM) and model.safetensors with HF tensor
 * names, float32. In (--init-hf DIR): model.safetensors, or the shards a
 * model.safetensors.index.json names, in F32, F64, BF16 or F16, into the
 * run's parameters by those names. lmc's Llama blocks keep HF's [out, in]
 * layouts, so a tensor maps one to one; only the head dims are merged
 * (q_proj [H, K, D] is HF's [H*K, D]). Every parameter must be found with
 * its size; tensors lmc has no use for (rotary caches) are skipped. */
#include "lmrt.h"
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* lmc's names in models/blocks/llama.lm and the presets -> HF names. */
static const char *names[][2] = {
    {"tok_embed", "model.embed_tokens.weight"}, {"final_norm", "model.norm.weight"},
    {"lm_head", "lm_head.weight"}, {"attn_norm", "input_layernorm.weight"},
    {"mlp_norm", "post_attention_layernorm.weight"}, {"q_proj", "self_attn.q_proj.weight"},
    {"k_proj", "self_attn.k_proj.weight"}, {"v_proj", "self_attn.v_proj.weight"},
    {"o_proj", "self_attn.o_proj.weight"}, {"gate_proj", "mlp.gate_proj.weight"},
    {"up_proj", "mlp.up_proj.weight"}, {"down_proj", "mlp.down_proj.weight"}};

/* MoE layers (models/blocks/mixtral.lm, or experts = E): Mixtral's names,
 * one tensor per expert. */
static const char *moe_names[][2] = {
    {"router", "block_sparse_moe.gate.weight"}, {"gate_proj", "block_sparse_moe.experts.%d.w1.weight"},
    {"up_proj", "block_sparse_moe.experts.%d.w3.weight"}, {"down_proj", "block_sparse_moe.experts.%d.w2.weight"}};

static const char *base_name(const char *lmc, int *layer) {
  *layer = -1;
  if (!strncmp(lmc, "layers.", 7) && strchr(lmc + 7, '.')) return *layer = atoi(lmc + 7), strchr(lmc + 7, '.') + 1;
  return lmc;
}

static bool hf_name(const char *lmc, char *out, size_t n) {
  int layer;
  const char *base = base_name(lmc, &layer);
  for (size_t i = 0; i < sizeof names / sizeof *names; i++)
    if (!strcmp(base, names[i][0])) {
      if (layer >= 0) snprintf(out, n, "model.layers.%d.%s", layer, names[i][1]);
      else snprintf(out, n, "%s", names[i][1]);
      return true;
    }
  return false;
}

/* How many HF tensors a parameter is: an expert weight [E, out, in] is
 * E of them, anything else one. */
static bool is_expert(const RtParam *p) {
  int layer;
  const char *base = base_name(p->name, &layer);
  return p->rank == 3 && layer >= 0 && (!strcmp(base, "gate_proj") || !strcmp(base, "up_proj") || !strcmp(base, "down_proj"));
}

int64_t hf_parts(const RtParam *p) { return is_expert(p) ? p->shape[0] : 1; }

/* The HF name of part `part` of p: its expert's tensor, a router's, or
 * hf_name's. */
bool hf_part_name(const RtParam *p, int64_t part, char *out, size_t n) {
  int layer;
  const char *base = base_name(p->name, &layer);
  if (layer >= 0 && (is_expert(p) || !strcmp(base, "router")))
    for (size_t i = 0; i < sizeof moe_names / sizeof *moe_names; i++)
      if (!strcmp(base, moe_names[i][0])) {
        char fmt[160];
        snprintf(fmt, sizeof fmt, "model.layers.%d.%s", layer, moe_names[i][1]);
        snprintf(out, n, fmt, (int)part);
        return true;
      }
  return hf_name(p->name, out, n);
}

/* HF's 2-D shape of a parameter: o_proj merges its trailing dims, the
 * other projections their leading ones. */
static int hf_shape(const RtParam *p, int64_t *s) {
  if (is_expert(p)) {   /* one expert's [out, in] */
    s[0] = p->shape[1], s[1] = p->shape[2];
    return 2;
  }
  if (p->rank <= 2) {
    for (int i = 0; i < p->rank; i++) s[i] = p->shape[i];
    return p->rank;
  }
  bool trailing = strstr(p->name, "o_proj") != NULL;
  s[0] = trailing ? p->shape[0] : p->numel / p->shape[p->rank - 1];
  s[1] = trailing ? p->numel / p->shape[0] : p->shape[p->rank - 1];
  return 2;
}

static RtParam *find_param(Bundle *b, const char *name, int *idx) {
  for (int i = 0; i < b->nparams; i++)
    if (!strcmp(b->params[i].name, name)) return *idx = i, &b->params[i];
  return NULL;
}

/* ---- export ---- */

static void write_or_die(FILE *f, const void *p, size_t n, const char *path) {
  if (n && fwrite(p, 1, n, f) != n) rt_die("cannot write '%s': %s", path, strerror(errno));
}

static double first_attr(Bundle *b, int op, bool theta) {
  for (int i = 0; i < b->nfwd; i++)
    if (b->fwd[i].op == op) return theta ? b->fwd[i].theta : b->fwd[i].eps;
  return theta ? 10000.0 : 1e-5;
}

static void write_config(Run *r, const char *dir) {
  Bundle *b = r->b;
  int i;
  RtParam *q = find_param(b, "layers.0.q_proj", &i), *k = find_param(b, "layers.0.k_proj", &i),
          *g = find_param(b, "layers.0.gate_proj", &i), *e = find_param(b, "tok_embed", &i),
          *h = find_param(b, "lm_head", &i);
  if (!q || !k || !g || !e || !h || q->rank != 3 || k->rank != 3)
    rt_die("--export-hf writes Llama models (the parameters of models/blocks/llama.lm and an untied lm_head)");
  int layers = 0, moe = 0;
  for (char nm[64]; snprintf(nm, sizeof nm, "layers.%d.q_proj", layers), find_param(b, nm, &i); layers++) {
    snprintf(nm, sizeof nm, "layers.%d.router", layers);
    moe += find_param(b, nm, &i) != NULL;
  }
  if (moe && moe != layers)
    rt_die("--export-hf: %d of the %d layers are MoE layers; Hugging Face's Mixtral has them in every layer", moe, layers);
  char path[1200];
  snprintf(path, sizeof path, "%s/config.json", dir);
  FILE *f = fopen(path, "w");
  if (!f) rt_die("cannot write '%s': %s", path, strerror(errno));
  const RtInst *route = NULL;
  for (int j = 0; j < b->nfwd && moe; j++)
    if (b->fwd[j].op == OP_MOE_ROUTE && !route) route = &b->fwd[j];
  if (moe)
    fprintf(f, "{\n  \"architectures\": [\"MixtralForCausalLM\"],\n  \"model_type\": \"mixtral\",\n"
            "  \"num_local_experts\": %lld,\n  \"num_experts_per_tok\": %lld,\n  \"router_aux_loss_coef\": %g,\n",
            (long long)g->shape[0], route ? (long long)route->top : 2, route ? route->aux : 0.0);
  else
    fprintf(f, "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"model_type\": \"llama\",\n");
  fprintf(f, "  \"vocab_size\": %lld,\n  \"hidden_size\": %lld,\n  \"intermediate_size\": %lld,\n"
          "  \"num_hidden_layers\": %d,\n  \"num_attention_heads\": %lld,\n  \"num_key_value_heads\": %lld,\n"
          "  \"head_dim\": %lld,\n  \"rms_norm_eps\": %g,\n  \"rope_theta\": %g,\n  \"max_position_embeddings\": %lld,\n"
          "  \"hidden_act\": \"silu\",\n  \"tie_word_embeddings\": false,\n  \"attention_bias\": false,\n"
          "  \"mlp_bias\": false,\n  \"torch_dtype\": \"float32\"\n}\n",
          (long long)e->shape[0], (long long)e->shape[1], (long long)g->shape[g->rank == 3], layers, (long long)q->shape[0],
          (long long)k->shape[0], (long long)q->shape[1], first_attr(b, OP_RMSNORM, false),
          first_attr(b, OP_ROPE, true), (long long)b->T);
  if (fclose(f)) rt_die("cannot write '%s': %s", path, strerror(errno));
}

void hf_export(Run *r, const char *dir) {
  Bundle *b = r->b;
  if (b->world > 1) rt_die("--export-hf runs on one rank (a checkpoint of any layout loads into a one-rank bundle)");
  if (rt_mkdirs(dir)) rt_die("cannot create '%s': %s", dir, strerror(errno));
  write_config(r, dir);
  size_t cap = 4096 + (size_t)b->nparams * 200, hn = 0;
  char *hdr = rt_xmalloc(cap);
  hn += snprintf(hdr + hn, cap - hn, "{\"__metadata__\":{\"format\":\"pt\"}");
  int64_t off = 0;
  for (int p = 0; p < b->nparams; p++) {
    RtParam *pp = &b->params[p];
    int64_t s[6], parts = hf_parts(pp), per = pp->numel / parts;
    int rank = hf_shape(pp, s);
    for (int64_t part = 0; part < parts; part++) {
      char name[256];
      if (!hf_part_name(pp, part, name, sizeof name))
        rt_die("--export-hf: parameter '%s' has no Hugging Face Llama or Mixtral name", pp->name);
      if (hn + 512 > cap) hdr = realloc(hdr, cap *= 2);
      if (!hdr) rt_die("out of memory");
      hn += snprintf(hdr + hn, cap - hn, ",\"%s\":{\"dtype\":\"F32\",\"shape\":[", name);
      for (int d = 0; d < rank; d++) hn += snprintf(hdr + hn, cap - hn, "%s%lld", d ? "," : "", (long long)s[d]);
      hn += snprintf(hdr + hn, cap - hn, "],\"data_offsets\":[%lld,%lld]}", (long long)off, (long long)(off + 4 * per));
      off += 4 * per;
    }
  }
  hn += snprintf(hdr + hn, cap - hn, "}");
  while (hn % 8) hdr[hn++] = ' ';   /* the data starts 8-byte aligned */
  char path[1200];
  snprintf(path, sizeof path, "%s/model.safetensors", dir);
  FILE *f = fopen(path, "wb");
  if (!f) rt_die("cannot write '%s': %s", path, strerror(errno));
  uint64_t len = hn;
  write_or_die(f, &len, 8, path), write_or_die(f, hdr, hn, path);
  for (int p = 0; p < b->nparams; p++) {
    int64_t n = b->params[p].numel;
    double *x = rt_xmalloc(n * sizeof *x);
    float *y = rt_xmalloc(n * sizeof *y);
    rt_get_param(r, p, x);
    for (int64_t i = 0; i < n; i++) y[i] = (float)x[i];
    write_or_die(f, y, n * sizeof *y, path);
    free(x), free(y);
  }
  if (fclose(f)) rt_die("cannot write '%s': %s", path, strerror(errno));
  free(hdr);
}

/* ---- import: a minimal reader of safetensors' JSON header ---- */

typedef struct Entry {
  char name[256], dtype[16];
  int64_t shape[8], begin, end;
  int rank;
} Entry;

static const char *skip_ws(const char *p) {
  while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r') p++;
  return p;
}

static const char *string(const char *p, char *out, size_t n) {   /* p at '"' */
  if (*p != '"') return NULL;
  size_t k = 0;
  for (p++; *p && *p != '"'; p++) {
    if (*p == '\\' && p[1]) p++;
    if (k + 1 < n) out[k++] = *p;
  }
  out[k] = 0;
  return *p == '"' ? p + 1 : NULL;
}

static const char *ints(const char *p, int64_t *v, int max, int *n) {   /* p at '[' */
  if (*p != '[') return NULL;
  *n = 0;
  p = skip_ws(p + 1);
  while (*p && *p != ']') {
    char *e;
    long long x = strtoll(p, &e, 10);
    if (e == p || *n >= max || x < 0) return NULL;
    v[(*n)++] = x;
    p = skip_ws(e);
    if (*p == ',') p = skip_ws(p + 1);
  }
  return *p == ']' ? p + 1 : NULL;
}

static const char *skip_value(const char *p) {   /* objects and arrays, nested */
  int depth = 0;
  do {
    if (*p == '"') {
      char tmp[8];
      p = string(p, tmp, sizeof tmp);
      if (!p) return NULL;
      continue;
    }
    if (*p == '{' || *p == '[') depth++;
    else if (*p == '}' || *p == ']') depth--;
    else if (!*p) return NULL;
    p++;
  } while (depth > 0);
  return p;
}

/* The entries of a header, or NULL when it is not one. */
static Entry *parse_header(const char *h, int *count) {
  Entry *es = NULL;
  int n = 0;
  const char *p = skip_ws(h);
  if (*p++ != '{') return NULL;
  for (p = skip_ws(p); *p && *p != '}';) {
    Entry e = {0};
    if (!(p = string(p, e.name, sizeof e.name))) goto bad;
    p = skip_ws(p);
    if (*p++ != ':') goto bad;
    p = skip_ws(p);
    if (!strcmp(e.name, "__metadata__")) {
      if (!(p = skip_value(p))) goto bad;
    } else {
      if (*p++ != '{') goto bad;
      for (p = skip_ws(p); *p && *p != '}';) {
        char key[32];
        int k;
        int64_t offs[2];
        if (!(p = string(p, key, sizeof key))) goto bad;
        p = skip_ws(p);
        if (*p++ != ':') goto bad;
        p = skip_ws(p);
        if (!strcmp(key, "dtype")) p = string(p, e.dtype, sizeof e.dtype);
        else if (!strcmp(key, "shape")) p = ints(p, e.shape, 8, &e.rank);
        else if (!strcmp(key, "data_offsets")) {
          p = ints(p, offs, 2, &k);
          if (p && k != 2) goto bad;
          e.begin = offs[0], e.end = offs[1];
        } else p = skip_value(p);
        if (!p) goto bad;
        p = skip_ws(p);
        if (*p == ',') p = skip_ws(p + 1);
      }
      if (*p++ != '}') goto bad;
      es = realloc(es, (n + 1) * sizeof *es);
      es[n++] = e;
    }
    p = skip_ws(p);
    if (*p == ',') p = skip_ws(p + 1);
  }
  *count = n;
  return es;
bad:
  free(es);
  return NULL;
}

static double value_at(const unsigned char *p, const char *dtype, int64_t i) {
  if (!strcmp(dtype, "F64")) { double d; memcpy(&d, p + 8 * i, 8); return d; }
  if (!strcmp(dtype, "F32")) { float f; memcpy(&f, p + 4 * i, 4); return f; }
  uint16_t h;
  memcpy(&h, p + 2 * i, 2);
  if (!strcmp(dtype, "BF16")) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
  }
  int e = (h >> 10) & 0x1f, m = h & 0x3ff;   /* F16 */
  double v = e == 0 ? m * ldexp(1, -24) : e == 31 ? (m ? NAN : INFINITY) : (1 + m / 1024.0) * ldexp(1, e - 15);
  return h & 0x8000 ? -v : v;
}

static int elem_size(const char *dtype) {
  return !strcmp(dtype, "F64") ? 8 : !strcmp(dtype, "F32") ? 4 : !strcmp(dtype, "BF16") || !strcmp(dtype, "F16") ? 2 : 0;
}

static unsigned char *slurp(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) rt_die("cannot open '%s': %s", path, strerror(errno));
  struct stat st;
  if (fstat(fileno(f), &st)) rt_die("cannot read '%s'", path);
  *n = st.st_size;
  unsigned char *b = rt_xmalloc(*n + 1);
  if (fread(b, 1, *n, f) != *n) rt_die("cannot read '%s'", path);
  fclose(f);
  return b;
}

/* What an import holds while it runs, for hf_abandon after a caught error
 * (the fuzz target; lmrun exits). */
static struct {
  unsigned char *buf;
  char *hdr;
  Entry *es;
  double *x;
  int64_t *done;          /* per parameter: its HF tensors loaded */
} pending;

void hf_abandon(void) {
  free(pending.buf), free(pending.hdr), free(pending.es), free(pending.x), free(pending.done);
  memset(&pending, 0, sizeof pending);
}

/* Loads the parameters one file holds; marks them in done. */
static void import_file(Run *r, const char *path, int64_t *done) {
  Bundle *b = r->b;
  size_t n;
  unsigned char *buf = pending.buf = slurp(path, &n);
  uint64_t hl;
  if (n < 8 || (memcpy(&hl, buf, 8), hl > n - 8)) rt_die("'%s' is not a safetensors file", path);
  char *h = pending.hdr = rt_xmalloc(hl + 1);
  memcpy(h, buf + 8, hl);
  int ne = 0;
  Entry *es = pending.es = parse_header(h, &ne);
  if (!es) rt_die("'%s' is not a safetensors file (bad header)", path);
  const unsigned char *data = buf + 8 + hl;
  size_t avail = n - 8 - hl;
  for (int p = 0; p < b->nparams; p++) {
    RtParam *pp = &b->params[p];
    int64_t parts = hf_parts(pp), per = pp->numel / parts;
    for (int64_t part = 0; part < parts; part++) {
      char name[256];
      if (!hf_part_name(pp, part, name, sizeof name))
        rt_die("--init-hf: parameter '%s' has no Hugging Face Llama or Mixtral name", pp->name);
      for (int k = 0; k < ne; k++) {
        Entry *e = &es[k];
        if (strcmp(e->name, name)) continue;
        int esz = elem_size(e->dtype);
        int64_t numel = 1, s[6];
        for (int d = 0; d < e->rank; d++) numel *= e->shape[d];
        int rank = hf_shape(pp, s);
        bool same = rank == e->rank;
        for (int d = 0; same && d < rank; d++) same = s[d] == e->shape[d];
        if (!esz) rt_die("'%s': tensor %s has dtype %s (F32, F64, BF16 or F16 are read)", path, name, e->dtype);
        if (!same || numel != per)
          rt_die("'%s': tensor %s has %lld elements in another shape than %s's %lld", path, name, (long long)numel,
                 pp->name, (long long)per);
        if (e->end < e->begin || (uint64_t)(e->end - e->begin) != (uint64_t)numel * esz || (uint64_t)e->end > avail)
          rt_die("'%s': tensor %s's data lies outside the file", path, name);
        if (pp->value >= 0) {   /* an expert's part may come from another shard than its neighbours' */
          double *x = pending.x = rt_xmalloc(pp->numel * sizeof *x);
          if (parts > 1) rt_get_param(r, p, x);
          for (int64_t i = 0; i < per; i++) x[part * per + i] = value_at(data + e->begin, e->dtype, i);
          rt_set_param(r, p, x);
          free(x), pending.x = NULL;
        }
        done[p]++;
        break;
      }
    }
  }
  free(es), free(h), free(buf);
  pending.es = NULL, pending.hdr = NULL, pending.buf = NULL;
}

void hf_import(Run *r, const char *dir) {
  Bundle *b = r->b;
  if (b->world > 1) rt_die("--init-hf runs on one rank (save a checkpoint, then resume it in any layout)");
  int64_t *done = pending.done = calloc(b->nparams, sizeof *done);
  if (!done) rt_die("out of memory");
  char path[1200];
  snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
  struct stat st;
  if (stat(path, &st) == 0) {   /* shards: every file the weight map names, once */
    size_t n;
    char *idx = (char *)slurp(path, &n), *seen = rt_xmalloc(n + 2);
    for (char *p = strstr(idx, "\"weight_map\""); p && (p = strstr(p, ".safetensors\""));) {
      char *q = p;
      while (q > idx && q[-1] != '"') q--;
      char file[512];
      snprintf(file, sizeof file, "%.*s.safetensors", (int)(p - q), q);
      p += 13;
      if (strstr(seen, file)) continue;
      strcat(strcat(seen, file), "|");
      snprintf(path, sizeof path, "%s/%s", dir, file);
      import_file(r, path, done);
    }
    free(idx), free(seen);
  } else {
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    import_file(r, path, done);
  }
  for (int p = 0; p < b->nparams; p++) {
    char name[256];
    int64_t parts = hf_parts(&b->params[p]);
    hf_part_name(&b->params[p], done[p] < parts ? done[p] : 0, name, sizeof name);
    if (!done[p]) rt_die("'%s' has no tensor %s (for %s)", dir, name, b->params[p].name);
    if (done[p] < parts)
      rt_die("'%s' has %lld of the %lld expert tensors of %s (like %s)", dir, (long long)done[p], (long long)parts,
             b->params[p].name, name);
  }
  free(done), pending.done = NULL;
}

#!/bin/sh
# The GPU benchmark: lmc's training step against PyTorch's (bench/anchors/)
# on the same GPU in the same run, for GPT-2 124M (B=8, T=1024; and B=4,
# T=64, where launches dominate), llama-small and llama-large (B=8,
# T=2048), each in fp32 storage and (column lmc-cuda-bf16) under
# `precision = bf16` (GPT-2 also with the LM head that recomputes its
# logits, --fuse=recompute, column lmc-cuda-bf16-recompute, beside the
# default head_dl; GPT-2 and llama-large also with their GEMMs' algorithms
# timed, LMC_GEMM_TUNE=1, column lmc-cuda-bf16-tuned);
# and lmc's MoE (8 experts, top 2) against its dense
# twin with the same parameters per token. For each lmc run bench_train prints the
# NVRTC time (cold the first time a model's kernels are compiled, warm
# when the cubin cache has them), tokens/s, achieved FLOP/s over the
# cuBLASLt rate measured right there, a per-op profile and device
# memory against the plan; each PyTorch run prints its own line. First
# comes attention alone (bench_attention: lmc's flash attention forward
# and backward at llama-large's and GPT-2's shapes and at head dim 128 in
# bf16 storage, beside
# PyTorch's scaled_dot_product_attention). A table of tokens/s and the
# ratios comes last.
#
# Usage: bench/gpu.sh [BIN]   BIN holds lmc and bench_train (default: .gpu/bin
#        as scripts/gpu_check.sh --pack leaves it, else build/)
# Env:   LMC_BENCH_ATTENTION_ONLY=1: attention alone, nothing else;
#        LMC_BENCH_QUICK=1: the issue's targets in bf16, GPT-2 B=8 T=1024
#        (lmc; with attention's default kernels untuned, column
#        lmc-cuda-bf16-untuned; with the norms'
#        backward apart from the kernels lmc writes, lmc-cuda-bf16-nbapart;
#        with every GEMM on one stream, lmc-cuda-bf16-onestream; with
#        the host waiting for each step, lmc-cuda-bf16-waited; with the
#        weights' gradient GEMMs whole, lmc-cuda-bf16-whole;
#        PyTorch bf16 + torch.compile) and llama-large (untuned and
#        whole; torch.compile last), and the MoE rows;
#        PYTHON (default python3)
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-}
[ -n "$bin" ] || { [ -x "$root/.gpu/bin/bench_train" ] && bin=$root/.gpu/bin; } || bin=$root/build
[ -x "$bin/bench_train" ] || bin=$root/build/bench
lmc=$(ls "$bin/lmc" "$root/build/compiler/lmc" 2>/dev/null | head -1)
bench=$(ls "$bin/bench_train" "$root/build/bench/bench_train" 2>/dev/null | head -1)
py=${PYTHON:-python3}
# each row's start in seconds from gpu_check's start (or this script's)
LMC_CHECK_T0=${LMC_CHECK_T0:-$(date +%s)}
elapsed() { echo "(at $(( $(date +%s) - LMC_CHECK_T0 )) s)"; }
work=$(mktemp -d "${TMPDIR:-/tmp}/lmc-gpu-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
# a cubin cache of its own: each model's first row compiles its kernels
# (NVRTC cold), the next rows of the model load them (warm)
export XDG_CACHE_HOME="$work/cache"
table=$work/table
: > "$table"
torch_ok=0
$py -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null && torch_ok=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw --format=csv,noheader

# lmc ROW BACKEND[:COLUMN] STEPS SPEC [--set ...]: bench_train on a bundle of
# SPEC (with the environment $rowenv, when set)
rowenv=
# Attention on wgmma has not met a GPU yet, and the attention tuner
# (runtime/cuda.c: on by default on a GPU) runs it beside the other
# kernels: once a run times out (a hang: rc 124), the tuner is off for the
# rest (LMC_ATTENTION_TUNE=0), rather than each run waiting out its own
# timeout
hang() {   # hang RC: after a run with the tuner on
  [ "$1" = 124 ] || return 0
  export LMC_ATTENTION_TUNE=0
  echo "bench: a run timed out (a hang?): attention's tuner is off from here, each op on its default kernels"
}
lmc_row() {
  row=$1 be=${2%%:*} col=${2#*:} steps=$3 spec=$4
  shift 4
  echo "== lmc $row ($col)${rowenv:+ $rowenv} $(elapsed)"
  "$lmc" "$root/models/$spec.lm" -q -o "$work/b" "$@" || return
  out=$(env $rowenv timeout 300 "$bench" "$work/b" "$steps" "$be" 2>&1)
  rc=$?
  echo "$out"
  hang $rc
  tps=$(echo "$out" | sed -n 's/.*| \([0-9]*\) tokens\/s |.*/\1/p')
  echo "$row lmc-$col ${tps:-failed}" >> "$table"
}

# torch ROW MODE SCRIPT ARGS...: one anchor run
torch_row() {
  row=$1 mode=$2 script=$3
  shift 3
  [ $torch_ok = 1 ] || { echo "$row torch-$mode no-torch" >> "$table"; return; }
  echo "== torch $row ($mode) $(elapsed)"
  out=$(env -u LD_LIBRARY_PATH PYTHONUNBUFFERED=1 timeout 300 $py "$root/bench/anchors/$script" "$@" 2>&1 | tail -3)
  echo "$out"
  tps=$(echo "$out" | sed -n 's/.* \([0-9]*\) tok\/s .*/\1/p' | tail -1)
  echo "$row torch-$mode ${tps:-failed}" >> "$table"
}

# attention ROW SPEC B T H G K [--set ...]: lmc's attention kernels and PyTorch's SDPA at one shape
attention_row() {
  row=$1 spec=$2 b=$3 t=$4 h=$5 g=$6 k=$7
  shift 7
  echo "== attention $row $(elapsed)"
  # tuned (the default on a GPU): its first call times every kernel the
  # bundle has for the forward, dQ and dK/dV (the mma.sync variants, wgmma
  # at 1 to 3 warpgroups, checked against the default's outputs first),
  # and the launch order a head at a time, and says each one's time; the
  # 20 timed calls run its picks
  "$lmc" "$root/models/$spec.lm" -q -o "$work/a" --set batch="$b" --set seq="$t" --set precision=bf16 "$@" &&
    timeout 120 "$(dirname "$bench")/bench_attention" "$work/a" 20 cuda 2>&1
  hang $?
  # and the defaults, untuned (LMC_ATTENTION_TUNE=0; any one kernel by the
  # knobs: LMC_ATTENTION_WGMMA=1 LMC_ATTENTION_WARPGROUPS=N, _ROWS, _STAGES,
  # _DKV_QT, _SECTION, docs/reference.md)
  LMC_ATTENTION_TUNE=0 timeout 120 "$(dirname "$bench")/bench_attention" "$work/a" 20 cuda 2>&1
  [ $torch_ok = 1 ] && env -u LD_LIBRARY_PATH timeout 120 $py "$root/bench/attention_torch.py" "$b" "$t" "$h" "$g" "$k" 20 2>&1 | tail -3
}
attention_row llama-large-B8-T2048 llama-large 8 2048 16 4 96
attention_row gpt2-B8-T1024 gpt2-124m 8 1024 12 12 64
# head dim 128 (Llama 7B's; llama-large's width in 12 heads): the default and wgmma beside SDPA
attention_row llama-k128-B8-T2048 llama-large 8 2048 12 4 128 --set H=12 --set G=4
[ "${LMC_BENCH_ATTENTION_ONLY:-0}" = 1 ] && exit 0

# the host's sort of a batch's ids for the embedding backward, counting
# sort against the qsort before (run 16's steps were 1.0 and 1.3 ms over
# their device time, about that sort on this host's cores)
if [ -x "$(dirname "$bench")/bench_order" ]; then
  echo "== the host's order of a batch's ids (bench_order) $(elapsed)"
  timeout 60 "$(dirname "$bench")/bench_order" 100 2>&1
fi
gpt="--set batch=8 --set seq=1024"
# MoE on the GPU against its dense twin (same active parameters; no PyTorch anchor for MoE)
moe="--set D=512 --set H=8 --set G=2 --set L=8 --set batch=8 --set seq=1024"
if [ "${LMC_BENCH_QUICK:-0}" = 1 ]; then   # the issue's two targets in bf16, each beside torch.compile
  # (with what cuBLASLt picks for each GEMM: the weight gradients with
  # the BGRAD epilogue ran at 346 TFLOP/s in run 16; the GEMMs without
  # the backward's epilogues, LMC_GEMM_BACKWARD_EPILOGUES=0, timed in run
  # 16 and no faster, are no longer run here)
  rowenv=LMC_GEMM_SHOW=1
  lmc_row gpt2-B8-T1024 cuda-medium:cuda-bf16 5 gpt2-124m $gpt --set precision=bf16
  # (attention's kernels untuned: the defaults; the tuned row above says
  # what each kernel took, wgmma's included, at this shape)
  rowenv=LMC_ATTENTION_TUNE=0
  lmc_row gpt2-B8-T1024 cuda-medium:cuda-bf16-untuned 5 gpt2-124m $gpt --set precision=bf16
  rowenv=
  # (the norms' backward by kernels.cu's three launches instead of the two kernels lmc writes for it)
  lmc_row gpt2-B8-T1024 cuda-medium:cuda-bf16-nbapart 5 gpt2-124m $gpt --set precision=bf16 --groups=add_norm,elementwise
  # (every GEMM on one stream: the weights' gradient GEMMs not beside the rest of the backward pass)
  rowenv=LMC_SIDE_STREAM=0
  lmc_row gpt2-B8-T1024 cuda-medium:cuda-bf16-onestream 5 gpt2-124m $gpt --set precision=bf16
  # (the host waiting for each step before it queues the next, as through run 16)
  rowenv=LMC_STEPS_AHEAD=0
  lmc_row gpt2-B8-T1024 cuda-medium:cuda-bf16-waited 5 gpt2-124m $gpt --set precision=bf16
  # (the weights' gradient GEMMs whole, as through run 16, not in the parts runtime/ltplan.c's model picks)
  rowenv=LMC_GEMM_SPLIT=0
  lmc_row gpt2-B8-T1024 cuda-medium:cuda-bf16-whole 5 gpt2-124m $gpt --set precision=bf16
  rowenv=
  torch_row gpt2-B8-T1024 bf16c torch_gpt2.py 8 1024 bf16c 10
  rowenv=LMC_GEMM_SHOW=1   # (which of its weight gradients run in parts, and cuBLASLt's picks)
  lmc_row llama-large-B8-T2048 cuda-medium:cuda-bf16 3 llama-large --set precision=bf16
  rowenv=LMC_ATTENTION_TUNE=0
  lmc_row llama-large-B8-T2048 cuda-medium:cuda-bf16-untuned 3 llama-large --set precision=bf16
  rowenv=LMC_GEMM_SPLIT=0
  lmc_row llama-large-B8-T2048 cuda-medium:cuda-bf16-whole 3 llama-large --set precision=bf16
  rowenv=
  lmc_row moe-8x2-D512 cuda-medium:cuda-bf16 5 moe-tiny $moe --set F=688 --set precision=bf16
  # (a GEMM a segment, LMC_MOE_GROUPED=0: 0.61x the grouped GEMMs in run 16, and the weight gradients
  # split in 3, LMC_MOE_SPLIT=3, which runtime/cuda.c's model says is slower here, no longer run here)
  rowenv=
  lmc_row dense-twin-D512 cuda-medium:cuda-bf16 5 tiny $moe --set F=1376 --set precision=bf16
  # last: its compilation is the longest wait (a minute or more)
  torch_row llama-large-B8-T2048 bf16c torch_llama.py 1536 24 16 4 4096 32000 8 2048 bf16c 5
else
  lmc_row gpt2-B8-T1024 cuda 5 gpt2-124m $gpt
  lmc_row gpt2-B8-T1024 cuda-high 5 gpt2-124m $gpt
  lmc_row gpt2-B8-T1024 cuda-medium 5 gpt2-124m $gpt
  lmc_row gpt2-B8-T1024 cuda-medium:cuda-bf16 5 gpt2-124m $gpt --set precision=bf16
  lmc_row gpt2-B8-T1024 cuda-medium:cuda-bf16-recompute 5 gpt2-124m $gpt --set precision=bf16 --fuse=recompute
  rowenv=LMC_GEMM_TUNE=1
  lmc_row gpt2-B8-T1024 cuda-medium:cuda-bf16-tuned 5 gpt2-124m $gpt --set precision=bf16
  rowenv=
  torch_row gpt2-B8-T1024 fp32 torch_gpt2.py 8 1024 fp32 10
  torch_row gpt2-B8-T1024 tf32 torch_gpt2.py 8 1024 tf32 10
  torch_row gpt2-B8-T1024 bf16 torch_gpt2.py 8 1024 bf16 10
  torch_row gpt2-B8-T1024 bf16c torch_gpt2.py 8 1024 bf16c 10
  lmc_row gpt2-B4-T64 cuda 20 gpt2-124m --set batch=4 --set seq=64
  torch_row gpt2-B4-T64 fp32 torch_gpt2.py 4 64 fp32 20
  lmc_row llama-small-B8-T2048 cuda-medium 5 llama-small
  lmc_row llama-small-B8-T2048 cuda-medium:cuda-bf16 5 llama-small --set precision=bf16
  torch_row llama-small-B8-T2048 bf16 torch_llama.py 768 12 12 4 2048 32000 8 2048 bf16 10
  torch_row llama-small-B8-T2048 bf16c torch_llama.py 768 12 12 4 2048 32000 8 2048 bf16c 10
  lmc_row llama-large-B8-T2048 cuda-medium 3 llama-large
  lmc_row llama-large-B8-T2048 cuda-medium:cuda-bf16 3 llama-large --set precision=bf16
  rowenv=LMC_GEMM_TUNE=1
  lmc_row llama-large-B8-T2048 cuda-medium:cuda-bf16-tuned 3 llama-large --set precision=bf16
  rowenv=
  torch_row llama-large-B8-T2048 bf16c torch_llama.py 1536 24 16 4 4096 32000 8 2048 bf16c 5
  lmc_row moe-8x2-D512 cuda-medium 5 moe-tiny $moe --set F=688
  lmc_row moe-8x2-D512 cuda-medium:cuda-bf16 5 moe-tiny $moe --set F=688 --set precision=bf16
  lmc_row dense-twin-D512 cuda-medium 5 tiny $moe --set F=1376
  lmc_row dense-twin-D512 cuda-medium:cuda-bf16 5 tiny $moe --set F=1376 --set precision=bf16
fi

echo "== tokens/s (same GPU, same run); ratio: lmc's best over each PyTorch mode $(elapsed)"
awk '
  { v[$1, $2] = $3; if (!($1 in seen)) { seen[$1] = 1; rows[n++] = $1 }; if (!($2 in cs)) { cs[$2] = 1; cols[m++] = $2 } }
  END {
    printf "| row |"; for (j = 0; j < m; j++) printf " %s |", cols[j]; printf " lmc best / torch |\n"
    printf "|---|"; for (j = 0; j < m; j++) printf "---|"; printf "---|\n"
    for (i = 0; i < n; i++) {
      r = rows[i]; best = 0; printf "| %s |", r
      for (j = 0; j < m; j++) { x = v[r, cols[j]]; printf " %s |", x == "" ? "" : x
        if (cols[j] ~ /^lmc/ && x + 0 > best) best = x + 0 }
      s = ""
      for (j = 0; j < m; j++) if (cols[j] ~ /^torch/ && v[r, cols[j]] + 0 > 0)
        s = s sprintf(" %s %.2fx", substr(cols[j], 7), best / v[r, cols[j]])
      printf "%s |\n", s
    }
  }' "$table"

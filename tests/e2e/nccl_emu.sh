#!/bin/sh
# The CUDA backend's all-reduces through NCCL (--collectives nccl), on the
# emulated CUDA platform and its NCCL over MPI: dp 2 x tp 2, dp 4 with the
# gradient all-reduce overlapped (under lazy streams), pp 2 x dp 2 (the
# pipeline's transfers as NCCL sends and receives; again under lazy streams,
# and with the weights' gradients in parts)
# and (as MoE) ep 2 x dp 2 train 8 steps of a small Llama and match the
# same layouts on the CPU
# backend within 1e-5 (fp32, summation order aside), with NCCL named in the
# start banner; dp 2 x tp 2, pp 2 x dp 2 and ep 2 x dp 2 again with bf16
# storage; dp 2, tp 2 and pp 2 with their steps queued ahead (one host
# wait a step, the bits of each step waited for, a SIGTERM to one rank).
# --collectives nccl on the CPU backend is an error. Four ranks
# with a cold kernel cache compile the bundle's kernels once and time
# attention's kernels once.
# Under the sanitizers (third argument "sanitize") the bf16 layouts are
# tp's alone, which takes the widen and narrow paths; the others run in
# the normal build.
BIN=$1 SRC=$2 MODE=${3:-all}
. "$SRC/tests/e2e/common.sh"
need_data
mpi_env
status=0
small="--set D=32 --set H=4 --set G=2 --set F=88 --set L=2 --set batch=4 --set seq=16 --set steps=8 --set warmup=2"
layout() {   # layout NAME [--set ...]; $tol and $banner for bf16 storage
  name=$1
  shift
  # shellcheck disable=SC2086
  "$LMC" "$SRC/models/tiny.lm" -q -o "$WORK/$name" $small "$@"
  $MPIRUN -np 4 "$LMRUN" "$WORK/$name" --data "$DATA" --backend cpu --quiet --save-interval 0 --eval-interval 8 \
    --eval-batches 2 --out "$WORK/$name.cpu" >"$WORK/$name.cpu.log" 2>&1 || { cat "$WORK/$name.cpu.log"; fail "$name: cpu"; }
  $MPIRUN -np 4 "$LMRUN" "$WORK/$name" --data "$DATA" --backend cuda-emu --matmul-precision highest --collectives "${coll:-nccl}" --max-steps 8 \
    --save-interval 0 --eval-interval 8 --eval-batches 2 --out "$WORK/$name.nccl" >"$WORK/$name.nccl.log" 2>&1 ||
    { cat "$WORK/$name.nccl.log"; fail "$name: cuda-emu with NCCL"; }
  grep -Eq "backend ${banner:-cuda-emu-f32}$([ "${coll:-nccl}" = nccl ] && echo '[+]nccl')([^+a-z0-9-]|\$)" "$WORK/$name.nccl.log" ||
    { status=1; echo "FAIL $name: not the backend asked for: $(grep -o 'backend [^ ]*' "$WORK/$name.nccl.log")"; }
  python3 "$SRC/tests/e2e/compare_metrics.py" "$WORK/$name.cpu/metrics.jsonl" "$WORK/$name.nccl/metrics.jsonl" \
    "$name" ${tol:-1e-5} || status=1
  tol= banner= coll=
}
layout dp2tp2 --set dp=2 --set tp=2
# the four ranks share the kernel cache: with none there, one compiles the
# bundle's kernels and the others wait for its cubin (each had compiled
# them at once; the kernels as one program, LMC_JIT_THREADS=1, so that a
# compile is one run of the host compiler)
printf '#!/bin/sh\necho >> "%s"\nexec %s "$@"\n' "$WORK/compiles" "${LMC_CUDA_EMU_CXX:-c++}" > "$WORK/cxx"
chmod +x "$WORK/cxx"
# (and time attention's kernels once: a shape's forward, dQ and dK/dV,
# each by the rank that came first, the others taking its picks)
XDG_CACHE_HOME="$WORK/cold" LMC_CUDA_EMU_CXX="$WORK/cxx" LMC_JIT_THREADS=1 LMC_ATTENTION_TUNE=1 $MPIRUN -np 4 "$LMRUN" "$WORK/dp2tp2" \
  --data "$DATA" --backend cuda-emu --matmul-precision medium --collectives nccl --max-steps 1 --save-interval 0 \
  --eval-interval 0 --out "$WORK/dp2tp2.cold" >"$WORK/cold.log" 2>&1 ||
  { cat "$WORK/cold.log"; fail "dp2tp2 with a cold kernel cache"; }
[ "$(wc -l < "$WORK/compiles")" -eq 1 ] && echo "ok   four ranks, a cold kernel cache: one compile" ||
  { status=1; echo "FAIL four ranks with a cold kernel cache compiled $(wc -l < "$WORK/compiles") times, want once"; }
timed=$(grep -o "timing attention's" "$WORK/cold.log" | wc -l)
[ "$timed" -eq 3 ] && echo "ok   four ranks: attention's three kernels timed once each" ||
  { status=1; echo "FAIL four ranks timed attention's kernels $timed times, want 3 (forward, dQ, dK/dV once)"; }
# tp's all-reduces inside the programs go through NCCL, so the programs
# are recorded as CUDA graphs all the same (from the third step)
grep -q "backend cuda-emu-f32+nccl, CUDA graphs" "$WORK/dp2tp2.nccl.log" ||
  { status=1; echo "FAIL dp2tp2: no CUDA graphs: $(grep -o 'backend [^|]*' "$WORK/dp2tp2.nccl.log")"; }
# the gradient all-reduce in small buckets on a stream of its own, each
# queued behind an event once its gradients are final, under lazy streams
# (work runs only when something waits for it: a missing event between
# the streams gives wrong numbers); the backward's segments as graphs
[ "$MODE" != sanitize ] &&
  LMC_CUDA_EMU_STREAMS=lazy layout dp4_overlap --set dp=4 --set batch=8 --set microbatches=2 --set bucket_mb=0.01
# the pipeline's transfers as NCCL sends (on a stream per peer, behind an
# event) and receives (on the compute stream), 1F1B over 4 microbatches
# in two slots, with the overlapped buckets, under lazy streams
LMC_CUDA_EMU_STREAMS=lazy layout pp2dp2_lazy --set pp=2 --set dp=2 --set batch=8 --set microbatches=4 --set bucket_mb=0.01
# and so with the weights' gradients in 2 parts of 8 rows (on the second
# stream, the buckets' all-reduces after them), against the same CPU run
if [ "$MODE" != sanitize ]; then
  LMC_GEMM_SPLIT=2 LMC_GEMM_SHOW=1 LMC_CUDA_EMU_STREAMS=lazy $MPIRUN -np 4 "$LMRUN" "$WORK/pp2dp2_lazy" --data "$DATA" \
    --backend cuda-emu --matmul-precision highest --collectives nccl --max-steps 8 --save-interval 0 --eval-interval 8 \
    --eval-batches 2 --out "$WORK/pp2dp2_parts" >"$WORK/pp2dp2_parts.log" 2>&1 ||
    { cat "$WORK/pp2dp2_parts.log"; fail "pp2dp2 in parts: cuda-emu with NCCL"; }
  grep -q "gemm 88 x 32 x 16 A^T: in 2 parts of 8 rows" "$WORK/pp2dp2_parts.log" ||
    { status=1; echo "FAIL pp2dp2 in parts: no weight gradient said to run in parts"; }
  python3 "$SRC/tests/e2e/compare_metrics.py" "$WORK/pp2dp2_lazy.cpu/metrics.jsonl" "$WORK/pp2dp2_parts/metrics.jsonl" \
    "pp2dp2, weight gradients in parts" 1e-5 || status=1
fi
# and under skewed streams (the compute stream's work late, the other
# streams' as soon as queued: the sends', the buckets', the weight
# gradients' GEMMs'), where work that should wait for the compute stream
# but has no event to wait on runs too early
[ "$MODE" != sanitize ] &&
  LMC_CUDA_EMU_STREAMS=skew layout pp2dp2_skew --set pp=2 --set dp=2 --set batch=8 --set microbatches=4 --set bucket_mb=0.01
[ "$MODE" != sanitize ] && layout pp2dp2 --set pp=2 --set dp=2 --set microbatches=2
# MoE over ep 2 x dp 2: the all-to-alls as grouped NCCL sends and
# receives, the gradient and balance all-reduces over dp and ep
layout ep2dp2 --set experts=4 --set ep=2 --set dp=2
# bf16 storage: tp's partial sums widened to fp32 for the all-reduce and
# rounded back, as the CPU rounds its fp32 sum; the pipeline's transfers
tol="1e-3 1e-2" banner=cuda-emu-bf16 layout dp2tp2_bf16 --set dp=2 --set tp=2 --set precision=bf16
if [ "$MODE" != sanitize ]; then
  tol="1e-3 1e-2" banner=cuda-emu-bf16 layout pp2dp2_bf16 --set pp=2 --set dp=2 --set microbatches=2 --set precision=bf16
  # and MoE's all-to-alls moving bf16 rows
  tol="1e-3 1e-2" banner=cuda-emu-bf16 layout ep2dp2_bf16 --set experts=4 --set ep=2 --set dp=2 --set precision=bf16
  # the same two through host memory and MPI (ranks sharing a GPU): bf16
  # values as they are, 2 bytes each
  coll=mpi tol="1e-3 1e-2" banner=cuda-emu-bf16 layout pp2dp2_bf16_mpi --set pp=2 --set dp=2 --set microbatches=2 --set precision=bf16
  coll=mpi tol="1e-3 1e-2" banner=cuda-emu-bf16 layout ep2dp2_bf16_mpi --set experts=4 --set ep=2 --set dp=2 --set precision=bf16
fi
# ranks whose collectives and transfers all go through NCCL queue each
# step before the one before it ends (said in the banner): a step's
# collectives are watched at its end and the gradient norm summed over
# the groups that split the model on the device, one host wait a step
# (the emulator's count: a cuEventQuery, no stream query, no copy) on
# every rank of dp 2, tp 2 and pp 2 (1F1B over 4 microbatches), and on
# dp 2 with MoE at highest precision, whose experts' counts the host
# reads (blocking copies) while collectives are in flight, each such read
# watching them first; dp 2, its MoE and pp 2 give the same bits as each
# step waited for, under lazy streams,
# with evaluations and saves between steps; and one rank's SIGTERM stops
# both after the same step, saved, and the resume goes on to a straight
# run's bits
two() {   # two NAME OUT [lmrun flags]: bundle NAME on 2 ranks over NCCL
  name=$1 out=$2
  shift 2
  $MPIRUN -np 2 "$LMRUN" "$WORK/$name" --data "$DATA" --backend cuda-emu --matmul-precision highest --collectives nccl \
    --comm-timeout 60 --out "$WORK/$out" "$@" </dev/null
}
bundle() {   # bundle NAME SETS: tiny, 8 rows a batch, over the layout SETS says
  # shellcheck disable=SC2086
  "$LMC" "$SRC/models/tiny.lm" -q -o "$WORK/$1" $small --set batch=8 --set steps=100000 --set $2
}
# (under the sanitizers only pp 2's queued steps against waited ones: its
# sends, the norm's sum over groups, the watch at the step's end)
lays='dp2:dp=2:dp 2 x tp 1 x pp 1;tp2:tp=2:dp 1 x tp 2 x pp 1;pp2:pp=2 --set microbatches=4:dp 1 x tp 1 x pp 2'
lays="$lays;dpm:dp=2 --set experts=4:dp 2 x tp 1 x pp 1"   # (MoE at highest: its counts read on the host)
if [ "$MODE" = sanitize ]; then
  bundle pp2 "pp=2 --set microbatches=4"
  lays=
fi
[ -z "$lays" ] || echo "$lays" | tr ';' '\n' > "$WORK/lays"
touch "$WORK/lays"
while IFS= read -r lay; do
  name=${lay%%:*} sets=${lay#*:} mesh=${lay##*:}
  sets=${sets%:*}
  bundle "$name" "$sets"
  for n in 4 10; do
    rm -f "$WORK/$name.waits.$n"
    LMC_CUDA_EMU_HOST_LOG="$WORK/$name.waits.$n" two "$name" "$name.w$n" --max-steps $n --save-interval 0 \
      --eval-interval 0 >"$WORK/$name.w$n.log" 2>&1 || { cat "$WORK/$name.w$n.log"; fail "$name counting host waits"; }
  done
  grep -Eq "^model .* \| layout $mesh \| backend cuda-emu-f32\+nccl(, CUDA graphs)?, steps queued ahead$" "$WORK/$name.w10.log" ||
    { status=1; echo "FAIL $name: the banner does not say the steps are queued ahead"; }
  python3 - "$WORK/$name.waits.4" "$WORK/$name.waits.10" "$name" <<'PY' || status=1
import sys
def ranks(path):   # each rank's waits, by call
    out = []
    for l in open(path):
        if l.startswith("waits:"):
            w = l.split()[1:]
            out.append({w[i]: int(w[i + 1]) for i in range(0, len(w), 2)})
    return out
def more(x, y):
    return {k: y.get(k, 0) - x.get(k, 0) for k in set(x) | set(y) if y.get(k, 0) != x.get(k, 0)}
a, b = ranks(sys.argv[1]), ranks(sys.argv[2])
# (the ranks' lines come in either order: each 10-step rank paired with
# the 4-step one it differs from least)
b = sorted(b, key=lambda y: [sum(abs(v) for v in more(x, y).values()) for x in a]) if len(a) == 2 else b
more = [more(x, y) for x, y in zip(a, b)]
if sys.argv[3] != "dpm":
    ok = len(a) == len(b) == 2 and all(m == {"cuEventQuery": 6} for m in more)
else:   # a count read (a blocking copy) while a step's collectives are in flight watches them first
    ok = len(a) == len(b) == 2 and all(set(m) == {"cuEventQuery", "cuMemcpyDtoH"} and
                                       m["cuEventQuery"] >= 6 + m["cuMemcpyDtoH"] for m in more)
print("%s %s on NCCL: steps 5 to 10 waited for the device %s" % ("ok  " if ok else "FAIL", sys.argv[3], "; ".join(
      ", ".join("%d x %s" % (v, k) for k, v in sorted(m.items())) or "never" for m in more)))
sys.exit(0 if ok else 1)
PY
done < "$WORK/lays"
for name in $([ "$MODE" = sanitize ] || echo dp2 dpm) pp2; do
  for ahead in 1 0; do
    LMC_STEPS_AHEAD=$ahead LMC_CUDA_EMU_STREAMS=lazy two $name "$name.a$ahead" --max-steps 10 --save-interval 5 \
      --eval-interval 4 --eval-batches 2 --quiet >"$WORK/$name.a$ahead.log" 2>&1 ||
      { cat "$WORK/$name.a$ahead.log"; fail "$name (LMC_STEPS_AHEAD=$ahead)"; }
    sed 's/,"ms":[0-9.]*//' "$WORK/$name.a$ahead/metrics.jsonl" | grep -v '"rank"' > "$WORK/$name.a$ahead.m"
  done
  same=true
  for k in "$WORK/$name.a1/ckpt/latest/"*.ckpt; do
    cmp -s "$k" "$WORK/$name.a0/ckpt/latest/$(basename "$k")" || same=false
  done
  cmp -s "$WORK/$name.a1.m" "$WORK/$name.a0.m" && $same &&
    echo "ok   $name on NCCL, steps queued ahead: the same records and checkpoint as each step waited for" ||
    { status=1; echo "FAIL $name on NCCL: steps queued ahead part from each step waited for"; diff "$WORK/$name.a1.m" "$WORK/$name.a0.m" | head; }
done
if [ "$MODE" != sanitize ]; then   # (the normal build alone: 4 runs)
  two dp2 dp2.term --save-interval 1000 --eval-interval 0 >"$WORK/dp2.term.log" 2>&1 &
  term_one_rank $! "lmrun $WORK/dp2 " "$WORK/dp2.term/metrics.jsonl"
  grep -q "stopped by SIGTERM after step $n; to go on: --resume $WORK/dp2.term/ckpt/latest" "$WORK/dp2.term.log" &&
    [ "$(readlink "$WORK/dp2.term/ckpt/latest")" = "$(printf step_%08d "$n")" ] ||
    { cat "$WORK/dp2.term.log"; fail "dp2 on NCCL: SIGTERM to one rank"; }
  two dp2 dp2.term --quiet --resume "$WORK/dp2.term/ckpt/latest" --max-steps $((n + 2)) --save-interval 0 --eval-interval 0 ||
    fail "dp2 on NCCL: the resume after SIGTERM"
  two dp2 dp2.straight --quiet --max-steps $((n + 2)) --save-interval 0 --eval-interval 0 || fail "dp2 on NCCL: straight"
  for r in term straight; do grep '"loss"' "$WORK/dp2.$r/metrics.jsonl" | sed 's/,"ms":[0-9.]*//' > "$WORK/dp2.$r.m"; done
  cmp -s "$WORK/dp2.term.m" "$WORK/dp2.straight.m" &&
    echo "ok   dp2 on NCCL: one rank's SIGTERM after step $n stopped both, saved; resumed, a straight run's $((n + 2)) steps" ||
    { status=1; echo "FAIL dp2 on NCCL: the run resumed after SIGTERM parts from a straight one"; }  # and a stopped rank ends the job, not hangs it: rank 1 of dp 2 stopped
  # (SIGSTOP) while steps are queued ahead; rank 0's watch of a step's
  # collectives fails, named (the emulated NCCL gives up on a peer after
  # LMC_CUDA_EMU_NCCL_TIMEOUT, where a GPU's would hang into the deadline),
  # or, where rank 0 had got as far as the ranks' agreement on the host
  # when rank 1 stopped, that agreement's deadline does, named too (which
  # comes first is the machine's timing: on a loaded 2-core AMD EPYC,
  # 2026-11-28, the agreement's, once in three runs)
  stop_rank1 "$WORK/dp2.stop.log" "$WORK/dp2.stop/metrics.jsonl" env LMC_CUDA_EMU_STREAMS=lazy LMC_CUDA_EMU_NCCL_TIMEOUT=3 \
    "$LMRUN" "$WORK/dp2" --data "$DATA" --backend cuda-emu --matmul-precision highest --collectives nccl --quiet \
    --comm-timeout 3 --save-interval 0 --eval-interval 0 --out "$WORK/dp2.stop"
  [ $rc -ne 0 ] && [ $took -le 60 ] &&
    grep -Eq "^lmrun: error: rank 0: (a step's NCCL collectives over the dp group failed: emulated NCCL: a peer did not join|no progress for 3 s in agreeing with the other ranks: a peer rank is stopped, hung or far behind)" \
      "$WORK/dp2.stop.log" && echo "ok   dp2 on NCCL, rank 1 stopped: the job ended in ${took}s, rank 0's wait named" ||
    { status=1; cat "$WORK/dp2.stop.log"; echo "FAIL dp2 on NCCL, rank 1 stopped: exit $rc after ${took}s"; }
fi
"$LMRUN" "$WORK/dp2tp2" --backend cpu --collectives nccl --max-steps 1 >"$WORK/cpu_nccl.log" 2>&1 &&
  { status=1; echo "FAIL --collectives nccl on the CPU backend ran"; }
grep -qxF "lmrun: error: --collectives applies to the CUDA backends (--backend cuda, cuda-emu, auto)" "$WORK/cpu_nccl.log" ||
  { status=1; echo "FAIL --collectives nccl on the CPU backend: $(cat "$WORK/cpu_nccl.log")"; }
[ $status = 0 ] && echo "$([ "$MODE" = sanitize ] && echo 8 || echo 29) passed, 0 failed" || echo "failed"
exit $status

#!/bin/sh
# scripts/lmtrain as a launcher: --nproc N starts the plan's ranks through
# mpirun and prints the command; a rank count that does not match the
# plan, and a bad MoE option, end with a clear message; --help, an option
# without its value, lmc's fusion options and values with spaces and quotes.
BIN=$1 SRC=$2
. "$SRC/tests/e2e/common.sh"
need_data
mpi_env
unset OMPI_ALLOW_RUN_AS_ROOT OMPI_ALLOW_RUN_AS_ROOT_CONFIRM   # lmtrain sets them itself
export LMC_BUILD="$BIN" XDG_CACHE_HOME="$WORK/cache"
small="--set D=32 --set H=4 --set G=2 --set F=48 --set L=2 --batch-size 4 --seq-len 16"
# shellcheck disable=SC2086
"$SRC/scripts/lmtrain" "$SRC/models/tiny.lm" $small --set dp=2 --nproc 2 --max-steps 3 --data "$DATA" \
  --out "$WORK/dp2" --quiet >"$WORK/out" 2>&1 || { cat "$WORK/out"; fail "lmtrain --nproc 2 failed"; }
grep -q "^lmtrain: running: mpirun -np 2 --bind-to none .*/runtime/lmrun .* --max-steps 3" "$WORK/out" ||
  { cat "$WORK/out"; fail "the command was not printed"; }
[ "$(grep -c '"loss"' "$WORK/dp2/metrics.jsonl")" -eq 3 ] || fail "the 2-rank run did not log 3 steps"
echo "ok   $(grep '^lmtrain: running' "$WORK/out" | cut -c1-60)..."
# shellcheck disable=SC2086
MSG="lmtrain: the plan has 2 rank(s) (dp x tp x pp x ep) but 3 were asked for" \
  expect_error "$SRC/scripts/lmtrain" "$SRC/models/tiny.lm" $small --set dp=2 --nproc 3 --data "$DATA"
MSG="error: top_k = 5 is more than the 4 experts [moe-top-k]" \
  expect_error "$SRC/scripts/lmtrain" "$SRC/models/tiny.lm" --num-experts 4 --top-k 5
"$SRC/scripts/lmtrain" --help >"$WORK/help" || fail "lmtrain --help failed"
grep -q "^usage: lmtrain SPEC.lm" "$WORK/help" || { cat "$WORK/help"; fail "lmtrain --help printed no usage"; }
echo "ok   lmtrain --help"
MSG="lmtrain: --set needs a value (lmtrain --help)" expect_error "$SRC/scripts/lmtrain" "$SRC/models/tiny.lm" --set
MSG="usage: lmtrain SPEC.lm" expect_error "$SRC/scripts/lmtrain" --max-steps 3
# lmc's --fuse goes to lmc (tiny's logits are small: only `always` fuses
# its head); an --out with a space and a quote is one folder
# shellcheck disable=SC2086
"$SRC/scripts/lmtrain" "$SRC/models/tiny.lm" $small --fuse=always --max-steps 2 --data "$DATA" --backend cpu \
  --out "$WORK/it's a run" --quiet >"$WORK/f.out" 2>&1 || { cat "$WORK/f.out"; fail "lmtrain --fuse=always failed"; }
bundle=$(sed -n 's/^lmtrain: bundle //p' "$WORK/f.out")
grep -q "head_dl" "$bundle/rank0.sched" || fail "--fuse=always did not reach lmc"
[ "$(grep -c '"loss"' "$WORK/it's a run/metrics.jsonl")" -eq 2 ] || fail "--out with a space and a quote"
echo "ok   --fuse=always reaches lmc; --out \"it's a run\""
# where nvidia-smi lists a GPU (a stand-in here) the default is bf16 mixed
# precision; --precision fp32 or --backend cpu keep fp32 (without a CUDA
# driver the run itself falls back to the CPU, which runs the bf16 plan)
mkdir -p "$WORK/fakebin"
printf '#!/bin/sh\necho "GPU 0: NVIDIA H200 (UUID: GPU-0)"\n' >"$WORK/fakebin/nvidia-smi"
chmod +x "$WORK/fakebin/nvidia-smi"
precision_of() {   # the manifest of the bundle lmtrain built
  sed -n 's/^lmtrain: bundle //p' "$WORK/p.out" | xargs -I{} sed -n 's/^precision //p' {}/manifest.txt
}
for want in "bf16:" "fp32:--precision fp32" "fp32:--backend cpu"; do
  # shellcheck disable=SC2086
  PATH="$WORK/fakebin:$PATH" "$SRC/scripts/lmtrain" "$SRC/models/tiny.lm" $small ${want#*:} --max-steps 2 --data "$DATA" \
    --out "$WORK/p" --quiet >"$WORK/p.out" 2>&1 || { cat "$WORK/p.out"; fail "lmtrain ${want#*:} with a GPU failed"; }
  got=$(precision_of)
  [ "${got:-fp32}" = "${want%%:*}" ] || { cat "$WORK/p.out"; fail "lmtrain ${want#*:} with a GPU: precision ${got:-fp32}"; }
done
grep -q "^lmtrain: a GPU is here" "$WORK/p.out" && fail "--backend cpu still chose bf16"
echo "ok   a GPU means bf16 unless --precision fp32 or --backend cpu"
echo "9 passed, 0 failed"

#!/bin/sh
# Runs the libFuzzer targets of a -DLMC_FUZZ=ON build over seed corpora
# made from the tests (every spec in models/ and tests/lit/, bundles and a
# checkpoint and a Hugging Face export lmc and lmrun make, text and .bin
# data), then fuzzes each for
# a burst: `ci` (a few thousand executions each, in the suite) or `long`
# (1,000,000 each; the numbers go in docs/reliability.md). Inputs that
# once crashed a target live in tests/fuzz/regressions/<target>/ and run
# every time. Usage: libfuzzer.sh BUILD SRC ci|long [TARGETS]
BIN=$1 SRC=$2 MODE=${3:-ci} TARGETS=${4:-lmc bundle ckpt data hf}
. "$SRC/tests/e2e/common.sh"
need_data
runs=3000
[ "$MODE" = long ] && runs=1000000
C="$WORK/corpus"
mkdir -p "$C/lmc" "$C/bundle" "$C/ckpt" "$C/data" "$C/hf"

# specs, whole and as the chunks of split-input tests
cp "$SRC"/models/*.lm "$SRC"/tests/golden/*.lm "$C/lmc/"
for f in "$SRC"/tests/lit/*.lm; do
  awk -v out="$C/lmc/$(basename "$f" .lm)" '/^\/\/ -----/ {n++; next} {print > (out "." n ".lm")}' "$f"
done
# bundles: manifest, NUL, rank 0's schedule
bundle() {   # bundle NAME SPEC [lmc args]
  name=$1 spec=$2
  shift 2
  "$LMC" "$spec" -q -o "$WORK/$name" "$@"
  { cat "$WORK/$name/manifest.txt"; printf '\0'; cat "$WORK/$name/rank0.sched"; } > "$C/bundle/$name"
}
bundle tiny "$SRC/models/tiny.lm" --set D=32 --set H=4 --set G=2 --set F=48 --set L=2 --set batch=2 --set seq=16
bundle gpt2 "$SRC/models/gpt2-124m.lm" --set V=256 --set D=32 --set H=4 --set L=2 --set batch=2 --set seq=16
bundle tp2 "$SRC/models/tiny.lm" --set D=32 --set H=4 --set G=2 --set F=48 --set L=2 --set batch=2 --set seq=16 --set tp=2 --set pp=2 --set microbatches=2
bundle fused "$SRC/models/tiny.lm" --set D=32 --set H=4 --set G=2 --set F=48 --set L=2 --set batch=2 --set seq=16 --fuse=always
bundle bf16 "$SRC/models/gpt2-124m.lm" --set V=256 --set D=32 --set H=4 --set L=2 --set batch=2 --set seq=16 --set precision=bf16
# the backward cut into segments, the buckets queued between them, a wait
bundle buckets "$SRC/models/tiny.lm" --set D=32 --set H=4 --set G=2 --set F=48 --set L=2 --set batch=4 --set seq=16 --set dp=2 --set microbatches=2 --set bucket_mb=0.005
# a checkpoint of the tiny bundle, which the checkpoint target loads into
"$LMRUN" "$WORK/tiny" --data "$DATA" --quiet --max-steps 1 --save-interval 1 --out "$WORK/run" 2>/dev/null
cp "$WORK/run/ckpt/step_00000001/rank0.ckpt" "$C/ckpt/"
# a Hugging Face export of the tiny bundle's weights, which the hf target imports into it
"$LMRUN" "$WORK/tiny" --resume "$WORK/run/ckpt/step_00000001" --export-hf "$WORK/hf" --quiet 2>/dev/null
cp "$WORK/hf/model.safetensors" "$C/hf/"
# data: text, and llm.c shards (uint16, magic 20240520)
head -c 3000 "$DATA" > "$C/data/text"
python3 - "$C/data" <<'PY'
import struct, sys
d = sys.argv[1]
hdr = [20240520, 1, 200] + [0] * 253
open(d + "/shard16", "wb").write(struct.pack("<256i", *hdr) + struct.pack("<200H", *range(200)))
PY

status=0
for t in $TARGETS; do
  reg="$SRC/tests/fuzz/regressions/$t"
  [ -d "$reg" ] && cp "$reg"/* "$C/$t/" 2>/dev/null
  leaks=0
  [ $t = lmc ] && leaks=1   # the loaders leave what an error abandons to exit()
  start=$(date +%s)
  LMC_FUZZ_BUNDLE="$WORK/tiny" ASAN_OPTIONS=detect_leaks=$leaks "$BIN/tests/lf_$t" -runs=$runs -max_len=65536 \
    -timeout=20 -rss_limit_mb=4096 -seed=1 -print_final_stats=1 "$C/$t" >"$WORK/$t.log" 2>&1 || status=1
  took=$(( $(date +%s) - start ))
  execs=$(grep -m1 'stat::number_of_executed_units' "$WORK/$t.log" | awk '{print $2}')
  cov=$(grep -o 'cov: [0-9]*' "$WORK/$t.log" | tail -1)
  if [ $status = 0 ]; then
    echo "ok   lf_$t: ${execs:-?} executions in ${took}s, $cov, corpus $(ls "$C/$t" | wc -l) inputs"
  else
    tail -40 "$WORK/$t.log"
    echo "FAIL lf_$t (the input is in the log above; add it to tests/fuzz/regressions/$t/)"
    break
  fi
done
[ $status = 0 ] && echo "$(echo $TARGETS | wc -w) passed, 0 failed" || echo "0 passed, 1 failed"
exit $status

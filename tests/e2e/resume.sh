#!/bin/sh
# 20 uninterrupted steps and 10 steps + resume + 10 steps give bitwise
# identical losses, and bitwise identical final checkpoints (weights and
# Adam state); a checkpoint of format 1 resumes as well.
BIN=$1 SRC=$2
. "$SRC/tests/e2e/common.sh"
need_data
small_model "$WORK/a" --set steps=20 --set batch=4 --set seq=32
cp -r "$WORK/a" "$WORK/b"
"$LMRUN" "$WORK/a" --data "$DATA" --quiet --save-interval 20
"$LMRUN" "$WORK/b" --data "$DATA" --quiet --save-interval 10 --max-steps 10
"$LMRUN" "$WORK/b" --data "$DATA" --quiet --save-interval 10 --resume "$WORK/b/ckpt/latest"
grep '"loss"' "$WORK/a/metrics.jsonl" | sed 's/,"ms".*//' > "$WORK/la"
grep '"loss"' "$WORK/b/metrics.jsonl" | sed 's/,"ms".*//' > "$WORK/lb"
[ "$(wc -l < "$WORK/la")" -eq 20 ] || fail "expected 20 logged steps"
diff -u "$WORK/la" "$WORK/lb" || fail "losses differ after resume"
cmp "$WORK/a/ckpt/step_00000020/rank0.ckpt" "$WORK/b/ckpt/step_00000020/rank0.ckpt" || fail "checkpoints differ"
[ "$(readlink "$WORK/b/ckpt/latest")" = step_00000020 ] || fail "latest does not point at step 20"
[ -f "$WORK/b/ckpt/step_00000010/rank0.ckpt" ] || fail "the step 10 checkpoint is gone"
ls "$WORK/b/ckpt" | grep -q tmp && fail "a temporary file was left behind"
echo "losses and checkpoints bitwise identical"
# the step 10 checkpoint in format 1 (an FNV-1a checksum, as lmc wrote up
# to 2026-11-28) resumes to the same bits; a save writes format 2 (CRC-32)
[ "$(head -c 8 "$WORK/b/ckpt/step_00000010/rank0.ckpt")" = LMCCKPT2 ] || fail "a save did not write format 2"
mkdir "$WORK/v1"
python3 "$SRC/tests/e2e/forge_ckpt.py" "$WORK/b/ckpt/step_00000010/rank0.ckpt" "$WORK/v1/rank0.ckpt" '^' '' --format 1
[ "$(head -c 8 "$WORK/v1/rank0.ckpt")" = LMCCKPT1 ] || fail "no format 1 shard made"
"$LMRUN" "$WORK/b" --data "$DATA" --quiet --save-interval 0 --resume "$WORK/v1" --out "$WORK/c"
grep '"loss"' "$WORK/c/metrics.jsonl" | sed 's/,"ms".*//' > "$WORK/lc"
tail -10 "$WORK/la" | diff -u - "$WORK/lc" || fail "losses differ after a resume from format 1"
echo "format 1 checkpoints resume to the same bits"
echo "2 passed, 0 failed"

#!/bin/sh
# TensorBoard event files: a run, then a resume from an earlier checkpoint,
# read back by TensorBoard's own reader (tb_readback.py) against
# metrics.jsonl: every scalar, every step once.
BIN=$1 SRC=$2
. "$SRC/tests/e2e/common.sh"
need_data
PY="$SRC/.venv/bin/python"
"$PY" -c "import tensorboard" 2>/dev/null || fail "no TensorBoard in $SRC/.venv: run scripts/setup.sh"
small_model "$WORK/m" --set steps=20 --set batch=2 --set seq=16 --set eval_every=10
"$LMRUN" "$WORK/m" --data "$DATA" --quiet --out "$WORK/o" --max-steps 15 --save-interval 10
"$LMRUN" "$WORK/m" --data "$DATA" --quiet --out "$WORK/o" --resume "$WORK/o/ckpt/step_00000010"
[ "$(ls "$WORK/o/tb" | grep -c '^events.out.tfevents.')" -eq 2 ] || fail "expected one event file per run"
rc=0
"$PY" "$SRC/tests/e2e/tb_readback.py" "$WORK/o" >"$WORK/tb.out" 2>&1 || rc=$?
grep -v "^Detected out of order" "$WORK/tb.out" || true
[ $rc -eq 0 ] || fail "TensorBoard read back other values"
# an MoE model (2 MoE layers): train/ce and moe/layer<i>/{aux,z,load_max,load_min}
small_model "$WORK/moe" --set steps=6 --set batch=2 --set seq=16 --set experts=4
"$LMRUN" "$WORK/moe" --data "$DATA" --quiet --out "$WORK/om"
"$PY" "$SRC/tests/e2e/tb_readback.py" "$WORK/om" >"$WORK/tbm.out" 2>&1 || rc=$?
grep -v "^Detected out of order" "$WORK/tbm.out" || true
grep -q "moe/layer1/load_max" "$WORK/tbm.out" || fail "no MoE metrics read back"
[ $rc -eq 0 ] || fail "TensorBoard read back other MoE values"
echo "2 passed, 0 failed"

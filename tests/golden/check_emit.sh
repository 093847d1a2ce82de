#!/bin/sh
# The emitted bundle files of the presets, compared whole with the
# reviewed copies in tests/golden/*.expected. After an intended change,
# regenerate them with: tests/golden/check_emit.sh BUILD SRC --update
set -eu
BIN=$1 SRC=$2 MODE=${3:-check}
out=$(mktemp -d "${TMPDIR:-/tmp}/lmc-golden.XXXXXX")
trap 'rm -rf "$out"' EXIT
status=0 n=0
for model in tiny gpt2-124m; do
  "$BIN/compiler/lmc" "$SRC/models/$model.lm" -q -o "$out/$model"
  for f in manifest.txt rank0.sched kernels.cu; do
    exp="$SRC/tests/golden/$model.$f.expected"
    n=$((n + 1))
    if [ "$MODE" = --update ]; then cp "$out/$model/$f" "$exp"; echo "updated $exp"; continue; fi
    if diff -u "$exp" "$out/$model/$f"; then echo "ok   $model/$f"; else status=1; fi
  done
done
[ "$MODE" = --update ] || echo "$([ $status = 0 ] && echo $n || echo 0) passed, $([ $status = 0 ] && echo 0 || echo 1) failed"
exit $status

#!/bin/sh
# Token shards: the corpus cut into three llm.c uint16 shards, read by a
# glob, and into one uint32 shard (magic 20240801, version 7) train exactly
# as the text file does (the same token stream); a glob matching nothing
# is a clear error.
BIN=$1 SRC=$2
. "$SRC/tests/e2e/common.sh"
need_data
mkdir "$WORK/s16" "$WORK/s32"
head -c 300000 "$DATA" > "$WORK/text.txt"
python3 - "$WORK/text.txt" "$WORK" <<'PY'
import struct, sys
data = open(sys.argv[1], "rb").read()
cut = [0, 70001, 190000, len(data)]
for i in range(3):
    part = data[cut[i]:cut[i + 1]]
    hdr = struct.pack("<256i", 20240520, 1, len(part), *[0] * 253)
    open("%s/s16/train_%03d.bin" % (sys.argv[2], i), "wb").write(hdr + struct.pack("<%dH" % len(part), *part))
hdr = struct.pack("<256i", 20240801, 7, len(data), *[0] * 253)
open(sys.argv[2] + "/s32/all.bin", "wb").write(hdr + struct.pack("<%dI" % len(data), *data))
PY
small_model "$WORK/m" --set steps=4 --set batch=4 --set seq=32 --set eval_every=4
for d in "text.txt" "s16/train_*.bin" "s32/all.bin"; do
  name=$(echo "$d" | cut -c1-3)
  "$LMRUN" "$WORK/m" --data "$WORK/$d" --quiet --out "$WORK/run_$name"
  grep '"loss"\|val_loss' "$WORK/run_$name/metrics.jsonl" | sed 's/,"ms".*//' > "$WORK/l_$name"
done
diff -u "$WORK/l_tex" "$WORK/l_s16" || fail "three uint16 shards by glob train differently from the text"
diff -u "$WORK/l_tex" "$WORK/l_s32" || fail "a uint32 shard trains differently from the text"
echo "ok   text, 3 uint16 shards by glob, 1 uint32 shard: the same losses"
MSG="no data files match '$WORK/s16/valid_*.bin'" expect_error "$LMRUN" "$WORK/m" --data "$WORK/s16/valid_*.bin"
echo "2 passed, 0 failed"

#!/bin/sh
# scripts/tokenize: byte-level shards train exactly as the text they came
# from; a BPE vocabulary trained by Hugging Face tokenizers gives shards
# that decode back to the text and a model that learns from them.
BIN=$1 SRC=$2
. "$SRC/tests/e2e/common.sh"
need_data
head -c 300000 "$DATA" > "$WORK/text.txt"
"$SRC/scripts/tokenize" "$WORK/text.txt" --out "$WORK/bytes" --shard-tokens 100000 >/dev/null
[ "$(ls "$WORK/bytes" | grep -c '^train_...\.bin$')" -eq 3 ] || fail "expected 3 byte shards"
small_model "$WORK/m" --set steps=3 --set batch=4 --set seq=32 --set eval_every=0
"$LMRUN" "$WORK/m" --data "$WORK/text.txt" --quiet --out "$WORK/a"
"$LMRUN" "$WORK/m" --data "$WORK/bytes/train_*.bin" --quiet --out "$WORK/b"
[ "$(grep '"loss"' "$WORK/a/metrics.jsonl" | sed 's/,"ms".*//')" = "$(grep '"loss"' "$WORK/b/metrics.jsonl" | sed 's/,"ms".*//')" ] ||
  fail "byte shards train differently from their text"
echo "ok   byte-level shards train as the text does"
"$SRC/scripts/tokenize" "$WORK/text.txt" --out "$WORK/bpe" --bpe 512 --shard-tokens 40000 > "$WORK/msg"
grep -q "vocab 512: compile with --set V=512" "$WORK/msg" || { cat "$WORK/msg"; fail "no vocab hint"; }
"$SRC/.venv/bin/python" - "$WORK/bpe" "$WORK/text.txt" <<'PY' || fail "the BPE shards do not decode to the text"
import glob, struct, sys
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1] + "/tokenizer.json")
ids = []
for f in sorted(glob.glob(sys.argv[1] + "/train_*.bin")):
    b = open(f, "rb").read()
    magic, version, n = struct.unpack("<3i", b[:12])
    assert (magic, version) == (20240520, 1)
    ids += struct.unpack("<%dH" % n, b[1024:1024 + 2 * n])
assert tok.decode(ids) == open(sys.argv[2], encoding="utf-8").read()
print("ok   %d BPE tokens decode back to the %d bytes of text" % (len(ids), len(open(sys.argv[2], "rb").read())))
PY
small_model "$WORK/v" --set V=512 --set steps=12 --set batch=4 --set seq=32 --set eval_every=0 --set lr=1e-2
"$LMRUN" "$WORK/v" --data "$WORK/bpe/train_*.bin" --quiet --out "$WORK/c"
python3 - "$WORK/c/metrics.jsonl" <<'PY' || fail "no learning on BPE tokens"
import json, math, sys
l = [r["loss"] for r in map(json.loads, open(sys.argv[1])) if "loss" in r]
assert abs(l[0] - math.log(512)) < 0.3 and l[-1] < l[0] - 0.5, l
print("ok   on BPE tokens the loss goes %.2f (ln 512 = %.2f) -> %.2f in %d steps" % (l[0], math.log(512), l[-1], len(l)))
PY
MSG="tokenize: cannot read '$WORK/none.txt'" expect_error "$SRC/scripts/tokenize" "$WORK/none.txt" --out "$WORK/x"
echo "4 passed, 0 failed"

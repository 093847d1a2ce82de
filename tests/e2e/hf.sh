#!/bin/sh
# Hugging Face formats: the PyTorch references in tests/golden/llama-tiny
# and mixtral-tiny (its experts one tensor each) go in with --init-hf and
# out with --export-hf as the same tensors (names, shapes, bytes) and config; a trained model exported and imported again
# gives the same logits (test_hf); bad folders are clear errors.
BIN=$1 SRC=$2
. "$SRC/tests/e2e/common.sh"
need_data
# roundtrip NAME [CONFIG KEYS...]: the reference in, out, the same tensors and config
roundtrip() {
  name=$1
  shift
  G="$SRC/tests/golden/$name"
  "$LMC" "$SRC/tests/golden/$name.lm" -I "$SRC/models" -q -o "$WORK/$name" --no-fuse
  "$LMRUN" "$WORK/$name" --init-hf "$G" --export-hf "$WORK/exp-$name" --quiet
  python3 - "$G" "$WORK/exp-$name" "$@" <<'PY' || fail "the exported reference $name differs"
import json, struct, sys
def read(d):
    b = open(d + "/model.safetensors", "rb").read()
    (n,) = struct.unpack("<Q", b[:8])
    h = json.loads(b[8:8 + n])
    h.pop("__metadata__", None)
    return {k: (v["dtype"], v["shape"], b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]]) for k, v in h.items()}
want, got = read(sys.argv[1]), read(sys.argv[2])
assert sorted(want) == sorted(got), set(want) ^ set(got)
for k in want:
    assert want[k] == got[k], k
cw, cg = json.load(open(sys.argv[1] + "/config.json")), json.load(open(sys.argv[2] + "/config.json"))
for k in ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
          "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "tie_word_embeddings"] + sys.argv[3:]:
    assert cw[k] == cg[k], (k, cw[k], cg[k])
print("ok   %s: %d tensors back with the same names, shapes and bytes, and its config" % (sys.argv[1].split("/")[-1], len(want)))
PY
}
roundtrip llama-tiny
roundtrip mixtral-tiny num_local_experts num_experts_per_tok router_aux_loss_coef
small_model "$WORK/t" --set steps=5 --set batch=2 --set seq=16 --no-fuse
"$LMRUN" "$WORK/t" --data "$DATA" --quiet --save-interval 5
"$BIN/tests/test_hf" "$WORK/t" "$WORK/t/ckpt/latest" "$WORK" | grep -v passed
mkdir "$WORK/nothing"
MSG="cannot open '$WORK/nothing/model.safetensors'" expect_error "$LMRUN" "$WORK/t" --init-hf "$WORK/nothing" --data "$DATA"
printf 'garbage!garbage!' > "$WORK/nothing/model.safetensors"
MSG="is not a safetensors file" expect_error "$LMRUN" "$WORK/t" --init-hf "$WORK/nothing" --data "$DATA"
MSG="tensor model.embed_tokens.weight has 2048 elements in another shape than tok_embed's 16384" \
  expect_error "$LMRUN" "$WORK/t" --init-hf "$WORK/exp-llama-tiny" --data "$DATA"
mkdir "$WORK/partial"
python3 -c "
import json, struct
h = json.dumps({'model.norm.weight': {'dtype': 'F32', 'shape': [64], 'data_offsets': [0, 256]}}).encode()
open('$WORK/partial/model.safetensors', 'wb').write(struct.pack('<Q', len(h)) + h + bytes(256))"
MSG="has no tensor model.embed_tokens.weight (for tok_embed)" expect_error "$LMRUN" "$WORK/t" --init-hf "$WORK/partial" --data "$DATA"
"$LMC" "$SRC/models/gpt2-124m.lm" -q -o "$WORK/gpt2" --set V=256 --set D=32 --set H=4 --set L=1 --set batch=2 --set seq=16
MSG="--export-hf writes Llama models (the parameters of models/blocks/llama.lm and an untied lm_head)" expect_error "$LMRUN" "$WORK/gpt2" --export-hf "$WORK/g"
echo "9 passed, 0 failed"

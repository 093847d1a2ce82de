#!/bin/sh
# Hugging Face format, out and back: train, write the weights as a Hugging
# Face Llama (config.json + model.safetensors, the names and layouts
# transformers' LlamaForCausalLM loads), then start a new run from them.
# Expect: "wrote .../hf/config.json and .../hf/model.safetensors", then
# "weights from .../hf" and a first loss near the exported model's.
. "$(dirname "$0")/common.sh"
"$LMTRAIN" "$ROOT/models/tiny.lm" $SMALL --set steps="$STEPS" --save-interval "$STEPS" --out "$OUT/08/run"
"$LMTRAIN" "$ROOT/models/tiny.lm" $SMALL --set steps="$STEPS" --resume "$OUT/08/run/ckpt/latest" --export-hf "$OUT/08/hf"
"$LMTRAIN" "$ROOT/models/tiny.lm" $SMALL --set steps="$STEPS" --init-hf "$OUT/08/hf" --max-steps 3 --out "$OUT/08/again"

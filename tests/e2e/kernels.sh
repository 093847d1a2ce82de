#!/bin/sh
# The CUDA kernels of every preset and of a tensor-parallel plan (which
# adds the vocab-parallel cross-entropy kernels) compile with NVRTC, and so
# do the emulator's test kernels with their inline PTX (down to a cubin).
BIN=$1 SRC=$2
. "$SRC/tests/e2e/common.sh"
for m in tiny gpt2-124m llama-small; do "$LMC" "$SRC/models/$m.lm" -q -o "$WORK/$m"; done
"$LMC" "$SRC/models/tiny.lm" -q -o "$WORK/tiny-tp2" --set tp=2
"$BIN/tests/test_nvrtc" "$WORK/tiny/kernels.cu" "$WORK/gpt2-124m/kernels.cu" "$WORK/llama-small/kernels.cu" \
  "$WORK/tiny-tp2/kernels.cu" "$SRC/tests/emu/kernels.cu"

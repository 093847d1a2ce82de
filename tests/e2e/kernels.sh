#!/bin/sh
# The CUDA kernels of the presets (MoE's among them), of a tensor-parallel plan (which
# adds the vocab-parallel cross-entropy kernels) and typed for bf16 storage compile with NVRTC, and so
# do the emulator's test kernels with their inline PTX (down to a cubin).
# For sm_90a it prints ptxas's registers, shared memory and spills of every
# kernel; attention (head dims 32, 64, 96, 128 in bf16 storage, 64 in fp32), the optimizer and the kernels lmc
# generates for groups of ops must not spill. And MoE's bf16 bundle (every
# kind of part: sections, libraries, MoE's GEMMs, attention kernels)
# compiles part by part, each kernel in exactly one part, as the runtime
# compiles it in threads.
BIN=$1 SRC=$2
. "$SRC/tests/e2e/common.sh"
# (tiny's kernels are all in tiny-tp2's and moe-tiny's: it is not compiled apart;
# its generated kernels are theirs at other sizes, which name them)
for m in gpt2-124m llama-large moe-tiny; do "$LMC" "$SRC/models/$m.lm" -q -o "$WORK/$m"; done
"$LMC" "$SRC/models/tiny.lm" -q -o "$WORK/tiny-tp2" --set tp=2
names() { sed -n 's/.*__global__ void \(__launch_bounds__([^)]*) \)\{0,1\}\([A-Za-z0-9_]*\)(.*/\2/p' "$@" | sort -u; }
"$LMC" "$SRC/models/tiny.lm" -q -o "$WORK/tiny"
names "$WORK/tiny-tp2/kernels.cu" "$WORK/moe-tiny/kernels.cu" > "$WORK/covered"
left=$(names "$WORK/tiny/kernels.cu" | sed 's/_n[0-9]*_/_n_/; s/_r[0-9]*_d/_r_d/' | sort -u |
  comm -23 - "$(sed 's/_n[0-9]*_/_n_/; s/_r[0-9]*_d/_r_d/' "$WORK/covered" | sort -u > "$WORK/covered2"; echo "$WORK/covered2")")
[ -z "$left" ] || { echo "FAIL tiny's kernels not in tiny-tp2's nor moe-tiny's: $left"; exit 1; }
# and typed for bf16 storage (precision = bf16): GPT-2, llama-large, MoE
for m in gpt2-124m llama-large moe-tiny; do "$LMC" "$SRC/models/$m.lm" -q -o "$WORK/$m-bf16" --set precision=bf16; done
# and at head dim 128 (Llama 7B's; no preset has it): llama-large with 12 heads
"$LMC" "$SRC/models/llama-large.lm" -q -o "$WORK/llama-k128-bf16" --set precision=bf16 --set H=12 --set G=4
# and the kernels test_emu_ops runs on a GPU (gpu_check --ops) as it writes them, in bf16
# storage (fp32's differ in the typedef only; 15 s more each)
emu_ops=
if [ -x "$BIN/tests/test_emu_ops" ]; then
  "$BIN/tests/test_emu_ops" "$SRC/templates/kernels.cu" bf16 --write "$WORK/emu_ops_bf16.cu"
  emu_ops=$WORK/emu_ops_bf16.cu
fi
# (emu_ops' file through the front end alone: its kernels are the
# presets', at head dims 10 and 40 too, and what it checks is that the
# file as written compiles)
# (compute_80's PTX from GPT-2's fp32 bundle, the compute_80 code paths
# generated once: they differ from sm_90a's by the wgmma kernels alone,
# not by shape, so the other files go to sm_90a's cubin alone, whose
# ptxas report names each kernel; MoE's bf16 bundle to sm_90a part by
# part, as a GPU's runtime compiles it, and for compute_80 through
# NVRTC's front end (--syntax: every template instantiated, no code
# generated, 0.3 s against 10); tensor parallelism's through the front
# end alone: its attention kernels are moe-tiny's, at head dim 32, and
# its own, the vocab-parallel loss's, have nothing ptxas must check.
# fp32 storage, a checking mode, to a cubin at GPT-2's head dim alone:
# llama-large's and MoE's fp32 bundles through the front end, their
# inline PTX the bf16 bundles' and their spills no one's speed. Five
# front-end checks in place of code took 90 s off the test on 2 cores)
"$BIN/tests/test_nvrtc" -I "$SRC/templates" "$WORK/gpt2-124m/kernels.cu" --syntax "$WORK/llama-large/kernels.cu" \
  --syntax "$WORK/moe-tiny/kernels.cu" --syntax "$WORK/tiny-tp2/kernels.cu" --cubin "$WORK/gpt2-124m-bf16/kernels.cu" \
  --cubin "$WORK/llama-large-bf16/kernels.cu" --syntax "$WORK/moe-tiny-bf16/kernels.cu" --parts "$WORK/moe-tiny-bf16/kernels.cu" \
  --cubin "$WORK/llama-k128-bf16/kernels.cu" "$SRC/tests/emu/kernels.cu" ${emu_ops:+--syntax "$emu_ops"}

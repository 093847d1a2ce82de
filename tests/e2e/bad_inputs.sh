#!/bin/sh
# Bad data files, bundles and checkpoints: a clear message and exit 1.
BIN=$1 SRC=$2
. "$SRC/tests/e2e/common.sh"
need_data
small_model "$WORK/b" --set steps=4 --set batch=2 --set seq=16
"$LMRUN" "$WORK/b" --data "$DATA" --quiet --save-interval 2
CK="$WORK/b/ckpt/step_00000002"

MSG="cannot open data file '$WORK/nope.txt'" expect_error "$LMRUN" "$WORK/b" --data "$WORK/nope.txt"
: > "$WORK/empty.txt"
MSG="data file '$WORK/empty.txt' is empty" expect_error "$LMRUN" "$WORK/b" --data "$WORK/empty.txt"
printf 'In the beginning' > "$WORK/short.txt"
MSG="has 16 tokens: too few" expect_error "$LMRUN" "$WORK/b" --data "$WORK/short.txt"
python3 -c "
import struct, sys
h = [20240520, 1, 1000] + [0] * 253
open(sys.argv[1], 'wb').write(struct.pack('<256i', *h) + struct.pack('<100H', *range(100)))" "$WORK/trunc.bin"
MSG="is truncated: header says 1000 tokens, file holds 100" expect_error "$LMRUN" "$WORK/b" --data "$WORK/trunc.bin"
head -c 500 "$WORK/trunc.bin" > "$WORK/hdr.bin"
MSG="shorter than the 1024-byte shard header" expect_error "$LMRUN" "$WORK/b" --data "$WORK/hdr.bin"
python3 -c "
import struct, sys
open(sys.argv[1], 'wb').write(struct.pack('<256i', 12345, 1, 10, *[0]*253) + bytes(20))" "$WORK/magic.bin"
MSG="is not a token shard (magic 12345, want 20240520 or 20240801)" expect_error "$LMRUN" "$WORK/b" --data "$WORK/magic.bin"
python3 -c "
import struct, sys
toks = [7, 300] + [1] * 4000
open(sys.argv[1], 'wb').write(struct.pack('<256i', 20240520, 1, len(toks), *[0]*253) + struct.pack('<%dH' % len(toks), *toks))" "$WORK/vocab.bin"
MSG="token 300 at 1 is outside the model's vocab of 256" expect_error "$LMRUN" "$WORK/b" --data "$WORK/vocab.bin"

MSG="cannot read bundle file '$WORK/none/manifest.txt'" expect_error "$LMRUN" "$WORK/none" --data "$DATA"
mkdir "$WORK/broken" && head -n 7 "$WORK/b/manifest.txt" > "$WORK/broken/manifest.txt"
MSG="truncated manifest" expect_error "$LMRUN" "$WORK/broken" --data "$DATA"
cp "$WORK/b/manifest.txt" "$WORK/broken/" && head -n 20 "$WORK/b/rank0.sched" > "$WORK/broken/rank0.sched"
MSG="truncated schedule" expect_error "$LMRUN" "$WORK/broken" --data "$DATA"
sed 's/^  matmul /  matmool /' "$WORK/b/rank0.sched" > "$WORK/broken/rank0.sched"
MSG="unknown op" expect_error "$LMRUN" "$WORK/broken" --data "$DATA"
# a group's generated kernel: its name an identifier, its launch in range
sed -E 's/fused kernel=[a-z0-9_]+/fused kernel=lmc-fused/' "$WORK/b/rank0.sched" > "$WORK/broken/rank0.sched"
MSG="a fused instruction's kernel name is not an identifier" expect_error "$LMRUN" "$WORK/broken" --data "$DATA"
sed -E 's/(fused kernel=[a-z0-9_]+ grid=[0-9]+) block=256/\1 block=2048/' "$WORK/b/rank0.sched" > "$WORK/broken/rank0.sched"
MSG="a fused instruction's launch or body out of range" expect_error "$LMRUN" "$WORK/broken" --data "$DATA"
# and a norm backward's second kernel (finish=) and scratch buffer
grep -q ' finish=[a-z0-9_]* fgrid=[0-9]* scratch=[0-9]* ' "$WORK/b/rank0.sched" || fail "no group with a finish kernel"
sed -E 's/ finish=[a-z0-9_]+/ finish=lmc-finish/' "$WORK/b/rank0.sched" > "$WORK/broken/rank0.sched"
MSG="a fused instruction's kernel name is not an identifier" expect_error "$LMRUN" "$WORK/broken" --data "$DATA"
sed -E 's/ scratch=[0-9]+/ scratch=0/' "$WORK/b/rank0.sched" > "$WORK/broken/rank0.sched"
MSG="a fused instruction's launch or body out of range" expect_error "$LMRUN" "$WORK/broken" --data "$DATA"
sed -E 's/ fgrid=[0-9]+//' "$WORK/b/rank0.sched" > "$WORK/broken/rank0.sched"
MSG="missing field" expect_error "$LMRUN" "$WORK/broken" --data "$DATA"
# the backward pass's segments: in the program, in order, all of them; an
# asynchronous all-reduce waited for
sed 's/^  run bwd mb=0$/  run bwd mb=0 from=0 to=100000/' "$WORK/b/rank0.sched" > "$WORK/broken/rank0.sched"
MSG="a backward segment outside the backward program" expect_error "$LMRUN" "$WORK/broken" --data "$DATA"
sed 's/^  run bwd mb=0$/  run bwd mb=0 from=0 to=3/' "$WORK/b/rank0.sched" > "$WORK/broken/rank0.sched"
MSG="a microbatch's backward pass stops before the end of its program" expect_error "$LMRUN" "$WORK/broken" --data "$DATA"
sed 's/^  run bwd mb=0$/  run bwd mb=0 from=0 to=3\n  run bwd mb=0 from=4 to=5/' "$WORK/b/rank0.sched" > "$WORK/broken/rank0.sched"
MSG="a backward segment does not start where the microbatch's last one ended" expect_error "$LMRUN" "$WORK/broken" --data "$DATA"
sed 's/^  run bwd mb=0$/  run bwd mb=0\n  allreduce grad off=0 n=16 group=dp async/' "$WORK/b/rank0.sched" > "$WORK/broken/rank0.sched"
MSG="an asynchronous allreduce with no wait after it" expect_error "$LMRUN" "$WORK/broken" --data "$DATA"
# a CUDA knob set to what it does not take: "SETTING: it takes WHAT", exactly
bad_knob() {
  MSG="$1: it takes $2" expect_error env "$1" "$LMRUN" "$WORK/b" --data "$DATA" --backend cuda-emu --max-steps 1
}
bad_knob LMC_ATTENTION_DKV_QT=48 "32 or 64 (queries a step of dK/dV)"
bad_knob LMC_ATTENTION_ROWS=32 "64 or 128 (query rows a block of attention's forward and dQ)"
bad_knob LMC_ATTENTION_STAGES=3 "1 or 2 (stages of K and V tiles in attention's forward and dQ)"
bad_knob LMC_ATTENTION_SECTION=0 "a count of heads, 1 or more (heads a section of attention's launch order)"
bad_knob LMC_ATTENTION_SECTION=4x "a count of heads, 1 or more (heads a section of attention's launch order)"
bad_knob LMC_ATTENTION_WGMMA=3 "0, 1 or 2 (attention on wgmma, compute capability 9.0; 2: pipelined)"
bad_knob LMC_ATTENTION_TUNE=2 "0 (attention's default kernels) or 1 (timed, also on the emulator)"
bad_knob LMC_ATTENTION_WARPGROUPS=4 "1, 2 or 3 (warpgroups a block of attention's wgmma kernels)"
bad_knob LMC_MOE_SPLIT=65 "a count of parts from 1 to 64 (split-k of the MoE weight gradients' grouped GEMMs)"
bad_knob LMC_GEMM_BACKWARD_EPILOGUES=yes "0 (the GEMM, then kernels) or 1"
bad_knob LMC_SIDE_STREAM=2 "0 (every GEMM on one stream) or 1 (weight gradients beside)"
bad_knob LMC_GEMM_TUNE=2 "0 (cuBLASLt's heuristic's choice) or 1 (the fastest, timed once a GPU model)"
bad_knob LMC_STEPS_AHEAD=yes "0 (the host waits for each step) or 1 (the next step queued before it ends)"
bad_knob LMC_JIT_THREADS=0 "a count of threads from 1 to 64 (NVRTC programs compiled at once)"
bad_knob LMC_JIT_THREADS=all "a count of threads from 1 to 64 (NVRTC programs compiled at once)"
bad_knob LMC_GEMM_SPLIT=17 "0 (weight gradients' GEMMs whole), 1 (in the parts a model picks) or 2 to 16 parts"
bad_knob LMC_GEMM_SPLIT_TUNE=2 "0 (the model's parts untimed) or 1 (timed, also on the emulator)"
# a GPU without room (the emulator's LMC_CUDA_EMU_MEMORY, in MiB): for the
# plan, said before anything of it is allocated (65 MiB: the two GEMM
# workspaces' 64 and 1 for a 2.2 MiB plan); for any other allocation (16
# MiB: the first workspace's 32)
MSG="the plan needs 2.2 MiB of device memory on rank 0 (activations 0.3 MiB: 1 microbatch slot; weights, gradients and Adam 1.9 MiB) and lmc emulated CUDA device has 1.0 MiB free of 65.0 MiB: lower the batch or seq, raise microbatches, store activations in bf16 (--set precision=bf16) or split the model (tp, pp); \`lmc SPEC --plan N --plan-mem GIB\` lists the layouts of N ranks that fit" \
  expect_error env LMC_CUDA_EMU_MEMORY=65 "$LMRUN" "$WORK/b" --data "$DATA" --backend cuda-emu --max-steps 1
MSG="out of GPU memory: 32.0 MiB more asked for, with 0.0 MiB allocated by this rank; lmc emulated CUDA device has 16.0 MiB free of 16.0 MiB (lower the batch, raise microbatches or split the model; \`lmc SPEC --plan N --plan-mem GIB\` lists the layouts that fit)" \
  expect_error env LMC_CUDA_EMU_MEMORY=16 "$LMRUN" "$WORK/b" --data "$DATA" --backend cuda-emu --max-steps 1
MSG="the CUDA backend is not available: the CUDA driver did not start: LMC_CUDA_EMU_MEMORY=lots: it takes the device's MiB, 1 to 16777216" \
  expect_error env LMC_CUDA_EMU_MEMORY=lots "$LMRUN" "$WORK/b" --data "$DATA" --backend cuda-emu --max-steps 1
MSG="the CUDA backend is not available: the CUDA driver did not start: LMC_CUDA_EMU_STREAMS=late: it takes lazy, skew, shuffle or shuffle:N" \
  expect_error env LMC_CUDA_EMU_STREAMS=late "$LMRUN" "$WORK/b" --data "$DATA" --backend cuda-emu --max-steps 1
MSG="the CUDA backend is not available: the CUDA driver did not start: LMC_CUDA_EMU_STREAMS=shuffle:x: shuffle takes a seed, shuffle:N" \
  expect_error env LMC_CUDA_EMU_STREAMS=shuffle:x "$LMRUN" "$WORK/b" --data "$DATA" --backend cuda-emu --max-steps 1

# a kernels.cu that does not compile: which file, for what, which of the
# programs compiled at once, and the compiler's own words
cp -r "$WORK/b" "$WORK/badk" && echo '#error planted in kernels.cu' >> "$WORK/badk/kernels.cu"
MSG="NVRTC could not compile $WORK/badk/kernels.cu for sm_90a (program 0 of 2):" expect_error env LMC_JIT_THREADS=2 \
  XDG_CACHE_HOME="$WORK/badk.cache" "$LMRUN" "$WORK/badk" --data "$DATA" --backend cuda-emu --max-steps 1
grep -q "error: #error planted in kernels.cu" "$WORK/err" || fail "the compile error's own words not said"

cp -r "$CK" "$WORK/flip"
printf '\001' | dd of="$WORK/flip/rank0.ckpt" bs=1 seek=5000 conv=notrunc 2>/dev/null
MSG="checkpoint '$WORK/flip/rank0.ckpt' is corrupt or truncated (checksum mismatch)" expect_error "$LMRUN" "$WORK/b" --data "$DATA" --resume "$WORK/flip"
mkdir "$WORK/cut" && head -c 3000 "$CK/rank0.ckpt" > "$WORK/cut/rank0.ckpt"
MSG="is corrupt or truncated" expect_error "$LMRUN" "$WORK/b" --data "$DATA" --resume "$WORK/cut"
MSG="is not an lmc checkpoint (a step_N folder of rank*.ckpt shards)" expect_error "$LMRUN" "$WORK/b" --data "$DATA" --resume "$DATA"
MSG="cannot open checkpoint" expect_error "$LMRUN" "$WORK/b" --data "$DATA" --resume "$WORK/nope"
mkdir "$WORK/empty"
MSG="checkpoint '$WORK/empty' holds no shards" expect_error "$LMRUN" "$WORK/b" --data "$DATA" --resume "$WORK/empty"
small_model "$WORK/other" --set D=32 --set steps=4 --set batch=2 --set seq=16
MSG="does not match the bundle: it has tok_embed (16384 elements) where the bundle has tok_embed (8192 elements)" \
  expect_error "$LMRUN" "$WORK/other" --data "$DATA" --resume "$CK"
# headers that lie under a valid checksum
forge() {   # forge NAME PATTERN REPLACEMENT
  mkdir "$WORK/$1" && python3 "$SRC/tests/e2e/forge_ckpt.py" "$CK/rank0.ckpt" "$WORK/$1/rank0.ckpt" "$2" "$3"
}
forge negstep 'step 2' 'step -5'
MSG="checkpoint '$WORK/negstep/rank0.ckpt' is corrupt: bad step or dtype in its header" \
  expect_error "$LMRUN" "$WORK/b" --data "$DATA" --resume "$WORK/negstep"
forge wrap 'param tok_embed [0-9]+ ' 'param tok_embed 3074457345618258603 '
MSG="checkpoint '$WORK/wrap/rank0.ckpt' is corrupt: too short" expect_error "$LMRUN" "$WORK/b" --data "$DATA" --resume "$WORK/wrap"
forge parts 'split=-1 part=0 parts=1' 'split=0 part=0 parts=2147483647'
MSG="checkpoint '$WORK/parts/rank0.ckpt' is corrupt: bad parameter list" \
  expect_error "$LMRUN" "$WORK/b" --data "$DATA" --resume "$WORK/parts"
forge dtype 'dtype f32' 'dtype f16'
MSG="is corrupt: bad step or dtype in its header" expect_error "$LMRUN" "$WORK/b" --data "$DATA" --resume "$WORK/dtype"
MSG="nothing to do: the run is at step 4" expect_error "$LMRUN" "$WORK/b" --data "$DATA" --resume "$WORK/b/ckpt/latest"
MSG="unknown option '--bogus'" expect_error "$LMRUN" "$WORK/b" --bogus
MSG="--max-steps takes a non-negative integer, got 'ten'" expect_error "$LMRUN" "$WORK/b" --max-steps ten
echo "$expected passed, 0 failed"

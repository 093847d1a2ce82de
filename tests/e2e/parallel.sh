#!/bin/sh
# Every parallel layout trains the same model as one rank: 10 steps of a
# small Llama from the same seed; in double precision each step's loss and
# the final weights match the single-rank run to 1e-9 relative, in single
# precision to 1e-4.
BIN=$1 SRC=$2
. "$SRC/tests/e2e/common.sh"
need_data
mpi_env
SETS="--set D=32 --set H=4 --set G=2 --set F=48 --set L=4 --set batch=8 --set seq=16 --set steps=10 --set warmup=2"
passed=0

run one64 1 --f64
run one32 1 ""
run dp2 2 --f64 --set dp=2
compare dp2 one64 1e-9
run dp2_m2 2 --f64 --set dp=2 --set microbatches=2
compare dp2_m2 one64 1e-9
run dp4 4 --f64 --set dp=4
compare dp4 one64 1e-9
run dp2_f32 2 "" --set dp=2
compare dp2_f32 one32 1e-4
# small buckets: the last backward pass cut into segments, each bucket's
# all-reduce queued as soon as its gradients are final
run dp2_buckets 2 --f64 --set dp=2 --set microbatches=2 --set bucket_mb=0.01
compare dp2_buckets one64 1e-9
grep -q "run bwd mb=1 from=0 to=" "$WORK/dp2_buckets/rank1.sched" || { echo "FAIL dp2_buckets: no segments"; exit 1; }
run pp2_gpipe 2 --f64 --set pp=2 --set microbatches=4 --set schedule=gpipe
compare pp2_gpipe one64 1e-9
run pp2_1f1b 2 --f64 --set pp=2 --set microbatches=4
compare pp2_1f1b one64 1e-9
run pp4_1f1b_m8 4 --f64 --set pp=4 --set microbatches=8
compare pp4_1f1b_m8 one64 1e-9
run dp2_pp2 4 --f64 --set dp=2 --set pp=2 --set microbatches=2 --set bucket_mb=0.02
compare dp2_pp2 one64 1e-9
run pp2_f32 2 "" --set pp=2 --set microbatches=2
compare pp2_f32 one32 1e-4
run pp2_fused 2 --f64 --set pp=2 --set microbatches=2 --fuse=always   # the fused head on the last stage
compare pp2_fused one64 1e-9
run dp2_fused 2 --f64 --set dp=2 --fuse=recompute   # the head that recomputes its logits
compare dp2_fused one64 1e-9
run tp2 2 --f64 --set tp=2
compare tp2 one64 1e-9
run tp2_f32 2 "" --set tp=2
compare tp2_f32 one32 1e-4
run tp2_pp2 4 --f64 --set tp=2 --set pp=2 --set microbatches=2
compare tp2_pp2 one64 1e-9
run dp2_tp2_pp2 8 --f64 --set dp=2 --set tp=2 --set pp=2 --set microbatches=2
compare dp2_tp2_pp2 one64 1e-9
# tp = 4 needs 4 kv groups: a reference with G = 4
run one64_g4 1 --f64 --set G=4
run tp4 4 --f64 --set G=4 --set tp=4
compare tp4 one64_g4 1e-9

# GPT-2 style, tied input and output embeddings: with pp = 2 the first and
# the last stage each hold the table and sum their gradients
GPT="--set V=256 --set D=32 --set H=4 --set L=4 --set batch=8 --set seq=16 --set steps=10 --set warmup=2"
MODEL=gpt2-124m SETS=$GPT run gpt_one 1 --f64
MODEL=gpt2-124m SETS=$GPT run gpt_pp2 2 --f64 --set pp=2 --set microbatches=2
compare gpt_pp2 gpt_one 1e-9 k_b
MODEL=gpt2-124m SETS=$GPT run gpt_tp2_pp2 4 --f64 --set tp=2 --set pp=2 --set microbatches=2
compare gpt_tp2_pp2 gpt_one 1e-9 k_b
MODEL=gpt2-124m SETS=$GPT run gpt_dp2_tp2 4 --f64 --set dp=2 --set tp=2 --set bucket_mb=0.01
compare gpt_dp2_tp2 gpt_one 1e-9 k_b

# reshard on load: save after 5 steps at pp=2 and at tp=2 x pp=2, resume
# the last 5 on other layouts: the same run as straight through
EXTRA="--max-steps 5 --save-interval 5" run half 2 --f64 --set pp=2 --set microbatches=2
EXTRA="--max-steps 5 --save-interval 5" run half2 4 --f64 --set tp=2 --set pp=2 --set microbatches=2
resume() {   # resume FROM NAME NP [--set ...]
  from=$1 name=$2 np=$3; shift 3
  EXTRA="--resume $WORK/$from/ckpt/latest" run "$name" "$np" --f64 "$@"
  compare "$name" one64 1e-9
}
resume half resume_one 1
resume half resume_dp2 2 --set dp=2
resume half resume_tp2 2 --set tp=2
resume half resume_tp2_pp2 4 --set tp=2 --set pp=2 --set microbatches=2
resume half2 from_tp2pp2_to_pp4 4 --set pp=4 --set microbatches=4
resume half2 from_tp2pp2_to_one 1
echo "$passed passed, 0 failed"

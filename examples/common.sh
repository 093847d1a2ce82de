# Shared by the examples: the repository root, a small Llama that trains in
# a minute or two on 2 cores, and STEPS (the tests set it lower).
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LMTRAIN="$ROOT/scripts/lmtrain"
STEPS=${STEPS:-200}
OUT=${OUT:-$ROOT/runs/examples}
SMALL="--set D=128 --set H=4 --set G=2 --set F=344 --set L=4 --set batch=16 --set seq=64 --set warmup=20"
set -eu

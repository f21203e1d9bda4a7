#!/usr/bin/env bash
# Reproduce the digits models shipped in the repository and the rows of the quality table.
# Full precision first, then every QAT run from its EMA weights (each run single-threaded, several at
# once: on our 2-core machines the QAT runs took ~35 min together). Seeds are fixed.
#   ./scripts/train_digits.sh [RUN_DIR]      (default RUN_DIR: runs/digits)
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
RUN=${1:-runs/digits}
mkdir -p "$RUN"
export OMP_NUM_THREADS=1

robuq-train --data digits --model DiT-S/2 --depth 4 --hidden-size 96 --num-heads 3 --batch-size 32 \
  --steps 3000 --lr 1e-3 --ema-decay 0.999 --seed 0 --out "$RUN/fp" --ckpt-every 1000 --no-progress
FP="$RUN/fp/checkpoints/0003000.pt"

COMMON=(--init "$FP" --steps 800 --lr 3e-4 --ema-decay 0.995 --batch-size 32 --seed 0 --distill --no-progress)
qat() { name=$1; shift; robuq-train "${COMMON[@]}" "$@" --out "$RUN/$name" > "$RUN/$name.out" 2>&1 & }
qat a4 --bits W1.58A4 --rank 8
qat a3 --bits W1.58A3 --rank 8
qat a2ampn --ampn-budget 2.0 --ampn-warmup 200 --rank 8
qat a2 --bits W1.58A2 --rank 8
qat base_a4 --bits W1.58A4 --clip minmax --hadamard none --rank 0
qat base_a3 --bits W1.58A3 --clip minmax --hadamard none --rank 0
qat base_a2 --bits W1.58A2 --clip minmax --hadamard none --rank 0
wait

# release checkpoints (EMA weights only) and their .rq exports
python -m robuq.ship strip "$FP" models/digits/fp.pt
python -m robuq.ship strip "$RUN/a4/checkpoints/0000800.pt" models/digits/w158a4.pt
python -m robuq.ship strip "$RUN/a3/checkpoints/0000800.pt" models/digits/w158a3.pt
python -m robuq.ship strip "$RUN/a2ampn/checkpoints/0000800.pt" models/digits/w158a2-ampn.pt
python -m robuq.ship export

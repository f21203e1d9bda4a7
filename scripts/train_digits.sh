#!/usr/bin/env bash
# Reproduce the digits models shipped in the repository and the rows of the quality table.
# Full precision first, then, from its EMA weights (the release checkpoint models/digits/fp.pt), the
# full-precision model trained on for as many steps as QAT (the fair reference: same total training) and
# every QAT run (each run single-threaded, several at once; on our 2-core machines the QAT stage took
# about 2 hours at QAT_STEPS=2400). Seeds are fixed.
#   ./scripts/train_digits.sh [RUN_DIR]      (default RUN_DIR: runs/digits)
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
RUN=${1:-runs/digits}
mkdir -p "$RUN"
export OMP_NUM_THREADS=1
QAT_STEPS=2400

robuq-train --data digits --model DiT-S/2 --depth 4 --hidden-size 96 --num-heads 3 --batch-size 32 \
  --steps 3000 --lr 1e-3 --ema-decay 0.999 --seed 0 --out "$RUN/fp" --ckpt-every 1000 --no-progress
python -m robuq.ship strip "$RUN/fp/checkpoints/0003000.pt" models/digits/fp.pt
FP=models/digits/fp.pt

BASE=(--init "$FP" --steps "$QAT_STEPS" --lr 3e-4 --ema-decay 0.995 --batch-size 32 --seed 0 --no-progress)
robuq-train "${BASE[@]}" --out "$RUN/fp_cont" > "$RUN/fp_cont.out" 2>&1 &
qat() { name=$1; shift; robuq-train "${BASE[@]}" --distill "$@" --out "$RUN/$name" > "$RUN/$name.out" 2>&1 & }
qat a4 --bits W1.58A4 --rank 8
qat a3 --bits W1.58A3 --rank 8
qat a2ampn --ampn-budget 2.0 --ampn-warmup 200 --rank 8
qat a2 --bits W1.58A2 --rank 8
qat base_a4 --bits W1.58A4 --clip minmax --hadamard none --rank 0
qat base_a3 --bits W1.58A3 --clip minmax --hadamard none --rank 0
qat base_a2 --bits W1.58A2 --clip minmax --hadamard none --rank 0
wait

# release checkpoints (EMA weights only; every row of docs/quality.md) and the .rq exports of four of them
last=$(printf "%07d" "$QAT_STEPS")
strip() { python -m robuq.ship strip "$RUN/$1/checkpoints/$last.pt" "models/digits/$2.pt"; }
strip fp_cont fp-cont
strip a4 w158a4
strip a3 w158a3
strip a2 w158a2
strip a2ampn w158a2-ampn
strip base_a4 base-w158a4
strip base_a3 base-w158a3
strip base_a2 base-w158a2
python -m robuq.ship export

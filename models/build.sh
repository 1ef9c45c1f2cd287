#!/usr/bin/env bash
# Reproduce models/balancer.onnx and models/metrics.json from scratch.
#
#   models/build.sh
#
# Three rounds of simulated data: the first with the built-in heuristic controller (and static
# weights), the next two driven by the model of the previous round, so the final model has
# seen the states its own weights lead to. Every step is seeded; data goes to models/data/.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
BIN=${FULCRUM_BIN:-target/release/fulcrum}
DATA=models/data
export FULCRUM_BIN="$BIN"

if [ ! -x "$BIN" ]; then
    cargo build --release -p fulcrum
fi
mkdir -p "$DATA"

# Round 1: heuristic controller and static weights.
"$PY" models/collect.py --seed 1 --count 150 --out "$DATA/train.csv"
"$PY" models/collect.py --seed 2 --count 40 --out "$DATA/heldout.csv"
"$PY" models/train.py --seed 0 --iters 100 \
    --train "$DATA/train.csv" --heldout "$DATA/heldout.csv" \
    --out "$DATA/round1.onnx" --metrics "$DATA/round1.json"

# Round 2: +model policies driven by the round-1 model.
"$PY" models/collect.py --seed 3 --count 150 --out "$DATA/train-onpolicy.csv" --model "$DATA/round1.onnx"
"$PY" models/collect.py --seed 4 --count 40 --out "$DATA/heldout-onpolicy.csv" --model "$DATA/round1.onnx"
"$PY" models/train.py --seed 0 --iters 100 \
    --train "$DATA/train.csv" "$DATA/train-onpolicy.csv" \
    --heldout "$DATA/heldout.csv" "$DATA/heldout-onpolicy.csv" \
    --out "$DATA/round2.onnx" --metrics "$DATA/round2.json"

# Round 3: driven by the round-2 model; the final model trains on all three rounds.
"$PY" models/collect.py --seed 5 --count 150 --out "$DATA/train-onpolicy2.csv" --model "$DATA/round2.onnx" --offset 2
"$PY" models/collect.py --seed 6 --count 40 --out "$DATA/heldout-onpolicy2.csv" --model "$DATA/round2.onnx" --offset 2
"$PY" models/train.py --seed 0 --iters 100 \
    --train "$DATA/train.csv" "$DATA/train-onpolicy.csv" "$DATA/train-onpolicy2.csv" \
    --heldout "$DATA/heldout.csv" "$DATA/heldout-onpolicy.csv" "$DATA/heldout-onpolicy2.csv" \
    --out models/balancer.onnx --metrics models/metrics.json

# Benchmark on the public suite.
"$PY" models/evaluate.py --bin "$BIN" --model models/balancer.onnx --json models/benchmark.json | tee models/benchmark.md

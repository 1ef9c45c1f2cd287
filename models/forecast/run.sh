#!/usr/bin/env bash
# Reproduce the forecast model and its card's numbers from scratch:
#
#   models/forecast/run.sh
#
# 1. train.py: feature rows from `fulcrum forecast --dump-features` on generated training
#    series (seed 1) and validation series (seed 3); three candidates; the one with the lowest
#    validation MAPE is exported to models/forecast.onnx (+ models/forecast/train.json).
# 2. evaluate.py: that model, fulcrum's built-in forecaster and the baselines on held-out
#    series (seed 2) and the unseen set (models/forecast/metrics.json, results.md).
# 3. check.py: the dumped rows' layout and the exported model's schema and outputs.
# 4. evaluate.py on a recorded series (recorded.json, recorded.md).
#
# Every step is seeded. Uses .venv/bin/python (scripts/setup.sh) and the binary named by
# FULCRUM_BIN (default target/release/fulcrum, built if missing).
set -euo pipefail
cd "$(dirname "$0")/../.."

PY=${PYTHON:-.venv/bin/python}
if [ ! -x "$PY" ]; then
    scripts/setup.sh bench
fi
# The baselines' packages are needed here only, not by the tests.
"$PY" -m pip install -q -r models/forecast/requirements.txt ||
    { echo "run.sh: could not install models/forecast/requirements.txt (no network to PyPI?)" >&2; exit 1; }
BIN=${FULCRUM_BIN:-target/release/fulcrum}
export FULCRUM_BIN="$BIN"
if [ ! -x "$BIN" ]; then
    cargo build --release -p fulcrum
fi

start=$(date +%s)
"$PY" models/forecast/train.py --out models/forecast.onnx --metrics models/forecast/train.json
"$PY" models/forecast/evaluate.py --model models/forecast.onnx \
    --out models/forecast/metrics.json --markdown models/forecast/results.md
"$PY" models/forecast/check.py --model models/forecast.onnx
# 4. A recorded series nobody generated (Taylor's half-hourly electricity demand, from PyPI's
#    pmdarima), judged the same way (recorded.json, recorded.md).
"$PY" benches/replay_series.py taylor "${CARGO_TARGET_DIR:-target}/replay-cache" "${CARGO_TARGET_DIR:-target}/taylor-12w.csv" 10 12
"$PY" models/forecast/evaluate.py --model models/forecast.onnx --sets recorded \
    --recorded taylor="${CARGO_TARGET_DIR:-target}/taylor-12w.csv":48 \
    --out models/forecast/recorded.json --markdown models/forecast/recorded.md
echo "run.sh: $(( $(date +%s) - start )) s" >&2

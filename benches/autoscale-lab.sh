#!/usr/bin/env bash
# Scalers with real sockets: Kubernetes' HPA rule (reactive), fulcrum's recommendation read from
# the running proxy (forecast) and a pool sized for the peak (static), on the public autoscale
# scenarios, each played by `fulcrum lab --scaler` (real backend servers started and stopped as
# the scaler decides, the real proxy following them through configuration reloads, an open-loop
# load generator) and by `fulcrum sim --scaler` for the side-by-side. Writes the runs' JSON and
# tables into $OUT, a summary CSV/JSON beside it, and the Markdown report on stdout.
#
#   benches/autoscale-lab.sh > benches/results/autoscale-lab.md    # the committed results
#   SCENARIOS="bursts" SCALERS="reactive forecast" TIME_SCALE=0.05 OUT=/tmp/al benches/autoscale-lab.sh
#
# TIME_SCALE (wall seconds per scenario second, default 0.025) compresses every time of the
# scenario (its 80-minute runs take 2 minutes each); rates, service times and so a copy's
# capacity are not scaled. With CAPACITY=1 (the default) each scenario is also run under
# `forecast` and `forecast:60` (scale_down_stabilization_s = 60) with `backend_capacity_rps`
# set to a copy's true capacity (concurrency / mean service time), what an operator who
# measured the backend would configure. Fifteen runs take about 32 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
TIME_SCALE="${TIME_SCALE:-0.025}"
SCENARIOS="${SCENARIOS:-compressed-day bursts level-shift}"
SCALERS="${SCALERS:-reactive forecast static}"
POLICY="${POLICY:-least_connections}"
OUT="${OUT:-benches/results/autoscale-lab}"
CAPACITY="${CAPACITY:-1}"
cargo build --release -q -p fulcrum
bin="${CARGO_TARGET_DIR:-target}/release/fulcrum"
mkdir -p "$OUT"
scalers=()
for s in $SCALERS; do scalers+=(--scaler "$s"); done
for sc in $SCENARIOS; do
    file="benches/scenarios/autoscale/$sc.toml"
    echo "== $sc: simulator" >&2
    "$bin" sim --scenario "$file" --policy "$POLICY" "${scalers[@]}" --scaler forecast:60 \
        --json "$OUT/sim-$sc.json" >"$OUT/sim-$sc.md"
    echo "== $sc: lab at time scale $TIME_SCALE" >&2
    "$bin" lab --scenario "$file" --policy "$POLICY" "${scalers[@]}" \
        --time-scale "$TIME_SCALE" --quiet --json "$OUT/lab-$sc.json" >"$OUT/lab-$sc.md"
    if [ "$CAPACITY" = 1 ]; then
        cap=$(python3 -c '
import math, sys, tomllib
sc = tomllib.load(open(sys.argv[1], "rb"))
b = next(x for x in sc["backends"] if x["name"] == sc["autoscale"]["backend"])
j = b.get("service_jitter", 0.0)
print(round(b["concurrency"] * 1000 / (b["service_ms"] * math.exp(j * j / 2)), 1))' "$file")
        echo "== $sc: lab, forecast and forecast:60 with backend_capacity_rps = $cap" >&2
        "$bin" lab --scenario "$file" --policy "$POLICY" --scaler forecast --scaler forecast:60 \
            --pool-toml "autoscale.backend_capacity_rps = $cap" \
            --time-scale "$TIME_SCALE" --quiet --json "$OUT/lab-capacity-$sc.json" \
            >"$OUT/lab-capacity-$sc.md"
    fi
done
python3 benches/autoscale_lab_summary.py "$OUT" $SCENARIOS

#!/usr/bin/env bash
# Compare scalers in the simulator on the autoscale suite (benches/scenarios/autoscale/):
# Kubernetes' HPA, fulcrum's forecast and a static pool sized for the peak. Prints the
# Markdown table; with OUT=DIR also an SVG plot per scenario (demand, forecast plan, copies
# serving under each scaler) into DIR, and with TIMELINE_CSV=1 every run's steps as CSV.
#
#   OUT=benches/results/autoscale benches/autoscale.sh    # the committed results
#   POLICY=p2c_ewma TIMELINE_CSV=1 OUT=/tmp/autoscale benches/autoscale.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p fulcrum-sim --example autoscale
bin="${CARGO_TARGET_DIR:-target}/release/examples/autoscale"
"$bin" "${SCENARIOS:-benches/scenarios/autoscale}" ${OUT:+"$OUT"}

#!/usr/bin/env bash
# Compare scalers in the simulator on the autoscale suite (benches/scenarios/autoscale/):
# Kubernetes' HPA, fulcrum's forecast and a static pool sized for the peak. Prints the
# Markdown table; with OUT=DIR also writes every run's control steps as CSV into DIR.
#
#   benches/autoscale.sh > benches/results/autoscale-table.md
#   POLICY=p2c_ewma OUT=/tmp/autoscale benches/autoscale.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p fulcrum-sim --example autoscale
bin="${CARGO_TARGET_DIR:-target}/release/examples/autoscale"
"$bin" "${SCENARIOS:-benches/scenarios/autoscale}" ${OUT:+"$OUT"}

#!/usr/bin/env bash
# Compare scalers in the simulator: Kubernetes' HPA, fulcrum's forecast and a static pool sized
# for the peak, on the public autoscale suite (benches/scenarios/autoscale/) and, apart, on the
# scenarios kept out of every tuning (benches/scenarios/autoscale-unseen/ and
# autoscale-unseen2/). Prints the Markdown tables (every run, then the issue's targets per
# scenario); with OUT=DIR also an SVG plot per scenario (demand, forecast plan, copies serving
# under each scaler) into DIR (the unseen ones into DIR-unseen and DIR-unseen2), and with
# TIMELINE_CSV=1 every run's steps as CSV.
#
#   OUT=benches/results/autoscale benches/autoscale.sh    # the committed results
#   POLICY=p2c_ewma TIMELINE_CSV=1 OUT=/tmp/autoscale benches/autoscale.sh
#   SCENARIOS=DIR SCALERS=forecast STEADY=0 benches/autoscale.sh   # one directory, one scaler
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p fulcrum-sim --example autoscale
bin="${CARGO_TARGET_DIR:-target}/release/examples/autoscale"
if [ -n "${SCENARIOS:-}" ]; then
    "$bin" "$SCENARIOS" ${OUT:+"$OUT"}
    exit
fi
echo "### Public suite (benches/scenarios/autoscale/)"
echo
"$bin" benches/scenarios/autoscale ${OUT:+"$OUT"}
echo
echo "### Unseen (benches/scenarios/autoscale-unseen/)"
echo
"$bin" benches/scenarios/autoscale-unseen ${OUT:+"$OUT-unseen"}
echo
echo "### Unseen, second set (benches/scenarios/autoscale-unseen2/)"
echo
"$bin" benches/scenarios/autoscale-unseen2 ${OUT:+"$OUT-unseen2"}

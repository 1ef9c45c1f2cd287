#!/usr/bin/env bash
# Replay recorded request-rate series through the simulator with every scaler, as an operator
# replays a pool's own history (its `history_file`, or a Prometheus export of
# fulcrum_pool_requests_per_second) before letting the recommendation drive the backends.
# Scenarios in benches/scenarios/autoscale-replay/ (`[load] trace = "FILE.csv"`):
#
#   compressed-day-replayed  compressed-day's arrivals as the simulator counted them per 10 s
#                            step: how close a replay of a counted series comes to the original
#   taylor                   four weeks of a recorded demand series fulcrum was never tuned on
#                            (Taylor's half-hourly electricity demand, downloaded from PyPI's
#                            pmdarima once into $CACHE; not committed)
#
#   benches/replay.sh                                   # tables on stdout
#   OUT=benches/results/autoscale-replay benches/replay.sh   # the committed results and plots
#   SCALERS=hpa,forecast benches/replay.sh
set -euo pipefail
cd "$(dirname "$0")/.."
dir=benches/scenarios/autoscale-replay
cache="${CACHE:-${CARGO_TARGET_DIR:-target}/replay-cache}"
cargo build --release -q -p fulcrum-sim --example autoscale
bin="${CARGO_TARGET_DIR:-target}/release/examples/autoscale"
if ! command -v python3 >/dev/null 2>&1; then
    echo "replay: python3 is needed to write the series (install Python 3)" >&2
    exit 1
fi

# compressed-day as counted: one run of the HPA is enough, the arrivals do not depend on the scaler.
counted="$(mktemp -d)"
trap 'rm -rf "$counted"' EXIT
mkdir -p "$counted/in"
cp benches/scenarios/autoscale/compressed-day.toml "$counted/in/"
TIMELINE_CSV=1 SCALERS=hpa "$bin" "$counted/in" "$counted/out" > /dev/null
python3 benches/replay_series.py counted "$counted/out/compressed-day-hpa.csv" "$dir/compressed-day.csv"
python3 benches/replay_series.py taylor "$cache" "$dir/taylor.csv" 30 4
python3 benches/replay_series.py taylor "$cache" "$dir/taylor-fast.csv" 10 4

echo "### Replayed series (benches/scenarios/autoscale-replay/)"
echo
"$bin" "$dir" ${OUT:+"$OUT"}
# The original of the round trip, with the same scalers, for the comparison.
echo
echo "### The original (benches/scenarios/autoscale/compressed-day.toml)"
echo
"$bin" "$counted/in"

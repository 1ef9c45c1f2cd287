#!/usr/bin/env bash
# Run every scenario of the public suite in the simulator or the loopback lab and write the
# results under benches/results/{sim,lab}/SCENARIO/ (results.json, report.md, SVG plots).
#
#   benches/run-suite.sh sim [POLICY ...]            # default: the four algorithms + oracle
#   TIME_SCALE=0.5 benches/run-suite.sh lab [POLICY ...]
#
# SCENARIOS="homogeneous heterogeneous" limits the run to some scenarios; RESULTS=lab-model
# writes under benches/results/lab-model/ instead of benches/results/MODE/.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:?usage: benches/run-suite.sh sim|lab [POLICY ...]}"
shift
policies=("$@")
if [[ ${#policies[@]} -eq 0 ]]; then
  policies=(round_robin weighted_round_robin least_connections p2c_ewma)
  [[ "$mode" == sim ]] && policies+=(oracle)
fi
scenarios="${SCENARIOS:-homogeneous heterogeneous one-slow-backend fast-failing transient-degradation load-ramp}"
scripts/setup.sh build
[[ -n "${FULCRUM_BIN:-}" ]] || cargo build --release -p fulcrum
bin="${FULCRUM_BIN:-target/release/fulcrum}"
args=()
for p in "${policies[@]}"; do args+=(--policy "$p"); done
extra=()
[[ "$mode" == lab ]] && extra+=(--time-scale "${TIME_SCALE:-1}")
for name in $scenarios; do
  out="benches/results/${RESULTS:-$mode}/$name"
  mkdir -p "$out"
  echo "== $mode $name" >&2
  "$bin" "$mode" --scenario "benches/scenarios/$name.toml" "${args[@]}" "${extra[@]}" \
    --json "$out/results.json" --report "$out" > /dev/null
  {
    echo
    echo "Produced on $(date -u +%Y-%m-%d) by:"
    echo
    echo '```'
    echo "$bin $mode --scenario benches/scenarios/$name.toml ${args[*]} ${extra[*]} --json $out/results.json --report $out"
    echo '```'
  } >> "$out/report.md"
done

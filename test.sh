#!/usr/bin/env bash
# Install what is missing, then run every check CI runs: formatting, clippy, all tests.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh test
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace 2>&1 | tee "$log" || status=$?
# One closing line for the whole workspace, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "fulcrum tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"

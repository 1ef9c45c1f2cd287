#!/usr/bin/env bash
# Install what is missing, then run every check CI runs: formatting, clippy, all tests.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh test
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace

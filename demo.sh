#!/usr/bin/env bash
# Install what is missing, build fulcrum, and run the demo: two local backends behind the proxy
# on the embedded default configuration (proxy :8080, admin :9900).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh build
cargo build --release -p fulcrum
exec target/release/fulcrum demo "$@"

#!/usr/bin/env bash
# Install what is missing, build fulcrum, and run the demo: four uneven loopback backends, a
# steady open-loop load and the proxy with weights tuned by the ONNX model (proxy :8080, status
# page http://127.0.0.1:9900/). `./demo.sh --static` runs the same story with least connections
# over static weights (proxy :8081, status page http://127.0.0.1:9901/), beside it if you like.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh build
cargo build --release -p fulcrum
exec target/release/fulcrum demo "$@"

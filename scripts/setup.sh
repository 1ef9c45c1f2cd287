#!/usr/bin/env bash
# Install what fulcrum needs on a Debian machine, skipping whatever is already there.
# Usage: scripts/setup.sh [build|test|bench]
#   build: cmake (pingora's zlib-ng needs it), a Rust toolchain check, and .venv with
#          ONNX Runtime and the training stack (models/requirements.txt)
#   test:  build + Prometheus and promtool (Debian package `prometheus`) for the metrics and
#          dashboard tests, curl, openssl and nghttp, the real clients of the TLS tests,
#          chromium, the real browser of the status page's test, and hadolint and
#          kubernetes-validate in .venv (docker/requirements.txt)
#   bench: test + wrk, nginx-light, haproxy for the peer comparison, llvm-profdata of rustc's
#          LLVM for scripts/build-pgo.sh, and cargo-fuzz (with the nightly toolchain) for
#          scripts/fuzz.sh
set -euo pipefail
want="${1:-build}"
cd "$(dirname "$0")/.."

need_cmds=(cmake)
need_pkgs=(cmake)
if [[ "$want" == test || "$want" == bench ]]; then
  need_cmds+=(promtool nghttp curl openssl chromium); need_pkgs+=(prometheus nghttp2-client curl openssl chromium)
fi
if [[ "$want" == bench ]]; then
  need_cmds+=(wrk nginx haproxy taskset prlimit slowhttptest perf); need_pkgs+=(wrk nginx-light haproxy util-linux util-linux slowhttptest linux-perf)
fi
# scripts/build-pgo.sh merges its profile with the llvm-profdata of rustc's own LLVM version.
if [[ "$want" == bench ]] && command -v rustc >/dev/null 2>&1; then
  llvm_major="$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')"
  if [[ -n "$llvm_major" ]]; then need_cmds+=("llvm-profdata-$llvm_major"); need_pkgs+=("llvm-$llvm_major"); fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is not installed. Install Rust (https://rustup.rs) and run this again." >&2
  exit 1
fi

# The Python venv with ONNX Runtime (its wheel carries libonnxruntime) and the training stack,
# and for tests the checks of the deployment files.
setup_venv() {
  local reqs=(models/requirements.txt)
  if [[ "$want" == test || "$want" == bench ]]; then
    reqs+=(docker/requirements.txt)
  fi
  local stamp=.venv/.fulcrum-requirements
  if [[ -f "$stamp" ]] && cat "${reqs[@]}" | cmp -s - "$stamp"; then
    return 0
  fi
  if ! command -v python3 >/dev/null 2>&1; then
    echo "setup: python3 is missing; install Python 3.10+ and run this again." >&2
    exit 1
  fi
  echo "setup: installing ${reqs[*]} into .venv" >&2
  if [[ ! -x .venv/bin/pip ]] && ! python3 -m venv .venv; then
    echo "setup: python3 -m venv failed; install the venv module (Debian: apt-get install -y python3-venv)." >&2
    exit 1
  fi
  local args=()
  for r in "${reqs[@]}"; do args+=(-r "$r"); done
  if ! .venv/bin/pip install -q "${args[@]}"; then
    echo "setup: pip could not install ${reqs[*]} (no network or no package index?)." >&2
    echo "       Install them into .venv by another route, or set ORT_DYLIB_PATH to a libonnxruntime.so." >&2
    exit 1
  fi
  cat "${reqs[@]}" > "$stamp"
}

# scripts/fuzz.sh: cargo-fuzz runs on the nightly toolchain.
setup_fuzz() {
  if cargo +nightly fuzz --version >/dev/null 2>&1; then
    return 0
  fi
  if ! cargo +nightly --version >/dev/null 2>&1; then
    if ! command -v rustup >/dev/null 2>&1 || ! rustup toolchain install nightly --profile minimal; then
      echo "setup: cargo-fuzz needs the nightly toolchain (rustup toolchain install nightly)." >&2
      exit 1
    fi
  fi
  echo "setup: installing cargo-fuzz" >&2
  if ! cargo install --locked cargo-fuzz; then
    echo "setup: cargo install cargo-fuzz failed (no network or no crate registry?)." >&2
    exit 1
  fi
}
if [[ "$want" == bench ]]; then
  setup_fuzz
fi

missing=()
for i in "${!need_cmds[@]}"; do
  command -v "${need_cmds[$i]}" >/dev/null 2>&1 || missing+=("${need_pkgs[$i]}")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  setup_venv
  exit 0
fi

echo "setup: installing ${missing[*]}" >&2
if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: no apt-get here; install these yourself: ${missing[*]}" >&2
  exit 1
fi
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo"
  else
    echo "setup: not root and no password-less sudo. As root, run:" >&2
    echo "    apt-get update && apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
  echo "setup: apt-get could not install ${missing[*]} (no network or no package mirror?)." >&2
  echo "       Install them by another route and run this again." >&2
  exit 1
fi
# The prometheus package starts a server we do not need; leave the machine as we found it.
if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null 2>&1; then
  $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
setup_venv

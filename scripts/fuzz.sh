#!/usr/bin/env bash
# Run every cargo-fuzz target for a bounded time, on the committed corpus.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]   (default 60 s each, every target)
# FUZZ_SANITIZER=address adds AddressSanitizer; the default `none` keeps coverage feedback and
# debug assertions but builds and runs several times faster (fulcrum's own crates forbid unsafe).
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). A crash stops the
# run; its input is left under fuzz/artifacts/TARGET/ (`cargo +nightly fuzz fmt TARGET FILE`
# prints it), to be turned into a test in the crate that owns the code.
set -euo pipefail
seconds="${1:-60}"
sanitizer="${FUZZ_SANITIZER:-none}"
shift || true
cd "$(dirname "$0")/../fuzz"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz: needs nightly Rust and cargo-fuzz: rustup toolchain install nightly && cargo install cargo-fuzz" >&2
  exit 1
fi

targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

for t in "${targets[@]}"; do
  echo "fuzz: $t for ${seconds}s"
  mkdir -p "corpus/$t"
  # -rss_limit_mb guards against inputs that make a reader allocate without bound.
  cargo +nightly fuzz run -s "$sanitizer" "$t" "corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1
done

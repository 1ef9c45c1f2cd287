#!/usr/bin/env bash
# Build fulcrum with profile-guided optimisation (PGO).
#
#   scripts/build-pgo.sh                 writes $CARGO_TARGET_DIR/release/fulcrum-pgo
#
# 1. An instrumented release build of fulcrum (rustc -Cprofile-generate).
# 2. It serves a training mix on loopback, through a one-worker nginx origin: HTTP/1.1
#    keep-alive GETs (to a pool with static weights and to one the model tunes), a GET per
#    connection, POSTs with a body, HTTPS keep-alive GETs, h2c and h2 over TLS, the proxy's
#    own answers (404 for no route, 502 for a backend that refuses) and admin scrapes. The
#    profile is written when fulcrum exits.
# 3. LLVM merges the profile, and the release build uses it (rustc -Cprofile-use).
#
# The profile is made from this tree on every run, so it never describes other code. The
# builds go to their own target directories (the flags differ from a plain release build's).
#
# Needs: wrk, nginx, curl, openssl, h2load (nghttp2-client), and an llvm-profdata of rustc's
# LLVM major version (Debian: apt-get install -y llvm-22, or rustup component add llvm-tools).
# Environment: CARGO_TARGET_DIR (default target/), TRAIN_SECONDS (per HTTP/1 phase, default 4).
set -euo pipefail
BENCH=build-pgo
# shellcheck source=../benches/lib.sh
source "$(dirname "$0")/../benches/lib.sh"
missing=()
for tool in wrk nginx curl openssl h2load taskset; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
((${#missing[@]} == 0)) || die "missing: ${missing[*]}
  install them with:  apt-get install -y wrk nginx-light curl openssl nghttp2-client util-linux"
# The training only needs traffic, not a quiet core: on one core, everything shares it.
if (($(nproc) < 2)); then CLIENT_CORE="$PROXY_CORE"; fi

host="$(rustc -vV | sed -n 's/^host: //p')"
llvm_major="$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')"
profdata=""
for cand in "$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata" \
    "$(command -v "llvm-profdata-$llvm_major" || true)" "$(command -v llvm-profdata || true)"; do
    [[ -n "$cand" && -x "$cand" ]] || continue
    if "$cand" --version 2>/dev/null | grep -q "LLVM version $llvm_major\."; then
        profdata="$cand"
        break
    fi
done
[[ -n "$profdata" ]] || die "no llvm-profdata of LLVM $llvm_major (rustc's):
  install it with:  apt-get install -y llvm-$llvm_major   (or: rustup component add llvm-tools)"

seconds="${TRAIN_SECONDS:-4}"
gen_dir="$TARGET_DIR/pgo-generate"
# A fixed path: it is part of the build flags, which a rebuild compares.
raw="$gen_dir/profraw"
use_dir="$TARGET_DIR/pgo-use"
out="$TARGET_DIR/release/fulcrum-pgo"
# --target: the flags then reach fulcrum's code only, not build scripts or proc macros.
build=(cargo build --release --locked -p fulcrum --bin fulcrum --target "$host")

log "1/3 instrumented build ($gen_dir)"
(cd "$ROOT" && RUSTFLAGS="-Cprofile-generate=$raw" "${build[@]}" --target-dir "$gen_dir") >&2 \
    || die "instrumented build failed"

log "2/3 training"
rm -rf "$raw"
start_origin
bash "$ROOT/scripts/make-certs.sh" "$WORK/certs" >/dev/null 2>&1 || die "make-certs.sh failed"
port="$(free_port)"
tls_port="$(free_port)"
admin_port="$(free_port)"
dead_port="$(free_port)" # nothing listens: the pool behind /dead answers 502
conf="$WORK/fulcrum.toml"
cat >"$conf" <<EOF
[server]
listen = ["127.0.0.1:$port"]
tls_listen = ["127.0.0.1:$tls_port"]
threads = 1

[[server.certificates]]
cert = "$WORK/certs/server.pem"
key = "$WORK/certs/server.key"

[admin]
listen = "127.0.0.1:$admin_port"

[[routes]]
host = "*"
path_prefix = "/dead"
pool = "dead"

[[routes]]
host = "*"
path_prefix = "/model"
pool = "model"

[[routes]]
host = "localhost"
path_prefix = "/"
pool = "web"

[[routes]]
host = "127.0.0.1"
path_prefix = "/"
pool = "web"

[pools.web]
algorithm = "least_connections"

[pools.web.health_check]
path = "/"
interval_ms = 10000
timeout_ms = 1000

[[pools.web.backends]]
addr = "127.0.0.1:$BACKEND_PORT"
weight = 1

[pools.model]
algorithm = "least_connections"
weights = "model"

[[pools.model.backends]]
addr = "127.0.0.1:$BACKEND_PORT"
weight = 1

[control]
model = "$ROOT/models/balancer.onnx"

[pools.dead]
algorithm = "round_robin"

[[pools.dead.backends]]
addr = "127.0.0.1:$dead_port"
weight = 1
EOF
"$gen_dir/$host/release/fulcrum" check -c "$conf" >/dev/null || die "training config refused"
RUST_LOG=error taskset -c "$PROXY_CORE" "$gen_dir/$host/release/fulcrum" run -c "$conf" \
    >"$WORK/fulcrum.stdout" 2>"$WORK/fulcrum.stderr" &
fulcrum_pid=$!
PIDS_TO_STOP+=("$fulcrum_pid")
wait_http "$port" "instrumented fulcrum"

cat >"$WORK/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = string.rep("x", 2048)
wrk.headers["Content-Type"] = "application/octet-stream"
EOF
client=(taskset -c "$CLIENT_CORE")
base="http://127.0.0.1:$port"
"${client[@]}" wrk -t1 -c32 -d"${seconds}s" "$base/" >/dev/null
# A pool whose weights the model tunes: its picks and the control thread's work.
"${client[@]}" wrk -t1 -c32 -d"${seconds}s" "$base/model/" >/dev/null
metrics="$(curl -fsS "http://127.0.0.1:$admin_port/metrics" || true)"
grep -q '^fulcrum_model_loaded 1' <<<"$metrics" \
    || log "warning: the model did not load (no ONNX Runtime? set ORT_DYLIB_PATH): its pool trained on static weights"
"${client[@]}" wrk -t1 -c8 -d"$((seconds / 2 + 1))s" -H "Connection: close" "$base/" >/dev/null
"${client[@]}" wrk -t1 -c16 -d"$((seconds / 2 + 1))s" -s "$WORK/post.lua" "$base/upload" >/dev/null
"${client[@]}" wrk -t1 -c16 -d"$((seconds / 2 + 1))s" "https://localhost:$tls_port/" >/dev/null
"${client[@]}" h2load -n 20000 -c 8 -m 8 "$base/" >/dev/null
"${client[@]}" h2load -n 10000 -c 4 -m 8 "https://localhost:$tls_port/" >/dev/null
for _ in $(seq 200); do
    curl -s -o /dev/null -H "Host: unrouted.example" "$base/" || true
    curl -s -o /dev/null "$base/dead/x" || true
done
for _ in $(seq 20); do curl -s -o /dev/null "http://127.0.0.1:$admin_port/metrics" || true; done

# SIGINT: fulcrum exits through exit(3), which writes the profile.
stop_pid "$fulcrum_pid"
shopt -s nullglob
files=("$raw"/*.profraw)
((${#files[@]})) || die "the instrumented fulcrum wrote no profile (logs: $(tail -3 "$WORK/fulcrum.stderr"))"
mkdir -p "$use_dir"
"$profdata" merge -o "$WORK/fulcrum.profdata" "${files[@]}" || die "llvm-profdata merge failed"
# Named by its contents: the flags name it, so a new profile rebuilds everything it shapes.
profile="$use_dir/fulcrum-$(sha256sum "$WORK/fulcrum.profdata" | cut -c1-16).profdata"
rm -f "$use_dir"/fulcrum-*.profdata
cp "$WORK/fulcrum.profdata" "$profile"

log "3/3 optimised build ($use_dir)"
(cd "$ROOT" && RUSTFLAGS="-Cprofile-use=$profile -Cllvm-args=-no-pgo-warn-mismatch" \
    "${build[@]}" --target-dir "$use_dir") >&2 || die "optimised build failed"
mkdir -p "$(dirname "$out")"
cp "$use_dir/$host/release/fulcrum" "$out"
log "wrote $out"

#!/usr/bin/env bash
# Data-plane comparison: fulcrum vs a bare pingora load balancer, nginx and
# HAProxy, all proxying tiny GETs to the same nginx origin over loopback.
#
# For each proxy it reports requests/second, p99 latency (both from wrk) and
# CPU time per proxied request: the proxy's utime+stime from /proc/PID/stat
# (all of its processes and threads) over the measured run, divided by the
# requests wrk completed. CPU per request is the headline number: it does not
# depend on whether the proxy core or the client core is the bottleneck.
#
# Layout (needs at least 2 cores):
#   core 0: the proxy under test, one worker thread / process
#   core 1: wrk (1 thread, 32 keep-alive connections) and the nginx origin
#
# Usage: benches/peer-compare.sh
# Environment:
#   DURATION=10          seconds per measured run
#   WARMUP=2             seconds of unmeasured load before each measured run
#   REPEAT=1             measured runs per proxy (proxies are interleaved per
#                        round, in reverse order every other round; the table shows the
#                        median of each column, the ratios also the median of each round's)
#   CONNECTIONS=32       wrk connections
#   QUIET_MAX=20         a run during which other work on the machine used more
#                        than this % of a core is discarded and repeated ...
#   RETRY_DISTURBED=3    ... at most this many times (then it is kept, and the
#                        "other CPU %" column shows it)
#   PROXIES="fulcrum bare-pingora nginx haproxy"   which proxies to measure; add
#                        fulcrum-model for the same pool with weights = "model"
#                        (the shipped models/balancer.onnx, control loop ticking), and
#                        fulcrum-glibc for fulcrum built with the system allocator
#                        (--no-default-features) instead of mimalloc, and fulcrum-base for
#                        the fulcrum binary at FULCRUM_BASE_BIN (same config as fulcrum),
#                        and bare-pingora-patched for the bare pingora baseline built
#                        against fulcrum's vendor/ crates (what fulcrum adds to pingora
#                        itself, where bare-pingora is what a pingora user gets today)
#   FULCRUM_BASE_BIN=    a fulcrum binary built from another commit (e.g. main), measured as
#                        the fulcrum-base row beside this tree's fulcrum, so a before/after
#                        ratio comes from one interleaved run; adds fulcrum-base to PROXIES
#                        when it is not listed
#   FULCRUM_BASE_LABEL=  what the fulcrum-base row says it is (default: "fulcrum, base binary")
#   FULCRUM_BIN=         the binary measured as fulcrum (and fulcrum-model) instead of this
#                        tree's release build, which is then not built: e.g. the
#                        profile-guided build scripts/build-pgo.sh writes
#   FULCRUM_LABEL=       what the fulcrum row says it is (default: "fulcrum")
#   WRK_SCRIPT=FILE      a wrk Lua script that shapes the request instead of a bare `GET /`
#                        (benches/peers/browser-get.lua: a browser's page request); the
#                        results file is named after it
#   TOGETHER=1           the two proxies of PROXIES run at the same time, both pinned to the
#                        proxy core, each under its own wrk (both on the client core), instead
#                        of taking turns: whatever the machine does during a run falls on both,
#                        so their ratio holds still where the turns of a busy VM move by 10 %
#                        (for a small difference, e.g. PROXIES="fulcrum fulcrum-model"); each
#                        has about half the core, and CPU/req is each one's own. Results go to
#                        peer-compare-together.*
#   SKIP_BUILD=1         use the existing release binaries as they are
#   BREAKDOWN=1          instead of timing, count what each proxy does per request over one
#                        wrk run of DURATION: syscalls by kind (perf's syscall tracepoints),
#                        allocator calls (perf uprobes on libc's malloc/calloc/realloc/free and
#                        on the mimalloc entry points of the fulcrum binaries), scheduler and
#                        memory software events (perf stat), and a sampled profile split into
#                        kernel, allocator, copies, the proxy's own code and its frameworks,
#                        with the kernel's share by symbol; written to cost-breakdown[-tls-*].md by
#                        benches/cost_breakdown.py. Needs perf and root (uprobes). The counts
#                        do not depend on other load on the machine; the CPU figures of the
#                        timing runs do.
#   INSTRUCTIONS=1       instead of timing, count the user-space instructions each proxy
#                        executes per request, under valgrind's callgrind: the proxy runs
#                        under callgrind with instrumentation off until it answers, then on
#                        for a WARMUP run of wrk, the counters are zeroed, and one wrk run of
#                        DURATION is counted (every thread of the proxy, its idle time in the
#                        window included) and divided by the requests it completed; REPEAT
#                        such runs per proxy. Deterministic to a fraction of a percent on any
#                        machine, where the timing runs move by 10 % from round to round on a
#                        busy VM; it does not count the kernel's work (the syscalls and
#                        segments of BREAKDOWN=1, the same for every proxy but nginx's writev).
#                        The measured run opens its own CONNECTIONS connections, so their
#                        accepts (and, with TLS, their handshakes: a large and varying share
#                        at the few thousand requests callgrind's speed allows) count too.
#                        Written to instructions.md by benches/instructions_report.py, with
#                        each proxy's instructions by part and function and the largest callers
#                        of memcpy/memmove. Needs valgrind (Debian: apt-get install -y valgrind).
#   RESULTS_DIR=benches/results   where peer-compare.md / .csv are written
#   KEEP_WORK=1          keep the scratch directory (logs, callgrind dumps and their
#                        caller trees) and print its path at the end
#   TLS=off              off: cleartext HTTP/1.1 (the default);
#                        keepalive: HTTPS (TLS 1.3, HTTP/1.1) with keep-alive connections,
#                          the cost of TLS per request;
#                        handshake: HTTPS with a new connection (and full handshake) per
#                          request, the cost of a handshake.
#                        The proxies terminate TLS with a certificate from
#                        scripts/make-certs.sh and reach the origin in cleartext; results go
#                        to peer-compare-tls-keepalive.* / peer-compare-tls-handshake.*.
#                        bare-pingora terminates TLS with pingora's rustls listener
#                        (BARE_TLS_CERT / BARE_TLS_KEY).
#
# Requirements: wrk, nginx, haproxy, taskset, curl
#   (Debian: apt-get install -y wrk nginx-light haproxy util-linux curl)
# Everything listens on 127.0.0.1 only.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PEERS="$ROOT/benches/peers"

DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
REPEAT="${REPEAT:-1}"
CONNECTIONS="${CONNECTIONS:-32}"
QUIET_MAX="${QUIET_MAX:-20}"
RETRY_DISTURBED="${RETRY_DISTURBED:-3}"
PROXIES="${PROXIES:-fulcrum bare-pingora nginx haproxy}"
FULCRUM_BASE_BIN="${FULCRUM_BASE_BIN:-}"
FULCRUM_BASE_ARG="$FULCRUM_BASE_BIN" # as given, for the report's command line
if [[ -n "$FULCRUM_BASE_BIN" && " $PROXIES " != *" fulcrum-base "* ]]; then
    PROXIES="fulcrum-base $PROXIES"
fi
RESULTS_DIR="${RESULTS_DIR:-$ROOT/benches/results}"
TLS="${TLS:-off}"
case "$TLS" in
off) SCHEME=http; RESULT_NAME=peer-compare; WRK_EXTRA=() ;;
keepalive) SCHEME=https; RESULT_NAME=peer-compare-tls-keepalive; WRK_EXTRA=() ;;
handshake) SCHEME=https; RESULT_NAME=peer-compare-tls-handshake; WRK_EXTRA=(-H "Connection: close") ;;
*) echo "peer-compare: TLS must be off, keepalive or handshake, not '$TLS'" >&2; exit 1 ;;
esac
# WRK_SCRIPT: a wrk Lua script shaping the request (e.g. benches/peers/browser-get.lua)
if [[ -n "${WRK_SCRIPT:-}" ]]; then
    [[ -f "$WRK_SCRIPT" ]] || { echo "peer-compare: no WRK_SCRIPT file $WRK_SCRIPT" >&2; exit 1; }
    WRK_EXTRA+=(-s "$(cd "$(dirname "$WRK_SCRIPT")" && pwd)/$(basename "$WRK_SCRIPT")")
    RESULT_NAME+="-$(basename "$WRK_SCRIPT" .lua)"
fi

TOGETHER="${TOGETHER:-}"
if [[ -n "$TOGETHER" ]]; then
    read -ra _two <<<"$PROXIES"
    ((${#_two[@]} == 2)) || { echo "peer-compare: TOGETHER=1 measures two proxies at once: PROXIES must name two, not '$PROXIES'" >&2; exit 1; }
    [[ -z "${INSTRUCTIONS:-}${BREAKDOWN:-}" ]] || { echo "peer-compare: TOGETHER=1 is a timing mode: not with INSTRUCTIONS or BREAKDOWN" >&2; exit 1; }
    RESULT_NAME+="-together"
fi

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
FULCRUM_BIN_ARG="${FULCRUM_BIN:-}"
FULCRUM_BIN="${FULCRUM_BIN:-$TARGET_DIR/release/fulcrum}"
FULCRUM_WHAT="this tree's build"
[[ -z "${FULCRUM_LABEL:-}" ]] || FULCRUM_WHAT="$FULCRUM_LABEL"
[[ -z "$FULCRUM_BIN_ARG" ]] || FULCRUM_WHAT+=" (\`$FULCRUM_BIN_ARG\`)"
FULCRUM_GLIBC_BIN="$TARGET_DIR/release/fulcrum-glibc"
# Built from benches/bare-pingora, outside the workspace: crates.io's pingora, unpatched.
BARE_BIN="$TARGET_DIR/release/bare_pingora"
BARE_PATCHED_BIN="$TARGET_DIR/release/bare_pingora_patched"
PROXY_CORE=0
CLIENT_CORE=1

die() { echo "peer-compare: $*" >&2; exit 1; }
log() { echo "peer-compare: $*" >&2; }

# ---------------------------------------------------------------- prerequisites
missing=()
for tool in wrk nginx haproxy taskset curl; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    die "missing: ${missing[*]}
  install them with:  apt-get install -y wrk nginx-light haproxy util-linux curl"
fi
(( $(nproc) >= 2 )) || die "needs at least 2 CPU cores (proxy on core 0, client+origin on core 1)"
for p in $PROXIES; do
    case "$p" in fulcrum|fulcrum-model|fulcrum-glibc|fulcrum-base|bare-pingora|bare-pingora-patched|nginx|haproxy) ;; *) die "unknown proxy '$p' in PROXIES" ;; esac
done
[[ " $PROXIES " != *" fulcrum-base "* || -n "$FULCRUM_BASE_BIN" ]] || die "fulcrum-base needs FULCRUM_BASE_BIN=/path/to/fulcrum"
want() {
    [[ " $PROXIES " == *" $1 "* ]] || { [[ "$1" == fulcrum ]] && [[ " $PROXIES " == *" fulcrum-model "* || " $PROXIES " == *" fulcrum-glibc "* ]]; }
}

if [[ -z "${SKIP_BUILD:-}" ]]; then
    if want fulcrum-glibc; then
        log "building fulcrum with the system allocator"
        cargo build --release -p fulcrum --bin fulcrum --no-default-features >&2 || die "build failed"
        cp "$FULCRUM_BIN" "$FULCRUM_GLIBC_BIN"
    fi
    # Target flags apply to every -p, hence the explicit --bin / --example.
    build=(cargo build --release)
    want fulcrum && [[ -z "$FULCRUM_BIN_ARG" ]] && build+=(-p fulcrum --bin fulcrum)
    if ((${#build[@]} > 3)); then
        log "building: ${build[*]}"
        "${build[@]}" >&2 || die "build failed (set PROXIES to measure only the peers that do not need it)"
    fi
    if want bare-pingora; then
        log "building the bare pingora baseline (crates.io pingora, benches/bare-pingora)"
        cargo build --release --locked --manifest-path "$ROOT/benches/bare-pingora/Cargo.toml" \
            --target-dir "$TARGET_DIR" >&2 || die "build of benches/bare-pingora failed"
    fi
    if want bare-pingora-patched; then
        # A copy of the package, renamed, with the workspace's [patch.crates-io]: the lock file
        # in benches/ stays as it is.
        log "building the bare pingora baseline against vendor/ (bare-pingora-patched)"
        src="$TARGET_DIR/bare-pingora-patched-src"
        rm -rf "$src" && mkdir -p "$src" && cp -r "$ROOT/benches/bare-pingora/src" "$ROOT/benches/bare-pingora/Cargo.lock" "$src/"
        sed 's/^name = "bare_pingora"$/name = "bare_pingora_patched"/' "$ROOT/benches/bare-pingora/Cargo.toml" >"$src/Cargo.toml"
        printf '\n[patch.crates-io]\n' >>"$src/Cargo.toml"
        for c in pingora-http pingora-core pingora-proxy; do
            printf '%s = { path = "%s" }\n' "$c" "$ROOT/vendor/$c" >>"$src/Cargo.toml"
        done
        cargo build --release --manifest-path "$src/Cargo.toml" --target-dir "$TARGET_DIR" >&2 \
            || die "build of bare-pingora-patched failed"
    fi
fi
want fulcrum && { [[ -x "$FULCRUM_BIN" ]] || die "no $FULCRUM_BIN"; }
want bare-pingora && { [[ -x "$BARE_BIN" ]] || die "no $BARE_BIN"; }
want bare-pingora-patched && { [[ -x "$BARE_PATCHED_BIN" ]] || die "no $BARE_PATCHED_BIN"; }
want fulcrum-glibc && { [[ -x "$FULCRUM_GLIBC_BIN" ]] || die "no $FULCRUM_GLIBC_BIN"; }
want fulcrum-base && { [[ -x "$FULCRUM_BASE_BIN" ]] || die "no $FULCRUM_BASE_BIN"; }

# ---------------------------------------------------------------- cleanup
WORK="$(mktemp -d /tmp/peer-compare.XXXXXX)"
ORIGIN_PID=""
PROXY_PID=""
# SIGINT is the fast-shutdown signal for pingora, nginx and HAProxy alike
# (SIGTERM would make pingora wait out its graceful-shutdown period).
stop_pid() {
    [[ -n "$1" ]] || return 0
    kill -INT "$1" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
cleanup() {
    stop_pid "$PROXY_PID"
    stop_pid "${PAIR_PID:-}"
    stop_pid "$ORIGIN_PID"
    if [[ "${KEEP_WORK:-0}" == 1 ]]; then
        echo "scratch directory kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Run private copies, so a concurrent rebuild of the target dir cannot swap a
# binary out from under a measurement.
mkdir -p "$WORK/bin"
if want fulcrum; then cp "$FULCRUM_BIN" "$WORK/bin/fulcrum"; FULCRUM_BIN="$WORK/bin/fulcrum"; fi
if want bare-pingora; then cp "$BARE_BIN" "$WORK/bin/bare_pingora"; BARE_BIN="$WORK/bin/bare_pingora"; fi
if want bare-pingora-patched; then
    cp "$BARE_PATCHED_BIN" "$WORK/bin/bare_pingora_patched"
    BARE_PATCHED_BIN="$WORK/bin/bare_pingora_patched"
fi
if want fulcrum-glibc; then cp "$FULCRUM_GLIBC_BIN" "$WORK/bin/fulcrum-glibc"; FULCRUM_GLIBC_BIN="$WORK/bin/fulcrum-glibc"; fi
if want fulcrum-base; then cp "$FULCRUM_BASE_BIN" "$WORK/bin/fulcrum-base"; FULCRUM_BASE_BIN="$WORK/bin/fulcrum-base"; fi

# ---------------------------------------------------------------- helpers
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
TAKEN=" "
free_port() {
    local p
    for _ in $(seq 200); do
        # below the kernel's ephemeral range, so no client socket of an earlier run holds it
        p=$((15000 + RANDOM % 17000))
        [[ "$TAKEN" == *" $p "* ]] && continue
        port_busy "$p" && continue
        TAKEN+="$p "
        echo "$p"
        return 0
    done
    die "no free loopback port found"
}

# render TEMPLATE OUT KEY=VALUE...
render() {
    local tpl="$1" out="$2" kv args=()
    shift 2
    for kv in "$@"; do args+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
    sed "${args[@]}" "$tpl" >"$out"
}

wait_http() { # PORT NAME [SCHEME]
    local scheme="${3:-http}" trust=()
    [[ "$scheme" == http ]] || trust=(--cacert "$WORK/certs/ca.pem")
    for _ in $(seq 300); do
        if [[ "$(curl -fsS --max-time 1 "${trust[@]}" "$scheme://127.0.0.1:$1/" 2>/dev/null)" == "ok" ]]; then return 0; fi
        sleep 0.1
    done
    log "$2 did not answer 'ok' on $scheme://127.0.0.1:$1"
    return 1
}

# Make the proxy config in $1 (of kind $2) terminate TLS on port $3 with the test certificate.
tlsify() { # FILE KIND PORT
    local file="$1" kind="$2" port="$3" certs="$WORK/certs"
    case "$kind" in
    fulcrum)
        sed -i "s|^listen = \\[\"127.0.0.1:$port\"\\]|listen = [\"127.0.0.1:$(free_port)\"]\ntls_listen = [\"127.0.0.1:$port\"]|" "$file"
        printf '\n[[server.certificates]]\ncert = "%s"\nkey = "%s"\n' "$certs/server.pem" "$certs/server.key" >>"$file"
        ;;
    nginx)
        sed -i "s|listen 127.0.0.1:$port;|listen 127.0.0.1:$port ssl;\n        ssl_certificate $certs/server.pem;\n        ssl_certificate_key $certs/server.key;\n        ssl_protocols TLSv1.2 TLSv1.3;|" "$file"
        ;;
    haproxy)
        sed -i "s|bind 127.0.0.1:$port\$|bind 127.0.0.1:$port ssl crt $certs/haproxy.pem ssl-min-ver TLSv1.2|" "$file"
        ;;
    esac
}

# every pid in the process tree rooted at $1
tree_pids() {
    local pid="$1" child
    echo "$pid"
    for child in $(pgrep -P "$pid" 2>/dev/null || true); do tree_pids "$child"; done
}

# utime+stime (clock ticks) summed over the given pids
cpu_ticks() {
    local total=0 pid stat rest
    for pid in "$@"; do
        stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || continue
        rest="${stat##*) }" # fields from 3 (state) on; comm may contain spaces
        read -r -a f <<<"$rest"
        total=$((total + f[11] + f[12])) # fields 14 (utime) and 15 (stime)
    done
    echo "$total"
}

# busy (non-idle, non-iowait) ticks of the whole machine
machine_ticks() {
    awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat
}

# `times` output "XmY.YYYs" -> microseconds
mins_to_us() {
    awk -v v="$1" 'BEGIN { split(v, a, "m"); sub(/s$/, "", a[2]); printf "%.0f", (a[1] * 60 + a[2]) * 1e6 }'
}

# wrk latency string (e.g. 812.00us, 1.20ms, 2.00s) -> microseconds
to_us() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000;
        else if (v ~ /m$/) print n * 60000000; else if (v ~ /s$/) print n * 1000000; else print n
    }'
}

CLK_TCK="$(getconf CLK_TCK)"
RUN_UNDER=() # a command the proxies run under (valgrind, for INSTRUCTIONS=1)
wrk_cmd=(taskset -c "$CLIENT_CORE" wrk -t1 -c"$CONNECTIONS" --latency)

# ---------------------------------------------------------------- certificates
mkdir -p "$WORK/certs"
if [[ "$TLS" != off ]]; then
    "$ROOT/scripts/make-certs.sh" "$WORK/certs" 127.0.0.1 localhost >&2
    cat "$WORK/certs/server.pem" "$WORK/certs/server.key" >"$WORK/certs/haproxy.pem"
fi

# ---------------------------------------------------------------- origin
BACKEND_PORT="$(free_port)"
mkdir -p "$WORK/origin/logs"
render "$PEERS/nginx-backend.conf" "$WORK/origin/nginx.conf" DIR="$WORK/origin" BACKEND_PORT="$BACKEND_PORT"
taskset -c "$CLIENT_CORE" nginx -p "$WORK/origin" -c "$WORK/origin/nginx.conf" 2>"$WORK/origin/stderr" &
ORIGIN_PID=$!
wait_http "$BACKEND_PORT" "origin nginx" || die "the origin nginx did not start: $(tail -5 "$WORK/origin/stderr")"
log "origin nginx on 127.0.0.1:$BACKEND_PORT"

# ---------------------------------------------------------------- proxies
start_proxy() { # NAME PORT
    local name="$1" port="$2" dir="$WORK/$1"
    rm -rf "$dir"
    mkdir -p "$dir/logs"
    case "$name" in
    fulcrum)
        render "$PEERS/fulcrum.toml" "$dir/fulcrum.toml" \
            LISTEN_PORT="$port" ADMIN_PORT="$(free_port)" BACKEND_PORT="$BACKEND_PORT"
        [[ "$TLS" == off ]] || tlsify "$dir/fulcrum.toml" fulcrum "$port"
        RUST_LOG=error taskset -c "$PROXY_CORE" "${RUN_UNDER[@]}" "$FULCRUM_BIN" run -c "$dir/fulcrum.toml" \
            >"$dir/stdout" 2>"$dir/stderr" &
        ;;
    fulcrum-glibc | fulcrum-base)
        render "$PEERS/fulcrum.toml" "$dir/fulcrum.toml" \
            LISTEN_PORT="$port" ADMIN_PORT="$(free_port)" BACKEND_PORT="$BACKEND_PORT"
        [[ "$TLS" == off ]] || tlsify "$dir/fulcrum.toml" fulcrum "$port"
        local bin="$FULCRUM_GLIBC_BIN"
        [[ "$name" == fulcrum-base ]] && bin="$FULCRUM_BASE_BIN"
        RUST_LOG=error taskset -c "$PROXY_CORE" "${RUN_UNDER[@]}" "$bin" run -c "$dir/fulcrum.toml" \
            >"$dir/stdout" 2>"$dir/stderr" &
        ;;
    fulcrum-model)
        render "$PEERS/fulcrum.toml" "$dir/fulcrum.toml" \
            LISTEN_PORT="$port" ADMIN_PORT="$(free_port)" BACKEND_PORT="$BACKEND_PORT"
        sed -i 's/^algorithm = "least_connections"$/&\nweights = "model"/' "$dir/fulcrum.toml"
        [[ "$TLS" == off ]] || tlsify "$dir/fulcrum.toml" fulcrum "$port"
        printf '\n[control]\nmodel = "%s"\n' "$ROOT/models/balancer.onnx" >> "$dir/fulcrum.toml"
        RUST_LOG=error taskset -c "$PROXY_CORE" "${RUN_UNDER[@]}" "$FULCRUM_BIN" run -c "$dir/fulcrum.toml" \
            >"$dir/stdout" 2>"$dir/stderr" &
        ;;
    bare-pingora | bare-pingora-patched)
        bin="$BARE_BIN"
        [[ "$name" == bare-pingora ]] || bin="$BARE_PATCHED_BIN"
        if [[ "$TLS" == off ]]; then
            RUST_LOG=error taskset -c "$PROXY_CORE" "${RUN_UNDER[@]}" "$bin" "127.0.0.1:$port" 1 "127.0.0.1:$BACKEND_PORT" \
                >"$dir/stdout" 2>"$dir/stderr" &
        else
            BARE_TLS_CERT="$WORK/certs/server.pem" BARE_TLS_KEY="$WORK/certs/server.key" RUST_LOG=error \
                taskset -c "$PROXY_CORE" "${RUN_UNDER[@]}" "$bin" "127.0.0.1:$port" 1 "127.0.0.1:$BACKEND_PORT" \
                >"$dir/stdout" 2>"$dir/stderr" &
        fi
        ;;
    nginx)
        render "$PEERS/nginx-proxy.conf" "$dir/nginx.conf" \
            DIR="$dir" LISTEN_PORT="$port" BACKEND_PORT="$BACKEND_PORT"
        [[ "$TLS" == off ]] || tlsify "$dir/nginx.conf" nginx "$port"
        # One process under callgrind: no master forking the worker.
        ((${#RUN_UNDER[@]} == 0)) || sed -i 's/^master_process on;/master_process off;/' "$dir/nginx.conf"
        taskset -c "$PROXY_CORE" "${RUN_UNDER[@]}" nginx -p "$dir" -c "$dir/nginx.conf" >"$dir/stdout" 2>"$dir/stderr" &
        ;;
    haproxy)
        render "$PEERS/haproxy.cfg" "$dir/haproxy.cfg" LISTEN_PORT="$port" BACKEND_PORT="$BACKEND_PORT"
        [[ "$TLS" == off ]] || tlsify "$dir/haproxy.cfg" haproxy "$port"
        taskset -c "$PROXY_CORE" "${RUN_UNDER[@]}" haproxy -db -f "$dir/haproxy.cfg" >"$dir/stdout" 2>"$dir/stderr" &
        ;;
    esac
    PROXY_PID=$!
    if ! wait_http "$port" "$name" "$SCHEME"; then
        log "$name stderr: $(tail -5 "$dir/stderr" 2>/dev/null)"
        stop_proxy
        return 1
    fi
}

stop_proxy() {
    stop_pid "$PROXY_PID"
    PROXY_PID=""
}

RAW="$WORK/raw.csv"
echo "proxy,run,requests,duration_s,rps,p99_us,cpu_ticks,cpu_us_per_req,proxy_core_pct,errors,other_cpu_pct,kept" >"$RAW"

start_retrying() { # NAME: start it on a free port (three tries); sets PORT and PROXY_PID
    local tries=0
    PORT="$(free_port)"
    until start_proxy "$1" "$PORT"; do
        ((++tries < 3)) || die "$1 did not start three times (logs in $WORK)"
        PORT="$(free_port)"
    done
}

# `times` output of a subshell whose only child was wrk -> its CPU time in microseconds
wrk_cpu_us() {
    echo $(($(mins_to_us "$(tail -1 <<<"$1" | awk '{ print $1 }')") + $(mins_to_us "$(tail -1 <<<"$1" | awk '{ print $2 }')")))
}

# record NAME RUN WRK_OUTPUT PROXY_TICKS REST_TICKS WRK_US: one row of $RAW from a measured run.
# REST_TICKS is the machine's busy time over the run less every measured proxy and the origin,
# WRK_US the CPU time of every wrk that ran: what is left is other work on the machine.
record() {
    local name="$1" run="$2" out="$3" ticks="$4" rest="$5" wrk_us="$6"
    local requests secs rps p99 p99us errs cpu_us per_req core other
    echo "$out" >"$WORK/$name.wrk.$run.txt"
    requests="$(awk '/requests in/ { print $1 }' <<<"$out")"
    secs="$(awk '/requests in/ { sub(/,$/, "", $4); print $4 }' <<<"$out")"
    rps="$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")"
    p99="$(awk '$1 == "99%" { print $2 }' <<<"$out")"
    errs="$(awk '/Non-2xx or 3xx responses:/ { n += $NF } /Socket errors:/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' <<<"$out")"
    [[ -n "$requests" && "$requests" -gt 0 ]] || die "$name: wrk completed no requests:
$out"
    p99us="$(to_us "$p99")"
    secs="$(to_us "$secs")"
    read -r cpu_us per_req core < <(awk -v t="$ticks" -v hz="$CLK_TCK" -v n="$requests" -v w="$secs" \
        'BEGIN { us = t * 1e6 / hz; printf "%.0f %.3f %.1f\n", us, us / n, 100 * us / w }')
    # Everything else the machine did meanwhile: anything well above the kernel's
    # own loopback work means another workload disturbed the run.
    other="$(awk -v m="$rest" -v hz="$CLK_TCK" -v wrk="$wrk_us" -v w="$secs" \
        'BEGIN { v = 100 * (m * 1e6 / hz - wrk) / w; printf "%.1f", v < 0 ? 0 : v }')"
    secs="$(awk -v w="$secs" 'BEGIN { printf "%.2f", w / 1e6 }')"
    echo "$name,$run,$requests,$secs,$rps,$p99us,$ticks,$per_req,$core,$errs,$other,1" >>"$RAW"
    log "$name run $run: $rps req/s, p99 ${p99}, ${per_req} us CPU/req, proxy core ${core}%, errors $errs, other CPU ${other}%"
}

measure() { # NAME RUN
    local name="$1" run="$2" out pids opids before after obefore oafter mbefore mafter
    start_retrying "$name"
    "${wrk_cmd[@]}" "${WRK_EXTRA[@]}" -d"${WARMUP}s" "$SCHEME://127.0.0.1:$PORT/" >/dev/null
    mapfile -t pids < <(tree_pids "$PROXY_PID")
    mapfile -t opids < <(tree_pids "$ORIGIN_PID")
    before="$(cpu_ticks "${pids[@]}")"
    obefore="$(cpu_ticks "${opids[@]}")"
    mbefore="$(machine_ticks)"
    # `times` reports the CPU time of wrk (the subshell's only child).
    out="$("${wrk_cmd[@]}" "${WRK_EXTRA[@]}" -d"${DURATION}s" "$SCHEME://127.0.0.1:$PORT/"; times)"
    mafter="$(machine_ticks)"
    after="$(cpu_ticks "${pids[@]}")"
    oafter="$(cpu_ticks "${opids[@]}")"
    stop_proxy
    record "$name" "$run" "$out" $((after - before)) $((mafter - mbefore - (after - before) - (oafter - obefore))) "$(wrk_cpu_us "$out")"
}

# TOGETHER=1: both proxies run at once on the proxy core, each loaded by its own wrk, so that
# whatever the machine does during the run (another guest, a slower stretch) falls on both
measure_together() { # A B RUN
    local a="$1" b="$2" run="$3" pa pb pida pidb pids_a pids_b opids ba bb aa ab obefore oafter mbefore mafter out_a out_b
    start_retrying "$a"; pa="$PORT"; pida="$PROXY_PID"
    PAIR_PID="$pida" # stopped at exit too, should the second not start
    start_retrying "$b"; pb="$PORT"; pidb="$PROXY_PID"
    local wa wb
    "${wrk_cmd[@]}" "${WRK_EXTRA[@]}" -d"${WARMUP}s" "$SCHEME://127.0.0.1:$pa/" >/dev/null &
    wa=$!
    "${wrk_cmd[@]}" "${WRK_EXTRA[@]}" -d"${WARMUP}s" "$SCHEME://127.0.0.1:$pb/" >/dev/null &
    wb=$!
    wait "$wa" "$wb"
    mapfile -t pids_a < <(tree_pids "$pida")
    mapfile -t pids_b < <(tree_pids "$pidb")
    mapfile -t opids < <(tree_pids "$ORIGIN_PID")
    ba="$(cpu_ticks "${pids_a[@]}")"
    bb="$(cpu_ticks "${pids_b[@]}")"
    obefore="$(cpu_ticks "${opids[@]}")"
    mbefore="$(machine_ticks)"
    ("${wrk_cmd[@]}" "${WRK_EXTRA[@]}" -d"${DURATION}s" "$SCHEME://127.0.0.1:$pa/"; times) >"$WORK/together.a" &
    wa=$!
    ("${wrk_cmd[@]}" "${WRK_EXTRA[@]}" -d"${DURATION}s" "$SCHEME://127.0.0.1:$pb/"; times) >"$WORK/together.b" &
    wb=$!
    wait "$wa" "$wb"
    mafter="$(machine_ticks)"
    aa="$(cpu_ticks "${pids_a[@]}")"
    ab="$(cpu_ticks "${pids_b[@]}")"
    oafter="$(cpu_ticks "${opids[@]}")"
    stop_pid "$pida"
    stop_pid "$pidb"
    PROXY_PID="" PAIR_PID=""
    out_a="$(cat "$WORK/together.a")"
    out_b="$(cat "$WORK/together.b")"
    local rest=$((mafter - mbefore - (aa - ba) - (ab - bb) - (oafter - obefore)))
    local wrk_us=$(($(wrk_cpu_us "$out_a") + $(wrk_cpu_us "$out_b")))
    record "$a" "$run" "$out_a" $((aa - ba)) "$rest" "$wrk_us"
    record "$b" "$run" "$out_b" $((ab - bb)) "$rest" "$wrk_us"
}

# ---------------------------------------------------------------- instructions
if [[ -n "${INSTRUCTIONS:-}" ]]; then
    for tool in valgrind callgrind_control callgrind_annotate; do
        command -v "$tool" >/dev/null 2>&1 || die "INSTRUCTIONS needs $tool (Debian: apt-get install -y valgrind)"
    done
    for p in $PROXIES; do
        for run in $(seq "$REPEAT"); do
            mkdir -p "$WORK/cg"
            rm -f "$WORK/cg/"*
            RUN_UNDER=(valgrind --tool=callgrind --instr-atstart=no -q --callgrind-out-file="$WORK/cg/out.%p")
            port="$(free_port)"
            url="$SCHEME://127.0.0.1:$port/"
            start_proxy "$p" "$port" || die "$p did not start under callgrind (logs in $WORK)"
            RUN_UNDER=()
            callgrind_control -i on "$PROXY_PID" >/dev/null 2>&1 || die "callgrind_control could not reach $p"
            "${wrk_cmd[@]}" "${WRK_EXTRA[@]}" -d"${WARMUP}s" "$url" >/dev/null
            callgrind_control -z "$PROXY_PID" >/dev/null 2>&1
            "${wrk_cmd[@]}" "${WRK_EXTRA[@]}" -d"${DURATION}s" "$url" >"$WORK/$p.$run.wrk"
            callgrind_control -d "$PROXY_PID" >/dev/null 2>&1
            dump="$(ls -t "$WORK/cg/out.$PROXY_PID".* 2>/dev/null | head -1)"
            [[ -s "$dump" ]] || die "$p: no callgrind dump in $WORK/cg"
            stop_proxy
            cp "$dump" "$WORK/$p.$run.callgrind"
            callgrind_annotate --auto=no --threshold=100 "$dump" >"$WORK/$p.$run.annotate" 2>/dev/null
            callgrind_annotate --auto=no --threshold=100 --tree=caller "$dump" >"$WORK/$p.$run.callers" 2>/dev/null
            log "$p run $run: $(awk '/^totals:/ { print $2 }' "$dump") instructions over $(awk '/requests in/ { print $1 }' "$WORK/$p.$run.wrk") requests"
        done
    done
    mkdir -p "$RESULTS_DIR"
    out="$RESULTS_DIR/instructions$([[ "$TLS" == off ]] || echo "-tls-$TLS").md"
    {
        echo "# Instructions per proxied request: fulcrum beside its peers"
        echo
        echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
        echo "- Machine: $(nproc) cores, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), $(uname -sr), $(valgrind --version)"
        echo "- Command: \`${FULCRUM_BIN_ARG:+FULCRUM_BIN=$FULCRUM_BIN_ARG }${WRK_SCRIPT:+WRK_SCRIPT=$WRK_SCRIPT }${FULCRUM_BASE_ARG:+FULCRUM_BASE_BIN=$FULCRUM_BASE_ARG }INSTRUCTIONS=1 TLS=$TLS DURATION=$DURATION WARMUP=$WARMUP REPEAT=$REPEAT CONNECTIONS=$CONNECTIONS PROXIES=\"$PROXIES\" benches/peer-compare.sh\`"
        [[ -z "$FULCRUM_BASE_BIN" ]] || echo "- fulcrum-base: ${FULCRUM_BASE_LABEL:-fulcrum, base binary} (\`$FULCRUM_BASE_ARG\`); fulcrum: $FULCRUM_WHAT."
        echo "- Each proxy runs alone under \`valgrind --tool=callgrind\` (one worker, pinned to core $PROXY_CORE; wrk -c$CONNECTIONS and the nginx origin on core $CLIENT_CORE, keep-alive \`GET /\`)."
        echo "  Instructions are counted in user space only, over one ${DURATION}s wrk run after a ${WARMUP}s warm-up, for every thread of the proxy, and divided by the requests that run completed."
        echo
        python3 "$ROOT/benches/instructions_report.py" "$WORK" $PROXIES
    } >"$out"
    log "wrote $out"
    exit 0
fi

# ---------------------------------------------------------------- breakdown
if [[ -n "${BREAKDOWN:-}" ]]; then
    command -v perf >/dev/null 2>&1 || die "BREAKDOWN needs perf (Debian: apt-get install -y linux-perf)"
    libc="$(ldconfig -p | awk '/libc\.so\.6 .*x86-64/ { print $NF; exit }')"
    for call in malloc calloc realloc free; do
        perf probe -q -x "$libc" --add "$call" >/dev/null 2>&1 || true
    done
    perf probe -l 2>/dev/null | grep -q 'probe_libc:malloc' ||
        die "could not place uprobes on $libc (BREAKDOWN needs root, or kernel.perf_event_paranoid <= -1)"
    # The Rust binaries built with mimalloc never call libc's allocator: their GlobalAlloc calls
    # these entry points, probed in the binary itself (group probe_mi, placed per run on the
    # private copy that runs, since two binaries cannot share the event names). fulcrum's own
    # GlobalAlloc calls the plain three for an alignment up to a word, the `_aligned` ones
    # above; the `mimalloc` crate's (in builds before it) calls only the `_aligned` ones.
    MI_CALLS="mi_malloc mi_zalloc mi_realloc mi_malloc_aligned mi_zalloc_aligned mi_realloc_aligned mi_free"
    drop_mi_probes() { perf probe -q -d 'probe_mi:*' >/dev/null 2>&1 || true; }
    drop_mi_probes
    # Software events and tracepoints of the scheduler and the network stack, counted only
    # while the proxy's own threads run (-p): hardware counters are often missing in a VM.
    SOFT_EVENTS=()
    # ipi:ipi_send_cpu: a wakeup of a task on the other core that is idle (halted) costs an
    # inter-processor interrupt, which in a VM is an exit to the hypervisor.
    for ev in context-switches cpu-migrations page-faults sched:sched_wakeup ipi:ipi_send_cpu \
        irq:softirq_entry net:net_dev_xmit net:netif_receive_skb skb:consume_skb skb:kfree_skb; do
        perf stat -e "$ev" -- true >/dev/null 2>&1 && SOFT_EVENTS+=(-e "$ev")
    done
    binary_of() { # NAME: the executable a proxy runs, when it is one of ours
        case "$1" in
        fulcrum | fulcrum-model) echo "$FULCRUM_BIN" ;;
        fulcrum-glibc) echo "$FULCRUM_GLIBC_BIN" ;;
        fulcrum-base) echo "$FULCRUM_BASE_BIN" ;;
        bare-pingora) echo "$BARE_BIN" ;;
        bare-pingora-patched) echo "$BARE_PATCHED_BIN" ;;
        esac
    }
    for p in $PROXIES; do
        port="$(free_port)"
        url="$SCHEME://127.0.0.1:$port/"
        start_proxy "$p" "$port" || die "$p did not start (logs in $WORK)"
        "${wrk_cmd[@]}" "${WRK_EXTRA[@]}" -d"${WARMUP}s" "$url" >/dev/null
        # -p takes every thread of each process; the wrk command only bounds the window.
        pids="$(tree_pids "$PROXY_PID" | paste -sd,)"
        # 1. Syscalls and software events, without uprobes (they slow every allocation a lot,
        #    and a slower proxy batches more requests per wakeup).
        perf stat -x, -o "$WORK/$p.stat" -e 'syscalls:sys_enter_*' "${SOFT_EVENTS[@]}" -p "$pids" -- \
            "${wrk_cmd[@]}" "${WRK_EXTRA[@]}" -d"${DURATION}s" "$url" >"$WORK/$p.wrk"
        # 2. Allocator calls: libc's, and mimalloc's in the binary when it has them.
        probes=(-e 'probe_libc:*')
        bin="$(binary_of "$p")"
        # The binary's text symbols, read once (awk reads nm's whole output, so nm never dies
        # of SIGPIPE); a binary built with mimalloc has `mi_malloc_aligned`.
        symbols=""
        if [[ -n "$bin" ]]; then
            symbols="$(nm "$bin" 2>/dev/null | awk '$2 == "T" { print $3 }' || true)"
        fi
        if grep -qx mi_malloc_aligned <<<"$symbols"; then
            for call in $MI_CALLS; do
                grep -qx "$call" <<<"$symbols" || continue
                perf probe -q -x "$bin" --add "probe_mi:$call=$call" >/dev/null 2>&1 ||
                    die "could not place a uprobe on $call in $bin"
            done
            probes+=(-e 'probe_mi:*')
        fi
        perf stat -x, -o "$WORK/$p.alloc.stat" "${probes[@]}" -p "$pids" -- \
            "${wrk_cmd[@]}" "${WRK_EXTRA[@]}" -d"${DURATION}s" "$url" >"$WORK/$p.alloc.wrk"
        drop_mi_probes
        # 3. The sampled profile, without probes.
        mapfile -t tree < <(tree_pids "$PROXY_PID")
        before="$(cpu_ticks "${tree[@]}")"
        perf record -q -F 997 -o "$WORK/$p.data" -p "$pids" -- \
            "${wrk_cmd[@]}" "${WRK_EXTRA[@]}" -d"${DURATION}s" "$url" >"$WORK/$p.profile.wrk" 2>/dev/null
        # CPU µs per request over the profiled run, to turn the profile's shares into µs.
        awk -v t=$(($(cpu_ticks "${tree[@]}") - before)) -v hz="$CLK_TCK" \
            '/requests in/ { printf "%.3f\n", t * 1e6 / hz / $1 }' "$WORK/$p.profile.wrk" >"$WORK/$p.cpu"
        perf report -i "$WORK/$p.data" --no-children --sort dso,sym --stdio >"$WORK/$p.report" 2>/dev/null
        stop_proxy
        log "$p: counted $(awk '/requests in/ { print $1 }' "$WORK/$p.wrk") requests ($(awk '/requests in/ { print $1 }' "$WORK/$p.alloc.wrk") under allocator probes)"
    done
    out="$RESULTS_DIR/cost-breakdown$([[ "$TLS" == off ]] || echo "-tls-$TLS").md"
    mkdir -p "$RESULTS_DIR"
    {
        echo "# Where the data-plane CPU goes, per request: fulcrum beside its peers"
        echo
        echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
        echo "- Machine: $(nproc) cores, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), $(uname -sr)"
        echo "- Command: \`${FULCRUM_BIN_ARG:+FULCRUM_BIN=$FULCRUM_BIN_ARG }${WRK_SCRIPT:+WRK_SCRIPT=$WRK_SCRIPT }${FULCRUM_BASE_ARG:+FULCRUM_BASE_BIN=$FULCRUM_BASE_ARG }BREAKDOWN=1 TLS=$TLS DURATION=$DURATION CONNECTIONS=$CONNECTIONS PROXIES=\"$PROXIES\" benches/peer-compare.sh\`"
        echo "- Same layout as the timing runs (proxy pinned to core $PROXY_CORE with one worker, wrk -c$CONNECTIONS and the nginx origin on core $CLIENT_CORE, keep-alive \`GET /\`)."
        echo "  Syscalls and software events (perf stat -p on the proxy's threads) are counted over one ${DURATION}s wrk run, allocator calls (uprobes) over a second,"
        echo "  each divided by the requests that run completed; the profile is a third run sampled at 997 Hz (self time by symbol, \`perf report --no-children --sort dso,sym\`),"
        echo "  its shares turned into µs with the proxy's utime+stime per request over that run (sampling costs a little; no probes are placed then)."
        echo
        python3 "$ROOT/benches/cost_breakdown.py" "$WORK" $PROXIES
    } >"$out"
    cat "$out"
    exit 0
fi

# Every other round runs the proxies in reverse order, so that no proxy always runs first or
# right after the same neighbour: a drift of the machine within a round evens out.
read -ra order <<<"$PROXIES"

# quiet_run WHAT ROWS CMD...: run CMD, which adds ROWS rows to $RAW; while other work on the
# machine disturbed it (other CPU > QUIET_MAX), mark those rows discarded and run it again,
# at most RETRY_DISTURBED times (the last try is kept)
quiet_run() {
    local what="$1" rows="$2" attempt other
    shift 2
    for attempt in $(seq 0 "$RETRY_DISTURBED"); do
        "$@"
        other="$(tail -1 "$RAW" | cut -d, -f11)"
        awk -v o="$other" -v q="$QUIET_MAX" 'BEGIN { exit !(o > q) }' || return 0
        ((attempt < RETRY_DISTURBED)) || { log "$what: still disturbed, keeping it"; return 0; }
        log "$what: other CPU ${other}% > ${QUIET_MAX}%, discarding and repeating"
        awk -F, -v OFS=, -v n="$(wc -l <"$RAW")" -v k="$rows" 'NR > n - k { $12 = 0 } 1' "$RAW" >"$RAW.new"
        mv "$RAW.new" "$RAW"
        sleep 5
    done
}

for run in $(seq "$REPEAT"); do
    if [[ -n "$TOGETHER" ]]; then
        if ((run % 2)); then
            quiet_run "run $run" 2 measure_together "${order[0]}" "${order[1]}" "$run"
        else
            quiet_run "run $run" 2 measure_together "${order[1]}" "${order[0]}" "$run"
        fi
        continue
    fi
    round=("${order[@]}")
    if ((run % 2 == 0)); then
        round=()
        for ((i = ${#order[@]} - 1; i >= 0; i--)); do round+=("${order[i]}"); done
    fi
    for p in "${round[@]}"; do
        quiet_run "$p run $run" 1 measure "$p" "$run"
    done
done

# ---------------------------------------------------------------- report
mkdir -p "$RESULTS_DIR"
cp "$RAW" "$RESULTS_DIR/$RESULT_NAME.csv"

# median of column C for proxy P
median() {
    awk -F, -v p="$1" -v c="$2" 'NR > 1 && $1 == p && $12 == 1 { print $c }' "$RAW" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# "paired per round: median X×, min–max×": the rounds' own ratios of A's CPU/req to B's; each round's
# proxies ran minutes apart at most, so a slow stretch of the machine hits both sides of a ratio
paired() {
    awk -F, -v a="$1" -v b="$2" 'NR > 1 && $12 == 1 && $1 == a { x[$2] = $8 }
        NR > 1 && $12 == 1 && $1 == b { y[$2] = $8 }
        END { for (r in x) if ((r in y) && y[r] > 0) print x[r] / y[r] }' "$RAW" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR == 0) exit
            m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            printf "paired per round: median %.3f×, %.3f–%.3f× over %d rounds", m, v[1], v[NR], NR }'
}

BARE_CPU=""
want bare-pingora && BARE_CPU="$(median bare-pingora 8)"
NGINX_CPU=""
want nginx && NGINX_CPU="$(median nginx 8)"
cpu_model="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
cmd="${TOGETHER:+TOGETHER=1 }${FULCRUM_BIN_ARG:+FULCRUM_BIN=$FULCRUM_BIN_ARG }${WRK_SCRIPT:+WRK_SCRIPT=$WRK_SCRIPT }${FULCRUM_BASE_ARG:+FULCRUM_BASE_BIN=$FULCRUM_BASE_ARG }TLS=$TLS DURATION=$DURATION WARMUP=$WARMUP REPEAT=$REPEAT CONNECTIONS=$CONNECTIONS QUIET_MAX=$QUIET_MAX RETRY_DISTURBED=$RETRY_DISTURBED PROXIES=\"$PROXIES\" benches/peer-compare.sh"

declare -A label=(
    [fulcrum]="${FULCRUM_LABEL:-fulcrum}"
    [fulcrum-glibc]="fulcrum, system allocator (glibc malloc)"
    [fulcrum-base]="${FULCRUM_BASE_LABEL:-fulcrum, base binary}"
    [fulcrum-model]="fulcrum, weights = \"model\" (least connections + control loop)"
    [bare-pingora]="bare pingora (round robin)"
    [bare-pingora-patched]="bare pingora on fulcrum's vendor/ crates"
    [nginx]="nginx $(nginx -v 2>&1 | sed 's|.*nginx/||')"
    [haproxy]="HAProxy $(haproxy -v 2>/dev/null | awk 'NR == 1 { print $3 }')"
)

{
    case "$TLS" in
    off) echo "# Data-plane comparison: fulcrum vs bare pingora, nginx, HAProxy" ;;
    keepalive) echo "# Data-plane comparison over TLS (keep-alive HTTPS): fulcrum vs bare pingora, nginx, HAProxy" ;;
    handshake) echo "# Data-plane comparison over TLS, a full handshake per request: fulcrum vs bare pingora, nginx, HAProxy" ;;
    esac
    echo
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- Machine: $(nproc) cores, ${cpu_model:-unknown CPU}, $(uname -sr)"
    echo "- Command: \`$cmd\`"
    echo "- Load: \`wrk -t1 -c$CONNECTIONS -d${DURATION}s --latency\`, keep-alive, \`GET /\` answered \"ok\\n\" by a one-worker nginx origin;" \
        "wrk and the origin pinned to core $CLIENT_CORE, the proxy pinned to core $PROXY_CORE with one worker thread/process;" \
        "${WARMUP}s warm-up before each measured run; $REPEAT measured run(s) per proxy, median shown;" \
        "$([[ -n "$TOGETHER" ]] && echo "the two proxies run at the same time (below);" || echo "the proxies take turns, in reverse order every other round;")" \
        "a run disturbed by other work (other CPU > ${QUIET_MAX}% of a core) is discarded and repeated, up to $RETRY_DISTURBED times."
    [[ -z "$TOGETHER" ]] || echo "- Together: in every round both proxies ran at the same time on core $PROXY_CORE, each under its own wrk as above (both on core $CLIENT_CORE), so each had about half the core; the first to start alternates."
    [[ -z "${WRK_SCRIPT:-}" ]] || echo "- Request: shaped by \`$WRK_SCRIPT\` instead of a bare \`GET /\`."
    case "$TLS" in
    keepalive) echo "- TLS: the proxy terminates TLS 1.3 (ECDSA P-256 certificate from scripts/make-certs.sh) and speaks cleartext to the origin; connections are kept alive." ;;
    handshake) echo "- TLS: the proxy terminates TLS 1.3 (ECDSA P-256 certificate from scripts/make-certs.sh) and speaks cleartext to the origin; wrk sends Connection: close, so every request pays a new connection and a full handshake: CPU/req is CPU per handshake." ;;
    esac
    echo "- CPU/req: the proxy's utime+stime (all processes and threads) over the measured run / requests completed."
    echo "  Proxy core % = that CPU time / wall time: near 100% means the proxy was the bottleneck; below it, core $CLIENT_CORE (wrk + origin) limited req/s and CPU/req is the fairer comparison."
    echo "  Other CPU % = the machine's busy time minus proxy, origin and wrk, as % of one core (kernel loopback work, plus anything else that ran): a high value means the run was disturbed."
    echo
    echo "| proxy | req/s | p99 latency | CPU µs/req | proxy core % | CPU/req vs bare pingora | CPU/req vs nginx | errors | other CPU % |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for p in $PROXIES; do
        rps="$(median "$p" 5)"
        p99="$(median "$p" 6)"
        cpu="$(median "$p" 8)"
        core="$(median "$p" 9)"
        errs="$(awk -F, -v p="$p" 'NR > 1 && $1 == p && $12 == 1 { n += $10 } END { print n + 0 }' "$RAW")"
        ratio="n/a"
        [[ -n "$BARE_CPU" ]] && ratio="$(awk -v a="$cpu" -v b="$BARE_CPU" 'BEGIN { printf "%.2f×", a / b }')"
        vs_nginx="n/a"
        [[ -n "$NGINX_CPU" ]] && vs_nginx="$(awk -v a="$cpu" -v b="$NGINX_CPU" 'BEGIN { printf "%.2f×", a / b }')"
        other="$(median "$p" 11)"
        awk -v l="${label[$p]}" -v r="$rps" -v q="$p99" -v c="$cpu" -v k="$core" -v x="$ratio" -v n="$vs_nginx" -v e="$errs" -v o="$other" \
            'BEGIN { printf "| %s | %.0f | %.0f µs | %.2f | %.0f%% | %s | %s | %s | %.0f%% |\n", l, r, q, c, k, x, n, e, o }'
    done
    if awk -F, 'NR > 1 && $12 == 1 && $10 > 0 { bad = 1 } END { exit !bad }' "$RAW"; then
        echo
        echo "**Warning:** some runs had non-2xx responses or socket errors; their numbers do not describe successful proxying."
    fi
    if [[ " $PROXIES " == *" fulcrum "* ]] && [[ -n "$BARE_CPU" ]]; then
        echo
        awk -v a="$(median fulcrum 8)" -v b="$BARE_CPU" \
            -v pr="$(paired fulcrum bare-pingora)" \
            'BEGIN { printf "fulcrum / bare pingora CPU per request: **%.2f×** (%.2f µs vs %.2f µs; %+.2f µs per request; %s)\n", a / b, a, b, a - b, pr }'
    fi
    if [[ " $PROXIES " == *" fulcrum "* ]] && [[ -n "$NGINX_CPU" ]]; then
        awk -v a="$(median fulcrum 8)" -v b="$NGINX_CPU" \
            -v pr="$(paired fulcrum nginx)" \
            'BEGIN { printf "\nfulcrum / nginx CPU per request: **%.2f×** (%.2f µs vs %.2f µs; %s)\n", a / b, a, b, pr }'
    fi
    if [[ " $PROXIES " == *" fulcrum "* ]] && [[ " $PROXIES " == *" fulcrum-glibc "* ]]; then
        awk -v a="$(median fulcrum 8)" -v b="$(median fulcrum-glibc 8)" \
            'BEGIN { printf "\nfulcrum with mimalloc / with glibc malloc CPU per request: **%.3f×** (%.2f µs vs %.2f µs)\n", a / b, a, b }'
    fi
    if [[ " $PROXIES " == *" fulcrum "* ]] && [[ " $PROXIES " == *" fulcrum-base "* ]]; then
        awk -v a="$(median fulcrum 8)" -v b="$(median fulcrum-base 8)" -v l="${label[fulcrum-base]}" \
            -v pr="$(paired fulcrum fulcrum-base)" \
            'BEGIN { printf "\nfulcrum (this tree) / %s CPU per request: **%.3f×** (%.2f µs vs %.2f µs; %+.2f µs per request; %s)\n", l, a / b, a, b, a - b, pr }'
    fi
    if [[ " $PROXIES " == *" fulcrum "* ]] && [[ " $PROXIES " == *" fulcrum-model "* ]]; then
        awk -v a="$(median fulcrum-model 8)" -v b="$(median fulcrum 8)" \
            -v pr="$(paired fulcrum-model fulcrum)" \
            'BEGIN { printf "\nfulcrum weights = \"model\" / weights = \"static\" CPU per request: **%.3f×** (%.2f µs vs %.2f µs; %s)\n", a / b, a, b, pr }'
    fi
    echo
    echo "Raw per-run numbers, discarded runs included (kept = 0): \`$RESULT_NAME.csv\` next to this file."
} | tee "$RESULTS_DIR/$RESULT_NAME.md"

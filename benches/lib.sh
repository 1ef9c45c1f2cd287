# Shared shell helpers for the benches that run proxies side by side on loopback
# (idle-memory.sh, soak-rss.sh, open-loop.sh), with the layout and peer configs of
# peer-compare.sh: the proxy under test pinned to core 0 with one worker, the client and the
# one-worker nginx origin pinned to core 1, configs rendered from benches/peers/.
#
# Source it after setting BENCH (the script's name, for messages). It sets ROOT, PEERS,
# TARGET_DIR, WORK (a private temp dir removed on exit) and the helpers below. A script may
# define `tune_config NAME FILE` to adjust a proxy's rendered config before it starts.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS="$ROOT/benches/peers"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
# FULCRUM_BIN=FILE: measure this fulcrum binary (e.g. the profile-guided build of
# scripts/build-pgo.sh) instead of building this tree's release binary.
FULCRUM_GIVEN="${FULCRUM_BIN:-}"
# For the results' command lines: "FULCRUM_BIN=FILE " when one was given.
FULCRUM_BIN_PREFIX="${FULCRUM_GIVEN:+FULCRUM_BIN=$FULCRUM_GIVEN }"
PROXY_CORE=0
CLIENT_CORE=1
CLK_TCK="$(getconf CLK_TCK)"

die() { echo "$BENCH: $*" >&2; exit 1; }
log() { echo "$BENCH: $*" >&2; }

# need_tools TOOL... : fail with the apt-get line if any is missing
need_tools() {
    local missing=() tool
    for tool in "$@"; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
    ((${#missing[@]} == 0)) || die "missing: ${missing[*]}
  install them with:  apt-get install -y wrk nginx-light haproxy util-linux curl iproute2 python3"
    (($(nproc) >= 2)) || die "needs at least 2 CPU cores (proxy on core $PROXY_CORE, client+origin on core $CLIENT_CORE)"
}

# check_proxies NAME... : every name is one this library can start
check_proxies() {
    local p
    for p in "$@"; do
        case "$p" in fulcrum | bare-pingora | nginx | haproxy) ;; *) die "unknown proxy '$p'" ;; esac
    done
}

WORK="$(mktemp -d "/tmp/$BENCH.XXXXXX")"
mkdir -p "$WORK/bin"
PIDS_TO_STOP=()

# SIGINT is the fast-shutdown signal for pingora, nginx and HAProxy alike
# (SIGTERM would make pingora wait out its graceful-shutdown period).
stop_pid() {
    [[ -n "$1" ]] || return 0
    kill -INT "$1" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
lib_cleanup() {
    local pid
    for pid in "${PIDS_TO_STOP[@]}"; do stop_pid "$pid"; done
    rm -rf "$WORK"
}
trap lib_cleanup EXIT
trap 'exit 130' INT TERM

# build_bare_pingora: release-build the baseline, benches/bare-pingora, a package outside the
# workspace so that it is built against crates.io's pingora and none of vendor/'s changes;
# into $TARGET_DIR/release/bare_pingora.
build_bare_pingora() {
    log "building the bare pingora baseline (crates.io pingora, benches/bare-pingora)"
    cargo build --release --locked --manifest-path "$ROOT/benches/bare-pingora/Cargo.toml" \
        --target-dir "$TARGET_DIR" >&2 || die "build of benches/bare-pingora failed"
}

# build_release WHAT...: release-build fulcrum (unless FULCRUM_BIN names one), bare-pingora
# and/or openloop (unless SKIP_BUILD is set) and copy them into $WORK/bin, so a concurrent
# rebuild of the target dir cannot swap a binary out from under a measurement. Sets
# FULCRUM_BIN, BARE_BIN, OPENLOOP_BIN.
build_release() {
    local build=(cargo build --release) p
    for p in "$@"; do
        case "$p" in
        fulcrum) [[ -n "$FULCRUM_GIVEN" ]] || build+=(-p fulcrum --bin fulcrum) ;;
        bare-pingora) [[ -n "${SKIP_BUILD:-}" ]] || build_bare_pingora ;;
        openloop) build+=(-p fulcrum-lab --example openloop) ;;
        esac
    done
    if [[ -z "${SKIP_BUILD:-}" ]] && ((${#build[@]} > 3)); then
        log "building: ${build[*]}"
        (cd "$ROOT" && "${build[@]}") >&2 || die "build failed"
    fi
    for p in "$@"; do
        case "$p" in
        fulcrum) FULCRUM_BIN="$WORK/bin/fulcrum"; cp "${FULCRUM_GIVEN:-$TARGET_DIR/release/fulcrum}" "$FULCRUM_BIN" ;;
        bare-pingora) BARE_BIN="$WORK/bin/bare_pingora"; cp "$TARGET_DIR/release/bare_pingora" "$BARE_BIN" ;;
        openloop) OPENLOOP_BIN="$WORK/bin/openloop"; cp "$TARGET_DIR/release/examples/openloop" "$OPENLOOP_BIN" ;;
        esac || die "no release build of $p in $TARGET_DIR (unset SKIP_BUILD)"
    done
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
TAKEN=" "
free_port() {
    local p
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 12000)) # below the ephemeral range, which the clients use up
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

wait_http() { # PORT NAME
    for _ in $(seq 300); do
        [[ "$(curl -fsS --max-time 1 "http://127.0.0.1:$1/" 2>/dev/null)" == "ok" ]] && return 0
        sleep 0.1
    done
    die "$2 did not answer 'ok' on http://127.0.0.1:$1 (logs in $WORK)"
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

# clock ticks the hypervisor took from core $1 since boot (steal time: the core wanted to run
# and was not given the physical CPU)
steal_ticks() {
    awk -v c="cpu$1" '$1 == c { print $9; exit }' /proc/stat
}

# resident set size in KiB, summed over the process tree rooted at $1
rss_kib() {
    local total=0 pid kib
    for pid in $(tree_pids "$1"); do
        kib="$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null)" || continue
        total=$((total + ${kib:-0}))
    done
    echo "$total"
}

# `times` output "XmY.YYYs" -> microseconds
mins_to_us() {
    awk -v v="$1" 'BEGIN { split(v, a, "m"); sub(/s$/, "", a[2]); printf "%.0f", (a[1] * 60 + a[2]) * 1e6 }'
}

# ---------------------------------------------------------------- origin and proxies
ORIGIN_PID=""
BACKEND_PORT=""
start_origin() {
    BACKEND_PORT="$(free_port)"
    mkdir -p "$WORK/origin/logs"
    render "$PEERS/nginx-backend.conf" "$WORK/origin/nginx.conf" DIR="$WORK/origin" BACKEND_PORT="$BACKEND_PORT"
    declare -F tune_config >/dev/null && tune_config origin "$WORK/origin/nginx.conf"
    taskset -c "$CLIENT_CORE" nginx -p "$WORK/origin" -c "$WORK/origin/nginx.conf" 2>"$WORK/origin/stderr" &
    ORIGIN_PID=$!
    PIDS_TO_STOP+=("$ORIGIN_PID")
    wait_http "$BACKEND_PORT" "origin nginx"
    log "origin nginx on 127.0.0.1:$BACKEND_PORT"
}

PROXY_PID=""
# start_proxy NAME PORT: one worker on $PROXY_CORE, proxying to the origin; sets PROXY_PID
start_proxy() {
    local name="$1" port="$2" dir="$WORK/$1" conf
    rm -rf "$dir"
    mkdir -p "$dir/logs"
    case "$name" in
    fulcrum)
        conf="$dir/fulcrum.toml"
        render "$PEERS/fulcrum.toml" "$conf" LISTEN_PORT="$port" ADMIN_PORT="$(free_port)" BACKEND_PORT="$BACKEND_PORT"
        ;;
    nginx)
        conf="$dir/nginx.conf"
        render "$PEERS/nginx-proxy.conf" "$conf" DIR="$dir" LISTEN_PORT="$port" BACKEND_PORT="$BACKEND_PORT"
        ;;
    haproxy)
        conf="$dir/haproxy.cfg"
        render "$PEERS/haproxy.cfg" "$conf" LISTEN_PORT="$port" BACKEND_PORT="$BACKEND_PORT"
        ;;
    bare-pingora) conf="" ;;
    esac
    [[ -n "$conf" ]] && declare -F tune_config >/dev/null && tune_config "$name" "$conf"
    case "$name" in
    fulcrum)
        RUST_LOG=error taskset -c "$PROXY_CORE" "$FULCRUM_BIN" run -c "$conf" >"$dir/stdout" 2>"$dir/stderr" &
        ;;
    bare-pingora)
        RUST_LOG=error taskset -c "$PROXY_CORE" "$BARE_BIN" "127.0.0.1:$port" 1 "127.0.0.1:$BACKEND_PORT" \
            >"$dir/stdout" 2>"$dir/stderr" &
        ;;
    nginx)
        taskset -c "$PROXY_CORE" nginx -p "$dir" -c "$conf" >"$dir/stdout" 2>"$dir/stderr" &
        ;;
    haproxy)
        taskset -c "$PROXY_CORE" haproxy -db -f "$conf" >"$dir/stdout" 2>"$dir/stderr" &
        ;;
    esac
    PROXY_PID=$!
    PIDS_TO_STOP+=("$PROXY_PID")
    wait_http "$port" "$name"
}

stop_proxy() {
    stop_pid "$PROXY_PID"
    PROXY_PID=""
}

# proxy labels for tables
proxy_label() {
    case "$1" in
    fulcrum) echo "fulcrum" ;;
    bare-pingora) echo "bare pingora (round robin)" ;;
    nginx) echo "nginx $(nginx -v 2>&1 | sed 's|.*nginx/||')" ;;
    haproxy) echo "HAProxy $(haproxy -v 2>/dev/null | awk 'NR == 1 { print $3 }')" ;;
    esac
}

# result_header TITLE COMMAND: the first lines of every result file
result_header() {
    echo "# $1"
    echo
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "- Machine: $(nproc) cores, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), $(uname -sr), $(awk '/^MemTotal:/ { printf "%.0f GiB RAM", $2 / 1048576 }' /proc/meminfo)"
    echo "- Command: \`$2\`"
}

#!/usr/bin/env bash
# Slow and idle clients, HTTP/2 rapid reset, request smuggling and a soak with backend churn
# against fulcrum, with a well-behaved client measured beside each attack, and the same attacks
# against nginx and HAProxy in the same run.
#
# fulcrum runs with its default client limits in front of two nginx origins, under a soft
# open-file limit of 1024 below a higher hard limit (fulcrum raises the soft limit at start), as
# issue 11's targets state. Then, one after the other:
#   - the probe client alone: its unloaded success rate and p99;
#   - the header hold of issue 11 (300 connections each holding an unfinished 60 KB head), first
#     so that RSS "before" is the resting level;
#   - slowhttptest -H (slowloris), -B (slow body) and -X (slow read), each at CONNECTIONS
#     connections for ATTACK_S seconds, with the probe client beside it;
#   - the idle, trickled-head, keep-alive and malformed-request probes;
#   - smugglex (every check, then every check with --fuzz) over cleartext and over TLS;
#   - with the hard open-file limit at 1024 as well (the connection cap then falls to what 1024
#     files can hold): the probe client alone, every attack above and an HTTP/2 rapid-reset
#     burst (HEADERS + RST_STREAM, stream after stream, for RAPID_S seconds on h2c);
#   - the same against nginx and HAProxy under the same limit (PEERS=0 skips them), configured
#     as their hardening guides' defaults: nginx `worker_connections 512`,
#     `client_header_timeout 10s`; HAProxy `timeout http-request 10s`, maxconn derived from the
#     limit; each also with an h2c listener for the rapid reset.
# For each: the probe client's success count and p50/p99 (new connection per request, 5 s
# timeout); for fulcrum also its RSS before / peak during / after, its open files and client
# connections at peak, the fewest backends marked up during the run, and the health-check
# failures; for the rapid reset the streams sent, how each connection ended, the requests that
# reached the origins (their access log) and the proxy's CPU time.
# Beside all of it, from the start (SOAK_S > 0): a soak on a second fulcrum with its own two
# origins, SOAK_RATE probe requests a second for SOAK_S seconds, one origin killed (SIGKILL) every
# SOAK_CHURN_S seconds and restarted SOAK_DOWN_S later, fulcrum's RSS and open files every 30 s.
# At the end: the ERROR lines fulcrum logged (clients hanging up must not log any).
#
# Usage: benches/hardening.sh            (about 15 minutes, or SOAK_S if longer)
# Environment:
#   FULCRUM_BIN=target/debug/fulcrum   the binary under test ($CARGO_TARGET_DIR honoured);
#                                      built with `cargo build -p fulcrum` unless SKIP_BUILD=1
#   CONNECTIONS=1100  ATTACK_S=30  PROBE_RATE=20   attack size and length, probe requests/s
#   RAPID_S=20                         length of each rapid-reset burst
#   SMUGGLEX=1                         0 skips smugglex (installed with `cargo install` if missing)
#   SOAK_S=1800  SOAK_RATE=20  SOAK_CHURN_S=60  SOAK_DOWN_S=20   the soak (SOAK_S=0 skips it)
#   BASE_PORT=18600   fulcrum BASE_PORT, admin +1, origins +2 and +3, nginx +4 (h2c +6),
#                     HAProxy +5 (h2c +7), fulcrum TLS +8, soak: fulcrum +10, admin +11,
#                     origins +12 and +13 (127.0.0.1 only)
#   PYTHON=.venv/bin/python            gets benches/hardening-requirements.txt (h2)
#   RESULTS=benches/results/hardening.md
#   ONLY=slow-body-1024  only fulcrum under the slow-body attack at a hard open-file limit of
#                      1024; prints its row (the report is left as it is)
#   ONLY=header-hold   only the quiet run and the header hold (no soak, no peers); replaces
#                      the default-limit header-hold row in RESULTS
# Requirements: slowhttptest, nginx, haproxy, curl, python3, prlimit, openssl
#   (Debian: apt-get install -y slowhttptest nginx-light haproxy curl python3 util-linux openssl)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CONNECTIONS="${CONNECTIONS:-1100}"
ATTACK_S="${ATTACK_S:-30}"
PROBE_RATE="${PROBE_RATE:-20}"
BASE_PORT="${BASE_PORT:-18600}"
RESULTS="${RESULTS:-benches/results/hardening.md}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
FULCRUM_BIN="${FULCRUM_BIN:-$TARGET/debug/fulcrum}"
RAPID_S="${RAPID_S:-20}"
SOAK_S="${SOAK_S:-1800}"
SOAK_RATE="${SOAK_RATE:-20}"
SOAK_CHURN_S="${SOAK_CHURN_S:-60}"
SOAK_DOWN_S="${SOAK_DOWN_S:-20}"
SMUGGLEX_VERSION=0.4.0
# Every check smugglex knows; cl-0, 0-cl and parser-discrepancy run only when named, and
# h2-downgrade only over TLS.
SMUGGLEX_CHECKS=cl-te,te-cl,te-te,h2c,h2,cl-edge,cl-0,0-cl,parser-discrepancy,h2-downgrade
PY="${PYTHON:-$ROOT/.venv/bin/python}"
PROBE="$PY $ROOT/benches/hardening_probe.py"

PORT=$BASE_PORT
ADMIN=$((BASE_PORT + 1))
ORIGIN1=$((BASE_PORT + 2))
ORIGIN2=$((BASE_PORT + 3))
TLS_PORT=$((BASE_PORT + 8))
URL="http://127.0.0.1:$PORT/"
HARD_NOFILE="$(ulimit -Hn)"

for tool in slowhttptest nginx curl python3 prlimit openssl; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    cargo build -p fulcrum
fi
[ -x "$PY" ] || scripts/setup.sh bench
"$PY" -m pip install -q -r benches/hardening-requirements.txt ||
    { echo "could not install benches/hardening-requirements.txt into $PY's environment" >&2; exit 1; }
if [ "${SMUGGLEX:-1}" = 1 ] && [ -z "${ONLY:-}" ] && ! command -v smugglex >/dev/null; then
    cargo install --locked smugglex --version "$SMUGGLEX_VERSION" ||
        echo "smugglex $SMUGGLEX_VERSION could not be installed; the report says so" >&2
fi

WORK="$(mktemp -d /tmp/fulcrum-hardening.XXXXXX)"
FULCRUM_PID=""
SOAK_JOB=""
cleanup() {
    [ -n "$FULCRUM_PID" ] && kill "$FULCRUM_PID" 2>/dev/null || true
    [ -n "$SOAK_JOB" ] && kill "$SOAK_JOB" 2>/dev/null || true
    local f
    for f in "$WORK/origin/nginx.pid" "$WORK"/soak/*.pid "$WORK"/peer.pid; do
        [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# --- the origins: nginx, "ok\n" on /, 1 MiB on /big.bin (for the slow read) -------------------
mkdir -p "$WORK/origin/www"
head -c 1048576 /dev/zero >"$WORK/origin/www/big.bin"
cat >"$WORK/origin/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $WORK/origin/nginx.pid;
error_log $WORK/origin/error.log error;
events { worker_connections 8192; }
http {
    log_format path '\$request_uri \$status';
    access_log $WORK/origin/access.log path;
    client_body_temp_path $WORK/origin/body;
    proxy_temp_path $WORK/origin/proxy;
    fastcgi_temp_path $WORK/origin/fastcgi;
    uwsgi_temp_path $WORK/origin/uwsgi;
    scgi_temp_path $WORK/origin/scgi;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$ORIGIN1;
        listen 127.0.0.1:$ORIGIN2;
        location = /big.bin { root $WORK/origin/www; }
        location / { default_type text/plain; return 200 "ok\n"; }
    }
}
EOF
nginx -c "$WORK/origin/nginx.conf" -p "$WORK/origin" &

# --- fulcrum: default limits; TLS too, for smugglex's HTTP/2 checks ---------------------------
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
cat >"$WORK/fulcrum.toml" <<EOF
[server]
listen = ["127.0.0.1:$PORT"]
tls_listen = ["127.0.0.1:$TLS_PORT"]
threads = 2

[[server.certificates]]
cert = "$WORK/cert.pem"
key = "$WORK/key.pem"

[admin]
listen = "127.0.0.1:$ADMIN"

[[routes]]
pool = "web"

[pools.web]
algorithm = "least_connections"

[pools.web.health_check]
path = "/healthz"
interval_ms = 1000
timeout_ms = 500

[[pools.web.backends]]
addr = "127.0.0.1:$ORIGIN1"

[[pools.web.backends]]
addr = "127.0.0.1:$ORIGIN2"
EOF

start_fulcrum() { # $1: the open-file limit, soft:hard
    prlimit --nofile="$1" "$FULCRUM_BIN" -c "$WORK/fulcrum.toml" >>"$WORK/fulcrum.log" 2>&1 &
    FULCRUM_PID=$!
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "fulcrum did not become ready" >&2
    tail -20 "$WORK/fulcrum.log" >&2
    exit 1
}

stop_fulcrum() {
    kill "$FULCRUM_PID"
    wait "$FULCRUM_PID" 2>/dev/null || true
    FULCRUM_PID=""
}

rss_kb() { awk '/^VmRSS/ { print $2 }' "/proc/${1:-$FULCRUM_PID}/status"; }
fds() { ls "/proc/${1:-$FULCRUM_PID}/fd" | wc -l; }
metric() { # sum of a metric's samples; $2: the admin port (default fulcrum's)
    curl -s "http://127.0.0.1:${2:-$ADMIN}/metrics" | awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $2 } END { print s + 0 }'
}
cpu_ticks() { # user + system CPU of $1 and its children (nginx's workers), in clock ticks
    local p t=0
    for p in "$1" $(pgrep -P "$1" || true); do
        t=$((t + $(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null || echo 0)))
    done
    echo "$t"
}

# Every second while $1 runs: RSS, open files, client connections, backends up.
sample() { # $1: pid to watch, $2: output file
    : >"$2"
    while kill -0 "$1" 2>/dev/null; do
        echo "$(rss_kb) $(fds) $(metric fulcrum_connections_open) $(metric fulcrum_backend_up)" >>"$2"
        sleep 1
    done
}

ROWS=()
# One measured run: $1 name, $2 command line of the attack (run in the background), $3 seconds
# the probe client runs.
measure() {
    local name="$1" attack="$2" probe_s="$3"
    local before failures_before
    before=$(rss_kb)
    failures_before=$(metric fulcrum_health_check_failures_total)
    bash -c "$attack" >"$WORK/attack-$name.log" 2>&1 &
    local attack_pid=$!
    sample "$attack_pid" "$WORK/samples-$name.txt" &
    local sampler=$!
    sleep 3 # let the attack open its connections first
    $PROBE client "$URL" --rate "$PROBE_RATE" --duration "$probe_s" >"$WORK/probe-$name.json"
    wait "$attack_pid" || true
    wait "$sampler" || true
    sleep 5
    local after failures
    after=$(rss_kb)
    failures=$(($(metric fulcrum_health_check_failures_total) - failures_before))
    local peak
    peak=$(awk 'BEGIN { r = 0; f = 0; c = 0; u = 1e9 } { if ($1 > r) r = $1; if ($2 > f) f = $2; if ($3 > c) c = $3; if ($4 < u) u = $4 } END { if (u == 1e9) u = "-"; printf "%d %d %d %s", r, f, c, u }' "$WORK/samples-$name.txt")
    read -r peak_rss peak_fds peak_conns min_up <<<"$peak"
    local probe
    probe=$($PROBE row "$WORK/probe-$name.json")
    ROWS+=("| $name | $probe | $((before / 1024)) / $((peak_rss / 1024)) / $((after / 1024)) | $peak_fds | $peak_conns | $min_up of 2 | $failures |")
    echo "$name: probe $probe; RSS MB $((before / 1024))/$((peak_rss / 1024))/$((after / 1024)); fds $peak_fds; conns $peak_conns; up >= $min_up; health failures $failures" >&2
}

# The attacks, by kind, against 127.0.0.1:$2; and how long the probe client runs beside each.
attack_cmd() {
    local url="http://127.0.0.1:$2/"
    case "$1" in
    none) echo "sleep 13" ;;
    hold) echo "$PROBE hold-headers 127.0.0.1 $2 --conns 300 --bytes 60000" ;;
    slowloris) echo "slowhttptest -c $CONNECTIONS -H -i 10 -r 200 -t GET -u $url -x 24 -p 3 -l $ATTACK_S" ;;
    slowbody) echo "slowhttptest -c $CONNECTIONS -B -i 10 -r 200 -s 8192 -t POST -u $url -x 10 -p 3 -l $ATTACK_S" ;;
    slowread) echo "slowhttptest -c $CONNECTIONS -X -r 200 -w 512 -y 1024 -n 5 -z 32 -k 3 -u ${url}big.bin -p 3 -l $ATTACK_S" ;;
    esac
}
PROBE_S=$((ATTACK_S - 5))
probe_s() { case "$1" in none) echo 10 ;; hold) echo 8 ;; *) echo "$PROBE_S" ;; esac; }
KINDS=(none hold slowloris slowbody slowread)
declare -A LABEL=([none]="no attack" [hold]="header hold (300 × 60 KB)" [slowloris]="slowloris (-H)"
    [slowbody]="slow body (-B)" [slowread]="slow read (-X)")

# An HTTP/2 rapid-reset burst against $3 (h2c) of the proxy $1 (pid $2) for RAPID_S seconds,
# with the probe client on port $4 beside it.
RAPID_ROWS=()
rapid_reset() {
    local name="$1" pid="$2" h2port="$3" port="$4"
    local lines ticks
    lines=$(wc -l <"$WORK/origin/access.log")
    ticks=$(cpu_ticks "$pid")
    $PROBE rapid-reset 127.0.0.1 "$h2port" --duration "$RAPID_S" >"$WORK/rapid-$name.json" &
    local burst=$!
    sleep 1
    $PROBE client "http://127.0.0.1:$port/" --rate "$PROBE_RATE" --duration $((RAPID_S - 3)) >"$WORK/probe-rapid-$name.json"
    wait "$burst" || true
    ticks=$(($(cpu_ticks "$pid") - ticks))
    sleep 2 # let the origins log what was still in flight
    local reached
    reached=$(tail -n +$((lines + 1)) "$WORK/origin/access.log" | grep -c '^/rapid-reset' || true)
    local row
    row=$("$PY" - "$WORK/rapid-$name.json" "$reached" "$ticks" "$(getconf CLK_TCK)" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
reached, ticks, hz = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ended = ", ".join(f"{k} × {v}" for k, v in sorted(r["connections_ended_by"].items(), key=lambda kv: -kv[1]))
cpu = ticks / hz
print(f"{r['streams_sent']} ({r['streams_sent'] / r['duration_s']:.0f}/s) | {r['connections']} | "
      f"{r['streams_per_connection_median']} / {r['streams_per_connection_max']} | "
      f"{r['streams_taken_before_goaway_median'] if r['streams_taken_before_goaway_median'] is not None else '-'} | {ended} | "
      f"{r['responses_received']} | {reached} | {cpu:.2f} s ({100 * cpu / r['duration_s']:.0f} %)")
EOF
)
    RAPID_ROWS+=("| $name | $row | $($PROBE row "$WORK/probe-rapid-$name.json") |")
    echo "rapid reset against $name: $row; probe $($PROBE row "$WORK/probe-rapid-$name.json")" >&2
}

# --- the soak: a second fulcrum and two origins of its own, one of them killed every minute ----
SOAK_PORT=$((BASE_PORT + 10))
SOAK_ADMIN=$((BASE_PORT + 11))
SOAK_ORIGINS=($((BASE_PORT + 12)) $((BASE_PORT + 13)))
soak_origin() { # $1: 0 or 1; one process (no master), so that SIGKILL takes the port down
    nginx -c "$WORK/soak/origin$1.conf" -p "$WORK/soak" >>"$WORK/soak/origin$1.log" 2>&1 &
    echo $! >"$WORK/soak/origin$1.pid"
}
soak() {
    mkdir -p "$WORK/soak"
    local i
    for i in 0 1; do
        cat >"$WORK/soak/origin$i.conf" <<EOF
daemon off;
master_process off;
pid $WORK/soak/nginx$i.pid;
error_log $WORK/soak/error$i.log error;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/soak/body$i;
    proxy_temp_path $WORK/soak/proxy$i;
    fastcgi_temp_path $WORK/soak/fastcgi$i;
    uwsgi_temp_path $WORK/soak/uwsgi$i;
    scgi_temp_path $WORK/soak/scgi$i;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:${SOAK_ORIGINS[$i]};
        location / { default_type text/plain; return 200 "ok\n"; }
    }
}
EOF
        soak_origin "$i"
    done
    sed -e "s/127.0.0.1:$PORT\"/127.0.0.1:$SOAK_PORT\"/; s/127.0.0.1:$ADMIN\"/127.0.0.1:$SOAK_ADMIN\"/" \
        -e "s/127.0.0.1:$ORIGIN1\"/127.0.0.1:${SOAK_ORIGINS[0]}\"/; s/127.0.0.1:$ORIGIN2\"/127.0.0.1:${SOAK_ORIGINS[1]}\"/" \
        -e '/^tls_listen/d; /^\[\[server.certificates\]\]/,/^key/d' "$WORK/fulcrum.toml" >"$WORK/soak/fulcrum.toml"
    prlimit --nofile="1024:$HARD_NOFILE" "$FULCRUM_BIN" -c "$WORK/soak/fulcrum.toml" >"$WORK/soak/fulcrum.log" 2>&1 &
    local pid=$!
    echo "$pid" >"$WORK/soak/fulcrum.pid"
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$SOAK_ADMIN/readyz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    sleep 2
    $PROBE client "http://127.0.0.1:$SOAK_PORT/" --rate "$SOAK_RATE" --duration "$SOAK_S" --bucket-s 30 >"$WORK/soak/probe.json" &
    local probe=$!
    local start now t up next_sample=30 next_kill=$SOAK_CHURN_S restart_at="" down="" up_min=2 events=""
    start=$(date +%s.%N)
    echo "0 $(rss_kb "$pid") $(fds "$pid") $(metric fulcrum_backend_up "$SOAK_ADMIN") -" >"$WORK/soak/samples.txt"
    while [ "$next_sample" -le "$SOAK_S" ]; do
        now=$(date +%s.%N)
        t=$(awk -v a="$now" -v b="$start" 'BEGIN { printf "%d", a - b }')
        up=$(metric fulcrum_backend_up "$SOAK_ADMIN")
        [ "$up" -lt "$up_min" ] && up_min=$up
        if [ "$t" -ge "$next_sample" ]; then
            echo "$next_sample $(rss_kb "$pid") $(fds "$pid") $up_min ${events:--}" >>"$WORK/soak/samples.txt"
            next_sample=$((next_sample + 30))
            up_min=2
            events=""
        fi
        if [ "$t" -ge "$next_kill" ] && [ -z "$down" ] && [ "$t" -lt "$SOAK_S" ]; then
            down=$(((next_kill / SOAK_CHURN_S - 1) % 2))
            kill -KILL "$(cat "$WORK/soak/origin$down.pid")" 2>/dev/null || true
            events="$events killed:${SOAK_ORIGINS[$down]}@$t"
            restart_at=$((t + SOAK_DOWN_S))
            next_kill=$((next_kill + SOAK_CHURN_S))
        fi
        if [ -n "$down" ] && [ "$t" -ge "$restart_at" ]; then
            soak_origin "$down"
            events="$events restarted:${SOAK_ORIGINS[$down]}@$t"
            down=""
        fi
        sleep 1
    done
    wait "$probe" || true
    metric fulcrum_retries_total "$SOAK_ADMIN" >"$WORK/soak/retries"
    metric fulcrum_passive_ejections_total "$SOAK_ADMIN" >"$WORK/soak/ejections"
    metric fulcrum_health_check_failures_total "$SOAK_ADMIN" >"$WORK/soak/health-failures"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    for i in 0 1; do kill "$(cat "$WORK/soak/origin$i.pid")" 2>/dev/null || true; done
    rm -f "$WORK"/soak/*.pid
}
if [ "$SOAK_S" -gt 0 ] && [ -z "${ONLY:-}" ]; then
    soak &
    SOAK_JOB=$!
fi

SLOWLORIS="$(attack_cmd slowloris "$PORT")"
SLOWBODY="$(attack_cmd slowbody "$PORT")"
SLOWREAD="$(attack_cmd slowread "$PORT")"
HOLD="$(attack_cmd hold "$PORT")"

if [ "${ONLY:-}" = slow-body-1024 ]; then
    start_fulcrum 1024:1024
    measure "slow body (-B), hard limit 1024" "$SLOWBODY" "$PROBE_S"
    printf '%s\n' "${ROWS[@]}"
    echo "(fulcrum only, not written to $RESULTS; logs in $WORK)" >&2
    exit 0
fi
start_fulcrum "1024:$HARD_NOFILE"
if [ "${ONLY:-}" = header-hold ]; then
    measure "no attack" "sleep 13" 10
    measure "header hold (300 × 60 KB)" "$HOLD" 8
    awk -v row="${ROWS[1]}" '!done && index($0, "| header hold (300 × 60 KB) |") == 1 { print row; done = 1; next } { print }' "$RESULTS" >"$WORK/results.md"
    cp "$WORK/results.md" "$RESULTS"
    echo "replaced the header-hold row of $RESULTS (logs in $WORK)" >&2
    exit 0
fi
$PROBE keepalive 127.0.0.1 "$PORT" >"$WORK/keepalive.json" &
KEEPALIVE_PID=$!
measure "no attack" "sleep 13" 10
# First after the quiet run, so that its RSS "before" is the process's resting level.
measure "header hold (300 × 60 KB)" "$HOLD" 8
measure "slowloris (-H)" "$SLOWLORIS" "$PROBE_S"
measure "slow body (-B)" "$SLOWBODY" "$PROBE_S"
measure "slow read (-X)" "$SLOWREAD" "$PROBE_S"
$PROBE probes 127.0.0.1 "$PORT" >"$WORK/probes.json"
wait "$KEEPALIVE_PID" || true

# --- smugglex: every check, then with --fuzz, over cleartext and TLS --------------------------
SMUGGLEX_RUNS=()
if [ "${SMUGGLEX:-1}" = 1 ] && command -v smugglex >/dev/null; then
    for target in "http://127.0.0.1:$PORT/" "https://127.0.0.1:$TLS_PORT/"; do
        for fuzz in "" --fuzz; do
            n=${#SMUGGLEX_RUNS[@]}
            lines=$(wc -l <"$WORK/origin/access.log")
            started=$(date +%s)
            # shellcheck disable=SC2086 # $fuzz is empty or one flag
            timeout 900 smugglex "$target" -c "$SMUGGLEX_CHECKS" -k --no-color $fuzz --json \
                -o "$WORK/smugglex-$n.json" >"$WORK/smugglex-$n.log" 2>&1 || true
            SMUGGLEX_RUNS+=("smugglex $target -c \$SMUGGLEX_CHECKS -k $fuzz|$(($(date +%s) - started))|$(tail -n +$((lines + 1)) "$WORK/origin/access.log" | grep -vc '^/healthz ' || true)")
            echo "smugglex $target $fuzz: $(($(date +%s) - started)) s" >&2
        done
    done
fi
LIMITS=$(grep -m1 'accepting up to' "$WORK/fulcrum.log" | sed 's/.*\] //')
stop_fulcrum

# --- hard limit 1024: fulcrum, then nginx and HAProxy, under every attack ---------------------
start_fulcrum 1024:1024
for kind in "${KINDS[@]}"; do
    measure "${LABEL[$kind]}, hard limit 1024" "$(attack_cmd "$kind" "$PORT")" "$(probe_s "$kind")"
done
rapid_reset fulcrum "$FULCRUM_PID" "$PORT" "$PORT"
LIMITS_1024=$(grep 'accepting up to' "$WORK/fulcrum.log" | tail -1 | sed 's/.*\] //')
stop_fulcrum

NGINX_PORT=$((BASE_PORT + 4))
HAPROXY_PORT=$((BASE_PORT + 5))
NGINX_H2=$((BASE_PORT + 6))
HAPROXY_H2=$((BASE_PORT + 7))
PEER_NAMES=()
declare -A PEER_LABEL=()
# Start peer $1 under the hard limit of 1024 and wait until it answers on $2.
start_peer() {
    case "$1" in
    nginx) prlimit --nofile=1024:1024 nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" >>"$WORK/nginx.log" 2>&1 & ;;
    haproxy) prlimit --nofile=1024:1024 haproxy -f "$WORK/haproxy.cfg" -db >>"$WORK/haproxy.log" 2>&1 & ;;
    esac
    PEER_PID=$!
    echo "$PEER_PID" >"$WORK/peer.pid"
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$2/" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
}
stop_peer() {
    kill "$PEER_PID" 2>/dev/null || true
    wait "$PEER_PID" 2>/dev/null || true
    rm -f "$WORK/peer.pid"
}
# The probe client beside attack $3 on peer $1 (listening on $2), the peer started afresh.
peer_attack() {
    local peer="$1" port="$2" kind="$3"
    start_peer "$peer" "$port"
    bash -c "$(attack_cmd "$kind" "$port")" >"$WORK/attack-$peer-$kind.log" 2>&1 &
    local attack=$!
    sleep 3
    $PROBE client "http://127.0.0.1:$port/" --rate "$PROBE_RATE" --duration "$(probe_s "$kind")" >"$WORK/probe-$peer-$kind.json"
    wait "$attack" || true
    stop_peer
    echo "${PEER_LABEL[$peer]} under ${LABEL[$kind]}, hard limit 1024: $($PROBE row "$WORK/probe-$peer-$kind.json")" >&2
}
if [ "${PEERS:-1}" = 1 ]; then
    mkdir -p "$WORK/nginx"
    cat >"$WORK/nginx/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log error;
events { worker_connections 512; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    client_header_timeout 10s;
    client_body_timeout 30s;
    upstream web {
        server 127.0.0.1:$ORIGIN1;
        server 127.0.0.1:$ORIGIN2;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        listen 127.0.0.1:$NGINX_H2 http2;
        location / {
            proxy_pass http://web;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    cat >"$WORK/haproxy.cfg" <<EOF
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 60s
frontend fe
    bind 127.0.0.1:$HAPROXY_PORT
    bind 127.0.0.1:$HAPROXY_H2 proto h2
    default_backend web
backend web
    balance roundrobin
    server s1 127.0.0.1:$ORIGIN1
    server s2 127.0.0.1:$ORIGIN2
EOF
    PEER_NAMES=(nginx haproxy)
    PEER_LABEL=([nginx]="nginx $(nginx -v 2>&1 | sed 's|.*/||')" [haproxy]="HAProxy $(haproxy -v | awk 'NR == 1 { print $3 }')")
    for kind in "${KINDS[@]}"; do
        peer_attack nginx "$NGINX_PORT" "$kind"
        peer_attack haproxy "$HAPROXY_PORT" "$kind"
    done
    start_peer nginx "$NGINX_PORT"
    rapid_reset "${PEER_LABEL[nginx]}" "$PEER_PID" "$NGINX_H2" "$NGINX_PORT"
    stop_peer
    start_peer haproxy "$HAPROXY_PORT"
    rapid_reset "${PEER_LABEL[haproxy]}" "$PEER_PID" "$HAPROXY_H2" "$HAPROXY_PORT"
    stop_peer
fi

if [ -n "$SOAK_JOB" ]; then
    echo "waiting for the soak ($SOAK_S s from the start)" >&2
    wait "$SOAK_JOB" || true
    SOAK_JOB=""
fi

ERRORS=$(grep -c ' ERROR ' "$WORK/fulcrum.log" || true)
WARNS=$(grep -c ' WARN ' "$WORK/fulcrum.log" || true)

# --- report -----------------------------------------------------------------------------------
cell() { # a probe result as "ok of sent (%) | p50 | p99", or dashes when the run did not happen
    if [ -f "$1" ]; then $PROBE row "$1"; else echo "- | - | -"; fi
}
{
    echo "# Hardening: slow and idle clients, HTTP/2 rapid reset, smuggling, soak"
    echo
    echo "Command: \`benches/hardening.sh\` (CONNECTIONS=$CONNECTIONS ATTACK_S=$ATTACK_S PROBE_RATE=$PROBE_RATE RAPID_S=$RAPID_S"
    echo "SOAK_S=$SOAK_S SOAK_RATE=$SOAK_RATE SOAK_CHURN_S=$SOAK_CHURN_S SOAK_DOWN_S=$SOAK_DOWN_S),"
    echo "$(date -u +%Y-%m-%d), fulcrum at $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo '+changes'),"
    echo "binary \`${FULCRUM_BIN#"$ROOT/"}\`, $(nproc) cores, loopback, two nginx origins,"
    echo "default client limits. slowhttptest $(slowhttptest -h 2>&1 | awk '/version/ { print $NF; exit }'), Python h2 $("$PY" -c 'import h2; print(h2.__version__)')."
    echo
    echo "- Soft open-file limit 1024 under a hard limit of $HARD_NOFILE: $LIMITS"
    echo "- Hard limit 1024 too: $LIMITS_1024"
    echo
    echo "The probe client sends $PROBE_RATE requests a second, each on a new connection, while the"
    echo "attack holds its connections (from 3 s after the attack starts); success is a 200 within 5 s."
    echo "RSS before / peak during / 5 s after; open files and client connections are fulcrum's peak;"
    echo "\"backends up\" is the fewest seen during the run (sampled every second)."
    if [ "$SOAK_S" -gt 0 ]; then
        echo "The soak below ran at the same time, on its own fulcrum and origins ($SOAK_RATE requests a second)."
    fi
    echo
    echo "| run | probe: ok of sent | p50 ms | p99 ms | RSS MB | open files | client conns | backends up | health-check failures |"
    echo "|---|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
    echo
    if [ "${#PEER_NAMES[@]}" -gt 0 ]; then
        echo "The same attacks with the hard open-file limit at 1024, against fulcrum and its peers in"
        echo "this run (nginx: \`worker_connections 512\`, its default, \`client_header_timeout 10s\`,"
        echo "\`client_body_timeout 30s\`; HAProxy: \`maxconn\` derived from the limit, \`timeout http-request 10s\`,"
        echo "\`timeout client 60s\`). Each cell: the probe client's ok of sent (%) | p50 ms | p99 ms."
        echo
        header="| attack | fulcrum | p50 | p99 |"
        rule="|---|---|---|---|"
        for peer in "${PEER_NAMES[@]}"; do
            header="$header ${PEER_LABEL[$peer]} | p50 | p99 |"
            rule="$rule---|---|---|"
        done
        echo "$header"
        echo "$rule"
        for kind in "${KINDS[@]}"; do
            line="| ${LABEL[$kind]} | $(cell "$WORK/probe-${LABEL[$kind]}, hard limit 1024.json") |"
            for peer in "${PEER_NAMES[@]}"; do line="$line $(cell "$WORK/probe-$peer-$kind.json") |"; done
            echo "$line"
        done
        echo
    fi
    echo "HTTP/2 rapid reset, hard limit 1024: \`benches/hardening_probe.py rapid-reset 127.0.0.1 PORT --duration $RAPID_S\`"
    echo "(h2c with prior knowledge; HEADERS of \`GET /rapid-reset\` then RST_STREAM(CANCEL), 100 pairs a"
    echo "write, until the server ends the connection or 10,000 streams, then a new connection), with the"
    echo "probe client (HTTP/1.1) beside it. \"Reached the origins\": \`/rapid-reset\` lines in the origins'"
    echo "access log. CPU: the proxy's user + system time during the burst (and as a share of one core)."
    echo "The single-threaded Python client is the limit on the stream rate."
    echo
    echo "| proxy | streams sent | connections | streams written a connection, median / max | streams the server took before its GOAWAY (last stream id), median | connections ended by | responses received | reached the origins | proxy CPU | probe: ok of sent | p50 ms | p99 ms |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${RAPID_ROWS[@]}"
    echo
    echo "Attacks:"
    echo
    echo "- slowloris: \`$SLOWLORIS\`"
    echo "- slow body: \`$SLOWBODY\`"
    echo "- slow read: \`$SLOWREAD\` (a 1 MiB response)"
    echo "- header hold: \`benches/hardening_probe.py hold-headers 127.0.0.1 PORT --conns 300 --bytes 60000\`,"
    echo "  answers: \`$("$PY" -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["answers"]))' "$WORK/attack-header hold (300 × 60 KB).log" 2>/dev/null || tail -1 "$WORK/attack-header hold (300 × 60 KB).log")\`"
    echo
    echo "slowhttptest's own verdict at the end of each attack:"
    echo
    for f in "$WORK"/attack-*.log; do
        grep -aq 'service available' "$f" || continue
        n=$(basename "$f" .log)
        echo "- ${n#attack-}: $(grep -a 'service available' "$f" | tail -1 | sed 's/\x1b\[[0-9;]*m//g; s/^ *//')"
    done
    echo
    echo "Probes (default limits: head within 10 s, keep-alive idle 60 s, head 64 KiB, request line 8 KiB):"
    echo
    echo "| probe | answer | after s |"
    echo "|---|---|---|"
    "$PY" - "$WORK/probes.json" "$WORK/keepalive.json" <<'EOF'
import json, sys
for name, r in json.load(open(sys.argv[1])).items():
    print(f"| {name} | {r['answer']} | {r['after_s']} |")
k = json.load(open(sys.argv[2]))
print(f"| an idle keep-alive connection after `{k['first']}` | {k['then']} | {k['idle_closed_after_s']} |")
EOF
    echo
    echo "## smugglex"
    echo
    if [ "${#SMUGGLEX_RUNS[@]}" -eq 0 ]; then
        echo "Not run: smugglex $SMUGGLEX_VERSION is not installed (\`cargo install --locked smugglex --version $SMUGGLEX_VERSION\`"
        echo "failed or SMUGGLEX=0). The bad-input table (\`cargo test -p fulcrum --test bad_input\`) is the"
        echo "smuggling evidence."
    else
        echo "smugglex $(smugglex --version 2>/dev/null | awk '{ print $NF; exit }') against fulcrum with default limits (TLS: a self-signed"
        echo "certificate, hence \`-k\`); \`SMUGGLEX_CHECKS=$SMUGGLEX_CHECKS\`, every check smugglex knows"
        echo "(h2-downgrade speaks HTTP/2 by ALPN, so it runs over TLS only)."
        echo
        echo "| run | seconds | requests that reached the origins (health checks aside) | findings |"
        echo "|---|---|---|---|"
        for n in "${!SMUGGLEX_RUNS[@]}"; do
            IFS='|' read -r cmd secs reached <<<"${SMUGGLEX_RUNS[$n]}"
            echo "| \`$cmd\` | $secs | $reached | $("$PY" "$ROOT/benches/hardening_smugglex.py" count "$WORK/smugglex-$n.json") |"
        done
        echo
        for n in "${!SMUGGLEX_RUNS[@]}"; do
            "$PY" "$ROOT/benches/hardening_smugglex.py" findings "$WORK/smugglex-$n.json" "${SMUGGLEX_RUNS[$n]%%|*}"
        done
    fi
    echo
    if [ "$SOAK_S" -gt 0 ]; then
        echo "## Soak with backend churn"
        echo
        echo "A second fulcrum (default limits, soft open-file limit 1024) in front of two single-process"
        echo "nginx origins, $SOAK_RATE requests a second from the probe client (new connection each) for"
        echo "$SOAK_S s; every $SOAK_CHURN_S s one origin is killed with SIGKILL, alternately, and started"
        echo "again $SOAK_DOWN_S s later. Each row: the 30 s window ending at t; RSS and open files at t;"
        echo "the fewest backends up in the window; the probe client's requests started in it."
        echo
        "$PY" - "$WORK/soak/samples.txt" "$WORK/soak/probe.json" <<'EOF'
import json, sys
rows = [l.split(maxsplit=4) for l in open(sys.argv[1]) if l.strip()]
p = json.load(open(sys.argv[2]))
b = p.get("buckets_ok_failed", [])
print("| t s | RSS MB | open files | backends up | probe ok | probe failed | churn |")
print("|---|---|---|---|---|---|---|")
for i, (t, rss, fds, up, ev) in enumerate(rows):
    ok, failed = b[i - 1] if 0 < i <= len(b) else ("-", "-")
    print(f"| {t} | {int(rss) / 1024:.1f} | {fds} | {up} | {ok} | {failed} | {ev.strip().replace(' ', ', ') if ev.strip() != '-' else ''} |")
print()
print(f"Probe client over the soak: {p['ok']} of {p['sent']} answered 200 ({p['success_percent']} %), "
      f"{p['failed']} failed; p50 {p['p50_ms']} ms, p99 {p['p99_ms']} ms, max {p['max_ms']} ms. "
      f"RSS {int(rows[0][1]) / 1024:.1f} MB at the start, {int(rows[-1][1]) / 1024:.1f} MB at the end; "
      f"open files {rows[0][2]} and {rows[-1][2]}.")
EOF
        echo "fulcrum counted $(cat "$WORK/soak/retries") retries, $(cat "$WORK/soak/ejections") passive ejections and"
        echo "$(cat "$WORK/soak/health-failures") failed health checks, and logged $(grep -c ' ERROR ' "$WORK/soak/fulcrum.log" || true) ERROR and $(grep -c ' WARN ' "$WORK/soak/fulcrum.log" || true) WARN lines."
        echo
    fi
    echo "fulcrum's log over the attacks: $ERRORS ERROR lines, $WARNS WARN lines:"
    echo
    echo '```'
    grep -a ' ERROR \| WARN ' "$WORK/fulcrum.log" | cut -c1-200 | head -10
    echo '```'
} >"$RESULTS"
echo "wrote $RESULTS (logs in $WORK)" >&2

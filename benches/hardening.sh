#!/usr/bin/env bash
# Slow and idle clients against fulcrum, with a well-behaved client measured beside them.
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
#   - slowloris again with the hard open-file limit at 1024 as well (the connection cap then
#     falls to what 1024 files can hold), and the same against nginx and HAProxy under the same
#     limit, each with a 10 s request-head timeout like fulcrum's default (PEERS=0 skips them).
# For each: the probe client's success count and p99 (new connection per request, 5 s timeout),
# fulcrum's RSS before / peak during / after, its open files and client connections at peak,
# the fewest backends marked up during the run, and the health-check failures.
# At the end: the ERROR lines fulcrum logged (clients hanging up must not log any).
#
# Usage: benches/hardening.sh            (about 6 minutes)
# Environment:
#   FULCRUM_BIN=target/debug/fulcrum   the binary under test ($CARGO_TARGET_DIR honoured);
#                                      built with `cargo build -p fulcrum` unless SKIP_BUILD=1
#   CONNECTIONS=1100  ATTACK_S=30  PROBE_RATE=20   attack size and length, probe requests/s
#   BASE_PORT=18600   fulcrum BASE_PORT, admin +1, origins +2 and +3, nginx +4, HAProxy +5
#                     (127.0.0.1 only)
#   RESULTS=benches/results/hardening.md
#   ONLY=header-hold   only the quiet run and the header hold; replaces that row in RESULTS
# Requirements: slowhttptest, nginx, haproxy, curl, python3, prlimit
#   (Debian: apt-get install -y slowhttptest nginx-light haproxy curl python3 util-linux)
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
PROBE="python3 $ROOT/benches/hardening_probe.py"

PORT=$BASE_PORT
ADMIN=$((BASE_PORT + 1))
ORIGIN1=$((BASE_PORT + 2))
ORIGIN2=$((BASE_PORT + 3))
URL="http://127.0.0.1:$PORT/"
HARD_NOFILE="$(ulimit -Hn)"

for tool in slowhttptest nginx curl python3 prlimit; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    cargo build -p fulcrum
fi

WORK="$(mktemp -d /tmp/fulcrum-hardening.XXXXXX)"
FULCRUM_PID=""
cleanup() {
    [ -n "$FULCRUM_PID" ] && kill "$FULCRUM_PID" 2>/dev/null || true
    [ -f "$WORK/origin/nginx.pid" ] && kill "$(cat "$WORK/origin/nginx.pid")" 2>/dev/null || true
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
    access_log off;
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

# --- fulcrum: default limits ------------------------------------------------------------------
cat >"$WORK/fulcrum.toml" <<EOF
[server]
listen = ["127.0.0.1:$PORT"]
threads = 2

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

rss_kb() { awk '/^VmRSS/ { print $2 }' "/proc/$FULCRUM_PID/status"; }
metric() { # sum of a metric's samples
    curl -s "http://127.0.0.1:$ADMIN/metrics" | awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $2 } END { print s + 0 }'
}

# Every second while $1 runs: RSS, open files, client connections, backends up.
sample() { # $1: pid to watch, $2: output file
    : >"$2"
    while kill -0 "$1" 2>/dev/null; do
        echo "$(rss_kb) $(ls "/proc/$FULCRUM_PID/fd" | wc -l) $(metric fulcrum_connections_open) $(metric fulcrum_backend_up)" >>"$2"
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

SLOWLORIS="slowhttptest -c $CONNECTIONS -H -i 10 -r 200 -t GET -u $URL -x 24 -p 3 -l $ATTACK_S"
SLOWBODY="slowhttptest -c $CONNECTIONS -B -i 10 -r 200 -s 8192 -t POST -u $URL -x 10 -p 3 -l $ATTACK_S"
SLOWREAD="slowhttptest -c $CONNECTIONS -X -r 200 -w 512 -y 1024 -n 5 -z 32 -k 3 -u ${URL}big.bin -p 3 -l $ATTACK_S"
HOLD="$PROBE hold-headers 127.0.0.1 $PORT --conns 300 --bytes 60000"
PROBE_S=$((ATTACK_S - 5))

start_fulcrum "1024:$HARD_NOFILE"
if [ "${ONLY:-}" = header-hold ]; then
    measure "no attack" "sleep 13" 10
    measure "header hold (300 × 60 KB)" "$HOLD" 8
    awk -v row="${ROWS[1]}" '/^\| header hold/ { print row; next } { print }' "$RESULTS" >"$WORK/results.md"
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
LIMITS=$(grep -m1 'accepting up to' "$WORK/fulcrum.log" | sed 's/.*\] //')
stop_fulcrum

start_fulcrum 1024:1024
measure "slowloris (-H), hard limit 1024" "$SLOWLORIS" "$PROBE_S"
LIMITS_1024=$(grep 'accepting up to' "$WORK/fulcrum.log" | tail -1 | sed 's/.*\] //')
stop_fulcrum

# --- the same slowloris against nginx and HAProxy, hard limit 1024 -----------------------------
PEER_ROWS=()
peer_slowloris() { # $1 name, $2 port, $3... the command that runs the peer in the foreground
    local name="$1" port="$2"
    shift 2
    prlimit --nofile=1024:1024 "$@" >"$WORK/$name.log" 2>&1 &
    local pid=$!
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$port/" >/dev/null 2>&1 && break
        sleep 0.1
    done
    slowhttptest -c "$CONNECTIONS" -H -i 10 -r 200 -t GET -u "http://127.0.0.1:$port/" -x 24 -p 3 -l "$ATTACK_S" >"$WORK/attack-peer-$name.log" 2>&1 &
    local attack=$!
    sleep 3
    $PROBE client "http://127.0.0.1:$port/" --rate "$PROBE_RATE" --duration "$PROBE_S" >"$WORK/probe-peer-$name.json"
    wait "$attack" || true
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    PEER_ROWS+=("| $name | $($PROBE row "$WORK/probe-peer-$name.json") |")
    echo "$name under slowloris, hard limit 1024: $($PROBE row "$WORK/probe-peer-$name.json")" >&2
}
if [ "${PEERS:-1}" = 1 ]; then
    NGINX_PORT=$((BASE_PORT + 4))
    HAPROXY_PORT=$((BASE_PORT + 5))
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
    default_backend web
backend web
    balance roundrobin
    server s1 127.0.0.1:$ORIGIN1
    server s2 127.0.0.1:$ORIGIN2
EOF
    peer_slowloris "nginx $(nginx -v 2>&1 | sed 's|.*/||')" "$NGINX_PORT" nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx"
    peer_slowloris "HAProxy $(haproxy -v | awk 'NR == 1 { print $3 }')" "$HAPROXY_PORT" haproxy -f "$WORK/haproxy.cfg" -db
fi

ERRORS=$(grep -c ' ERROR ' "$WORK/fulcrum.log" || true)
WARNS=$(grep -c ' WARN ' "$WORK/fulcrum.log" || true)

# --- report -----------------------------------------------------------------------------------
{
    echo "# Hardening: slow and idle clients"
    echo
    echo "Command: \`benches/hardening.sh\` (CONNECTIONS=$CONNECTIONS ATTACK_S=$ATTACK_S PROBE_RATE=$PROBE_RATE),"
    echo "$(date -u +%Y-%m-%d), fulcrum at $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo '+changes'),"
    echo "binary \`${FULCRUM_BIN#"$ROOT/"}\`, $(nproc) cores, loopback, two nginx origins,"
    echo "default client limits. slowhttptest $(slowhttptest -h 2>&1 | awk '/version/ { print $NF; exit }')."
    echo
    echo "- Soft open-file limit 1024 under a hard limit of $HARD_NOFILE: $LIMITS"
    echo "- Hard limit 1024 too: $LIMITS_1024"
    echo
    echo "The probe client sends $PROBE_RATE requests a second, each on a new connection, while the"
    echo "attack holds its connections (from 3 s after the attack starts); success is a 200 within 5 s."
    echo "RSS before / peak during / 5 s after; open files and client connections are fulcrum's peak;"
    echo "\"backends up\" is the fewest seen during the run (sampled every second)."
    echo
    echo "| run | probe: ok of sent | p50 ms | p99 ms | RSS MB | open files | client conns | backends up | health-check failures |"
    echo "|---|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
    echo
    if [ "${#PEER_ROWS[@]}" -gt 0 ]; then
        echo "The same slowloris with the hard open-file limit at 1024, against fulcrum and its peers in"
        echo "this run (nginx: \`worker_connections 512\`, its default, and \`client_header_timeout 10s\`;"
        echo "HAProxy: \`maxconn\` derived from the limit, \`timeout http-request 10s\`):"
        echo
        echo "| proxy | probe: ok of sent | p50 ms | p99 ms |"
        echo "|---|---|---|---|"
        echo "| fulcrum | $($PROBE row "$WORK/probe-slowloris (-H), hard limit 1024.json") |"
        printf '%s\n' "${PEER_ROWS[@]}"
        echo
    fi
    echo "Attacks:"
    echo
    echo "- slowloris: \`$SLOWLORIS\`"
    echo "- slow body: \`$SLOWBODY\`"
    echo "- slow read: \`$SLOWREAD\` (a 1 MiB response)"
    echo "- header hold: \`benches/hardening_probe.py hold-headers 127.0.0.1 PORT --conns 300 --bytes 60000\`,"
    echo "  answers: \`$(python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["answers"]))' "$WORK/attack-header hold (300 × 60 KB).log" 2>/dev/null || tail -1 "$WORK/attack-header hold (300 × 60 KB).log")\`"
    echo
    echo "slowhttptest's own verdict at the end of each attack:"
    echo
    for f in "$WORK"/attack-slow*.log; do
        n=$(basename "$f" .log)
        echo "- ${n#attack-}: $(grep -a 'service available' "$f" | tail -1 | sed 's/\x1b\[[0-9;]*m//g; s/^ *//')"
    done
    echo
    echo "Probes (default limits: head within 10 s, keep-alive idle 60 s, head 64 KiB, request line 8 KiB):"
    echo
    echo "| probe | answer | after s |"
    echo "|---|---|---|"
    python3 - "$WORK/probes.json" "$WORK/keepalive.json" <<'EOF'
import json, sys
for name, r in json.load(open(sys.argv[1])).items():
    print(f"| {name} | {r['answer']} | {r['after_s']} |")
k = json.load(open(sys.argv[2]))
print(f"| an idle keep-alive connection after `{k['first']}` | {k['then']} | {k['idle_closed_after_s']} |")
EOF
    echo
    echo "fulcrum's log over the whole run: $ERRORS ERROR lines, $WARNS WARN lines:"
    echo
    echo '```'
    grep -a ' ERROR \| WARN ' "$WORK/fulcrum.log" | cut -c1-200 | head -10
    echo '```'
} >"$RESULTS"
echo "wrote $RESULTS (logs in $WORK)" >&2

#!/usr/bin/env bash
# Memory per idle keep-alive client connection: fulcrum beside a bare pingora proxy, nginx and
# HAProxy, one worker each (layout and configs of peer-compare.sh).
#
# For each proxy: start it, warm it with a few connections, read its RSS (VmRSS summed over
# its processes), then open CONNS client connections that each complete one `GET /` over
# HTTP/1.1 and stay open (benches/idle_conns.py), so the proxy holds CONNS real idle
# keep-alive sessions; after SETTLE seconds read the RSS again and count the connections the
# proxy has established on its port (ss). KiB per connection = RSS difference / connections
# held. RSS does not depend on other load on the machine.
#
# Limits raised in the rendered copies of benches/peers/* (the templates stay as they are):
# nginx worker_connections and worker_rlimit_nofile, HAProxy maxconn (with `no strict-limits`)
# and keep-alive timeouts (600 s); for fulcrum, server.max_connections and server.keepalive_timeout_ms (600 s) when
# this build knows those keys (`fulcrum check` decides; the result says which). Without them
# fulcrum (pingora) keeps an idle HTTP/1.1 connection open with no timeout. Every
# connection is opened, measured and closed within about a minute in any case.
#
# Layout: the proxy pinned to core 0; the client and the nginx origin pinned to core 1.
#
# Usage: benches/idle-memory.sh
# Environment:
#   CONNS=10000          idle client connections (the open-files limit must allow CONNS + 200)
#   PARALLEL=64          connections being opened at once
#   SETTLE=3             seconds between the last connection and the second RSS reading
#   PROXIES="fulcrum bare-pingora nginx haproxy"
#   FULCRUM_BIN=FILE     measure this fulcrum binary (e.g. scripts/build-pgo.sh's) instead of
#                        building this tree's release binary
#   SKIP_BUILD=1         use the existing release binaries as they are
#   RESULTS_DIR=benches/results   where idle-memory.md / idle-memory.csv are written
#
# Requirements: nginx, haproxy, taskset, curl, ss, python3
#   (Debian: apt-get install -y nginx-light haproxy util-linux curl iproute2 python3)
set -euo pipefail
BENCH=idle-memory
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

CONNS="${CONNS:-10000}"
PARALLEL="${PARALLEL:-64}"
SETTLE="${SETTLE:-3}"
PROXIES="${PROXIES:-fulcrum bare-pingora nginx haproxy}"
RESULTS_DIR="${RESULTS_DIR:-$ROOT/benches/results}"
WARM_CONNS=64

need_tools nginx haproxy taskset curl ss python3
# shellcheck disable=SC2086
check_proxies $PROXIES
ulimit -n "$(ulimit -Hn)"
(($(ulimit -n) >= CONNS + 200)) || die "open files limit $(ulimit -n) is below CONNS + 200 = $((CONNS + 200)); lower CONNS or raise the hard limit"

builds=()
for p in $PROXIES; do [[ "$p" == fulcrum || "$p" == bare-pingora ]] && builds+=("$p"); done
((${#builds[@]} == 0)) || build_release "${builds[@]}"

FULCRUM_LIMITS="none (this build has no server.max_connections / keepalive_timeout_ms)"
tune_config() { # NAME FILE
    local name="$1" file="$2" limit=$((CONNS + 1000))
    case "$name" in
    origin) ;;
    nginx)
        sed -i "s|^worker_processes 1;|&\nworker_rlimit_nofile $(ulimit -n);|; s|worker_connections [0-9]*;|worker_connections $limit;|" "$file"
        ;;
    haproxy)
        # HAProxy wants 2 descriptors per connection (client and server side) and refuses to
        # start when the open-files limit is below that; idle clients need only one each.
        sed -i "s|maxconn [0-9]*|maxconn $limit\n    no strict-limits|; s|timeout client 60s|timeout client 600s|; s|timeout http-keep-alive 60s|timeout http-keep-alive 600s|" "$file"
        ;;
    fulcrum)
        cp "$file" "$file.plain"
        sed -i "s|^threads = 1\$|&\nmax_connections = $limit\nkeepalive_timeout_ms = 600000|" "$file"
        if "$FULCRUM_BIN" check -c "$file" >"$WORK/fulcrum-check.txt" 2>&1; then
            FULCRUM_LIMITS="server.max_connections = $limit, server.keepalive_timeout_ms = 600000"
        else
            mv "$file.plain" "$file"
        fi
        ;;
    esac
}

# open_idle PORT N: run the client on the client core as a coprocess; waits for "ready"
open_idle() {
    coproc IDLE { exec taskset -c "$CLIENT_CORE" python3 "$ROOT/benches/idle_conns.py" 127.0.0.1 "$1" "$2" "$PARALLEL" 2>"$WORK/idle.stderr"; }
    IDLE_PID=$IDLE_PID
    PIDS_TO_STOP+=("$IDLE_PID")
    IDLE_IN=${IDLE[1]}
    IDLE_OUT=${IDLE[0]}
    read -r word OPENED FAILED <&"$IDLE_OUT" || die "client failed: $(cat "$WORK/idle.stderr")"
    [[ "$word" == ready ]] || die "client said '$word'"
}
# close_idle: let the client report how many connections were still open, and exit
close_idle() {
    echo >&"$IDLE_IN"
    read -r word ALIVE <&"$IDLE_OUT" || ALIVE="?"
    wait "$IDLE_PID" 2>/dev/null || true
}

established() { # PORT: connections the proxy has established on its listening port
    ss -Htn state established "( sport = :$1 )" | wc -l
}

RAW="$WORK/raw.csv"
echo "proxy,rss_before_kib,rss_after_kib,opened,failed,established,alive_at_end,kib_per_conn,open_s,held_s" >"$RAW"
start_origin
for p in $PROXIES; do
    port="$(free_port)"
    start_proxy "$p" "$port"
    open_idle "$port" "$WARM_CONNS"
    close_idle
    sleep 1
    before="$(rss_kib "$PROXY_PID")"
    t0=$SECONDS
    open_idle "$port" "$CONNS"
    t_open=$((SECONDS - t0))
    sleep "$SETTLE"
    after="$(rss_kib "$PROXY_PID")"
    held="$(established "$port")"
    close_idle
    t_held=$((SECONDS - t0))
    ((OPENED > 0)) || die "$p: no connection completed its request ($(cat "$WORK/idle.stderr"))"
    stop_proxy
    per="$(awk -v a="$after" -v b="$before" -v n="$OPENED" 'BEGIN { printf "%.2f", (a - b) / n }')"
    echo "$p,$before,$after,$OPENED,$FAILED,$held,$ALIVE,$per,$t_open,$t_held" >>"$RAW"
    log "$p: RSS $before -> $after KiB with $OPENED connections open ($FAILED failed, $held established, $ALIVE alive at the end; opened in $t_open s, held $t_held s): $per KiB per connection"
done

mkdir -p "$RESULTS_DIR"
cp "$RAW" "$RESULTS_DIR/idle-memory.csv"
col() { awk -F, -v p="$1" -v c="$2" '$1 == p { print $c }' "$RAW"; }
cmd="${FULCRUM_BIN_PREFIX}CONNS=$CONNS PARALLEL=$PARALLEL SETTLE=$SETTLE PROXIES=\"$PROXIES\" benches/idle-memory.sh"
{
    result_header "Memory per idle keep-alive connection: fulcrum vs bare pingora, nginx, HAProxy" "$cmd"
    echo "- Method: each proxy (release builds, one worker; configs from benches/peers/) is warmed with $WARM_CONNS connections, then its RSS (VmRSS summed over its processes) is read;" \
        "$CONNS client connections each complete one \`GET /\` over HTTP/1.1 and stay open (benches/idle_conns.py, $PARALLEL opened at once);" \
        "${SETTLE} s later the RSS is read again. KiB/conn = RSS difference / connections opened."
    echo "- Limits raised for the run: nginx worker_connections $((CONNS + 1000)) and worker_rlimit_nofile $(ulimit -n); HAProxy maxconn $((CONNS + 1000)) with \`no strict-limits\` (it asks for 2 descriptors per connection, more than the limit of $(ulimit -n); idle clients use one), client and keep-alive timeouts 600 s;" \
        "fulcrum: $FULCRUM_LIMITS. bare pingora and fulcrum (pingora) keep idle HTTP/1.1 connections without a timeout unless configured; nginx's keepalive_timeout is 300 s. Each set of connections was held at most $(awk -F, 'NR > 1 && $10 > m { m = $10 } END { print m + 0 }' "$RAW") s, well within every timeout."
    echo "- Established = connections the proxy had established on its port at the second reading (\`ss\`); alive = connections still open when the client closed them."
    echo "- Layout: proxy pinned to core $PROXY_CORE, client and nginx origin to core $CLIENT_CORE."
    echo
    echo "| proxy | RSS before | RSS with $CONNS idle conns | KiB / conn | vs nginx | vs HAProxy | opened (failed) | established | alive at end |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    ng="$(col nginx 8)"
    hp="$(col haproxy 8)"
    for p in $PROXIES; do
        per="$(col "$p" 8)"
        vs_ng="n/a"; [[ -n "$ng" ]] && vs_ng="$(awk -v a="$per" -v b="$ng" 'BEGIN { printf "%.2f×", a / b }')"
        vs_hp="n/a"; [[ -n "$hp" ]] && vs_hp="$(awk -v a="$per" -v b="$hp" 'BEGIN { printf "%.2f×", a / b }')"
        echo "| $(proxy_label "$p") | $(col "$p" 2) KiB | $(col "$p" 3) KiB | $per | $vs_ng | $vs_hp | $(col "$p" 4) ($(col "$p" 5)) | $(col "$p" 6) | $(col "$p" 7) |"
    done
    echo
    echo "Raw numbers: \`idle-memory.csv\` next to this file."
} | tee "$RESULTS_DIR/idle-memory.md"

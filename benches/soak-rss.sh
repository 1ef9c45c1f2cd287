#!/usr/bin/env bash
# Soak: fulcrum's resident memory under steady keep-alive load.
#
# A release fulcrum (one worker, benches/peers/fulcrum.toml) proxies `GET /` to a one-worker
# nginx origin under `wrk -t1 -c$CONNECTIONS` for DURATION seconds; its RSS (VmRSS, all
# threads) is sampled every INTERVAL seconds. The result compares the mean RSS of the first
# minute with that of the last minute: a leak or unbounded growth shows as a difference, and
# "flat" means within 5 %. RSS does not depend on other load on the machine (requests/second
# does, and is reported only for context).
#
# Layout as in peer-compare.sh: fulcrum pinned to core 0, wrk and the origin to core 1.
#
# Usage: benches/soak-rss.sh
# Environment:
#   DURATION=600        seconds of load (at least 130, so the first and last minutes are apart)
#   INTERVAL=10         seconds between RSS samples
#   CONNECTIONS=32      wrk keep-alive connections
#   FULCRUM_BIN=FILE    measure this fulcrum binary (e.g. scripts/build-pgo.sh's) instead of
#                       building this tree's release binary
#   SKIP_BUILD=1        use the existing release binary as it is
#   RESULTS_DIR=benches/results   where soak-rss.md / soak-rss.csv are written
#
# Requirements: wrk, nginx, taskset, curl  (Debian: apt-get install -y wrk nginx-light util-linux curl)
set -euo pipefail
BENCH=soak-rss
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

DURATION="${DURATION:-600}"
INTERVAL="${INTERVAL:-10}"
CONNECTIONS="${CONNECTIONS:-32}"
RESULTS_DIR="${RESULTS_DIR:-$ROOT/benches/results}"
((DURATION >= 130)) || die "DURATION must be at least 130 s (first and last minute apart)"

need_tools wrk nginx taskset curl
build_release fulcrum
start_origin
PORT="$(free_port)"
start_proxy fulcrum "$PORT"
log "fulcrum on 127.0.0.1:$PORT (pid $PROXY_PID), RSS $(rss_kib "$PROXY_PID") KiB before load"

SAMPLES="$WORK/samples.csv"
echo "t_s,rss_kib" >"$SAMPLES"
echo "0,$(rss_kib "$PROXY_PID")" >>"$SAMPLES"
taskset -c "$CLIENT_CORE" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "http://127.0.0.1:$PORT/" >"$WORK/wrk.txt" &
WRK_PID=$!
PIDS_TO_STOP+=("$WRK_PID")
start="$(date +%s.%N)"
for ((i = 1; i * INTERVAL <= DURATION; i++)); do
    # Sleep to the sample's instant on the start's clock, so samples do not drift.
    sleep "$(awk -v s="$start" -v t=$((i * INTERVAL)) -v now="$(date +%s.%N)" 'BEGIN { d = s + t - now; print (d > 0 ? d : 0) }')"
    kill -0 "$PROXY_PID" 2>/dev/null || die "fulcrum exited during the soak (stderr: $WORK/fulcrum/stderr)"
    rss="$(rss_kib "$PROXY_PID")"
    echo "$((i * INTERVAL)),$rss" >>"$SAMPLES"
    if ((i % 6 == 0)); then log "t=$((i * INTERVAL))s RSS $rss KiB"; fi
done
wait "$WRK_PID" || die "wrk failed: $(cat "$WORK/wrk.txt")"
echo "after,$(rss_kib "$PROXY_PID")" >>"$SAMPLES"
stop_proxy

requests="$(awk '/requests in/ { print $1 }' "$WORK/wrk.txt")"
rps="$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$WORK/wrk.txt")"
errs="$(awk '/Non-2xx or 3xx responses:/ { n += $NF } /Socket errors:/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' "$WORK/wrk.txt")"
# first minute: samples at 10..60 s; last minute: the samples of the last 60 s
read -r first last ratio flat peak < <(awk -F, -v d="$DURATION" '
    NR > 1 && $1 != "after" && $1 > 0 {
        if ($1 <= 60) { f += $2; nf++ }
        if ($1 > d - 60) { l += $2; nl++ }
        if ($2 > peak) peak = $2
    }
    END { f /= nf; l /= nl; r = l / f; printf "%.0f %.0f %.4f %s %d\n", f, l, r, (r <= 1.05 && r >= 0.95) ? "yes" : "no", peak }' "$SAMPLES")

mkdir -p "$RESULTS_DIR"
cp "$SAMPLES" "$RESULTS_DIR/soak-rss.csv"
{
    result_header "Soak: fulcrum's RSS under ${DURATION} s of steady keep-alive load" \
        "${FULCRUM_BIN_PREFIX}DURATION=$DURATION INTERVAL=$INTERVAL CONNECTIONS=$CONNECTIONS benches/soak-rss.sh"
    echo "- Load: \`wrk -t1 -c$CONNECTIONS -d${DURATION}s\`, keep-alive \`GET /\` answered \"ok\\n\" by a one-worker nginx origin;" \
        "fulcrum (release, benches/peers/fulcrum.toml: one worker thread, one least-connections pool) pinned to core $PROXY_CORE, wrk and the origin to core $CLIENT_CORE."
    echo "- RSS: VmRSS of the fulcrum process (all threads), sampled every ${INTERVAL} s; t = 0 is just before the load starts."
    echo "  First minute = mean of the samples at ${INTERVAL}..60 s, last minute = mean of the samples in the last 60 s."
    echo
    echo "| | value |"
    echo "|---|---:|"
    echo "| requests served | $requests ($rps req/s, errors $errs) |"
    echo "| RSS before load | $(awk -F, 'NR == 2 { print $2 }' "$SAMPLES") KiB |"
    echo "| RSS, first minute (mean) | $first KiB |"
    echo "| RSS, last minute (mean) | $last KiB |"
    echo "| RSS, peak sample | $peak KiB |"
    echo "| last / first minute | $(awk -v r="$ratio" 'BEGIN { printf "%.3f× (%+.1f %%)", r, 100 * (r - 1) }') |"
    echo "| flat within 5 % | **$flat** |"
    echo
    echo "Samples (t s: RSS KiB): $(awk -F, 'NR > 1 { printf "%s%s: %s", (NR > 2 ? ", " : ""), $1, $2 }' "$SAMPLES")"
    echo
    echo "Raw samples: \`soak-rss.csv\` next to this file."
} | tee "$RESULTS_DIR/soak-rss.md"

#!/usr/bin/env bash
# Latency at a fixed offered rate, open loop: fulcrum beside a bare pingora proxy, nginx and
# HAProxy, one worker each (layout and configs of peer-compare.sh).
#
# The load is the lab's open-loop generator (crates/lab/src/loadgen.rs, run by
# crates/lab/examples/openloop.rs on one thread): Poisson arrivals at RATE requests/second,
# each `GET` sent at its scheduled instant whatever happened to earlier ones, its latency
# measured from that instant, so a proxy that stalls is charged for every request that waited
# (no coordinated omission). The same seed gives every proxy the same arrival times.
#
# First the generator is pointed at the nginx origin directly (no proxy): that row is the
# floor of the measurement, and proves the generator and origin sustain RATE on their core;
# the script stops if they do not (lower RATE). Then each proxy is measured.
#
# Layout (needs at least 2 cores):
#   core 0: the proxy under test, one worker thread / process
#   core 1: the generator (one thread) and the nginx origin
# Latencies depend on everything else the machine runs: the "other CPU %" column is the
# machine's busy time not spent by the proxy, the origin or the generator, as % of one core.
# Take final numbers on an otherwise idle machine.
#
# Usage: benches/open-loop.sh
# Environment:
#   RATE=20000          offered requests/second
#   DURATION=30         measured seconds per run (after WARMUP seconds of the same load)
#   WARMUP=3            seconds of load before the measured part, excluded from the figures
#   REPEAT=1            runs per proxy (proxies interleaved per round; medians shown)
#   PROXIES="fulcrum bare-pingora nginx haproxy"
#   SEED=1              arrival-time seed
#   CONNECTIONS=        at most this many generator connections (requests beyond wait for one,
#                       their latency counted from their scheduled send, as in wrk2); unset: a
#                       new connection for every request that finds none idle
#   FULCRUM_BIN=FILE    measure this fulcrum binary (e.g. scripts/build-pgo.sh's) instead of
#                       building this tree's release binary
#   SKIP_BUILD=1        use the existing release binaries as they are
#   RESULTS_DIR=benches/results   where open-loop.md / open-loop.csv are written
#
# Requirements: nginx, haproxy, taskset, curl (Debian: apt-get install -y nginx-light haproxy util-linux curl)
set -euo pipefail
BENCH=open-loop
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

RATE="${RATE:-20000}"
DURATION="${DURATION:-30}"
WARMUP="${WARMUP:-3}"
REPEAT="${REPEAT:-1}"
PROXIES="${PROXIES:-fulcrum bare-pingora nginx haproxy}"
SEED="${SEED:-1}"
CONNECTIONS="${CONNECTIONS:-}"
RESULTS_DIR="${RESULTS_DIR:-$ROOT/benches/results}"

need_tools nginx haproxy taskset curl
# shellcheck disable=SC2086
check_proxies $PROXIES
builds=(openloop)
for p in $PROXIES; do [[ "$p" == fulcrum || "$p" == bare-pingora ]] && builds+=("$p"); done
build_release "${builds[@]}"
ulimit -n "$(ulimit -Hn)" # a stalled proxy makes the generator open a connection per waiting request

RAW="$WORK/raw.csv"
echo "target,run,offered_rps,sent,measured,achieved_rps,errors,p50_us,p99_us,p999_us,max_us,proxy_cpu_us_per_req,proxy_core_pct,generator_core_pct,other_cpu_pct,proxy_core_stolen_ms" >"$RAW"

# measure NAME RUN PORT [PROXY_PID]: one generator run against 127.0.0.1:PORT
measure() {
    local name="$1" run="$2" port="$3" ppid="${4:-}" pids=() opids before after obefore oafter mbefore mafter sbefore safter out line gen_us
    [[ -n "$ppid" ]] && mapfile -t pids < <(tree_pids "$ppid")
    mapfile -t opids < <(tree_pids "$ORIGIN_PID")
    before="$(cpu_ticks "${pids[@]}")"
    obefore="$(cpu_ticks "${opids[@]}")"
    mbefore="$(machine_ticks)"
    sbefore="$(steal_ticks "$PROXY_CORE")"
    # `times` reports the CPU time of the generator (the subshell's only child).
    out="$(${CONNECTIONS:+env OPENLOOP_CONNECTIONS=$CONNECTIONS} taskset -c "$CLIENT_CORE" "$OPENLOOP_BIN" "127.0.0.1:$port" "$RATE" "$((WARMUP + DURATION))" "$WARMUP" "$SEED"; times)"
    mafter="$(machine_ticks)"
    safter="$(steal_ticks "$PROXY_CORE")"
    after="$(cpu_ticks "${pids[@]}")"
    oafter="$(cpu_ticks "${opids[@]}")"
    line="$(grep '^offered_rps=' <<<"$out")" || die "$name: the generator printed no result:
$out"
    gen_us=$(($(mins_to_us "$(tail -1 <<<"$out" | awk '{ print $1 }')") + $(mins_to_us "$(tail -1 <<<"$out" | awk '{ print $2 }')")))
    # key=value pairs -> the CSV columns, then CPU shares over the whole run (warm-up included)
    awk -v name="$name" -v run="$run" -v t=$((after - before)) -v o=$((oafter - obefore)) -v m=$((mafter - mbefore)) \
         -v hz="$CLK_TCK" -v gen="$gen_us" -v stolen=$((safter - sbefore)) -v wall="$((WARMUP + DURATION))" -v proxied="$([[ -n "$ppid" ]] && echo 1 || echo 0)" '
        { for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } }
        END {
            us = t * 1e6 / hz
            per = proxied ? sprintf("%.2f", us / v["sent"]) : ""
            core = proxied ? sprintf("%.1f", 100 * us / (wall * 1e6)) : ""
            other = 100 * ((m - t - o) * 1e6 / hz - gen) / (wall * 1e6)
            printf "%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%.1f,%.1f,%.0f\n", name, run, v["offered_rps"], v["sent"],
                v["measured"], v["achieved_rps"], v["errors"], v["p50_us"], v["p99_us"], v["p999_us"], v["max_us"],
                per, core, 100 * gen / (wall * 1e6), other < 0 ? 0 : other, stolen * 1000 / hz
        }' <<<"$line" >>"$RAW"
    log "$name run $run: $(tail -1 "$RAW" | awk -F, '{ printf "achieved %s req/s, p50 %s us, p99 %s us, p99.9 %s us, errors %s, proxy CPU %s us/req, generator core %s%%, other CPU %s%%, %s ms stolen from the proxy core", $6, $8, $9, $10, $7, $12, $14, $15, $16 }')"
}

start_origin
# A generator that cannot keep up falls further behind every second (and opens a connection
# per waiting request), so check briefly before the full-length floor run.
log "checking that the generator sustains $RATE req/s against the origin alone"
for check in short full; do
    if [[ "$check" == short ]]; then
        WARMUP=1 DURATION=3 measure origin-check 1 "$BACKEND_PORT"
    else
        measure origin-direct 1 "$BACKEND_PORT"
    fi
    achieved="$(tail -1 "$RAW" | cut -d, -f6)"
    errors="$(tail -1 "$RAW" | cut -d, -f7)"
    awk -v a="$achieved" -v r="$RATE" -v e="$errors" 'BEGIN { exit !(a >= 0.97 * r && e == 0) }' ||
        die "the generator reached only $achieved of $RATE req/s ($errors errors) against the origin alone: lower RATE, or quieten the machine (other CPU $(tail -1 "$RAW" | cut -d, -f15) % of a core)"
    [[ "$check" == short ]] && sed -i '$ d' "$RAW"
done

for run in $(seq "$REPEAT"); do
    for p in $PROXIES; do
        port="$(free_port)"
        start_proxy "$p" "$port"
        measure "$p" "$run" "$port" "$PROXY_PID"
        stop_proxy
    done
done

# ---------------------------------------------------------------- report
mkdir -p "$RESULTS_DIR"
cp "$RAW" "$RESULTS_DIR/open-loop.csv"
median() { # TARGET COLUMN
    awk -F, -v p="$1" -v c="$2" 'NR > 1 && $1 == p && $c != "" { print $c }' "$RAW" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR == 0) print ""; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
ratio() { # A B
    [[ -n "$1" && -n "$2" ]] && awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f×", a / b; else print "n/a" }' || echo "n/a"
}
cmd="${FULCRUM_BIN_PREFIX}RATE=$RATE DURATION=$DURATION WARMUP=$WARMUP REPEAT=$REPEAT SEED=$SEED${CONNECTIONS:+ CONNECTIONS=$CONNECTIONS} PROXIES=\"$PROXIES\" benches/open-loop.sh"
NG99="$(median nginx 9)"
HP99="$(median haproxy 9)"
{
    result_header "Open-loop latency at $RATE req/s: fulcrum vs bare pingora, nginx, HAProxy" "$cmd"
    echo "- Load: the lab's open-loop generator (crates/lab/src/loadgen.rs through crates/lab/examples/openloop.rs, one thread):" \
        "Poisson arrivals at $RATE req/s, each keep-alive \`GET\` sent at its scheduled instant and its latency measured from that instant;" \
        "$([[ -n "$CONNECTIONS" ]] && echo "at most $CONNECTIONS connections (a request that finds them all busy waits for one, from its scheduled instant);" || echo "a new connection for every request that finds none idle;")" \
        "${WARMUP} s of load, then ${DURATION} s measured; the same arrival times (seed $SEED) for every target."
    echo "- Layout: the proxy pinned to core $PROXY_CORE with one worker thread/process; the generator and the one-worker nginx origin pinned to core $CLIENT_CORE." \
        "The first row sends to the origin directly: the generator's and origin's own share of every latency, and the proof that they sustain the rate."
    echo "- Achieved = requests measured / time from the end of warm-up to the last answer. Errors = non-2xx answers, failed or unanswered requests."
    echo "- Proxy CPU µs/req = the proxy's utime+stime over the run / requests sent; proxy core % = that CPU time / wall time."
    echo "  Other CPU % = the machine's busy time minus proxy, origin and generator, as % of one core: kernel loopback work plus anything else the machine ran."
    echo "  Stolen ms = time the hypervisor kept the proxy's core from running while it wanted to (steal time in /proc/stat) during the run: a stall every request under way waits out."
    echo "  **Latencies depend on that load: numbers taken with other CPU well above ~10 % are a smoke test, not a result; take final numbers on a quiet machine** (\`$cmd\`)."
    echo
    echo "| target | achieved req/s | p50 | p99 | p99.9 | max | errors | p99 vs nginx | p99 vs HAProxy | proxy CPU µs/req | proxy core % | generator core % | other CPU % | stolen ms |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for p in origin-direct $PROXIES; do
        label="$([[ "$p" == origin-direct ]] && echo "no proxy (origin direct)" || proxy_label "$p")"
        p99="$(median "$p" 9)"
        errs="$(awk -F, -v p="$p" 'NR > 1 && $1 == p { n += $7 } END { print n + 0 }' "$RAW")"
        vsn="$([[ "$p" == origin-direct ]] && echo "" || ratio "$p99" "$NG99")"
        vsh="$([[ "$p" == origin-direct ]] && echo "" || ratio "$p99" "$HP99")"
        cpu="$(median "$p" 12)"
        core="$(median "$p" 13)"
        echo "| $label | $(median "$p" 6) | $(median "$p" 8) µs | $p99 µs | $(median "$p" 10) µs | $(median "$p" 11) µs | $errs | $vsn | $vsh | ${cpu:-} | ${core:+$core %} | $(median "$p" 14) % | $(median "$p" 15) % | $(median "$p" 16) |"
    done
    echo
    echo "Every run (medians above), in the order they ran:"
    echo
    echo "| target | run | p50 | p99 | p99.9 | max | errors | proxy CPU µs/req | stolen ms |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    awk -F, 'NR > 1 { printf "| %s | %s | %s µs | %s µs | %s µs | %s µs | %s | %s | %s |\n", $1, $2, $8, $9, $10, $11, $7, $12, $16 }' "$RAW"
    echo
    echo "Raw per-run numbers: \`open-loop.csv\` next to this file."
} | tee "$RESULTS_DIR/open-loop.md"

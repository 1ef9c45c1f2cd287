#!/usr/bin/env bash
# Replace a running fulcrum with a new binary without refusing a connection or failing a request.
#
# Usage: scripts/upgrade.sh OLD_PID CONFIG [NEW_BINARY]
#   OLD_PID     the running fulcrum's process id
#   CONFIG      its configuration file (server.upgrade_sock must be the same for both processes)
#   NEW_BINARY  the binary to start (default: fulcrum on PATH)
#
# The sequence:
#   1. start NEW_BINARY run --upgrade -c CONFIG; it listens on server.upgrade_sock;
#   2. wait until that socket exists: the new process is ready to take the listeners;
#   3. send SIGQUIT to the old process: it sends its listening sockets (data plane and admin)
#      through the socket, keeps accepting beside the new process for 2 s while closing its
#      keep-alive connections, stops accepting, lets what is in flight finish (at most
#      server.grace_period_s) and exits 0;
#   4. wait for the old process to exit and report.
# Environment: FULCRUM_UPGRADE_TIMEOUT_S (default 60) bounds step 4 beyond the grace period;
# FULCRUM_UPGRADE_LOG (default /dev/null) receives the new process's output.
set -euo pipefail

if [[ $# -lt 2 || $# -gt 3 ]]; then
  sed -n '4,8p' "$0" >&2
  exit 64
fi
old_pid="$1"
config="$2"
bin="${3:-fulcrum}"
log="${FULCRUM_UPGRADE_LOG:-/dev/null}"
wait_s="${FULCRUM_UPGRADE_TIMEOUT_S:-60}"

fail() { echo "upgrade: $*" >&2; exit 1; }

kill -0 "$old_pid" 2>/dev/null || fail "no running process $old_pid"
# Validate first: an invalid file would only fail after the old process is told to leave.
"$bin" check -c "$config" >/dev/null || fail "$config is invalid (see above); nothing changed"

# The socket's path, as fulcrum reads it (the default when the key is absent).
sock="$(sed -n 's/^[[:space:]]*upgrade_sock[[:space:]]*=[[:space:]]*"\(.*\)".*/\1/p' "$config" | head -n1)"
sock="${sock:-/run/fulcrum/upgrade.sock}"
# A socket left by an interrupted upgrade would look like a ready process.
rm -f -- "$sock"

"$bin" run --upgrade -c "$config" >>"$log" 2>&1 &
new_pid=$!
echo "upgrade: started $bin (pid $new_pid), waiting for it on $sock"

# pingora's receiving side waits about 6 s for the sockets before it gives up.
for _ in $(seq 100); do
  [[ -S "$sock" ]] && break
  kill -0 "$new_pid" 2>/dev/null || fail "the new process exited before it was ready (see $log)"
  sleep 0.05
done
[[ -S "$sock" ]] || { kill "$new_pid" 2>/dev/null; fail "the new process did not listen on $sock within 5 s"; }

kill -QUIT "$old_pid"
echo "upgrade: SIGQUIT sent to $old_pid; waiting for it to finish what is in flight"
start=$SECONDS
while kill -0 "$old_pid" 2>/dev/null; do
  if (( SECONDS - start > wait_s )); then
    fail "the old process $old_pid is still running after ${wait_s} s"
  fi
  if ! kill -0 "$new_pid" 2>/dev/null; then
    fail "the new process $new_pid exited; the old one $old_pid keeps serving if it did not hand over (see $log)"
  fi
  sleep 0.1
done
kill -0 "$new_pid" 2>/dev/null || fail "the new process $new_pid is gone (see $log)"
echo "upgrade: done in $((SECONDS - start)) s; fulcrum now runs as pid $new_pid"

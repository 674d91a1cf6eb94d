#!/bin/bash
# Interop test between Ferry's C ttrpc and containerd's Go ttrpc 1.1.1, both ways:
#
#   1. interop-c-client (C) against "ferrypeer server" (Go),
#   2. "ferrypeer client" (Go) against interop-c-server (C),
#   3. the C server still serves after the Go battery and shuts down cleanly on SIGTERM.
#
#   run.sh BUILDDIR
#
# Prints ONE TAP stream on stdout (both batteries renumbered under one plan). Prints
# "1..0 # SKIP <reason>" when go or the Debian ttrpc sources are missing. Every
# process it starts is stopped by pid; the temp dir goes away on exit.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
builddir=$(cd "${1:?usage: run.sh BUILDDIR}" && pwd)
go_peer=$builddir/interop-go
c_server=$builddir/tests/interop/interop-c-server
c_client=$builddir/tests/interop/interop-c-client
client_timeout=${FERRY_INTEROP_CLIENT_TIMEOUT:-120}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ferry-interop.XXXXXX")
pids=()

# stop_pid PID: SIGTERM, up to 5 s to exit, then SIGKILL. Sets stop_status to the exit
# status (128+n for a signal).
stop_status=0
stop_pid() {
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  stop_status=0
  wait "$pid" 2>/dev/null || stop_status=$?
}

# shellcheck disable=SC2317 # runs from the EXIT trap
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    stop_pid "$pid"
  done
  rm -rf "$tmp"
}
trap cleanup EXIT

# ------------------------------------------------------------------ TAP output --

results=() # result lines and their diagnostics, in order
count=0    # result lines so far
add_result() { # add_result ok|not-ok DESCRIPTION [REASON]
  local n=$((++count))
  if [[ $1 == ok ]]; then
    results+=("ok $n - $2")
  else
    results+=("not ok $n - $2${3:+ # $3}")
  fi
}
add_diagnostics() { # add_diagnostics FILE: its last lines as TAP comments after the last result
  local line
  [[ -s $1 ]] || return 0
  while IFS= read -r line; do
    results+=("#   $line")
  done < <(tail -n 20 "$1")
}

finish() {
  echo "1..$count"
  printf '%s\n' "${results[@]}"
  exit 0
}

# merge_tap NAME FILE STATUS ERRFILE: renumber a battery's results into ours; a
# battery that crashed or stopped early adds one failing result.
merge_tap() {
  local name=$1 file=$2 status=$3 errfile=$4
  local planned=-1 seen=0 line re='^(not )?ok([[:space:]]+[0-9]+)?([[:space:]]+-)?[[:space:]]*(.*)$'
  while IFS= read -r line; do
    if [[ $line =~ ^1\.\.([0-9]+) ]]; then
      planned=${BASH_REMATCH[1]}
    elif [[ $line =~ $re ]]; then
      seen=$((seen + 1))
      local n=$((++count))
      results+=("${BASH_REMATCH[1]}ok $n - ${BASH_REMATCH[4]}")
    elif [[ $line == "#"* ]]; then
      results+=("$line")
    elif [[ -n $line ]]; then
      results+=("# $line")
    fi
  done <"$file"
  if ((status != 0 || seen != planned)); then
    add_result not-ok "$name/completed" \
      "exit status $status after $seen of $planned planned cases"
    add_diagnostics "$errfile"
  fi
}

# start_server NAME CMD...: start in the background, wait for "ready" on its stdout.
# Sets server_pid; returns 1 (with the server's stderr as diagnostics) if it fails.
server_pid=
start_server() {
  local name=$1
  shift
  "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" </dev/null &
  server_pid=$!
  pids+=("$server_pid")
  for _ in $(seq 100); do
    if grep -qx ready "$tmp/$name.out"; then
      return 0
    fi
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  add_result not-ok "$name/ready" "no \"ready\" within 10 s"
  add_diagnostics "$tmp/$name.err"
  return 1
}

forget_pid() {
  local keep=() pid
  for pid in "${pids[@]}"; do
    [[ $pid == "$1" ]] || keep+=("$pid")
  done
  pids=("${keep[@]}")
}

# ------------------------------------------------------------------------ main --

status=0
"$here/build-go.sh" "$builddir" 2>"$tmp/build-go.log" || status=$?
if ((status != 0)); then
  if ((status == 77)); then
    echo "1..0 # SKIP $(tail -n 1 "$tmp/build-go.log")"
    exit 0
  fi
  add_result not-ok "interop/build-go-peer" "build-go.sh exit status $status"
  add_diagnostics "$tmp/build-go.log"
  finish
fi
for exe in "$c_server" "$c_client"; do
  if [[ ! -x $exe ]]; then
    add_result not-ok "interop/c-programs-built" "$exe is missing (build with ninja first)"
    finish
  fi
done

# 1. C client against the Go server.
if start_server go-server "$go_peer" server -socket "$tmp/go.sock"; then
  go_server_pid=$server_pid
  status=0
  timeout "$client_timeout" "$c_client" -socket "$tmp/go.sock" \
    >"$tmp/c-client.tap" 2>"$tmp/c-client.err" </dev/null || status=$?
  merge_tap c-client "$tmp/c-client.tap" "$status" "$tmp/c-client.err"
  stop_pid "$go_server_pid"
  forget_pid "$go_server_pid"
fi

# 2. Go client against the C server, 3. the C server's health and shutdown.
if start_server c-server "$c_server" -socket "$tmp/c.sock"; then
  c_server_pid=$server_pid
  status=0
  timeout "$client_timeout" "$go_peer" client -socket "$tmp/c.sock" \
    >"$tmp/go-client.tap" 2>"$tmp/go-client.err" </dev/null || status=$?
  merge_tap go-client "$tmp/go-client.tap" "$status" "$tmp/go-client.err"

  if kill -0 "$c_server_pid" 2>/dev/null; then
    add_result ok "c-server/alive-after-go-battery"
  else
    add_result not-ok "c-server/alive-after-go-battery" "the C server exited"
  fi
  stop_pid "$c_server_pid"
  forget_pid "$c_server_pid"
  if ((stop_status == 0)) && [[ ! -e $tmp/c.sock ]]; then
    add_result ok "c-server/sigterm-exits-0-and-removes-socket"
  else
    reason="exit status $stop_status"
    [[ -e $tmp/c.sock ]] && reason+=", socket file left behind"
    add_result not-ok "c-server/sigterm-exits-0-and-removes-socket" "$reason"
    add_diagnostics "$tmp/c-server.err"
  fi
fi

finish

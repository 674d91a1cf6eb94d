#!/bin/bash
# Unary ttrpc benchmark: Ferry (C client -> C server) against containerd's Go ttrpc
# 1.1.1 (Go client -> Go server), same workload, alternating rounds
# (docs/benchmarks.md).
#
#   run-ttrpc.sh BUILDDIR
#
# Environment (defaults): FERRY_BENCH_ROUNDS (3), FERRY_BENCH_DURATION (3s),
# FERRY_BENCH_CONCURRENCY (32), FERRY_BENCH_PAYLOAD (128 bytes).
#
# Prints one line per run, then as its last line:
#   ttrpc-unary ferry_rps=<n> go_rps=<n> ratio=<ferry/go> ferry_p99_us=<n> go_p99_us=<n>
# with the median rps and median p99 of each side. Exit status 77 when go or the
# Debian ttrpc sources are missing.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
builddir=$(cd "${1:?usage: run-ttrpc.sh BUILDDIR}" && pwd)
rounds=${FERRY_BENCH_ROUNDS:-3}
duration=${FERRY_BENCH_DURATION:-3s}
concurrency=${FERRY_BENCH_CONCURRENCY:-32}
payload=${FERRY_BENCH_PAYLOAD:-128}

go_peer=$builddir/interop-go
c_bench=$builddir/bench/ttrpc-bench

"$root/tests/interop/build-go.sh" "$builddir"
if [[ ! -x $c_bench ]]; then
  echo "$c_bench is missing (build with ninja first)" >&2
  exit 1
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ferry-bench.XXXXXX")
server_pid=

stop_server() {
  [[ -n $server_pid ]] || return 0
  kill -TERM "$server_pid" 2>/dev/null || true
  for _ in $(seq 50); do
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=
}
# shellcheck disable=SC2317 # runs from the EXIT trap
cleanup() {
  stop_server
  rm -rf "$tmp"
}
trap cleanup EXIT

# run_side ferry|go: one server, one client run on a fresh socket; prints the
# client's result line. Runs in this shell (never in $(...)) so that the EXIT trap
# knows server_pid.
run_side() {
  local side=$1 sock=$tmp/$1.sock server client
  case $side in
    ferry)
      server=("$c_bench" server)
      client=("$c_bench" client)
      ;;
    go)
      server=("$go_peer" bench-server)
      client=("$go_peer" bench-client)
      ;;
  esac
  rm -f "$tmp/server.out"
  "${server[@]}" -socket "$sock" >"$tmp/server.out" 2>"$tmp/$side-server.err" </dev/null &
  server_pid=$!
  for _ in $(seq 100); do
    grep -qx ready "$tmp/server.out" && break
    if ! kill -0 "$server_pid" 2>/dev/null; then
      echo "$side server died:" >&2
      cat "$tmp/$side-server.err" >&2
      return 1
    fi
    sleep 0.1
  done
  grep -qx ready "$tmp/server.out" || { echo "$side server not ready" >&2; return 1; }

  "${client[@]}" -socket "$sock" -concurrency "$concurrency" -duration "$duration" \
    -payload "$payload"
  stop_server
}

field() { # field NAME LINE
  local kv
  for kv in $2; do
    [[ $kv == "$1="* ]] && { echo "${kv#*=}"; return 0; }
  done
  echo 0
}

median() { # median N...: the middle value (the mean of the two middle ones if even)
  printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 }
    END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%d\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

echo "# ttrpc-unary: $rounds rounds x $duration per side, concurrency $concurrency," \
  "payload $payload bytes, one connection"
ferry_rps=() ferry_p99=() go_rps=() go_p99=()
for round in $(seq "$rounds"); do
  # Alternate which side goes first, so that neither always runs on a warmer or
  # quieter machine.
  if ((round % 2)); then order=(ferry go); else order=(go ferry); fi
  for side in "${order[@]}"; do
    run_side "$side" >"$tmp/result"
    line=$(<"$tmp/result")
    if [[ $line != rps=* ]]; then
      echo "$side client printed: $line" >&2
      exit 1
    fi
    echo "round $round $side $line"
    if [[ $side == ferry ]]; then
      ferry_rps+=("$(field rps "$line")")
      ferry_p99+=("$(field p99_us "$line")")
    else
      go_rps+=("$(field rps "$line")")
      go_p99+=("$(field p99_us "$line")")
    fi
  done
done

f_rps=$(median "${ferry_rps[@]}")
g_rps=$(median "${go_rps[@]}")
ratio=$(awk -v f="$f_rps" -v g="$g_rps" 'BEGIN { printf "%.2f", (g > 0 ? f / g : 0) }')
echo "ttrpc-unary ferry_rps=$f_rps go_rps=$g_rps ratio=$ratio" \
  "ferry_p99_us=$(median "${ferry_p99[@]}") go_p99_us=$(median "${go_p99[@]}")"

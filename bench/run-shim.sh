#!/bin/bash
# Shim benchmark (docs/benchmarks.md, "Shim"): under one private containerd, for each
# runtime, the resident memory of the shim serving one running container and the
# median latency of `ctr task exec ... /bin/true`.
#
#   run-shim.sh BUILDDIR [FERRY_RUNTIME]
#
# FERRY_RUNTIME is the ferry shim (an absolute path or an io.containerd.X.Y name);
# default $FERRY_SHIM, else BUILDDIR/shim/containerd-shim-ferry-v1. runc's shim
# (io.containerd.runc.v2) is the baseline and always runs.
#
# Environment (defaults): FERRY_BENCH_EXECS (20), FERRY_SHIM_TIMEOUT (60 s for a
# container to be RUNNING), the harness's CTRD_* variables.
#
# One line per runtime, then as the last line
#   shim ferry_rss_kib=<n> runc_rss_kib=<n> rss_ratio=<n> qemu_rss_kib=<n> ferry_exec_ms=<n> runc_exec_ms=<n> exec_ratio=<n>
# While the ferry shim is not there its fields are n/a, the line before the last says
# why, and the status is 0. Exit status 77 (nothing measured) when not root or when
# containerd, ctr, runc's shim or busybox is missing.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
builddir=$(cd "${1:?usage: run-shim.sh BUILDDIR [FERRY_RUNTIME]}" && pwd)
ferry_runtime=${2:-${FERRY_SHIM:-$builddir/shim/containerd-shim-ferry-v1}}
execs=${FERRY_BENCH_EXECS:-20}
wait_s=${FERRY_SHIM_TIMEOUT:-60}
busybox=${FERRY_BUSYBOX:-/bin/busybox}
export PATH=$PATH:/usr/sbin:/sbin

skip() {
  echo "run-shim.sh: SKIP: $*" >&2
  exit 77
}
[[ $(id -u) == 0 ]] || skip "needs root (containerd and runc do)"
for bin in containerd ctr containerd-shim-runc-v2 runc python3; do
  command -v "$bin" >/dev/null || skip "$bin is not installed"
done
[[ -x $busybox ]] || skip "$busybox is missing (Debian's busybox-static)"

# shellcheck source=../tests/scripts/containerd-harness.sh
source "$root/tests/scripts/containerd-harness.sh"

ferry_missing=
if ! ferry_bin=$(ctrd_shim_binary "$ferry_runtime") || [[ ! -x $ferry_bin ]]; then
  ferry_missing="ferry shim not built yet: $ferry_runtime is not an executable shim"
fi

ctrd_setup || exit 1
rootfs=$CTRD_DIR/busybox-rootfs
python3 "$root/tests/scripts/busybox-image.py" rootfs "$rootfs" --busybox "$busybox" || exit 1
# The ferry shim boots the guest image of this build unless told otherwise (containerd
# hands its environment to its shims, so this goes before it starts).
if [[ -z ${FERRY_SHIM_CONFIG:-} ]]; then
  export FERRY_SHIM_CONFIG=$CTRD_DIR/ferry-shim.json
  ctrd_ferry_shim_config "$builddir/image" "$FERRY_SHIM_CONFIG"
fi
export FERRY_SHIM_RUN_DIR=${FERRY_SHIM_RUN_DIR:-$builddir/shim-run}
ctrd_start || exit 1

wait_until() { # wait_until SECONDS COMMAND...: poll COMMAND every 0.1 s
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1 # poll interval of a bounded wait
  done
}
task_is() { [[ $(ctrd_ctr tasks ls 2>/dev/null | awk -v id="$1" '$1 == id { print $3 }') == "$2" ]]; }

rss_kib() { # rss_kib PID: VmRSS in KiB
  awk '$1 == "VmRSS:" { print $2; found = 1 } END { if (!found) print 0 }' "/proc/$1/status" 2>/dev/null
}

median() { # median N...: the middle value (the mean of the two middle ones if even)
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
    END { if (NR % 2) printf "%.1f\n", v[(NR + 1) / 2]; else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f\n", a / b; else print "n/a" }'; }

# measure SIDE RUNTIME: one container, then SIDE_rss, SIDE_qemu, SIDE_exec (globals);
# prints the side's line. Returns non-zero (and says why) if the side failed.
measure() {
  local side=$1 runtime=$2 id=bench-$1 shim pid i t0 t1 times=() qemu=0 rss_before comm
  ctrd_ctr run --runtime "$runtime" -d --env PATH=/bin --fifo-dir "$CTRD_FIFO" \
    --rootfs=true -- "$rootfs" "$id" sh -c 'trap "exit 0" TERM; sleep 1000000 & wait' \
    >/dev/null || { echo "$side: ctr run -d failed" >&2; return 1; }
  ctrd_track "$id"
  wait_until "$wait_s" task_is "$id" RUNNING || { echo "$side: $id never RUNNING" >&2; return 1; }
  shim=$(ctrd_shim_pid "$id") || { echo "$side: no shim process for $id" >&2; return 1; }
  rss_before=$(rss_kib "$shim")
  # One exec first, so that neither side's first-exec set-up counts.
  ctrd_ctr tasks exec --exec-id warm --fifo-dir "$CTRD_FIFO" -- "$id" /bin/true </dev/null ||
    { echo "$side: exec /bin/true failed" >&2; return 1; }
  for i in $(seq "$execs"); do
    t0=$EPOCHREALTIME
    ctrd_ctr tasks exec --exec-id "x$i" --fifo-dir "$CTRD_FIFO" -- "$id" /bin/true </dev/null ||
      { echo "$side: exec $i failed" >&2; return 1; }
    t1=$EPOCHREALTIME
    times+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) * 1000 }')")
  done
  # The shim's memory serving the running container, after it has served the execs.
  printf -v "${side}_rss" '%s' "$(rss_kib "$shim")"
  # The VM (ferry): QEMU processes among the shim's descendants.
  for pid in $(ctrd_descendants "$shim"); do
    { comm=$(<"/proc/$pid/comm"); } 2>/dev/null || continue
    [[ $comm == qemu* ]] && qemu=$((qemu + $(rss_kib "$pid")))
  done
  printf -v "${side}_qemu" '%s' "$qemu"
  printf -v "${side}_exec" '%s' "$(median "${times[@]}")"
  local rss_var=${side}_rss exec_var=${side}_exec
  echo "$side runtime=$runtime shim_pid=$shim shim_rss_kib=${!rss_var}" \
    "shim_rss_at_start_kib=$rss_before qemu_rss_kib=$qemu exec_median_ms=${!exec_var}" \
    "exec_min_ms=$(printf '%s\n' "${times[@]}" | sort -g | head -n 1)" \
    "exec_max_ms=$(printf '%s\n' "${times[@]}" | sort -g | tail -n 1) execs=$execs"
  ctrd_ctr tasks kill -s TERM "$id" >/dev/null
  if ! wait_until "$wait_s" task_is "$id" STOPPED; then
    ctrd_ctr tasks kill -s KILL "$id" >/dev/null
    wait_until "$wait_s" task_is "$id" STOPPED
  fi
  ctrd_ctr tasks delete "$id" >/dev/null
  ctrd_ctr containers delete "$id" >/dev/null
}

echo "# shim: one container per runtime under containerd $(containerd --version | awk '{ print $3 }')," \
  "$execs x ctr task exec /bin/true each, busybox rootfs"
runc_rss=0 runc_exec=0 ferry_rss=n/a ferry_qemu=n/a ferry_exec=n/a
measure runc io.containerd.runc.v2 || exit 1
if [[ -z $ferry_missing ]]; then
  measure ferry "$ferry_runtime" || exit 1
fi
ctrd_finish || exit 1

if [[ -n $ferry_missing ]]; then
  echo "# $ferry_missing; only runc's figures (give the ferry shim as the second argument or FERRY_SHIM)"
  rss_ratio=n/a exec_ratio=n/a
else
  rss_ratio=$(ratio "$ferry_rss" "$runc_rss")
  exec_ratio=$(ratio "$ferry_exec" "$runc_exec")
fi
echo "shim ferry_rss_kib=$ferry_rss runc_rss_kib=$runc_rss rss_ratio=$rss_ratio" \
  "qemu_rss_kib=$ferry_qemu ferry_exec_ms=$ferry_exec runc_exec_ms=$runc_exec exec_ratio=$exec_ratio"

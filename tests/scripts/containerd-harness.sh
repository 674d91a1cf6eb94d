# shellcheck shell=bash
# A private containerd for tests and benchmarks (docs/testing.md, "containerd harness").
# Sourced, not run:
#
#   source tests/scripts/containerd-harness.sh
#   ctrd_setup            # temp dir, config.toml, EXIT trap; CTRD_DIR, CTRD_SOCK, ...
#   ctrd_start            # start containerd, wait until `ctr version` answers
#   ctrd_ctr run ...      # ctr --address $CTRD_SOCK, bounded by CTRD_CMD_TIMEOUT
#   ctrd_crash            # SIGKILL containerd (its shims live on), then ctrd_start again
#   ctrd_finish           # stop containerd by pid, check that nothing it started is left
#
# Every function returns non-zero on failure and says why on stderr; none exits the
# calling shell, except the EXIT trap, which turns a leftover into a failing status.
#
# Environment (defaults): CTRD_START_TIMEOUT (20 s for containerd to answer),
# CTRD_CMD_TIMEOUT (120 s for one ctr command), CTRD_STOP_TIMEOUT (10 s for containerd
# or a shim to exit after SIGTERM), CTRD_KEEP=1 keeps the temp dir.

CTRD_DIR=
CTRD_SOCK=
CTRD_CONFIG=
CTRD_LOG=
CTRD_FIFO=
CTRD_PID=
CTRD_NS=
CTRD_SNAPSHOTTER=
CTRD_BG_PIDS=()
CTRD_SOCKETS=()
ctrd__finished=0

ctrd__say() { echo "containerd-harness: $*" >&2; }

# ctrd_ferry_shim_config IMAGE_DIR FILE: a config for Ferry's shim (docs/shim.md) in FILE
# that boots the guest image in IMAGE_DIR (its vmlinux and initramfs.cpio) with 256 MiB.
ctrd_ferry_shim_config() {
  printf '{"kernel": "%s", "initrd": "%s", "memory_mb": 256}\n' \
    "$1/vmlinux" "$1/initramfs.cpio" >"$2"
}

# ctrd_shim_binary RUNTIME: the executable containerd runs for RUNTIME, by its rule: an
# absolute path as is, a name io.containerd.X.Y as containerd-shim-X-Y on PATH (the bare
# name when it is not there, so that the caller's executable check names it). Fails for
# anything else.
ctrd_shim_binary() {
  case $1 in
    /*) echo "$1" ;;
    io.containerd.*.*)
      local name=${1#io.containerd.}
      command -v "containerd-shim-${name//./-}" || echo "containerd-shim-${name//./-}"
      ;;
    *) return 1 ;;
  esac
}

# ctrd_setup: make the temp dir and the config; install the EXIT trap. A test that needs
# its own cleanup defines ctrd_user_cleanup, which the trap runs first.
ctrd_setup() {
  local bin
  for bin in containerd ctr; do
    command -v "$bin" >/dev/null || { ctrd__say "$bin is not installed"; return 1; }
  done
  CTRD_DIR=$(mktemp -d "${TMPDIR:-/tmp}/ferry-ctrd.XXXXXX") || return 1
  CTRD_SOCK=$CTRD_DIR/containerd.sock
  CTRD_CONFIG=$CTRD_DIR/config.toml
  CTRD_LOG=$CTRD_DIR/containerd.log
  CTRD_FIFO=$CTRD_DIR/fifo
  # A namespace of its own: runc keeps its state in /run/containerd/runc/<namespace>/<id>
  # and its cgroups in /<namespace>/<id> whichever containerd runs it, so container ids
  # of two harnesses (or of a run killed half-way) never collide there. ctr and the
  # test's own ctr calls read it from CONTAINERD_NAMESPACE.
  CTRD_NS=ferry-test-${CTRD_DIR##*.}
  export CONTAINERD_NAMESPACE=$CTRD_NS
  # sun_path holds 108 bytes; containerd adds ".ttrpc" for the second socket.
  if ((${#CTRD_SOCK} + 6 >= 108)); then
    ctrd__say "socket path $CTRD_SOCK is too long for a unix socket (set TMPDIR)"
    return 1
  fi
  mkdir -p "$CTRD_DIR/root" "$CTRD_DIR/state" "$CTRD_FIFO"
  # Only what a test needs: no CRI (it would start CNI and a streaming server), no
  # snapshotter that probes devices or kernel modules, no /opt
  # plugin dir. Unknown names in disabled_plugins are ignored by containerd 1.6.
  cat >"$CTRD_CONFIG" <<EOF
version = 2
root = "$CTRD_DIR/root"
state = "$CTRD_DIR/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.internal.v1.opt",
  "io.containerd.internal.v1.tracing",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]
imports = []

[grpc]
  address = "$CTRD_SOCK"

[ttrpc]
  address = "$CTRD_SOCK.ttrpc"

[debug]
  level = "debug"
EOF
  trap ctrd__exit_trap EXIT
}

# ctrd_start: start containerd with the config (again, after ctrd_crash: same root and
# state) and wait until it answers, at most CTRD_START_TIMEOUT seconds. On failure
# prints containerd's log.
ctrd_start() {
  local deadline=$((SECONDS + ${CTRD_START_TIMEOUT:-20}))
  [[ -z $CTRD_PID ]] || { ctrd__say "containerd is already running (pid $CTRD_PID)"; return 1; }
  echo "=== containerd start $(date -u +%FT%TZ)" >>"$CTRD_LOG"
  containerd --config "$CTRD_CONFIG" >>"$CTRD_LOG" 2>&1 </dev/null &
  CTRD_PID=$!
  while ((SECONDS < deadline)); do
    if ! kill -0 "$CTRD_PID" 2>/dev/null; then
      wait "$CTRD_PID"
      ctrd__say "containerd exited (status $?) before answering; its log:"
      cat "$CTRD_LOG" >&2
      CTRD_PID=
      return 1
    fi
    timeout 5 ctr --address "$CTRD_SOCK" version >/dev/null 2>&1 && break
    sleep 0.1 # poll interval of a bounded wait for readiness, not a synchronisation
  done
  if ! timeout 5 ctr --address "$CTRD_SOCK" version >/dev/null 2>&1; then
    ctrd__say "containerd (pid $CTRD_PID) did not answer within ${CTRD_START_TIMEOUT:-20} s; its log:"
    cat "$CTRD_LOG" >&2
    return 1
  fi
  if [[ -z $CTRD_SNAPSHOTTER ]]; then
    # overlayfs where the kernel and the temp dir's file system allow it, else native.
    if ctrd_ctr plugins ls 2>/dev/null |
      grep -E '^io\.containerd\.snapshotter\.v1 +overlayfs .* ok *$' >/dev/null; then
      CTRD_SNAPSHOTTER=overlayfs
    else
      CTRD_SNAPSHOTTER=native
    fi
  fi
}

# ctrd_ctr ARGS...: ctr against this containerd, killed after CTRD_CMD_TIMEOUT seconds
# (status 124 then). Note ctr 1.6's argument parsing (urfave/cli v1) moves anything
# that looks like one of the subcommand's flags to the front, even after the image or
# id ("sh -c" becomes ctr's --config), and lets a boolean flag swallow the next word:
# write boolean flags as --rm=true and put "--" before the positional arguments.
ctrd_ctr() {
  timeout -k 5 "${CTRD_CMD_TIMEOUT:-120}" ctr --address "$CTRD_SOCK" "$@"
}

# ctrd_crash: SIGKILL containerd (a crash: no shutdown of anything), reap it. Its shims
# are in their own sessions and keep running. ctrd_start brings it back.
ctrd_crash() {
  [[ -n $CTRD_PID ]] || { ctrd__say "containerd is not running"; return 1; }
  kill -KILL "$CTRD_PID" 2>/dev/null
  { wait "$CTRD_PID"; } 2>/dev/null
  echo "=== containerd killed with SIGKILL $(date -u +%FT%TZ)" >>"$CTRD_LOG"
  CTRD_PID=
}

# ctrd_stop: SIGTERM containerd, at most CTRD_STOP_TIMEOUT seconds, then SIGKILL
# (a failure). A containerd that had exited by itself is a failure too.
ctrd_stop() {
  local status=0
  [[ -n $CTRD_PID ]] || return 0
  if ! kill -0 "$CTRD_PID" 2>/dev/null || ctrd__is_zombie "$CTRD_PID"; then
    { wait "$CTRD_PID"; } 2>/dev/null
    ctrd__say "containerd (pid $CTRD_PID) had exited by itself, status $?"
    CTRD_PID=
    return 1
  fi
  ctrd__stop_pid "$CTRD_PID" containerd || status=1
  { wait "$CTRD_PID"; } 2>/dev/null
  CTRD_PID=
  return $status
}

# ctrd_track ID [NAMESPACE]: remember the socket of the task's shim (from the address
# file in its bundle) so that ctrd_finish can check it was removed. Call it while the
# task exists.
ctrd_track() {
  local ns=${2:-$CTRD_NS}
  ctrd__track_file "$CTRD_DIR/state/io.containerd.runtime.v2.task/$ns/$1/address" ||
    { ctrd__say "no shim address file for $ns/$1"; return 1; }
}

ctrd__track_file() { # ctrd__track_file ADDRESS-FILE
  local addr
  [[ -r $1 ]] || return 1
  addr=$(<"$1")
  addr=${addr#unix://}
  [[ $addr == /* ]] && CTRD_SOCKETS+=("$addr")
  return 0
}

# ctrd_shim_pids: the pids of the shims (any runtime) that this containerd started,
# one a line: processes whose argv has "-address $CTRD_SOCK", which containerd passes
# to every shim it runs. Zombies (no argv) are not listed.
ctrd_shim_pids() {
  local f pid prev arg
  for f in /proc/[0-9]*/cmdline; do
    pid=${f#/proc/}
    pid=${pid%/cmdline}
    [[ $pid == "$BASHPID" ]] && continue
    prev=
    while IFS= read -r -d '' arg; do
      if [[ $prev == -address && $arg == "$CTRD_SOCK" ]]; then
        echo "$pid"
        break
      fi
      prev=$arg
    done 2>/dev/null <"$f"
  done
}

# ctrd_shim_pid ID: the pid of the shim serving container ID (argv has "-id ID").
ctrd_shim_pid() {
  local pid prev arg
  for pid in $(ctrd_shim_pids); do
    prev=
    while IFS= read -r -d '' arg; do
      if [[ $prev == -id && $arg == "$1" ]]; then
        echo "$pid"
        return 0
      fi
      prev=$arg
    done 2>/dev/null <"/proc/$pid/cmdline"
  done
  return 1
}

# ctrd_descendants PID: the pids of PID's descendants, children before grandchildren.
ctrd_descendants() {
  local -A parent=()
  local f stat rest pid queue=("$1") cur
  for f in /proc/[0-9]*/stat; do
    { stat=$(<"$f"); } 2>/dev/null || continue
    rest=${stat##*) } # the command name may hold spaces and parentheses
    pid=${f#/proc/}
    pid=${pid%/stat}
    read -r _ ppid _ <<<"$rest"
    parent[$pid]=$ppid
  done
  while ((${#queue[@]})); do
    cur=${queue[0]}
    queue=("${queue[@]:1}")
    for pid in "${!parent[@]}"; do
      if [[ ${parent[$pid]} == "$cur" ]]; then
        echo "$pid"
        queue+=("$pid")
      fi
    done
  done
}

# ctrd_bg PID: a background process of the test (ctr events, an attached ctr run) that
# the cleanup ends by pid if the test has not.
ctrd_bg() { CTRD_BG_PIDS+=("$1"); }

# ctrd_finish: end the test's background processes, delete whatever containers are
# left (each one a failure), stop containerd, then check that no shim it started, no
# descendant of one, no mount under the temp dir and no tracked shim socket is left.
# Kills and removes what it finds (by pid, by path), says what on stderr, and returns 1
# if anything was left. Runs once; the EXIT trap calls it if the test did not.
ctrd_finish() {
  local status=0 pid ns id mp sock leftover
  ((ctrd__finished)) && return 0
  ctrd__finished=1
  for pid in "${CTRD_BG_PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || continue
    ctrd__stop_pid "$pid" "background process" >/dev/null 2>&1
    wait "$pid" 2>/dev/null
  done
  CTRD_BG_PIDS=()
  if [[ -n $CTRD_PID ]]; then
    for ns in $(ctrd_ctr namespaces ls -q 2>/dev/null); do
      for id in $(ctrd_ctr -n "$ns" containers ls -q 2>/dev/null); do
        ctrd__say "left behind: container $ns/$id; deleting it"
        status=1
        ctrd_track "$id" "$ns" 2>/dev/null
        ctrd_ctr -n "$ns" tasks kill -s KILL "$id" >/dev/null 2>&1
        ctrd_ctr -n "$ns" tasks delete -f "$id" >/dev/null 2>&1
        ctrd_ctr -n "$ns" containers delete "$id" >/dev/null 2>&1
      done
    done
  fi
  ctrd_stop || status=1
  # A shim exits after containerd's Shutdown call or its own delete; give the last ones
  # the stop timeout to get there.
  leftover=$(ctrd__wait_for_no_shims)
  for pid in $leftover; do
    ctrd__say "left behind: shim pid $pid ($(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")); killing it and its descendants"
    status=1
    # containerd starts a shim in the bundle, where the shim writes its address: so a
    # socket the test never tracked is checked below too.
    ctrd__track_file "$(readlink "/proc/$pid/cwd" 2>/dev/null)/address"
    for id in $(ctrd_descendants "$pid") "$pid"; do
      kill -KILL "$id" 2>/dev/null
    done
  done
  while read -r mp; do
    [[ -n $mp ]] || continue
    ctrd__say "left behind: mount $mp; unmounting it"
    status=1
    umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null
  done < <(ctrd__mounts_under "$CTRD_DIR")
  ctrd__runc_leftovers || status=1
  ctrd__cgroup_leftovers || status=1
  for sock in "${CTRD_SOCKETS[@]}"; do
    if [[ -e $sock ]]; then
      ctrd__say "left behind: shim socket $sock; removing it"
      status=1
      rm -f "$sock"
    fi
  done
  if [[ -n $CTRD_DIR && -z ${CTRD_KEEP:-} ]]; then
    if ((status)); then
      ctrd__say "containerd's log (last 40 lines of $CTRD_LOG):"
      tail -n 40 "$CTRD_LOG" >&2
    fi
    rm -rf --one-file-system "$CTRD_DIR"
  elif [[ -n $CTRD_DIR ]]; then
    ctrd__say "kept $CTRD_DIR"
  fi
  return $status
}

# ------------------------------------------------------------------ internals --

ctrd__stop_pid() { # ctrd__stop_pid PID WHAT: SIGTERM, bounded wait, SIGKILL (failure)
  local deadline=$((SECONDS + ${CTRD_STOP_TIMEOUT:-10}))
  kill -TERM "$1" 2>/dev/null || return 0
  while kill -0 "$1" 2>/dev/null && ! ctrd__is_zombie "$1"; do
    if ((SECONDS >= deadline)); then
      ctrd__say "$2 (pid $1) did not exit within ${CTRD_STOP_TIMEOUT:-10} s of SIGTERM; SIGKILL"
      kill -KILL "$1" 2>/dev/null
      return 1
    fi
    sleep 0.1 # poll interval of a bounded wait
  done
  return 0
}

ctrd__is_zombie() {
  local stat
  { stat=$(<"/proc/$1/stat"); } 2>/dev/null || return 1
  [[ ${stat##*) } == Z* ]]
}

ctrd__wait_for_no_shims() { # prints the shims still there after CTRD_STOP_TIMEOUT
  local deadline=$((SECONDS + ${CTRD_STOP_TIMEOUT:-10})) pids
  while :; do
    pids=$(ctrd_shim_pids)
    [[ -z $pids ]] && return 0
    ((SECONDS >= deadline)) && break
    sleep 0.1 # poll interval of a bounded wait
  done
  echo "$pids"
}

ctrd__mounts_under() { # mount points below DIR, deepest first
  local _id _parent _dev _root mp _rest
  while read -r _id _parent _dev _root mp _rest; do
    mp=$(printf '%b' "${mp//\\/\\0}") # mountinfo escapes space, tab, newline, \ as \ooo
    [[ $mp == "$1"/* ]] && echo "$mp"
  done </proc/self/mountinfo | sort -r
}

# runc's state of this namespace's containers, which runc's shim deletes with the task.
ctrd__runc_leftovers() {
  local dir=/run/containerd/runc/$CTRD_NS st=0 c
  [[ -d $dir ]] || return 0
  for c in "$dir"/*; do
    [[ -e $c ]] || continue
    ctrd__say "left behind: runc state $c; runc delete -f"
    st=1
    runc --root "$dir" delete -f "${c##*/}" >/dev/null 2>&1 || rm -rf "$c"
  done
  rmdir "$dir" 2>/dev/null
  return $st
}

# The cgroups of this namespace's containers (/<namespace>/<id> in every hierarchy):
# a container's left is a failure; the empty namespace level is removed quietly.
ctrd__cgroup_leftovers() {
  local st=0 ns_dir c
  for ns_dir in /sys/fs/cgroup/"$CTRD_NS" /sys/fs/cgroup/*/"$CTRD_NS"; do
    [[ -d $ns_dir ]] || continue
    for c in "$ns_dir"/*/; do
      [[ -d $c ]] || continue
      ctrd__say "left behind: cgroup ${c%/}; removing it"
      st=1
      find "$c" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    rmdir "$ns_dir" 2>/dev/null || { ctrd__say "cannot remove cgroup $ns_dir"; st=1; }
  done
  return $st
}

# shellcheck disable=SC2317 # runs from the EXIT trap
ctrd__exit_trap() {
  local status=$?
  if declare -F ctrd_user_cleanup >/dev/null; then
    ctrd_user_cleanup
  fi
  ctrd_finish || status=1
  exit $status
}

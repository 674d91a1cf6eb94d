#!/bin/bash
# The containerd acceptance scenarios of a runtime shim, run with real containerd
# (docs/testing.md, "shim acceptance"). The same script runs Debian's runc shim (the
# baseline: what containerd and ctr expect) and Ferry's shim.
#
#   shim-acceptance.sh RUNTIME
#
# RUNTIME is what `ctr run --runtime` takes: a name (io.containerd.runc.v2, resolved to
# containerd-shim-runc-v2 on PATH) or the absolute path of a shim binary.
#
# Prints TAP. Skips as a whole ("1..0 # SKIP reason") when not root, when containerd,
# ctr, python3 or busybox is missing, or when RUNTIME names no executable shim; a case
# that cannot run here is "ok N - ... # SKIP reason". Everything runs under a private
# containerd (tests/scripts/containerd-harness.sh) that is stopped by pid at the end,
# and the last case checks that no shim, mount or shim socket is left behind.
#
# Environment: FERRY_SHIM_TIMEOUT (seconds a container may take to be RUNNING, or an
# event to arrive; default 60, a VM under TCG boots in a few seconds), FERRY_IMAGE_DIR
# or FERRY_IMAGE_DIR_DEFAULT (the guest image Ferry's shim boots, unless
# FERRY_SHIM_CONFIG names a config), plus the harness's CTRD_* variables.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
runtime=${1:?usage: shim-acceptance.sh RUNTIME}
wait_s=${FERRY_SHIM_TIMEOUT:-60}
export PATH=$PATH:/usr/sbin:/sbin

skip_all() {
  echo "1..0 # SKIP $*"
  exit 0
}

[[ $(id -u) == 0 ]] || skip_all "needs root (containerd and runc do)"
for bin in containerd ctr python3; do
  command -v "$bin" >/dev/null || skip_all "$bin is not installed"
done
busybox=${FERRY_BUSYBOX:-/bin/busybox}
[[ -x $busybox ]] || skip_all "$busybox is missing (Debian's busybox-static)"
# shellcheck source=containerd-harness.sh
source "$here/containerd-harness.sh"
if ! shim_bin=$(ctrd_shim_binary "$runtime"); then
  echo "shim-acceptance.sh: runtime $runtime is neither an absolute path nor io.containerd.X.Y" >&2
  exit 2
fi
[[ -x $shim_bin ]] || skip_all "shim $shim_bin for runtime $runtime is not built or not installed"
if [[ $runtime == io.containerd.runc.v2 ]] && ! command -v runc >/dev/null; then
  skip_all "runc is not installed"
fi

# ------------------------------------------------------------------------ TAP --

n=0
ok() { echo "ok $((++n)) - $*"; }
not_ok() { # not_ok DESCRIPTION DIAGNOSTIC...
  echo "not ok $((++n)) - $1"
  shift
  local line
  for line in "$@"; do
    printf '%s\n' "$line" | sed 's/^/# /'
  done
}
skip() { echo "ok $((++n)) - $1 # SKIP $2"; }
check() { # check DESCRIPTION COMMAND...: ok iff COMMAND succeeds; its stderr is the diagnostic
  local desc=$1 err
  shift
  if err=$("$@" 2>&1 >/dev/null); then ok "$desc"; else not_ok "$desc" "$err"; fi
}

# ------------------------------------------------------------------- helpers --

# wait_until SECONDS COMMAND...: poll COMMAND (every 0.1 s) until it succeeds.
wait_until() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1 # poll interval of a bounded wait
  done
}

task_status() { # task_status ID: RUNNING, PAUSED, STOPPED, ... or nothing
  ctrd_ctr tasks ls 2>/dev/null | awk -v id="$1" '$1 == id { print $3 }'
}
task_is() { [[ $(task_status "$1") == "$2" ]]; }

# run_d ID COMMAND...: a detached container from the busybox tree; waits until RUNNING.
run_d() {
  local id=$1
  shift
  ctrd_ctr run --runtime "$runtime" -d --env PATH=/bin --fifo-dir "$CTRD_FIFO" \
    --rootfs=true -- "$rootfs" "$id" "$@" >/dev/null || return 1
  ctrd_track "$id"
  wait_until "$wait_s" task_is "$id" RUNNING || {
    echo "task $id is '$(task_status "$id")', not RUNNING after ${wait_s} s" >&2
    return 1
  }
}

remove() { # remove ID: kill the task if it runs, delete task and container
  local st
  st=$(task_status "$1")
  if [[ -n $st && $st != STOPPED ]]; then
    ctrd_ctr tasks kill -s KILL "$1" >/dev/null 2>&1
    wait_until "$wait_s" task_is "$1" STOPPED
  fi
  [[ -z $(task_status "$1") ]] || ctrd_ctr tasks delete "$1" >/dev/null
  ctrd_ctr containers delete "$1" >/dev/null
}

# The init of the long-running containers: exits 7 on SIGTERM, at once (the trap runs
# when `wait` is interrupted), and lives on otherwise.
long_init=(sh -c 'trap "exit 7" TERM; sleep 1000000 & wait')

# events_start FILE: `ctr events` into FILE, returning once it is subscribed: a probe
# namespace is created (and removed) until its event shows up in FILE.
events_pid=
events_start() {
  local file=$1 i
  ctr --address "$CTRD_SOCK" events >"$file" 2>&1 </dev/null &
  events_pid=$!
  ctrd_bg "$events_pid"
  for i in $(seq 100); do
    ctrd_ctr namespaces create "evprobe$i" >/dev/null || return 1
    ctrd_ctr namespaces remove "evprobe$i" >/dev/null || return 1
    if wait_until 1 grep -q "/namespaces/create.*evprobe$i" "$file"; then
      return 0
    fi
  done
  echo "ctr events never showed a probe event" >&2
  return 1
}
events_stop() {
  [[ -n $events_pid ]] || return 0
  kill -TERM "$events_pid" 2>/dev/null
  wait "$events_pid" 2>/dev/null
  events_pid=
}

# events_of FILE ID: the task and container events of container ID, one per line,
# "topic" plus, for /tasks/exit and /tasks/delete, "id=<process id> status=<n>".
events_of() {
  python3 - "$1" "$2" <<'EOF'
import json, sys
path, cid = sys.argv[1], sys.argv[2]
for line in open(path, encoding="utf-8", errors="replace"):
    parts = line.split(None, 5)  # date time zone-offset zone namespace topic+json
    if len(parts) < 6 or parts[5].split(" ", 1)[0][:1] != "/":
        continue
    topic, _, body = parts[5].partition(" ")
    try:
        ev = json.loads(body)
    except ValueError:
        continue
    if ev.get("container_id", ev.get("id")) != cid:
        continue
    if topic in ("/tasks/exit", "/tasks/delete"):
        pid = ev.get("id") or cid
        if topic == "/tasks/delete" and pid != cid:
            continue  # an exec's delete: runc's shim sends none, and none is required
        topic += f" id={pid} status={ev.get('exit_status', 0)}"
    print(topic)
EOF
}
has_event() { events_of "$1" "$2" | grep -xF "$3" >/dev/null; } # no -q: with pipefail an early exit is a SIGPIPE

# ---------------------------------------------------------------------- setup --

ctrd_setup || skip_all "the containerd harness could not be set up"
rootfs=$CTRD_DIR/busybox-rootfs
archive=$CTRD_DIR/busybox-oci.tar
image_ref=localhost/ferry-test/busybox:1
python3 "$here/busybox-image.py" rootfs "$rootfs" --busybox "$busybox" || {
  echo "Bail out! could not build the busybox tree"
  exit 1
}
# Ferry's shim boots a guest image: FERRY_IMAGE_DIR (a sanitizer build boots the one
# `make check` built), else FERRY_IMAGE_DIR_DEFAULT, told through its config file unless
# FERRY_SHIM_CONFIG names one. containerd hands its environment to its shims, so this
# goes before it starts.
image_dir=${FERRY_IMAGE_DIR:-${FERRY_IMAGE_DIR_DEFAULT:-}}
if [[ -z ${FERRY_SHIM_CONFIG:-} && -n $image_dir ]]; then
  export FERRY_SHIM_CONFIG=$CTRD_DIR/ferry-shim.json
  ctrd_ferry_shim_config "$image_dir" "$FERRY_SHIM_CONFIG"
fi
if ! ctrd_start; then
  echo "Bail out! containerd did not start"
  exit 1
fi
echo "# runtime $runtime ($shim_bin), containerd $(containerd --version | awk '{ print $3 }')," \
  "snapshotter $CTRD_SNAPSHOTTER, state $CTRD_DIR"

# ------------------------------------------------------------------ the cases --

# A container from a directory, attached: its output and its exit status.
out=$(ctrd_ctr run --runtime "$runtime" --rm=true --env PATH=/bin --fifo-dir "$CTRD_FIFO" \
  --rootfs=true -- "$rootfs" t1 sh -c 'echo hi; exit 3' </dev/null 2>"$CTRD_DIR/t1.err")
status=$?
if [[ $out == hi && $status == 3 ]]; then
  ok "ctr run --rootfs --rm t1 sh -c 'echo hi; exit 3' prints hi and exits 3"
else
  not_ok "ctr run --rootfs --rm t1 sh -c 'echo hi; exit 3' prints hi and exits 3" \
    "stdout '$out', status $status, stderr:" "$(<"$CTRD_DIR/t1.err")"
fi
check "--rm removed container t1" bash -c "! ctr --address '$CTRD_SOCK' containers ls -q | grep -qx t1"

# A real image: an OCI archive built here, imported, run through the snapshotter.
if ! python3 "$here/busybox-image.py" archive "$rootfs" "$archive" --name "$image_ref" \
  2>"$CTRD_DIR/archive.err"; then
  not_ok "build the busybox OCI archive" "$(<"$CTRD_DIR/archive.err")"
  not_ok "ctr run IMAGE (snapshotter mounts)" "no archive"
elif ! err=$(ctrd_ctr images import --snapshotter "$CTRD_SNAPSHOTTER" "$archive" 2>&1 >/dev/null) ||
  ! ctrd_ctr images ls -q | grep -xF "$image_ref" >/dev/null; then
  not_ok "ctr images import of the busybox OCI archive" "$err" "$(ctrd_ctr images ls 2>&1)"
  not_ok "ctr run IMAGE (snapshotter mounts)" "no image"
else
  ok "ctr images import of the busybox OCI archive names $image_ref"
  # shellcheck disable=SC2016 # $PATH is the container's
  out=$(ctrd_ctr run --runtime "$runtime" --rm=true --snapshotter "$CTRD_SNAPSHOTTER" \
    --fifo-dir "$CTRD_FIFO" -- "$image_ref" i1 sh -c 'echo "from-image $PATH"; exit 4' \
    </dev/null 2>"$CTRD_DIR/i1.err")
  status=$?
  # The PATH comes from the image's config, so the spec was built from the image.
  if [[ $out == "from-image /usr/sbin:/usr/bin:/sbin:/bin" && $status == 4 ]]; then
    ok "ctr run IMAGE i1 runs on the snapshotter's mounts with the image's config"
  else
    not_ok "ctr run IMAGE i1 runs on the snapshotter's mounts with the image's config" \
      "stdout '$out', status $status, stderr:" "$(<"$CTRD_DIR/i1.err")"
  fi
  # A file written in a container of the image lasts as long as the container: a
  # later exec reads it; a new container of the same image does not see it.
  run_image_d() {
    ctrd_ctr run --runtime "$runtime" -d --snapshotter "$CTRD_SNAPSHOTTER" \
      --fifo-dir "$CTRD_FIFO" -- "$image_ref" "$1" "${long_init[@]}" >/dev/null &&
      ctrd_track "$1" && wait_until "$wait_s" task_is "$1" RUNNING
  }
  if run_image_d i2 2>"$CTRD_DIR/i2.err" &&
    ctrd_ctr tasks exec --exec-id w --fifo-dir "$CTRD_FIFO" -- i2 \
      sh -c 'echo written-in-i2 > /root/mark' </dev/null 2>>"$CTRD_DIR/i2.err"; then
    out=$(ctrd_ctr tasks exec --exec-id r --fifo-dir "$CTRD_FIFO" -- i2 cat /root/mark \
      </dev/null 2>&1)
    remove i2
    if run_image_d i3 2>>"$CTRD_DIR/i2.err"; then
      out2=$(ctrd_ctr tasks exec --exec-id r --fifo-dir "$CTRD_FIFO" -- i3 \
        sh -c 'cat /root/mark 2>/dev/null || echo absent' </dev/null 2>&1)
      remove i3
    else
      out2="i3 did not run: $(<"$CTRD_DIR/i2.err")"
    fi
    if [[ $out == written-in-i2 && $out2 == absent ]]; then
      ok "a file written in an image's container lasts until the container is deleted"
    else
      not_ok "a file written in an image's container lasts until the container is deleted" \
        "read back in i2: '$out'; in a new container i3: '$out2'"
    fi
  else
    not_ok "a file written in an image's container lasts until the container is deleted" \
      "$(<"$CTRD_DIR/i2.err")"
    remove i2 >/dev/null 2>&1
  fi
fi

# Log URIs instead of FIFOs: file:// (the shim writes the file) and
# binary:// (the shim runs a logger with the output on fds 3 and 4; the logger closes
# fd 5 when ready), as nerdctl uses.
logger=$CTRD_DIR/logger.sh
cat >"$logger" <<'EOF'
#!/bin/sh
# The output goes to files beside this script; fd 5 is closed in every process, so
# closing it here tells the shim we are ready.
cat <&3 >"$0.out" 5>&- &
cat <&4 >"$0.err" 5>&- &
exec 5>&-
wait
EOF
chmod +x "$logger"
# runc's shim 1.6 gives stdout and stderr one writer on a file:// log but lets the
# stdout copy close it when stdout ends, so stderr written after that is lost, now and
# then (containerd's pkg/process/io.go, copyPipes): for runc only stdout is checked
# there, and the stderr line says so.
file_stderr_unreliable=
[[ $runtime == io.containerd.runc.v2 ]] && file_stderr_unreliable=1
for uri in "file://$CTRD_DIR/file.log" "binary://$logger"; do
  scheme=${uri%%:*}
  id=log-$scheme
  if [[ $scheme == file ]]; then
    log_text() { sort "$CTRD_DIR/file.log" 2>&1; }
  else
    log_text() { cat "$logger.err" "$logger.out" 2>&1; }
  fi
  want=$'to stderr\nto stdout' what="stdout and stderr arrive"
  if [[ $scheme == file && -n $file_stderr_unreliable ]]; then
    want='to stdout' what="stdout arrives"
  fi
  log_seen() { # what is wanted of the log so far
    if [[ $want == *stderr* ]]; then log_text; else log_text | grep -v '^to stderr$'; fi
  }
  log_complete() { [[ $(log_seen) == "$want" ]]; }
  if ctrd_ctr run --runtime "$runtime" -d --log-uri "$uri" --env PATH=/bin --rootfs=true \
    -- "$rootfs" "$id" sh -c 'echo to stdout; echo to stderr >&2' \
    >"$CTRD_DIR/$id.err" 2>&1 && ctrd_track "$id" && wait_until "$wait_s" task_is "$id" STOPPED; then
    # The shim copies the output to its destination on its own time, after the exit
    # as well: wait for it (bounded) rather than reading at once.
    wait_until "$wait_s" log_complete
    got=$(log_seen)
    if [[ $got == "$want" ]]; then
      ok "--log-uri $scheme://: the container's $what"
    else
      not_ok "--log-uri $scheme://: the container's output arrives" "wanted '$want', got '$got'"
    fi
    if [[ $want == 'to stdout' ]]; then
      skip "--log-uri file://: the container's stderr arrives" \
        "runc's shim loses it now and then (the stdout copy closes the shared file)"
    fi
  else
    not_ok "--log-uri $scheme://: the container's output arrives" \
      "$(<"$CTRD_DIR/$id.err")" "status '$(task_status "$id")'"
  fi
  remove "$id" >/dev/null 2>&1
done

# Detached, then exec: output, stderr, exit status; a file written stays.
if ! run_d d1 "${long_init[@]}" 2>"$CTRD_DIR/d1.err"; then
  not_ok "ctr run -d d1 is RUNNING" "$(<"$CTRD_DIR/d1.err")"
else
  ok "ctr run -d d1 is RUNNING"
  # shellcheck disable=SC2016 # the container's shell expands it
  out=$(ctrd_ctr tasks exec --exec-id e1 --fifo-dir "$CTRD_FIFO" -- d1 \
    sh -c 'echo "out $((6 * 7))"; echo err >&2; exit 5' </dev/null 2>"$CTRD_DIR/e1.err")
  status=$?
  if [[ $out == "out 42" && $status == 5 && $(<"$CTRD_DIR/e1.err") == err ]]; then
    ok "ctr task exec --exec-id e1: stdout, stderr and exit status 5"
  else
    not_ok "ctr task exec --exec-id e1: stdout, stderr and exit status 5" \
      "stdout '$out', status $status, stderr '$(<"$CTRD_DIR/e1.err")'"
  fi
  out=$(ctrd_ctr tasks exec --exec-id e2 --fifo-dir "$CTRD_FIFO" -- d1 \
    sh -c 'echo kept > /tmp/written; cat /tmp/written' </dev/null 2>&1)
  out2=$(ctrd_ctr tasks exec --exec-id e3 --fifo-dir "$CTRD_FIFO" -- d1 \
    cat /tmp/written </dev/null 2>&1)
  if [[ $out == kept && $out2 == kept ]]; then
    ok "a file one exec writes is there for the next"
  else
    not_ok "a file one exec writes is there for the next" "first '$out', second '$out2'"
  fi
  out=$(ctrd_ctr tasks exec --exec-id e4 --fifo-dir "$CTRD_FIFO" -- d1 \
    /bin/no-such-program </dev/null 2>&1)
  status=$?
  if ((status != 0)) && task_is d1 RUNNING; then
    ok "exec of a missing program fails (status $status) and the task runs on"
  else
    not_ok "exec of a missing program fails and the task runs on" "status $status: $out"
  fi
  # ctr always passes its stdin to an exec; its end must reach the process as EOF.
  out=$(printf 'line one\nline two\n' | ctrd_ctr tasks exec --exec-id in1 \
    --fifo-dir "$CTRD_FIFO" -- d1 sh -c 'cat; echo "eof seen"' 2>&1)
  status=$?
  if [[ $out == $'line one\nline two\neof seen' && $status == 0 ]]; then
    ok "exec stdin: the data, then its close as EOF"
  else
    not_ok "exec stdin: the data, then its close as EOF" "output '$out', status $status"
  fi
  # A terminal: ctr -t needs one on its own side, which script(1) gives it.
  if ! command -v script >/dev/null; then
    skip "exec -t: the process runs on a terminal" "script(1) from util-linux is missing"
  else
    printf -v cmd '%q ' ctr --address "$CTRD_SOCK" tasks exec -t --exec-id tty1 \
      --fifo-dir "$CTRD_FIFO" -- d1 sh -c 'tty; exit 4'
    out=$(timeout -k 5 "$wait_s" script -qec "$cmd" /dev/null </dev/null 2>&1)
    status=$?
    if [[ $out == */dev/pts/* && $status == 4 ]]; then
      ok "exec -t: the process runs on a terminal and its status comes back"
    else
      not_ok "exec -t: the process runs on a terminal and its status comes back" \
        "output '$out', status $status"
    fi
  fi

  # Pause and resume.
  if [[ $runtime == io.containerd.runc.v2 && ! -d /sys/fs/cgroup/freezer &&
    ! -e /sys/fs/cgroup/cgroup.freeze && ! -e /sys/fs/cgroup/cgroup.controllers ]]; then
    skip "ctr task pause / resume" "no cgroup freezer on this host"
  else
    if err=$(ctrd_ctr tasks pause d1 2>&1) && wait_until "$wait_s" task_is d1 PAUSED; then
      ok "ctr task pause d1: PAUSED"
    else
      not_ok "ctr task pause d1: PAUSED" "$err" "status '$(task_status d1)'"
    fi
    # A frozen container takes no new process (runc and crun refuse it as well): the
    # exec fails at once instead of starting a process that cannot run.
    if err=$(CTRD_CMD_TIMEOUT=60 ctrd_ctr tasks exec --exec-id frozen d1 /bin/true 2>&1); then
      not_ok "exec into the paused d1 is refused" "it ran"
    elif [[ $err == *paused* ]]; then
      ok "exec into the paused d1 is refused, naming the pause"
    else
      not_ok "exec into the paused d1 is refused, naming the pause" "$err"
    fi
    if err=$(ctrd_ctr tasks resume d1 2>&1) && wait_until "$wait_s" task_is d1 RUNNING; then
      ok "ctr task resume d1: RUNNING"
    else
      not_ok "ctr task resume d1: RUNNING" "$err" "status '$(task_status d1)'"
    fi
  fi

  # Pids: the init and its sleep, the init's pid among them.
  init_pid=$(ctrd_ctr tasks ls 2>/dev/null | awk '$1 == "d1" { print $2 }')
  pids=$(ctrd_ctr tasks ps d1 2>&1 | awk 'NR > 1 { print $1 }')
  if [[ -n $init_pid ]] && grep -x "$init_pid" <<<"$pids" >/dev/null && (($(wc -l <<<"$pids") >= 2)); then
    ok "ctr task ps d1: the init ($init_pid) and its child"
  else
    not_ok "ctr task ps d1: the init and its child" "init '$init_pid', ps: $pids"
  fi

  # Metrics: cgroup v1 or v2 metrics with the container's pids and memory.
  if ctrd_ctr tasks metrics --format json d1 >"$CTRD_DIR/metrics.json" 2>&1 &&
    err=$(python3 - "$CTRD_DIR/metrics.json" 2>&1 <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
assert m.get("pids", {}).get("current", 0) >= 2, f"pids.current < 2 (sh and sleep): {m.get('pids')}"
mem = m.get("memory", {})
used = mem.get("usage", 0)  # cgroup v2
if isinstance(used, dict):  # cgroup v1: usage is a MemoryEntry
    used = used.get("usage", 0)
assert used > 0, f"no memory usage: {mem}"
assert "cpu" in m, "no cpu"
EOF
    ); then
    ok "ctr task metrics d1: pids and memory of the container"
  else
    not_ok "ctr task metrics d1: pids and memory of the container" "$err" \
      "$(head -c 2000 "$CTRD_DIR/metrics.json")"
  fi

  # Delete ends the shim: SIGTERM exits 7, then task and container delete.
  shim=$(ctrd_shim_pid d1)
  ctrd_ctr tasks kill -s TERM d1 >/dev/null
  if wait_until "$wait_s" task_is d1 STOPPED; then
    ok "ctr task kill -s TERM d1: STOPPED"
  else
    not_ok "ctr task kill -s TERM d1: STOPPED" "status '$(task_status d1)'"
  fi
  if out=$(ctrd_ctr tasks exec --exec-id late --fifo-dir "$CTRD_FIFO" -- d1 true \
    </dev/null 2>&1); then
    not_ok "exec in a stopped task fails" "it succeeded: $out"
  else
    ok "exec in a stopped task fails ($out)"
  fi
  ctrd_ctr tasks delete d1 >/dev/null
  ctrd_ctr containers delete d1 >/dev/null
  gone() { ! kill -0 "$1" 2>/dev/null || ctrd__is_zombie "$1"; }
  if [[ -n $shim ]] && wait_until "$wait_s" gone "$shim"; then
    ok "ctr task delete d1 ends its shim (pid $shim)"
  else
    not_ok "ctr task delete d1 ends its shim" "shim pid '$shim'"
  fi
fi

# Kill with an attached waiter: ctr run sees 128+9.
ctr --address "$CTRD_SOCK" run --runtime "$runtime" --rm=true --env PATH=/bin \
  --fifo-dir "$CTRD_FIFO" --rootfs=true -- "$rootfs" k1 sleep 1000000 \
  </dev/null >"$CTRD_DIR/k1.out" 2>&1 &
waiter=$!
ctrd_bg "$waiter"
if ! wait_until "$wait_s" task_is k1 RUNNING; then
  not_ok "attached ctr run k1 sees SIGKILL's status 137" "k1 is '$(task_status k1)'" \
    "$(<"$CTRD_DIR/k1.out")"
else
  ctrd_track k1
  ctrd_ctr tasks kill -s KILL k1 >/dev/null
  if wait_until "$wait_s" bash -c "! kill -0 $waiter 2>/dev/null"; then
    wait "$waiter"
    status=$?
  else
    status="still running after ${wait_s} s"
  fi
  if [[ $status == 137 ]]; then
    ok "attached ctr run k1 sees SIGKILL's status 137"
  else
    not_ok "attached ctr run k1 sees SIGKILL's status 137" "status $status" \
      "$(<"$CTRD_DIR/k1.out")"
  fi
fi

# Events, in containerd's order, for one container's whole life.
if ! events_start "$CTRD_DIR/events.txt" 2>"$CTRD_DIR/events.err"; then
  not_ok "ctr events: the events of ev1 in order" "$(<"$CTRD_DIR/events.err")"
else
  run_d ev1 "${long_init[@]}" &&
    ctrd_ctr tasks exec --exec-id x1 --fifo-dir "$CTRD_FIFO" -- ev1 sh -c 'exit 5' \
      </dev/null >/dev/null 2>&1
  ctrd_ctr tasks pause ev1 >/dev/null && wait_until "$wait_s" task_is ev1 PAUSED &&
    ctrd_ctr tasks resume ev1 >/dev/null
  ctrd_ctr tasks kill -s TERM ev1 >/dev/null && wait_until "$wait_s" task_is ev1 STOPPED
  ctrd_ctr tasks delete ev1 >/dev/null
  ctrd_ctr containers delete ev1 >/dev/null
  wait_until "$wait_s" has_event "$CTRD_DIR/events.txt" ev1 /containers/delete
  events_stop
  expected="/containers/create
/tasks/create
/tasks/start
/tasks/exec-added
/tasks/exec-started
/tasks/exit id=x1 status=5
/tasks/paused
/tasks/resumed
/tasks/exit id=ev1 status=7
/tasks/delete id=ev1 status=7
/containers/delete"
  got=$(events_of "$CTRD_DIR/events.txt" ev1)
  if [[ $got == "$expected" ]]; then
    ok "ctr events: the events of ev1 in order (create, start, exec, exit, pause, resume, exit, delete)"
  else
    not_ok "ctr events: the events of ev1 in order" "expected:" "$expected" "got:" "$got"
  fi
fi

# An OOM kill: a container limited to 32 MiB whose init doubles a string until the
# kernel's OOM killer ends it. containerd hears /tasks/oom (runc's shim reads the
# container's cgroup memory events; Ferry's guest agent reads them in the VM) before the
# init's exit, 128+SIGKILL. (A kill may be reported more than once: repeats are folded.)
if ! events_start "$CTRD_DIR/events-oom.txt" 2>"$CTRD_DIR/events.err"; then
  not_ok "an OOM kill: /tasks/oom of oom1 before its exit (137)" "$(<"$CTRD_DIR/events.err")"
else
  # shellcheck disable=SC2016 # the container's shell expands it
  ctrd_ctr run --runtime "$runtime" -d --memory-limit $((32 << 20)) --env PATH=/bin \
    --fifo-dir "$CTRD_FIFO" --rootfs=true -- "$rootfs" oom1 \
    sh -c 'x=0123456789abcdef; while :; do x=$x$x; done' >/dev/null 2>"$CTRD_DIR/oom1.err" &&
    ctrd_track oom1
  wait_until "$wait_s" has_event "$CTRD_DIR/events-oom.txt" oom1 "/tasks/exit id=oom1 status=137"
  events_stop
  expected="/tasks/start
/tasks/oom
/tasks/exit id=oom1 status=137"
  got=$(events_of "$CTRD_DIR/events-oom.txt" oom1 | grep -E '^/tasks/(start|oom|exit)' | uniq)
  if [[ $got == "$expected" ]]; then
    ok "an OOM kill: /tasks/oom of oom1 before its exit (137)"
  else
    not_ok "an OOM kill: /tasks/oom of oom1 before its exit (137)" "expected:" "$expected" \
      "got:" "$got" "$(<"$CTRD_DIR/oom1.err")"
  fi
  remove oom1 >/dev/null 2>&1
fi

# Two containers naming one sandbox share one shim.
run_annotated() { # run_annotated ID TYPE: a detached container of sandbox sb1
  ctrd_ctr run --runtime "$runtime" -d --env PATH=/bin --fifo-dir "$CTRD_FIFO" \
    --annotation io.kubernetes.cri.sandbox-id=sb1 \
    --annotation "io.kubernetes.cri.container-type=$2" \
    --rootfs=true -- "$rootfs" "$1" "${long_init[@]}" >/dev/null &&
    ctrd_track "$1" && wait_until "$wait_s" task_is "$1" RUNNING
}
if run_annotated sb1 sandbox 2>"$CTRD_DIR/sb.err" && run_annotated sb1c container 2>>"$CTRD_DIR/sb.err"; then
  a1=$(<"$CTRD_DIR/state/io.containerd.runtime.v2.task/$CTRD_NS/sb1/address")
  a2=$(<"$CTRD_DIR/state/io.containerd.runtime.v2.task/$CTRD_NS/sb1c/address")
  if [[ $a1 == "$a2" ]] && [[ -z $(ctrd_shim_pid sb1c) ]]; then
    ok "two containers of sandbox sb1 share one shim ($a1)"
  else
    not_ok "two containers of sandbox sb1 share one shim" "sb1 at $a1, sb1c at $a2"
  fi
else
  not_ok "two containers of sandbox sb1 share one shim" "$(<"$CTRD_DIR/sb.err")"
fi
remove sb1c
remove sb1

# containerd killed and restarted mid-run: the task runs on, answers, and its exit
# event arrives after the restart.
if ! run_d r1 "${long_init[@]}" 2>"$CTRD_DIR/r1.err"; then
  not_ok "r1 is RUNNING before containerd is killed" "$(<"$CTRD_DIR/r1.err")"
else
  shim=$(ctrd_shim_pid r1)
  ctrd_crash
  if [[ -n $shim ]] && kill -0 "$shim" 2>/dev/null; then
    ok "containerd killed with SIGKILL: the shim of r1 (pid $shim) lives on"
  else
    not_ok "containerd killed with SIGKILL: the shim of r1 lives on" "shim pid '$shim'"
  fi
  if ! ctrd_start; then
    echo "Bail out! containerd did not start again"
    exit 1
  fi
  if wait_until "$wait_s" task_is r1 RUNNING; then
    ok "after containerd's restart r1 is RUNNING"
  else
    not_ok "after containerd's restart r1 is RUNNING" "status '$(task_status r1)'"
  fi
  out=$(ctrd_ctr tasks exec --exec-id after --fifo-dir "$CTRD_FIFO" -- r1 \
    sh -c 'echo still here; exit 6' </dev/null 2>&1)
  status=$?
  if [[ $out == "still here" && $status == 6 ]]; then
    ok "after containerd's restart an exec in r1 answers"
  else
    not_ok "after containerd's restart an exec in r1 answers" "output '$out', status $status"
  fi
  if ! events_start "$CTRD_DIR/events-r1.txt" 2>"$CTRD_DIR/events.err"; then
    not_ok "after containerd's restart r1's exit event arrives" "$(<"$CTRD_DIR/events.err")"
  else
    ctrd_ctr tasks kill -s TERM r1 >/dev/null
    if wait_until "$wait_s" has_event "$CTRD_DIR/events-r1.txt" r1 "/tasks/exit id=r1 status=7"; then
      ok "after containerd's restart r1's exit event arrives (status 7)"
    else
      not_ok "after containerd's restart r1's exit event arrives" \
        "events: $(events_of "$CTRD_DIR/events-r1.txt" r1)"
    fi
    events_stop
  fi
  remove r1
fi

# Exit while containerd is down: the shim keeps the exit event until containerd is
# back. The exit has to happen with containerd down and nothing else to ask, so the
# test signals the container's init on the host; that needs the init to be a host
# process (runc), which it is not in a VM.
if ! run_d down1 "${long_init[@]}" 2>"$CTRD_DIR/down1.err"; then
  not_ok "an exit while containerd is down is reported after its restart" "$(<"$CTRD_DIR/down1.err")"
else
  shim=$(ctrd_shim_pid down1)
  init_pid=$(ctrd_ctr tasks ls 2>/dev/null | awk '$1 == "down1" { print $2 }')
  if [[ -z $shim || -z $init_pid ]] || ! ctrd_descendants "$shim" | grep -x "$init_pid" >/dev/null; then
    skip "an exit while containerd is down is reported after its restart" \
      "the task's pid $init_pid is not a host process under its shim (a VM's)"
  else
    ctrd_crash
    kill -TERM "$init_pid"
    init_gone() { ! kill -0 "$init_pid" 2>/dev/null || ctrd__is_zombie "$init_pid"; }
    wait_until "$wait_s" init_gone
    if ! ctrd_start; then
      echo "Bail out! containerd did not start again"
      exit 1
    fi
    if events_start "$CTRD_DIR/events-down1.txt" 2>"$CTRD_DIR/events.err" &&
      wait_until "$wait_s" has_event "$CTRD_DIR/events-down1.txt" down1 \
        "/tasks/exit id=down1 status=7" && task_is down1 STOPPED; then
      ok "an exit while containerd is down is reported after its restart (status 7, STOPPED)"
    else
      not_ok "an exit while containerd is down is reported after its restart" \
        "status '$(task_status down1)'" "$(<"$CTRD_DIR/events.err")" \
        "events: $(events_of "$CTRD_DIR/events-down1.txt" down1)"
    fi
    events_stop
  fi
  remove down1
fi

# The shim killed with SIGKILL: containerd sees it go, runs the shim binary's `delete`
# for the bundle, and the task is gone with everything the shim ran (container
# processes, a VM) and every mount; `ctr task delete` has nothing left to do.
if ! run_d sk1 "${long_init[@]}" 2>"$CTRD_DIR/sk1.err"; then
  not_ok "shim killed with SIGKILL: its task and processes are cleaned up" "$(<"$CTRD_DIR/sk1.err")"
else
  shim=$(ctrd_shim_pid sk1)
  mapfile -t below < <(ctrd_descendants "$shim")
  sock=$(<"$CTRD_DIR/state/io.containerd.runtime.v2.task/$CTRD_NS/sk1/address")
  sock=${sock#unix://}
  kill -KILL "$shim"
  none_alive() {
    local p
    for p in "$@"; do
      kill -0 "$p" 2>/dev/null && ! ctrd__is_zombie "$p" && return 1
    done
    return 0
  }
  ctrd_ctr tasks delete sk1 >/dev/null 2>&1 # if containerd has not already
  if wait_until "$wait_s" bash -c "! ctr --address '$CTRD_SOCK' tasks ls -q | grep -qx sk1" &&
    wait_until "$wait_s" none_alive "${below[@]}" &&
    [[ -z $(ctrd__mounts_under "$CTRD_DIR/state/io.containerd.runtime.v2.task/$CTRD_NS/sk1") ]]; then
    ok "shim killed with SIGKILL: task gone, its ${#below[@]} processes ended, no mount left"
  else
    not_ok "shim killed with SIGKILL: its task and processes are cleaned up" \
      "tasks: $(ctrd_ctr tasks ls -q | tr '\n' ' ')" "alive of ${below[*]}:" \
      "$(for p in "${below[@]}"; do kill -0 "$p" 2>/dev/null && tr '\0' ' ' <"/proc/$p/cmdline"; done)"
  fi
  if [[ $runtime == io.containerd.runc.v2 ]]; then
    # runc's shim removes its socket only on its own way out, and containerd 1.6's
    # cleanup after a dead shim does not either: the baseline leaves it.
    skip "shim killed with SIGKILL: its socket is removed" "runc's shim leaves $sock"
    rm -f "$sock"
  elif [[ -e $sock ]]; then
    not_ok "shim killed with SIGKILL: its socket is removed" "$sock is still there"
  else
    ok "shim killed with SIGKILL: its socket is removed"
  fi
  ctrd_ctr containers delete sk1 >/dev/null
fi

# A rootfs that does not exist: an error from ctr run, and no shim left for it.
out=$(ctrd_ctr run --runtime "$runtime" --rm=true --env PATH=/bin --fifo-dir "$CTRD_FIFO" \
  --rootfs=true -- "$CTRD_DIR/no-such-rootfs" nr1 true </dev/null 2>&1)
status=$?
no_shim_for() { [[ -z $(ctrd_shim_pid "$1") ]]; }
if ((status != 0)) && wait_until "$wait_s" no_shim_for nr1; then
  ok "a missing rootfs fails ctr run (status $status) and leaves no shim"
else
  not_ok "a missing rootfs fails ctr run and leaves no shim" "status $status: $out" \
    "shim: $(ctrd_shim_pid nr1)"
fi
remove nr1 >/dev/null 2>&1

# Nothing left: containerd stopped by pid, no shim, mount or shim socket.
# (The diagnostics go to stderr: the temp dir is gone afterwards.)
if ctrd_finish; then
  ok "containerd stopped; no shim, mount or shim socket left behind"
else
  not_ok "containerd stopped; no shim, mount or shim socket left behind" \
    "see stderr for what was left and removed"
fi
echo "1..$n"

#!/bin/bash
# The `ferry` command driven as a person or a script would (docs/cli.md): run (attached
# and -d), exec (attached, -i, -d), ps, logs, kill, stop, rm, inspect, with their output
# and exit codes; a second `ferry` process sees the first one's sandboxes; a shim killed
# with SIGKILL shows as dead and `ferry rm` leaves nothing behind; bad input gets a clear
# message and a non-zero status. Prints TAP; skips as a whole when not root or without
# QEMU or the guest image.
#
#   test-ferry-cli.sh SOURCE_ROOT BUILDDIR
set -uo pipefail
src=$(cd "${1:?usage: test-ferry-cli.sh SOURCE_ROOT BUILDDIR}" && pwd)
build=$(cd "${2:?usage: test-ferry-cli.sh SOURCE_ROOT BUILDDIR}" && pwd)
image=${FERRY_IMAGE_DIR:-${FERRY_IMAGE_DIR_DEFAULT:-$build/image}}
[[ $(id -u) == 0 ]] || { echo "1..0 # SKIP needs root (the shim runs QEMU and crun)"; exit 0; }
command -v qemu-system-x86_64 >/dev/null || { echo "1..0 # SKIP qemu-system-x86_64 is not installed"; exit 0; }
[[ -f $image/vmlinux ]] || { echo "1..0 # SKIP no guest image in $image (make image)"; exit 0; }

dir=$(mktemp -d /tmp/ferry-cli.XXXXXX)
root=$dir/root
export FERRY_SHIM_CONFIG=$dir/shim.json
# shellcheck source=containerd-harness.sh
source "$src/tests/scripts/containerd-harness.sh" # for ctrd_ferry_shim_config only
ctrd_ferry_shim_config "$image" "$FERRY_SHIM_CONFIG"
ferry() { "$build/cli/ferry" --root "$root" "$@"; }
cleanup() {
  # Whatever a failed case left: every sandbox removed through ferry, then the directory.
  for s in "$root"/sandboxes/*; do [[ -d $s ]] && ferry rm -f "$(basename "$s")" >/dev/null 2>&1; done
  rm -rf "$dir"
}
trap cleanup EXIT
python3 "$src/tests/scripts/busybox-image.py" rootfs "$dir/rootfs" --busybox /bin/busybox >/dev/null || exit 1

# shellcheck source=tap.sh
source "$src/tests/scripts/tap.sh"

out=$(ferry run "$dir/rootfs" sh -c 'echo hello; exit 6' 2>"$dir/err"); st=$?
check "run attached: output and the container's status" 6 hello "$st" "$out" "$(cat "$dir/err")"
out=$(ferry run "$dir/rootfs" sh -c 'echo to-stderr >&2' 2>&1 >/dev/null); st=$?
tcg_notice=$(grep -c '^ferry: /dev/kvm is not usable here: the VM runs under TCG' <<<"$out")
out=$(grep -v '^ferry: /dev/kvm' <<<"$out")
check "run attached: stderr apart" 0 to-stderr "$st" "$out"
if grep -qE 'vmx|svm' /proc/cpuinfo && [[ -w /dev/kvm ]]; then
  ok "the TCG notice # SKIP this host may use KVM"
else
  check "run under TCG says so once, on stderr" 0 1 0 "$tcg_notice"
fi
# A tar of a root file system.
tar -cf "$dir/rootfs.tar" -C "$dir/rootfs" .
out=$(ferry run "$dir/rootfs.tar" sh -c 'echo from-tar' 2>/dev/null); st=$?
check "run from a tar of a rootfs" 0 from-tar "$st" "$out"
echo "not a tar" >"$dir/junk.tar"
out=$(ferry run "$dir/junk.tar" true 2>&1); st=$?
if [[ $st == 125 && $out == *"is neither a directory nor a tar archive of one"* ]]; then ok "a file that is not a tar"; else not_ok "a file that is not a tar" "status $st" "$out"; fi
out=$(echo piped | ferry run -i "$dir/rootfs" cat); st=$?
check "run -i: stdin reaches the container, its end is EOF" 0 piped "$st" "$out"
out=$(ferry run -e GREETING=hi -w /tmp -u 1000:1000 "$dir/rootfs" sh -c 'echo $GREETING $(pwd) $(id -u):$(id -g)'); st=$?
check "run -e -w -u" 0 "hi /tmp 1000:1000" "$st" "$out"
out=$(ferry run -d --name web --memory 300m "$dir/rootfs" sh -c 'echo up; echo warn >&2; while true; do sleep 1; done'); st=$?
check "run -d prints the name" 0 web "$st" "$out"
out=$(ferry ps | awk '$1 == "web" { print $2 }'); check "ps lists it running" 0 running 0 "$out"
out=$("$build/cli/ferry" --root "$root" ps --json | python3 -c 'import json,sys; print([s["Status"] for s in json.load(sys.stdin) if s["Name"] == "web"][0])')
check "a second ferry process sees it (ps --json)" 0 running 0 "$out"
out=$(ferry exec web sh -c 'echo in-exec; exit 4'); st=$?
check "exec: output and status" 4 in-exec "$st" "$out"
out=$(echo data | ferry exec -i web cat); st=$?
check "exec -i" 0 data "$st" "$out"
out=$(ferry exec web no-such-program 2>/dev/null); st=$?
check "exec of a missing program is 127" 127 "" "$st" "$out"
out=$(ferry exec web /etc/passwd 2>/dev/null); st=$?
check "exec of a file that cannot run is 126" 126 "" "$st" "$out"
for _ in $(seq 50); do [[ $(ferry logs web 2>/dev/null) == up ]] && break; sleep 0.1; done
out=$(ferry logs web 2>/dev/null); check "logs: the detached container's stdout" 0 up 0 "$out"
out=$(ferry logs web 2>&1 >/dev/null); check "logs: its stderr on stderr" 0 warn 0 "$out"
out=$(ferry inspect web | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["State"]["Status"], d["Spec"]["hostname"])')
check "inspect: state and spec" 0 "running web" 0 "$out"
out=$(ferry inspect web | python3 -c '
import json, sys
d = json.load(sys.stdin)
disks = [a for c in d["VM"]["VirtualMachine"]["Devices"]["Scsi"].values() for a in c["Attachments"].values()]
print(d["Resources"]["MemoryMB"], len(disks) >= 1, len(d["Processes"]) >= 1)')
check "inspect: the VM document (--memory 300, the layer disk) and the processes" 0 "300 True True" 0 "$out"
out=$(ferry run --name web "$dir/rootfs" true 2>&1); st=$?
check "a second sandbox with one name is refused" 125 'ferry: run: a sandbox named "web" exists already (ferry rm web)' "$st" "$out"
out=$(ferry rm web 2>&1); st=$?
check "rm of a running sandbox is refused" 125 'ferry: rm: sandbox "web" is running (ferry stop web, or ferry rm -f web)' "$st" "$out"
# The container's init is its pid namespace's init: SIGTERM reaches it only once its trap
# is set, which it says in its log.
ferry run -d --name k2 "$dir/rootfs" sh -c 'trap "exit 9" TERM; echo trapped; while true; do sleep 1; done' >/dev/null 2>&1
for _ in $(seq 100); do [[ $(ferry logs k2 2>/dev/null) == trapped ]] && break; sleep 0.1; done
ferry kill -s TERM k2; st=$?
for _ in $(seq 100); do [[ $(ferry ps -a | awk '$1 == "k2" { print $2 }') == stopped ]] && break; sleep 0.1; done
out=$(ferry ps -a | awk '$1 == "k2" { print $2 }')
check "kill -s TERM: the container stops" 0 stopped "$st" "$out"
ferry rm k2
ferry stop -t 2 web; st=$?
out=$(ferry ps -a | awk '$1 == "web" { print $2 }')
check "stop: the sandbox is stopped" 0 stopped "$st" "$out"
ferry rm web; st=$?
out=$(ferry ps -a | awk '$1 == "web"'); check "rm removes it" 0 "" "$st" "$out"

ferry run -d --name lf "$dir/rootfs" sh -c 'for i in 1 2 3; do echo line$i; sleep 1; done; exit 2' >/dev/null
out=$(ferry logs -f lf); st=$?
check "run -d, then logs -f follows the output until the exit" 0 $'line1\nline2\nline3' "$st" "$out"
ferry rm lf
# --since: only the lines logged from a time on (the container writes its second line
# only once told to, after the time was taken).
ferry run -d --name ls "$dir/rootfs" sh -c 'echo early; while [ ! -e /go ]; do sleep 0.1; done; echo late; sleep 1000' >/dev/null 2>&1
for _ in $(seq 100); do [[ $(ferry logs ls 2>/dev/null) == early ]] && break; sleep 0.1; done
since=$(date -u +%Y-%m-%dT%H:%M:%S.%6NZ)
ferry exec ls touch /go
for _ in $(seq 100); do [[ $(ferry logs ls 2>/dev/null | tail -n 1) == late ]] && break; sleep 0.1; done
out=$(ferry logs --since "$since" ls); check "logs --since TIME" 0 late 0 "$out"
out=$(ferry logs --since 1x ls 2>&1); st=$?
check "logs --since with a bad time" 125 "ferry: logs: --since 1x: a duration (30s, 5m, 2h) or an RFC 3339 time" "$st" "$out"
ferry rm -f ls
out=$(ferry help run | head -n 1); check "help run" 0 "usage: ferry run [OPTIONS] ROOTFS [CMD [ARG...]]" 0 "$out"
out=$(ferry help nope 2>&1); st=$?; check "help of an unknown command" 125 "ferry: no command nope (ferry help lists them)" "$st" "$out"

# A shim killed with SIGKILL: ps says so, rm cleans up after it (its VM too).
ferry run -d --name k1 "$dir/rootfs" sleep 1000 >/dev/null
shim_pid=$(ferry inspect k1 | python3 -c 'import json,sys; print(json.load(sys.stdin).get("ShimPid", ""))')
qemu_pid=$(cat "$root/sandboxes/k1/bundle/qemu.pid" 2>/dev/null)
if [[ -n $shim_pid ]]; then kill -KILL "$shim_pid"; fi
for _ in $(seq 50); do kill -0 "$shim_pid" 2>/dev/null || break; sleep 0.1; done
out=$(ferry ps -a | awk '$1 == "k1" { print $2 }'); check "a killed shim shows as dead" 0 dead 0 "$out"
ferry rm k1; st=$?
left=""
[[ -n $qemu_pid ]] && kill -0 "$qemu_pid" 2>/dev/null && left="QEMU $qemu_pid"
[[ -e $root/sandboxes/k1 ]] && left="$left the sandbox directory"
check "rm after a dead shim leaves nothing (QEMU $qemu_pid)" 0 "" "$st" "$left"

# -t: a terminal of the local window's size, the exit status through, the local terminal
# restored (script(1) gives this test a terminal).
out=$(script -qec "stty rows 30 cols 100; \"$build/cli/ferry\" --root \"$root\" run -t \"$dir/rootfs\" sh -c 'stty size; tty; exit 5'; echo rc=\$?" /dev/null | tr -d '\r' | grep -v '^ferry: /dev/kvm')
want=$'30 100\n/dev/pts/0\nrc=5'
check "run -t: the window's size, a pty, the status" 0 "$want" 0 "$out"

# As a person would, in tmux: type a command and read its output on the screen, resize
# the window and see stty size follow, exit and find the terminal as it was.
if command -v tmux >/dev/null; then
  sock=$dir/tmux.sock
  tmx() { tmux -S "$sock" "$@"; }
  tmx new-session -d -x 100 -y 30 -s demo \
    "stty -g >'$dir/before'; '$build/cli/ferry' --root '$root' run -it --name tty1 '$dir/rootfs' sh; stty -g >'$dir/after'; echo DONE; sleep 600"
  screen() { tmx capture-pane -p -t demo; }
  wait_screen() { for _ in $(seq 300); do screen | grep -q -- "$1" && return 0; sleep 0.1; done; return 1; }
  wait_screen '#' || true # the shell's prompt
  tmx send-keys -t demo 'echo typed-$((6*7))' Enter
  if wait_screen '^typed-42'; then ok "tmux: a typed command's output on the screen"; else not_ok "tmux: a typed command's output on the screen" "$(screen | tail -n 5)"; fi
  tmx resize-window -t demo -x 120 -y 40
  # The resize reaches the container's terminal asynchronously (tmux's SIGWINCH, then
  # ResizePty): ask again until the answer shows it, a bounded number of times.
  resized=0
  for _ in $(seq 20); do
    tmx send-keys -t demo 'stty size' Enter
    for _ in $(seq 10); do screen | grep -q '^40 120' && { resized=1; break; }; sleep 0.1; done
    [[ $resized == 1 ]] && break
  done
  if [[ $resized == 1 ]]; then ok "tmux: stty size follows a resize"; else not_ok "tmux: stty size follows a resize" "$(screen | tail -n 5)"; fi
  tmx send-keys -t demo 'exit' Enter
  if wait_screen '^DONE' && cmp -s "$dir/before" "$dir/after"; then
    ok "tmux: exit restores the terminal"
  else
    not_ok "tmux: exit restores the terminal" "before $(cat "$dir/before" 2>/dev/null)" "after $(cat "$dir/after" 2>/dev/null)"
  fi
  tmx kill-server 2>/dev/null
else
  ok "tmux terminal session # SKIP tmux is not installed (scripts/install-deps.sh shim)"
fi

out=$(ferry exec nope true 2>&1); st=$?
check "an unknown name" 125 'ferry: no sandbox named "nope" (ferry ps -a lists them)' "$st" "$out"
out=$(ferry run "$dir/missing" true 2>&1); st=$?
check "a missing rootfs" 125 "ferry: run: rootfs $dir/missing is neither a directory nor a tar archive of one" "$st" "$out"
out=$(ferry run /etc true 2>&1); st=$?
check "a directory that is not a rootfs" 125 "ferry: run: /etc does not look like a root file system (no bin/, usr/bin/ or sbin/)" "$st" "$out"
out=$(ferry run --bogus "$dir/rootfs" 2>&1); st=$?
check "a bad flag" 125 "ferry: run: unknown or incomplete option --bogus (ferry help run)" "$st" "$out"
out=$(ferry run --memory lots "$dir/rootfs" true 2>&1); st=$?
check "a bad --memory" 125 "ferry: run: --memory lots: a size in MB, or with a unit (512m, 1g)" "$st" "$out"
out=$(ferry kill -s NOPE web 2>&1); st=$?
check "a bad signal" 125 "ferry: kill: NOPE is not a signal" "$st" "$out"
out=$(ferry certs "$dir/certs" --host hosta --host 10.199.0.2); st=$?
check "certs: a directory per host" 0 "$dir/certs/hosta
$dir/certs/10.199.0.2" "$st" "$out"
out=$(cd "$dir/certs/hosta" && ls | tr '\n' ' ' && stat -c %a client-key.pem); st=$?
check "certs: QEMU's layout, keys private" 0 "ca-cert.pem client-cert.pem client-key.pem server-cert.pem server-key.pem 600" "$st" "$out"
out=$(ferry certs "$dir/certs" 2>&1); st=$?
check "certs without a host" 125 "ferry: certs: usage: ferry certs DIR --host NAME [--host NAME]... (ferry help certs)" "$st" "$out"
out=$(ferry certs "$dir/certs" --host 'a b' 2>&1); st=$?
check "certs of a bad host name" 125 'ferry: certs: "a b" is not a host name or an IP address' "$st" "$out"
left=$(ls "$root/sandboxes" 2>/dev/null)
check "nothing left running or on disk" 0 "" 0 "$left"
echo "1..$n"
exit $failed

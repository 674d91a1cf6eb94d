#!/bin/bash
# `ferry migrate` and `ferry receive` (docs/migrate.md) between two hosts made on this
# machine: two network namespaces joined by a veth pair, each with its own ferry root,
# over TCP across the veth, TLS on (certificates from `ferry certs`): a sandbox whose
# init prints numbered lines and an exec'd process that goes on printing, moved
# A -> B -> A -> B while it runs. Every host's logs, in order, are the numbered lines
# once each; `ferry ps` shows it running on the last host only; the exec'd process still
# runs there. Refused before anything moves, the sandbox running on as before: a
# migrate with a certificate from another CA, one with no TLS against a TLS receiver, a
# name the receiver has already. Prints TAP; skips as a whole when not root or without
# QEMU or the guest image.
#
#   test-ferry-migrate.sh SOURCE_ROOT BUILDDIR
set -uo pipefail
src=$(cd "${1:?usage: test-ferry-migrate.sh SOURCE_ROOT BUILDDIR}" && pwd)
build=$(cd "${2:?usage: test-ferry-migrate.sh SOURCE_ROOT BUILDDIR}" && pwd)
image=${FERRY_IMAGE_DIR:-${FERRY_IMAGE_DIR_DEFAULT:-$build/image}}
[[ $(id -u) == 0 ]] || { echo "1..0 # SKIP needs root (the shim runs QEMU and crun)"; exit 0; }
command -v qemu-system-x86_64 >/dev/null || { echo "1..0 # SKIP qemu-system-x86_64 is not installed"; exit 0; }
[[ -f $image/vmlinux ]] || { echo "1..0 # SKIP no guest image in $image (make image)"; exit 0; }
command -v ip >/dev/null || { echo "1..0 # SKIP ip (iproute2) is not installed"; exit 0; }

dir=$(mktemp -d /tmp/ferry-migrate.XXXXXX)
export FERRY_SHIM_CONFIG=$dir/shim.json
# shellcheck source=containerd-harness.sh
source "$src/tests/scripts/containerd-harness.sh" # for ctrd_ferry_shim_config only
ctrd_ferry_shim_config "$image" "$FERRY_SHIM_CONFIG"
# Two hosts: namespaces of this run's own (the pid keeps them apart from other work).
ns_A=ferry-mig-a-$$
ns_B=ferry-mig-b-$$
ip_A=10.199.$(($$ % 200 + 20)).1
ip_B=10.199.$(($$ % 200 + 20)).2
ferry() { local h=$1; shift; local ns=ns_$h; ip netns exec "${!ns}" "$build/cli/ferry" --root "$dir/$h" "$@"; }
# bg HOST ARGS...: ferry in HOST's namespace, in the background, its own pid in $!
# (ip netns exec becomes the command; a backgrounded function would be a subshell).
bg() { local h=$1; shift; local ns=ns_$h; ip netns exec "${!ns}" "$build/cli/ferry" --root "$dir/$h" "$@" & }
receivers=()
cleanup() {
  for pid in "${receivers[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
  for r in A B; do
    for s in "$dir/$r"/sandboxes/*; do [[ -d $s ]] && ferry "$r" rm -f "$(basename "$s")" >/dev/null 2>&1; done
  done
  ip netns del "$ns_A" 2>/dev/null
  ip netns del "$ns_B" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT
if ! { ip netns add "$ns_A" && ip netns add "$ns_B" &&
       ip link add "fm$$a" type veth peer name "fm$$b" &&
       ip link set "fm$$a" netns "$ns_A" && ip link set "fm$$b" netns "$ns_B" &&
       ip -n "$ns_A" addr add "$ip_A/24" dev "fm$$a" && ip -n "$ns_B" addr add "$ip_B/24" dev "fm$$b" &&
       ip -n "$ns_A" link set "fm$$a" up && ip -n "$ns_B" link set "fm$$b" up &&
       ip -n "$ns_A" link set lo up && ip -n "$ns_B" link set lo up; } 2>"$dir/netns.err"; then
  echo "1..0 # SKIP network namespaces and veth pairs are not available here: $(head -c 200 "$dir/netns.err")"
  exit 0
fi
python3 "$src/tests/scripts/busybox-image.py" rootfs "$dir/rootfs" --busybox /bin/busybox >/dev/null || exit 1

# shellcheck source=tap.sh
source "$src/tests/scripts/tap.sh"

"$build/cli/ferry" certs "$dir/certs" --host "$ip_A" --host "$ip_B" >/dev/null
"$build/cli/ferry" certs "$dir/other" --host "$ip_A" >/dev/null
tls_A=$dir/certs/$ip_A
tls_B=$dir/certs/$ip_B
# receive HOST: a receiver for HOST on a free port of its address; the port in port_HOST.
receive() {
  local addr=ip_$1 tls=tls_$1
  bg "$1" receive --listen "${!addr}:0" --tls-dir "${!tls}" >"$dir/rx-$1.out" 2>"$dir/rx-$1.err"
  receivers+=($!)
  printf -v "rx_pid_$1" '%s' $!
  for _ in $(seq 100); do grep -q listening "$dir/rx-$1.out" 2>/dev/null && break; sleep 0.05; done
  printf -v "port_$1" '%s' "$(sed -n 's/^listening on .*://p' "$dir/rx-$1.out")"
}
receive A
receive B
# The numbered lines of every host's logs, in the order they were written.
all_lines() {
  python3 - "$dir" <<'PY'
import glob, json, sys
d = sys.argv[1]
moved = sorted(glob.glob(d + '/[AB]/moved/web-*/logs/init.log'), key=lambda p: int(p.split('/moved/web-')[1].split('/')[0]))
text = ''
for p in moved + glob.glob(d + '/[AB]/sandboxes/web/logs/init.log'):
    for line in open(p):
        text += json.loads(line)['log']
lines = [l for l in text.split('\n') if l]
bad = [i for i, l in enumerate(lines) if l != 'line %d' % (i + 1)]
print('%d %s' % (len(lines), 'exact' if not bad else 'broken at line %d (%r)' % (bad[0] + 1, lines[bad[0]])))
PY
}

out=$(ferry A run -d --name web "$dir/rootfs" sh -c 'i=0; while :; do i=$((i+1)); echo "line $i"; sleep 0.02; done' 2>/dev/null); st=$?
check "run -d on A" 0 web "$st" "$out"
out=$(ferry A exec -d web sh -c 'while :; do echo tick; sleep 0.1; done' 2>/dev/null); st=$?
[[ $st == 0 && -n $out ]] && ok "an exec'd process on A" || not_ok "an exec'd process on A" "status $st, out '$out'"
ticker=$out
sleep 1

# Refused before anything moves.
out=$(ferry A migrate web --to "$ip_B:$port_B" --tls-dir "$dir/other/$ip_A" 2>&1); st=$?
[[ $st == 125 && $out == *"the control connection"* ]] && ok "a certificate from another CA is refused" || not_ok "a certificate from another CA is refused" "status $st" "$out"
out=$(ferry A migrate web --to "$ip_B:$port_B" --insecure 2>&1); st=$?
[[ $st == 125 ]] && ok "no TLS against a TLS receiver is refused" || not_ok "no TLS against a TLS receiver is refused" "status $st" "$out"
out=$(ferry A ps --json | python3 -c 'import json,sys; print(" ".join(s["Name"] + ":" + s["Status"] for s in json.load(sys.stdin)))'); st=$?
check "still running on A after the refusals" 0 "web:running" "$st" "$out"

# A -> B -> A -> B.
hop=0
for to in B A B; do
  hop=$((hop + 1))
  from=$([[ $to == B ]] && echo A || echo B)
  port_var=port_$to addr_var=ip_$to tls_var=tls_$from
  out=$(ferry "$from" migrate web --to "${!addr_var}:${!port_var}" --tls-dir "${!tls_var}" 2>"$dir/migrate-$hop.err"); st=$?
  [[ $st == 0 && $out == "migrated in "* ]] && ok "hop $hop: $from -> $to: $out" || not_ok "hop $hop: $from -> $to" "status $st" "$out" "$(cat "$dir/migrate-$hop.err")"
  out=$(ferry "$to" ps --json | python3 -c 'import json,sys; print(" ".join(s["Name"] + ":" + s["Status"] for s in json.load(sys.stdin)))')
  check "hop $hop: ferry ps on $to" 0 "web:running" 0 "$out"
  out=$(ferry "$from" ps -a --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
  check "hop $hop: nothing left on $from" 0 0 0 "$out"
  sleep 1
done

read -r count verdict < <(all_lines)
[[ $verdict == exact && $count -gt 50 ]] && ok "every host's logs in order: $count numbered lines, none missing or twice" || not_ok "every host's logs in order" "$count lines: $verdict"
out=$(ferry B exec web sh -c 'echo still here'); st=$?
check "exec on the last host" 0 "still here" "$st" "$out"
before=$(grep -c tick "$dir/B/sandboxes/web/logs/$ticker.log" 2>/dev/null || echo 0)
sleep 1
after=$(grep -c tick "$dir/B/sandboxes/web/logs/$ticker.log" 2>/dev/null || echo 0)
[[ $after -gt $before && $before -gt 0 ]] && ok "the exec'd process goes on on the last host ($before, then $after ticks)" || not_ok "the exec'd process goes on on the last host" "$before then $after"

# Faults during B -> A, each ending with the sandbox running on B only: the transfer slowed
# down (8 MB/s) so that it lands in it.
slow_migrate() { # slow_migrate: B -> A in the background; the pid in mig_pid
  bg B migrate web --to "$ip_A:$port_A" --tls-dir "$tls_B" --bandwidth 8 >"$dir/bg.out" 2>"$dir/bg.err"
  mig_pid=$!
  for _ in $(seq 400); do grep -q '^transfer' "$dir/bg.err" 2>/dev/null && break; sleep 0.05; done
  sleep 1
}
runs_on_b_only() {
  local b a
  b=$(ferry B ps --json | python3 -c 'import json,sys; print(" ".join(s["Name"] + ":" + s["Status"] for s in json.load(sys.stdin)))')
  a=$(ferry A ps -a --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
  check "$1: it runs on B only" 0 "web:running 0" 0 "$b $a"
}
slow_migrate
kill -INT "$mig_pid"
wait "$mig_pid"; st=$?
out=$(cat "$dir/bg.out")
[[ $st == 125 && $out == recovered* ]] && ok "Ctrl-C during the transfer: $out" || not_ok "Ctrl-C during the transfer" "status $st" "$out" "$(tail -3 "$dir/bg.err")"
runs_on_b_only "Ctrl-C"

slow_migrate
kill "$rx_pid_A"; wait "$rx_pid_A" 2>/dev/null
wait "$mig_pid"; st=$?
out=$(cat "$dir/bg.out")
[[ $st == 125 && $out == recovered* ]] && ok "the receiver killed during the transfer: $out" || not_ok "the receiver killed during the transfer" "status $st" "$out" "$(tail -3 "$dir/bg.err")"
receive A # a new one discards what the killed one left
runs_on_b_only "receiver killed"

slow_migrate
qemu=$(cat "$dir"/A/sandboxes/web/bundle/qemu.pid 2>/dev/null)
if [[ -n $qemu ]] && grep -q qemu-system "/proc/$qemu/cmdline" 2>/dev/null; then kill -KILL "$qemu"; fi
wait "$mig_pid"; st=$?
out=$(cat "$dir/bg.out")
[[ $st == 125 && $out == recovered* && -n $qemu ]] && ok "the destination QEMU killed during the transfer: $out" || not_ok "the destination QEMU killed during the transfer" "status $st, qemu '$qemu'" "$out" "$(tail -3 "$dir/bg.err")"
runs_on_b_only "destination QEMU killed"
# A second migrate of a sandbox that is migrating: refused, the first one goes on (and
# is cancelled here).
slow_migrate
out=$(ferry B migrate web --to "$ip_A:$port_A" --tls-dir "$tls_B" 2>&1); st=$?
[[ $st == 125 && $out == recovered* ]] && ok "a second migrate while one runs is refused: ${out##*: }" || not_ok "a second migrate while one runs is refused" "status $st" "$out"
kill -INT "$mig_pid"
wait "$mig_pid"; st=$?
[[ $st == 125 ]] && ok "the first one, cancelled, recovers" || not_ok "the first one, cancelled, recovers" "status $st" "$(cat "$dir/bg.out")"
runs_on_b_only "a second migrate"

# The link cut during the transfer: no memory moves, the migrate gives up (30 s) and the
# source takes its guest back; the receiver abandons the silent session (60 s).
slow_migrate
ip -n "$ns_B" link set "fm$$b" down
wait "$mig_pid"; st=$?
ip -n "$ns_B" link set "fm$$b" up
out=$(cat "$dir/bg.out")
[[ $st == 125 && $out == recovered* ]] && ok "the link cut during the transfer: ${out%%: the sandbox*}: ${out##*: }" || not_ok "the link cut during the transfer" "status $st" "$out" "$(tail -3 "$dir/bg.err")"
for _ in $(seq 120); do
  [[ $(ferry A ps -a --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))') == 0 ]] && break
  sleep 1
done
runs_on_b_only "link cut"

read -r count verdict < <(all_lines)
[[ $verdict == exact ]] && ok "after the faults, every host's logs in order: $count lines" || not_ok "after the faults, every host's logs in order" "$count lines: $verdict"

# The receiver refuses a name it has already; nothing changes on either side.
ferry A run -d --name web "$dir/rootfs" sh -c 'sleep 1000' >/dev/null 2>&1
out=$(ferry A migrate web --to "$ip_B:$port_B" --tls-dir "$tls_A" 2>&1); st=$?
[[ $st == 125 && $out == *"exists here already"* ]] && ok "a name the receiver has is refused" || not_ok "a name the receiver has is refused" "status $st" "$out"
out=$(ferry A ps --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
check "it still runs on A" 0 1 0 "$out"
echo "1..$n"
exit $failed

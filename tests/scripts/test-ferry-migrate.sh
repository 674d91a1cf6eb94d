#!/bin/bash
# `ferry migrate` and `ferry receive` (docs/migrate.md) between two ferry roots on this
# host over TCP on 127.0.0.1, TLS on (certificates from `ferry certs`): a sandbox whose
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

dir=$(mktemp -d /tmp/ferry-migrate.XXXXXX)
export FERRY_SHIM_CONFIG=$dir/shim.json
# shellcheck source=containerd-harness.sh
source "$src/tests/scripts/containerd-harness.sh" # for ctrd_ferry_shim_config only
ctrd_ferry_shim_config "$image" "$FERRY_SHIM_CONFIG"
ferry() { local root=$1; shift; "$build/cli/ferry" --root "$dir/$root" "$@"; }
receivers=()
cleanup() {
  for pid in "${receivers[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
  for r in A B; do
    for s in "$dir/$r"/sandboxes/*; do [[ -d $s ]] && ferry "$r" rm -f "$(basename "$s")" >/dev/null 2>&1; done
  done
  rm -rf "$dir"
}
trap cleanup EXIT
python3 "$src/tests/scripts/busybox-image.py" rootfs "$dir/rootfs" --busybox /bin/busybox >/dev/null || exit 1

n=0
failed=0
ok() { n=$((n + 1)); echo "ok $n - $*"; }
not_ok() { n=$((n + 1)); failed=1; echo "not ok $n - $1"; shift; for l in "$@"; do echo "# $l"; done; }
check() { # check DESCRIPTION WANT_STATUS WANT_OUT STATUS OUT [ERR]
  if [[ $4 == "$2" && $5 == "$3" ]]; then ok "$1"; else not_ok "$1" "status $4 (want $2)" "out '$5' (want '$3')" "${6:-}"; fi
}

"$build/cli/ferry" certs "$dir/certs" --host 127.0.0.1 >/dev/null
"$build/cli/ferry" certs "$dir/other" --host 127.0.0.1 >/dev/null
tls=$dir/certs/127.0.0.1
# receive ROOT: a receiver for ROOT on a free port; its port in port_ROOT.
receive() {
  ferry "$1" receive --listen 127.0.0.1:0 --tls-dir "$tls" >"$dir/rx-$1.out" 2>"$dir/rx-$1.err" &
  receivers+=($!)
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
out=$(ferry A migrate web --to "127.0.0.1:$port_B" --tls-dir "$dir/other/127.0.0.1" 2>&1); st=$?
[[ $st == 125 && $out == *"the control connection"* ]] && ok "a certificate from another CA is refused" || not_ok "a certificate from another CA is refused" "status $st" "$out"
out=$(ferry A migrate web --to "127.0.0.1:$port_B" --insecure 2>&1); st=$?
[[ $st == 125 ]] && ok "no TLS against a TLS receiver is refused" || not_ok "no TLS against a TLS receiver is refused" "status $st" "$out"
out=$(ferry A ps --json | python3 -c 'import json,sys; print(" ".join(s["Name"] + ":" + s["Status"] for s in json.load(sys.stdin)))'); st=$?
check "still running on A after the refusals" 0 "web:running" "$st" "$out"

# A -> B -> A -> B.
hop=0
for to in B A B; do
  hop=$((hop + 1))
  from=$([[ $to == B ]] && echo A || echo B)
  port_var=port_$to
  out=$(ferry "$from" migrate web --to "127.0.0.1:${!port_var}" --tls-dir "$tls" 2>"$dir/migrate-$hop.err"); st=$?
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

# The receiver refuses a name it has already; nothing changes on either side.
ferry A run -d --name web "$dir/rootfs" sh -c 'sleep 1000' >/dev/null 2>&1
out=$(ferry A migrate web --to "127.0.0.1:$port_B" --tls-dir "$tls" 2>&1); st=$?
[[ $st == 125 && $out == *"exists here already"* ]] && ok "a name the receiver has is refused" || not_ok "a name the receiver has is refused" "status $st" "$out"
out=$(ferry A ps --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
check "it still runs on A" 0 1 0 "$out"
echo "1..$n"
exit $failed

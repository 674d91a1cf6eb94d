#!/usr/bin/env bash
# The mission's story: a sandbox moves between two hosts while it runs. The two hosts
# are network namespaces on this machine joined by a veth pair, each with its own ferry
# root; TLS is on (ferry certs). A container printing a counter and an exec'd process run
# on A; `ferry migrate` moves them to B and back, with its progress; then the proof: the
# counter's lines on A, then B, then A, none skipped or repeated, and the exec'd process
# still answering. Root only.
set -euo pipefail
build=${1:-build}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ferry_bin=$root/$build/cli/ferry
image=${FERRY_IMAGE_DIR:-$root/$build/image}
dir=$(mktemp -d /tmp/ferry-demo.XXXXXX)
export FERRY_SHIM_CONFIG=$dir/shim.json
printf '{"kernel": "%s", "initrd": "%s", "memory_mb": 256}\n' "$image/vmlinux" "$image/initramfs.cpio" >"$FERRY_SHIM_CONFIG"
ns_A=ferry-demo-a-$$ ns_B=ferry-demo-b-$$
ip_A=10.198.$(($$ % 200 + 20)).1 ip_B=10.198.$(($$ % 200 + 20)).2
pids=()
ferry() { local h=$1; shift; local ns=ns_$h; ip netns exec "${!ns}" "$ferry_bin" --root "$dir/$h" "$@"; }
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  for h in A B; do
    for s in "$dir/$h"/sandboxes/*; do [[ -d $s ]] && ferry "$h" rm -f "$(basename "$s")" >/dev/null 2>&1; done
  done
  ip netns del "$ns_A" 2>/dev/null || true
  ip netns del "$ns_B" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
ip netns add "$ns_A"
ip netns add "$ns_B"
ip link add "fd$$a" type veth peer name "fd$$b"
ip link set "fd$$a" netns "$ns_A"
ip link set "fd$$b" netns "$ns_B"
ip -n "$ns_A" addr add "$ip_A/24" dev "fd$$a"
ip -n "$ns_B" addr add "$ip_B/24" dev "fd$$b"
for ns in "$ns_A" "$ns_B"; do ip -n "$ns" link set lo up; done
ip -n "$ns_A" link set "fd$$a" up
ip -n "$ns_B" link set "fd$$b" up
python3 "$root/tests/scripts/busybox-image.py" rootfs "$dir/rootfs" --busybox /bin/busybox >/dev/null

echo "   host A = $ns_A ($ip_A), host B = $ns_B ($ip_B), joined by a veth pair"
"$ferry_bin" certs "$dir/certs" --host "$ip_A" --host "$ip_B" >/dev/null
echo "   ferry certs: a CA and a TLS directory for each host"
for h in A B; do
  addr=ip_$h
  ip netns exec "$(eval echo \$ns_$h)" "$ferry_bin" --root "$dir/$h" receive --listen "${!addr}:7070" \
    --tls-dir "$dir/certs/${!addr}" >"$dir/rx-$h.out" 2>"$dir/rx-$h.err" &
  pids+=($!)
done
sleep 0.5
echo "   ferry receive listens on $ip_A:7070 and $ip_B:7070"
echo
echo "   [A] ferry run -d --name web ROOTFS sh -c 'a counter every 20 ms'"
ferry A run -d --name web "$dir/rootfs" sh -c 'i=0; while :; do i=$((i+1)); echo "line $i"; sleep 0.02; done' 2>/dev/null >/dev/null
ticker=$(ferry A exec -d web sh -c 'while :; do echo tick; sleep 0.5; done')
echo "   [A] ferry exec -d web (a second process: $ticker)"
sleep 2
for hop in "A B" "B A"; do
  set -- $hop
  to_ip=ip_$2
  echo
  echo "   [$1] ferry migrate web --to ${!to_ip}:7070 --tls-dir ..."
  ferry "$1" migrate web --to "${!to_ip}:7070" --tls-dir "$dir/certs/$(eval echo \$ip_$1)" 2>&1 |
    grep -v '^ferry migrate: its logs' | sed 's/^/      /'
  here=$(ferry "$2" ps | tail -n +2 | awk '{print $1, $2}')
  there=$(ferry "$1" ps -a | tail -n +2 | awk '{print $1, $2}')
  echo "   [$2] ferry ps: ${here:-(nothing)}    [$1] ferry ps -a: ${there:-(nothing)}"
  sleep 2
done
echo
echo "   The proof, from every host's logs in the order they were written:"
python3 - "$dir" <<'PY'
import glob, json, sys
d = sys.argv[1]
parts = []
for p in glob.glob(d + '/[AB]/moved/web-*/logs/init.log'):
    parts.append((int(p.split('/moved/web-')[1].split('/')[0]), p[len(d) + 1], p))
parts.sort()
parts.append((0, 'A', d + '/A/sandboxes/web/logs/init.log'))
n = 0
bad = None
for _, host, p in parts:
    lines = [l for l in ''.join(json.loads(x)['log'] for x in open(p)).split('\n') if l]
    first = lines[0] if lines else '-'
    print('      on %s: %-10s ... %-10s (%d lines)' % (host, first, lines[-1] if lines else '-', len(lines)))
    for l in lines:
        n += 1
        if bad is None and l != 'line %d' % n:
            bad = (n, l)
print('      %d lines, %s' % (n, 'none skipped or repeated' if bad is None else 'BROKEN at %d: %r' % bad))
PY
echo "   [A] ferry exec web sh -c 'echo still here': $(ferry A exec web sh -c 'echo still here')"
echo "   [A] the exec'd process: $(grep -c tick "$dir/A/sandboxes/web/logs/$ticker.log") ticks since it came back"

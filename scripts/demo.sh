#!/usr/bin/env bash
# The main story, as far as it goes today: a running sandbox moves between two hosts
# with `ferry migrate` (two network namespaces on this machine, TLS on) and back, its
# output exactly-once; containerd runs containers through Ferry's shim; and underneath,
# the VM layer's failure paths and the boot time. It grows with the project.
set -euo pipefail
build=${1:-build}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export FERRY_BUILD_ROOT=$root/$build FERRY_SOURCE_ROOT=$root

cat <<'TXT'
== Ferry demo ==
1. A sandbox moves between two hosts while it runs: `ferry run -d` of a counter and an
   exec'd process on host A, `ferry migrate` to host B (over TCP across a veth pair,
   mutual TLS on the control connection, QEMU's TLS on the memory stream), and back:
TXT
bash "$root/scripts/demo-migrate.sh" "$build"

cat <<'TXT'

2. containerd (1.6, a private instance) runs containers through Ferry's shim, each
   sandbox in its own utility VM, its root an EROFS layer image on virtio-scsi:
TXT
bash "$root/scripts/demo-shim.sh" "$build"

cat <<'TXT'

3. Underneath, the VM layer's failure paths: the destination killed mid-transfer (the
   source rolls back and the guest never stops), a cancel, QEMU refusing the migration,
   a guest that dirties memory faster than the bandwidth cap finished by post-copy, and
   the memory stream under QEMU's TLS (a peer from another CA refused):
TXT
"$root/$build/tests/integration/test-vm" -p /vm/migrate-destination-killed \
  -p /vm/migrate-cancel -p /vm/migrate-refused -p /vm/migrate-postcopy -p /vm/migrate-tls 2>&1 |
  grep -E '^(ok|not ok)' | sed 's/^/   /'

cat <<'TXT'

4. Boot time against the same kernel and command line booting a trivial init:
TXT
bash "$root/bench/run-boot.sh" "$build" 1 | tail -n 1 | sed 's/^/   /'

cat <<'TXT'

Not yet: `make bench-migrate` and `make soak-migrate` (see the issues). `make check` runs
every test; `make bench-shim` measures the shim against runc's; `make bench-ttrpc` races
our ttrpc against containerd's Go ttrpc.
TXT

#!/usr/bin/env bash
# The main story, as far as it goes today: a utility VM boots under QEMU, Ferry's guest
# agent answers over the virtio-serial channel mux, a crun container runs inside it,
# and the VM live-migrates to a second QEMU while a guest process keeps printing -- its
# output exactly-once across the switch; then containerd runs containers through the
# shim. It grows with the project (the CLI's `ferry migrate` comes next).
set -euo pipefail
build=${1:-build}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export FERRY_BUILD_ROOT=$root/$build FERRY_SOURCE_ROOT=$root

cat <<'TXT'
== Ferry demo ==
1. Boot a utility VM (QEMU, TCG here), negotiate with ferry-gcs over the mux, run
   `uname -a` in the UVM and a crun container in the guest:
TXT
"$root/$build/tests/integration/test-vm" --verbose -p /vm/boot-uname-and-container 2>&1 |
  grep -E '^(# uname|ok|not ok)' | sed 's/^/   /'

cat <<'TXT'

2. Live-migrate it to a second QEMU over a socketpair while a guest process counts
   (the phases as each VM reports them; the counter is checked line by line):
TXT
"$root/$build/tests/integration/test-vm" --verbose -p /vm/migrate 2>&1 |
  grep -E '^# (src|dst|blackout)|^(ok|not ok)' | grep -v 'TransferInProgress Success pass [2-9]' |
  sed 's/^/   /'

cat <<'TXT'

3. Failure paths: the destination killed mid-transfer (the source rolls back and the
   guest never stops), a cancel, QEMU refusing the migration (a migration blocker:
   the source rolls back), and a guest that dirties memory faster than the bandwidth
   cap, finished by post-copy (the guest goes on on the destination):
TXT
"$root/$build/tests/integration/test-vm" -p /vm/migrate-destination-killed \
  -p /vm/migrate-cancel -p /vm/migrate-refused -p /vm/migrate-postcopy 2>&1 | grep -E '^(ok|not ok)' | sed 's/^/   /'

cat <<'TXT'

4. Boot time against the same kernel and command line booting a trivial init:
TXT
bash "$root/bench/run-boot.sh" "$build" 1 | tail -n 1 | sed 's/^/   /'

cat <<'TXT'

5. containerd (1.6, a private instance) runs containers through Ferry's shim, each
   sandbox in its own utility VM, its root an EROFS layer image on virtio-scsi:
TXT
bash "$root/scripts/demo-shim.sh" "$build"

cat <<'TXT'

Not yet: hcsshim's Migration service in the shim and the CLI that drives a migration
between two hosts (see the issues). `make check` runs every test; `make bench-shim`
measures the shim against runc's; `make bench-ttrpc` races our ttrpc against
containerd's Go ttrpc.
TXT

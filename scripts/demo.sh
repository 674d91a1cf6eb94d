#!/usr/bin/env bash
# The main story, as far as it goes today: Ferry's ttrpc speaking to containerd's own
# Go ttrpc in both directions, then the two raced on the same workload. It grows with
# the project until it is a live migration.
set -euo pipefail
build=${1:-build}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

cat <<'TXT'
== Ferry demo ==
Ferry will live-migrate running container sandboxes between hosts. Today the
foundation stands: a C implementation of containerd's ttrpc (the RPC every Ferry
component speaks), wire-compatible with containerd's Go ttrpc.

1. Interop, both ways, against containerd's Go ttrpc 1.1.1 (Debian's package):
TXT
bash "$root/tests/interop/run.sh" "$build" | sed 's/^/   /'

cat <<'TXT'

2. The same unary echo workload through Ferry (C client -> C server) and through
   containerd's Go ttrpc (Go client -> Go server), one connection, 32 calls in flight:
TXT
FERRY_BENCH_ROUNDS=${FERRY_BENCH_ROUNDS:-1} FERRY_BENCH_DURATION=${FERRY_BENCH_DURATION:-2s} \
  bash "$root/bench/run-ttrpc.sh" "$build" | sed 's/^/   /'

cat <<'TXT'

Not yet: the GCS bridge, the guest agent, the VM layer, the shim and the migration
itself (see the issues). `make check` runs every test.
TXT

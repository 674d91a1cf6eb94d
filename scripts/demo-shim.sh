#!/usr/bin/env bash
# The demo's containerd part (scripts/demo.sh): a private containerd 1.6 runs containers
# through containerd-shim-ferry-v1, each sandbox in its own utility VM.
#   demo-shim.sh BUILDDIR
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=$(cd "${1:?usage: demo-shim.sh BUILDDIR}" && pwd)
shim=$build/shim/containerd-shim-ferry-v1
export PATH=$PATH:/usr/sbin:/sbin
[[ $(id -u) == 0 ]] || { echo "   (skipped: containerd needs root)"; exit 0; }
export FERRY_SHIM_RUN_DIR=$build/shim-run
# shellcheck source=../tests/scripts/containerd-harness.sh
source "$root/tests/scripts/containerd-harness.sh"
ctrd_setup || exit 1
export FERRY_SHIM_CONFIG=$CTRD_DIR/ferry-shim.json
ctrd_ferry_shim_config "$build/image" "$FERRY_SHIM_CONFIG"
rootfs=$CTRD_DIR/rootfs
python3 "$root/tests/scripts/busybox-image.py" rootfs "$rootfs" --busybox /bin/busybox >/dev/null || exit 1
ctrd_start || exit 1
say() { echo "   \$ $*"; }
say "ctr run --runtime containerd-shim-ferry-v1 --rm --rootfs BUSYBOX t1 sh -c 'echo hi from \$(uname -r); exit 3'"
ctrd_ctr run --runtime "$shim" --rm=true --env PATH=/bin --rootfs=true -- "$rootfs" t1 \
  sh -c 'echo hi from $(uname -r); exit 3' </dev/null | sed 's/^/     /'
echo "     (exit status ${PIPESTATUS[0]})"
say "ctr run -d ... d1 sh -c 'echo started > /note; sleep 1000'; ctr task exec d1 cat /note"
ctrd_ctr run --runtime "$shim" -d --env PATH=/bin --rootfs=true -- "$rootfs" d1 \
  sh -c 'echo started > /note; sleep 1000' >/dev/null </dev/null
for _ in $(seq 100); do [[ $(ctrd_ctr task ls 2>/dev/null | awk '$1 == "d1" { print $3 }') == RUNNING ]] && break; sleep 0.2; done
ctrd_ctr task exec --exec-id e1 d1 cat /note </dev/null | sed 's/^/     /'
say "ctr task pause d1; ctr task ls; ctr task resume d1"
ctrd_ctr task pause d1 && ctrd_ctr task ls | sed 's/^/     /' && ctrd_ctr task resume d1
say "ctr task metrics d1"
ctrd_ctr task metrics d1 | sed 's/^/     /'
say "ctr task kill -s KILL d1; ctr task delete d1 (the shim and its VM end)"
ctrd_ctr task kill -s KILL d1
for _ in $(seq 100); do [[ $(ctrd_ctr task ls 2>/dev/null | awk '$1 == "d1" { print $3 }') == STOPPED ]] && break; sleep 0.2; done
ctrd_ctr task delete d1 >/dev/null && ctrd_ctr container delete d1 && echo "     deleted"
ctrd_finish

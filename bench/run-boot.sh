#!/bin/bash
# Boot benchmark: a Ferry UVM (start to the agent's first bridge reply) against the same
# kernel and QEMU command line booting a trivial init that prints a line
# (docs/benchmarks.md). Needs the guest image (make image).
#
#   run-boot.sh BUILDDIR [ROUNDS]
#
# Last line: boot ferry_ms=<n> bare_qemu_ms=<n> ratio=<n>
set -euo pipefail
builddir=$(cd "${1:?usage: run-boot.sh BUILDDIR [ROUNDS]}" && pwd)
rounds=${2:-${FERRY_BENCH_ROUNDS:-5}}
image=${FERRY_IMAGE_DIR:-$builddir/image}
for f in "$image/vmlinux" "$image/initramfs.cpio" "$builddir/bench/bare-init"; do
  [[ -e $f ]] || { echo "run-boot.sh: $f is missing (make image / ninja)" >&2; exit 1; }
done
# The baseline's initramfs: the trivial init alone (and the /dev it mounts on),
# uncompressed like the image's.
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/dev"
cp "$builddir/bench/bare-init" "$stage/init"
(cd "$stage" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) \
  >"$builddir/bench/bare-initramfs.cpio"
"$builddir/bench/boot-bench" "$image" "$builddir/bench/bare-initramfs.cpio" "$rounds"

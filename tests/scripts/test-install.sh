#!/bin/bash
# `make install` into a DESTDIR, then `ctr run --runtime io.containerd.ferry.v1` by name
# under a private containerd whose PATH holds the installed shim, booting the installed
# guest image (docs/shim.md). Prints TAP; skips as a whole when not root or without
# containerd/ctr/QEMU.
#
#   test-install.sh SOURCE_ROOT BUILDDIR
set -uo pipefail

src=$(cd "${1:?usage: test-install.sh SOURCE_ROOT BUILDDIR}" && pwd)
build=$(cd "${2:?usage: test-install.sh SOURCE_ROOT BUILDDIR}" && pwd)
export PATH=$PATH:/usr/sbin:/sbin
[[ $(id -u) == 0 ]] || { echo "1..0 # SKIP needs root (containerd does)"; exit 0; }
for bin in containerd ctr python3 qemu-system-x86_64; do
  command -v "$bin" >/dev/null || { echo "1..0 # SKIP $bin is not installed"; exit 0; }
done

# shellcheck source=tap.sh
source "$src/tests/scripts/tap.sh"

dest=$(mktemp -d /tmp/ferry-install.XXXXXX)
trap 'rm -rf "$dest"' EXIT
prefix=/usr/local
# The guest image to install: FERRY_IMAGE_DIR (a sanitizer build has none of its own),
# else this build's.
image=${FERRY_IMAGE_DIR:-${FERRY_IMAGE_DIR_DEFAULT:-$build/image}}
if out=$(make -C "$src" --no-print-directory install BUILD="$build" IMAGE_DIR="$image" DESTDIR="$dest" PREFIX="$prefix" 2>&1); then
  ok "make install DESTDIR PREFIX=$prefix"
else
  not_ok "make install DESTDIR PREFIX=$prefix" "$(tail -n 5 <<<"$out")"
fi
for f in bin/containerd-shim-ferry-v1 bin/ferry share/bash-completion/completions/ferry share/ferry/vmlinux share/ferry/initramfs.cpio etc/ferry/shim.json; do
  if [[ -s $dest$prefix/$f ]]; then ok "installed $prefix/$f"; else not_ok "installed $prefix/$f" "missing"; fi
done
# A second install keeps an edited config.
echo '{"memory_mb": 300}' >"$dest$prefix/etc/ferry/shim.json"
make -C "$src" --no-print-directory install BUILD="$build" IMAGE_DIR="$image" DESTDIR="$dest" PREFIX="$prefix" >/dev/null 2>&1
if grep -q 300 "$dest$prefix/etc/ferry/shim.json"; then ok "a second install keeps the config"; else not_ok "a second install keeps the config"; fi

# The installed shim by name. Its compiled-in defaults name $prefix without DESTDIR, so
# the config points it at the installed image.
export FERRY_SHIM_CONFIG=$dest/shim.json
# shellcheck source=containerd-harness.sh
source "$src/tests/scripts/containerd-harness.sh"
ctrd_ferry_shim_config "$dest$prefix/share/ferry" "$FERRY_SHIM_CONFIG"
export FERRY_SHIM_RUN_DIR=$dest/run
export PATH=$dest$prefix/bin:$PATH
ctrd_user_cleanup() { rm -rf "$dest"; }
ctrd_setup || exit 1
rootfs=$CTRD_DIR/rootfs
python3 "$src/tests/scripts/busybox-image.py" rootfs "$rootfs" --busybox /bin/busybox || exit 1
ctrd_start || exit 1
out=$(ctrd_ctr run --runtime io.containerd.ferry.v1 --rm=true --env PATH=/bin --rootfs=true -- \
  "$rootfs" byname sh -c 'echo by name; exit 4' </dev/null 2>"$CTRD_DIR/byname.err")
status=$?
if [[ $out == "by name" && $status == 4 ]]; then
  ok "ctr run --runtime io.containerd.ferry.v1 runs the installed shim (status 4)"
else
  not_ok "ctr run --runtime io.containerd.ferry.v1 runs the installed shim" "status $status, out '$out'" "$(tail -n 3 "$CTRD_DIR/byname.err")"
fi
ctrd_finish || failed=1
echo "1..$n"
exit $failed

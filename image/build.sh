#!/usr/bin/env bash
# Build the guest image: an uncompressed kernel (PVH entry) and an initramfs with
# busybox, the virtio modules, crun with its libraries, the agent and a busybox root
# file system for containers. Everything comes from Debian's packages and the build
# tree; nothing is compiled here. docs/image.md.
#
# usage: image/build.sh AGENT OUTDIR
#   AGENT   the static ferry-gcs (build/agent/ferry-gcs)
#   OUTDIR  gets vmlinux, initramfs.cpio, manifest, stage/ (the initramfs's tree)
#           and cache/ (the kernel package and what was taken from it;
#           FERRY_IMAGE_CACHE=DIR puts it elsewhere)
# Rebuilds only when an input changed: the kernel package, the agent, crun, busybox
# and the libraries, or these scripts. Needs root (apt, mknod, chroot).
set -euo pipefail

prog=image/build.sh
die() {
  echo "$prog: $*" >&2
  exit 1
}
[ $# -eq 2 ] || {
  echo "usage: $prog AGENT OUTDIR" >&2
  exit 2
}
agent=$1
out=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${FERRY_IMAGE_CACHE:-$out/cache}
busybox=/bin/busybox
crun=/usr/bin/crun
# The initramfs's file times, so that equal inputs give an equal archive.
epoch=1

for tool in apt-cache apt-get dpkg-deb dpkg-query tar cpio python3 sha256sum ldd strip \
  chroot unshare mknod flock; do
  command -v "$tool" >/dev/null || die "$tool is missing (bash scripts/install-deps.sh vm)"
done
[ "$(id -u)" -eq 0 ] || die "must run as root (apt-get, mknod /dev/console, chroot check)"
[ -x "$busybox" ] || die "$busybox is missing (install busybox-static)"
! ldd "$busybox" >/dev/null 2>&1 || die "$busybox is dynamically linked: install busybox-static"
[ -x "$crun" ] || die "$crun is missing (install crun)"
[ -f "$agent" ] || die "agent $agent not found: build it first (make build)"
! ldd "$agent" >/dev/null 2>&1 ||
  die "agent $agent is dynamically linked (a sanitizer build?): the image needs the static one"

mkdir -p "$out" "$cache"
exec 9>"$out/.lock"
flock 9
# What is hashed is what goes in, even if the agent is relinked meanwhile.
snapshot=$out/.ferry-gcs
cp "$agent" "$snapshot"

# --- inputs -----------------------------------------------------------------------
# Which kernel linux-image-amd64 means today. apt-cache takes about half a second per
# call where apt keeps no binary cache (Debian's container images), so the answer is
# kept until the package lists or dpkg's database change.
kernel_depends() {
  apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ { print $2; exit }'
}
apt_state=$(stat -c '%n %s %Y' /var/lib/apt/lists/*Packages* /var/lib/dpkg/status 2>/dev/null |
  sha256sum | cut -d' ' -f1)
resolved=$cache/kernel-package
if [ -f "$resolved" ] && [ "$(sed -n 1p "$resolved")" = "$apt_state" ]; then
  { read -r _ && read -r kernel_pkg && read -r kernel_version; } <"$resolved"
else
  kernel_pkg=$(kernel_depends)
  if [ -z "$kernel_pkg" ]; then
    echo "$prog: no package lists for linux-image-amd64; apt-get update" >&2
    apt-get update -qq || die "apt-get update failed"
    kernel_pkg=$(kernel_depends)
    [ -n "$kernel_pkg" ] || die "apt-cache depends linux-image-amd64 names no linux-image package"
  fi
  kernel_version=$(apt-cache policy "$kernel_pkg" | awk '/Candidate:/ { print $2 }')
  if [ -z "$kernel_version" ] || [ "$kernel_version" = "(none)" ]; then
    die "no installable version of $kernel_pkg (apt-cache policy $kernel_pkg)"
  fi
  printf '%s\n' "$apt_state" "$kernel_pkg" "$kernel_version" >"$resolved"
fi
kernel_release=${kernel_pkg#linux-image-}

# crun's shared libraries, as ldd resolves them, and its loader.
mapfile -t crun_libs < <(ldd "$crun" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
[ ${#crun_libs[@]} -gt 0 ] || die "ldd $crun found no libraries"

# What the kernel cache was made with: a change to these redoes the unpacking.
recipe_sha=$(cat "$here/build.sh" "$here/kernel.py" | sha256sum | cut -d' ' -f1)
inputs=$(
  echo "kernel_package=$kernel_pkg"
  echo "kernel_version=$kernel_version"
  echo "busybox_version=$(dpkg-query -W -f='${Version}' busybox-static)"
  echo "crun_version=$(dpkg-query -W -f='${Version}' crun)"
  echo "agent_sha256=$(sha256sum <"$snapshot" | cut -d' ' -f1)"
  echo "host_files_sha256=$(cat "$busybox" "$crun" "${crun_libs[@]}" | sha256sum | cut -d' ' -f1)"
  echo "scripts_sha256=$(cat "$here/build.sh" "$here/kernel.py" "$here/init" "$here/fstab" |
    sha256sum | cut -d' ' -f1)"
)
if [ -f "$out/manifest" ] && [ -f "$out/vmlinux" ] && [ -f "$out/initramfs.cpio" ] &&
  [ "$(sed -n '/^# outputs/q;p' "$out/manifest")" = "$inputs" ]; then
  echo "$prog: $out is up to date ($kernel_pkg $kernel_version)"
  exit 0
fi
start=$EPOCHREALTIME
rm -f "$out/manifest"

# --- kernel: download once, take vmlinuz, config and the modules -----------------------
kdir=$cache/$kernel_pkg-$kernel_version
if [ "$(cat "$kdir/.done" 2>/dev/null)" != "$recipe_sha" ]; then
  deb=$(find "$cache" -maxdepth 1 -name "${kernel_pkg}_*.deb" -print -quit)
  if [ -z "$deb" ] || [[ "$deb" != *"_${kernel_version//:/%3a}_"* ]]; then
    rm -f "$cache"/linux-image-*.deb
    echo "$prog: downloading $kernel_pkg $kernel_version"
    if ! (cd "$cache" && apt-get download -q -o APT::Sandbox::User=root "$kernel_pkg=$kernel_version"); then
      # Stale package lists name a version the mirror has dropped (security updates
      # replace kernels): update them once and start over.
      [ -z "${FERRY_IMAGE_APT_UPDATED:-}" ] || die "apt-get download $kernel_pkg=$kernel_version failed"
      echo "$prog: apt-get download failed; apt-get update and retry" >&2
      apt-get update -qq || die "apt-get update failed"
      rm -f "$resolved"
      FERRY_IMAGE_APT_UPDATED=1 exec bash "$here/build.sh" "$agent" "$out"
    fi
    deb=$(find "$cache" -maxdepth 1 -name "${kernel_pkg}_*.deb" -print -quit)
    [ -n "$deb" ] || die "apt-get download left no ${kernel_pkg}_*.deb in $cache"
  fi
  rm -rf "$cache"/linux-image-*/ "$kdir.tmp"
  mkdir -p "$kdir.tmp"
  echo "$prog: unpacking $(basename "$deb")"
  m=./lib/modules/$kernel_release/kernel
  # Only what the guest uses: the virtio transports and drivers, vsock, 9p, virtio-fs,
  # virtio-scsi with sd and the file systems mounted from its disks, and the libraries
  # and crypto back ends they need (kernel.py says which are loaded when).
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$kdir.tmp" --wildcards \
    "./boot/vmlinuz-$kernel_release" "./boot/config-$kernel_release" \
    "$m/drivers/virtio/*" "$m/drivers/char/virtio_console.ko" \
    "$m/drivers/char/hw_random/virtio-rng.ko" "$m/drivers/block/virtio_blk.ko" \
    "$m/drivers/net/virtio_net.ko" "$m/drivers/net/net_failover.ko" "$m/net/core/failover.ko" \
    "$m/net/vmw_vsock/*" "$m/net/9p/*" "$m/fs/9p/*" "$m/fs/netfs/*" "$m/fs/fscache/*" \
    "$m/fs/fuse/*" "$m/drivers/scsi/scsi_mod.ko" "$m/drivers/scsi/scsi_common.ko" \
    "$m/drivers/scsi/sd_mod.ko" "$m/drivers/scsi/virtio_scsi.ko" "$m/block/t10-pi.ko" \
    "$m/lib/crc-t10dif.ko" "$m/lib/crc64-rocksoft.ko" "$m/lib/crc64.ko" "$m/lib/crc16.ko" \
    "$m/lib/libcrc32c.ko" "$m/crypto/crct10dif_common.ko" "$m/crypto/crct10dif_generic.ko" \
    "$m/crypto/crc64_rocksoft_generic.ko" "$m/crypto/crc32c_generic.ko" "$m/fs/erofs/*" \
    "$m/fs/ext4/*" "$m/fs/jbd2/*" "$m/fs/mbcache.ko" "$m/fs/overlayfs/*" ||
    die "unpacking $deb failed"
  python3 "$here/kernel.py" check-config "$kdir.tmp/boot/config-$kernel_release"
  python3 "$here/kernel.py" vmlinux "$kdir.tmp/boot/vmlinuz-$kernel_release" "$kdir.tmp/vmlinux"
  rm "$kdir.tmp/boot/vmlinuz-$kernel_release"
  echo "$recipe_sha" >"$kdir.tmp/.done"
  rm -rf "$kdir"
  mv "$kdir.tmp" "$kdir"
fi

# --- the initramfs's tree -----------------------------------------------------------
stage=$out/stage
rm -rf "$stage"
mkdir -p "$stage"
(cd "$stage" && mkdir -p bin sbin usr/bin usr/sbin lib lib64 lib/modules/ferry dev proc sys \
  run tmp mnt etc root opt/ferry/rootfs)
install -m 0755 "$here/init" "$stage/init"
install -m 0644 "$here/fstab" "$stage/etc/fstab"
install -m 0755 "$busybox" "$stage/bin/busybox"
strip -o "$stage/usr/bin/ferry-gcs" "$snapshot"
install -m 0755 "$crun" "$stage/usr/bin/crun"
for lib in "${crun_libs[@]}"; do
  mkdir -p "$stage/$(dirname "$lib")"
  cp -L "$lib" "$stage/$lib"
done
python3 "$here/kernel.py" modules "$kdir/lib/modules" "$stage/lib/modules/ferry"
mknod -m 0600 "$stage/dev/console" c 5 1
mknod -m 0666 "$stage/dev/null" c 1 3
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$stage/etc/passwd"
printf 'root:x:0:\ntty:x:5:\n' >"$stage/etc/group"

# Containers' root file system (read-only OCI root.path): busybox, one hard link to the
# copy above, so the archive holds its bytes once.
rootfs=$stage/opt/ferry/rootfs
(cd "$rootfs" && mkdir -p bin dev proc sys tmp etc root run)
ln "$stage/bin/busybox" "$rootfs/bin/busybox"
# The applet links: in the image where busybox --install would put them (/bin, /sbin,
# /usr/bin, /usr/sbin), in the containers' root all in /bin. Not /linuxrc. (One
# process: ln per applet would take a second.)
"$busybox" --list-full | python3 -c '
import os, sys
stage, rootfs = sys.argv[1:]
for path in sys.stdin.read().split():
    name = os.path.basename(path)
    if name in ("busybox", "linuxrc"):
        continue
    os.symlink("/bin/busybox", os.path.join(stage, path))
    os.symlink("busybox", os.path.join(rootfs, "bin", name))
' "$stage" "$rootfs"
cp "$stage/etc/passwd" "$stage/etc/group" "$rootfs/etc/"

# crun must start with nothing but the image's own libraries and loader (it re-executes
# itself through /proc/self/exe, so /proc is mounted, in a mount namespace of its own).
# shellcheck disable=SC2016 # $1 is the inner shell's
unshare --mount --fork sh -c 'mount -t proc proc "$1/proc" && chroot "$1" /usr/bin/crun --version' \
  sh "$stage" >/dev/null || die "crun does not run inside the staged tree $stage (a library missing?)"

find "$stage" -exec touch -h -d "@$epoch" {} +
# Uncompressed: under TCG the kernel's gunzip of the 13 MB took about 0.3-0.5 s of the
# boot (docs/image.md), far more than reading the bigger file costs.
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort |
  cpio --quiet -o -H newc -R 0:0 --reproducible) >"$out/initramfs.cpio.tmp"
mv "$out/initramfs.cpio.tmp" "$out/initramfs.cpio"
# The gzip one earlier builds made.
rm -f "$out/initramfs.cpio.gz"
# A hard link to the cache's; replaced by rename, so a QEMU starting meanwhile reads the
# old file or the new one.
if ! [ "$out/vmlinux" -ef "$kdir/vmlinux" ]; then
  rm -f "$out/vmlinux.tmp"
  ln "$kdir/vmlinux" "$out/vmlinux.tmp" 2>/dev/null || cp "$kdir/vmlinux" "$out/vmlinux.tmp"
  mv -f "$out/vmlinux.tmp" "$out/vmlinux"
fi

{
  echo "$inputs"
  echo "# outputs"
  echo "kernel_release=$kernel_release"
  echo "vmlinux=vmlinux"
  echo "vmlinux_bytes=$(stat -c %s "$out/vmlinux")"
  echo "initramfs=initramfs.cpio"
  echo "initramfs_bytes=$(stat -c %s "$out/initramfs.cpio")"
  echo "initramfs_sha256=$(sha256sum <"$out/initramfs.cpio" | cut -d' ' -f1)"
  echo "modules=$(cut -d' ' -f1 "$stage/lib/modules/ferry/modules.load" | tr '\n' ' ' | sed 's/ $//')"
} >"$out/manifest.tmp"
mv "$out/manifest.tmp" "$out/manifest"
echo "$prog: built $out ($kernel_pkg $kernel_version; initramfs.cpio" \
  "$(stat -c %s "$out/initramfs.cpio") bytes) in $(awk "BEGIN { printf \"%.1f\", $EPOCHREALTIME - $start }")s"

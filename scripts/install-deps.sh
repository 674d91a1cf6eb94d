#!/usr/bin/env bash
# Install what Ferry needs from Debian's packages, only what is missing; quiet when
# everything is there. Idempotent. usage: install-deps.sh [GROUP ...]
#   build    compilers, meson, the C libraries and code generators (default)
#   interop  Go and containerd's Go ttrpc, the real peer for the interop tests (default)
#   ci       clang with its sanitizer and libFuzzer runtime, clang-format
#   vm       QEMU (with the microvm bios) and what image/build.sh needs to make the guest image
#   shim     containerd (the shim's real peer), runc (the benchmark's baseline), tmux (the
#            CLI's terminal test), erofs-utils and e2fsprogs (container root images)
set -euo pipefail

declare -A groups=(
  [build]="gcc make pkg-config meson ninja-build python3 libglib2.0-dev libjansson-dev
           protobuf-c-compiler libprotobuf-c-dev libprotobuf-dev crun busybox-static
           libgnutls28-dev glib-networking"
  [interop]="golang-go golang-github-containerd-ttrpc-dev"
  [ci]="clang libclang-rt-14-dev clang-format"
  [vm]="qemu-system-x86 qemu-system-data cpio busybox-static crun python3"
  [shim]="containerd runc erofs-utils e2fsprogs tmux"
)

wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=(build interop)

missing=()
for g in "${wanted[@]}"; do
  if [ -z "${groups[$g]+x}" ]; then
    echo "install-deps: unknown group '$g' (known: ${!groups[*]})" >&2
    exit 2
  fi
  for pkg in ${groups[$g]}; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
    [[ "$status" == ii* ]] || missing+=("$pkg")
  done
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
echo "install-deps: installing ${missing[*]}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { "${sudo[@]}" apt-get update -qq &&
       "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
         --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "install-deps: apt-get failed" >&2
  exit 1
fi

#!/bin/bash
# Build the Go ttrpc peer (tests/interop/go/src/ferrypeer) into BUILDDIR/interop-go,
# offline, in GOPATH mode against Debian's packages (docs/ttrpc.md, "Building the Go peer offline"):
# golang-go and golang-github-containerd-ttrpc-dev, whose sources live in
# /usr/share/gocode. Nothing is downloaded (GOPROXY=off, GO111MODULE=off).
#
#   build-go.sh BUILDDIR
#
# Skips the build when the binary is newer than every Go source. Writes only to
# stderr. Exit status 77 (with the reason as the last line on stderr) when go or the
# ttrpc sources are missing; used by tests/interop/run.sh and bench/run-ttrpc.sh.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
builddir=${1:?usage: build-go.sh BUILDDIR}
gocode=/usr/share/gocode
src=$here/go/src/ferrypeer
out=$builddir/interop-go

if ! command -v go >/dev/null 2>&1; then
  echo "go is not installed (apt-get install golang-go)" >&2
  exit 77
fi
if [[ ! -d $gocode/src/github.com/containerd/ttrpc ]]; then
  echo "$gocode/src/github.com/containerd/ttrpc is missing" \
    "(apt-get install golang-github-containerd-ttrpc-dev)" >&2
  exit 77
fi

if [[ -x $out && -z $(find "$src" -newer "$out" -print -quit) ]]; then
  exit 0
fi

mkdir -p "$builddir"
# Build next to the target and rename, so that concurrent builds never leave a
# half-written binary behind.
tmp_out=$(mktemp "$builddir/interop-go.XXXXXX")
trap 'rm -f "$tmp_out"' EXIT
(
  cd "$src"
  GO111MODULE=off GOPATH="$here/go:$gocode" GOPROXY=off GOFLAGS='' \
    GOCACHE="$builddir/interop-go-cache" go build -o "$tmp_out" .
) >&2
mv -f "$tmp_out" "$out"
trap - EXIT
echo "built $out" >&2

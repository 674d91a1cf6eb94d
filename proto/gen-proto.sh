#!/bin/sh
# gen-proto.sh PROTOC_C PROTO_ROOT WELL_KNOWN_ROOT OUT_DIR FILE.proto
# meson hands inputs over as paths relative to the build directory, and protoc only
# maps a file to its import path when a --proto_path is an exact textual prefix of
# it, so the input is made absolute first.
set -eu
protoc_c=$1 root=$2 wkt=$3 out=$4 input=$5
input=$(realpath "$input")
exec "$protoc_c" --proto_path="$root" --proto_path="$wkt" --c_out="$out" "$input"

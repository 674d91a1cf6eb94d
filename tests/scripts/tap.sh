# TAP for the shell tests: `ok DESCRIPTION`, `not_ok DESCRIPTION [DETAIL...]`, and
# `check DESCRIPTION WANT_STATUS WANT_OUT STATUS OUT [ERR]`; $n counts, $failed says.
# shellcheck shell=bash
n=0
failed=0
ok() { n=$((n + 1)); echo "ok $n - $*"; }
not_ok() { n=$((n + 1)); failed=1; echo "not ok $n - $1"; shift; for l in "$@"; do echo "# $l"; done; }
check() {
  if [[ $4 == "$2" && $5 == "$3" ]]; then ok "$1"; else not_ok "$1" "status $4 (want $2)" "out '$5' (want '$3')" "${6:-}"; fi
}

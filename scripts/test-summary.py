#!/usr/bin/env python3
"""Count individual test cases from meson's testlog.json and print the closing line.

Every test speaks TAP, so each `ok` / `not ok` line is one behaviour. A test program
that failed without reporting a failing case (a crash, a time-out) counts as one
failure; a whole program skipped with `1..0 # SKIP reason` counts as one skip, and its
reason is printed so that a skip is never silent.

usage: test-summary.py BUILD_DIR [LABEL]
Prints `N passed, N failed, N skipped` last; exits 1 if anything failed or no test ran.
"""
import json
import os
import re
import sys

TAP_LINE = re.compile(r"^(not ok|ok)\b(.*)$")


def count(build_dir):
    log = os.path.join(build_dir, "meson-logs", "testlog.json")
    passed = failed = skipped = 0
    notes = []
    with open(log, encoding="utf-8") as f:
        for line in f:
            t = json.loads(line)
            name, result, out = t["name"], t["result"], t.get("stdout") or ""
            p = fl = s = 0
            for l in out.splitlines():
                m = TAP_LINE.match(l)
                if m is None:
                    plan = re.match(r"^1\.\.0\s*#\s*(?i:skip)\s*(.*)$", l)
                    if plan:
                        s += 1
                        notes.append(f"SKIPPED {name}: {plan.group(1) or 'no reason given'}")
                    continue
                rest = m.group(2)
                if re.search(r"#\s*(?i:skip)", rest):
                    s += 1
                    notes.append(f"SKIPPED {name}:{rest}")
                elif m.group(1) == "ok":
                    p += 1
                else:
                    fl += 1
                    notes.append(f"FAILED {name}:{rest}")
            if result not in ("OK", "SKIP", "EXPECTEDFAIL") and fl == 0:
                fl = 1
                notes.append(f"FAILED {name}: {result} (exit {t.get('returncode')})")
            if result == "SKIP" and p + fl + s == 0:
                s = 1
                notes.append(f"SKIPPED {name}: skipped by meson")
            passed, failed, skipped = passed + p, failed + fl, skipped + s
    return passed, failed, skipped, notes


def main():
    build_dir = sys.argv[1] if len(sys.argv) > 1 else "build"
    label = sys.argv[2] if len(sys.argv) > 2 else ""
    passed, failed, skipped, notes = count(build_dir)
    for n in notes:
        print(n)
    prefix = f"{label}: " if label else ""
    print(f"{prefix}{passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed or passed == 0 else 0


if __name__ == "__main__":
    sys.exit(main())

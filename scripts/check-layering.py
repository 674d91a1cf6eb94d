#!/usr/bin/env python3
"""Check that dependencies between Ferry's modules point one way (docs/design.md, module layering).

base <- (ttrpc, bridge, transport, runtime, rootfs, tls) <- (gcs, vm, cmd) <- migration <- programs

A file in lib/<module>/ or a public header include/ferry/<header>.h may include the
public headers of its own module and of modules of a lower rank only. Nothing in lib/
or include/ includes a program's or a test's header. Prints TAP, one line per file.

usage: check-layering.py SOURCE_ROOT
"""
import os
import re
import sys

RANK = {"base": 0, "proto": 1, "ttrpc": 1, "bridge": 1, "transport": 1, "runtime": 1, "rootfs": 1,
        "tls": 1, "gcs": 2,
        "vm": 2, "cmd": 2, "migration": 3, "sandbox": 3, "shim": 4, "node": 4}

# Which module each public header belongs to. A new header must be added here.
HEADER_MODULE = {
    "error": "base",
    "log": "base",
    "fd": "base",
    "stream": "base",
    "source": "base",
    "json": "base",
    "bridge-protocol": "bridge",
    "bridge-host": "bridge",
    "guest": "bridge",
    "bridge-guest": "bridge",
    "ttrpc": "ttrpc",
    "mux": "transport",
    "cmd": "cmd",
    "qmp": "vm",
    "vm": "vm",
    "vm-builder": "vm",
    "transport": "transport",
    "transport-vsock": "transport",
    "relay": "transport",
    "sandbox": "sandbox",
    "shim-events": "shim",
    "task-service": "shim",
    "runtime": "runtime",
    "gcs": "gcs",
    "rootfs": "rootfs",
    "migration-session": "migration",
    "migration-notifications": "migration",
    "sandbox-state": "migration",
    "migration-wire": "migration",
    "migration": "migration",
    "tls": "tls",
    "layer-store": "migration",
    "node": "node",
}

# Generated protobuf headers, by the module allowed to use them first.
PROTO_MODULE = {
    "ttrpc/": "ttrpc",
    "google/": "ttrpc",
    "containerd/": "migration",
    "hcsshim/": "migration",
    # Ferry's own messages: pure generated codecs any module from rank 1 up may use
    # (the sandbox fills a SandboxState, the shim and lib/migration read it).
    "ferry/": "proto",
    "cgroups/": "shim",
    "test/": None,  # the test service: tests only
}

INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]')


def module_of_include(path):
    # Generated headers first: Ferry's own protos live under ferry/ too.
    if path.endswith(".pb-c.h"):
        for prefix, mod in PROTO_MODULE.items():
            if path.startswith(prefix):
                return mod if mod is not None else "?tests-only"
        return "?unknown-proto"
    if path.startswith("ferry/"):
        name = path[len("ferry/"):].rsplit(".", 1)[0]
        return HEADER_MODULE.get(name, "?unknown-header")
    return None  # system or module-private header


def check(root):
    results = []
    files = []
    for sub, owner in (("lib", None), ("include/ferry", None)):
        base = os.path.join(root, sub)
        for dirpath, _, names in os.walk(base):
            for n in sorted(names):
                if n.endswith((".c", ".h")):
                    files.append(os.path.join(dirpath, n))
    for path in sorted(files):
        rel = os.path.relpath(path, root)
        parts = rel.split(os.sep)
        if parts[0] == "lib":
            mod = parts[1]
        else:
            mod = HEADER_MODULE.get(parts[-1].rsplit(".", 1)[0], "?unknown-header")
        problems = []
        if mod not in RANK:
            problems.append(f"module {mod} is not in the layering table")
        else:
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    m = INCLUDE.match(line)
                    if not m:
                        continue
                    inc = m.group(1)
                    target = module_of_include(inc)
                    if target is None:
                        if inc.startswith(("shim/", "agent/", "cli/", "tests/")):
                            problems.append(f"{lineno}: includes program/test header {inc}")
                        continue
                    if target.startswith("?"):
                        problems.append(f"{lineno}: {inc}: {target[1:]}")
                    elif target != mod and RANK[target] >= RANK[mod]:
                        problems.append(f"{lineno}: {mod} may not include {inc} ({target})")
        results.append((rel, problems))
    return results


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "."
    results = check(root)
    print(f"1..{len(results)}")
    bad = 0
    for i, (rel, problems) in enumerate(results, 1):
        if problems:
            bad += 1
            print(f"not ok {i} - {rel}")
            for p in problems:
                print(f"# {rel}:{p}")
        else:
            print(f"ok {i} - {rel}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

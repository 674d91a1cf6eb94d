#!/usr/bin/env python3
"""Check that the repository stands on its own: no comment or doc cites the team's notes
outside it (../shared/docs/, design.md, hcsshim-reference.md, qemu-facts.md,
ttrpc-reference.md, style.md). What the code relies on lives in docs/; design.md is fine
only as docs/design.md (or a relative link `](design.md)` inside docs/). Prints TAP, one line per outside name.

Names in PENDING are still being moved into docs/, and files in PENDING_FILES are being
split by another change: their hits are reported as TAP TODO (expected failures). Remove
an entry once its facts are in docs/ or its comments repointed, and the check then fails
on any new citation.

usage: check-docs-self-contained.py SOURCE_ROOT
"""
import os
import re
import sys

TREES = ["lib", "include", "agent", "tests", "scripts", "docs"]
FILES = ["README.md"]
SUFFIXES = (".c", ".h", ".py", ".sh", ".build", ".md", ".go", ".txt", ".proto")
SELF = os.path.join("scripts", os.path.basename(__file__))

# name -> pattern of a citation of a file outside the repository.
OUTSIDE = {
    "shared/docs": re.compile(r"shared/docs"),
    "design.md": re.compile(r"(?<!docs/)(?<!\]\()\bdesign\.md"),
    "hcsshim-reference": re.compile(r"hcsshim-reference"),
    "qemu-facts": re.compile(r"qemu-facts"),
    "ttrpc-reference": re.compile(r"ttrpc-reference"),
    "style.md": re.compile(r"\bstyle\.md"),
}

# Not yet moved into docs/ (issue 9, self-contained docs).
PENDING = set()
# Files being split by another change; their comments are repointed there.
PENDING_FILES = set()


def files(root):
    for name in FILES:
        if os.path.exists(os.path.join(root, name)):
            yield name
    for tree in TREES:
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, tree)):
            dirnames.sort()
            for f in sorted(filenames):
                if f.endswith(SUFFIXES):
                    rel = os.path.relpath(os.path.join(dirpath, f), root)
                    if rel != SELF:
                        yield rel


def main():
    if len(sys.argv) != 2:
        sys.stderr.write(__doc__)
        return 2
    root = sys.argv[1]
    hits = {name: [] for name in OUTSIDE}
    for rel in files(root):
        with open(os.path.join(root, rel), encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                for name, pattern in OUTSIDE.items():
                    if pattern.search(line):
                        hits[name].append((rel, "%s:%d: %s" % (rel, number, line.strip())))
    print("1..%d" % len(OUTSIDE))
    failed = False
    for i, name in enumerate(OUTSIDE, 1):
        found = [text for rel, text in hits[name]]
        if not found:
            print("ok %d - no citation of %s" % (i, name))
            continue
        pending = name in PENDING or all(rel in PENDING_FILES for rel, _ in hits[name])
        todo = " # TODO not yet moved into docs/" if pending else ""
        failed = failed or not todo
        print("not ok %d - %d citations of %s%s" % (i, len(found), name, todo))
        for hit in found:
            print("# " + hit)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

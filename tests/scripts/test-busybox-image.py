#!/usr/bin/env python3
"""Checks busybox-image.py: the tree, the OCI layout it writes, and that it is reproducible.

    test-busybox-image.py [BUSYBOX]

Prints TAP; skips when BUSYBOX (default /bin/busybox) is missing. Needs no root and no
containerd: containerd's own import of the archive is in shim-acceptance.sh.
"""
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
BUILDER = os.path.join(HERE, "busybox-image.py")
REF = "localhost/ferry-test/busybox:1"

results = []


def case(name):
    """Runs the decorated function at once, as one TAP case."""
    def run(fn):
        try:
            fn()
            results.append((True, name, ""))
        except Exception as e:  # a failed check or a crash of the builder alike
            results.append((False, name, f"{type(e).__name__}: {e}"))
        return fn
    return run


def build(args, env=None):
    if env is None:  # the default epoch (0), whatever the caller's environment says
        env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    subprocess.run([sys.executable, BUILDER] + args, check=True, env=env,
                   capture_output=True, text=True)


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def read_layout(path):
    with tarfile.open(path) as t:
        members = t.getmembers()
        files = {m.name: t.extractfile(m).read() for m in members if m.isfile()}
    return members, files


def main():
    busybox = sys.argv[1] if len(sys.argv) > 1 else "/bin/busybox"
    if not os.access(busybox, os.X_OK):
        print(f"1..0 # SKIP {busybox} is missing (Debian's busybox-static)")
        return 0
    tmp = tempfile.mkdtemp(prefix="ferry-bbimage.")
    a_root, b_root = os.path.join(tmp, "a"), os.path.join(tmp, "b")
    a_tar, b_tar = os.path.join(tmp, "a.tar"), os.path.join(tmp, "b.tar")
    try:
        build(["rootfs", a_root, "--busybox", busybox])
        build(["archive", a_root, a_tar, "--name", REF])
        members, files = read_layout(a_tar)

        @case("rootfs: bin/busybox is a copy, applets and usr/bin are symlinks to it")
        def _():
            with open(busybox, "rb") as f, open(os.path.join(a_root, "bin/busybox"), "rb") as g:
                assert f.read() == g.read(), "bin/busybox differs from the source"
            assert os.readlink(os.path.join(a_root, "bin/sh")) == "busybox"
            assert os.readlink(os.path.join(a_root, "usr/bin")) == "../bin"
            assert os.path.isfile(os.path.join(a_root, "usr/bin/env"))
            assert oct(os.stat(os.path.join(a_root, "tmp")).st_mode & 0o7777) == "0o1777"

        @case("layout: oci-layout and an index naming one linux manifest as the image")
        def _():
            assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
            index = json.loads(files["index.json"])
            assert index["schemaVersion"] == 2 and len(index["manifests"]) == 1
            m = index["manifests"][0]
            assert m["annotations"]["io.containerd.image.name"] == REF
            assert m["annotations"]["org.opencontainers.image.ref.name"] == "1"
            assert m["platform"]["os"] == "linux"

        @case("layout: every descriptor's digest and size match its blob")
        def _():
            index = json.loads(files["index.json"])
            descs = list(index["manifests"])
            mblob = files["blobs/sha256/" + descs[0]["digest"].split(":")[1]]
            manifest = json.loads(mblob)
            descs += [manifest["config"]] + manifest["layers"]
            for d in descs:
                blob = files["blobs/sha256/" + d["digest"].split(":")[1]]
                assert sha(blob) == d["digest"] and len(blob) == d["size"], d
            blobs = {n for n in files if n.startswith("blobs/")}
            assert len(blobs) == 3, sorted(blobs)

        @case("layer: the config's diff_id is the uncompressed layer, which holds the tree")
        def _():
            index = json.loads(files["index.json"])
            manifest = json.loads(files["blobs/sha256/" + index["manifests"][0]["digest"][7:]])
            config = json.loads(files["blobs/sha256/" + manifest["config"]["digest"][7:]])
            layer = gzip.decompress(files["blobs/sha256/" + manifest["layers"][0]["digest"][7:]])
            assert config["rootfs"]["diff_ids"] == [sha(layer)]
            with tarfile.open(fileobj=io.BytesIO(layer)) as t:
                names = t.getnames()
                assert names == sorted(names), "layer entries are not sorted"
                sh = t.getmember("bin/sh")
                assert sh.issym() and sh.linkname == "busybox"
                with open(busybox, "rb") as f:
                    assert t.extractfile("bin/busybox").read() == f.read()
                for m in t.getmembers():
                    assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", 0), m.name

        @case("reproducible: a second tree, other mtimes and order, gives the same bytes")
        def _():
            build(["rootfs", b_root, "--busybox", busybox])
            for dirpath, dirnames, filenames in os.walk(b_root):
                for n in dirnames + filenames:
                    os.utime(os.path.join(dirpath, n), (1e9, 1e9), follow_symlinks=False)
            build(["archive", b_root, b_tar, "--name", REF])
            with open(a_tar, "rb") as f, open(b_tar, "rb") as g:
                assert f.read() == g.read(), "the two archives differ"

        @case("reproducible: SOURCE_DATE_EPOCH sets every mtime")
        def _():
            env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000")
            c_tar = os.path.join(tmp, "c.tar")
            build(["archive", a_root, c_tar, "--name", REF], env=env)
            ms, fs = read_layout(c_tar)
            assert all(m.mtime == 1700000000 for m in ms)
            index = json.loads(fs["index.json"])
            manifest = json.loads(fs["blobs/sha256/" + index["manifests"][0]["digest"][7:]])
            layer = gzip.decompress(fs["blobs/sha256/" + manifest["layers"][0]["digest"][7:]])
            with tarfile.open(fileobj=io.BytesIO(layer)) as t:
                assert all(m.mtime == 1700000000 for m in t.getmembers())

        @case("rootfs refuses a directory that exists")
        def _():
            r = subprocess.run([sys.executable, BUILDER, "rootfs", a_root, "--busybox", busybox],
                               capture_output=True, text=True)
            assert r.returncode != 0, "a second rootfs into the same directory succeeded"
    except subprocess.CalledProcessError as e:
        results.append((False, "busybox-image.py runs", f"{e}: {e.stderr}"))
    finally:
        subprocess.run(["rm", "-rf", tmp], check=False)
    for i, (good, name, why) in enumerate(results, 1):
        print(f"{'ok' if good else 'not ok'} {i} - {name}")
        for line in why.splitlines():
            print(f"# {line}")
    print(f"1..{len(results)}")
    return 0 if all(r[0] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

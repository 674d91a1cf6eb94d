#!/usr/bin/env python3
"""Build a busybox root file system and a one-layer OCI image archive of it, offline.

    busybox-image.py rootfs DIR [--busybox PATH]
        DIR becomes a tree for `ctr run --rootfs`: bin/busybox (a static busybox copied
        from PATH, default /bin/busybox), bin/<applet> symlinks to it for every applet it
        lists, sbin, usr/bin and usr/sbin as symlinks to bin, and the empty directories
        and /etc files a container expects. DIR must not exist yet.

    busybox-image.py archive DIR OUT.tar --name REF
        OUT.tar becomes an OCI image layout (oci-layout, index.json, blobs/sha256/...)
        holding one linux image named REF (for `ctr images import`): a gzip layer of DIR,
        its config and its manifest.

The archive is reproducible: the same tree (file contents, modes and symlink targets)
gives the same bytes whatever its mtimes, owners or directory order, because entries
are sorted, times are fixed (SOURCE_DATE_EPOCH, default 0), owners are 0:0 with no
names, and gzip carries no name or time. Only the standard library is used.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import stat
import subprocess
import sys
import tarfile

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

# GOARCH names, which OCI platforms and containerd use.
ARCHES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
          "s390x": "s390x", "riscv64": "riscv64", "i686": "386"}

EMPTY_DIRS = ["dev", "etc", "proc", "root", "run", "sys", "tmp", "var", "var/tmp"]
ETC_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/hostname": "busybox\n",
}


def epoch():
    return int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


def build_rootfs(root, busybox):
    os.umask(0o022)  # modes are part of the image
    out = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True)
    applets = sorted({a for a in out.stdout.split() if a and "/" not in a} - {"busybox"})
    if "sh" not in applets:
        sys.exit(f"{busybox} has no sh applet")
    os.makedirs(os.path.join(root, "bin"))
    os.makedirs(os.path.join(root, "usr"))
    for d in EMPTY_DIRS:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    os.chmod(os.path.join(root, "var", "tmp"), 0o1777)
    os.chmod(os.path.join(root, "root"), 0o700)
    with open(busybox, "rb") as src, open(os.path.join(root, "bin", "busybox"), "wb") as dst:
        dst.write(src.read())
    os.chmod(os.path.join(root, "bin", "busybox"), 0o755)
    for a in applets:
        os.symlink("busybox", os.path.join(root, "bin", a))
    os.symlink("bin", os.path.join(root, "sbin"))
    os.symlink("../bin", os.path.join(root, "usr", "bin"))
    os.symlink("../bin", os.path.join(root, "usr", "sbin"))
    for path, text in ETC_FILES.items():
        with open(os.path.join(root, path), "w", encoding="ascii") as f:
            f.write(text)
        os.chmod(os.path.join(root, path), 0o644)


def tar_info(name, st, mtime):
    ti = tarfile.TarInfo(name)
    ti.mode = stat.S_IMODE(st.st_mode)
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.mtime = mtime
    return ti


def layer_tar(root):
    """The uncompressed layer: every entry below root, sorted by path."""
    mtime = epoch()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        entries = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for n in dirnames + filenames:
                entries.append(os.path.relpath(os.path.join(dirpath, n), root))
        for rel in sorted(entries):
            path = os.path.join(root, rel)
            st = os.lstat(path)
            ti = tar_info(rel, st, mtime)
            if stat.S_ISLNK(st.st_mode):
                ti.type = tarfile.SYMTYPE
                ti.linkname = os.readlink(path)
                ti.mode = 0o777
                tar.addfile(ti)
            elif stat.S_ISDIR(st.st_mode):
                ti.type = tarfile.DIRTYPE
                tar.addfile(ti)
            elif stat.S_ISREG(st.st_mode):
                ti.size = st.st_size
                with open(path, "rb") as f:
                    tar.addfile(ti, f)
            else:
                sys.exit(f"{path}: only directories, files and symlinks go into the layer")
    return buf.getvalue()


def gzip_bytes(data):
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as g:
        g.write(data)
    return buf.getvalue()


def canonical_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def descriptor(media_type, blob, **extra):
    d = {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(blob).hexdigest(),
         "size": len(blob)}
    d.update(extra)
    return d


def build_archive(root, out, ref):
    arch = ARCHES.get(platform.machine(), platform.machine())
    layer = layer_tar(root)
    layer_gz = gzip_bytes(layer)
    config = canonical_json({
        "architecture": arch,
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"],
                   "WorkingDir": "/"},
        "rootfs": {"type": "layers",
                   "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
        "history": [{"created": "1970-01-01T00:00:00Z",
                     "created_by": "tests/scripts/busybox-image.py"}],
    })
    manifest = canonical_json({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER_GZIP, layer_gz)],
    })
    tag = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else "latest"
    index = canonical_json({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [descriptor(OCI_MANIFEST, manifest,
                                 platform={"architecture": arch, "os": "linux"},
                                 annotations={"io.containerd.image.name": ref,
                                              "org.opencontainers.image.ref.name": tag})],
    })
    blobs = {hashlib.sha256(b).hexdigest(): b for b in (layer_gz, config, manifest)}
    files = [("oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"})),
             ("index.json", index)]
    files += [(f"blobs/sha256/{h}", blobs[h]) for h in sorted(blobs)]
    mtime = epoch()
    tmp = out + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("blobs", "blobs/sha256"):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, mtime
            tar.addfile(ti)
        for name, data in files:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), 0o644, mtime
            tar.addfile(ti, io.BytesIO(data))
    os.replace(tmp, out)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("rootfs")
    r.add_argument("dir")
    r.add_argument("--busybox", default="/bin/busybox")
    a = sub.add_parser("archive")
    a.add_argument("dir")
    a.add_argument("out")
    a.add_argument("--name", required=True)
    args = p.parse_args()
    if args.cmd == "rootfs":
        build_rootfs(args.dir, args.busybox)
    else:
        build_archive(args.dir, args.out, args.name)


if __name__ == "__main__":
    main()

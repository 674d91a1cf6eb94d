#!/usr/bin/env python3
"""Kernel-side helpers for image/build.sh (docs/image.md).

  kernel.py vmlinux VMLINUZ OUT
      The uncompressed kernel (ELF with the PVH entry note) from Debian's xz bzImage.
  kernel.py check-config CONFIG
      Fail unless everything the agent and crun need is built into the kernel.
  kernel.py modules KODIR OUTDIR
      Copy the modules the guest needs, with their dependencies, into OUTDIR and write
      OUTDIR/modules.load: one line per module to load, in dependency order,
      "NAME FILE WHEN". WHEN is "-" (always), "pci" or "mmio" (a virtio transport:
      when that bus has a virtio device), or the virtio device ids, decimal and
      comma-separated, whose presence makes init load it.

Module dependencies come from each .ko's modinfo `depends=` string: Debian ships no
modules.dep (depmod runs in postinst) and the guest has no kmod, only busybox insmod.
"""
import lzma
import os
import re
import shutil
import sys

PROG = "image/kernel.py"

# Loaded at every boot: the virtio core and the virtio-serial driver the agent talks
# through.
ALWAYS = ["virtio_ring", "virtio", "virtio_console"]
# The virtio transports, each loaded only when its bus has a virtio device (a module
# load costs 10-30 ms under TCG): PCI for pc/q35, virtio-mmio (ACPI LNRO0005) for
# microvm. Each tag's alias is checked below; init knows how to look for the devices.
TRANSPORTS = {
    "pci": (["virtio_pci"], "pci:v00001AF4d*sv*sd*bc*sc*i*"),
    "mmio": (["virtio_mmio"], "acpi*:LNRO0005:*"),
}
# Loaded only when a virtio device of that id exists (the virtio spec's device ids;
# each matches the module's `alias=virtio:dNNNNNNNNv*`, checked below).
ON_DEMAND = {
    0x01: ["virtio_net"],
    0x02: ["virtio_blk"],
    0x04: ["virtio_rng"],
    0x05: ["virtio_balloon"],
    # virtio-scsi: the disk driver and the file systems the agent mounts from SCSI disks
    # (MappedVirtualDisk: erofs or ext4; CombinedLayers: overlay), which have no alias of
    # their own and ride with the controller. The *_generic crypto modules are the back
    # ends that libcrc32c, crc-t10dif and crc64-rocksoft name only as softdeps (found
    # through request_module, which busybox insmod cannot serve), listed before what
    # needs them: libcrc32c (erofs, ext4) fails to load without crc32c.
    0x08: ["virtio_scsi", "crct10dif_generic", "crc64_rocksoft_generic", "crc32c_generic",
           "sd_mod", "erofs", "ext4", "overlay"],
    0x09: ["9pnet_virtio", "9p"],  # 9p the file system has no alias: it rides with its transport
    0x13: ["vmw_vsock_virtio_transport"],
    0x1A: ["virtiofs"],
}

# What the agent and crun rely on; Debian builds them in (=y). A module would need
# loading before the agent starts, which init does not do.
REQUIRED_CONFIG = [
    "DEVTMPFS", "TMPFS", "PROC_FS", "SYSFS", "UNIX98_PTYS", "BLK_DEV_INITRD",
    "PVH", "SERIAL_8250", "SERIAL_8250_CONSOLE", "UNIX", "EPOLL", "SIGNALFD", "EVENTFD",
    "CGROUPS", "MEMCG", "CGROUP_PIDS", "CGROUP_SCHED", "CPUSETS", "CGROUP_DEVICE",
    "CGROUP_FREEZER", "CGROUP_BPF", "BPF_SYSCALL", "NAMESPACES", "UTS_NS", "IPC_NS",
    "PID_NS", "NET_NS", "USER_NS", "SECCOMP", "SECCOMP_FILTER", "POSIX_MQUEUE",
]


def die(msg):
    print(f"{PROG}: {msg}", file=sys.stderr)
    sys.exit(1)


def cmd_vmlinux(vmlinuz, out):
    data = open(vmlinuz, "rb").read()
    at = data.find(b"\xfd7zXZ\x00")
    if at < 0:
        die(f"{vmlinuz}: no xz stream found (the kernel is not xz-compressed?)")
    try:
        elf = lzma.LZMADecompressor().decompress(data[at:])
    except lzma.LZMAError as e:
        die(f"{vmlinuz}: xz payload at offset {at}: {e}")
    if elf[:4] != b"\x7fELF":
        die(f"{vmlinuz}: the xz payload is not an ELF file")
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(elf)
    os.replace(tmp, out)


def cmd_check_config(config):
    values = {}
    for line in open(config):
        m = re.match(r"^CONFIG_([A-Za-z0-9_]+)=(.*)$", line)
        if m:
            values[m.group(1)] = m.group(2)
    missing = [f"CONFIG_{o}={values.get(o, 'unset')}" for o in REQUIRED_CONFIG
               if values.get(o) != "y"]
    if missing:
        die(f"{config}: the guest needs these built in (=y): {' '.join(missing)}")


def modinfo(path):
    """The .modinfo key=value strings of a module (NUL-separated in the ELF)."""
    info = {}
    for m in re.finditer(rb"(?<=\x00)(depends|alias|name)=([^\x00]*)\x00",
                         open(path, "rb").read()):
        info.setdefault(m.group(1).decode(), []).append(m.group(2).decode())
    return info


def cmd_modules(kodir, outdir):
    found = {}
    for root, _, files in os.walk(kodir):
        for f in files:
            if f.endswith(".ko"):
                found[f[:-3].replace("-", "_")] = os.path.join(root, f)

    order = []  # (name, ondemand id or None), dependencies first
    placed = {}

    def place(name, chain):
        if name in placed:
            return
        if name in chain:
            die(f"module dependency cycle: {' -> '.join(chain + [name])}")
        if name not in found:
            need = f" (needed by {chain[-1]})" if chain else ""
            die(f"module {name}{need} is not in {kodir}: add its path to image/build.sh")
        deps = modinfo(found[name]).get("depends", [""])[0]
        for dep in filter(None, deps.split(",")):
            place(dep.replace("-", "_"), chain + [name])
        placed[name] = True
        order.append(name)

    for name in ALWAYS:
        place(name, [])
    for bus, (names, alias) in TRANSPORTS.items():
        for name in names:
            place(name, [])
        if alias not in modinfo(found[names[0]]).get("alias", []):
            die(f"module {names[0]} has no alias {alias} for the {bus} transport")
    for device, names in sorted(ON_DEMAND.items()):
        for name in names:
            place(name, [])
        aliases = modinfo(found[names[0]]).get("alias", [])
        if f"virtio:d{device:08X}v*" not in aliases:
            die(f"module {names[0]} has no alias for virtio device {device:#x}: {aliases}")

    # A module is loaded on demand iff no always-loaded module needs it; one that several
    # device ids need is tagged with all of them (init skips what is loaded already).
    # A transport's modules are tagged with its bus instead.
    always = set(closure(ALWAYS, found))
    bus_of = {}
    for bus, (names, _) in TRANSPORTS.items():
        for name in closure(names, found):
            if name not in always:
                bus_of[name] = bus
    tag = {}
    for device, names in sorted(ON_DEMAND.items()):
        for name in closure(names, found):
            if name in bus_of:
                die(f"module {name} is needed by virtio device {device:#x} and the "
                    f"{bus_of[name]} transport: init cannot tag it with both")
            if name not in always:
                tag.setdefault(name, set()).add(device)

    os.makedirs(outdir, exist_ok=True)
    lines = []
    for name in order:
        file = os.path.basename(found[name])
        shutil.copyfile(found[name], os.path.join(outdir, file))
        when = bus_of.get(name) or ",".join(str(d) for d in sorted(tag.get(name, ()))) or "-"
        lines.append(f"{name} {file} {when}\n")
    with open(os.path.join(outdir, "modules.load"), "w") as f:
        f.writelines(lines)


def closure(names, found):
    """The names and everything they depend on, transitively."""
    seen = []
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.append(name)
        deps = modinfo(found[name]).get("depends", [""])[0]
        todo.extend(d.replace("-", "_") for d in deps.split(",") if d)
    return seen


def main(argv):
    cmds = {"vmlinux": (cmd_vmlinux, 2), "check-config": (cmd_check_config, 1),
            "modules": (cmd_modules, 2)}
    if len(argv) < 2 or argv[1] not in cmds or len(argv) - 2 != cmds[argv[1]][1]:
        die("usage: kernel.py vmlinux VMLINUZ OUT | check-config CONFIG | modules KODIR OUTDIR")
    cmds[argv[1]][0](*argv[2:])


if __name__ == "__main__":
    main(sys.argv)

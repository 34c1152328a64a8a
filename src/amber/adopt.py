"""`amber init`: adopt a Debian system installed on btrfs, in place, with a way back.

What it finds (Debian's installer: the root in a subvolume `@rootfs`, or the top level; /boot
inside it; /var and /home plain directories) becomes amber's layout without copying data blocks:

    @/.snapshots/1/snapshot   a snapshot of the old root, read-only, the default subvolume
    @/var, @/home, ...        the shared subvolumes, holding what was in those directories
                              (reflinked out of snapshot 1, never out of the old root)
    the old root              untouched: `amber init --undo` makes it the default again

A directory that is already a separate mount (a /home subvolume or partition of its own) is
kept as it is: its fstab line stays and no shared subvolume is made for it.

The boot loader: amber's GRUB on the ESP (and for BIOS), as amber.boot.takeover describes,
with a backup of what it replaces in the store; the menu keeps an entry that boots the old root
with its own kernel and command line ("the system before amber"). `--undo` restores the backup
and makes the old root the default subvolume again; amber's subvolumes stay.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from amber import log
from amber.errors import AmberError, ExitCode, die
from amber.run import run

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from amber.boot.takeover import Targets

ADOPTED = ".amber/adopted.json"  # in @/.snapshots: what init did, for --undo
# Room for the metadata of the snapshot and the reflinked copies, beyond what the data uses.
METADATA_HEADROOM = 256 << 20


@dataclass(frozen=True)
class Found:
    """What `amber init --check` found on the system to adopt."""

    root: Path
    device: str
    fs_uuid: str
    subvolume: str  # the root's path from the btrfs top level; "" for the top level itself
    subvolume_id: int
    separate: tuple[str, ...]  # shared directories that are mounts of their own: kept
    free: int
    needed: int
    kernel: str | None
    boot: Targets
    notes: tuple[str, ...] = field(default=())

    def as_json(self) -> dict[str, Any]:
        bios = self.boot.bios
        return {"root": str(self.root), "device": self.device, "uuid": self.fs_uuid,
                "subvolume": self.subvolume or "<top level>", "subvolume_id": self.subvolume_id,
                "kept_separate": list(self.separate), "free": self.free, "needed": self.needed,
                "kernel": self.kernel, "esp": str(self.boot.esp),
                "bios_boot": {"disk": str(bios.device), "partition": bios.partition.number}
                if bios else None, "notes": list(self.notes)}


def check_etc_hook(root: Path, release: str) -> list[str]:
    """Snapshot 1 boots the old root's initrd: without amber's hook (dracut's 90amber-etc,
    initramfs-tools' amber-etc, both named amber-etc.sh inside) its /etc would stay read-only.
    Refused when the initrd is readable and lacks it; a note when it cannot be read."""
    from amber.boot import initrd

    image = root / f"boot/initrd.img-{release}"
    listing = initrd.list_initrd(image)
    if listing is None:
        return [f"cannot read {image} to see whether it has amber's /etc hook: if /etc is "
                "read-only after the switch, rebuild it (update-initramfs -u) and reboot"]
    if not any(name.endswith("amber-etc.sh") for name in listing.splitlines()):
        die(f"the initrd {image} lacks amber's /etc hook: snapshot 1 would boot with a "
            "read-only /etc", hint="install amber's Debian package (it rebuilds the initrd), or "
            "rebuild it with 'update-initramfs -u' (or 'dracut --force'), then run amber init "
            "again", code=ExitCode.REFUSED)
    return []


def _findmnt(root: Path, *columns: str) -> list[str]:
    out = run(["findmnt", "--noheadings", "--first-only", "--nofsroot", "--target", str(root),
               "--output", ",".join(columns), "--raw"], capture=True,
              code=ExitCode.ENVIRONMENT).stdout.split()
    return out + [""] * (len(columns) - len(out))


def _block_type(device: str) -> str:
    result = run(["lsblk", "--noheadings", "--nodeps", "--output", "TYPE", device], capture=True,
                 check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


def _used_bytes(root: Path) -> int:
    stat = os.statvfs(root)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


def inspect(root: Path, esp: Path | None = None, disk: Path | None = None) -> Found:
    """Every check `amber init` makes before it changes anything; refused with a reason."""
    from amber import btrfs
    from amber.boot import kernels, takeover
    from amber.snapshots import SHARED_SUBVOLUMES

    if os.geteuid() != 0:
        die("amber init must run as root", hint="it creates subvolumes and mounts the top level",
            code=ExitCode.ENVIRONMENT)
    if not root.is_dir():
        die(f"{root} is not a directory", hint="mount the system to adopt there",
            code=ExitCode.NOT_FOUND)
    source, fstype, uuid = _findmnt(root, "SOURCE", "FSTYPE", "UUID")
    if fstype != "btrfs":
        die(f"the root filesystem at {root} is {fstype or 'unknown'}, not btrfs",
            hint="amber adopts systems installed on btrfs only", code=ExitCode.ENVIRONMENT)
    kind = _block_type(source)
    if kind in ("crypt", "lvm") or source.startswith("/dev/mapper/"):
        die(f"the root is on {kind or 'device-mapper'} ({source}); amber init does not handle "
            "encrypted or LVM roots yet", hint="adopt a system on a plain btrfs partition",
            code=ExitCode.ENVIRONMENT)
    if (root / ".snapshots").exists() or (root / "etc/snapper/configs").is_dir():
        die(f"{root} already has a snapshot store (/.snapshots, or snapper is configured)",
            hint="amber init adopts a system that has none; amber works on it as it is if it "
                 "follows snapper's layout", code=ExitCode.REFUSED)
    subvolume = btrfs.subvolume_path(root)
    if subvolume.split("/")[0] == "@":
        die(f"the root subvolume is {subvolume!r}, which collides with amber's container '@'",
            hint="supported: Debian's '@rootfs' (or any other name), or the top level",
            code=ExitCode.REFUSED)
    separate = tuple(name for name in SHARED_SUBVOLUMES if os.path.ismount(root / name))
    nested = [name for name in btrfs.subvolumes_below(root)
              if name.split("/")[0] not in separate]
    if nested:
        die(f"{root} holds subvolumes amber does not know: {', '.join(sorted(nested)[:5])}",
            hint="a snapshot of the root would leave them out; move or delete them first",
            code=ExitCode.REFUSED)
    release = kernels.boot_kernel(root)
    if release is None or not (root / f"boot/initrd.img-{release}").is_file():
        die(f"{root} has no kernel with an initrd in /boot", hint="install linux-image-amd64",
            code=ExitCode.REFUSED)
    stat = os.statvfs(root)
    free = stat.f_bavail * stat.f_frsize
    needed = METADATA_HEADROOM + _used_bytes(root) // 50
    if free < needed:
        die(f"too little free space on {source}: {free >> 20} MiB free, {needed >> 20} MiB "
            "needed for the snapshot's and the copies' metadata",
            hint="free some space first", code=ExitCode.NO_SPACE)
    boot = takeover.find(root, source, uuid, esp, disk)
    takeover.check_host(boot)
    notes = [f"/{name} is a mount of its own: kept as it is" for name in separate]
    notes += check_etc_hook(root, release)
    return Found(root, source, uuid, subvolume, btrfs.subvolume_id(root), separate, free,
                 needed, release, boot, (*notes, *boot.notes))


def plan_text(found: Found) -> str:
    from amber.snapshots import SHARED_SUBVOLUMES

    old = found.subvolume or "the top level"
    moved = [f"/{n}" for n in SHARED_SUBVOLUMES if n not in found.separate]
    lines = [f"amber init on {found.root} ({found.device}, btrfs {found.fs_uuid}):",
             f"  snapshot 1        read-only snapshot of {old} (kernel {found.kernel}), the "
             "default subvolume",
             f"  shared subvolumes {', '.join(moved)} (their data reflinked out of snapshot 1)",
             f"  the old root      {old}, untouched: the menu entry 'the system before amber' "
             "boots it, 'amber init --undo' makes it the default again",
             f"  UEFI              amber's GRUB on the ESP {found.boot.esp} (what it replaces is "
             "kept for --undo)"]
    if found.boot.bios is not None:
        bios = found.boot.bios
        lines.append(f"  BIOS              amber's GRUB in {bios.device}'s boot sector and BIOS "
                     f"boot partition {bios.partition.number} (their bytes kept for --undo)")
    lines.append(f"  free space        {found.free >> 20} MiB ({found.needed >> 20} MiB needed)")
    lines += [f"  note              {note}" for note in found.notes]
    return "\n".join(lines)


# ---- the conversion --------------------------------------------------------------------------

def merged_fstab(old: str, fs_uuid: str, separate: tuple[str, ...]) -> str:
    """The old fstab with amber's root, /.snapshots and shared subvolumes in place of the old
    root line and of the directories that become shared subvolumes; everything else kept."""
    from amber.layout import CONTAINER
    from amber.snapshots import SHARED_SUBVOLUMES

    replaced = {"/", "/.snapshots", *(f"/{n}" for n in SHARED_SUBVOLUMES if n not in separate)}
    kept = []
    for line in old.splitlines():
        fields = line.split()
        if fields and not fields[0].startswith("#") and len(fields) >= 2 and \
                fields[1].rstrip("/") in {p.rstrip("/") or "/" for p in replaced} | {""}:
            kept.append(f"# replaced by amber init: {line}")
        else:
            kept.append(line)
    source = f"UUID={fs_uuid}"
    after = "x-systemd.requires-mounts-for=/.snapshots"
    ours = ["# amber: / is the booted snapshot, read-only; the shared subvolumes are writable.",
            f"{source} / btrfs ro 0 0",
            f"{source} /.snapshots btrfs subvol={CONTAINER}/.snapshots 0 0"]
    ours += [f"{source} /{n} btrfs subvol={CONTAINER}/{n},{after} 0 0"
             for n in SHARED_SUBVOLUMES if n not in separate]
    return "\n".join([*kept, *ours]) + "\n"


def _grub_words(root: Path) -> list[str]:
    """GRUB_CMDLINE_LINUX and GRUB_CMDLINE_LINUX_DEFAULT of the old GRUB's settings, without
    what names the root (amber's and the old entry's own root= and rootflags= replace it)."""
    linux, default = "", ""
    path = root / "etc/default/grub"
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            name, _, value = line.partition("=")
            try:
                words = " ".join(shlex.split(value))
            except ValueError:
                continue
            if name.strip() == "GRUB_CMDLINE_LINUX":
                linux = words
            elif name.strip() == "GRUB_CMDLINE_LINUX_DEFAULT":
                default = words
    return [w for w in f"{linux} {default}".split()
            if not w.startswith(("root=", "rootflags=", "rootfstype=")) and w not in ("ro", "rw")]


def kernel_cmdline(snapshot: Path, fs_uuid: str) -> str:
    """From the old GRUB's settings (/etc/default/grub), the root made amber's."""
    return " ".join(["root=UUID=" + fs_uuid, "rootfstype=btrfs", "ro", *_grub_words(snapshot),
                     "panic=5"])


def before_entry(found: Found) -> dict[str, str]:
    """The menu entry that boots the old root as its own GRUB did: its kernel and initrd, its
    command line with its subvolume named (the default subvolume is amber's now)."""
    base = f"/{found.subvolume}" if found.subvolume else ""
    flags = f"subvol={found.subvolume}" if found.subvolume else "subvolid=5"
    arguments = " ".join([f"root=UUID={found.fs_uuid}", "ro", f"rootflags={flags}",
                          *_grub_words(found.root)])
    return {"title": f"amber: the system before amber ({found.subvolume or 'the top level'}) "
                     f"- kernel {found.kernel}",
            "kernel": f"{base}/boot/vmlinuz-{found.kernel}",
            "initrd": f"{base}/boot/initrd.img-{found.kernel}",
            "arguments": arguments}


def _mount_top(device: str, where: Path) -> None:
    run(["mount", "-o", "subvolid=5", device, str(where)], code=ExitCode.ENVIRONMENT)


@contextlib.contextmanager
def _top_level(device: str) -> Iterator[Path]:
    import tempfile
    from pathlib import Path as P

    with tempfile.TemporaryDirectory(prefix="amber-init-") as tmp:
        _mount_top(device, P(tmp))
        try:
            yield P(tmp)
        finally:
            run(["umount", tmp], check=False)


def convert(found: Found, top: Path) -> int:
    """On the top level mounted at `top`: snapshot 1 from the old root, the shared subvolumes,
    fstab and the kernel command line in snapshot 1, snapshot 1 the default. Returns 1."""
    from amber import btrfs, layout

    container = top / layout.CONTAINER
    if container.exists():
        die(f"{container} exists already", hint="amber init adopts a system without amber's "
            "layout; see 'amber init --check'", code=ExitCode.REFUSED)
    old_root = top / found.subvolume if found.subvolume else top
    log.step(f"snapshot 1: a snapshot of {found.subvolume or 'the top level'}")
    btrfs.create_subvolume(container)
    btrfs.create_subvolume(container / ".snapshots")
    (container / ".snapshots" / "1").mkdir()
    snapshot = layout.first_snapshot_path(top)
    btrfs.create_snapshot(old_root, snapshot)
    fstab = snapshot / "etc/fstab"
    old = fstab.read_text() if fstab.is_file() else ""
    fstab.write_text(merged_fstab(old, found.fs_uuid, found.separate))
    (snapshot / "etc/kernel").mkdir(exist_ok=True)
    (snapshot / "etc/kernel/cmdline").write_text(kernel_cmdline(snapshot, found.fs_uuid) + "\n")
    (snapshot / "boot/efi").mkdir(parents=True, exist_ok=True)
    log.step("the shared subvolumes: moving their data out of snapshot 1 (reflinks)")
    layout.finish(top, description="the system amber init adopted", skip=found.separate)
    return 1


def adopt(root: Path, esp: Path | None = None, disk: Path | None = None) -> Found:
    """`amber init --root DIR` (the system mounted at DIR, not running)."""
    from amber import btrfs
    from amber.boot import menu, takeover
    from amber.snapshots import Store
    from amber.state import atomic_write

    found = inspect(root, esp, disk)
    todo = takeover.plan(found.boot, found.fs_uuid)  # GRUB built, the ESP read: still no change
    with _top_level(found.device) as top:
        convert(found, top)
        store = Store(top / "@")
        amber_dir = store.dir / ".amber"
        amber_dir.mkdir(exist_ok=True)
        log.step("keeping what amber's boot loader replaces, for 'amber init --undo'")
        boot = takeover.back_up(store.dir, found.boot, todo)
        atomic_write(store.dir / ADOPTED, json.dumps({
            "old_root": found.subvolume, "old_root_id": found.subvolume_id,
            "kept_separate": list(found.separate), "boot": boot}, indent=1) + "\n")
        atomic_write(amber_dir / menu.BEFORE_NAME, json.dumps(before_entry(found), indent=1)
                     + "\n")
        menu.install(store)
        btrfs.sync(store.dir)
        try:
            takeover.install(found.boot, todo)
        except (AmberError, OSError):
            # The old GRUB names its subvolume, so the old system still boots; the record and
            # the backup are written, so --undo can put back what was half replaced.
            log.warn("amber's boot loader is installed only in part",
                     hint="fix the cause and run 'amber init --undo' (it restores the ESP and "
                          "the boot code), or boot the old system as before")
            raise
    return found


def _record(store_dir: Path) -> dict[str, Any]:
    path = store_dir / ADOPTED
    try:
        record = json.loads(path.read_text())
        int(record["old_root_id"])
    except FileNotFoundError:
        die("amber init did not adopt this system: nothing to undo",
            hint=f"{path} is missing", code=ExitCode.NOT_FOUND)
    except (OSError, ValueError, KeyError, TypeError) as e:
        die(f"{path} is unreadable ({e}): cannot undo", hint="restore it from a backup",
            code=ExitCode.NOT_FOUND)
    if not isinstance(record, dict):
        die(f"{path} is not amber init's record", hint="nothing was changed",
            code=ExitCode.NOT_FOUND)
    if record.get("undone"):
        die("'amber init --undo' was done already: the system from before amber is the default",
            hint="nothing to undo", code=ExitCode.NOT_FOUND)
    return record


def undo(root: Path, esp: Path | None = None, disk: Path | None = None) -> int:
    """The old root the default subvolume again, the boot loader restored; amber's snapshots
    and shared subvolumes stay (unused). `root`: the adopted system as it runs (/), or any
    subvolume of its filesystem mounted (a rescue system)."""
    from amber import btrfs, layout
    from amber.boot import takeover
    from amber.state import atomic_write

    if os.geteuid() != 0:
        die("amber init --undo must run as root", hint="it changes the default subvolume",
            code=ExitCode.ENVIRONMENT)
    source, fstype, uuid = _findmnt(root, "SOURCE", "FSTYPE", "UUID")
    if fstype != "btrfs":
        die(f"the filesystem at {root} is {fstype or 'unknown'}, not btrfs",
            hint="nothing to undo: amber init adopts btrfs systems only", code=ExitCode.NOT_FOUND)
    with _top_level(source) as top:
        store_dir = top / layout.CONTAINER / ".snapshots"
        record = _record(store_dir)
        old_id = int(record["old_root_id"])
        try:
            btrfs.subvolume_path(top, old_id)
        except Exception:
            die(f"the old root subvolume (id {old_id}) is gone", hint="nothing to go back to; "
                "nothing was changed", code=ExitCode.NOT_FOUND)
        boot = record.get("boot")
        targets = takeover.find(root, source, uuid, esp, disk) if boot else None
        if targets is not None and boot is not None:
            takeover.check_restore(store_dir, targets, boot)
            takeover.restore(store_dir, targets, boot)
        btrfs.set_default_subvolume(top, old_id)
        atomic_write(store_dir / ADOPTED, json.dumps({**record, "undone": True}, indent=1)
                     + "\n")
        btrfs.sync(top)
    return old_id

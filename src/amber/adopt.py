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

On the running system the switch is staged: the conversion above happens at once (the running
system, which is the old root, does not see it), and the first boot of snapshot 1 finishes it
(`amber init --switch`, from amber-adopt-switch.service, before /var and the others are
mounted): each shared subvolume is made again from the old root as it was at shutdown, so what
the old system wrote there after `amber init` is not lost. The copy made by `amber init` is
then dropped, unless something changed it (it is kept aside then, never deleted).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from amber import log
from amber.errors import AmberError, ExitCode, die
from amber.run import run

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from amber.boot.takeover import Targets

ADOPTED = ".amber/adopted.json"  # in @/.snapshots: what init did, for --undo and the switch
SWITCH_UNIT = "amber-adopt-switch.service"
SWITCH_WANTS = f"systemd/system/local-fs.target.wants/{SWITCH_UNIT}"  # in a snapshot's /etc
SWITCH_DIR = ".amber/adopt-switch"  # in @/.snapshots: the old root's snapshot, kept copies
# Suffixes of a shared subvolume's siblings while the switch replaces it (see finish_switch).
FRESH = ".amber-switch"
AT_INIT = ".amber-at-init"
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
    if is_running_root(found.root):
        lines.append("  switch            at the next boot: /var, /home, ... are made again from "
                     f"{old} as it is then, so nothing written until the reboot is lost")
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
    words = _grub_words(snapshot)
    # panic=: a panicked trial boot reboots into the fallback (unless the admin set it).
    panic = [] if any(w.startswith("panic=") for w in words) else ["panic=5"]
    return " ".join(["root=UUID=" + fs_uuid, "rootfstype=btrfs", "ro", *words, *panic])


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


def is_running_root(root: Path) -> bool:
    return os.path.realpath(root) == "/"


def adopt(root: Path, esp: Path | None = None, disk: Path | None = None,
          staged: bool | None = None) -> Found:
    """`amber init --root DIR` (the system mounted at DIR, not running), or `amber init` (the
    running system: the switch is staged for the first boot of snapshot 1; `staged` says so
    when not given)."""
    from amber import btrfs, layout
    from amber.boot import menu, takeover
    from amber.snapshots import SHARED_SUBVOLUMES, Store
    from amber.state import atomic_write

    found = inspect(root, esp, disk)
    staged = is_running_root(root) if staged is None else staged
    todo = takeover.plan(found.boot, found.fs_uuid)  # GRUB built, the ESP read: still no change
    with _top_level(found.device) as top:
        convert(found, top)
        store = Store(top / "@")
        amber_dir = store.dir / ".amber"
        amber_dir.mkdir(exist_ok=True)
        log.step("keeping what amber's boot loader replaces, for 'amber init --undo'")
        boot = takeover.back_up(store.dir, found.boot, todo)
        record: dict[str, Any] = {
            "old_root": found.subvolume, "old_root_id": found.subvolume_id,
            "kept_separate": list(found.separate), "boot": boot}
        if staged:
            moved = [n for n in SHARED_SUBVOLUMES if n not in found.separate]
            btrfs.sync(top)
            record["switch"] = {
                "state": "pending", "moved": moved, "adopted_at": time.time(),
                "generations": {n: btrfs.generation(top / layout.CONTAINER / n) for n in moved}}
            wants = layout.first_snapshot_path(top) / "etc" / SWITCH_WANTS
            wants.parent.mkdir(parents=True, exist_ok=True)
            wants.unlink(missing_ok=True)
            wants.symlink_to(f"/usr/lib/systemd/system/{SWITCH_UNIT}")
        atomic_write(store.dir / ADOPTED, json.dumps(record, indent=1) + "\n")
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


# ---- the switch, at the first boot of snapshot 1 (staged adoption) ---------------------------

@dataclass(frozen=True)
class Switched:
    """What `amber init --switch` did."""

    moved: tuple[str, ...]  # shared subvolumes made again from the old root
    kept: tuple[str, ...]  # copies made by amber init that changed since: kept, not deleted
    etc_edits: tuple[str, ...]  # files of the old /etc changed after amber init
    done_before: bool = False  # nothing pending: the switch was done already

    def as_json(self) -> dict[str, Any]:
        return {"moved": list(self.moved), "kept": list(self.kept),
                "etc_edits_after_init": list(self.etc_edits), "done_before": self.done_before}


def _switch_record(store_dir: Path) -> dict[str, Any] | None:
    """The pending switch of amber init's record, or None when there is nothing to do."""
    try:
        record = json.loads((store_dir / ADOPTED).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        die(f"{store_dir / ADOPTED} is unreadable ({e})", hint="the shared subvolumes stay as "
            "amber init made them; restore the file to finish the switch",
            code=ExitCode.NOT_FOUND)
    switch = record.get("switch") if isinstance(record, dict) else None
    if not isinstance(switch, dict) or switch.get("state") != "pending" or record.get("undone"):
        return None
    return dict(record)


def _siblings(current: Path) -> tuple[Path, Path]:
    return (current.with_name(f".{current.name}{FRESH}"),
            current.with_name(f".{current.name}{AT_INIT}"))


def _copy_tree(source: Path, dest: Path) -> None:
    if source.is_dir() and not source.is_symlink() and any(source.iterdir()):
        run(["cp", "-a", "--reflink=auto", f"{source}/.", f"{dest}/"],
            where=f"while copying {source}", code=ExitCode.STEP_FAILED)


def _keep_package_database_links(fresh: Path, current: Path, name: str) -> None:
    """/var/lib/dpkg and /var/lib/rpm stay links into the snapshot (amber.layout): the old
    root's databases are the old system's, not snapshot 1's."""
    import shutil

    from amber.layout import PACKAGE_DATABASES

    for in_var, _ in PACKAGE_DATABASES:
        top, _, rest = in_var.partition("/")
        if top != name:
            continue
        copied, link = fresh / rest, current / rest
        if copied.is_dir() and not copied.is_symlink():
            shutil.rmtree(copied)
        if link.is_symlink() and not copied.is_symlink():
            copied.symlink_to(os.readlink(link))


def _replace_shared(container: Path, name: str, source: Path, generation: int | None,
                    kept_dir: Path) -> bool:
    """@/<name> made again from the old root's /<name>; returns whether amber init's copy was
    kept aside because it changed since (or cannot be shown not to have: a run interrupted
    after the swap). Each step can be interrupted: the next run completes it."""
    from amber import btrfs

    current = container / name
    fresh, at_init = _siblings(current)
    unchanged = False
    if not current.exists() and fresh.exists() and at_init.exists():
        os.rename(fresh, current)  # interrupted between the two renames below
    elif at_init.exists():
        if fresh.exists():
            btrfs.delete_subvolume(fresh)  # swapped already; a stray unfinished copy
    else:
        if fresh.exists():
            btrfs.delete_subvolume(fresh)  # the unfinished copy of an interrupted run
        btrfs.create_subvolume(fresh)
        _copy_tree(source / name, fresh)
        _keep_package_database_links(fresh, current, name)
        unchanged = generation is not None and btrfs.generation(current) == generation
        os.rename(current, at_init)
        os.rename(fresh, current)
    btrfs.sync(container)
    if unchanged:
        btrfs.delete_subvolume(at_init)
        return False
    kept_dir.mkdir(parents=True, exist_ok=True)
    os.rename(at_init, _free_name(kept_dir / name.replace("/", "-")))
    return True


def _free_name(path: Path) -> Path:
    n, candidate = 1, path
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def _etc_edits(old_etc: Path, since: float, limit: int = 20) -> list[str]:
    """Files of the old /etc changed after `since` (said, not carried over), at most `limit`."""
    edits: list[str] = []
    for folder, dirs, files in os.walk(old_etc):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                if os.lstat(path).st_mtime > since:
                    edits.append("/etc/" + os.path.relpath(path, old_etc))
                    if len(edits) >= limit:
                        return edits
    return edits


def finish_switch(root: Path) -> Switched:
    """`amber init --switch`: the first boot of snapshot 1 after an online `amber init` makes
    the shared subvolumes again from the old root as it was at shutdown, before they are
    mounted. Running it again does nothing."""
    from amber import btrfs, layout

    with _adopted(root, "--switch", f"it is run at boot by {SWITCH_UNIT}") as (top, store_dir,
                                                                               _, _):
        record = _switch_record(store_dir)
        if record is None:
            _disable_switch_unit(root)
            return Switched((), (), (), done_before=True)
        switch = record["switch"]
        old_id = int(record["old_root_id"])
        try:
            old_path = btrfs.subvolume_path(top, old_id) if old_id != 5 else ""
        except AmberError:
            die(f"the old root subvolume (id {old_id}) is gone: /var, /home, ... stay as "
                "amber init copied them", hint="nothing was changed", code=ExitCode.NOT_FOUND)
        old_root = top / old_path if old_path else top
        work = store_dir / SWITCH_DIR
        work.mkdir(parents=True, exist_ok=True)
        source = work / "old-root"
        if source.exists():
            btrfs.delete_subvolume(source)  # left by an interrupted run: ours, unfinished
        # Read-only: copying out of it changes nothing in the old root (not even atimes).
        btrfs.create_snapshot(old_root, source, read_only=True)
        moved, kept = [], []
        generations = switch.get("generations") or {}
        for name in switch.get("moved") or []:
            if name not in layout.SHARED_SUBVOLUMES:
                continue
            log.step(f"/{name}: made again from the old root as it was at shutdown")
            try:
                if _replace_shared(top / layout.CONTAINER, name, source, generations.get(name),
                                   work / "kept"):
                    kept.append(name)
            except OSError as e:
                die(f"cannot make /{name} again from the old root: {e}",
                    hint="fix the cause; the next boot (or 'amber init --switch') resumes where "
                         "this stopped, and nothing of the old root is changed",
                    code=ExitCode.STEP_FAILED)
            moved.append(name)
        edits = _etc_edits(source / "etc", float(switch.get("adopted_at") or 0))
        btrfs.delete_subvolume(source)
        record["switch"] = {**switch, "state": "done", "done_at": time.time(),
                            "kept": kept}
        from amber.state import atomic_write

        atomic_write(store_dir / ADOPTED, json.dumps(record, indent=1) + "\n")
        btrfs.sync(top)
    _disable_switch_unit(root)
    return Switched(tuple(moved), tuple(kept), tuple(edits))


def _disable_switch_unit(root: Path) -> None:
    with contextlib.suppress(OSError):
        (root / "etc" / SWITCH_WANTS).unlink(missing_ok=True)


@contextlib.contextmanager
def _adopted(root: Path, option: str, why_root: str) -> Iterator[tuple[Path, Path, str, str]]:
    """For `init --switch` and `--undo`: the top level of the btrfs at root mounted, the store
    in it, the filesystem's device and UUID."""
    from amber import layout

    if os.geteuid() != 0:
        die(f"amber init {option} must run as root", hint=why_root, code=ExitCode.ENVIRONMENT)
    source, fstype, uuid = _findmnt(root, "SOURCE", "FSTYPE", "UUID")
    if fstype != "btrfs":
        die(f"the filesystem at {root} is {fstype or 'unknown'}, not btrfs",
            hint=f"nothing to {option.lstrip('-')}: amber init adopts btrfs systems only",
            code=ExitCode.NOT_FOUND)
    with _top_level(source) as top:
        yield top, top / layout.CONTAINER / ".snapshots", source, uuid


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
    from amber import btrfs
    from amber.boot import takeover
    from amber.state import atomic_write

    with _adopted(root, "--undo", "it changes the default subvolume") as (top, store_dir, source,
                                                                        uuid):
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

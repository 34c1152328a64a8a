"""amber's GRUB on the disk of a system `amber init` adopts, with a backup in the snapshot store
of everything it replaces, which `amber init --undo` restores byte for byte.

UEFI, beside Debian's boot loader rather than over it. Debian's ESP holds `EFI/debian/`: shim
(signed by Microsoft), Debian's signed GRUB and a three-line `grub.cfg` that points that GRUB at
the root's `/boot/grub`; the firmware's NVRAM entry "debian" starts shim. amber keeps those
binaries, so a machine with Secure Boot on still boots through a signed chain, and the NVRAM
entry needs no change (a rescue system cannot change another machine's NVRAM anyway). It
replaces only that small `EFI/debian/grub.cfg` with one that hands over to amber's static
`/grub/grub.cfg` (the one `amber image build` writes: it loads `/grub/grubenv` and sources the
menu on the btrfs). Where the removable path `EFI/BOOT/BOOTX64.EFI` is free, amber's own GRUB
image goes there, for firmware without (or with lost) NVRAM entries; an existing one is left as
it is, unless there is no Debian GRUB to hand over from.

BIOS, where the disk has a BIOS boot partition (and an ESP, which holds GRUB's files and the
writable environment block): core.img into that partition, boot.img into sector 0 (its
partition table kept), as `amber image build` does. The sector's and the partition's old bytes
are kept.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amber import log
from amber.boot import disk, gpt
from amber.boot.esp import FatEsp, MountedEsp
from amber.errors import ExitCode, die
from amber.run import run

if TYPE_CHECKING:
    from amber.boot.esp import Esp

DEBIAN_CFG = "EFI/debian/grub.cfg"
LOADER = disk.EFI_LOADER
BACKUP = Path(".amber/adopt")  # in the store (.snapshots)
ESP_BACKUP = BACKUP / "esp-backup"
SECTOR0_BACKUP = BACKUP / "bios-sector0.bin"
BIOS_BOOT_BACKUP = BACKUP / "bios-boot-partition.bin"
SLACK = 1 << 20  # FAT clusters and directory entries beyond the files' bytes


@dataclass(frozen=True)
class BiosTarget:
    device: Path  # the whole disk
    partition: gpt.GptPartition
    esp_number: int

    def as_partition(self) -> disk.Partition:
        p = self.partition
        return disk.Partition(p.number, p.first, p.last, disk.PartitionType.BIOS_BOOT,
                              "BIOS boot")


@dataclass(frozen=True)
class Targets:
    esp: Esp
    volume_id: str | None
    bios: BiosTarget | None
    disk: Path | None
    notes: tuple[str, ...]


def parent_disk(device: str) -> Path | None:
    """The whole disk a partition is on (lsblk's parent), if the kernel knows one."""
    result = run(["lsblk", "--noheadings", "--nodeps", "--output", "PKNAME", device],
                 capture=True, check=False)
    name = result.stdout.strip() if result.returncode == 0 else ""
    return Path("/dev") / name if name else None


def _mounted_at(device: Path) -> str:
    result = run(["findmnt", "--noheadings", "--first-only", "--output", "TARGET", "--source",
                  str(device)], capture=True, check=False)
    return result.stdout.strip()


def find(root: Path, device: str, fs_uuid: str, esp_device: Path | None = None,
         disk_device: Path | None = None) -> Targets:
    """Where amber's GRUB goes: the ESP (mounted at root/boot/efi, named with --esp, or found
    in the disk's GPT) and the BIOS boot partition; refused where there is no ESP."""
    # The ESP of the disk's GPT is read with mtools even when another one is mounted.
    if missing := disk.missing_packages([r for r in disk.REQUIREMENTS if r.package == "mtools"]):
        die(f"amber init reads and writes EFI system partitions with mtools: "
            f"{', '.join(r.what for r in missing)} missing",
            hint="apt-get install --no-install-recommends mtools", code=ExitCode.ENVIRONMENT)
    whole = disk_device or parent_disk(device)
    table = gpt.read(whole) if whole is not None else None
    notes = []
    if disk_device is not None and table is None:
        die(f"{disk_device} has no GUID partition table", hint="--disk names the whole disk "
            "the root is on (not a partition)", code=ExitCode.ENVIRONMENT)
    if table is not None and table.holding_btrfs(fs_uuid) is None:
        die(f"the disk {whole} holds no partition with the btrfs {fs_uuid}",
            hint="--disk names the disk the root filesystem is on", code=ExitCode.ENVIRONMENT)
    if whole is None:
        notes.append("the disk of the root is not known: no BIOS boot code is written "
                     "(name it with --disk)")
    in_table = table.of_type(gpt.ESP_TYPE) if table is not None else None
    mount_point = root / "boot/efi"
    esp: Esp
    if os.path.ismount(mount_point):
        esp = MountedEsp(mount_point)
    elif esp_device is not None:
        if not esp_device.exists():
            die(f"{esp_device} does not exist", hint="--esp names the EFI system partition's "
                "device", code=ExitCode.NOT_FOUND)
        if where := _mounted_at(esp_device):
            die(f"the EFI system partition {esp_device} is mounted at {where}",
                hint=f"unmount it, or mount it at {mount_point} instead of naming it",
                code=ExitCode.REFUSED)
        esp = FatEsp(esp_device)
    elif table is not None and in_table is not None:
        esp = FatEsp(table.disk, in_table.offset)
    else:
        die("no EFI system partition found for amber's boot loader",
            hint=f"mount it at {mount_point}, or name it with --esp DEVICE (and the disk with "
                 "--disk DEVICE)", code=ExitCode.ENVIRONMENT)
    volume_id = esp.volume_id()
    bios = None
    bios_part = table.of_type(gpt.BIOS_BOOT_TYPE) if table is not None else None
    same_esp = in_table is not None and table is not None and (
        (isinstance(esp, FatEsp) and esp.device == table.disk) or
        FatEsp(table.disk, in_table.offset).volume_id() == volume_id)
    if bios_part is not None and in_table is not None and table is not None and same_esp:
        # core.img looks for GRUB's files on the ESP by its partition number.
        bios = BiosTarget(table.disk, bios_part, in_table.number)
    elif bios_part is not None:
        notes.append("the ESP is not the EFI system partition of the disk's GPT: no BIOS boot "
                     "code is written")
    elif table is not None:
        notes.append("no BIOS boot partition: UEFI only")
    return Targets(esp, volume_id, bios, whole, tuple(notes))


def check_host(targets: Targets) -> None:
    """The GRUB images and the tools to write them, before anything changes."""
    wanted = [r for r in disk.REQUIREMENTS if r.what in ("grub-mkimage", "mcopy", "mmd")
              or r.what.startswith("x86_64-efi/") or
              (targets.bios is not None and r.what.startswith("i386-pc/"))]
    missing = disk.missing_packages(wanted)
    if missing:
        names = ", ".join(r.what for r in missing)
        packages = " ".join(dict.fromkeys(r.package for r in missing))
        die(f"cannot install amber's boot loader: {names} missing",
            hint=f"apt-get install --no-install-recommends {packages}",
            code=ExitCode.ENVIRONMENT)


# ---- what goes on the ESP ------------------------------------------------------------------

def handover_cfg(volume_id: str | None) -> str:
    find_esp = (f"search --no-floppy --fs-uuid --set=root {volume_id}\n" if volume_id else "")
    return (
        "# Written by amber init: Debian's GRUB (started by shim, signed) hands over to amber's\n"
        "# boot menu. Debian's own file is kept in /.snapshots/.amber/adopt/esp-backup/;\n"
        "# 'amber init --undo' puts it back.\n"
        f"{find_esp}set prefix=($root)/grub\n"
        "configfile $prefix/grub.cfg\n")


@dataclass(frozen=True)
class Plan:
    files: dict[str, bytes]  # path on the ESP -> content
    replaced: dict[str, bytes]  # what was there before
    folders: tuple[str, ...]  # made by amber
    core: bytes | None  # BIOS: core.img


def _folders(names: list[str]) -> list[str]:
    return sorted({str(p) for n in names for p in Path(n).parents if p != Path(".")},
                  key=lambda f: (f.count("/"), f))


def plan(targets: Targets, fs_uuid: str) -> Plan:
    """amber's files for this ESP (GRUB built here), what they replace; refused where they do
    not fit. Nothing is written."""
    from amber.boot import grubenv

    esp = targets.esp
    debian = esp.read(DEBIAN_CFG)
    with tempfile.TemporaryDirectory(prefix="amber-grub-") as tmp:
        files = {disk.GRUB_CFG: disk.render_grub_cfg(fs_uuid).encode(),
                 disk.GRUB_ENV: grubenv.render({})}
        if debian is not None:
            files[DEBIAN_CFG] = handover_cfg(targets.volume_id).encode()
        if debian is None or esp.read(LOADER) is None:
            efi = Path(tmp) / "BOOTX64.EFI"
            disk.make_efi_image(efi)
            files[LOADER] = efi.read_bytes()
        core = None
        if targets.bios is not None:
            image = Path(tmp) / "core.img"
            disk.make_bios_image(image, esp_partition=targets.bios.esp_number)
            core = image.read_bytes()
            disk.place_core_image(core, targets.bios.as_partition())  # refused if too big
    replaced = {name: old for name in files if (old := esp.read(name)) is not None}
    folders = tuple(f for f in _folders(list(files)) if not esp.is_dir(f))
    needed = sum(len(c) for c in files.values()) - sum(len(c) for c in replaced.values())
    free = esp.free()
    if needed + SLACK > free:
        die(f"the EFI system partition {esp} has {free >> 10} KiB free; amber's boot loader "
            f"needs {(needed + SLACK) >> 10} KiB", hint="free some space on it (old kernels "
            "or boot loaders of other systems)", code=ExitCode.NO_SPACE)
    return Plan(files, replaced, folders, core)


# ---- backup, install, restore --------------------------------------------------------------

def _read_bytes(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def back_up(store_dir: Path, targets: Targets, todo: Plan) -> dict[str, Any]:
    """Keep what the install replaces, durably, in the store; the record for --undo."""
    from amber.state import atomic_write

    for name, content in todo.replaced.items():
        path = store_dir / ESP_BACKUP / name
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, content)
    record: dict[str, Any] = {
        "esp": {"volume_id": targets.volume_id, "replaced": sorted(todo.replaced),
                "created": sorted(set(todo.files) - set(todo.replaced)),
                "created_folders": list(todo.folders)},
        "bios": None}
    if targets.bios is not None:
        part = targets.bios.partition
        (store_dir / BACKUP).mkdir(parents=True, exist_ok=True)
        atomic_write(store_dir / SECTOR0_BACKUP, _read_bytes(targets.bios.device, 0, disk.SECTOR))
        atomic_write(store_dir / BIOS_BOOT_BACKUP,
                     _read_bytes(targets.bios.device, part.offset, part.size))
        record["bios"] = {"partition": part.number, "first": part.first, "last": part.last}
    return record


def install(targets: Targets, todo: Plan) -> None:
    esp = targets.esp
    log.step(f"amber's GRUB on the EFI system partition ({esp})")
    for folder in todo.folders:
        esp.make_dir(folder)
    # The environment block and amber's grub.cfg before anything that starts GRUB reads them.
    order = [disk.GRUB_ENV, disk.GRUB_CFG, LOADER, DEBIAN_CFG]
    for name in sorted(todo.files, key=order.index):
        esp.write(name, todo.files[name])
    esp.sync()
    if targets.bios is not None and todo.core is not None:
        log.step(f"amber's GRUB for BIOS: boot code of {targets.bios.device}, BIOS boot "
                 f"partition {targets.bios.partition.number}")
        disk.write_bios_boot(targets.bios.device, targets.bios.as_partition(), todo.core)


def check_restore(store_dir: Path, targets: Targets, record: dict[str, Any]) -> None:
    """Refuse an undo that could not restore what init replaced, before anything changes."""
    esp = record.get("esp") or {}
    recorded = esp.get("volume_id")
    if recorded and recorded != targets.volume_id:
        die(f"the EFI system partition {targets.esp} (volume id {targets.volume_id}) is not the "
            f"one amber init wrote ({recorded})", hint="mount that one at /boot/efi or name it "
            "with --esp", code=ExitCode.REFUSED)
    for name in esp.get("replaced", []):
        if not (store_dir / ESP_BACKUP / name).is_file():
            die(f"the backup of {name} is missing from {store_dir / ESP_BACKUP}",
                hint="restore it by hand; nothing was changed", code=ExitCode.NOT_FOUND)
    bios = record.get("bios")
    if bios:
        if targets.bios is None or targets.bios.partition.first != bios["first"] or \
                targets.bios.partition.last != bios["last"]:
            die("the disk whose BIOS boot code amber init replaced is not found (or its BIOS "
                "boot partition moved)", hint="name the whole disk with --disk",
                code=ExitCode.ENVIRONMENT)
        for path in (SECTOR0_BACKUP, BIOS_BOOT_BACKUP):
            if not (store_dir / path).is_file():
                die(f"the backup {store_dir / path} is missing", hint="nothing was changed",
                    code=ExitCode.NOT_FOUND)


def restore(store_dir: Path, targets: Targets, record: dict[str, Any]) -> None:
    """Put back what init replaced, remove what it added (checked by check_restore). Running
    it twice does the same as once."""
    esp, saved = targets.esp, record.get("esp") or {}
    log.step(f"restoring the EFI system partition ({esp})")
    for name in saved.get("replaced", []):
        esp.write(name, (store_dir / ESP_BACKUP / name).read_bytes())
    for name in saved.get("created", []):
        esp.delete(name)
    for folder in reversed(saved.get("created_folders", [])):
        if esp.is_dir(folder):
            esp.remove_dir(folder)
    esp.sync()
    if record.get("bios") and targets.bios is not None:
        log.step(f"restoring the BIOS boot code of {targets.bios.device}")
        part = targets.bios.partition
        old_sector = (store_dir / SECTOR0_BACKUP).read_bytes()
        with open(targets.bios.device, "r+b") as f:
            current = f.read(disk.SECTOR)
            # The boot code back; the partition table as it is now.
            sector = old_sector[:disk.MBR_TABLE.start] + current[disk.MBR_TABLE.start:]
            f.seek(part.offset)
            f.write((store_dir / BIOS_BOOT_BACKUP).read_bytes())
            f.seek(0)
            f.write(sector)
            f.flush()
            os.fsync(f.fileno())

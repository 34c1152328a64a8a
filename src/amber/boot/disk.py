"""The GPT disk of an amber image, with Debian's GRUB for UEFI and for legacy BIOS.

sector 0          protective MBR; its boot code is GRUB's boot.img (BIOS)
1  2048–4095      BIOS boot (EF02): GRUB's core.img for BIOS
2  4096–266239    EFI system (EF00), FAT32, 128 MiB: EFI/BOOT/BOOTX64.EFI (the removable
                  path: no NVRAM entry needed), grub/grub.cfg, grub/grubenv
3  266240–end     Linux x86-64 root (8304): btrfs with amber's layout

Both GRUB images carry every module they need, so the ESP holds no module directories. The
ESP's grub.cfg is written once and never changes: it finds the btrfs by its UUID and sources
amber's menu, which amber rewrites on the btrfs with an atomic rename (amber.boot.menu).

No grub-install or grub-bios-setup: both need the target's partitions as host devices. We
write core.img into partition 1 and patch boot.img into sector 0 ourselves, as
grub-bios-setup --no-rs-codes does; the offsets are those of GRUB's include/grub/i386/pc/boot.h.
"""

from __future__ import annotations

import enum
import os
import secrets
import shutil
import struct
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from amber.log import ExitCode, die
from amber.run import run

SECTOR = 512
ALIGN = 2048  # sectors: every partition starts on a MiB boundary
BIOS_BOOT_FIRST = 2048
ESP_FIRST = 4096
ESP_SECTORS = (128 << 20) // SECTOR
ROOT_FIRST = ESP_FIRST + ESP_SECTORS  # 266240
BACKUP_GPT_SECTORS = 33  # the backup partition entries (32 sectors) and header at the end
MIN_ROOT_SECTORS = (64 << 20) // SECTOR
ESP_PARTITION = 2
ESP_LABEL = "AMBER-ESP"
GRUB_LIB = Path("/usr/lib/grub")
EFI_LOADER = "EFI/BOOT/BOOTX64.EFI"
GRUB_CFG = "grub/grub.cfg"
GRUB_ENV = "grub/grubenv"
MENU = "/@/.snapshots/.amber/menu.cfg"  # amber's menu, from the btrfs top level (GRUB's view)

# Every command grub.cfg and amber's menu use must be built in: there is no module directory.
GRUB_MODULES = (
    "part_gpt", "part_msdos", "fat", "btrfs", "zstd", "gzio", "search", "search_fs_uuid",
    "search_fs_file", "search_label", "normal", "configfile", "echo", "test", "loadenv",
    "linux", "serial", "terminal", "sleep", "reboot", "halt", "ls", "cat", "minicmd",
)
EFI_MODULES = ("efi_gop", "efi_uga")
BIOS_MODULES = ("biosdisk",)

# boot.img (sector 0) and diskboot.img (core.img's first sector), from GRUB's boot.h.
BPB = slice(0x03, 0x5A)  # a BIOS parameter block: kept from the disk
KERNEL_SECTOR = 0x5C  # u64: the LBA of core.img
BOOT_DRIVE = 0x64  # 0xFF: the drive the BIOS booted from
DRIVE_CHECK = 0x66  # a jump that treats the drive as a floppy; nopped for hard disks
MBR_TABLE = slice(0x1B8, 0x1FE)  # disk signature and the protective MBR's partition table
BLOCKLIST = SECTOR - 12  # in diskboot.img: u64 start, u16 sectors, u16 segment
CORE_SEGMENT = 0x820


class PartitionType(enum.StrEnum):
    BIOS_BOOT = "EF02"
    ESP = "EF00"
    ROOT = "8304"  # Linux x86-64 root


@dataclass(frozen=True)
class Partition:
    number: int
    first: int  # sectors
    last: int  # inclusive
    type: PartitionType
    name: str

    @property
    def sectors(self) -> int:
        return self.last - self.first + 1

    @property
    def offset(self) -> int:
        return self.first * SECTOR

    @property
    def size(self) -> int:
        return self.sectors * SECTOR

    def sgdisk_args(self) -> list[str]:
        n = self.number
        return [f"--new={n}:{self.first}:{self.last}", f"--typecode={n}:{self.type}",
                f"--change-name={n}:{self.name}"]

    def as_json(self) -> dict[str, int]:
        return {"number": self.number, "offset": self.offset, "size": self.size}


@dataclass(frozen=True)
class DiskLayout:
    size: int  # bytes, a whole number of MiB
    bios_boot: Partition
    esp: Partition
    root: Partition

    @classmethod
    def for_size(cls, size: int) -> DiskLayout:
        """The layout of a disk of `size` bytes (rounded down to whole MiB); the root takes
        what the boot partitions and the backup GPT leave."""
        size -= size % (ALIGN * SECTOR)
        total = size // SECTOR
        # The root ends on a MiB boundary before the backup GPT.
        root_last = (total - BACKUP_GPT_SECTORS) // ALIGN * ALIGN - 1
        if root_last - ROOT_FIRST + 1 < MIN_ROOT_SECTORS:
            least = (ROOT_FIRST + MIN_ROOT_SECTORS + ALIGN) * SECTOR
            die(f"a disk of {size >> 20} MiB is too small for its partitions",
                hint=f"give at least {least >> 20} MiB (--size)", code=ExitCode.NO_SPACE)
        return cls(
            size=size,
            bios_boot=Partition(1, BIOS_BOOT_FIRST, ESP_FIRST - 1, PartitionType.BIOS_BOOT,
                                "BIOS boot"),
            esp=Partition(2, ESP_FIRST, ROOT_FIRST - 1, PartitionType.ESP, "EFI system"),
            root=Partition(3, ROOT_FIRST, root_last, PartitionType.ROOT, "amber root"),
        )

    @property
    def partitions(self) -> tuple[Partition, Partition, Partition]:
        return (self.bios_boot, self.esp, self.root)

    def as_json(self) -> dict[str, dict[str, int]]:
        return {"bios_boot": self.bios_boot.as_json(), "esp": self.esp.as_json(),
                "root": self.root.as_json()}


# ---- the FAT volume id ----------------------------------------------------------------------

def new_volume_id() -> str:
    """A random FAT volume id as fstab and blkid spell it: 'A3B1-C2D4'."""
    value = f"{secrets.randbits(32):08X}"
    return f"{value[:4]}-{value[4:]}"


def _mkfs_volume_id(volume_id: str) -> str:
    return volume_id.replace("-", "")


# ---- host tools -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Requirement:
    what: str  # a command on PATH, or a file below the GRUB directory
    package: str
    is_file: bool = False


REQUIREMENTS = (
    Requirement("sgdisk", "gdisk"),
    Requirement("mkfs.vfat", "dosfstools"),
    Requirement("mmd", "mtools"),
    Requirement("mcopy", "mtools"),
    Requirement("minfo", "mtools"),
    Requirement("grub-mkimage", "grub-common"),
    Requirement("x86_64-efi/kernel.img", "grub-efi-amd64-bin", is_file=True),
    Requirement("x86_64-efi/btrfs.mod", "grub-efi-amd64-bin", is_file=True),
    Requirement("i386-pc/boot.img", "grub-pc-bin", is_file=True),
    Requirement("i386-pc/diskboot.img", "grub-pc-bin", is_file=True),
    Requirement("i386-pc/btrfs.mod", "grub-pc-bin", is_file=True),
)
QCOW2_REQUIREMENT = Requirement("qemu-img", "qemu-utils")


def missing_packages(requirements: Sequence[Requirement], grub_lib: Path = GRUB_LIB,
                     which: Callable[[str], str | None] = shutil.which) -> list[Requirement]:
    return [r for r in requirements
            if not ((grub_lib / r.what).is_file() if r.is_file else which(r.what))]


def check_host(qcow2: bool = False, grub_lib: Path = GRUB_LIB) -> None:
    """Refuse, before anything is written, when a tool or a GRUB file is missing; name the
    Debian packages that bring them."""
    wanted = [*REQUIREMENTS, *([QCOW2_REQUIREMENT] if qcow2 else [])]
    missing = missing_packages(wanted, grub_lib)
    if not missing:
        return
    names = ", ".join(r.what if not r.is_file else str(grub_lib / r.what) for r in missing)
    packages = " ".join(dict.fromkeys(r.package for r in missing))
    die(f"cannot build the disk: {names} missing",
        hint=f"install them: apt-get install --no-install-recommends {packages}",
        code=ExitCode.ENVIRONMENT)


# ---- grub.cfg -------------------------------------------------------------------------------

def render_grub_cfg(fs_uuid: str) -> str:
    """The ESP's static grub.cfg: find the btrfs, source amber's menu from it."""
    return f"""\
# Written by amber image build; it never changes. amber's boot menu is {MENU}
# on the btrfs root filesystem, rewritten (atomically) by amber.
# BIOS: the console is VGA text; add the first serial port. EFI: the firmware's console, which
# firmware may mirror to a serial port (GRUB's own serial terminal there doubles every line).
if [ "${{grub_platform}}" = pc ]; then
  serial --unit=0 --speed=115200
  terminal_input serial console
  terminal_output serial console
fi
set amber_env="${{prefix}}/grubenv"
load_env --file "${{amber_env}}"
set amber_fs={fs_uuid}
if search --no-floppy --fs-uuid --set=root "${{amber_fs}}"; then
  if [ -f {MENU} ]; then
    source {MENU}
  else
    echo "amber: {MENU} is missing on ${{root}}"
  fi
else
  echo "amber: no btrfs filesystem with UUID ${{amber_fs}}"
fi
"""


# ---- GRUB images and the BIOS boot sector ---------------------------------------------------

def make_efi_image(out: Path, grub_lib: Path = GRUB_LIB) -> None:
    # A prefix without a device: the partition BOOTX64.EFI was loaded from.
    run(["grub-mkimage", "--directory", str(grub_lib / "x86_64-efi"), "--format", "x86_64-efi",
         "--prefix", "/grub", "--output", str(out), *GRUB_MODULES, *EFI_MODULES],
        capture=True, where="while building GRUB for UEFI", code=ExitCode.ENVIRONMENT)


def make_bios_image(out: Path, grub_lib: Path = GRUB_LIB, esp_partition: int = ESP_PARTITION
                    ) -> None:
    # (,gpt2): partition 2 of the drive the BIOS booted from (amber init: wherever the ESP is).
    run(["grub-mkimage", "--directory", str(grub_lib / "i386-pc"), "--format", "i386-pc",
         "--prefix", f"(,gpt{esp_partition})/grub", "--output", str(out),
         *BIOS_MODULES, *GRUB_MODULES],
        capture=True, where="while building GRUB for BIOS", code=ExitCode.ENVIRONMENT)



def place_core_image(core: bytes, partition: Partition) -> bytes:
    """core.img, padded to whole sectors, with its first sector's blocklist pointing at the rest
    of itself inside `partition`."""
    image = bytearray(core + b"\0" * (-len(core) % SECTOR))
    sectors = len(image) // SECTOR
    if sectors > partition.sectors:
        die(f"GRUB's core.img ({sectors} sectors) does not fit the BIOS boot partition "
            f"({partition.sectors} sectors)", hint="build GRUB with fewer modules",
            code=ExitCode.NO_SPACE)
    _, length, segment = struct.unpack_from("<QHH", image, BLOCKLIST)
    if (length, segment) != (sectors - 1, CORE_SEGMENT):
        die(f"GRUB's core.img has an unexpected blocklist (length {length}, segment "
            f"{segment:#x}); this GRUB version is not supported",
            hint="use Debian 12's grub-pc-bin", code=ExitCode.ENVIRONMENT)
    struct.pack_into("<Q", image, BLOCKLIST, partition.first + 1)
    return bytes(image)


def boot_sector(boot_img: bytes, current: bytes, core_lba: int) -> bytes:
    """GRUB's boot.img as sector 0 of this disk: the disk's own BPB area and partition table
    kept, core.img's LBA filled in, the floppy check off."""
    if len(boot_img) != SECTOR or len(current) != SECTOR:
        die("GRUB's boot.img is not one sector", hint="reinstall grub-pc-bin",
            code=ExitCode.ENVIRONMENT)
    sector = bytearray(boot_img)
    sector[BPB] = current[BPB]
    sector[MBR_TABLE] = current[MBR_TABLE]
    struct.pack_into("<Q", sector, KERNEL_SECTOR, core_lba)
    sector[BOOT_DRIVE] = 0xFF
    sector[DRIVE_CHECK:DRIVE_CHECK + 2] = b"\x90\x90"
    return bytes(sector)


def install_bios_boot(disk: Path, layout: DiskLayout, core: bytes,
                      grub_lib: Path = GRUB_LIB) -> None:
    write_bios_boot(disk, layout.bios_boot, core, grub_lib)


def write_bios_boot(disk: Path, bios_boot: Partition, core: bytes,
                    grub_lib: Path = GRUB_LIB) -> None:
    """core.img into the BIOS boot partition, boot.img into sector 0 (a disk file or device)."""
    placed = place_core_image(core, bios_boot)
    boot_img = (grub_lib / "i386-pc/boot.img").read_bytes()
    with open(disk, "r+b") as f:
        current = f.read(SECTOR)
        f.seek(bios_boot.offset)
        f.write(placed)
        f.seek(0)
        f.write(boot_sector(boot_img, current, bios_boot.first))
        f.flush()
        os.fsync(f.fileno())


# ---- the disk -------------------------------------------------------------------------------

def partition(disk: Path, layout: DiskLayout) -> None:
    """A fresh GPT on the (already sized) disk file."""
    args = [arg for part in layout.partitions for arg in part.sgdisk_args()]
    # On a file, sgdisk warns that the kernel still uses the old table: harmless.
    run(["sgdisk", "--clear", *args, str(disk)], capture=True,
        where="while partitioning the disk", code=ExitCode.ENVIRONMENT)


def _mtools_env() -> dict[str, str]:
    return {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def mtools_target(disk: Path, layout: DiskLayout) -> str:
    return f"{disk}@@{layout.esp.offset}"


def make_esp(disk: Path, layout: DiskLayout, volume_id: str, files: dict[str, bytes]) -> None:
    """FAT32 on partition 2 (no vfat in the kernel needed: mkfs.vfat by offset, mtools),
    holding `files` (path on the ESP → content)."""
    # --offset counts sectors; the size is in KiB. The "block count mismatch" warning says the
    # file is bigger than the filesystem: expected. One sector per cluster, given: mkfs.vfat
    # sizes clusters for the whole file, which leaves FAT32 with too few clusters to work.
    run(["mkfs.vfat", "-F", "32", "-s", "1", "-n", ESP_LABEL, "-i", _mkfs_volume_id(volume_id),
         "--offset", str(layout.esp.first), str(disk), str(layout.esp.size // 1024)],
        capture=True, where="while making the EFI system partition", code=ExitCode.ENVIRONMENT)
    target = mtools_target(disk, layout)
    folders = sorted({str(parent) for name in files for parent in Path(name).parents
                      if parent != Path(".")}, key=lambda f: (f.count("/"), f))
    env = _mtools_env()
    for folder in folders:  # one at a time: mmd does not see a folder it just made
        run(["mmd", "-i", target, f"::/{folder}"], capture=True, env=env,
            where="while filling the EFI system partition", code=ExitCode.ENVIRONMENT)
    with tempfile.TemporaryDirectory(prefix="amber-esp-") as tmp:
        for name, content in files.items():
            local = Path(tmp) / name.replace("/", "_")
            local.write_bytes(content)
            result = run(["mcopy", "-o", "-n", "-i", target, str(local), f"::/{name}"],
                         capture=True, env=env, check=False)
            if result.returncode != 0:
                full = "full" in result.stderr.lower()
                die(f"cannot write {name} to the EFI system partition"
                    + (": it is full" if full else f": {result.stderr.strip()[-200:]}"),
                    hint=f"the ESP has {layout.esp.size >> 20} MiB; check the files for it",
                    code=ExitCode.NO_SPACE if full else ExitCode.ENVIRONMENT)


def write(disk: Path, layout: DiskLayout, fs_uuid: str, volume_id: str, grubenv: bytes,
          grub_lib: Path = GRUB_LIB) -> None:
    """Partition `disk` (a file of layout.size bytes), make and fill the ESP, install GRUB for
    UEFI and BIOS. The root partition is left for the caller's btrfs."""
    partition(disk, layout)
    with tempfile.TemporaryDirectory(prefix="amber-grub-") as tmp:
        efi, core = Path(tmp) / "BOOTX64.EFI", Path(tmp) / "core.img"
        make_efi_image(efi, grub_lib)
        make_bios_image(core, grub_lib)
        make_esp(disk, layout, volume_id, {
            EFI_LOADER: efi.read_bytes(),
            GRUB_CFG: render_grub_cfg(fs_uuid).encode(),
            GRUB_ENV: grubenv,
        })
        install_bios_boot(disk, layout, core.read_bytes(), grub_lib)

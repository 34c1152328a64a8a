"""Reading a disk's GUID partition table (only reading): which partition is the EFI system
partition, which the BIOS boot partition, and which holds a given btrfs. Read from the device's
bytes, so that it works on a rescue system without sgdisk or sfdisk, and on a loop device of a
whole disk whose partitions have no device nodes (they are then reached by offset)."""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from amber.errors import ExitCode, die

if TYPE_CHECKING:
    from pathlib import Path

SECTOR = 512
ESP_TYPE = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
BIOS_BOOT_TYPE = "21686148-6449-6e6f-744e-656564454649"  # "Hah!IdontNeedEFI"
_HEADER = struct.Struct("<8s4sII4xQQQQ16sQII")
_ENTRY = struct.Struct("<16s16sQQQ72s")
_BTRFS_SUPERBLOCK = 64 << 10
_BTRFS_MAGIC = b"_BHRfS_M"


@dataclass(frozen=True)
class GptPartition:
    number: int
    first: int  # sectors
    last: int  # inclusive
    type: str  # the type GUID, lower case
    guid: str

    @property
    def offset(self) -> int:
        return self.first * SECTOR

    @property
    def size(self) -> int:
        return (self.last - self.first + 1) * SECTOR


@dataclass(frozen=True)
class Gpt:
    disk: Path
    guid: str
    partitions: tuple[GptPartition, ...]

    def of_type(self, type_guid: str) -> GptPartition | None:
        return next((p for p in self.partitions if p.type == type_guid), None)

    def holding_btrfs(self, fs_uuid: str) -> GptPartition | None:
        """The partition whose btrfs superblock names fs_uuid."""
        with open(self.disk, "rb") as f:
            for part in self.partitions:
                f.seek(part.offset + _BTRFS_SUPERBLOCK)
                block = f.read(0x48)
                if block[0x40:0x48] == _BTRFS_MAGIC and \
                        str(uuid.UUID(bytes=block[0x20:0x30])) == fs_uuid.lower():
                    return part
        return None


def read(disk: Path) -> Gpt | None:
    """The disk's partition table, or None where it has no GPT (an MBR disk, a partition)."""
    try:
        with open(disk, "rb") as f:
            f.seek(SECTOR)
            header = f.read(_HEADER.size)
            if len(header) < _HEADER.size or header[:8] != b"EFI PART":
                return None
            (_, _, _, _, _, _, _, _, disk_guid, entries_lba, count,
             entry_size) = _HEADER.unpack(header)
            if entry_size < _ENTRY.size or count > 1024:
                return None
            f.seek(entries_lba * SECTOR)
            table = f.read(count * entry_size)
    except OSError as e:
        die(f"cannot read the partition table of {disk}: {e.strerror}",
            hint="name the whole disk (not a partition) with --disk", code=ExitCode.ENVIRONMENT)
    partitions = []
    for index in range(len(table) // entry_size):
        type_guid, part_guid, first, last, _, _ = _ENTRY.unpack_from(table, index * entry_size)
        if type_guid == bytes(16):
            continue
        partitions.append(GptPartition(index + 1, first, last, str(uuid.UUID(bytes_le=type_guid)),
                                       str(uuid.UUID(bytes_le=part_guid))))
    return Gpt(disk, str(uuid.UUID(bytes_le=disk_guid)), tuple(partitions))

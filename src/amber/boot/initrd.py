"""initrd generation inside a snapshot, with the system's own generator: dracut or
initramfs-tools. Only kernels that are installed in the snapshot are considered."""

from __future__ import annotations

from pathlib import Path

from amber.boot import kernels
from amber.log import ExitCode, die


def generator(snapshot: Path) -> str:
    """The snapshot's initrd generator: the one whose Debian package is installed (dracut-core,
    which has the dracut command, may stay when initramfs-tools replaces the dracut package,
    the one that hooks into kernel installs), else the first command found."""
    from amber.packages.database import read_dpkg

    packages = read_dpkg(snapshot)
    preferred = [name for package, name in (("initramfs-tools", "update-initramfs"),
                                             ("dracut", "dracut")) if package in packages]
    for name in (*preferred, "dracut", "update-initramfs"):
        for where in ("usr/bin", "usr/sbin", "bin", "sbin"):
            if (snapshot / where / name).exists():
                return name
    die(f"no initrd generator (dracut or initramfs-tools) in {snapshot}",
        hint="install dracut in a transaction: amber pkg install dracut",
        code=ExitCode.ENVIRONMENT)


def commands(snapshot: Path, releases: list[str] | None = None) -> list[list[str]]:
    """The commands that regenerate the initrds of `releases` (default: every kernel)."""
    tool = generator(snapshot)
    wanted = releases if releases is not None else kernels.installed(snapshot)
    if not wanted:
        die(f"no kernel installed in {snapshot}", hint="install a kernel package first",
            code=ExitCode.ENVIRONMENT)
    if tool == "dracut":
        return [["dracut", "--quiet", "--force", f"/boot/initrd.img-{r}", r] for r in wanted]
    return [["update-initramfs", "-u", "-k", r] for r in wanted]


def initrd_path(snapshot: Path, release: str) -> Path:
    """Where the snapshot's initrd of `release` is (Debian's naming, then dracut's)."""
    for name in (f"boot/initrd.img-{release}", f"boot/initramfs-{release}.img",
                 f"boot/initrd-{release}"):
        if (snapshot / name).exists():
            return snapshot / name
    return snapshot / f"boot/initrd.img-{release}"


# ---- reading an initrd -----------------------------------------------------------------------

# The compressions an initrd's archive may have (by its first bytes), and what decompresses it.
DECOMPRESSORS = {b"\x28\xb5\x2f\xfd": "zstd -dc", b"\x1f\x8b": "gzip -dc",
                 b"\xfd7zXZ": "xz -dc", b"\x02\x21\x4c\x18": "lz4 -dc", b"BZh": "bzip2 -dc",
                 b"\x89LZO": "lzop -dc", b"070701": "cat"}


def main_archive_offset(data: bytes) -> int:
    """Where the main archive starts: after the uncompressed early cpio (microcode) that
    dracut puts in front, and its zero padding. An uncompressed initrd is all cpio: then the
    main archive is the last one."""
    offset = start = 0
    while data[offset:offset + 6] == b"070701":
        name_size = int(data[offset + 94:offset + 102], 16)
        file_size = int(data[offset + 54:offset + 62], 16)
        name = data[offset + 110:offset + 110 + name_size - 1]
        offset += (110 + name_size + 3) // 4 * 4
        offset += (file_size + 3) // 4 * 4
        if name == b"TRAILER!!!":
            while offset < len(data) and data[offset] == 0:
                offset += 1
            if offset >= len(data):
                return start
            if data[offset:offset + 6] != b"070701":
                break
            start = offset
    return offset


def list_initrd(image: Path) -> str | None:
    """The initrd's file list, one name a line, as the kernel unpacks it: every uncompressed
    archive at its start, the compressed main archive, if any, and amber's overlay
    (amber.boot.initrd_overlay), if any; None where it cannot be read whole. Not lsinitrd:
    that is ten times slower, as it also reads every file's metadata."""
    from amber.boot import initrd_overlay

    try:
        members = initrd_overlay.all_members(image)
    except initrd_overlay.CannotAppend:
        return None
    return "".join(f"{member.name}\n" for member in members)

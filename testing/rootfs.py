"""Mount an amber filesystem as a booted system sees it (tests and benchmarks)."""

from __future__ import annotations

from pathlib import Path

from amber import btrfs
from amber.layout import CONTAINER
from amber.log import die
from amber.run import run
from amber.snapshots import SHARED_SUBVOLUMES


def mount_root(device: Path, target: Path, snapshot: int | None = None) -> list[Path]:
    """Mount a filesystem as a booted system sees it: the default subvolume (or `snapshot`, as
    a boot menu entry with rootflags=subvol= mounts it) read-only at target, .snapshots and the
    shared subvolumes writable at their places. Returns the mount points, innermost last."""
    if not target.is_dir():
        die(f"mount point {target} does not exist")
    mounted: list[Path] = []
    subvol = f",subvol={CONTAINER}/.snapshots/{snapshot}/snapshot" if snapshot else ""
    run(["mount", "-o", f"ro,compress=zstd:1{subvol}", str(device), str(target)])
    mounted.append(target)
    try:
        # /etc is the snapshot's own writable subvolume: the booted system mounts it read-write
        # (the initrd does, data/dracut/90amber-etc), since a read-only mount covers it too.
        if btrfs.is_subvolume(target / "etc"):
            etc = f"{btrfs.subvolume_path(target)}/etc"
            run(["mount", "-o", f"rw,subvol={etc}", str(device), str(target / "etc")])
            mounted.append(target / "etc")
        for name in (".snapshots", *SHARED_SUBVOLUMES):
            where = target / name
            run(["mount", "-o", f"subvol={CONTAINER}/{name}", str(device), str(where)])
            mounted.append(where)
    except BaseException:
        unmount_all(mounted)
        raise
    return mounted


def unmount_all(mount_points: list[Path]) -> None:
    for where in reversed(mount_points):
        run(["umount", str(where)], check=False)

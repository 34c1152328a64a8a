"""`amber init` on a loop image laid out as Debian's installer lays out btrfs (@rootfs, /boot
inside, /var and /home plain directories): the check, the conversion, the layout as a booted
system sees it, the data moved without copying, the old root untouched, --undo; and refusals that
change nothing."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from amber import btrfs
from testing import rootfs
from testing.images import installer_image
from tests.root.conftest import _prerequisites, attach
from tests.root.helpers import amber, amber_json, status

pytestmark = pytest.mark.root


@dataclass
class Disk:
    image: Path
    device: Path
    mnt: Path


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    _prerequisites()
    image = tmp_path / "installed.img"
    subprocess.run(["cp", "--sparse=always", str(installer_image()), str(image)], check=True)
    device = attach(image)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        yield Disk(image, device, mnt)
    finally:
        subprocess.run(["umount", "-R", str(mnt)], check=False, capture_output=True)
        subprocess.run(["losetup", "-d", str(device)], check=False)
        image.unlink(missing_ok=True)


def mount(disk: Disk, options: str) -> None:
    subprocess.run(["mount", "-o", options, str(disk.device), str(disk.mnt)], check=True)


def umount(disk: Disk) -> None:
    subprocess.run(["umount", "-R", str(disk.mnt)], check=True)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_adopt_an_installer_layout(disk: Disk) -> None:
    mount(disk, "subvol=@rootfs")  # as a rescue system mounts it
    before = {p: digest(disk.mnt / p) for p in ("etc/fstab", "var/lib/amber-adopt-test/data.bin")}
    used_before = os.statvfs(disk.mnt)
    check = amber_json(disk.mnt, "init", "--check")
    assert check["subvolume"] == "@rootfs" and check["kernel"] == "6.1.0-99-amd64"
    plan = amber(disk.mnt, "init", "--check").stdout
    assert "read-only snapshot of @rootfs" in plan and "untouched" in plan
    result = amber(disk.mnt, "init")
    assert "done: the next boot starts snapshot 1" in result.stderr
    free_after = os.statvfs(disk.mnt)
    # Reflinks, not copies: the 32 MiB of data in /var did not get written again.
    spent = (used_before.f_bavail - free_after.f_bavail) * free_after.f_frsize
    assert spent < 24 << 20, f"adoption used {spent >> 20} MiB"
    umount(disk)

    # The old root, untouched.
    mount(disk, "subvol=@rootfs")
    assert {p: digest(disk.mnt / p) for p in before} == before
    assert not (disk.mnt / ".snapshots").exists()
    umount(disk)

    # As the adopted system boots: the default subvolume, read-only, shared subvolumes.
    mounts = rootfs.mount_root(disk.device, disk.mnt)
    try:
        root = disk.mnt
        st = status(root)
        assert (st["booted"], st["default"]) == (1, 1)
        assert btrfs.is_read_only(root)
        assert digest(root / "var/lib/amber-adopt-test/data.bin") == \
            before["var/lib/amber-adopt-test/data.bin"]
        assert (root / "home/alice/notes.txt").read_text() == "alice's notes\n"
        fstab = (root / "etc/fstab").read_text()
        assert "# replaced by amber init: UUID=c0ffee00" in fstab
        assert "UUID=ABCD-1234  /boot/efi" in fstab  # kept
        assert "/home btrfs subvol=@/home" in fstab and "/var btrfs subvol=@/var" in fstab
        cmdline = (root / "etc/kernel/cmdline").read_text()
        assert cmdline.startswith("root=UUID=c0ffee00-0000-4000-8000-00000000ad09 "
                                  "rootfstype=btrfs ro") and "console=ttyS0 quiet" in cmdline
        assert (root / "var/lib/dpkg").is_symlink()  # the package database is in the snapshot
        rows = amber_json(root, "snapshots")
        assert [r["number"] for r in rows] == [1]
        assert rows[0]["description"] == "the system amber init adopted"
        menu = (root / ".snapshots/.amber/menu.cfg").read_text()
        assert "rootflags=subvol=@/.snapshots/1/snapshot" in menu
        # A transaction works.
        amber(root, "run", "--", "touch", "/etc/adopted")
        assert status(root)["default"] == 2
        again = amber(root, "init", check=False)
        assert again.returncode == 6 and "already has a snapshot store" in again.stderr
        amber(root, "init", "--undo")
        old = json.loads((root / ".snapshots/.amber/adopted.json").read_text())["old_root_id"]
        assert btrfs.default_subvolume(root / ".snapshots") == old
    finally:
        rootfs.unmount_all(mounts)


def test_refusals_change_nothing(disk: Disk, tmp_path: Path) -> None:
    mount(disk, "subvolid=5")
    # A nested subvolume amber does not know.
    subprocess.run(["btrfs", "-q", "subvolume", "create", str(disk.mnt / "@rootfs/var/lib/x")],
                   check=True)
    umount(disk)
    mount(disk, "subvol=@rootfs")
    result = amber(disk.mnt, "init", check=False)
    assert result.returncode == 6 and "subvolumes amber does not know: var/lib/x" in result.stderr
    umount(disk)
    mount(disk, "subvolid=5")
    assert sorted(os.listdir(disk.mnt)) == ["@rootfs"]  # nothing made
    umount(disk)

    ext4 = tmp_path / "ext4.img"
    subprocess.run(["truncate", "-s", "64M", str(ext4)], check=True)
    subprocess.run(["mkfs.ext4", "-q", str(ext4)], check=True)
    where = tmp_path / "ext4"
    where.mkdir()
    subprocess.run(["mount", "-o", "loop", str(ext4), str(where)], check=True)
    try:
        result = amber(where, "init", check=False)
        assert result.returncode == 8 and "is ext4, not btrfs" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        subprocess.run(["umount", str(where)], check=True)

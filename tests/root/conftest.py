"""Root tests run on real btrfs: a loop-mounted image holding a real minimal Debian, laid out by
amber.layout, and mounted as a booted system sees it. The Debian tree (mmdebstrap) and the
pristine image are built once and cached; every test gets its own copy of the image."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testing import rootfs
from testing.images import (
    INCLUDE_DNF,
    INCLUDE_INITRAMFS_TOOLS,
    INCLUDE_ZYPPER,
    pristine_image,
)
from tests.conftest import require


def _prerequisites() -> None:
    require(os.geteuid() == 0, "root tests need root")
    require(Path("/dev/loop-control").exists(), "root tests need loop devices")
    require(shutil.which("mkfs.btrfs") is not None, "root tests need btrfs-progs")
    require(shutil.which("mmdebstrap") is not None, "root tests need mmdebstrap")

@dataclass
class System:
    """A booted-like system root on its own loop device."""

    root: Path
    image: Path
    device: Path
    mounts: list[Path]

    def snapshot(self, number: int) -> Path:
        return self.root / ".snapshots" / str(number) / "snapshot"


def attach(image: Path) -> Path:
    out = subprocess.run(["losetup", "--find", "--show", str(image)], check=True,
                         capture_output=True, text=True).stdout.strip()
    return Path(out)


@pytest.fixture(scope="session")
def pristine() -> Path:
    _prerequisites()
    return pristine_image()


@pytest.fixture
def system(pristine: Path, tmp_path: Path) -> Iterator[System]:
    yield from booted_like(pristine, tmp_path)


@pytest.fixture
def initramfs_tools_system(tmp_path: Path) -> Iterator[System]:
    _prerequisites()
    yield from booted_like(pristine_image(INCLUDE_INITRAMFS_TOOLS), tmp_path)


@pytest.fixture
def zypper_system(tmp_path: Path) -> Iterator[System]:
    _prerequisites()
    yield from booted_like(pristine_image(INCLUDE_ZYPPER), tmp_path)


@pytest.fixture
def dnf_system(tmp_path: Path) -> Iterator[System]:
    _prerequisites()
    yield from booted_like(pristine_image(INCLUDE_DNF), tmp_path)


def booted_like(pristine: Path, tmp_path: Path) -> Iterator[System]:
    """A copy of pristine on its own loop device, mounted as a booted system sees it."""
    image = tmp_path / "root.img"
    subprocess.run(["cp", "--sparse=always", str(pristine), str(image)], check=True)
    device = attach(image)
    root = tmp_path / "root"
    root.mkdir()
    try:
        mounts = rootfs.mount_root(device, root)
    except BaseException:
        subprocess.run(["losetup", "-d", str(device)], check=False)
        raise
    system = System(root, image, device, mounts)
    try:
        yield system
    finally:
        rootfs.unmount_all(system.mounts)
        subprocess.run(["losetup", "-d", str(device)], check=False)
        # A full suite copies the image a hundred times: keep the disk it needs to one copy.
        image.unlink(missing_ok=True)
        leftovers = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True,
                                   text=True).stdout
        assert str(root) not in leftovers, f"mounts left behind under {root}"

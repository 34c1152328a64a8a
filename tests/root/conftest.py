"""Root tests run on real btrfs: a loop-mounted image holding a real minimal Debian, laid out by
amber.layout, and mounted as a booted system sees it. The Debian tree (mmdebstrap) and the
pristine image are built once and cached; every test gets its own copy of the image."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from amber import layout
from tests.conftest import require

CACHE = Path(os.environ.get("AMBER_TEST_CACHE", "/var/tmp/amber-test-cache"))
SUITE = "bookworm"
INCLUDE = ("rpm",)
# A second system whose initrd generator is Debian's default, initramfs-tools (with kmod).
INCLUDE_INITRAMFS_TOOLS = (*INCLUDE, "initramfs-tools", "kmod")
# And one with SUSE's package manager (Debian packages it), so that zypper runs for real.
INCLUDE_ZYPPER = (*INCLUDE, "zypper")
INCLUDE_DNF = (*INCLUDE, "dnf", "createrepo-c")
IMAGE_SIZE = "3G"
REPO = Path(__file__).resolve().parents[2]


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _prerequisites() -> None:
    require(os.geteuid() == 0, "root tests need root")
    require(Path("/dev/loop-control").exists(), "root tests need loop devices")
    require(shutil.which("mkfs.btrfs") is not None, "root tests need btrfs-progs")
    require(shutil.which("mmdebstrap") is not None, "root tests need mmdebstrap")


def debian_tarball(include: tuple[str, ...] = INCLUDE) -> Path:
    key = _key(SUITE, "apt", *include)
    tarball = CACHE / f"debian-{SUITE}-{key}.tar"
    if tarball.exists():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = tarball.with_suffix(".partial.tar")
    subprocess.run(["mmdebstrap", "--quiet", "--variant=apt", f"--include={','.join(include)}",
                    SUITE, str(partial)], check=True, stdin=subprocess.DEVNULL)
    partial.rename(tarball)
    return tarball


def pristine_image(include: tuple[str, ...] = INCLUDE) -> Path:
    tarball = debian_tarball(include)
    layout_hash = hashlib.sha256((REPO / "src/amber/layout.py").read_bytes()).hexdigest()
    key = _key(tarball.name, IMAGE_SIZE, layout_hash)
    image = CACHE / f"root-{key}.img"
    if image.exists():
        return image
    partial = image.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    subprocess.run(["truncate", "-s", IMAGE_SIZE, str(partial)], check=True)
    subprocess.run(["mkfs.btrfs", "-q", "-f", str(partial)], check=True)
    top = Path(tempfile.mkdtemp(prefix="amber-test-top-"))
    subprocess.run(["mount", "-o", "loop", str(partial), str(top)], check=True)
    try:
        snapshot = layout.create_skeleton(top)
        subprocess.run(["tar", "-xf", str(tarball), "-C", str(snapshot)], check=True)
        layout.finish(top)
    finally:
        subprocess.run(["umount", str(top)], check=True)
        top.rmdir()
    partial.rename(image)
    return image


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
        mounts = layout.mount_root(device, root)
    except BaseException:
        subprocess.run(["losetup", "-d", str(device)], check=False)
        raise
    system = System(root, image, device, mounts)
    try:
        yield system
    finally:
        layout.unmount_all(system.mounts)
        subprocess.run(["losetup", "-d", str(device)], check=False)
        leftovers = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True,
                                   text=True).stdout
        assert str(root) not in leftovers, f"mounts left behind under {root}"

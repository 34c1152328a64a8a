"""Cached btrfs images holding a real minimal Debian, laid out by amber.layout, for the root
tests and the benchmarks. The Debian tree (mmdebstrap, from the host's apt sources) and the
pristine image are built once and cached by their inputs."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ParamSpec, TypeVar

from amber import layout
from testing.filelock import locked

CACHE = Path(os.environ.get("AMBER_TEST_CACHE", "/var/tmp/amber-test-cache"))
SUITE = "bookworm"
INCLUDE = ("rpm",)
# A second system whose initrd generator is Debian's default, initramfs-tools (with kmod, and
# mount, which every installed Debian has and amber's initramfs-tools hook copies).
INCLUDE_INITRAMFS_TOOLS = (*INCLUDE, "initramfs-tools", "kmod", "mount")
# And one with SUSE's package manager (Debian packages it), so that zypper runs for real.
INCLUDE_ZYPPER = (*INCLUDE, "zypper")
INCLUDE_DNF = (*INCLUDE, "dnf", "createrepo-c")
IMAGE_SIZE = "3G"
REPO = Path(__file__).resolve().parents[1]


P = ParamSpec("P")
R = TypeVar("R")


def one_builder(function: Callable[P, R]) -> Callable[P, R]:
    """The suite may run in lanes (pytest-xdist processes): one of them builds a cached image
    while the others wait for it, then find it built."""
    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with locked(CACHE / f".{function.__name__}.lock"):
            return function(*args, **kwargs)
    return wrapper


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


@one_builder
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


@contextlib.contextmanager
def new_filesystem(image: Path, uuid: str | None = None) -> Iterator[Path]:
    """A fresh btrfs image, mounted for the caller to fill; it becomes `image` only when
    filled without an error."""
    partial = image.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    subprocess.run(["truncate", "-s", IMAGE_SIZE, str(partial)], check=True)
    subprocess.run(["mkfs.btrfs", "-q", "-f", *(["--uuid", uuid] if uuid else []), str(partial)],
                   check=True)
    top = Path(tempfile.mkdtemp(prefix="amber-test-top-"))
    subprocess.run(["mount", "-o", "loop", str(partial), str(top)], check=True)
    try:
        yield top
    finally:
        subprocess.run(["umount", str(top)], check=True)
        top.rmdir()
    partial.rename(image)


@one_builder
def pristine_image(include: tuple[str, ...] = INCLUDE) -> Path:
    tarball = debian_tarball(include)
    layout_hash = hashlib.sha256((REPO / "src/amber/layout.py").read_bytes()).hexdigest()
    key = _key(tarball.name, IMAGE_SIZE, layout_hash)
    image = CACHE / f"root-{key}.img"
    if image.exists():
        return image
    with new_filesystem(image) as top:
        snapshot = layout.create_skeleton(top)
        subprocess.run(["tar", "-xf", str(tarball), "-C", str(snapshot)], check=True)
        layout.finish(top)
    return image


INSTALLER_RELEASE = "6.1.0-99-amd64"  # a stand-in kernel's files (the root tests boot nothing)


@one_builder
def installer_image() -> Path:
    """A Debian system laid out as Debian's installer lays out btrfs: the root in the subvolume
    @rootfs (with /boot inside, /var and /home plain directories), an fstab naming it, GRUB's
    settings, some data in /var and /home. Cached; for `amber init` tests."""
    tarball = debian_tarball(INCLUDE)
    key = _key(tarball.name, IMAGE_SIZE, "installer", "2")
    image = CACHE / f"installer-{key}.img"
    if image.exists():
        return image
    uuid = "c0ffee00-0000-4000-8000-00000000ad09"
    with new_filesystem(image, uuid) as top:
        root = top / "@rootfs"
        subprocess.run(["btrfs", "-q", "subvolume", "create", str(root)], check=True)
        subprocess.run(["tar", "-xf", str(tarball), "-C", str(root)], check=True)
        release = INSTALLER_RELEASE
        (root / "boot").mkdir(exist_ok=True)
        (root / f"boot/vmlinuz-{release}").write_text("a stand-in kernel\n")
        (root / f"boot/initrd.img-{release}").write_text("a stand-in initrd\n")
        (root / f"usr/lib/modules/{release}").mkdir(parents=True, exist_ok=True)
        (root / "vmlinuz").symlink_to(f"boot/vmlinuz-{release}")
        (root / "boot/efi").mkdir()
        (root / "etc/fstab").write_text(
            "# /etc/fstab: static file system information (as Debian's installer writes it)\n"
            f"UUID={uuid} /               btrfs   defaults,subvol=@rootfs 0       0\n"
            "UUID=ABCD-1234  /boot/efi       vfat    umask=0077      0       1\n")
        (root / "etc/default").mkdir(exist_ok=True)
        (root / "etc/default/grub").write_text(
            'GRUB_DEFAULT=0\nGRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\n'
            'GRUB_CMDLINE_LINUX="console=ttyS0"\n')
        data = root / "var/lib/amber-adopt-test"
        data.mkdir(parents=True)
        with open(data / "data.bin", "wb") as f:
            f.write(os.urandom(32 << 20))
        (root / "home/alice").mkdir(parents=True)
        (root / "home/alice/notes.txt").write_text("alice's notes\n")
    return image


# The installer-style disk: GPT with the ESP first (as Debian's installer makes it), a BIOS boot
# partition, then the btrfs of installer_image(). Sectors of 512 bytes.
INSTALLER_ESP = (2048, 133119)  # 64 MiB, FAT32
INSTALLER_BIOS_BOOT = (133120, 135167)  # 1 MiB
INSTALLER_ROOT_FIRST = 135168
INSTALLER_ESP_VOLUME_ID = "ABCD-1234"  # as installer_image()'s fstab names it
# Stand-ins for Debian's shim and signed GRUB (the root tests boot nothing); their stub grub.cfg
# is the text grub-install writes.
DEBIAN_ESP_FILES = {
    "EFI/debian/shimx64.efi": b"a stand-in for Debian's shim\n" * 1000,
    "EFI/debian/grubx64.efi": b"a stand-in for Debian's signed GRUB\n" * 3000,
    "EFI/debian/BOOTX64.CSV": "shimx64.efi,debian,,This is the boot entry for debian\n"
                              .encode("utf-16"),
    "EFI/debian/grub.cfg": b"search.fs_uuid c0ffee00-0000-4000-8000-00000000ad09 root \n"
                           b"set prefix=($root)'/@rootfs/boot/grub'\n"
                           b"configfile $prefix/grub.cfg\n",
}


@one_builder
def installer_disk() -> Path:
    """installer_image() on a GPT disk with an ESP holding Debian's boot files, and a BIOS boot
    partition and boot sector holding stand-ins for Debian's core.img and boot.img. Cached."""
    filesystem = installer_image()
    key = _key(filesystem.name, "disk", "1")
    image = CACHE / f"installer-disk-{key}.img"
    if image.exists():
        return image
    partial = image.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    size = INSTALLER_ROOT_FIRST * 512 + filesystem.stat().st_size + (1 << 20)
    subprocess.run(["truncate", "-s", str(size), str(partial)], check=True)
    esp, bios = INSTALLER_ESP, INSTALLER_BIOS_BOOT
    subprocess.run(["sgdisk", "--clear", f"--new=1:{esp[0]}:{esp[1]}", "--typecode=1:EF00",
                    f"--new=2:{bios[0]}:{bios[1]}", "--typecode=2:EF02",
                    f"--new=3:{INSTALLER_ROOT_FIRST}:0", "--typecode=3:8300", str(partial)],
                   check=True, capture_output=True)
    sectors = esp[1] - esp[0] + 1
    subprocess.run(["mkfs.vfat", "-F", "32", "-s", "1", "-i",
                    INSTALLER_ESP_VOLUME_ID.replace("-", ""), "--offset", str(esp[0]),
                    str(partial), str(sectors // 2)], check=True, capture_output=True)
    target = f"{partial}@@{esp[0] * 512}"
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    for folder in ("EFI", "EFI/debian"):
        subprocess.run(["mmd", "-i", target, f"::/{folder}"], check=True, env=env)
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in DEBIAN_ESP_FILES.items():
            local = Path(tmp) / Path(name).name
            local.write_bytes(content)
            subprocess.run(["mcopy", "-i", target, str(local), f"::/{name}"], check=True,
                           env=env)
    with open(partial, "r+b") as f:
        f.seek(0)
        f.write(b"\xeb\x63\x90" + b"stand-in boot.img " * 24)  # the code area, below 0x1B8
        f.seek(bios[0] * 512)
        f.write(os.urandom(60 * 512))  # a stand-in core.img
    subprocess.run(["dd", f"if={filesystem}", f"of={partial}", "bs=4M", "conv=sparse,notrunc",
                    "oflag=seek_bytes", f"seek={INSTALLER_ROOT_FIRST * 512}", "status=none"],
                   check=True)
    partial.rename(image)
    return image

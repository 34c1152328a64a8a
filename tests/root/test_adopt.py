"""`amber init` on a loop image laid out as Debian's installer lays out btrfs (@rootfs, /boot
inside, /var and /home plain directories): the check, the conversion, the layout as a booted
system sees it, the data moved without copying, the old root untouched, --undo; and refusals that
change nothing."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from amber import btrfs
from amber.boot import grubenv
from testing import images, rootfs
from testing.images import installer_disk
from tests.conftest import require
from tests.root.conftest import _prerequisites
from tests.root.helpers import amber, amber_json, status

pytestmark = pytest.mark.root


@dataclass
class Disk:
    image: Path
    whole: Path  # the whole disk's loop device (its GPT, its BIOS boot code)
    device: Path  # the root partition's, by offset (a loop device makes no partition nodes)
    esp: Path  # the ESP's, by offset
    mnt: Path


def _attach(image: Path, first: int | None = None, last: int | None = None) -> Path:
    extent = [] if first is None or last is None else \
        ["--offset", str(first * 512), "--sizelimit", str((last - first + 1) * 512)]
    return Path(subprocess.run(["losetup", "--find", "--show", *extent, str(image)],
                               check=True, capture_output=True, text=True).stdout.strip())


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    _prerequisites()
    require(all(shutil.which(t) for t in ("sgdisk", "mcopy", "grub-mkimage")),
            "amber init's boot loader tests need gdisk, mtools and grub-common")
    image = tmp_path / "installed.img"
    subprocess.run(["cp", "--sparse=always", str(installer_disk()), str(image)], check=True)
    size = image.stat().st_size // 512
    devices = [_attach(image), _attach(image, images.INSTALLER_ROOT_FIRST, size - 34),
               _attach(image, *images.INSTALLER_ESP)]
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        yield Disk(image, devices[0], devices[1], devices[2], mnt)
    finally:
        subprocess.run(["umount", "-R", str(mnt)], check=False, capture_output=True)
        for device in devices:
            subprocess.run(["losetup", "-d", str(device)], check=False)
        image.unlink(missing_ok=True)


def mount(disk: Disk, options: str) -> None:
    subprocess.run(["mount", "-o", options, str(disk.device), str(disk.mnt)], check=True)


def umount(disk: Disk) -> None:
    subprocess.run(["umount", "-R", str(disk.mnt)], check=True)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


MTOOLS = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def esp_files(esp: Path) -> dict[str, str]:
    """Every file on the FAT ESP (a device) and the digest of its content."""
    names = subprocess.run(["mdir", "-i", str(esp), "-/", "-a", "-b", "::/"], check=True,
                           capture_output=True, text=True, env=MTOOLS).stdout.split()
    files = {}
    for name in names:
        if name.endswith("/"):
            files[name] = "folder"
            continue
        out = subprocess.run(["mtype", "-i", str(esp), name], check=True, capture_output=True,
                             env=MTOOLS).stdout
        files[name] = hashlib.sha256(out).hexdigest()
    return files


def esp_read(esp: Path, name: str) -> bytes:
    return subprocess.run(["mtype", "-i", str(esp), f"::/{name}"], check=True,
                          capture_output=True, env=MTOOLS).stdout


def boot_code(disk: Disk) -> tuple[bytes, bytes]:
    """Sector 0 and the BIOS boot partition."""
    first, last = images.INSTALLER_BIOS_BOOT
    with open(disk.whole, "rb") as f:
        sector0 = f.read(512)
        f.seek(first * 512)
        return sector0, f.read((last - first + 1) * 512)


DEBIAN_FILES = ("::/EFI/debian/shimx64.efi", "::/EFI/debian/grubx64.efi",
                "::/EFI/debian/BOOTX64.CSV")
GRUB_PC = Path("/usr/lib/grub/i386-pc")


def assert_amber_boot_loader(disk: Disk, esp_before: dict[str, str],
                             code_before: tuple[bytes, bytes] | None) -> None:
    """amber's GRUB on the ESP beside Debian's (whose grub.cfg hands over), and for BIOS."""
    after = esp_files(disk.esp)
    assert {n: after[n] for n in DEBIAN_FILES} == {n: esp_before[n] for n in DEBIAN_FILES}
    assert esp_read(disk.esp, "EFI/BOOT/BOOTX64.EFI")[:2] == b"MZ"  # a PE image: GRUB's
    grub_cfg = esp_read(disk.esp, "grub/grub.cfg").decode()
    assert "set amber_fs=c0ffee00-0000-4000-8000-00000000ad09" in grub_cfg
    assert "source /@/.snapshots/.amber/menu.cfg" in grub_cfg
    assert grubenv.parse(esp_read(disk.esp, "grub/grubenv")) == {}
    handover = esp_read(disk.esp, "EFI/debian/grub.cfg").decode()
    assert "search --no-floppy --fs-uuid --set=root ABCD-1234\nset prefix=($root)/grub\n" \
           "configfile $prefix/grub.cfg\n" in handover
    if code_before is None:
        return
    sector0, partition = boot_code(disk)
    assert sector0[0x1B8:] == code_before[0][0x1B8:]  # the partition table, kept
    boot_img = (GRUB_PC / "boot.img").read_bytes()
    assert sector0[:3] == boot_img[:3] and sector0 != code_before[0]
    assert struct.unpack_from("<Q", sector0, 0x5C)[0] == images.INSTALLER_BIOS_BOOT[0]
    diskboot = (GRUB_PC / "diskboot.img").read_bytes()
    assert partition[:500] == diskboot[:500]  # core.img's first sector, but its blocklist
    assert struct.unpack_from("<Q", partition, 500)[0] == images.INSTALLER_BIOS_BOOT[0] + 1


BEFORE_ENTRY = """\
menuentry 'amber: the system before amber (@rootfs) - kernel 6.1.0-99-amd64' --id amber-before {
  echo 'amber: booting the system from before amber'
  linux /@rootfs/boot/vmlinuz-6.1.0-99-amd64 root=UUID=c0ffee00-0000-4000-8000-00000000ad09 \
ro rootflags=subvol=@rootfs console=ttyS0 quiet
  initrd /@rootfs/boot/initrd.img-6.1.0-99-amd64
}
"""


def tmpfs_esp(where: Path) -> None:
    """An ESP mounted at `where` (the host kernel has no vfat: a tmpfs stands in)."""
    subprocess.run(["mount", "-t", "tmpfs", "esp", str(where)], check=True)


def test_adopt_an_installer_layout(disk: Disk) -> None:
    mount(disk, "subvol=@rootfs")  # as a rescue system mounts it
    before = {p: digest(disk.mnt / p) for p in ("etc/fstab", "var/lib/amber-adopt-test/data.bin")}
    esp_before, code_before = esp_files(disk.esp), boot_code(disk)
    used_before = os.statvfs(disk.mnt)
    whole = str(disk.whole)
    check = amber_json(disk.mnt, "init", "--check", "--disk", whole)
    assert check["subvolume"] == "@rootfs" and check["kernel"] == "6.1.0-99-amd64"
    assert check["esp"] == f"{whole} at byte {images.INSTALLER_ESP[0] * 512}"
    assert check["bios_boot"] == {"disk": whole, "partition": 2}
    plan = amber(disk.mnt, "init", "--check", "--disk", whole).stdout
    assert "read-only snapshot of @rootfs" in plan and "untouched" in plan
    assert "BIOS boot partition 2" in plan
    assert esp_files(disk.esp) == esp_before and boot_code(disk) == code_before  # --check
    result = amber(disk.mnt, "init", "--disk", whole)
    assert "done: the next boot starts snapshot 1" in result.stderr
    free_after = os.statvfs(disk.mnt)
    # Reflinks, not copies: the 32 MiB of data in /var did not get written again.
    spent = (used_before.f_bavail - free_after.f_bavail) * free_after.f_frsize
    assert spent < 24 << 20, f"adoption used {spent >> 20} MiB"
    umount(disk)
    assert_amber_boot_loader(disk, esp_before, code_before)

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
        assert cmdline == "root=UUID=c0ffee00-0000-4000-8000-00000000ad09 rootfstype=btrfs ro " \
                          "console=ttyS0 quiet panic=5\n"
        assert (root / "var/lib/dpkg").is_symlink()  # the package database is in the snapshot
        rows = amber_json(root, "snapshots")
        assert [r["number"] for r in rows] == [1]
        assert rows[0]["description"] == "the system amber init adopted"
        menu = (root / ".snapshots/.amber/menu.cfg").read_text()
        assert "rootflags=subvol=@/.snapshots/1/snapshot" in menu
        assert menu.endswith(BEFORE_ENTRY)
        # A transaction works, and the menu it writes keeps the way back.
        amber(root, "run", "--", "touch", "/etc/adopted")
        assert status(root)["default"] == 2
        assert (root / ".snapshots/.amber/menu.cfg").read_text().endswith(BEFORE_ENTRY)
        again = amber(root, "init", check=False)
        assert again.returncode == 6 and "already has a snapshot store" in again.stderr

        # boot-once the system from before amber (GRUB's next_entry names the entry's id).
        tmpfs_esp(root / "boot/efi")
        try:
            (root / "boot/efi/grub").mkdir()
            grubenv.write(root / "boot/efi/grub/grubenv", {})
            assert amber_json(root, "boot-once", "before-amber") == \
                {"next_boot_once": "before-amber"}
            assert grubenv.read(root / "boot/efi/grub/grubenv") == {"next_entry": "amber-before"}
            # --undo refuses an ESP that is not the one init wrote (here: no FAT volume id).
            wrong = amber(root, "init", "--undo", "--disk", whole, check=False)
            assert wrong.returncode == 6 and "is not the one amber init wrote" in wrong.stderr
        finally:
            subprocess.run(["umount", str(root / "boot/efi")], check=True)
        # Without the ESP mounted and without the disk: refused, nothing changed.
        lost = amber(root, "init", "--undo", check=False)
        assert lost.returncode == 8 and "no EFI system partition found" in lost.stderr
        assert status(root)["default"] == 2
        assert_amber_boot_loader(disk, esp_before, code_before)

        undone = amber(root, "init", "--undo", "--disk", whole)
        assert "amber's snapshots and shared subvolumes are still there" in undone.stderr
        old = json.loads((root / ".snapshots/.amber/adopted.json").read_text())["old_root_id"]
        assert btrfs.default_subvolume(root / ".snapshots") == old
        assert btrfs.subvolume_path(root / ".snapshots", old) == "@rootfs"
        assert esp_files(disk.esp) == esp_before  # every file, byte for byte; no file more
        assert boot_code(disk) == code_before
        assert [r["number"] for r in amber_json(root, "snapshots")] == [1, 2]  # kept
        twice = amber(root, "init", "--undo", "--disk", whole, check=False)
        assert twice.returncode == 5 and "was done already" in twice.stderr
    finally:
        rootfs.unmount_all(mounts)


def test_adopt_with_the_esp_named(disk: Disk) -> None:
    """--esp DEVICE: the ESP written with mtools, no disk known (so no BIOS boot code)."""
    mount(disk, "subvol=@rootfs")
    esp_before, code_before = esp_files(disk.esp), boot_code(disk)
    check = amber_json(disk.mnt, "init", "--check", "--esp", str(disk.esp))
    assert check["esp"] == str(disk.esp) and check["bios_boot"] is None
    assert any("no BIOS boot code" in note for note in check["notes"])
    amber(disk.mnt, "init", "--esp", str(disk.esp))
    assert_amber_boot_loader(disk, esp_before, None)
    assert boot_code(disk) == code_before
    # --undo from the rescue system as well: any subvolume of the filesystem mounted.
    amber(disk.mnt, "init", "--undo", "--esp", str(disk.esp))
    assert esp_files(disk.esp) == esp_before
    assert btrfs.subvolume_path(disk.mnt, btrfs.default_subvolume(disk.mnt)) == "@rootfs"


def test_adopt_with_the_esp_mounted(disk: Disk) -> None:
    """The ESP mounted at DIR/boot/efi, as on the running system: written as files."""
    mount(disk, "subvol=@rootfs")
    esp = disk.mnt / "boot/efi"
    tmpfs_esp(esp)
    for name, content in images.DEBIAN_ESP_FILES.items():
        (esp / name).parent.mkdir(parents=True, exist_ok=True)
        (esp / name).write_bytes(content)
    (esp / "EFI/BOOT").mkdir()
    (esp / "EFI/BOOT/BOOTX64.EFI").write_bytes(b"Debian's removable-path shim")

    def tree() -> dict[str, bytes]:
        return {str(p.relative_to(esp)): p.read_bytes() for p in sorted(esp.rglob("*"))
                if p.is_file()}

    before = tree()
    amber(disk.mnt, "init")
    after = tree()
    # The removable path holds something already and Debian's GRUB hands over: both kept.
    assert after["EFI/BOOT/BOOTX64.EFI"] == b"Debian's removable-path shim"
    assert after["EFI/debian/grubx64.efi"] == before["EFI/debian/grubx64.efi"]
    assert b"configfile $prefix/grub.cfg" in after["EFI/debian/grub.cfg"]
    assert sorted(set(after) - set(before)) == ["grub/grub.cfg", "grub/grubenv"]
    amber(disk.mnt, "init", "--undo")
    assert tree() == before and not (esp / "grub").exists()


def test_refusals_change_nothing(disk: Disk, tmp_path: Path) -> None:
    mount(disk, "subvolid=5")
    # A nested subvolume amber does not know.
    subprocess.run(["btrfs", "-q", "subvolume", "create", str(disk.mnt / "@rootfs/var/lib/x")],
                   check=True)
    umount(disk)
    mount(disk, "subvol=@rootfs")
    result = amber(disk.mnt, "init", "--disk", str(disk.whole), check=False)
    assert result.returncode == 6 and "subvolumes amber does not know: var/lib/x" in result.stderr
    subprocess.run(["btrfs", "-q", "subvolume", "delete", str(disk.mnt / "var/lib/x")],
                   check=True)
    esp_before, code_before = esp_files(disk.esp), boot_code(disk)

    # No ESP: not mounted, not named, and the root's disk unknown (a loop device by offset).
    result = amber(disk.mnt, "init", check=False)
    assert result.returncode == 8 and "no EFI system partition found" in result.stderr
    # A --disk that is not the root's disk (here: the ESP, which has no partition table).
    result = amber(disk.mnt, "init", "--disk", str(disk.esp), check=False)
    assert result.returncode == 8 and "has no GUID partition table" in result.stderr
    # Nothing to undo.
    result = amber(disk.mnt, "init", "--undo", "--disk", str(disk.whole), check=False)
    assert result.returncode == 5 and "nothing to undo" in result.stderr
    # An ESP too full for amber's GRUB.
    listing = subprocess.run(["mdir", "-i", str(disk.esp), "::/"], capture_output=True,
                             text=True, env=MTOOLS, check=True).stdout
    free = int(re.findall(r"([\d ]+) bytes free", listing)[0].replace(" ", ""))
    filler = disk.mnt.parent / "filler"
    filler.write_bytes(b"\0" * (free - (512 << 10)))
    subprocess.run(["mcopy", "-i", str(disk.esp), str(filler), "::/filler"], check=True,
                   env=MTOOLS)
    esp_full = esp_files(disk.esp)
    result = amber(disk.mnt, "init", "--disk", str(disk.whole), check=False)
    assert result.returncode == 7 and "amber's boot loader needs" in result.stderr
    assert "Traceback" not in result.stderr
    assert esp_files(disk.esp) == esp_full and boot_code(disk) == code_before
    assert set(esp_full) - set(esp_before) == {"::/filler"}
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


def test_a_staged_adoption_carries_what_the_old_system_wrote_until_the_reboot(
        disk: Disk, tmp_path: Path) -> None:
    """`amber init` on the running system stages the switch: what the old system writes to
    /var and /home until the reboot (here: written into @rootfs after init) is what the first
    boot of snapshot 1 finds, by `amber init --switch`, which amber-adopt-switch.service runs
    there before the shared subvolumes are mounted."""
    from amber import adopt

    mount(disk, "subvol=@rootfs")
    old = disk.mnt
    adopt.adopt(old, disk=disk.whole, staged=True)
    # The old system goes on running and writing, then shuts down.
    (old / "var/lib/amber-adopt-test/after-init.txt").write_text("written after init\n")
    (old / "home/alice/notes.txt").write_text("alice's notes, edited after init\n")
    (old / "var/lib/amber-adopt-test/data.bin").unlink()
    (old / "etc/motd").write_text("edited after init\n")
    umount(disk)

    # The first boot of snapshot 1, before /var and the others are mounted: / read-only, its
    # /etc read-write (the initrd mounts it).
    new = tmp_path / "new"
    new.mkdir()
    subprocess.run(["mount", "-o", "ro", str(disk.device), str(new)], check=True)
    subprocess.run(["mount", "-o", "rw,subvol=@/.snapshots/1/snapshot/etc", str(disk.device),
                    str(new / "etc")], check=True)
    wants = new / "etc" / adopt.SWITCH_WANTS
    try:
        assert wants.is_symlink()
        # An interrupted earlier run left an unfinished copy: it is replaced, not trusted.
        mount(disk, "subvolid=5")
        btrfs.create_subvolume(disk.mnt / "@/.var.amber-switch")
        (disk.mnt / "@/.var.amber-switch/stray").write_text("unfinished\n")
        # Someone wrote to amber init's copy of /srv: it is kept aside, not deleted.
        (disk.mnt / "@/srv/written-to-the-copy").write_text("keep me\n")
        umount(disk)
        switched = amber_json(new, "init", "--switch")
        assert switched["moved"] == ["var", "home", "root", "opt", "srv", "usr/local"]
        assert switched["kept"] == ["srv"] and switched["etc_edits_after_init"] == ["/etc/motd"]
        assert not wants.exists()
        assert adopt.finish_switch(new).done_before  # again: nothing to do
    finally:
        subprocess.run(["umount", "-R", str(new)], check=True)

    mounts = rootfs.mount_root(disk.device, disk.mnt)
    try:
        root = disk.mnt
        data = root / "var/lib/amber-adopt-test"
        assert (data / "after-init.txt").read_text() == "written after init\n"
        assert not (data / "data.bin").exists() and not (root / "var/stray").exists()
        assert (root / "home/alice/notes.txt").read_text() == "alice's notes, edited after init\n"
        assert (root / "var/lib/dpkg").is_symlink()  # still the snapshot's database
        assert (root / "etc/motd").read_text() != "edited after init\n"
        record = json.loads((root / ".snapshots/.amber/adopted.json").read_text())
        assert record["switch"]["state"] == "done"
        names = set(btrfs.subvolumes_below(root / ".snapshots").keys())
        assert not [n for n in names if "amber-" in n or "old-root" in n], names
        kept = root / ".snapshots/.amber/adopt-switch/kept/srv/written-to-the-copy"
        assert kept.read_text() == "keep me\n"
        assert not (root / "srv/written-to-the-copy").exists()
        amber(root, "run", "--", "touch", "/etc/adopted")  # a transaction works
    finally:
        rootfs.unmount_all(mounts)
    mount(disk, "subvolid=5")
    try:
        leftovers = [p.name for p in (disk.mnt / "@").iterdir() if "amber-" in p.name]
        assert leftovers == []
        # The old root, as the old system left it.
        assert (disk.mnt / "@rootfs/var/lib/amber-adopt-test/after-init.txt").exists()
    finally:
        umount(disk)

"""The GPT disk: layout arithmetic, GRUB's boot sector and core.img placement, the host check,
and a real disk (without its btrfs) checked with sgdisk and GRUB's own filesystem reader."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from amber.boot import disk, grubenv
from amber.boot.disk import SECTOR, DiskLayout, PartitionType
from amber.log import AmberError, ExitCode
from tests.conftest import require

UUID = "0f3b1c2e-8d4a-4c55-9a0e-5b7c1d2e3f40"
ESP_ID = "A3B1-C2D4"


def test_layout_of_a_4g_disk() -> None:
    layout = DiskLayout.for_size(4 << 30)
    bios, esp, root = layout.partitions
    assert (bios.first, bios.last, bios.type) == (2048, 4095, PartitionType.BIOS_BOOT)
    assert (esp.first, esp.last, esp.type) == (4096, 266239, PartitionType.ESP)
    assert esp.size == 128 << 20 and esp.offset == 2 << 20
    assert (root.first, root.type) == (266240, PartitionType.ROOT)
    total = (4 << 30) // SECTOR
    # The root ends on a MiB boundary, before the backup GPT (the last 33 sectors).
    assert (root.last + 1) % 2048 == 0 and root.last <= total - 34
    assert root.last == total - 2048 - 1
    assert [p.number for p in layout.partitions] == [1, 2, 3]
    assert root.sgdisk_args() == ["--new=3:266240:8386559", "--typecode=3:8304",
                                  "--change-name=3:amber root"]


@pytest.mark.parametrize("size", [(1 << 30) + 12345, (2 << 30) + (1 << 20) - 1, 3 << 29])
def test_layout_rounds_down_to_whole_mib(size: int) -> None:
    layout = DiskLayout.for_size(size)
    assert layout.size % (1 << 20) == 0 and size - layout.size < 1 << 20
    assert layout.root.offset + layout.root.size <= layout.size - 33 * SECTOR


def test_layout_refuses_a_disk_without_room_for_a_root() -> None:
    with pytest.raises(AmberError) as e:
        DiskLayout.for_size(150 << 20)
    assert e.value.code == ExitCode.NO_SPACE and "too small" in e.value.message
    assert "MiB" in (e.value.hint or "")


def test_volume_ids_are_fstab_spelled_and_differ() -> None:
    ids = {disk.new_volume_id() for _ in range(20)}
    assert len(ids) > 1
    for volume_id in ids:
        assert len(volume_id) == 9 and volume_id[4] == "-"
        int(volume_id.replace("-", ""), 16)
        assert volume_id == volume_id.upper()


def test_boot_sector_keeps_the_partition_table_and_points_at_core() -> None:
    boot_img = bytes(range(256)) * 2
    current = bytearray(SECTOR)
    current[0x1BE:0x1CE] = bytes([0, 0, 2, 0, 0xEE] + [0xFF] * 11)  # protective entry
    current[0x1FE:] = b"\x55\xaa"
    current[0x10] = 0x77  # something in the BPB area
    sector = disk.boot_sector(boot_img, bytes(current), 2048)
    assert len(sector) == SECTOR
    assert sector[0x1B8:0x1FE] == bytes(current[0x1B8:0x1FE])
    assert sector[0x10] == 0x77
    assert struct.unpack_from("<Q", sector, 0x5C)[0] == 2048
    assert sector[0x64] == 0xFF and sector[0x66:0x68] == b"\x90\x90"
    # GRUB's code around the patched fields is untouched.
    assert sector[:3] == boot_img[:3] and sector[0x68:0x1B8] == boot_img[0x68:0x1B8]


def fake_core(sectors: int) -> bytes:
    image = bytearray(sectors * SECTOR - 100)  # not a whole number of sectors
    struct.pack_into("<QHH", image, SECTOR - 12, 1, sectors - 1, 0x820)
    return bytes(image)


def test_core_image_blocklist_points_into_the_bios_boot_partition() -> None:
    part = DiskLayout.for_size(1 << 30).bios_boot
    placed = disk.place_core_image(fake_core(402), part)
    assert len(placed) == 402 * SECTOR
    assert struct.unpack_from("<QHH", placed, SECTOR - 12) == (2049, 401, 0x820)


def test_core_image_too_big_or_unexpected_is_refused() -> None:
    part = DiskLayout.for_size(1 << 30).bios_boot
    with pytest.raises(AmberError) as e:
        disk.place_core_image(fake_core(2049), part)
    assert e.value.code == ExitCode.NO_SPACE and "BIOS boot partition" in e.value.message
    odd = bytearray(fake_core(10))
    struct.pack_into("<H", odd, SECTOR - 4, 0x1000)  # another segment
    with pytest.raises(AmberError) as e:
        disk.place_core_image(bytes(odd), part)
    assert e.value.code == ExitCode.ENVIRONMENT


def test_missing_tools_name_their_debian_packages(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(AmberError) as e:
        disk.check_host(qcow2=True, grub_lib=tmp_path / "grub")
    assert e.value.code == ExitCode.ENVIRONMENT and "sgdisk" in e.value.message
    hint = e.value.hint or ""
    for package in ("gdisk", "dosfstools", "mtools", "grub-common", "grub-efi-amd64-bin",
                    "grub-pc-bin", "qemu-utils"):
        assert package in hint.split()
    assert "--no-install-recommends" in hint
    assert "grub-pc " not in hint + " " and "grub-efi-amd64 " not in hint + " "
    # Everything there but the BIOS files: only grub-pc-bin is asked for.
    for tool in ("sgdisk", "mkfs.vfat", "mmd", "mcopy", "grub-mkimage", "qemu-img"):
        (bin_dir / tool).write_text("#!/bin/sh\n")
        (bin_dir / tool).chmod(0o755)
    for name in ("kernel.img", "btrfs.mod"):
        (tmp_path / "grub/x86_64-efi").mkdir(parents=True, exist_ok=True)
        (tmp_path / "grub/x86_64-efi" / name).write_bytes(b"")
    with pytest.raises(AmberError) as e:
        disk.check_host(grub_lib=tmp_path / "grub")
    assert (e.value.hint or "").split()[-1] == "grub-pc-bin"
    assert list(tmp_path.iterdir()) == [bin_dir, tmp_path / "grub"]


def test_grub_cfg_is_valid_grub_script(tmp_path: Path) -> None:
    require(shutil.which("grub-script-check") is not None, "grub-common is not installed")
    text = disk.render_grub_cfg(UUID)
    assert f"set amber_fs={UUID}" in text
    assert 'load_env --file "${amber_env}"' in text
    assert "source /@/.snapshots/.amber/menu.cfg" in text
    cfg = tmp_path / "grub.cfg"
    cfg.write_text(text)
    subprocess.run(["grub-script-check", str(cfg)], check=True)


def grub_fstest(image: Path, *args: str) -> str:
    return subprocess.run(["grub-fstest", str(image), *args], check=True,
                          capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def built_disk(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DiskLayout]:
    try:
        disk.check_host()
    except AmberError as e:
        require(False, f"the disk tools are not installed: {e.hint}")
    require(shutil.which("grub-fstest") is not None, "grub-common is not installed")
    path = tmp_path_factory.mktemp("disk") / "disk.raw"
    layout = DiskLayout.for_size(512 << 20)
    with open(path, "wb") as f:
        f.truncate(layout.size)
    disk.write(path, layout, UUID, ESP_ID, grubenv.render({}))
    return path, layout


def test_built_disk_has_a_valid_gpt(built_disk: tuple[Path, DiskLayout]) -> None:
    path, layout = built_disk
    verify = subprocess.run(["sgdisk", "-v", str(path)], capture_output=True, text=True)
    assert verify.returncode == 0 and "No problems found" in verify.stdout
    for part in layout.partitions:
        info = subprocess.run(["sgdisk", "-i", str(part.number), str(path)], check=True,
                              capture_output=True, text=True).stdout
        assert f"First sector: {part.first} " in info and f"Last sector: {part.last} " in info
        assert f"Partition name: '{part.name}'" in info


def test_built_disk_esp_as_grub_sees_it(built_disk: tuple[Path, DiskLayout],
                                        tmp_path: Path) -> None:
    path, _ = built_disk
    assert sorted(grub_fstest(path, "ls", "(loop0,gpt2)/").split()) == ["efi/", "grub/"]
    assert grub_fstest(path, "ls", "(loop0,gpt2)/grub").split() == ["grub.cfg", "grubenv"]
    assert grub_fstest(path, "ls", "(loop0,gpt2)/EFI/BOOT").split() == ["bootx64.efi"]
    assert grub_fstest(path, "cat", "(loop0,gpt2)/grub/grub.cfg") == disk.render_grub_cfg(UUID)
    out = tmp_path / "grubenv"
    grub_fstest(path, "cp", "(loop0,gpt2)/grub/grubenv", str(out))
    assert out.read_bytes() == grubenv.render({}) and len(out.read_bytes()) == 1024
    efi = tmp_path / "BOOTX64.EFI"
    grub_fstest(path, "cp", "(loop0,gpt2)/EFI/BOOT/BOOTX64.EFI", str(efi))
    assert efi.read_bytes()[:2] == b"MZ"  # a PE image, as UEFI loads it


def test_built_disk_esp_has_the_volume_id(built_disk: tuple[Path, DiskLayout]) -> None:
    path, layout = built_disk
    out = subprocess.run(["mdir", "-i", disk.mtools_target(path, layout), "::/"], check=True,
                         capture_output=True, text=True, env={"MTOOLS_SKIP_CHECK": "1"}).stdout
    assert f"Volume Serial Number is {ESP_ID}" in out and "AMBER-ESP" in out


def test_built_disk_boots_grub_from_the_mbr(built_disk: tuple[Path, DiskLayout]) -> None:
    path, layout = built_disk
    data = path.read_bytes()[:layout.esp.offset]
    sector0 = data[:SECTOR]
    boot_img = (disk.GRUB_LIB / "i386-pc/boot.img").read_bytes()
    assert sector0[0x1FE:] == b"\x55\xaa"
    assert sector0[0x1BE + 4] == 0xEE, "the protective MBR's partition entry is kept"
    assert struct.unpack_from("<Q", sector0, 0x5C)[0] == layout.bios_boot.first
    assert sector0[0x68:0x1B8] == boot_img[0x68:0x1B8]
    core = data[layout.bios_boot.offset:layout.esp.offset]
    start, length, segment = struct.unpack_from("<QHH", core, SECTOR - 12)
    assert (start, segment) == (layout.bios_boot.first + 1, 0x820)
    assert 100 < length < layout.bios_boot.sectors
    assert core[:SECTOR - 12] == (disk.GRUB_LIB / "i386-pc/diskboot.img").read_bytes()[
        :SECTOR - 12]
    # The rest of core.img is there: its sectors are not all zero, and what follows is.
    assert core[SECTOR:SECTOR * (length + 1)].strip(b"\0")
    assert not core[SECTOR * (length + 1):].strip(b"\0")


def test_esp_write_failure_says_what(tmp_path: Path) -> None:
    try:
        disk.check_host()
    except AmberError:
        require(False, "the disk tools are not installed")
    path = tmp_path / "disk.raw"
    layout = DiskLayout.for_size(512 << 20)
    with open(path, "wb") as f:
        f.truncate(layout.size)
    disk.partition(path, layout)
    with pytest.raises(AmberError) as e:
        disk.make_esp(path, layout, ESP_ID, {"grub/big": b"x" * (130 << 20)})
    assert e.value.code == ExitCode.NO_SPACE and "grub/big" in e.value.message
    assert "full" in e.value.message

"""amber init's pure parts: the GPT reader against sgdisk's tables, the kernel command lines
taken from the old GRUB's settings, the "system before amber" entry and the ESP's handover
file, checked with GRUB's own script checker where the host has it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from amber import adopt
from amber.boot import esp, gpt, menu, takeover
from amber.errors import AmberError, ExitCode
from tests.conftest import require
from tests.unit.test_boot_menu import _entry


def test_gpt_read_finds_the_esp_and_the_bios_boot_partition(tmp_path: Path) -> None:
    require(shutil.which("sgdisk") is not None, "sgdisk (gdisk) is missing")
    image = tmp_path / "disk.img"
    image.write_bytes(b"")
    subprocess.run(["truncate", "-s", "64M", str(image)], check=True)
    subprocess.run(["sgdisk", "--clear", "--new=1:2048:+8M", "--typecode=1:EF00",
                    "--new=2:0:+1M", "--typecode=2:EF02", "--new=3:0:0", "--typecode=3:8300",
                    str(image)], check=True, capture_output=True)
    table = gpt.read(image)
    assert table is not None
    esp_part, bios = table.of_type(gpt.ESP_TYPE), table.of_type(gpt.BIOS_BOOT_TYPE)
    assert esp_part is not None and (esp_part.number, esp_part.first) == (1, 2048)
    assert esp_part.size == 8 << 20
    assert bios is not None and (bios.number, bios.size) == (2, 1 << 20)
    assert table.holding_btrfs("c0ffee00-0000-4000-8000-00000000ad09") is None
    plain = tmp_path / "plain.img"
    plain.write_bytes(bytes(1 << 16))
    assert gpt.read(plain) is None


def test_kernel_command_lines_from_the_old_grub_settings(tmp_path: Path) -> None:
    (tmp_path / "etc/default").mkdir(parents=True)
    (tmp_path / "etc/default/grub").write_text(
        'GRUB_CMDLINE_LINUX_DEFAULT="quiet rootwait"\n'
        "GRUB_CMDLINE_LINUX='console=ttyS0 rootflags=subvol=@rootfs ro root=/dev/sda2'\n")
    line = adopt.kernel_cmdline(tmp_path, "u-1")
    # rootwait is kept (it only starts with "ro"); the old root and its flags are not.
    assert line == "root=UUID=u-1 rootfstype=btrfs ro console=ttyS0 quiet rootwait panic=5"


def test_the_before_amber_entry_boots_the_old_root(tmp_path: Path) -> None:
    (tmp_path / "etc/default").mkdir(parents=True)
    (tmp_path / "etc/default/grub").write_text('GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n')

    def entry(subvolume: str) -> dict[str, str]:
        found = adopt.Found(tmp_path, "/dev/sda2", "u-1", subvolume, 256, (), 0, 0, "6.1.0-9",
                            takeover.Targets(esp.MountedEsp(tmp_path), None, None, None, ()))
        return adopt.before_entry(found)

    rootfs = entry("@rootfs")
    assert rootfs["kernel"] == "/@rootfs/boot/vmlinuz-6.1.0-9"
    assert rootfs["arguments"] == "root=UUID=u-1 ro rootflags=subvol=@rootfs quiet"
    top = entry("")
    assert top["initrd"] == "/boot/initrd.img-6.1.0-9"
    assert "rootflags=subvolid=5" in top["arguments"]  # the default subvolume is amber's now

    before = menu.Before(rootfs["title"], rootfs["kernel"], rootfs["initrd"],
                         rootfs["arguments"])
    text = menu.render(_entry(1), [_entry(1)], 3, before=before)
    assert f"--id {menu.BEFORE_ID} {{" in text
    assert "menuentry 'amber: the system before amber (@rootfs) - kernel 6.1.0-9'" in text
    require(shutil.which("grub-script-check") is not None, "grub-script-check is missing")
    for name, content in (("menu.cfg", text), ("grub.cfg", takeover.handover_cfg("ABCD-1234"))):
        path = tmp_path / name
        path.write_text(content)
        subprocess.run(["grub-script-check", str(path)], check=True)


def _initrd(root: Path, names: list[str]) -> None:
    """An uncompressed initrd (one newc archive, as cpio writes it) holding `names`."""
    tree = root / "tree"
    for name in names:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text("#!/bin/sh\n")
    (root / "boot").mkdir(exist_ok=True)
    with open(root / "boot/initrd.img-6.1.0-test", "wb") as out:
        subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=tree, check=True, stdout=out,
                       input="\n".join(names).encode())


@pytest.mark.parametrize("hook", ["usr/lib/amber/amber-etc.sh",  # initramfs-tools
                                  "var/lib/dracut/hooks/pre-pivot/50-amber-etc.sh"])
def test_an_initrd_with_amber_s_etc_hook_passes(tmp_path: Path, hook: str) -> None:
    require(shutil.which("cpio") is not None, "cpio is missing")
    _initrd(tmp_path, ["init", hook])
    assert adopt.check_etc_hook(tmp_path, "6.1.0-test") == []


def test_an_initrd_without_amber_s_etc_hook_is_refused(tmp_path: Path) -> None:
    require(shutil.which("cpio") is not None, "cpio is missing")
    _initrd(tmp_path, ["init", "scripts/local-bottom/ORDER"])
    with pytest.raises(AmberError) as refused:
        adopt.check_etc_hook(tmp_path, "6.1.0-test")
    assert refused.value.code == ExitCode.REFUSED
    assert "read-only /etc" in refused.value.message
    assert "update-initramfs -u" in (refused.value.hint or "")


def test_an_initrd_that_cannot_be_read_is_a_note(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot/initrd.img-6.1.0-test").write_text("not an initrd\n")
    notes = adopt.check_etc_hook(tmp_path, "6.1.0-test")
    assert len(notes) == 1 and "update-initramfs -u" in notes[0]


def test_without_mtools_init_says_what_to_install(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Before it reads any ESP (the disk's is read with mtools even when one is mounted)."""
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AmberError) as caught:
        takeover.find(tmp_path, "/dev/nonexistent", "c0ffee00-0000-4000-8000-00000000ad09")
    assert caught.value.code == ExitCode.ENVIRONMENT
    assert "mtools" in str(caught.value) and "minfo" in str(caught.value)
    assert "apt-get install --no-install-recommends mtools" in (caught.value.hint or "")


def test_the_command_line_sets_panic_once(tmp_path: Path) -> None:
    (tmp_path / "etc/default").mkdir(parents=True)
    grub = tmp_path / "etc/default/grub"
    grub.write_text('GRUB_CMDLINE_LINUX="console=ttyS0 panic=10"\n')
    assert adopt.kernel_cmdline(tmp_path, "u").split().count("panic=10") == 1
    assert "panic=5" not in adopt.kernel_cmdline(tmp_path, "u")
    grub.write_text('GRUB_CMDLINE_LINUX="console=ttyS0"\n')
    assert adopt.kernel_cmdline(tmp_path, "u").endswith("console=ttyS0 panic=5")

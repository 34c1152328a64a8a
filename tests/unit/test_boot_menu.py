"""The GRUB environment block and amber's boot menu text, checked against GRUB's own tools
(grub-editenv, grub-script-check) where the host has them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from amber.boot import grubenv, menu
from amber.errors import AmberError
from tests.conftest import require


def test_grubenv_round_trip() -> None:
    values = {"next_entry": "amber-snapshots>amber-snapshot-3", "odd": "a\\b\nc"}
    block = grubenv.render(values)
    assert len(block) == grubenv.SIZE
    assert grubenv.parse(block) == values


def test_grubenv_matches_grub_editenv(tmp_path: Path) -> None:
    require(shutil.which("grub-editenv") is not None, "grub-editenv (grub-common) is missing")
    theirs = tmp_path / "theirs"
    subprocess.run(["grub-editenv", str(theirs), "create"], check=True)
    subprocess.run(["grub-editenv", str(theirs), "set", "next_entry=amber-snapshots>x",
                    "b=back\\slash"], check=True)
    assert grubenv.render({"next_entry": "amber-snapshots>x", "b": "back\\slash"}) == \
        theirs.read_bytes()
    ours = tmp_path / "ours"
    grubenv.write(ours, {"next_entry": "amber-snapshots>amber-snapshot-2"})
    listed = subprocess.run(["grub-editenv", str(ours), "list"], check=True,
                            capture_output=True, text=True).stdout
    assert listed == "next_entry=amber-snapshots>amber-snapshot-2\n"


def test_grubenv_refuses_what_does_not_fit_and_what_is_not_a_block(tmp_path: Path) -> None:
    with pytest.raises(AmberError, match="cannot hold"):
        grubenv.render({"x": "y" * 1000})
    with pytest.raises(ValueError, match="not a GRUB environment block"):
        grubenv.parse(b"hello")
    bad = tmp_path / "grubenv"
    bad.write_bytes(b"x" * 1024)
    with pytest.raises(AmberError, match="not a GRUB environment block"):
        grubenv.read(bad)
    assert grubenv.read(tmp_path / "missing") == {}


def test_update_keeps_other_variables(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    grubenv.write(path, {"saved_entry": "x"})
    grubenv.update(path, {"next_entry": "amber-snapshots>amber-snapshot-4"})
    assert grubenv.read(path) == {"saved_entry": "x",
                                  "next_entry": "amber-snapshots>amber-snapshot-4"}
    grubenv.update(path, {"next_entry": None})
    assert grubenv.read(path) == {"saved_entry": "x"}


SUBVOL = "rootflags=subvol=@/.snapshots/7/snapshot"


@pytest.mark.parametrize(("cmdline", "expected"), [
    ("root=UUID=u rootfstype=btrfs ro console=ttyS0 panic=5",
     f"root=UUID=u rootfstype=btrfs ro console=ttyS0 panic=5 {SUBVOL}"),
    ("BOOT_IMAGE=/vmlinuz root=UUID=u rootflags=subvol=@/old,compress=zstd ro",
     f"root=UUID=u ro {SUBVOL},compress=zstd"),
    ("root=/dev/vda3 rootflags=subvolid=256", f"root=/dev/vda3 {SUBVOL}"),
])
def test_kernel_arguments_mount_the_snapshot(cmdline: str, expected: str) -> None:
    assert menu.kernel_arguments(cmdline, "@/.snapshots/7/snapshot") == expected


def test_boot_once_target_round_trip() -> None:
    assert menu.boot_once_number(menu.boot_once_target(12)) == 12
    assert menu.boot_once_number("amber-default") is None
    assert menu.boot_once_number("amber-snapshots>amber-snapshot-0") is None


def _entry(number: int, description: str = "", pinned: bool = False) -> menu.Entry:
    path = f"@/.snapshots/{number}/snapshot"
    return menu.Entry(number, "6.1.0-28-amd64", f"/{path}/boot/vmlinuz-6.1.0-28-amd64",
                      f"/{path}/boot/initrd.img-6.1.0-28-amd64",
                      menu.kernel_arguments("root=UUID=u ro init=$x;y", path),
                      f"snapshot {number} (2026-12-02 03:00){description}", pinned)


def test_rendered_menu_is_valid_grub_script(tmp_path: Path) -> None:
    entries = [_entry(3, " it's $HOME; rm -rf /"), _entry(2), _entry(1, pinned=True)]
    text = menu.render(entries[0], entries, timeout=3)
    assert "set default=amber-default" in text
    assert "--id amber-snapshots" in text and "--id amber-snapshot-1 " in text
    assert "rootflags=subvol=@/.snapshots/3/snapshot" in text
    assert "# amber-menu 1: default 3; pinned 1" in text
    require(shutil.which("grub-script-check") is not None, "grub-script-check is missing")
    path = tmp_path / "menu.cfg"
    path.write_text(text)
    subprocess.run(["grub-script-check", str(path)], check=True)


def test_titles_and_arguments_cannot_break_out_of_quotes() -> None:
    text = menu.render(_entry(3, "'; reboot; echo '"), [_entry(3, "'; reboot; echo '")], 3)
    assert "menuentry 'snapshot 3 (2026-12-02 03:00)'\\''; reboot; echo '\\''' " in text
    assert " 'init=$x;y' " in text  # GRUB would expand $x and end the command at ;

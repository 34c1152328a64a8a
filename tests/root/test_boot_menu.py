"""amber's boot menu on a real btrfs root: rewritten by every change of the default or of the
snapshots, read back by GRUB's own btrfs reader (grub-fstest) from the committed filesystem;
boot-once through GRUB's environment block; snapshots that cannot boot kept out."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from amber.boot import grubenv
from tests.conftest import require
from tests.root.conftest import System
from tests.root.helpers import amber, amber_json, status

pytestmark = pytest.mark.root

RELEASE = "6.1.0-99-amd64"
# A kernel package's files as the menu needs them (the menu never runs them).
INSTALL_KERNEL = (
    f"mkdir -p /boot /usr/lib/modules/{RELEASE} /etc/kernel && "
    f"echo kernel > /boot/vmlinuz-{RELEASE} && echo initrd > /boot/initrd.img-{RELEASE} && "
    f"ln -sf boot/vmlinuz-{RELEASE} /vmlinuz && "
    "echo 'root=UUID=0ddba11 rootfstype=btrfs ro console=ttyS0 panic=5' > /etc/kernel/cmdline")


def menu_file(system: System) -> Path:
    return system.root / ".snapshots/.amber/menu.cfg"


def committed_menu(system: System) -> str:
    """The menu as GRUB reads it: from the top level, committed trees only."""
    require(shutil.which("grub-fstest") is not None, "grub-fstest (grub-common) is missing")
    return subprocess.run(["grub-fstest", str(system.image), "cat",
                           "/@/.snapshots/.amber/menu.cfg"], check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture
def booting(system: System) -> System:
    """A system with a kernel in snapshot 2 (the default) that boots through amber's menu,
    with an ESP holding GRUB's environment block at /boot/efi."""
    amber(system.root, "run", "-m", "kernel", "--", "sh", "-c", INSTALL_KERNEL)
    esp = system.root / "boot"
    subprocess.run(["mount", "-t", "tmpfs", "esp", str(esp)], check=True)
    system.mounts.append(esp)
    (esp / "efi/grub").mkdir(parents=True)
    grubenv.write(esp / "efi/grub/grubenv", {})
    # What the image builder (and adopt) do: from now on amber keeps the menu.
    menu_file(system).parent.mkdir()
    menu_file(system).touch()
    return system


def test_every_change_rewrites_the_menu(booting: System) -> None:
    system = booting
    amber(system.root, "run", "--continue", "-m", "third", "--", "true")
    text = menu_file(system).read_text()
    assert text == committed_menu(system)
    assert "# amber-menu 1: default 3; pinned" in text
    assert (f"linux /@/.snapshots/3/snapshot/boot/vmlinuz-{RELEASE} root=UUID=0ddba11 "
            "rootfstype=btrfs ro console=ttyS0 panic=5 rootflags=subvol=@/.snapshots/3/snapshot"
            in text)
    assert f"initrd /@/.snapshots/3/snapshot/boot/initrd.img-{RELEASE}" in text
    assert "--id amber-snapshot-3 " in text and "--id amber-snapshot-2 " in text
    assert "amber-snapshot-1 " not in text  # no kernel in it
    if shutil.which("grub-script-check"):
        subprocess.run(["grub-script-check", str(menu_file(system))], check=True)

    amber(system.root, "rollback", "2")
    assert "# amber-menu 1: default 2;" in committed_menu(system)
    amber(system.root, "pin", "3")
    assert "# amber-menu 1: default 2; pinned 3" in committed_menu(system)
    amber(system.root, "unpin", "3")
    amber(system.root, "delete", "3")
    text = committed_menu(system)
    assert "amber-snapshot-3" not in text and "--id amber-snapshot-2 " in text


def test_boot_once(booting: System) -> None:
    system = booting
    amber(system.root, "run", "--continue", "--", "true")
    assert status(system.root)["next_boot_once"] is None
    assert amber_json(system.root, "boot-once", "2") == {"next_boot_once": 2}
    env = grubenv.read(system.root / "boot/efi/grub/grubenv")
    assert env == {"next_entry": "amber-snapshots>amber-snapshot-2"}
    assert status(system.root)["next_boot_once"] == 2
    assert "next boot, once:   2" in amber(system.root, "status").stdout
    amber(system.root, "boot-once", "--cancel")
    assert status(system.root)["next_boot_once"] is None

    for args, code, reason in ((["1"], 6, "has no kernel"), (["99"], 5, "does not exist")):
        result = amber(system.root, "boot-once", *args, check=False)
        assert result.returncode == code, result.stderr
        assert reason in result.stderr and "Traceback" not in result.stderr
    assert grubenv.read(system.root / "boot/efi/grub/grubenv") == {}


def test_a_snapshot_that_cannot_boot_never_becomes_the_default(booting: System) -> None:
    system = booting
    before = status(system.root)["default"]
    result = amber(system.root, "run", "--continue", "--", "rm", f"/boot/vmlinuz-{RELEASE}",
                   check=False)
    assert result.returncode == 3, result.stderr
    assert "cannot boot" in result.stderr and "Traceback" not in result.stderr
    assert status(system.root)["default"] == before
    assert [row["number"] for row in amber_json(system.root, "snapshots")] == [1, 2]


def test_a_menu_that_disagrees_with_the_default_is_repaired(booting: System) -> None:
    system = booting
    amber(system.root, "run", "--continue", "--", "true")
    from amber import btrfs

    # Another tool moves the default behind amber's back.
    btrfs.set_default_subvolume(system.root / ".snapshots",
                                btrfs.subvolume_id(system.snapshot(2)))
    result = amber(system.root, "cleanup")
    assert "did not name the default snapshot 2" in result.stderr
    assert "# amber-menu 1: default 2;" in committed_menu(system)

"""amber's boot menu on a VM that boots through firmware and GRUB: boot-once, an older snapshot
chosen with keys at the menu, status when the booted snapshot is not the default, and a second
kernel installed by a transaction, booted, then rolled back to the first."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pytest

from amber.errors import AmberError
from testing.images import CACHE
from testing.vm import VM
from tests.vm.conftest import amber_status

pytestmark = pytest.mark.vm

DOWN, ENTER = b"\x0e", b"\r"  # Ctrl-N, Enter: single bytes GRUB reads on any console


def settle(vm: VM) -> None:
    """Until the boot's jobs are done (the health units among them)."""
    vm.exec(["systemctl", "is-system-running", "--wait"], check=False, timeout=600)


def reboot(vm: VM) -> int:
    """Reboot, wait for the boot to settle; returns the console offset of this boot."""
    mark = vm.console_size()
    vm.reboot()
    settle(vm)
    return mark


def test_boot_once_and_keys(vm: VM) -> None:
    settle(vm)
    vm.exec(["amber", "run", "-m", "second", "--", "sh", "-c",
             "echo two > /usr/share/amber-marker"], timeout=600)
    mark = reboot(vm)
    assert "amber: booting snapshot 2" in vm.console_text(mark)
    st = amber_status(vm)
    assert (st["booted"], st["default"], st["boot_menu"]) == (2, 2, True)

    vm.exec(["amber", "boot-once", "1"])
    assert amber_status(vm)["next_boot_once"] == 1
    mark = reboot(vm)
    assert "amber: booting snapshot 1" in vm.console_text(mark)
    st = amber_status(vm)
    assert (st["booted"], st["default"], st["next_boot_once"]) == (1, 2, None)
    text = vm.exec(["amber", "status"]).out
    assert "the booted snapshot 1 is not the default" in text and "amber rollback" in text
    # / is snapshot 1, read-only, with the shared subvolumes writable, as a booted system.
    assert vm.exec(["test", "-e", "/usr/share/amber-marker"], check=False).code != 0
    assert vm.exec(["touch", "/usr/amber-probe"], check=False).code != 0
    vm.exec(["touch", "/var/tmp/amber-probe"])

    mark = reboot(vm)  # boot-once was once: the default again
    assert amber_status(vm)["booted"] == 2

    # The same by hand at the menu: the submenu, then its second entry (snapshot 1).
    previous, mark = vm.boot_id(), vm.console_size()
    with contextlib.suppress(AmberError, OSError, ConnectionError):
        vm.exec(["systemctl", "reboot"], check=False, timeout=30)
    vm.wait_console(r"automatically in", timeout=600, since=mark)
    vm.send_keys([DOWN, ENTER, DOWN, ENTER], pause=1.5)
    vm.wait_reboot(previous)
    settle(vm)
    assert amber_status(vm)["booted"] == 1
    assert "subvol=@/.snapshots/1/snapshot" in vm.exec(["cat", "/proc/cmdline"]).out


def cloud_kernel_debs(folder: Path) -> list[Path]:
    """Debian's cloud kernel flavor, from the host's apt sources (cached)."""
    folder.mkdir(parents=True, exist_ok=True)
    found = sorted(folder.glob("linux-image-*-cloud-amd64_*.deb"))
    if found:
        return found[-1:]
    depends = subprocess.run(["apt-cache", "depends", "--no-recommends", "--no-suggests",
                              "linux-image-cloud-amd64"], capture_output=True, text=True,
                             check=True).stdout
    names = [line.split()[-1] for line in depends.splitlines()
             if line.strip().startswith("Depends:") and "cloud-amd64" in line]
    subprocess.run(["apt-get", "download", *names[:1]], cwd=folder, check=True,
                   capture_output=True)
    return sorted(folder.glob("linux-image-*-cloud-amd64_*.deb"))[-1:]


def test_a_second_kernel_by_transaction_then_rollback(vm: VM) -> None:
    reboot(vm)  # into the default (the test before left snapshot 1 booted)
    first = vm.exec(["uname", "-r"]).out.strip()
    default = amber_status(vm)["default"]
    assert amber_status(vm)["booted"] == default
    deb = cloud_kernel_debs(CACHE / "debs" / "cloud")[0]
    vm.put(deb, f"/var/tmp/{deb.name}")
    vm.exec(["amber", "pkg", "install", f"/var/tmp/{deb.name}"], timeout=1800)
    new = amber_status(vm)["default"]
    release = deb.name.split("_")[0].removeprefix("linux-image-")
    menu = vm.exec(["cat", "/.snapshots/.amber/menu.cfg"]).out
    assert f"/@/.snapshots/{new}/snapshot/boot/vmlinuz-{release}" in menu
    reboot(vm)
    assert vm.exec(["uname", "-r"]).out.strip() == release
    assert vm.exec(["test", "-d", f"/usr/lib/modules/{release}"], check=False).code == 0

    vm.exec(["amber", "rollback", str(default)])
    reboot(vm)
    assert vm.exec(["uname", "-r"]).out.strip() == first
    assert amber_status(vm)["booted"] == default

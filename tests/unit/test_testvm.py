"""The VM harness's pure parts: the direct boot reads the menu's default entry."""

from __future__ import annotations

import pytest

from amber.log import AmberError, ExitCode
from testing.vm import Firmware, before_kernel, default_entry

MENU = """\
set default=amber-default
menuentry 'amber: snapshot 3 (default)' --id amber-default {
  echo 'amber: booting snapshot 3'
  linux /@/.snapshots/3/snapshot/boot/vmlinuz-6.1.0-9-amd64 root=UUID=x ro panic=5 rootflags=subvol=@/.snapshots/3/snapshot
  initrd /@/.snapshots/3/snapshot/boot/initrd.img-6.1.0-9-amd64
}
submenu 'amber: snapshots' --id amber-snapshots {
  menuentry 'snapshot 2' --id amber-snapshot-2 {
    linux /@/.snapshots/2/snapshot/boot/vmlinuz-6.1.0-8-amd64 root=UUID=x ro
    initrd /@/.snapshots/2/snapshot/boot/initrd.img-6.1.0-8-amd64
  }
}
"""  # noqa: E501


def test_default_entry_of_the_menu() -> None:
    kernel, initrd, cmdline = default_entry(MENU)
    assert kernel == "/@/.snapshots/3/snapshot/boot/vmlinuz-6.1.0-9-amd64"
    assert initrd == "/@/.snapshots/3/snapshot/boot/initrd.img-6.1.0-9-amd64"
    assert cmdline == "root=UUID=x ro panic=5 rootflags=subvol=@/.snapshots/3/snapshot"


def test_a_menu_without_default_entry_is_refused() -> None:
    with pytest.raises(AmberError) as e:
        default_entry(MENU.replace("--id amber-default", "--id other"))
    assert e.value.code == ExitCode.NOT_FOUND


def test_firmware_names() -> None:
    assert [str(f) for f in Firmware] == ["uefi", "bios", "direct"]


def test_a_boot_is_before_its_kernel_until_the_kernel_prints() -> None:
    reboot = "[ 64.3] reboot: machine restart\r\nBdsDxe: starting Boot0001 \"UEFI Misc Device\"\r\n"
    assert before_kernel(reboot)
    assert before_kernel(reboot + "Welcome to GRUB!\r\n amber: booting snapshot 2")
    assert not before_kernel(reboot + "Welcome to GRUB!\n[ 0.0] Linux version 6.1.0-57-amd64")
    assert not before_kernel("[ 12.0] systemd[1]: Started something.")  # a running system
    # The kernel restarted the machine, and the firmware has not printed yet.
    assert before_kernel("[ 0.0] Linux version 6.1\n[ 37.1] reboot: machine restart\r\n")
    assert not before_kernel("[ 37.1] reboot: Power down\r\n")
    assert not before_kernel("")


class ConsoleOnly:
    """What StallWatch reads of a VM: its console and its stall limit; resets are counted."""

    def __init__(self, console: str):
        self.console, self.firmware_stall, self.resets = console, 0.0, 0

    def console_size(self) -> int:
        return len(self.console)

    def console_text(self, since: int = 0) -> str:
        return self.console[since:]

    def reset_stalled_firmware(self) -> None:
        self.resets += 1


def test_a_silent_boot_is_reset_only_before_its_kernel() -> None:
    from testing.vm import STALL_RESETS, StallWatch

    running = ConsoleOnly("[ 0.0] Linux version 6.1\n[ 5.0] systemd[1]: Started.\n")
    watch = StallWatch(running)  # type: ignore[arg-type]
    assert not watch.reset_if_stalled()
    restarted = ConsoleOnly("[ 0.0] Linux version 6.1\n[ 37.1] reboot: machine restart\n")
    watch = StallWatch(restarted)  # type: ignore[arg-type]
    assert [watch.reset_if_stalled() for _ in range(STALL_RESETS + 1)] == [
        *[True] * STALL_RESETS, False]
    assert restarted.resets == STALL_RESETS
    # At power-on, the boot is before its kernel until a kernel line comes after the start.
    powered = ConsoleOnly("[ 0.0] Linux version 6.1\n[ 37.1] reboot: Power down\n")
    watch = StallWatch(powered, powered_on=True)  # type: ignore[arg-type]
    assert watch.reset_if_stalled() and powered.resets == 1
    powered.console += "[ 0.0] Linux version 6.1\n"
    watch = StallWatch(powered, powered_on=True)  # type: ignore[arg-type]
    powered.console += "[ 1.0] more\n"
    assert not watch.reset_if_stalled()  # it grew
    assert not StallWatch(ConsoleOnly(""), powered_on=False).reset_if_stalled()  # type: ignore[arg-type]

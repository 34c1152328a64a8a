"""Boot-level promises, on a real Debian kernel in qemu booted through UEFI firmware and the
image's GRUB: the default snapshot is what boots, / is read-only, a transaction shows up after a
reboot, a rollback brings the old system back, and a power cut in the middle of a transaction
loses nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from testing.packages import build_deb
from testing.vm import VM
from tests.vm.conftest import amber_status

pytestmark = pytest.mark.vm

PACKAGE = "amber-boot-probe"
PACKAGE_FILE = "/usr/share/amber-boot-probe/hello"


def root_subvolume(vm: VM) -> str:
    """The subvolume / is mounted from, as the kernel reports it."""
    options = vm.exec(["findmnt", "--noheadings", "--output", "OPTIONS", "/"]).out.strip()
    return dict(o.partition("=")[::2] for o in options.split(","))["subvol"].lstrip("/")


def snapshot_path(number: int) -> str:
    return f"@/.snapshots/{number}/snapshot"


def package_installed(vm: VM) -> bool:
    return vm.exec(["dpkg-query", "--show", PACKAGE], check=False).code == 0


def test_boots_default_snapshot_read_only(vm: VM) -> None:
    cmdline = vm.exec(["cat", "/proc/cmdline"]).out.split()
    # GRUB booted the default snapshot's own kernel, from the top level of the btrfs.
    assert cmdline[0].startswith(f"BOOT_IMAGE=/{snapshot_path(1)}/boot/vmlinuz-")
    assert f"rootflags=subvol={snapshot_path(1)}" in cmdline and "panic=5" in cmdline
    default = vm.exec(["btrfs", "subvolume", "get-default", "/"]).out
    assert root_subvolume(vm) == snapshot_path(1)
    assert default.split()[-1] == snapshot_path(1)
    status = amber_status(vm)
    assert (status["booted"], status["default"]) == (1, 1)
    assert status["in_progress"] == [] and status["reboot_needed"] is False

    assert vm.exec(["findmnt", "-no", "OPTIONS", "/"]).out.split(",")[0] == "ro"
    write = vm.exec(["touch", "/usr/amber-write-probe"], check=False)
    assert write.code != 0 and "Read-only file system" in write.err
    assert "ro=true" in vm.exec(["btrfs", "property", "get", "/", "ro"]).out

    for writable in ("/var/tmp", "/root", "/home", "/.snapshots"):
        vm.exec(["sh", "-c", f"echo ok > {writable}/amber-write-probe"])
    assert vm.exec(["findmnt", "-no", "FSTYPE", "/tmp"]).out.strip() == "tmpfs"


def test_exec_is_binary_safe(vm: VM, tmp_path: Path) -> None:
    blob = bytes(range(256)) * 64
    result = vm.exec(["sh", "-c", "cat; echo err >&2; exit 7"], check=False, input=blob)
    assert (result.code, result.stdout, result.err) == (7, blob, "err\n")
    local = tmp_path / "blob"
    local.write_bytes(blob)
    vm.put(local, "/var/tmp/blob")
    vm.get("/var/tmp/blob", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == blob


def test_install_reboot_rollback_reboot(vm: VM, tmp_path: Path) -> None:
    deb = build_deb(tmp_path, PACKAGE, "1.0", {PACKAGE_FILE: "hello from a transaction\n"})
    vm.put(deb, f"/root/{deb.name}")
    vm.exec(["sh", "-c", "echo kept > /var/tmp/shared-probe"])
    before = amber_status(vm)["booted"]

    vm.exec(["amber", "pkg", "install", f"/root/{deb.name}"], timeout=600)
    status = amber_status(vm)
    new = status["default"]
    assert new > before and status["booted"] == before and status["reboot_needed"] is True
    assert not package_installed(vm), "the running system must not change before the reboot"

    vm.reboot()
    status = amber_status(vm)
    assert (status["booted"], status["default"], status["reboot_needed"]) == (new, new, False)
    assert root_subvolume(vm) == snapshot_path(new)
    assert package_installed(vm)
    assert vm.exec(["cat", PACKAGE_FILE]).out == "hello from a transaction\n"
    assert vm.exec(["cat", "/var/tmp/shared-probe"]).out == "kept\n", "/var is shared"

    vm.exec(["amber", "rollback", str(before)])
    status = amber_status(vm)
    assert (status["booted"], status["default"], status["reboot_needed"]) == (new, before, True)

    vm.reboot()
    status = amber_status(vm)
    assert (status["booted"], status["default"], status["reboot_needed"]) == (before, before,
                                                                              False)
    assert root_subvolume(vm) == snapshot_path(before)
    assert not package_installed(vm)
    assert vm.exec(["test", "-e", PACKAGE_FILE], check=False).code == 1


def wait_in_progress(vm: VM, timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = amber_status(vm)["in_progress"]
        if running:
            return int(running[0])
        time.sleep(1)
    log = vm.exec(["cat", "/var/tmp/amber-run.log"], check=False).out
    raise AssertionError(f"amber run did not start a transaction: {log}")


def test_power_cut_during_transaction(vm: VM) -> None:
    before = amber_status(vm)
    assert before["booted"] == before["default"]
    vm.exec(["sh", "-c", "amber run -- sleep 60 > /var/tmp/amber-run.log 2>&1 &"])
    unfinished = wait_in_progress(vm)
    assert unfinished != before["default"]
    # The snapshot exists on disk when the power goes; what the guest had not written is lost.
    vm.exec(["sync"])

    vm.powercut()
    assert root_subvolume(vm) == snapshot_path(before["default"])
    assert vm.exec(["test", "-d", f"/.snapshots/{unfinished}/snapshot"], check=False).code == 0

    status = amber_status(vm)  # reports the interrupted transaction, deletes nothing
    assert (status["booted"], status["default"]) == (before["default"], before["default"])
    assert status["in_progress"] == [] and status["reboot_needed"] is False
    assert status["interrupted"] == [unfinished]
    assert vm.exec(["test", "-d", f"/.snapshots/{unfinished}/snapshot"], check=False).code == 0
    removed = json.loads(vm.exec(["amber", "cleanup", "--keep", "1000", "--json"]).out)
    assert removed == {"removed": [unfinished]}  # the next write command removes it
    assert vm.exec(["test", "-e", f"/.snapshots/{unfinished}"], check=False).code == 1

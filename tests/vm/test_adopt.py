"""`amber init` on a running Debian laid out as Debian's installer lays out btrfs (@rootfs, /boot
inside, /var and /home plain directories, GRUB in EFI/debian on the ESP), in qemu through UEFI:
one command and one reboot make it an amber system, data written between the two is kept, the
menu boots the system before amber once, and `amber init --undo` gives the old system back.

One VM for the whole module: each step is a boot under TCG."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from testing.installer_vm import installer_vm_disk
from testing.vm import VM, Firmware, default_state
from tests.vm.conftest import amber_status, vm_prerequisites

pytestmark = pytest.mark.vm

OLD_ROOT = "[/@rootfs]"
SNAPSHOT_1 = "[/@/.snapshots/1/snapshot]"


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VM]:
    vm_prerequisites()
    vm = VM(state=tmp_path_factory.mktemp("vm"), cache=default_state() / "cache")
    vm.start(Firmware.UEFI, image=installer_vm_disk(vm))
    try:
        yield vm
    finally:
        vm.stop()


def root_mount(vm: VM) -> tuple[str, str]:
    """The booted root's source (device[subvolume]) and mount options."""
    source, options = vm.exec(["findmnt", "-no", "SOURCE,OPTIONS", "/"]).out.split()
    return source, options


def sh(vm: VM, script: str) -> str:
    return vm.exec(["sh", "-c", script]).out


def init_json(vm: VM, *args: str) -> dict[str, Any]:
    return dict(json.loads(vm.exec(["amber", "init", *args, "--json"], timeout=600).out))


def test_one_command_and_one_reboot(machine: VM) -> None:
    vm = machine
    source, options = root_mount(vm)
    assert source.endswith(OLD_ROOT) and "rw" in options.split(",")
    sh(vm, "mkdir -p /var/lib/adopt-vm /home/alice && echo before > /var/lib/adopt-vm/before "
           "&& echo notes > /home/alice/notes")
    check = init_json(vm, "--check")
    assert check["subvolume"] == "@rootfs" and check["esp"] == "/boot/efi"
    plan = vm.exec(["amber", "init", "--check"]).out
    assert "switch            at the next boot" in plan
    done = vm.exec(["amber", "init"], timeout=600)
    assert "the next boot starts snapshot 1" in done.err
    # The running system is not disturbed, and goes on writing until the reboot.
    assert root_mount(vm)[0].endswith(OLD_ROOT)
    sh(vm, "echo after > /var/lib/adopt-vm/after-init && rm /var/lib/adopt-vm/before && "
           "echo 'notes, edited' > /home/alice/notes && sync")

    vm.reboot()
    source, options = root_mount(vm)
    assert source.endswith(SNAPSHOT_1) and "ro" in options.split(",")
    assert sh(vm, "cat /var/lib/adopt-vm/after-init") == "after\n"
    assert sh(vm, "test -e /var/lib/adopt-vm/before || echo gone") == "gone\n"
    assert sh(vm, "cat /home/alice/notes") == "notes, edited\n"
    assert sh(vm, "systemctl show -p Result --value amber-adopt-switch") == "success\n"
    assert init_json(vm, "--switch")["done_before"] is True
    assert sh(vm, "touch /etc/adopted-edit && echo ok") == "ok\n"  # /etc writable
    status = amber_status(vm)
    assert (status["booted"], status["default"]) == (1, 1)
    vm.exec(["amber", "run", "--", "touch", "/etc/adopted-by-transaction"], timeout=600)
    assert amber_status(vm)["default"] == 2


def test_the_system_before_amber_boots_once_then_undo(machine: VM) -> None:
    vm = machine
    vm.exec(["amber", "boot-once", "before-amber"])
    vm.reboot()
    assert root_mount(vm)[0].endswith(OLD_ROOT)
    # The old root as the old system left it at the reboot.
    assert sh(vm, "cat /var/lib/adopt-vm/after-init") == "after\n"
    assert sh(vm, "test -e /.snapshots/1 || echo no-store") == "no-store\n"
    # boot-once: the next boot is amber's default again.
    vm.reboot()
    assert root_mount(vm)[0].endswith("[/@/.snapshots/2/snapshot]")

    vm.exec(["amber", "init", "--undo"], timeout=600)
    assert "prefix=($root)'/@rootfs/boot/grub'" in sh(vm, "cat /boot/efi/EFI/debian/grub.cfg")
    vm.reboot()
    source, options = root_mount(vm)
    assert source.endswith(OLD_ROOT) and "rw" in options.split(",")

"""VM test fixtures: a booted test VM per module (each boot costs tens of seconds under TCG, so
the tests of a module share one), in a state folder of its own, with the shared image cache."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testing.vm import VM, Firmware, default_state
from tests.conftest import require


def vm_prerequisites() -> None:
    require(os.geteuid() == 0, "VM tests need root (the image is built on a loop device)")
    require(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86_64 is missing")
    require(shutil.which("mmdebstrap") is not None, "mmdebstrap is missing")
    require(Path("/dev/loop-control").exists(), "VM tests need loop devices")
    require(shutil.which("grub-mkimage") is not None and shutil.which("sgdisk") is not None,
            "the image's disk needs grub-common, grub-efi-amd64-bin, grub-pc-bin, gdisk, "
            "dosfstools and mtools")


def booted_vm(tmp_path_factory: pytest.TempPathFactory,
              firmware: Firmware = Firmware.UEFI) -> Iterator[VM]:
    """A VM booted through firmware and the image's GRUB (UEFI unless told otherwise)."""
    vm_prerequisites()
    machine = VM(state=tmp_path_factory.mktemp("vm"), cache=default_state() / "cache")
    machine.start(firmware)
    try:
        yield machine
    finally:
        machine.stop()


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VM]:
    yield from booted_vm(tmp_path_factory)


def boot_with_kernel_args(vm: VM, args: str) -> None:
    """Add args to the kernel command line in a transaction, then reboot into it: each
    snapshot's menu entry takes that snapshot's own /etc/kernel/cmdline."""
    script = f'echo "$(cat /etc/kernel/cmdline) {args}" > /etc/kernel/cmdline.new && ' \
             "mv /etc/kernel/cmdline.new /etc/kernel/cmdline"
    vm.exec(["amber", "run", "--", "sh", "-c", script], timeout=600)
    vm.reboot()
    assert args in vm.exec(["cat", "/proc/cmdline"]).out.split()


def amber_status(vm: VM) -> dict[str, Any]:
    return dict(json.loads(vm.exec(["amber", "status", "--json"]).out))

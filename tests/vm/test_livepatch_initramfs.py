"""Live patch apply on a system whose initrd generator is initramfs-tools, Debian's default, on
the real kernel in the test VM: the patch appended to the initramfs-tools initrd (no
regeneration) loads from it at boot, before the real root's userspace, and /etc is writable
through amber's initramfs-tools hook.

The test image has dracut; a transaction swaps it for initramfs-tools (the .debs the image lacks
are downloaded on the host, with apt, against the guest's own package list: the guest has no
network), and update-initramfs makes the new snapshot's initrd."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from amber.boot import initrd, initrd_overlay
from testing.livepatch_packages import build_livepatch_rpm
from testing.modules import build
from testing.vm import VM
from tests.vm.conftest import amber_status, booted_vm

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 1200  # dpkg and update-initramfs under TCG

pytestmark = pytest.mark.vm


def initramfs_tools_debs(vm: VM, folder: Path) -> list[Path]:
    """initramfs-tools and what the guest lacks for it, as apt on the host resolves them
    against the guest's dpkg status."""
    status = folder / "status"
    vm.get("/var/lib/dpkg/status", status)
    archives = folder / "archives"
    (archives / "partial").mkdir(parents=True)
    subprocess.run(["apt-get", "install", "--download-only", "--yes", "--no-install-recommends",
                    "-o", f"Dir::State::status={status}", "-o", f"Dir::Cache::archives={archives}",
                    "-o", "Debug::NoLocking=1", "initramfs-tools"],
                   check=True, capture_output=True)
    return sorted(archives.glob("*.deb"))


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VM]:
    for machine in booted_vm(tmp_path_factory):
        local = tmp_path_factory.mktemp("initramfs-tools")
        debs = initramfs_tools_debs(machine, local)
        assert any(d.name.startswith("initramfs-tools_") for d in debs), debs
        for deb in debs:
            machine.put(deb, f"/root/{deb.name}")
        machine.exec(["amber", "pkg", "install", *[f"/root/{d.name}" for d in debs]],
                     timeout=TIMEOUT)
        machine.reboot()
        yield machine


def guest_initrd(vm: VM, snapshot: int, folder: Path) -> Path:
    release = vm.kernel_release()
    local = folder / f"initrd-{snapshot}.img"
    vm.get(f"/.snapshots/{snapshot}/snapshot/boot/initrd.img-{release}", local)
    return local


def test_the_patch_appended_to_an_initramfs_tools_initrd_loads_at_boot(
        vm: VM, tmp_path: Path) -> None:
    status = amber_status(vm)
    booted = status["booted"]
    assert booted == status["default"] == 2
    # dracut-core (the dracut command) stays; the dracut package, which hooks kernels, is gone.
    installed = vm.exec(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\n",
                         "dracut", "initramfs-tools"], check=False).out.splitlines()
    assert sorted(installed) == ["dracut config-files", "initramfs-tools installed"], installed
    before = guest_initrd(vm, booted, tmp_path)
    listing = initrd.list_initrd(before)
    assert listing is not None and "conf/initramfs.conf" in listing  # initramfs-tools made it
    assert "conf/modules" not in listing  # nothing to load early yet
    assert "scripts/local-bottom/amber-etc" in listing
    vm.exec(["touch", "/etc/written-on-initramfs-tools"])  # /etc writable (amber's hook)

    release = vm.kernel_release()
    built = build.build_modules(release, REPO / ".cache" / "modules")
    vm.put(build_livepatch_rpm(tmp_path, release, built["amber_lp_v1"], "1"), "/root/v1.rpm")
    vm.exec(["amber", "livepatch", "enable"])
    outcome = json.loads(vm.exec(["amber", "livepatch", "apply", "/root/v1.rpm", "--json"],
                                 timeout=TIMEOUT).out)
    assert (outcome["snapshot"], outcome["active"], outcome["initrd"]) == (3, True, "appended")
    after = guest_initrd(vm, 3, tmp_path)
    assert after.read_bytes().startswith(before.read_bytes())
    files = {m.name: bytes(m.data) for m in initrd_overlay.all_members(after)}
    assert files["conf/modules"].decode().splitlines()[-1] == "amber_lp_v1"
    view = json.loads(vm.exec(["amber", "livepatch", "status", "--json"]).out)["view"]["patches"]
    assert [(p["name"], p["next_boot"], p["in_initrd"]) for p in view] == [
        ("amber_lp_v1", True, True)]

    vm.reboot()
    assert vm.exec(["cat", "/proc/cmdline"]).out.split()[-1] == "amber-livepatch-v1"
    kernel_log = vm.exec(["dmesg"]).out.splitlines()
    enabled = next(i for i, line in enumerate(kernel_log)
                   if "livepatch: enabling patch 'amber_lp_v1'" in line)
    # initramfs-tools' init is no systemd: the first "system mode" line is the real root's.
    real_root = next(i for i, line in enumerate(kernel_log) if "running in system mode" in line)
    assert enabled < real_root, "\n".join(kernel_log[enabled - 5:real_root + 1])
    assert amber_status(vm)["booted"] == 3

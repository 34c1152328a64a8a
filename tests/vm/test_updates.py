"""Unattended updates on the real Debian kernel in the test VM (issue 13): live patches arrive as
packages from a repository (a flat apt repository in the guest's shared /srv), `amber livepatch
update` and the update timer's own service (`amber up`, then `amber reboot --if-needed`) load
them at once with no reboot, and an ordinary package update makes the service reboot the machine
through firmware into the new snapshot, where the patch is still loaded (from the initrd).

One VM for the module, the tests in order (each starts from the previous one's end)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.livepatch_packages import build_livepatch_deb
from testing.modules import build
from testing.packages import build_deb, write_apt_index
from testing.vm import VM
from tests.vm.conftest import amber_status, booted_vm

pytestmark = pytest.mark.vm
REPO = Path(__file__).resolve().parents[2]
REMOTE_REPOSITORY = "/srv/repository"
TIMEOUT = 1200  # a transaction that regenerates the initrd, under TCG
TOOL = "amber-test-tool"


class Repository:
    """A flat apt repository built here and mirrored into the guest's shared /srv."""

    def __init__(self, vm: VM, local: Path, release: str):
        self.vm, self.local, self.release = vm, local, release
        self.modules = build.build_modules(release, REPO / ".cache" / "modules")
        vm.exec(["mkdir", "-p", REMOTE_REPOSITORY])

    def publish_livepatch(self, module: str, version: str) -> None:
        build_livepatch_deb(self.local, self.release, self.modules[module], version)
        self._sync()

    def publish_tool(self, version: str) -> None:
        build_deb(self.local, TOOL, version, {"/usr/share/amber-test-tool/version": version})
        self._sync()

    def _sync(self) -> None:
        write_apt_index(self.local)
        for path in sorted(self.local.glob("*.deb")):
            self.vm.put(path, f"{REMOTE_REPOSITORY}/{path.name}")
        index = self.local / "Packages"
        self.vm.put(index, f"{REMOTE_REPOSITORY}/Packages")
        # apt's file: method compares the index's time stamp: keep the one made here.
        self.vm.exec(["touch", "-d", f"@{index.stat().st_mtime}",
                      f"{REMOTE_REPOSITORY}/Packages"])


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VM]:
    yield from booted_vm(tmp_path_factory)


@pytest.fixture(scope="module")
def repository(vm: VM, tmp_path_factory: pytest.TempPathFactory) -> Repository:
    return Repository(vm, tmp_path_factory.mktemp("repository"), vm.kernel_release())


def livepatches(vm: VM) -> list[str]:
    return sorted(vm.exec(["ls", "/sys/kernel/livepatch"]).out.split())


def test_setup_a_repository_then_boot_it(vm: VM, repository: Repository) -> None:
    """apt points at the repository only; the test tool is installed from it (so `amber up`
    has something to upgrade later); live patching on; reboot into that snapshot."""
    vm.exec(["systemctl", "is-system-running", "--wait"], check=False, timeout=600)
    repository.publish_tool("1.0")
    sources = ("rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*; echo 'deb [trusted=yes] "
               f"file:{REMOTE_REPOSITORY} ./' > /etc/apt/sources.list.d/amber-test.list && "
               f"apt-get update && apt-get install -y {TOOL}")
    vm.exec(["amber", "run", "--", "sh", "-c", sources], timeout=TIMEOUT)
    vm.exec(["amber", "livepatch", "enable"])
    vm.reboot()
    st = amber_status(vm)
    assert st["booted"] == st["default"] and not st["reboot"]["needed"]


def test_livepatch_update_installs_the_newest_and_loads_it(vm: VM,
                                                           repository: Repository) -> None:
    before = amber_status(vm)
    boot = vm.boot_id()
    repository.publish_livepatch("amber_lp_v1", "1")
    vm.exec(["amber", "livepatch", "update"], timeout=TIMEOUT)
    assert livepatches(vm) == ["amber_lp_v1"]
    st = amber_status(vm)
    assert st["default"] == before["default"] + 1 and st["booted"] == before["booted"]
    assert st["reboot"]["needed"] is False  # the only change is a patch that is active now
    again = vm.exec(["amber", "livepatch", "update"], timeout=TIMEOUT)
    assert "already current" in again.err + again.out
    assert amber_status(vm)["default"] == st["default"]  # no snapshot for nothing
    assert vm.boot_id() == boot


def test_the_timer_service_patches_live_without_a_reboot(vm: VM,
                                                         repository: Repository) -> None:
    before = amber_status(vm)
    boot = vm.boot_id()
    repository.publish_livepatch("amber_lp_v2", "2")  # cumulative: replaces v1
    vm.exec(["systemctl", "start", "amber-update.service"], timeout=TIMEOUT)
    assert livepatches(vm) == ["amber_lp_v2"]
    st = amber_status(vm)
    assert st["default"] == before["default"] + 1 and st["reboot"]["needed"] is False
    journal = vm.exec(["journalctl", "-b", "-u", "amber-update.service", "-o", "cat"]).out
    assert "no reboot needed" in journal, journal
    assert vm.boot_id() == boot

    nothing = amber_status(vm)
    vm.exec(["systemctl", "start", "amber-update.service"], timeout=TIMEOUT)
    assert amber_status(vm)["default"] == nothing["default"]  # nothing new: no snapshot kept
    assert vm.boot_id() == boot


def test_an_ordinary_update_reboots_into_the_new_snapshot(vm: VM,
                                                          repository: Repository) -> None:
    before = amber_status(vm)
    boot = vm.boot_id()
    repository.publish_tool("2.0")
    vm.exec(["systemctl", "start", "--no-block", "amber-update.service"])
    vm.wait_reboot(boot)
    deadline = time.monotonic() + 120
    st = amber_status(vm)
    while st["booted"] != st["default"] and time.monotonic() < deadline:
        time.sleep(3)
        st = amber_status(vm)
    assert st["booted"] == st["default"] == before["default"] + 1
    assert vm.exec(["cat", "/usr/share/amber-test-tool/version"]).out == "2.0"
    assert livepatches(vm) == ["amber_lp_v2"]  # loaded from the new snapshot's initrd
    assert st["reboot"]["needed"] is False

"""The amber.system collection over SSH against the test VM (issue 14): the rollout playbook
installs a package in a new snapshot, reboots the machine with ansible.builtin.reboot (through
firmware and GRUB), and checks that the host booted that snapshot and that it is healthy; then
an update that carries a failing health check: the trial boot fails, the machine rolls itself
back, and the host fails the play.

ansible-core runs here and reaches the guest's sshd through the harness's forward on
127.0.0.1, as root with the test image's client key. One VM for the module, in order."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.packages import build_deb
from testing.vm import VM
from tests.conftest import require
from tests.vm.conftest import amber_status, booted_vm

pytestmark = pytest.mark.vm
REPO = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO / "ansible"
FAILING_CHECK = "#!/bin/sh\necho the fleet service is down\nexit 1\n"


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VM]:
    require(shutil.which("ansible-playbook") is not None,
            "needs ansible-core (pip install .[test])")
    yield from booted_vm(tmp_path_factory)


def rollout(vm: VM, tmp_path: Path, package: str) -> subprocess.CompletedProcess[str]:
    """ansible-playbook amber.system.rollout against the VM, installing `package` (a .deb in the
    guest)."""
    key = vm.ssh_keys().client
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(
        "[amber]\n"
        f"guest ansible_host=127.0.0.1 ansible_port={vm.ssh_port()} ansible_user=root "
        f"ansible_ssh_private_key_file={key} ansible_python_interpreter=/usr/bin/python3 "
        "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'\n")
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
           "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-local"),
           "ANSIBLE_HOME": str(tmp_path / "ansible-home")}
    return subprocess.run(
        ["ansible-playbook", "-i", str(inventory), "amber.system.rollout",
         "-e", "amber_rollout_update=false", "-e", "amber_become=false",
         "-e", json.dumps({"amber_rollout_packages": [package]})],
        capture_output=True, text=True, env=env, timeout=3600)


def put_package(vm: VM, tmp_path: Path, name: str, files: dict[str, str],
                postinst: str | None = None) -> str:
    deb = build_deb(tmp_path, name, "1.0", files, postinst=postinst)
    remote = f"/root/{deb.name}"
    vm.put(deb, remote)
    return remote


def test_rollout_installs_reboots_and_verifies(vm: VM, tmp_path: Path) -> None:
    vm.exec(["systemctl", "is-system-running", "--wait"], check=False, timeout=600)
    before = amber_status(vm)
    boot = vm.boot_id()
    package = put_package(vm, tmp_path, "amber-test-fleet",
                          {"/usr/share/amber-test-fleet/hello": "rolled out\n"})
    result = rollout(vm, tmp_path, package)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "failed=0" in result.stdout and "unreachable=0" in result.stdout
    st = amber_status(vm)
    assert vm.boot_id() != boot  # ansible.builtin.reboot rebooted it
    assert st["booted"] == st["default"] == before["default"] + 1
    assert st["health"] == "good"
    assert vm.exec(["cat", "/usr/share/amber-test-fleet/hello"]).out == "rolled out\n"


def test_an_update_whose_health_check_fails_fails_the_host(vm: VM, tmp_path: Path) -> None:
    good = amber_status(vm)["booted"]
    package = put_package(vm, tmp_path, "amber-test-fleet-bad",
                          {"/usr/lib/amber/health.d/50-fleet-service": FAILING_CHECK},
                          postinst="chmod 755 /usr/lib/amber/health.d/50-fleet-service")
    result = rollout(vm, tmp_path, package)
    assert result.returncode != 0, result.stdout[-4000:]
    assert "failed=1" in result.stdout, result.stdout[-4000:]
    assert f"not {good + 1}" in result.stdout, result.stdout[-4000:]  # the assert's message
    deadline = time.monotonic() + 600
    st = amber_status(vm)
    while time.monotonic() < deadline and not (st["booted"] == st["default"] == good):
        time.sleep(5)
        st = amber_status(vm)
    assert st["booted"] == st["default"] == good
    assert st["last_rollback"]["from"] == good + 1
    assert st["last_rollback"]["reason"] == "health-check"

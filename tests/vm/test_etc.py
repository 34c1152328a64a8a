"""/etc in a booted VM (issue 11): writable without a transaction, the first-boot merge in the
initrd after a power cut, a conflict, and a rollback. One boot sequence shared by the steps (each
boot costs about a minute under TCG)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.vm import VM, default_state
from tests.vm.conftest import amber_status, vm_prerequisites

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def etc_vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VM]:
    vm_prerequisites()
    # The shared cache, as the other VM tests use it, or one of its own when asked: building an
    # image clears the other images from its cache (another checkout's, for one).
    cache = os.environ.get("AMBER_ETC_VM_CACHE")
    machine = VM(state=tmp_path_factory.mktemp("vm"),
                 cache=Path(cache) if cache else default_state() / "cache")
    machine.start()
    try:
        yield machine
    finally:
        machine.stop()


def sh(vm: VM, script: str) -> str:
    return vm.exec(["sh", "-c", script], timeout=600).out


def users(vm: VM) -> set[str]:
    return {line.split(":")[0] for line in sh(vm, "cat /etc/passwd").splitlines()}


def test_etc_edits_survive_an_update_and_a_power_cut(etc_vm: VM) -> None:
    # Both users without subordinate ids: two useradds on two sides allocate the same
    # subuid/subgid range, which the merge rightly reports as a conflict (records.py).
    vm = etc_vm
    assert sh(vm, "findmnt -no OPTIONS /etc").split(",")[0] == "rw"
    sh(vm, "mkdir -p /etc/motd.d && echo x > /etc/motd.d/admin")  # no transaction
    sh(vm, "printf 'a = 1\\nb = 2\\nc = 3\\nd = 4\\ne = 5\\n' > /etc/foo.conf && "
           "echo 'bar = old' > /etc/bar.conf && sync")
    before = amber_status(vm)["booted"]

    sh(vm, "amber run -- sh -c \"sed -i 's/^a = 1/a = package/' /etc/foo.conf && "
           "useradd -M -K SUB_UID_COUNT=0 -K SUB_GID_COUNT=0 -u 2001 alice\"")
    new = amber_status(vm)["default"]
    assert new != before
    sh(vm, "sed -i 's/^e = 5/e = admin/' /etc/foo.conf && echo 'bar = admin' > /etc/bar.conf "
           "&& useradd -M -K SUB_UID_COUNT=0 -K SUB_GID_COUNT=0 -u 2002 bob && sync")
    vm.powercut()

    status = amber_status(vm)
    assert status["booted"] == new and status["etc_conflicts"] == []
    assert sh(vm, "cat /etc/foo.conf") == "a = package\nb = 2\nc = 3\nd = 4\ne = admin\n"
    assert sh(vm, "cat /etc/bar.conf") == "bar = admin\n"
    assert {"alice", "bob"} <= users(vm)
    assert sh(vm, "cat /etc/motd.d/admin") == "x\n"
    assert sh(vm, "test -e /etc/etc.syncpoint || echo gone") == "gone\n"
    assert sh(vm, "findmnt -no OPTIONS /etc").split(",")[0] == "rw"

    # a real conflict: the update and the admin change the same line
    sh(vm, "amber run -- sed -i 's/^c = 3/c = package/' /etc/foo.conf")
    sh(vm, "sed -i 's/^c = 3/c = admin/' /etc/foo.conf && sync")
    vm.reboot()
    status = amber_status(vm)
    assert status["etc_conflicts"] == ["foo.conf"]
    assert "c = admin" in sh(vm, "cat /etc/foo.conf")
    listed = json.loads(sh(vm, "amber etc conflicts --json"))["conflicts"]
    assert "c = package" in sh(vm, f"cat {listed[0]['new']}")

    # rollback: the old snapshot's own /etc (the admin edited it before and after the fork)
    vm.exec(["amber", "rollback", str(before)])
    vm.reboot()
    assert amber_status(vm)["booted"] == before
    assert sh(vm, "cat /etc/foo.conf") == "a = 1\nb = 2\nc = 3\nd = 4\ne = admin\n"
    assert "alice" not in users(vm) and "bob" in users(vm)
    assert sh(vm, "cat /etc/motd.d/admin") == "x\n"

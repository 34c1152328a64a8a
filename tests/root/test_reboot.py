"""`amber reboot` and `amber status`'s "reboot" key on a real btrfs root, with the notify
method (which writes /run/reboot-required for real) and the loopback FleetLock server."""

from __future__ import annotations

import json
import subprocess

import pytest

from testing import rootfs
from testing.fleetlock_server import FleetLockServer, Mode
from tests.root.conftest import System
from tests.root.helpers import amber, status

pytestmark = pytest.mark.root

MACHINE_ID = "0123456789abcdef0123456789abcdef"


def boot(system: System) -> None:
    """'Reboot': the default snapshot becomes the root, with a tmpfs on /run as at boot."""
    rootfs.unmount_all(system.mounts)
    system.mounts = rootfs.mount_root(system.device, system.root)
    run = system.root / "run"
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(run)], check=True)
    system.mounts.append(run)


def configure(system: System, reboot_section: str) -> None:
    """amber.conf through a transaction, then 'reboot' into it; then one more transaction, so
    that a reboot is needed."""
    amber(system.root, "run", "--", "sh", "-c",
          f"mkdir -p /etc/amber && printf '%s\\n' '[reboot]' {reboot_section} "
          f"> /etc/amber/amber.conf && echo {MACHINE_ID} > /etc/machine-id")
    boot(system)
    assert status(system.root)["reboot"]["needed"] is False
    amber(system.root, "run", "--", "touch", "/etc/amber-pending")


def reboot_required(system: System) -> bool:
    return (system.root / "run/reboot-required").exists()


def test_notify_inside_an_always_open_window(system: System) -> None:
    configure(system, "'method = \"notify\"' 'window = \"*\"'")
    st = status(system.root)
    assert st["reboot"]["needed"] is True and "snapshot 3 is the default" in \
        st["reboot"]["reason"]
    assert st["reboot"]["window_next"] is not None
    result = amber(system.root, "reboot", "--if-needed")
    assert "wrote /run/reboot-required" in result.stderr
    assert reboot_required(system)


def test_outside_the_window_no_wait_says_when(system: System) -> None:
    # A window that is never now: the minute two hours from now.
    import datetime

    start = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=2)
    end = start + datetime.timedelta(minutes=1)
    window = f"{start:%H:%M}-{end:%H:%M} UTC"
    configure(system, f"'method = \"notify\"' 'window = \"{window}\"'")
    result = amber(system.root, "reboot", "--if-needed", "--no-wait", "--json")
    decision = json.loads(result.stdout)
    assert decision["action"] == "skip"
    assert decision["window_next"] == f"{start:%Y-%m-%dT%H:%M}:00+00:00"
    assert "outside the maintenance window" in result.stderr
    assert not reboot_required(system)


def test_nothing_needed_does_nothing(system: System) -> None:
    amber(system.root, "run", "--", "true")
    boot(system)
    result = amber(system.root, "reboot", "--if-needed")
    assert "no reboot needed" in result.stderr and not reboot_required(system)


def test_fleetlock_slot_then_release_and_server_down(system: System) -> None:
    with FleetLockServer(slots=1) as server:
        configure(system, f"'method = \"notify\"' 'strategy = \"fleetlock\"' "
                          f"'fleetlock_url = \"{server.url}\"'")
        server.mode = Mode.DOWN
        result = amber(system.root, "reboot", "--if-needed", check=False)
        assert result.returncode != 0 and "hint:" in result.stderr
        assert not reboot_required(system) and server.holders() == frozenset()
        server.mode = Mode.NORMAL
        amber(system.root, "reboot", "--if-needed")
        assert reboot_required(system) and len(server.holders()) == 1
        # The update failed its trial boot and the machine rolled back: the slot stays taken,
        # which halts the rollout, until an operator looks.
        from amber.health import verdicts
        from amber.snapshots import Store

        store = Store(system.root)
        booted = store.booted()
        assert booted is not None
        verdicts.save(store, verdicts.Record(last_rollback=verdicts.Rollback(
            booted + 1, booted, verdicts.Reason.HEALTH_CHECK, "now", "50-web: down")))
        held = amber(system.root, "reboot", "--steady-state")
        assert "keeping this node's reboot slot" in held.stderr and len(server.holders()) == 1
        amber(system.root, "reboot", "--steady-state", "--force")
        assert server.holders() == frozenset()

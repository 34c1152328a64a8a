"""Trial boots on a real btrfs root, with the boots played by remounting: a new default is on
trial (GRUB's counters in a real environment block, the menu's trial logic checked by GRUB's
script checker), and each way a trial ends — healthy, a failing check, tries used up (GRUB
fell back), no verdict in time — leaves the verdicts, the default and the menu right."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from amber.boot import grubenv
from testing import rootfs
from tests.root.conftest import System
from tests.root.helpers import amber, amber_json, status

pytestmark = pytest.mark.root

RELEASE = "6.1.0-99-amd64"
CONFIG = '[health]\\nenabled = true\\n[boot]\\nesp = "/var/esp"\\n'
SETUP = (
    f"mkdir -p /boot /usr/lib/modules/{RELEASE} /etc/kernel /etc/amber/health.d && "
    f"echo kernel > /boot/vmlinuz-{RELEASE} && echo initrd > /boot/initrd.img-{RELEASE} && "
    f"ln -sf boot/vmlinuz-{RELEASE} /vmlinuz && "
    "echo 'root=UUID=0ddba11 rootfstype=btrfs ro panic=5' > /etc/kernel/cmdline && "
    f"printf '{CONFIG}' > /etc/amber/amber.conf")
FAILING_CHECK = ("printf '#!/bin/sh\\necho the database is not answering\\nexit 1\\n' "
                 "> /etc/amber/health.d/50-database && chmod +x /etc/amber/health.d/50-database")


def boot(system: System, snapshot: int | None = None) -> None:
    """'Reboot' into the default snapshot (or, as a menu entry does, into `snapshot`), with a
    tmpfs on /run as at boot."""
    rootfs.unmount_all(system.mounts)
    system.mounts = rootfs.mount_root(system.device, system.root, snapshot)
    run = system.root / "run"
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(run)], check=True)
    system.mounts.append(run)


def env(system: System) -> dict[str, str]:
    return grubenv.read(system.root / "var/esp/grub/grubenv")


def set_env(system: System, **values: str) -> None:
    grubenv.update(system.root / "var/esp/grub/grubenv", values)


def health_record(system: System) -> dict[str, object]:
    value = json.loads((system.root / ".snapshots/.amber/health.json").read_text())
    assert isinstance(value, dict)
    return value


def health_of(system: System) -> dict[int, str]:
    return {row["number"]: row["health"] for row in amber_json(system.root, "snapshots")}


@pytest.fixture
def trial(system: System) -> System:
    """Snapshot 2 (good, booted) with health enabled and amber's menu; snapshot 3 on trial."""
    amber(system.root, "run", "-m", "health enabled", "--", "sh", "-c", SETUP)
    (system.root / "var/esp/grub").mkdir(parents=True)
    grubenv.write(system.root / "var/esp/grub/grubenv", {})
    (system.root / ".snapshots/.amber").mkdir()
    (system.root / ".snapshots/.amber/menu.cfg").touch()
    boot(system)
    assert status(system.root)["booted"] == 2
    amber(system.root, "health", "enable")  # into the running /etc: transactions carry them
    return system


def test_without_the_units_there_is_no_trial(trial: System) -> None:
    """Nobody would judge the trial boot, and GRUB would fall back after the tries: amber
    puts no snapshot on trial then, and says why."""
    system = trial
    removed = amber_json(system.root, "health", "disable")["units"]
    assert "amber-health-check.service" in removed
    result = amber(system.root, "run", "--", "true")
    assert "amber's health units are not enabled in it" in result.stderr
    assert "amber health enable" in result.stderr
    assert not (system.root / ".snapshots/.amber/health.json").exists()
    assert "amber_trial" not in env(system)


def test_a_transaction_puts_its_snapshot_on_trial(trial: System) -> None:
    system = trial
    amber(system.root, "run", "-m", "update", "--", "true")
    record = health_record(system)
    assert record["trial"] == {"snapshot": 3, "fallback": 2, "tries": 2,
                               "since": record["trial"]["since"]}  # type: ignore[index]
    assert env(system) == {"amber_trial": "3", "amber_tries": "2"}
    assert health_of(system) == {1: "good", 2: "good", 3: "trial"}
    menu = (system.root / ".snapshots/.amber/menu.cfg").read_text()
    assert 'if [ "${amber_trial}" = "3" ]; then' in menu
    assert "--id amber-fallback" in menu and "rootflags=subvol=@/.snapshots/2/snapshot" in menu
    if shutil.which("grub-script-check"):
        subprocess.run(["grub-script-check", str(system.root / ".snapshots/.amber/menu.cfg")],
                       check=True)


def test_a_healthy_trial_boot_makes_the_snapshot_good(trial: System) -> None:
    system = trial
    amber(system.root, "run", "--", "true")
    set_env(system, amber_tries="1")  # what GRUB's default entry does before the kernel
    boot(system)
    assert amber(system.root, "health", "boot-check").returncode == 0
    assert health_of(system)[3] == "trial"  # until boot-complete.target
    amber(system.root, "health", "boot-complete")
    assert health_of(system)[3] == "good"
    assert env(system) == {}
    assert health_record(system)["trial"] is None
    assert "amber_trial" not in (system.root / ".snapshots/.amber/menu.cfg").read_text()
    assert status(system.root)["last_rollback"] is None


def test_a_failing_check_rolls_back_to_the_last_good_snapshot(trial: System) -> None:
    system = trial
    amber(system.root, "run", "--", "sh", "-c", FAILING_CHECK)
    set_env(system, amber_tries="1")
    boot(system)
    result = amber(system.root, "health", "boot-check", check=False)
    assert result.returncode == 1
    assert "failed its trial boot (health-check" in result.stderr
    assert "not rebooting" in result.stderr  # never the host: --root is not the running system
    st = status(system.root)
    assert st["default"] == 2 and st["health"] == "bad"
    last = st["last_rollback"]
    assert (last["from"], last["to"], last["reason"]) == (3, 2, "health-check")
    assert last["detail"] == "50-database: the database is not answering"
    assert "the database is not answering" in (system.root / last["log"].lstrip("/")).read_text()
    assert env(system) == {}

    boot(system)  # into the fallback: it is healthy, the rollback is settled and announced
    assert amber(system.root, "health", "boot-check").returncode == 0
    assert "snapshot 3 failed its trial boot" in (system.root / "run/motd.d/amber").read_text()
    assert status(system.root)["last_rollback"]["settled"] is True
    assert "last automatic rollback: snapshot 3 → 2" in amber(system.root, "status").stdout

    refused = amber(system.root, "rollback", "3", check=False)
    assert refused.returncode == 6 and "failed its trial boot" in refused.stderr
    assert amber(system.root, "boot-once", "3", check=False).returncode == 6
    amber(system.root, "rollback", "--force", "3")
    assert status(system.root)["default"] == 3
    # The next transaction starts from the booted, good snapshot, not the bad one.
    amber(system.root, "run", "--", "true")
    assert amber_json(system.root, "snapshots")[-1]["userdata"]["base"] == "2"


def test_tries_used_up_grub_fell_back(trial: System) -> None:
    system = trial
    amber(system.root, "run", "--", "true")
    # Two attempts that never reached userspace, then GRUB's fallback entry booted snapshot 2.
    set_env(system, amber_tries="0", amber_fell_back="3")
    boot(system, snapshot=2)
    assert status(system.root)["default"] == 3  # until amber sees what happened
    amber(system.root, "health", "boot-check")
    st = status(system.root)
    assert st["default"] == 2 and st["booted"] == 2
    assert st["last_rollback"]["reason"] == "boot-failed"
    assert health_of(system)[3] == "bad"
    assert env(system) == {}


def test_a_manual_boot_of_another_snapshot_is_no_verdict(trial: System) -> None:
    system = trial
    amber(system.root, "run", "--", "true")
    boot(system, snapshot=1)  # chosen from the menu: GRUB counted nothing
    amber(system.root, "health", "boot-check")
    amber(system.root, "health", "boot-complete")
    assert health_record(system)["trial"]["snapshot"] == 3  # type: ignore[index]
    assert env(system) == {"amber_trial": "3", "amber_tries": "2"}


def test_no_verdict_in_time(trial: System) -> None:
    system = trial
    amber(system.root, "run", "--", "true")
    set_env(system, amber_tries="1")
    boot(system)
    result = amber(system.root, "health", "boot-timeout")
    assert "timeout" in result.stderr
    st = status(system.root)
    assert st["default"] == 2 and st["last_rollback"]["reason"] == "timeout"


def test_health_check_and_mark(trial: System) -> None:
    system = trial
    report = amber(system.root, "health", "check", "--json", check=False)
    checks = {c["name"]: c["passed"] for c in json.loads(report.stdout)["checks"]}
    assert checks["root"] and checks["shared-subvolumes"] and checks["livepatches"]
    amber(system.root, "health", "mark", "bad", "1")
    assert health_of(system)[1] == "bad"
    amber(system.root, "health", "mark", "good", "1")
    assert health_of(system)[1] == "good"

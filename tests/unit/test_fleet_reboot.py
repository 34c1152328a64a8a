"""amber reboot's decision (a pure function), the notify method for real, and FleetLock slots
taken by three machine roots against the loopback FleetLock server (testing.fleetlock_server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from amber import config
from amber.errors import AmberError, ExitCode
from amber.fleet import fleetlock, node_id, reboot, window
from amber.fleet.reboot import Action, decide
from testing.fleetlock_server import FleetLockServer, Mode

SATURDAY_0300 = datetime(2026, 12, 5, 3, 0, tzinfo=UTC)
WEEKEND = window.parse("Sat,Sun 02:00-04:00 UTC")


def test_if_needed_skips_when_nothing_is_pending() -> None:
    d = decide(needed=False, reason="the booted snapshot 2 is the default", if_needed=True,
               no_wait=False, window=WEEKEND, now=SATURDAY_0300)
    assert d.action == Action.SKIP and d.reason.startswith("no reboot needed")


def test_inside_the_window_reboots_until_its_end() -> None:
    d = decide(needed=True, reason="r", if_needed=True, no_wait=False, window=WEEKEND,
               now=SATURDAY_0300)
    assert d.action == Action.REBOOT and d.until == SATURDAY_0300 + timedelta(hours=1)


def test_outside_the_window_waits_or_says_when() -> None:
    friday = SATURDAY_0300 - timedelta(days=1)
    waiting = decide(needed=True, reason="r", if_needed=True, no_wait=False, window=WEEKEND,
                     now=friday)
    assert waiting.action == Action.WAIT and waiting.at == SATURDAY_0300 - timedelta(hours=1)
    told = decide(needed=True, reason="r", if_needed=True, no_wait=True, window=WEEKEND,
                  now=friday)
    assert told.action == Action.SKIP and "2026-12-05T02:00:00+00:00" in told.reason


def test_without_a_window_or_if_needed_it_reboots() -> None:
    assert decide(needed=False, reason="r", if_needed=False, no_wait=True, window=None,
                  now=SATURDAY_0300).action == Action.REBOOT


def test_notify_writes_run_reboot_required(tmp_path: Path) -> None:
    reboot.perform(tmp_path, config.RebootMethod.NOTIFY, "snapshot 3 is the default")
    assert (tmp_path / "run/reboot-required").read_text() == "*** System restart required ***\n"


def test_reboot_as_non_root_exits_8(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(AmberError) as failure:
        reboot.reboot(tmp_path, if_needed=True)
    assert failure.value.code == ExitCode.ENVIRONMENT


def machine(tmp_path: Path, name: str, url: str) -> Path:
    root = tmp_path / name
    (root / "etc/amber").mkdir(parents=True)
    digits = (name.encode().hex() * 16)[:32]
    (root / "etc/machine-id").write_text(digits + "\n")
    (root / "etc/amber/amber.conf").write_text(
        f'[reboot]\nmethod = "notify"\nstrategy = "fleetlock"\nfleetlock_url = "{url}"\n')
    return root


def settings(root: Path) -> config.RebootConfig:
    return config.load(root).reboot


def test_two_slots_three_machines_release_only_by_steady_state(tmp_path: Path) -> None:
    with FleetLockServer(slots=2) as server:
        roots = [machine(tmp_path, n, server.url) for n in ("a", "b", "c")]
        soon = datetime.now(UTC) + timedelta(seconds=1)
        for root in roots[:2]:
            reboot.take_slot(root, settings(root), soon)
        assert server.holders() == {node_id.node_id(r) for r in roots[:2]}
        # The lock is recursive per id: asking again keeps the same slot.
        reboot.take_slot(roots[0], settings(roots[0]), soon)
        with pytest.raises(fleetlock.FleetLockFull):
            reboot.take_slot(roots[2], settings(roots[2]), datetime.now(UTC) + timedelta(seconds=1))
        assert node_id.node_id(roots[2]) not in server.holders()
        # Only steady state gives a slot back; then the third machine gets one.
        assert reboot.steady_state(roots[0]) is True  # what amber-fleetlock-release runs
        reboot.take_slot(roots[2], settings(roots[2]), soon)
        assert server.holders() == {node_id.node_id(r) for r in roots[1:]}


@pytest.mark.parametrize("mode", [Mode.DOWN, Mode.GARBAGE, Mode.NOT_JSON])
def test_a_broken_server_means_no_slot(tmp_path: Path, mode: Mode) -> None:
    with FleetLockServer(slots=2) as server:
        root = machine(tmp_path, "a", server.url)
        server.mode = mode
        with pytest.raises(fleetlock.FleetLockError):
            reboot.take_slot(root, settings(root), datetime.now(UTC) + timedelta(seconds=5))
        assert server.holders() == frozenset()


def test_units_enabled_as_amber_conf_asks(tmp_path: Path) -> None:
    from amber.fleet import units

    assert units.enable(tmp_path) == []
    (tmp_path / "etc/amber").mkdir(parents=True)
    (tmp_path / "etc/amber/amber.conf").write_text(
        '[update]\nenabled = true\nschedule = "Mon..Fri 03:00"\n'
        '[reboot]\nstrategy = "fleetlock"\nfleetlock_url = "http://fleetlock:3333"\n')
    assert units.enable(tmp_path) == [units.TIMER, units.RELEASE]
    wants = tmp_path / "etc/systemd/system/timers.target.wants" / units.TIMER
    assert str(wants.readlink()) == "/usr/lib/systemd/system/amber-update.timer"
    assert "OnCalendar=\nOnCalendar=Mon..Fri 03:00\n" in (tmp_path / units.SCHEDULE_DROP_IN
                                                         ).read_text()
    shipped = Path(__file__).resolve().parents[2] / "src/amber/data/systemd"
    assert {p.name for p in shipped.iterdir()} == {"amber-update.timer", "amber-update.service",
                                                 "amber-adopt-switch.service"}
    release = tmp_path / "etc/systemd/system" / units.RELEASE
    assert "ExecStart=/usr/bin/amber reboot --steady-state" in release.read_text()
    assert (tmp_path / "etc/systemd/system/multi-user.target.wants" / units.RELEASE).resolve(
        strict=False) == Path("/etc/systemd/system") / units.RELEASE
    service = (shipped / "amber-update.service").read_text()
    assert "amber up --continue --drop-if-no-change" in service
    assert "amber reboot --if-needed" in service

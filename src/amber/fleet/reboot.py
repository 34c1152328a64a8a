"""`amber reboot`: decide whether and when this machine reboots, take a fleet slot, and reboot.

    decide     a pure function of: is a reboot needed (amber status), --if-needed, the
               maintenance window ([reboot] window) and the time: reboot now, wait for the
               window, or skip (with the reason and when the window opens)
    slot       with [reboot] strategy = "fleetlock": a FleetLock slot, asked for until the
               window closes; any failure of the server means no reboot
    method     [reboot] method: systemd (systemctl reboot), kexec (load the default snapshot's
               kernel and initrd with the running command line, then systemctl kexec), notify
               (write /run/reboot-required for kured and log a line), none (log only)

After the boot, `amber reboot --steady-state` (amber-fleetlock-release.service, after
boot-complete.target) gives the slot back, so a machine that does not come up healthy keeps
its slot and halts the rollout.
"""

from __future__ import annotations

import enum
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amber import config, log
from amber.config import RebootMethod, RebootStrategy
from amber.log import AmberError, ExitCode, die

if TYPE_CHECKING:
    from amber.fleet.window import Window

REBOOT_REQUIRED = "run/reboot-required"
# Without a window, how long amber asks a full FleetLock semaphore for a slot.
UNBOUNDED_SLOT_WAIT = 3600.0


class Action(enum.StrEnum):
    REBOOT = "reboot"
    WAIT = "wait"  # until `at`, when the window opens
    SKIP = "skip"


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    at: datetime | None = None  # when the window opens next (WAIT, or SKIP outside it)
    until: datetime | None = None  # when the open window closes (REBOOT inside a window)


def decide(*, needed: bool, reason: str, if_needed: bool, no_wait: bool,
           window: Window | None, now: datetime) -> Decision:
    """What `amber reboot` does now."""
    if if_needed and not needed:
        return Decision(Action.SKIP, f"no reboot needed: {reason}")
    if window is None:
        return Decision(Action.REBOOT, reason)
    if window.contains(now):
        return Decision(Action.REBOOT, reason, until=window.current_end(now))
    opens = window.next_start(now)
    if no_wait:
        return Decision(Action.SKIP, f"outside the maintenance window {window}; it opens at "
                        f"{opens.isoformat()}", at=opens)
    return Decision(Action.WAIT, f"outside the maintenance window {window}", at=opens)


# ---- what the status says ---------------------------------------------------------------------

def reboot_reason(booted: int | None, default: int | None, covered: str | None) -> str:
    if default is None or default == booted:
        return f"the booted snapshot {booted} is the default"
    if covered:
        return f"snapshot {default} only adds live patch {covered}, which is active now"
    return f"snapshot {default} is the default, snapshot {booted} is booted"


def window_of(root: Path, settings: config.RebootConfig) -> Window | None:
    if not settings.window:
        return None
    from amber.fleet import window

    return window.parse(settings.window, window.local_zone(root))


def status_json(root: Path, needed: bool, booted: int | None, default: int | None,
                covered: str | None, now: datetime | None = None) -> dict[str, Any]:
    """`amber status --json`'s "reboot": {needed, reason, window_next}."""
    window = window_of(root, config.load(root).reboot)
    now = now or datetime.now(UTC)
    opens = None
    if window is not None:
        opens = (now if window.contains(now) else window.next_start(now)).isoformat()
    return {"needed": needed, "reason": reboot_reason(booted, default, covered),
            "window_next": opens, "livepatch_inactive": inactive_note(root, default)}


def inactive_note(root: Path, default: int | None) -> str | None:
    """Why the default snapshot's live patch package is not active (amber.livepatch.packaged)."""
    from amber.livepatch.packaged import INACTIVE_KEY
    from amber.snapshots import Store

    if default is None:
        return None
    try:
        return Store(root).get(default).userdata.get(INACTIVE_KEY)
    except AmberError:
        return None


# ---- doing it ---------------------------------------------------------------------------------

def require_root() -> None:
    if os.geteuid() != 0:
        die("amber reboot must run as root", hint="sudo amber reboot ...",
            code=ExitCode.ENVIRONMENT)


def fleet_lock(root: Path, settings: config.RebootConfig) -> Any:
    from amber.fleet import fleetlock, node_id

    return fleetlock.FleetLock(settings.fleetlock_url, settings.group, node_id.node_id(root))


def take_slot(root: Path, settings: config.RebootConfig, until: datetime | None) -> None:
    """A FleetLock slot, asked for until the window closes; raises (no reboot) otherwise."""
    lock = fleet_lock(root, settings)
    seconds = ((until - datetime.now(UTC)).total_seconds() if until is not None
               else UNBOUNDED_SLOT_WAIT)
    log.step(f"FleetLock: asking {lock.url} for a reboot slot of group '{lock.group}'")
    lock.acquire(time.monotonic() + max(0.0, seconds))
    log.info(f"FleetLock: this node ({lock.node_id}) holds a reboot slot")


def kexec_load(root: Path) -> None:
    from amber.boot import initrd
    from amber.boot.kernels import boot_kernel
    from amber.run import run
    from amber.snapshots import Store

    store = Store(root)
    default = store.default()
    snapshot = store.path(default) if default is not None else root
    release = boot_kernel(snapshot)
    if release is None:
        die(f"snapshot {default} has no kernel to kexec", hint="[reboot] method = \"systemd\"",
            code=ExitCode.ENVIRONMENT)
    kernel = snapshot / "boot" / f"vmlinuz-{release}"
    image = initrd.initrd_path(snapshot, release)
    cmdline = Path("/proc/cmdline").read_text().strip()
    log.step(f"kexec: loading {kernel.name} of snapshot {default}")
    run(["kexec", "-l", str(kernel), f"--initrd={image}", f"--command-line={cmdline}"],
        code=ExitCode.ENVIRONMENT)


def perform(root: Path, method: str, reason: str) -> None:
    from amber.run import run

    if method == RebootMethod.NOTIFY:
        from amber.state import atomic_write

        path = root / REBOOT_REQUIRED
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, "*** System restart required ***\n")
        log.info(f"reboot required ({reason}): wrote /{REBOOT_REQUIRED} for the reboot "
                 "manager")
    elif method == RebootMethod.NONE:
        log.info(f"reboot needed ({reason}); [reboot] method = \"none\": not rebooting")
    elif method == RebootMethod.KEXEC:
        kexec_load(root)
        log.step("rebooting: systemctl kexec")
        run(["systemctl", "kexec"], code=ExitCode.ENVIRONMENT)
    else:
        log.step(f"rebooting ({reason}): systemctl reboot")
        run(["systemctl", "reboot"], code=ExitCode.ENVIRONMENT)


def reboot(root: Path, *, if_needed: bool = False, no_wait: bool = False) -> Decision:
    from amber import system

    require_root()
    settings = config.load(root).reboot
    window = window_of(root, settings)
    while True:
        st = system.status(root)
        decision = decide(needed=st.reboot_needed,
                          reason=reboot_reason(st.booted, st.default, st.covered_by_livepatch),
                          if_needed=if_needed, no_wait=no_wait, window=window,
                          now=datetime.now(UTC))
        if decision.action != Action.WAIT:
            break
        assert decision.at is not None
        log.info(f"{decision.reason}: waiting until {decision.at.isoformat()}")
        time.sleep(max(1.0, (decision.at - datetime.now(UTC)).total_seconds()))
    if decision.action == Action.SKIP:
        log.info(decision.reason)
        return decision
    if settings.strategy == RebootStrategy.FLEETLOCK:
        take_slot(root, settings, decision.until)
    perform(root, settings.method, decision.reason)
    return decision


def held_by_rollback(root: Path) -> str | None:
    """Why the slot stays taken: this boot is the fallback of an update that failed its trial
    boot, so the rollout must stop here (None when it may go on)."""
    from amber.health import verdicts
    from amber.snapshots import Store

    store = Store(root)
    last = verdicts.load(store).last_rollback
    if last is None or last.to != store.booted():
        return None
    return (f"snapshot {last.from_} failed its trial boot ({last.reason}) and this machine "
            f"rolled back to {last.to}")


def steady_state(root: Path, force: bool = False) -> bool:
    """Give back this node's FleetLock slot after a healthy boot; False without FleetLock, or
    while an automatic rollback holds it (unless forced)."""
    require_root()
    settings = config.load(root).reboot
    if settings.strategy != RebootStrategy.FLEETLOCK:
        log.info("no FleetLock strategy configured: no reboot slot to give back")
        return False
    held = None if force else held_by_rollback(root)
    if held:
        log.warn(f"FleetLock: keeping this node's reboot slot, which halts the rollout: {held}",
                 hint="look at 'amber status', then 'amber reboot --steady-state --force'")
        return False
    lock = fleet_lock(root, settings)
    lock.steady_state()
    log.info(f"FleetLock: this node ({lock.node_id}) gave its reboot slot back")
    return True

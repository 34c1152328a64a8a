"""What amber's health units run at boot (amber-health-*.service, written by fleet.units):

    amber health boot-check     before boot-complete.target: record a fallback GRUB chose, run
                                the checks; a failure on a trial boot rolls back and reboots,
                                on the boot of a fallback it stops in the emergency shell
    amber health boot-complete  after boot-complete.target: the trial snapshot is good
    amber health boot-failed    OnFailure of the check unit: a trial boot without a verdict
                                fails (health-check)
    amber health boot-timeout   [health] timeout after boot: a trial boot without a verdict
                                fails (timeout)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from amber import log
from amber.health import checks, trial
from amber.health.verdicts import Reason, load, save

if TYPE_CHECKING:
    from pathlib import Path

    from amber.config import Config
    from amber.health.verdicts import Rollback
    from amber.snapshots import Store


def _context(root: Path) -> tuple[Store, Config]:
    from amber import config
    from amber.snapshots import Store

    store = Store(root)
    store.check()
    return store, config.load(root)


def reboot(root: Path, why: str) -> None:
    from pathlib import Path as P

    if root != P("/"):
        log.info(f"not rebooting: {root} is not the running system ({why})")
        return
    from amber.run import run

    log.step(f"rebooting: {why}")
    run(["systemctl", "reboot"], check=False)


def emergency(root: Path, message: str) -> None:
    """The fallback does not come up healthy either: stop, say so, never loop."""
    log.warn(message, hint="repair it from the emergency shell, or boot another snapshot "
             "from the menu")
    from pathlib import Path as P

    if root != P("/"):
        return
    try:
        with open("/dev/console", "w") as console:
            console.write(f"\n{message}\n")
    except OSError:
        pass
    from amber.run import run

    run(["systemctl", "--no-block", "emergency"], check=False)


def _summary(failed: list[checks.Result]) -> str:
    more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
    return f"{failed[0].name}: {failed[0].summary}{more}"


def _settle(store: Store, rollback: Rollback | None, booted: int | None) -> None:
    if rollback is not None and not rollback.settled and rollback.to == booted:
        record = load(store)
        if record.last_rollback == rollback:
            save(store, record._replace(last_rollback=rollback._replace(settled=True)))


def boot_check(root: Path) -> bool:
    store, settings = _context(root)
    trial.resolve_fallback(store, settings)
    on_trial = trial.trial_boot(store, settings)
    booted = store.booted()
    results = checks.run(store, expected=on_trial, timeout=settings.health.timeout)
    path = checks.keep_output(store, results, f"boot-{booted}")
    for result in results:
        (log.info if result.passed else log.warn)(
            f"health check {result.name}: {'pass' if result.passed else 'FAIL'}: "
            f"{result.summary}")
    failed = trial.failing(results)
    rollback = load(store).last_rollback
    if not failed:
        _settle(store, rollback, booted)
        trial.announce(store)
        return True
    if on_trial is not None:
        trial.fail_trial(store, settings, Reason.HEALTH_CHECK, _summary(failed), path)
        reboot(root, f"snapshot {on_trial} failed its health checks")
        return False
    trial.announce(store)
    if rollback is not None and not rollback.settled and rollback.to == booted:
        emergency(root, f"amber: snapshot {booted}, the fallback after snapshot "
                  f"{rollback.from_} failed its trial, is not healthy either "
                  f"({_summary(failed)}); stopping here instead of rebooting. "
                  f"Output: {path}")
    return False


def boot_complete(root: Path) -> int | None:
    store, settings = _context(root)
    number = trial.pass_trial(store, settings)
    if number is not None:
        log.info(f"snapshot {number} passed its trial boot: it is good")
    return number


def _fail(root: Path, reason: Reason, detail: str) -> bool:
    store, settings = _context(root)
    rollback = trial.fail_trial(store, settings, reason, detail, None)
    if rollback is None:
        return False
    reboot(root, f"snapshot {rollback.from_} failed its trial boot ({reason})")
    return True


def boot_failed(root: Path) -> bool:
    return _fail(root, Reason.HEALTH_CHECK, "amber-health-check.service failed")


def uptime() -> float:
    import time

    return time.clock_gettime(time.CLOCK_BOOTTIME)


def boot_timeout(root: Path, poll: float = 2.0) -> bool:
    """On a trial boot: wait until [health] timeout after power-on, then fail the trial if it
    has no verdict yet. Returns at once on any other boot, and as soon as a verdict is in."""
    import time

    store, settings = _context(root)
    timeout = settings.health.timeout
    while trial.trial_boot(store, settings) is not None:
        if uptime() >= timeout:
            return _fail(root, Reason.TIMEOUT,
                         f"boot-complete.target not reached within {timeout} s")
        time.sleep(min(poll, max(0.1, timeout - uptime())))
    return False

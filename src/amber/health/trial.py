"""Trial boots: a snapshot that a transaction makes the default must come up healthy, or the last
good snapshot boots instead and becomes the default again.

Who counts what:
  GRUB       counts the attempts, before the kernel gets control, in its environment block on
             the ESP (`amber_trial=N`, `amber_tries=K`): the default entry of the menu
             decrements `amber_tries` when it boots the trial snapshot; with none left, the
             menu's default is the fallback entry, which boots the last good snapshot and sets
             `amber_fell_back=N`. If the fallback does not come up either, the next boot finds
             `amber_fell_back` still set and waits at the menu instead of looping.
  amber      at every boot (amber-health-check.service, before boot-complete.target): a
             fallback GRUB chose is recorded (N bad, reason boot-failed) and made the default;
             on a trial boot the checks run: a failure marks N bad (health-check) and reboots
             into the fallback; once boot-complete.target is reached (every unit RequiredBy it
             passed) N is good and the trial ends. A timer catches a trial boot that reaches
             no verdict within [health] timeout (reason timeout). Manual boots of another
             snapshot are not counted: only the default entry decrements.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from amber.boot import grubenv, menu
from amber.errors import AmberError, ExitCode, die
from amber.health.verdicts import Reason, Record, Rollback, Trial, Verdict, load, save

if TYPE_CHECKING:
    from pathlib import Path

    from amber.config import Config
    from amber.health.checks import Result
    from amber.snapshots import Store

TRIAL_VARS = ("amber_trial", "amber_tries", "amber_fell_back")
MOTD = "run/motd.d/amber"
ISSUE = "run/issue.d/amber.issue"


def _now() -> str:
    from amber.snapshots import now_utc

    return now_utc()


def _grubenv_path(store: Store, settings: Config) -> Path | None:
    path = menu.grubenv_path(store, settings.boot)
    return path if path.parent.is_dir() else None


def fallback_for(store: Store, record: Record, new: int) -> int | None:
    """The snapshot that boots if `new` fails its trial: the booted one if it is good (it is
    running, so it boots), else the current trial's fallback, else the newest good one."""
    booted = store.booted()
    candidates = []
    if booted is not None and booted != new and record.verdict(booted) == Verdict.GOOD:
        candidates.append(booted)
    if record.trial is not None and record.trial.fallback is not None:
        candidates.append(record.trial.fallback)
    candidates += [n for n in reversed(store.numbers())
                   if n != new and record.verdict(n) == Verdict.GOOD]
    for number in candidates:
        if number == new or not store.exists(number) or not store.is_read_only(number):
            continue
        try:
            menu.entry(store, store.get(number))
        except menu.Unbootable:
            continue
        return number
    return None


def begin(store: Store, number: int, settings: Config) -> None:
    """Put `number`, about to become the default by a transaction, on trial (before the
    default moves: a crash in between leaves a trial record for a snapshot that is not the
    default, which the menu ignores)."""
    if not settings.health.enabled or not menu.managed(store):
        return
    from amber import log
    from amber.fleet import units

    if not units.health_enabled(store.path(number)):
        log.warn(f"no trial boot for snapshot {number}: amber's health units are not enabled "
                 "in it", hint="amber health enable (then the next transaction's snapshot has "
                 "them)")
        return

    env = _grubenv_path(store, settings)
    if env is None:
        log.warn(f"no trial boot for snapshot {number}: the ESP is not mounted at "
                 f"{settings.boot.esp}", hint="mount it, or set [boot] esp in amber.conf")
        return
    record = load(store)
    fallback = fallback_for(store, record, number)
    if fallback is None:
        log.warn(f"no trial boot for snapshot {number}: no good snapshot to fall back to")
        return
    tries = settings.health.tries
    save(store, _with_trial(record, Trial(number, fallback, tries, _now())))
    grubenv.update(env, {"amber_trial": str(number), "amber_tries": str(tries),
                         "amber_fell_back": None})


def _with_trial(record: Record, trial: Trial) -> Record:
    snapshots = {n: v for n, v in record.snapshots.items() if n != trial.snapshot}
    return Record(snapshots, trial, record.last_rollback)


# ---- at boot ---------------------------------------------------------------------------------

def clear_trial_vars(store: Store, settings: Config) -> None:
    env = _grubenv_path(store, settings)
    if env is not None:
        grubenv.update(env, dict.fromkeys(TRIAL_VARS))


def _variables(store: Store, settings: Config) -> dict[str, str]:
    env = _grubenv_path(store, settings)
    if env is None:
        return {}
    try:
        return grubenv.read(env)
    except AmberError:
        return {}  # a broken block must not stop the boot's verdict


def trial_boot(store: Store, settings: Config, record: Record | None = None) -> int | None:
    """The snapshot on trial, if this boot is its trial boot (GRUB counted it)."""
    record = record or load(store)
    trial = record.trial
    if trial is None or store.booted() != trial.snapshot:
        return None
    if _variables(store, settings).get("amber_trial") != str(trial.snapshot):
        return None
    return trial.snapshot


def roll_back(store: Store, settings: Config, failed: int, to: int, reason: Reason,
              detail: str, log_path: str | None) -> Rollback:
    """Mark `failed` bad and make `to` the default again, with the record of why."""
    from amber import log
    from amber.lock import locked
    from amber.transaction import set_default

    with locked(store, wait=True):
        record = load(store).with_verdict(failed, Verdict.BAD)
        rollback = Rollback(failed, to, reason, _now(), detail, log_path)
        save(store, Record(record.snapshots, None, rollback))
        if store.default() != to:
            set_default(store, to)
        clear_trial_vars(store, settings)
    log.warn(f"snapshot {failed} failed its trial boot ({reason}: {detail}); snapshot {to} "
             "is the default again")
    return rollback


def resolve_fallback(store: Store, settings: Config) -> Rollback | None:
    """If GRUB booted the fallback because the trial used up its tries, record it."""
    record = load(store)
    trial = record.trial
    if trial is None:
        return None
    booted = store.booted()
    fell_back = _variables(store, settings).get("amber_fell_back")
    if booted is None or booted == trial.snapshot or fell_back != str(trial.snapshot):
        return None
    return roll_back(store, settings, trial.snapshot, booted, Reason.BOOT_FAILED,
                     f"{trial.tries} boot attempt(s) did not reach a verdict (a panic, a hang "
                     "or a reset before the health checks)", None)


def pass_trial(store: Store, settings: Config) -> int | None:
    """boot-complete.target was reached on the trial boot: the snapshot is good."""
    from amber.lock import locked

    number = trial_boot(store, settings)
    if number is None:
        return None
    with locked(store, wait=True):
        record = load(store)
        save(store, Record(record.snapshots, None, record.last_rollback))
        clear_trial_vars(store, settings)
        menu.refresh(store, full=True)
    return number


def fail_trial(store: Store, settings: Config, reason: Reason, detail: str,
               log_path: str | None) -> Rollback | None:
    record = load(store)
    number = trial_boot(store, settings, record)
    if number is None or record.trial is None:
        return None
    fallback = record.trial.fallback
    if fallback is None or not store.exists(fallback):
        die(f"snapshot {number} failed its trial ({detail}) and there is no snapshot to fall "
            "back to", hint="boot another snapshot from the menu", code=ExitCode.REFUSED)
    return roll_back(store, settings, number, fallback, reason, detail, log_path)


def announce(store: Store) -> None:
    """After an automatic rollback, while the fallback runs: one line for the next login."""
    record = load(store)
    rollback = record.last_rollback
    lines = []
    if rollback is not None and store.booted() == rollback.to and store.default() == rollback.to:
        lines.append(f"amber: snapshot {rollback.from_} failed its trial boot ({rollback.reason}"
                     f"{': ' + rollback.detail if rollback.detail else ''}); rolled back to "
                     f"snapshot {rollback.to} at {rollback.time}. See 'amber status'.")
    for name in (MOTD, ISSUE):
        path = store.root / name
        try:
            if lines:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("\n".join(lines) + "\n")
            else:
                path.unlink(missing_ok=True)
        except OSError:
            pass


def failing(results: list[Result]) -> list[Result]:
    return [result for result in results if not result.passed]

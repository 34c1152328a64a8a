"""`amber health ...`: boot health (amber.health): run the checks, mark a snapshot, and the
verbs the boot's health units run."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from amber import log


def cmd_check(args: argparse.Namespace) -> int:
    from amber import config
    from amber.errors import ExitCode, die
    from amber.health import checks
    from amber.snapshots import Store

    store = Store(args.root)
    store.check()
    results = checks.run(store, timeout=config.load(args.root).health.timeout)
    if args.json:
        log.print_json({"passed": all(r.passed for r in results),
                        "checks": [r.as_json() for r in results]})
    else:
        for result in results:
            mark = "pass" if result.passed else "FAIL"
            print(f"{mark:4}  {result.name:20}  {result.summary}")
    failed = [r.name for r in results if not r.passed]
    if failed:
        if args.json:
            return int(ExitCode.STEP_FAILED)
        die(f"health check failed: {', '.join(failed)}", hint="see the output above",
            code=ExitCode.STEP_FAILED)
    return 0


def cmd_mark(args: argparse.Namespace) -> int:
    from amber.cli.common import ref
    from amber.health import verdicts
    from amber.lock import locked
    from amber.snapshots import Store

    store = Store(args.root)
    store.check()
    with locked(store, args.wait):
        number = store.resolve(ref(args.number or "booted"))
        verdict = verdicts.Verdict(args.verdict)
        record = verdicts.load(store)
        was_trial = record.trial is not None and record.trial.snapshot == number
        verdicts.save(store, record.with_verdict(number, verdict))
        if was_trial:
            from amber import config
            from amber.boot import menu
            from amber.health import trial

            trial.clear_trial_vars(store, config.load(args.root))
            menu.refresh(store, full=True)
    if args.json:
        log.print_json({"snapshot": number, "health": str(verdict)})
    else:
        log.info(f"snapshot {number} is marked {verdict}")
    return 0


def cmd_enable(args: argparse.Namespace) -> int:
    """Write (or remove) the health units in this root's /etc, which is writable: as
    `systemctl enable` would. Snapshots made from now on carry them."""
    from amber import config
    from amber.errors import ExitCode, die
    from amber.fleet import units
    from amber.snapshots import Store

    Store(args.root).check()
    on = args.health_verb == "enable"
    try:
        changed = units.enable_health(args.root) if on else units.disable_health(args.root)
    except OSError as e:
        die(f"cannot {args.health_verb} the health units in {args.root / 'etc/systemd/system'}: "
            f"{e.strerror}", hint="run it as root, on a system whose /etc is writable (amber's "
            "layout gives each snapshot its own)",
            code=ExitCode.ENVIRONMENT)
    settings = config.load(args.root)
    if args.json:
        log.print_json({"units": changed, "enabled": on,
                        "config_enabled": settings.health.enabled})
        return 0
    log.info(f"{'enabled' if on else 'removed'}: {', '.join(changed) or 'nothing to remove'}")
    if on and not settings.health.enabled:
        log.warn("trial boots stay off until amber.conf says so",
                 hint=f"set [health] enabled = true in {args.root / config.CONFIG_PATH}")
    elif on:
        log.info("the snapshot the next transaction makes is on trial at its first boot")
    elif settings.health.enabled:
        log.warn("[health] enabled is still true in amber.conf: transactions will warn that "
                 "there is no trial boot", hint="set [health] enabled = false")
    return 0


def _boot(action: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        from amber.health import boot

        result = getattr(boot, action.replace("-", "_"))(args.root)
        if action == "boot-check":
            return 0 if result else 1
        return 0
    return handler


def add_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("health", help="boot health: checks, trial boots, verdicts")
    health_sub = p.add_subparsers(dest="health_verb", metavar="VERB", required=True)
    c = health_sub.add_parser("check", help="run the health checks now and print each result")
    common(c)
    c.set_defaults(handler=cmd_check)
    m = health_sub.add_parser("mark", help="record a snapshot as good or bad (operators)")
    common(m)
    m.add_argument("verdict", choices=("good", "bad"))
    m.add_argument("number", nargs="?", metavar="N", help="snapshot (default: the booted one)")
    m.set_defaults(handler=cmd_mark)
    for verb, text in (("enable", "enable amber's health units in /etc (trial boots need "
                                  "them and [health] enabled = true)"),
                       ("disable", "remove amber's health units from /etc")):
        e = health_sub.add_parser(verb, help=text)
        common(e)
        e.set_defaults(handler=cmd_enable)
    for action, text in (
            ("boot-check", "at boot, before boot-complete.target: resolve a fallback, run the "
                           "checks (amber-health-check.service)"),
            ("boot-complete", "after boot-complete.target: the trial snapshot is good"),
            ("boot-failed", "the check unit failed: a trial boot without a verdict fails"),
            ("boot-timeout", "[health] timeout after boot: a trial boot without a verdict "
                             "fails")):
        b = health_sub.add_parser(action, help=text)
        common(b)
        b.set_defaults(handler=_boot(action))

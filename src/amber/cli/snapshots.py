"""The snapshot verbs: status, snapshots, rollback, pin, unpin, delete, cleanup, diff."""

from __future__ import annotations

import argparse

from amber import log
from amber.cli.common import common, ref


def cmd_status(args: argparse.Namespace) -> int:
    from amber import system

    status = system.status(args.root)
    if args.json:
        log.print_json(status.as_json())
    else:
        print(status.render())
    return 0


def cmd_snapshots(args: argparse.Namespace) -> int:
    from amber import system

    rows = system.snapshot_rows(args.root)
    if args.json:
        log.print_json([row.as_json() for row in rows])
    else:
        print(system.render_snapshot_table(rows))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from amber import system

    target = None if args.target is None else ref(args.target, ("booted", "default", "last"))
    result = system.rollback(args.root, target, revert_livepatches=args.revert_livepatches,
                             wait=args.wait, force=args.force)
    if args.json:
        log.print_json(result)
    return 0


def cmd_pin(args: argparse.Namespace) -> int:
    from amber import system

    system.pin(args.root, ref(args.number), pinned=args.verb == "pin", wait=args.wait)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from amber import system

    system.delete(args.root, [ref(n, ()) for n in args.numbers], wait=args.wait)
    return 0


def cmd_boot_once(args: argparse.Namespace) -> int:
    from amber import config, system
    from amber.boot import once
    from amber.errors import ExitCode, die
    from amber.lock import locked

    store = system.store(args.root)
    settings = config.load(args.root).boot
    with locked(store, args.wait):
        if args.cancel:
            once.clear_boot_once(store, settings)
            number = None
        else:
            if args.number is None:
                die("boot-once needs a snapshot number (or --cancel)",
                    hint="amber boot-once N", code=ExitCode.USAGE)
            if args.number == once.BEFORE_AMBER:
                once.set_boot_once_before(store, settings)
                if args.json:
                    log.print_json({"next_boot_once": once.BEFORE_AMBER})
                else:
                    log.info("the next boot (only) starts the system from before amber")
                return 0
            number = store.resolve(ref(args.number))
            system.refuse_bad(store, number, args.force, "boot-once")
            number = once.set_boot_once(store, settings, number)
    if args.json:
        log.print_json({"next_boot_once": number})
    elif number is None:
        log.info("the next boot starts the default snapshot")
    else:
        log.info(f"the next boot (only) starts snapshot {number}; the one after it the default")
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    from amber import system

    removed = system.cleanup(args.root, keep=args.keep, wait=args.wait)
    if args.json:
        log.print_json({"removed": removed})
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from amber import packages, system

    a, b = system.resolve_pair(args.root, ref(args.a), ref(args.b))
    changes = packages.diff(system.store(args.root).path(a), system.store(args.root).path(b))
    if args.json:
        log.print_json(changes.as_json())
    else:
        print(changes.render(a, b))
    return 0


def add_rollback(p: argparse.ArgumentParser) -> None:
    common(p)
    p.add_argument("target", nargs="?", default=None, metavar="N|last",
                   help="snapshot number, 'booted', 'default' or 'last' (the previous default); "
                        "without it: the booted snapshot")
    p.add_argument("--revert-livepatches", action="store_true",
                   help="make the running kernel's live patches match the target now: "
                        "load its live patch, or unload the ones it does not have")
    p.add_argument("--force", action="store_true",
                   help="roll back even to a snapshot that failed its trial boot")
    p.set_defaults(handler=cmd_rollback)


def add_pin(p: argparse.ArgumentParser) -> None:
    common(p)
    p.add_argument("number", metavar="N", help="snapshot number (or 'booted', 'default')")
    p.set_defaults(handler=cmd_pin)


def add_boot_once(p: argparse.ArgumentParser) -> None:
    common(p)
    p.add_argument("number", nargs="?", metavar="N",
                   help="snapshot number (or 'booted', 'default'; 'before-amber' on a "
                        "system amber init adopted)")
    p.add_argument("--cancel", action="store_true",
                   help="forget a boot-once that has not happened yet")
    p.add_argument("--force", action="store_true",
                   help="boot even a snapshot that failed its trial boot")
    p.set_defaults(handler=cmd_boot_once)


def add_delete(p: argparse.ArgumentParser) -> None:
    common(p)
    p.add_argument("numbers", nargs="+", metavar="N", help="snapshot numbers")
    p.set_defaults(handler=cmd_delete)


def add_cleanup(p: argparse.ArgumentParser) -> None:
    common(p)
    p.add_argument("--keep", type=int, default=None,
                   help="keep the newest K (default: [snapshots] keep in amber.conf)")
    p.set_defaults(handler=cmd_cleanup)


def add_diff(p: argparse.ArgumentParser) -> None:
    common(p)
    p.add_argument("a", metavar="A", help="snapshot number (or 'booted', 'default')")
    p.add_argument("b", metavar="B", help="snapshot number (or 'booted', 'default')")
    p.set_defaults(handler=cmd_diff)

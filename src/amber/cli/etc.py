"""`amber etc ...`: what the admin changed in /etc, the conflicts of the first-boot merge, and
the merge itself (`merge-pending`, run by the initrd; not for people)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from amber import log
from amber.cli.common import ref


def _snapshot(args: argparse.Namespace, text: str | None) -> tuple[Any, int]:
    from amber.snapshots import Store

    store = Store(args.root)
    store.check()
    return store, store.resolve(ref(text or "booted"))


def cmd_diff(args: argparse.Namespace) -> int:
    from amber.etc.diff import to_json
    from amber.etc.pending import admin_diff
    from amber.etc.tree import decode

    store, number = _snapshot(args, args.snapshot)
    changes = admin_diff(store, number)
    if args.json:
        log.print_json({"snapshot": number, "changes": to_json(changes)})
        return 0
    for change in changes:
        detail = f" ({', '.join(change.attributes)})" if change.attributes else ""
        print(f"{change.change.value[0].upper()} {decode(change.path)}{detail}")
    if not changes:
        log.info(f"/etc of snapshot {number} is as its transaction left it")
    return 0


def cmd_conflicts(args: argparse.Namespace) -> int:
    from amber.etc.pending import conflicts_dir, stored_conflicts
    from amber.etc.tree import decode

    _, number = _snapshot(args, args.snapshot)
    found = stored_conflicts(args.root, number)
    if args.json:
        log.print_json({"snapshot": number, "directory": str(conflicts_dir(args.root, number)),
                        "conflicts": [c.to_json() for c in found]})
        return 0
    if not found:
        log.info(f"no /etc conflicts from the merge into snapshot {number}")
        return 0
    for conflict in found:
        print(f"/etc/{decode(conflict.path)}: {conflict.reason.value}: {conflict.detail}")
        for side, path in (("base", conflict.base), ("admin's (kept)", conflict.old),
                           ("update's", conflict.new)):
            print(f"  {side + ':':<16} {path if path is not None else '(none)'}")
    return 0


def cmd_merge_pending(args: argparse.Namespace) -> int:
    from amber.etc.pending import merge_pending

    store, number = _snapshot(args, args.snapshot)
    report = merge_pending(store, number)
    if args.json:
        log.print_json(None if report is None else {"snapshot": number, **report.to_json()})
    elif report is not None and report.conflicts:
        log.warn(f"{len(report.conflicts)} /etc conflicts: the admin's version was kept",
                 hint="see 'amber etc conflicts'")
    return 0


def add_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("etc", help="the admin's edits to /etc and the update merge")
    etc_sub = p.add_subparsers(dest="etc_verb", metavar="VERB", required=True)
    d = etc_sub.add_parser("diff", help="what changed in a snapshot's /etc since its creation",
                           description="Paths added, removed and modified in the /etc of "
                                       "snapshot N (default: the booted one) against /etc as "
                                       "the transaction that made N left it.")
    common(d)
    d.add_argument("snapshot", nargs="?", metavar="N", help="a snapshot (default: booted)")
    d.set_defaults(handler=cmd_diff)
    c = etc_sub.add_parser("conflicts", help="what the update's /etc merge could not merge",
                           description="The conflicts of the merge into snapshot N (default: "
                                       "the booted one), with the paths of the three stored "
                                       "versions; the admin's version is the one in /etc.")
    common(c)
    c.add_argument("snapshot", nargs="?", metavar="N", help="a snapshot (default: booted)")
    c.set_defaults(handler=cmd_conflicts)
    m = etc_sub.add_parser("merge-pending", help="(run by the initrd) merge the admin's edits "
                                                 "into a new snapshot at its first boot")
    common(m)
    m.add_argument("snapshot", nargs="?", metavar="N", help="a snapshot (default: booted)")
    m.set_defaults(handler=cmd_merge_pending)

"""`amber reboot`: the reboot policy of an unattended machine (amber.fleet.reboot)."""

from __future__ import annotations

import argparse

from amber import log
from amber.cli.common import common


def cmd_reboot(args: argparse.Namespace) -> int:
    from amber.fleet import reboot

    if args.steady_state:
        released = reboot.steady_state(args.root, force=args.force)
        if getattr(args, "json", False):
            log.print_json({"released": released})
        return 0
    decision = reboot.reboot(args.root, if_needed=args.if_needed, no_wait=args.no_wait)
    if getattr(args, "json", False):
        log.print_json({"action": decision.action, "reason": decision.reason,
                        "window_next": decision.at.isoformat() if decision.at else None})
    return 0


def add_reboot(p: argparse.ArgumentParser) -> None:
    common(p)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--if-needed", action="store_true",
                      help="reboot only when the default snapshot is not the booted one (and "
                           "no active live patch stands for the difference)")
    what.add_argument("--steady-state", action="store_true",
                      help="after a healthy boot: give the FleetLock reboot slot back")
    p.add_argument("--force", action="store_true",
                   help="with --steady-state: give the slot back even after an automatic "
                        "rollback")
    p.add_argument("--no-wait", action="store_true",
                   help="outside the maintenance window, exit 0 saying when it opens instead "
                        "of waiting for it")
    p.set_defaults(handler=cmd_reboot)

"""`amber init`: adopt a Debian system installed on btrfs (amber.adopt)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from amber import log
from amber.cli.common import common

if TYPE_CHECKING:
    from amber import adopt


def cmd_init(args: argparse.Namespace) -> int:
    from amber import adopt

    if args.undo:
        old = adopt.undo(args.root, args.esp, args.disk)
        if args.json:
            log.print_json({"default_subvolume": old})
        else:
            log.info(f"the system from before amber (subvolume id {old}) boots next again; "
                     "amber's snapshots and shared subvolumes are still there (delete @ to free "
                     "them)")
        return 0
    if args.switch:
        switched = adopt.finish_switch(args.root)
        if args.json:
            log.print_json(switched.as_json())
        else:
            print(switch_text(switched))
        return 0
    if args.check:
        found = adopt.inspect(args.root, args.esp, args.disk)
    else:
        found = adopt.adopt(args.root, args.esp, args.disk)
    if args.json:
        log.print_json({"check": args.check, **found.as_json()})
    else:
        print(adopt.plan_text(found))
        if not args.check:
            log.info(done_text(adopt.is_running_root(args.root)))
    return 0


def done_text(staged: bool) -> str:
    text = ("done: the next boot starts snapshot 1 (read-only); 'amber init --undo' goes back")
    if staged:
        text += ("\n  until that reboot this system runs as before; what it writes to /var, "
                 "/home, /root, /opt, /srv and /usr/local goes over at the reboot, edits to "
                 "/etc do not (make them after it)")
    return text


def switch_text(switched: adopt.Switched) -> str:
    if switched.done_before:
        return "amber init --switch: nothing to do (no adoption waits for its first boot)"
    lines = ["amber init --switch: made again from the old root as it was at shutdown: "
             + (", ".join(f"/{n}" for n in switched.moved) or "nothing")]
    if switched.kept:
        lines.append("  amber init's copies of " + ", ".join(f"/{n}" for n in switched.kept)
                     + " changed since: kept in /.snapshots/" + adopt.SWITCH_DIR + "/kept")
    if switched.etc_edits:
        lines.append("  /etc was edited in the old system after amber init (not carried over; "
                     "it is still in the old root): " + ", ".join(switched.etc_edits))
    return "\n".join(lines)


def add_init(p: argparse.ArgumentParser) -> None:
    common(p)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--check", action="store_true",
                      help="say what it would do, and refuse what cannot be done safely; "
                           "change nothing")
    what.add_argument("--switch", action="store_true",
                      help="(run at the first boot by amber-adopt-switch.service) make /var, "
                           "/home, ... again from the old root as it was at shutdown")
    what.add_argument("--undo", action="store_true",
                      help="make the system from before amber the default again, and put its "
                           "boot loader back")
    p.add_argument("--esp", type=Path, default=None, metavar="DEVICE",
                   help="the EFI system partition, written with mtools without mounting it "
                        "(default: the one mounted at DIR/boot/efi, else the disk's)")
    p.add_argument("--disk", type=Path, default=None, metavar="DEVICE",
                   help="the whole disk the root is on, for its partition table and BIOS boot "
                        "code (default: the root partition's disk)")
    p.set_defaults(handler=cmd_init)

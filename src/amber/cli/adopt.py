"""`amber init`: adopt a Debian system installed on btrfs (amber.adopt)."""

from __future__ import annotations

import argparse
from pathlib import Path

from amber import log
from amber.cli.common import common


def cmd_init(args: argparse.Namespace) -> int:
    from amber import adopt
    from amber.errors import ExitCode, die

    if args.undo:
        old = adopt.undo(args.root, args.esp, args.disk)
        if args.json:
            log.print_json({"default_subvolume": old})
        else:
            log.info(f"the system from before amber (subvolume id {old}) boots next again; "
                     "amber's snapshots and shared subvolumes are still there (delete @ to free "
                     "them)")
        return 0
    if str(args.root) == "/" and not args.check:
        die("amber init adopts a system mounted elsewhere, not the running one (yet)",
            hint="boot a rescue system, mount the root subvolume at DIR (and its ESP at "
                 "DIR/boot/efi), then 'amber init --root DIR'", code=ExitCode.REFUSED)
    if args.check:
        found = adopt.inspect(args.root, args.esp, args.disk)
    else:
        found = adopt.adopt(args.root, args.esp, args.disk)
    if args.json:
        log.print_json({"check": args.check, **found.as_json()})
    else:
        print(adopt.plan_text(found))
        if not args.check:
            log.info("done: the next boot starts snapshot 1 (read-only); "
                     "'amber init --undo' goes back")
    return 0


def add_init(p: argparse.ArgumentParser) -> None:
    common(p)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--check", action="store_true",
                      help="say what it would do, and refuse what cannot be done safely; "
                           "change nothing")
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

"""The command line: the verbs and the dispatch. Each verb family lives in a module of this
package (transactions, snapshots, livepatch, image), which parses, calls one function of the
modules below and prints text or JSON. Heavy modules are imported inside the verbs, and only the
invoked verb's arguments are built, so that `amber status` starts fast."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from amber import __version__, log
from amber.cli.adopt import add_init
from amber.cli.common import Adder, common, plain
from amber.cli.fleet import add_reboot
from amber.cli.snapshots import (
    add_boot_once,
    add_cleanup,
    add_delete,
    add_diff,
    add_pin,
    add_rollback,
    cmd_snapshots,
    cmd_status,
)
from amber.cli.transactions import add_pkg, add_run, add_up, cmd_initrd, cmd_shell
from amber.errors import AmberError, ExitCode

if TYPE_CHECKING:
    from typing import Any

# ---- parser --------------------------------------------------------------------------------























# verb, aliases, help, how to add its arguments
VERBS: tuple[tuple[str, tuple[str, ...], str, Adder], ...] = (
    ("run", (), "run a command in a new snapshot", add_run),
    ("shell", (), "open an interactive shell in a new snapshot",
     plain(cmd_shell, transaction=True)),
    ("pkg", (), "install, remove or update packages in a new snapshot", add_pkg),
    ("up", (), "update every package in a new snapshot", add_up),
    ("initrd", (), "regenerate the initrd in a new snapshot", plain(cmd_initrd, transaction=True)),
    ("status", (), "booted and default snapshot, pending reboot", plain(cmd_status)),
    ("snapshots", ("list",), "list snapshots", plain(cmd_snapshots)),
    ("rollback", (), "make an older snapshot the default for the next boot", add_rollback),
    ("boot-once", (), "boot a snapshot at the next boot only, then the default again",
     add_boot_once),
    ("pin", (), "keep a snapshot from cleanup", add_pin),
    ("unpin", (), "let cleanup remove it", add_pin),
    ("delete", (), "delete snapshots (never the booted or default one)", add_delete),
    ("cleanup", (), "delete old snapshots and unfinished transactions", add_cleanup),
    ("diff", (), "packages added, removed and changed between two snapshots", add_diff),
    ("reboot", (), "reboot when needed, inside the maintenance window, one fleet slot at a time",
     add_reboot),
    ("init", (), "adopt a Debian system installed on btrfs, in place (--undo goes back)",
     add_init),
)
NESTED = {"livepatch": "inspect, load and apply kernel live patches",
          "health": "boot health: checks, trial boots, verdicts",
          "image": "build a bootable immutable Debian image",
          "etc": "the admin's edits to /etc and the update merge"}


def _verb_of(argv: Sequence[str]) -> str | None:
    """The verb on the command line, so that only its arguments are built (start-up time)."""
    names = {v[0] for v in VERBS} | {a for v in VERBS for a in v[1]} | set(NESTED)
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--root":
            skip = True
        elif arg in names:
            return arg
        elif not arg.startswith("-"):
            return None
    return None


def _terminal_width() -> int:
    """What shutil.get_terminal_size() tells argparse, without importing shutil (which imports
    bz2, lzma, zlib and fnmatch, for every parser: start-up time): COLUMNS, else the width of
    the terminal on stdout, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _HelpFormatter(argparse.HelpFormatter):
    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         _terminal_width() - 2 if width is None else width)


class _Parser(argparse.ArgumentParser):
    """argparse's parser with a help formatter that does not import shutil; its subparsers
    are of the same class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `only`, the other verbs are listed without their arguments."""
    parser = _Parser(
        prog="amber",
        description="Immutable btrfs root: transactional updates, rollback and live patches.",
        epilog="Every change lands in a new snapshot that becomes the default for the next boot "
               "only when it fully succeeded. See 'amber VERB --help'.",
    )
    parser.add_argument("--version", action="version", version=f"amber {__version__}")
    parser.add_argument("--root", type=Path, default=Path(os.environ.get("AMBER_ROOT", "/")),
                        help="system root to manage (default: /)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("--wait", action="store_true",
                        help="wait for another amber transaction instead of failing")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every command run")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name, aliases, text, add_arguments in VERBS:
        p = sub.add_parser(name, aliases=list(aliases), help=text)
        if only is None or only == name or only in aliases:
            add_arguments(p)
    for name, text in NESTED.items():
        if only is not None and only != name:
            sub.add_parser(name, help=text)
        elif name == "livepatch":
            from amber.cli import livepatch

            livepatch.add_parser(sub, common)
        elif name == "etc":
            from amber.cli import etc

            etc.add_parser(sub, common)
        elif name == "health":
            from amber.cli import health

            health.add_parser(sub, common)
        else:
            from amber.cli import image

            image.add_parser(sub, common)
    return parser


def _raise_interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _normalize_continue(argv: list[str]) -> list[str]:
    """`--continue [N]`: an optional value that argparse would confuse with a positional
    (`amber pkg --continue install x`), so a bare --continue is spelled out here."""
    out = []
    for i, arg in enumerate(argv):
        if arg == "--":
            out += argv[i:]
            break
        # Any digits are meant as its value ('²' too, so that Ref.parse refuses it rather
        # than it being run as the command).
        if arg in ("--continue", "-c") and not (i + 1 < len(argv) and argv[i + 1].isdigit()):
            arg = "--continue=default"
        out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _normalize_continue(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser(only=_verb_of(arguments))
    args = parser.parse_args(arguments)
    log.configure(quiet=args.quiet, verbose=args.verbose)
    if not getattr(args, "handler", None):
        parser.print_help()
        return ExitCode.USAGE
    command = getattr(args, "command", None)
    if command and command[0] == "--":
        args.command = command[1:]
    # SIGTERM takes the same clean path as Ctrl-C: the transaction is rolled back.
    signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        if getattr(args, "json", False):
            with log.JsonOutput():
                return int(args.handler(args))
        return int(args.handler(args))
    except AmberError as e:
        log.error(e)
        if getattr(args, "json", False):
            log.print_json({"error": {"message": e.message, "hint": e.hint, "code": int(e.code)}})
        return int(e.code)
    except KeyboardInterrupt:
        print("error: interrupted; nothing was changed", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:
        return 0


def entry() -> None:
    """The console script: main(), then a fast exit (the interpreter's own teardown costs
    several milliseconds and there is nothing left to clean up)."""
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        pass
    os._exit(code)

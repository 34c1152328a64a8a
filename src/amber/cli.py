"""The command line: verbs and options, mapped onto the modules below. Heavy modules are
imported inside the verbs so that `amber status` starts fast."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amber import __version__, log
from amber.log import AmberError, ExitCode

if TYPE_CHECKING:
    from amber.snapshots import Ref

Handler = Callable[[argparse.Namespace], int]
Adder = Callable[[argparse.ArgumentParser], None]


# ---- transactions --------------------------------------------------------------------------

def _transaction_options(args: argparse.Namespace) -> Any:
    from amber.transaction import Options

    base = args.continue_from
    if base is not None:
        base = _ref(base, ("default",), "a snapshot for --continue").text
    return Options(
        root=args.root,
        base=base,
        description=args.description,
        drop_if_no_change=args.drop_if_no_change,
        wait=args.wait,
    )


def _report_transaction(args: argparse.Namespace, result: Any) -> int:
    if args.json:
        log.print_json(result.as_json())
    else:
        log.info(result.summary())
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from amber import transaction

    if not args.command:
        log.die("no command given", hint="amber run -- COMMAND [ARG...]", code=ExitCode.USAGE)
    result = transaction.run_command(_transaction_options(args), args.command)
    return _report_transaction(args, result)


def cmd_shell(args: argparse.Namespace) -> int:
    from amber import transaction

    result = transaction.run_shell(_transaction_options(args))
    return _report_transaction(args, result)


def cmd_pkg(args: argparse.Namespace) -> int:
    from amber import transaction

    result = transaction.run_packages(_transaction_options(args), args.action, args.packages)
    return _report_transaction(args, result)


def cmd_up(args: argparse.Namespace) -> int:
    from amber import transaction

    result = transaction.run_packages(_transaction_options(args), "up", [])
    return _report_transaction(args, result)


def cmd_initrd(args: argparse.Namespace) -> int:
    from amber import transaction

    result = transaction.run_initrd(_transaction_options(args))
    return _report_transaction(args, result)


# ---- snapshots -----------------------------------------------------------------------------

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

    target = None if args.target is None else _ref(args.target, ("booted", "default", "last"))
    result = system.rollback(args.root, target, revert_livepatches=args.revert_livepatches,
                             wait=args.wait)
    if args.json:
        log.print_json(result)
    return 0


def cmd_pin(args: argparse.Namespace) -> int:
    from amber import system

    system.pin(args.root, _ref(args.number), pinned=args.verb == "pin", wait=args.wait)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from amber import system

    system.delete(args.root, [_ref(n, ()) for n in args.numbers], wait=args.wait)
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    from amber import system

    removed = system.cleanup(args.root, keep=args.keep, wait=args.wait)
    if args.json:
        log.print_json({"removed": removed})
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from amber import packages, system

    a, b = system.resolve_pair(args.root, _ref(args.a), _ref(args.b))
    changes = packages.diff(system.store(args.root).path(a), system.store(args.root).path(b))
    if args.json:
        log.print_json(changes.as_json())
    else:
        print(changes.render(a, b))
    return 0


# ---- parser --------------------------------------------------------------------------------

def _ref(text: str, names: tuple[str, ...] = ("booted", "default"),
         what: str = "a snapshot") -> Ref:
    """Every verb that names a snapshot parses it here (amber.snapshots.Ref)."""
    from amber.snapshots import Ref

    return Ref.parse(text, names, what)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print machine-readable JSON on stdout")
    parser.add_argument("--wait", action="store_true", default=argparse.SUPPRESS,
                        help="wait for another amber transaction instead of failing")


def _transaction_args(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("--continue", "-c", dest="continue_from", nargs="?", const="default",
                        default=None, metavar="N",
                        help="base the new snapshot on the default snapshot (or on N) "
                             "instead of the booted one")
    parser.add_argument("--drop-if-no-change", action="store_true",
                        help="discard the new snapshot if nothing in it changed")
    parser.add_argument("--description", "-m", default=None, help="description of the snapshot")


def _add_run(p: argparse.ArgumentParser) -> None:
    _transaction_args(p)
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")
    p.set_defaults(handler=cmd_run)


def _plain(handler: Handler, transaction: bool = False) -> Adder:
    """A verb with only the common options (and the transaction options)."""
    def add(p: argparse.ArgumentParser) -> None:
        (_transaction_args if transaction else _common)(p)
        p.set_defaults(handler=handler)

    return add


def _add_pkg(p: argparse.ArgumentParser) -> None:
    _transaction_args(p)
    p.add_argument("action", choices=["install", "remove", "update"])
    p.add_argument("packages", nargs="+", metavar="PKG",
                   help="package names, or local .deb/.rpm files")
    p.set_defaults(handler=cmd_pkg)


def _add_rollback(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("target", nargs="?", default=None, metavar="N|last",
                   help="snapshot number, 'booted', 'default' or 'last' (the previous default); "
                        "without it: the booted snapshot")
    p.add_argument("--revert-livepatches", action="store_true",
                   help="make the running kernel's live patches match the target now: "
                        "load its live patch, or unload the ones it does not have")
    p.set_defaults(handler=cmd_rollback)


def _add_pin(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("number", metavar="N", help="snapshot number (or 'booted', 'default')")
    p.set_defaults(handler=cmd_pin)


def _add_delete(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("numbers", nargs="+", metavar="N", help="snapshot numbers")
    p.set_defaults(handler=cmd_delete)


def _add_cleanup(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--keep", type=int, default=None,
                   help="keep the newest K (default: [snapshots] keep in amber.conf)")
    p.set_defaults(handler=cmd_cleanup)


def _add_diff(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("a", metavar="A", help="snapshot number (or 'booted', 'default')")
    p.add_argument("b", metavar="B", help="snapshot number (or 'booted', 'default')")
    p.set_defaults(handler=cmd_diff)


# verb, aliases, help, how to add its arguments
VERBS: tuple[tuple[str, tuple[str, ...], str, Adder], ...] = (
    ("run", (), "run a command in a new snapshot", _add_run),
    ("shell", (), "open an interactive shell in a new snapshot",
     _plain(cmd_shell, transaction=True)),
    ("pkg", (), "install, remove or update packages in a new snapshot", _add_pkg),
    ("up", (), "update every package in a new snapshot", _plain(cmd_up, transaction=True)),
    ("initrd", (), "regenerate the initrd in a new snapshot", _plain(cmd_initrd, transaction=True)),
    ("status", (), "booted and default snapshot, pending reboot", _plain(cmd_status)),
    ("snapshots", ("list",), "list snapshots", _plain(cmd_snapshots)),
    ("rollback", (), "make an older snapshot the default for the next boot", _add_rollback),
    ("pin", (), "keep a snapshot from cleanup", _add_pin),
    ("unpin", (), "let cleanup remove it", _add_pin),
    ("delete", (), "delete snapshots (never the booted or default one)", _add_delete),
    ("cleanup", (), "delete old snapshots and unfinished transactions", _add_cleanup),
    ("diff", (), "packages added, removed and changed between two snapshots", _add_diff),
)
NESTED = {"livepatch": "inspect, load and apply kernel live patches",
          "image": "build a bootable immutable Debian image"}


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


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `only`, the other verbs are listed without their arguments."""
    parser = argparse.ArgumentParser(
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
            from amber.livepatch import cli as livepatch_cli

            livepatch_cli.add_parser(sub, _common)
        else:
            from amber import image_cli

            image_cli.add_parser(sub, _common)
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


if __name__ == "__main__":
    sys.exit(main())

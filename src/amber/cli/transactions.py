"""The transaction verbs: run, shell, pkg, up, initrd."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from amber import log
from amber.cli.common import ref, transaction_args
from amber.errors import ExitCode

if TYPE_CHECKING:
    from amber.dryrun import Plan
    from amber.transaction import Options, Result

def _base(args: argparse.Namespace) -> str | None:
    base: str | None = args.continue_from
    if base is not None:
        base = ref(base, ("default",), "a snapshot for --continue").text
    return base


def _transaction_options(args: argparse.Namespace) -> Options:
    from amber.transaction import Options

    return Options(
        root=args.root,
        base=_base(args),
        description=args.description,
        drop_if_no_change=args.drop_if_no_change,
        wait=args.wait,
    )


def _report_transaction(args: argparse.Namespace, result: Result) -> int:
    if args.json:
        log.print_json({**result.as_json(), "changed": not result.dropped})
    else:
        log.info(result.summary())
    return 0


def _report_plan(args: argparse.Namespace, plan: Plan) -> int:
    if args.json:
        log.print_json(plan.as_json())
    else:
        log.info(plan.summary())
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from amber import transaction

    if not args.command:
        log.die("no command given", hint="amber run -- COMMAND [ARG...]", code=ExitCode.USAGE)
    if args.dry_run:
        from amber import dryrun

        return _report_plan(args, dryrun.plan_command(args.root, _base(args), args.command))
    result = transaction.run_command(_transaction_options(args), args.command)
    return _report_transaction(args, result)


def cmd_shell(args: argparse.Namespace) -> int:
    from amber import transaction

    result = transaction.run_shell(_transaction_options(args))
    return _report_transaction(args, result)


def cmd_pkg(args: argparse.Namespace) -> int:
    from amber import transaction

    if args.dry_run:
        from amber import dryrun

        plan = dryrun.plan_packages(args.root, _base(args), args.action, args.packages)
        return _report_plan(args, plan)

    result = transaction.run_packages(_transaction_options(args), args.action, args.packages)
    return _report_transaction(args, result)


def cmd_up(args: argparse.Namespace) -> int:
    from amber import transaction

    if args.dry_run:
        from amber import dryrun

        return _report_plan(args, dryrun.plan_packages(args.root, _base(args), "up", []))

    result = transaction.run_packages(_transaction_options(args), "up", [])
    return _report_transaction(args, result)


def cmd_initrd(args: argparse.Namespace) -> int:
    from amber import transaction

    result = transaction.run_initrd(_transaction_options(args))
    return _report_transaction(args, result)


def dry_run_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true",
                   help="report what the transaction would change; create no snapshot")


def add_run(p: argparse.ArgumentParser) -> None:
    transaction_args(p)
    dry_run_arg(p)
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")
    p.set_defaults(handler=cmd_run)


def add_pkg(p: argparse.ArgumentParser) -> None:
    transaction_args(p)
    dry_run_arg(p)
    p.add_argument("action", choices=["install", "remove", "update"])
    p.add_argument("packages", nargs="+", metavar="PKG",
                   help="package names, or local .deb/.rpm files")
    p.set_defaults(handler=cmd_pkg)


def add_up(p: argparse.ArgumentParser) -> None:
    transaction_args(p)
    dry_run_arg(p)
    p.set_defaults(handler=cmd_up)

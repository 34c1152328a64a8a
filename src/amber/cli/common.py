"""What every verb shares: the common options, the transaction options, snapshot references."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from amber.snapshots import Ref

Handler = Callable[[argparse.Namespace], int]


Adder = Callable[[argparse.ArgumentParser], None]


def ref(text: str, names: tuple[str, ...] = ("booted", "default"),
         what: str = "a snapshot") -> Ref:
    """Every verb that names a snapshot parses it here (amber.snapshots.Ref)."""
    from amber.snapshots import Ref

    return Ref.parse(text, names, what)


def common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print machine-readable JSON on stdout")
    parser.add_argument("--wait", action="store_true", default=argparse.SUPPRESS,
                        help="wait for another amber transaction instead of failing")


def transaction_args(parser: argparse.ArgumentParser) -> None:
    common(parser)
    parser.add_argument("--continue", "-c", dest="continue_from", nargs="?", const="default",
                        default=None, metavar="N",
                        help="base the new snapshot on the default snapshot (or on N) "
                             "instead of the booted one")
    parser.add_argument("--drop-if-no-change", action="store_true",
                        help="discard the new snapshot if nothing in it changed")
    parser.add_argument("--description", "-m", default=None, help="description of the snapshot")


def plain(handler: Handler, transaction: bool = False) -> Adder:
    """A verb with only the common options (and the transaction options)."""
    def add(p: argparse.ArgumentParser) -> None:
        (transaction_args if transaction else common)(p)
        p.set_defaults(handler=handler)

    return add

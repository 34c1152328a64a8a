"""amber with a crash injected at a named point of a transaction, for the crash tests:

    python3 -m testing.crash POINT[:SIGNAL] [AMBER ARGUMENTS...]

amber runs as usual until POINT, where it sends itself SIGNAL (default SIGKILL, as a power cut
would stop it). The points, in the order a transaction passes them:

    allocated   the snapshot number is reserved (recorded in the lock, directory made)
    created     the snapshot exists (writable, marked in progress)
    changed     the command of the transaction has run
    read-only   the snapshot was set read-only
    finished    the in-progress mark was cleared
    default     the snapshot became the default (the commit)

The hooks wrap amber's own functions from outside, so the product carries no test code.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

POINTS = ("allocated", "created", "changed", "read-only", "finished", "default")


def _after(owner: Any, name: str, fire: Callable[..., bool], stop: Callable[[], None]) -> None:
    """Replace owner.name by a wrapper that calls stop() after it returns, when fire(*args)."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        if fire(*args, **kwargs):
            stop()
        return result

    setattr(owner, name, wrapper)


def install(point: str, sig: signal.Signals) -> None:
    from amber import snapshots, transaction

    def stop() -> None:
        os.kill(os.getpid(), sig)

    def always(*args: Any, **kwargs: Any) -> bool:
        return True

    if point == "allocated":
        _after(transaction, "reserve", always, stop)
    elif point == "created":
        _after(snapshots.Store, "create", always, stop)
    elif point == "changed":
        _after(transaction.WorkingSnapshot, "run", always, stop)
    elif point == "read-only":
        _after(snapshots.Store, "set_read_only",
               lambda store, number, read_only: read_only, stop)
    elif point == "finished":
        _after(snapshots.Store, "update",
               lambda store, number, userdata: userdata.get(snapshots.IN_PROGRESS_KEY, 1) is None,
               stop)
    elif point == "default":
        _after(transaction, "set_default", always, stop)
    else:
        raise SystemExit(f"testing.crash: unknown point {point!r}; one of {', '.join(POINTS)}")


def main(argv: list[str]) -> int:
    if not argv:
        raise SystemExit(__doc__)
    point, _, name = argv[0].partition(":")
    install(point, signal.Signals[name or "SIGKILL"])
    from amber.cli import main as amber_main

    return amber_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

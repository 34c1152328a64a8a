"""SIGINT and SIGTERM: amber turns both into KeyboardInterrupt (see cli.main), which rolls a
transaction back. A few steps must not be cut in half by that: reserving a snapshot number,
committing, rolling back, recovering. They run in a critical section, where the two signals
are only noted and take effect (or not) when the section is over."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

HELD = (signal.SIGINT, signal.SIGTERM)
_arrived: list[int] | None = None  # the signals noted by the critical section in force


@contextmanager
def critical() -> Iterator[list[int]]:
    """Hold SIGINT and SIGTERM until the block ends; yields the list of those that came
    meanwhile, for the caller to act on. Nested sections share the outermost one's list."""
    global _arrived
    if _arrived is not None:
        yield _arrived
        return
    arrived: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        arrived.append(signum)

    try:
        previous = {sig: signal.signal(sig, note) for sig in HELD}
    except ValueError:  # not the main thread, where Python delivers signals: nothing to hold
        yield arrived
        return
    _arrived = arrived
    try:
        yield arrived
    finally:
        _arrived = None
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

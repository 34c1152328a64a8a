"""Critical sections: SIGINT and SIGTERM wait until the section is over."""

from __future__ import annotations

import os
import signal
from types import FrameType

import pytest

from amber.signals import critical


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def test_signals_are_noted_and_the_handlers_come_back() -> None:
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with critical() as arrived:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
            with critical() as inner:  # nested: the same list
                os.kill(os.getpid(), signal.SIGTERM)
            assert inner is arrived
        assert arrived == [signal.SIGTERM, signal.SIGINT, signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is _interrupt
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)

"""User-facing messages, errors and exit codes.

Every error a user can cause ends in `die(message, hint=...)`: one line that says what went wrong,
one line that says what to do, and an exit code that scripts can tell apart.
"""

from __future__ import annotations

import contextlib
import enum
import os
import sys
from typing import NoReturn


class ExitCode(enum.IntEnum):
    OK = 0
    ERROR = 1  # an unexpected failure (a bug, or something amber did not foresee)
    USAGE = 2  # wrong command-line arguments
    STEP_FAILED = 3  # a command inside the transaction failed; the snapshot was discarded
    LOCKED = 4  # another amber transaction holds the lock of this system root
    NOT_FOUND = 5  # no such snapshot, package file or module
    REFUSED = 6  # the request is understood but unsafe (deleting the booted snapshot, ...)
    NO_SPACE = 7  # the filesystem is full
    ENVIRONMENT = 8  # not root, not btrfs, not an amber layout, a tool missing
    CONFIG = 9  # /etc/amber/amber.conf is invalid
    BAD_MODULE = 20  # a kernel module file that cannot be parsed
    INCOMPATIBLE = 21  # built for another kernel, not a livepatch
    SIGNATURE = 22  # signature policy refuses the module
    LIVEPATCH_DISABLED = 23  # live patching was not enabled by the admin
    KERNEL_REFUSED = 24  # the running kernel refused to load or unload the module
    TRANSITION_TIMEOUT = 25  # a livepatch transition did not finish in time and was reversed
    INTERRUPTED = 130  # SIGINT or SIGTERM; the transaction was rolled back


class AmberError(Exception):
    """An error meant for the user: printed as one line plus a hint, never as a traceback."""

    def __init__(self, message: str, hint: str | None = None, code: ExitCode = ExitCode.ERROR):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.code = code


def die(message: str, hint: str | None = None, code: ExitCode = ExitCode.ERROR) -> NoReturn:
    raise AmberError(message, hint=hint, code=code)


_quiet = False
_verbose = False


def configure(*, quiet: bool = False, verbose: bool = False) -> None:
    global _quiet, _verbose
    _quiet = quiet
    _verbose = verbose or bool(os.environ.get("AMBER_DEBUG"))


def _color(code: str, text: str) -> str:
    if sys.stderr.isatty() and not os.environ.get("NO_COLOR"):
        return f"\033[{code}m{text}\033[0m"
    return text


def step(message: str) -> None:
    """A phase of the work, printed so that a user sees where a long operation is."""
    if not _quiet:
        print(_color("1", f"‣ {message}"), file=sys.stderr, flush=True)


def info(message: str) -> None:
    if not _quiet:
        print(message, file=sys.stderr, flush=True)


def debug(message: str) -> None:
    if _verbose:
        print(_color("2", message), file=sys.stderr, flush=True)


def warn(message: str, hint: str | None = None) -> None:
    print(_color("33", f"warning: {message}"), file=sys.stderr, flush=True)
    if hint:
        print(f"  hint: {hint}", file=sys.stderr, flush=True)


def error(err: AmberError) -> None:
    print(_color("31", f"error: {err.message}"), file=sys.stderr, flush=True)
    if err.hint:
        print(f"  hint: {err.hint}", file=sys.stderr, flush=True)


# ---- JSON output ---------------------------------------------------------------------------

_json_fd: int | None = None


class JsonOutput:
    """With --json, stdout carries the JSON document only: while the command runs, file
    descriptor 1 points at stderr, so that what package managers and scripts in the chroot
    print goes there; print_json writes to the real stdout kept aside."""

    def __enter__(self) -> JsonOutput:
        global _json_fd
        sys.stdout.flush()
        _json_fd = os.dup(1)
        os.dup2(2, 1)
        return self

    def __exit__(self, *exc: object) -> None:
        global _json_fd
        if _json_fd is None:
            return
        with contextlib.suppress(OSError):
            sys.stdout.flush()
        os.dup2(_json_fd, 1)
        os.close(_json_fd)
        _json_fd = None


def print_json(value: object) -> None:
    import json

    text = json.dumps(value, indent=2) + "\n"
    if _json_fd is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    with open(_json_fd, "w", closefd=False) as out:
        out.write(text)

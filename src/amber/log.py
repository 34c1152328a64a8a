"""User-facing messages: steps, information, warnings, errors, and JSON on stdout."""

from __future__ import annotations

import contextlib
import os
import sys

# The errors' home is amber.errors; they are re-exported here for the modules that print them.
from amber.errors import AmberError, ExitCode, die

__all__ = ["AmberError", "ExitCode", "die"]

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

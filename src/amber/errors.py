"""Exit codes and the errors that carry them: one error type per exit code.

Every error a user can cause ends as one line that says what went wrong, one line that says
what to do (the hint), and an exit code that scripts can tell apart; never a traceback.
`die(message, hint=..., code=...)` raises the error type of that code.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import ClassVar, NoReturn


class ExitCode(enum.IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    STEP_FAILED = 3
    LOCKED = 4
    NOT_FOUND = 5
    REFUSED = 6
    NO_SPACE = 7
    ENVIRONMENT = 8
    CONFIG = 9
    BAD_MODULE = 20
    INCOMPATIBLE = 21
    SIGNATURE = 22
    LIVEPATCH_DISABLED = 23
    KERNEL_REFUSED = 24
    TRANSITION_TIMEOUT = 25
    INTERRUPTED = 130

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


_MEANINGS = {
    ExitCode.OK: "success",
    ExitCode.ERROR: "unexpected error (a bug, or something amber did not foresee)",
    ExitCode.USAGE: "usage error: wrong command-line arguments",
    ExitCode.STEP_FAILED: "a step of the transaction failed (command, package script); the "
                          "snapshot was discarded",
    ExitCode.LOCKED: "another amber transaction holds the lock of this root (use --wait)",
    ExitCode.NOT_FOUND: "no such snapshot, file, or patch",
    ExitCode.REFUSED: "refused as unsafe (deleting the booted or default snapshot, rolling "
                      "back to a writable one)",
    ExitCode.NO_SPACE: "no space left on the filesystem",
    ExitCode.ENVIRONMENT: "environment: not root, not btrfs, no snapshot store, a tool missing",
    ExitCode.CONFIG: "invalid /etc/amber/amber.conf",
    ExitCode.BAD_MODULE: "a module file that cannot be parsed (not ELF, truncated, no "
                         ".modinfo, bad signature trailer, bad compression, too large)",
    ExitCode.INCOMPATIBLE: "not a live patch, or built for another kernel",
    ExitCode.SIGNATURE: "the signature policy, sig_enforce or lockdown refuses the module",
    ExitCode.LIVEPATCH_DISABLED: "live patching is disabled (amber livepatch enable)",
    ExitCode.KERNEL_REFUSED: "the kernel refused (already loaded, signature rejected, "
                             "lockdown, wrong format, busy)",
    ExitCode.TRANSITION_TIMEOUT: "a live patch transition timed out and was reversed",
    ExitCode.INTERRUPTED: "interrupted by SIGINT or SIGTERM; the transaction was rolled back",
}


class AmberError(Exception):
    """An error meant for the user: printed as one line plus a hint, never as a traceback."""

    default_code: ClassVar[ExitCode] = ExitCode.ERROR

    def __init__(self, message: str, hint: str | None = None, code: ExitCode | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.code = code if code is not None else self.default_code


class UsageError(AmberError):
    default_code = ExitCode.USAGE


class StepFailed(AmberError):
    default_code = ExitCode.STEP_FAILED


class Locked(AmberError):
    default_code = ExitCode.LOCKED


class NotFound(AmberError):
    default_code = ExitCode.NOT_FOUND


class Refused(AmberError):
    default_code = ExitCode.REFUSED


class NoSpace(AmberError):
    default_code = ExitCode.NO_SPACE


class EnvironmentProblem(AmberError):
    default_code = ExitCode.ENVIRONMENT


class ConfigError(AmberError):
    default_code = ExitCode.CONFIG


class BadModule(AmberError):
    default_code = ExitCode.BAD_MODULE


class Incompatible(AmberError):
    default_code = ExitCode.INCOMPATIBLE


class SignatureRefused(AmberError):
    default_code = ExitCode.SIGNATURE


class LivepatchDisabled(AmberError):
    default_code = ExitCode.LIVEPATCH_DISABLED


class KernelRefused(AmberError):
    default_code = ExitCode.KERNEL_REFUSED


class TransitionTimeout(AmberError):
    default_code = ExitCode.TRANSITION_TIMEOUT


class Interrupted(AmberError):
    default_code = ExitCode.INTERRUPTED


_TYPES: dict[ExitCode, type[AmberError]] = {
    cls.default_code: cls for cls in AmberError.__subclasses__()}
_TYPES[ExitCode.ERROR] = AmberError


def error_type(code: ExitCode) -> type[AmberError]:
    """The error type of an exit code."""
    return _TYPES[code]


def die(message: str, hint: str | None = None, code: ExitCode = ExitCode.ERROR) -> NoReturn:
    raise error_type(code)(message, hint=hint)

"""run(): the one way amber starts an external program.

A failing command is reported in a form that can be copied into a shell to try it again.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from amber.errors import AmberError, ExitCode
from amber.log import debug


class CommandFailed(AmberError):
    """A host command failed; its exit code says what that means where it ran (the `code`
    given to run()): 3 inside a transaction step, 8 for a host tool that does not work, ..."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str, where: str = "",
                 code: ExitCode = ExitCode.ERROR):
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        place = f" {where}" if where else ""
        tail = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        message = f"command failed with exit code {returncode}{place}: {shlex.join(argv)}"
        if tail:
            message += f" ({tail})"
        super().__init__(message, hint="run that command by hand to see all of its output; "
                                       "'amber -v' prints every command it runs",
                         code=code)


def command_line(argv: Sequence[str]) -> str:
    return shlex.join(str(a) for a in argv)


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    capture: bool = False,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    preexec_fn: Callable[[], None] | None = None,
    where: str = "",
    code: ExitCode = ExitCode.ERROR,
) -> subprocess.CompletedProcess[str]:
    """Run argv; raise CommandFailed with exit code `code` when it fails and check is true.

    With capture, stdout and stderr are returned; otherwise they go to the user's terminal, and
    stderr is still reported through the exception's message only when captured.
    """
    args = [os.fspath(a) for a in argv]
    debug(f"+ {command_line(args)}")
    try:
        result = subprocess.run(
            args,
            check=False,
            text=True,
            input=input,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            preexec_fn=preexec_fn,
        )
    except FileNotFoundError as e:
        raise AmberError(
            f"cannot run {args[0]}: not installed",
            hint=f"install the package that provides {args[0]}",
            code=ExitCode.ENVIRONMENT,
        ) from e
    if check and result.returncode != 0:
        raise CommandFailed(args, result.returncode, result.stderr or "", where, code)
    return result

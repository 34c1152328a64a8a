"""run(): the one way amber starts an external program.

A failing command is reported in a form that can be copied into a shell to try it again.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv; raise CommandFailed with exit code `code` when it fails and check is true.

    With capture, stdout and stderr are returned (undecodable bytes replaced); otherwise they go
    to the user's terminal, and stderr is still reported through the exception's message only
    when captured. With a timeout, a program still running after it is killed and
    subprocess.TimeoutExpired raised (its output so far as bytes).
    """
    args = [os.fspath(a) for a in argv]
    debug(f"+ {command_line(args)}")
    try:
        result = subprocess.run(
            args,
            check=False,
            text=True,
            errors="replace",
            input=input,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            preexec_fn=preexec_fn,
            timeout=timeout,
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


@dataclass(frozen=True)
class LimitedOutput:
    stdout: bytes | None  # None: the program wrote more than the limit and was killed
    returncode: int
    stderr: str


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Closing the pipe makes the writer die of SIGPIPE and lets a program reap its own
    helpers (dpkg-deb's decompressor); what is still running a moment later is killed."""
    import signal

    assert process.stdout is not None
    process.stdout.close()
    try:
        process.wait(timeout=2)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def read_output(argv: Sequence[str | os.PathLike[str]], *, stdin: int, limit: int
                ) -> LimitedOutput:
    """Run argv with stdin from a file descriptor and read at most limit bytes of its stdout
    into memory; a program that writes more is stopped there (a decompression bomb), and so
    is it when the caller is interrupted. Its stderr is read at the end: for programs that say
    little there."""
    args = [os.fspath(a) for a in argv]
    debug(f"+ {command_line(args)} (at most {limit} bytes of output)")
    try:
        process = subprocess.Popen(args, stdin=stdin, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, process_group=0)
    except FileNotFoundError as e:
        raise AmberError(f"cannot run {args[0]}: not installed",
                         hint=f"install the package that provides {args[0]}",
                         code=ExitCode.ENVIRONMENT) from e
    assert process.stdout is not None and process.stderr is not None
    pieces: list[bytes] = []
    size = 0
    with process:
        try:
            while size <= limit and (piece := os.read(process.stdout.fileno(), 1 << 20)):
                pieces.append(piece)
                size += len(piece)
        finally:
            if size > limit or sys.exc_info()[0] is not None:
                _stop(process)
        if size > limit:
            return LimitedOutput(None, process.returncode, "")
        stderr = process.stderr.read().decode(errors="replace")
        process.wait()
    return LimitedOutput(b"".join(pieces), process.returncode, stderr)

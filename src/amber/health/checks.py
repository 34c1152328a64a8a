"""What healthy means: amber's built-in checks, then every executable in /usr/lib/amber/health.d/
and /etc/amber/health.d/ (a name in /etc replaces the same name in /usr/lib, as systemd's
drop-ins do). A check passes with exit status 0; its output is kept in /var/log/amber/health/.
Units that declare RequiredBy=boot-complete.target are systemd's to run: a failed one keeps the
boot from completing, and the trial's timeout catches it."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from amber.errors import AmberError
from amber.run import run as run_command

if TYPE_CHECKING:
    from pathlib import Path

    from amber.snapshots import Store

CHECK_DIRS = ("usr/lib/amber/health.d", "etc/amber/health.d")
LOG_DIR = "var/log/amber/health"


@dataclass(frozen=True)
class Result:
    name: str
    passed: bool
    output: str
    source: str  # "built-in", or the file's path
    status: int | None = None  # a file's exit status (None: built-in, or it did not finish)

    @property
    def summary(self) -> str:
        """One line: the last line of the output, else the exit status."""
        lines = self.output.strip().splitlines()
        if lines:
            return lines[-1]
        return f"exit status {self.status}" if self.status is not None else (
            "passed" if self.passed else "failed")

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "output": self.output,
                "source": self.source, "status": self.status}


def _root_check(store: Store, expected: int | None) -> Result:
    from amber import btrfs

    booted = store.booted()
    problems = []
    if booted is None:
        problems.append("/ is not mounted from a snapshot")
    elif expected is not None and booted != expected:
        problems.append(f"/ is snapshot {booted}, not {expected}")
    if booted is not None and not btrfs.is_read_only(store.path(booted)):
        problems.append(f"snapshot {booted} is writable")
    return Result("root", not problems, "; ".join(problems) or f"/ is snapshot {booted}, "
                  "read-only", "built-in")


def _shared_check(store: Store) -> Result:
    from amber.snapshots import SHARED_SUBVOLUMES

    missing = [f"/{name}" for name in SHARED_SUBVOLUMES
               if not os.path.ismount(store.root / name)]
    if not os.path.ismount(store.dir):
        missing.insert(0, "/.snapshots")
    return Result("shared-subvolumes", not missing,
                  f"not mounted: {', '.join(missing)}" if missing else "all mounted",
                  "built-in")


def _livepatch_check(store: Store) -> Result:
    """The live patches the booted snapshot loads at boot are active in the kernel."""
    from amber.boot import kernels

    booted = store.booted()
    if booted is None or not kernels.livepatch_sysfs().is_dir():
        return Result("livepatches", True, "no live patching here", "built-in")
    from amber.livepatch.early import initrd_patches
    from amber.livepatch.view import installed_patches

    snapshot = store.path(booted)
    present = installed_patches(snapshot, kernels.running_release())
    expected = [name for name in initrd_patches(snapshot) if name in present]
    inactive = []
    for name in expected:
        enabled = kernels.livepatch_sysfs() / name / "enabled"
        try:
            if enabled.read_text().strip() != "1":
                inactive.append(name)
        except OSError:
            inactive.append(name)
    if inactive:
        return Result("livepatches", False, f"not active: {', '.join(inactive)}", "built-in")
    return Result("livepatches", True, f"active: {', '.join(expected)}" if expected else
                  "the snapshot loads no live patch", "built-in")


def check_files(root: Path) -> tuple[list[Path], list[str]]:
    """The executables to run, by name (/etc's replace /usr/lib's), and warnings for files that
    are not executables."""
    chosen: dict[str, Path] = {}
    warnings = []
    for directory in CHECK_DIRS:
        folder = root / directory
        try:
            names = sorted(os.listdir(folder))
        except FileNotFoundError:
            continue
        except OSError as e:
            warnings.append(f"cannot read {folder}: {e.strerror}")
            continue
        for name in names:
            if name.startswith("."):
                continue
            path = folder / name
            if not path.is_file() or not os.access(path, os.X_OK):
                warnings.append(f"health check {path} is ignored: not an executable file")
                chosen.pop(name, None)
                continue
            chosen[name] = path
    return [chosen[name] for name in sorted(chosen)], warnings


def _run_file(root: Path, path: Path, deadline: float) -> Result:
    """A check runs in the system it checks: directly on the running system, in a chroot of
    another root (--root)."""
    remaining = max(1.0, deadline - time.monotonic())
    argv = [str(path)]
    if str(root) != "/":
        argv = ["chroot", str(root), "/" + str(path.relative_to(root))]
    try:
        done = run_command(argv, check=False, capture=True, input="", timeout=remaining)
    except subprocess.TimeoutExpired as e:
        output = b"".join(_bytes(part) for part in (e.stdout, e.stderr))
        return Result(path.name, False, output.decode(errors="replace") +
                      f"\n(killed after {remaining:.0f} s)", str(path))
    except (OSError, AmberError) as e:  # not executable after all, or gone meanwhile
        reason = e.strerror if isinstance(e, OSError) else e.message
        return Result(path.name, False, f"cannot run: {reason}", str(path))
    text = (done.stdout + done.stderr).strip()
    return Result(path.name, done.returncode == 0, text, str(path), done.returncode)


def _bytes(part: bytes | str | None) -> bytes:
    return part.encode() if isinstance(part, str) else part or b""


def run(store: Store, *, expected: int | None = None, timeout: float = 300.0,
        warn: bool = True, livepatches: bool = True) -> list[Result]:
    """Every check, in order: the built-in ones, then the files by name. `livepatches=False`
    while a live patch is being applied: a cumulative patch has just replaced the booted
    snapshot's own, by design, and apply has checked that it is active."""
    from amber import log

    deadline = time.monotonic() + timeout
    results = [_root_check(store, expected), _shared_check(store)]
    if livepatches:
        results.append(_livepatch_check(store))
    files, warnings = check_files(store.root)
    for warning in warnings if warn else ():
        log.warn(warning)
    results += [_run_file(store.root, path, deadline) for path in files]
    return results


def keep_output(store: Store, results: list[Result], tag: str) -> str | None:
    """The checks' output in /var/log/amber/health/<tag>.log; its path as the system sees it
    (None if /var is not writable, which a health report must survive)."""
    folder = store.root / LOG_DIR
    lines = []
    for result in results:
        verdict = "pass" if result.passed else "FAIL"
        status = f", exit status {result.status}" if result.status is not None else ""
        lines.append(f"== {result.name} ({result.source}{status}): {verdict}")
        if result.output:
            lines.append(result.output)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{tag}.log"
        path.write_text("\n".join(lines) + "\n")
    except OSError:
        return None
    return f"/{LOG_DIR}/{tag}.log"

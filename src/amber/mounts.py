"""The chroot environment of a transaction, in a private mount namespace.

Each command runs in a child process that first moves into a mount namespace of its own and
mounts there what a package manager needs: the snapshot on itself, /dev, /proc, /sys, tmpfs on
/tmp and /run, and the system's shared subvolumes (/var, /root, /opt, ...) as a booted system
would see them. Nothing is ever mounted in the host's namespace, so nothing can be left behind:
when the child exits, for whatever reason, the kernel drops the namespace with all its mounts.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shlex
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from amber.log import debug
from amber.snapshots import SHARED_SUBVOLUMES

CLONE_NEWNS = 0x00020000
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TRANSACTIONAL_UPDATE": "true",
}


class Mount(NamedTuple):
    source: str
    target: str  # relative to the chroot
    fstype: str | None
    flags: int
    data: str | None = None

    def describe(self, chroot: Path) -> str:
        """The same mount as a shell command, for messages a user can copy."""
        where = str(chroot / self.target)
        if self.flags & MS_BIND:
            opt = "--rbind" if self.flags & MS_REC else "--bind"
            return shlex.join(["mount", opt, self.source, where])
        return shlex.join(["mount", "-t", self.fstype or "none", self.source, where])


def _is_mount_point(path: Path) -> bool:
    try:
        return os.path.ismount(path)
    except OSError:
        return False


def plan_mounts(root: Path) -> list[Mount]:
    """The mounts of the chroot, in order; `root` is the system root whose shared subvolumes
    (mounted under it as on a booted system) are shared with the transaction."""
    mounts = [
        Mount("/dev", "dev", None, MS_BIND | MS_REC),
        Mount("proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC),
        Mount("/sys", "sys", None, MS_BIND | MS_REC),
        Mount("tmpfs", "tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"),
        Mount("tmpfs", "run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755"),
    ]
    for name in SHARED_SUBVOLUMES:
        shared = root / name
        if _is_mount_point(shared):
            mounts.append(Mount(str(shared), name, None, MS_BIND | MS_REC))
    return mounts


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _setup_namespace(chroot: Path, mounts: Sequence[Mount], resolv_conf: bytes | None) -> None:
    libc = _libc()
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    # Mounts made from here on must never propagate back to the host.
    _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
    target = os.fsencode(chroot)
    _check(libc.mount(target, target, None, MS_BIND, None), f"mount --bind {chroot} {chroot}")
    # noatime: reading a file must not change the snapshot (--drop-if-no-change relies on it)
    _check(libc.mount(None, target, None, MS_REMOUNT | MS_BIND | MS_NOATIME, None),
           f"mount -o remount,bind,noatime {chroot}")
    for m in mounts:
        where = chroot / m.target
        if not where.is_dir():
            where.mkdir(parents=True, exist_ok=True)
        result = libc.mount(
            m.source.encode(), os.fsencode(where), m.fstype.encode() if m.fstype else None,
            m.flags, m.data.encode() if m.data else None,
        )
        _check(result, m.describe(chroot))
    if resolv_conf is not None:
        _provide_resolv_conf(chroot, resolv_conf)


def _provide_resolv_conf(chroot: Path, content: bytes) -> None:
    """Make name resolution work in the chroot without writing into the snapshot: when the
    snapshot's resolv.conf points into /run (a tmpfs here), put the host's copy there."""
    link = chroot / "etc/resolv.conf"
    if not link.is_symlink():
        return
    target = os.readlink(link)
    if not target.startswith("/run/") and not target.startswith("../run/"):
        return
    dest = chroot / "run" / target.split("run/", 1)[1]
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(content)


def _read_resolv_conf(root: Path) -> bytes | None:
    try:
        return (root / "etc/resolv.conf").read_bytes()
    except OSError:
        return None


def run_in_chroot(
    chroot: Path,
    root: Path,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    interactive: bool = False,
    binds: Sequence[tuple[Path, str]] = (),
) -> int:
    """Run argv inside chroot (a snapshot of the system `root`); return its exit status
    (128 + signal number when killed). KeyboardInterrupt in the caller stops the child first."""
    mounts = plan_mounts(root)
    mounts += [Mount(str(host), inside, None, MS_BIND) for host, inside in binds]
    environment = dict(BASE_ENV)
    for key in ("TERM", "http_proxy", "https_proxy", "no_proxy"):
        if key in os.environ:
            environment[key] = os.environ[key]
    if not interactive:
        environment["DEBIAN_FRONTEND"] = "noninteractive"
    environment.update(env or {})
    resolv = _read_resolv_conf(root)
    debug(f"+ chroot {chroot} {shlex.join(argv)}")
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        try:
            if not interactive:
                os.setpgid(0, 0)  # its own process group, so that stopping it stops everything
            _setup_namespace(chroot, mounts, resolv)
            program = _find_program(chroot, argv[0], environment["PATH"])
            os.chroot(chroot)
            os.chdir("/")
            if not interactive:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.execve(program, list(argv), environment)
        except FileNotFoundError:
            print(f"amber: {argv[0]}: command not found in the snapshot", file=sys.stderr)
            os._exit(127)
        except BaseException as e:
            print(f"amber: cannot enter the snapshot: {e}", file=sys.stderr)
            os._exit(126)
    return _wait_for_child(pid, interactive)


def _find_program(chroot: Path, name: str, search_path: str) -> str:
    """The program's path inside the chroot, looked up before entering it: after chroot the
    host's Python library is out of reach, so os.execvpe's own lookup must not run there."""
    if "/" in name:
        return name
    for directory in search_path.split(":"):
        candidate = chroot / directory.lstrip("/") / name
        # A link may be absolute inside the chroot; it resolves correctly once we are in.
        if candidate.is_symlink() or (candidate.is_file() and os.access(candidate, os.X_OK)):
            return f"{directory}/{name}"
    raise FileNotFoundError(name)


def _wait_for_child(pid: int, interactive: bool) -> int:
    previous = signal.getsignal(signal.SIGINT)
    if interactive:  # Ctrl-C belongs to the shell inside, not to amber
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _, status = os.waitpid(pid, 0)
    except BaseException:
        _stop_child(pid)
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    if not interactive:
        # Background processes the command left behind would keep the snapshot busy.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def _stop_child(pid: int) -> None:
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if done:
                return
            time.sleep(0.05)
    try:
        os.waitpid(pid, 0)
    except OSError as e:
        if e.errno != errno.ECHILD:
            raise
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # whatever the command left running in its group

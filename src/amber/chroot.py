"""The chroot environment of a transaction, in a private mount namespace.

Each command runs in a child process that first moves into a mount namespace of its own and
mounts there what a package manager needs: the snapshot on itself, /dev, /proc, /sys, tmpfs on
/tmp and /run, and the system's shared subvolumes (/var, /root, /opt, ...) as a booted system
would see them. Nothing is ever mounted in the host's namespace, so nothing can be left behind:
when the child exits, for whatever reason, the kernel drops the namespace with all its mounts.
Nor can a process be left behind: the command and all it starts die with amber (see the
supervisor below).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple, NoReturn

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
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
Mask = set[int | signal.Signals]  # a signal mask, as pthread_sigmask returns it
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL when a command is stopped

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
    (128 + signal number when killed). KeyboardInterrupt in the caller stops the command and
    everything it started first."""
    mounts = plan_mounts(root)
    mounts += [Mount(str(host), inside, None, MS_BIND) for host, inside in binds]
    environment = dict(BASE_ENV)
    for key in ("TERM", "http_proxy", "https_proxy", "no_proxy"):
        if key in os.environ:
            environment[key] = os.environ[key]
    if not interactive:
        environment["DEBIAN_FRONTEND"] = "noninteractive"
    environment.update(env or {})
    command = Command(chroot, tuple(argv), environment, interactive)
    resolv = _read_resolv_conf(root)
    debug(f"+ chroot {chroot} {shlex.join(argv)}")
    sys.stdout.flush()
    sys.stderr.flush()
    amber = os.getpid()
    # The child starts with SIGINT and SIGTERM blocked: Python's after-fork hooks run first
    # there, and must not be cut short; each side unblocks them once ready to act on them.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        pid = os.fork()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        raise
    if pid == 0:
        _supervisor(amber, command, mounts, resolv, mask)  # never returns
    return _wait_for_supervisor(pid, interactive, mask)


# ---- the supervisor -------------------------------------------------------------------------
#
# amber (A) forks a supervisor (S) that enters the private mount namespace and forks the
# command (C). S is a child subreaper: whatever C starts and leaves behind, daemons included,
# becomes S's child when its parent exits, and S kills all of it when C is done. S gets SIGTERM
# when A dies, even by SIGKILL (PR_SET_PDEATHSIG; amber forks from its only thread), and C gets
# SIGKILL when S dies, so a killed amber leaves no process running in its snapshot. S keeps
# amber's lock descriptor (inherited; only exec closes it), so the lock stays held until S has
# stopped everything. A recovery still looks for leftovers (lock.py), should S have been killed.

class Command(NamedTuple):
    chroot: Path
    argv: tuple[str, ...]
    environment: dict[str, str]
    interactive: bool  # in amber's process group, with the terminal; else in a group of its own


class _Stop(Exception):
    """SIGTERM in the supervisor: amber wants the command stopped, or amber is gone."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop


def _prctl(option: int, value: int) -> None:
    _check(_libc().prctl(option, value, 0, 0, 0), f"prctl({option}, {value})")


def _supervisor(amber: int, command: Command, mounts: Sequence[Mount],
                resolv_conf: bytes | None, mask: Mask) -> NoReturn:
    status = 126
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is amber's to act on
        signal.signal(signal.SIGTERM, _raise_stop)
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if os.getppid() != amber:  # amber died before the prctl
            raise _Stop
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        status = _supervise(command, mounts, resolv_conf)
    except (_Stop, KeyboardInterrupt):  # the latter: amber's handler, before ours was set
        status = 128 + signal.SIGTERM
    except BaseException as e:
        print(f"amber: cannot enter the snapshot: {e}", file=sys.stderr, flush=True)
    finally:
        try:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            _reap_descendants()
        finally:
            os._exit(status)


def _supervise(command: Command, mounts: Sequence[Mount], resolv_conf: bytes | None) -> int:
    _setup_namespace(command.chroot, mounts, resolv_conf)
    program = _find_program(command.chroot, command.argv[0], command.environment["PATH"])
    if program is None:
        print(f"amber: {command.argv[0]}: command not found in the snapshot", file=sys.stderr,
              flush=True)
        return 127
    supervisor = os.getpid()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    pid = os.fork()
    if pid == 0:
        _exec(supervisor, program, command, mask)  # never returns
    try:
        if not command.interactive:
            with contextlib.suppress(OSError):  # the child does the same; whoever is first
                os.setpgid(pid, pid)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        _, status = os.waitpid(pid, 0)
    except _Stop:
        return _stop(pid, command.interactive)
    return _exit_status(status)


def _exec(supervisor: int, program: str, command: Command,
          mask: Mask) -> NoReturn:
    try:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a stop requested meanwhile: ends here
        if not command.interactive:
            os.setpgid(0, 0)  # its own process group, so that stopping it stops everything
            _keep_off_the_terminal()
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != supervisor:
            os._exit(128 + signal.SIGKILL)
        os.chroot(command.chroot)
        os.chdir("/")
        os.execve(program, list(command.argv), command.environment)
    except BaseException as e:
        print(f"amber: cannot run {command.argv[0]} in the snapshot: {e}", file=sys.stderr,
              flush=True)
    finally:
        os._exit(126)


def _keep_off_the_terminal() -> None:
    """A command in a process group of its own is in the background of amber's terminal, if
    amber has one: reading the terminal would stop it (SIGTTIN), and so would changing its
    modes (SIGTTOU: apt does, for dpkg's pty), with nothing to ever continue it. So a terminal
    is no input for it (/dev/null instead; a pipe or a file stays), and it may set the modes
    of a terminal it writes to. `amber shell` (interactive) keeps the terminal."""
    if os.isatty(0):
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)


def _stop(pid: int, interactive: bool) -> int:
    """SIGTERM to the command (its whole group), SIGKILL after a grace period."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _signal_command(pid, signal.SIGTERM, interactive)
    deadline = time.monotonic() + STOP_GRACE
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return _exit_status(status)
        time.sleep(0.02)
    _signal_command(pid, signal.SIGKILL, interactive)
    return _exit_status(os.waitpid(pid, 0)[1])


def _signal_command(pid: int, sig: int, interactive: bool) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if interactive:
            os.kill(pid, sig)
        else:
            os.killpg(pid, sig)


def _reap_descendants() -> None:
    """Kill every process left below the supervisor (orphans come to it, a subreaper) and
    reap them, until it has no child left."""
    me = os.getpid()
    while True:
        for pid in children(me):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            done, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if not done:
            time.sleep(0.01)


def _exit_status(status: int) -> int:
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def _find_program(chroot: Path, name: str, search_path: str) -> str | None:
    """The program's path inside the chroot, looked up before entering it: after chroot the
    host's Python library is out of reach, so os.execvpe's own lookup must not run there."""
    if "/" in name:
        return name
    for directory in search_path.split(":"):
        candidate = chroot / directory.lstrip("/") / name
        # A link may be absolute inside the chroot; it resolves correctly once we are in.
        if candidate.is_symlink() or (candidate.is_file() and os.access(candidate, os.X_OK)):
            return f"{directory}/{name}"
    return None


def _wait_for_supervisor(pid: int, interactive: bool, mask: Mask) -> int:
    previous = signal.getsignal(signal.SIGINT)
    try:
        if interactive:  # Ctrl-C belongs to the shell inside, not to amber
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a signal held since the fork: here
        _, status = os.waitpid(pid, 0)
    except BaseException:
        from amber.signals import critical

        with critical():  # a second Ctrl-C must not leave the command running
            _stop_supervisor(pid)
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    return _exit_status(status)


def _stop_supervisor(pid: int) -> None:
    """SIGTERM: the supervisor stops the command and everything it started; SIGKILL if it does
    not manage in time (its command then dies with it, its orphans are recovery's)."""
    for sig, grace in ((signal.SIGTERM, STOP_GRACE + 5.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return
            if done:
                return
            time.sleep(0.02)


# ---- processes --------------------------------------------------------------------------------

def _stat_fields(pid: int) -> list[bytes] | None:
    """/proc/PID/stat from its third field on (after the command name, which may hold
    anything), or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data.rpartition(b")")[2].split()


def start_time(pid: int) -> int | None:
    """When the process started, in clock ticks since boot: with the pid, it names one
    process for as long as the system runs (a pid alone is reused)."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def children(parent: int) -> list[int]:
    """The children of a single-threaded process: where the kernel lists them (one read), or
    else (CONFIG_PROC_CHILDREN off, or a list that missed some) by a search of /proc."""
    try:
        listed = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        if listed:
            return [int(pid) for pid in listed]
    except OSError:
        pass
    kids = []
    for pid in _pids():
        fields = _stat_fields(pid)
        if fields and len(fields) > 1 and int(fields[1]) == parent:
            kids.append(pid)
    return kids


def processes_inside(path: Path) -> list[int]:
    """The processes whose root directory is on the subvolume at path: a chroot into it."""
    try:
        device = os.stat(path).st_dev
        if device == os.stat("/proc/self/root").st_dev:
            return []  # amber's own root: never a snapshot to stop
    except OSError:
        return []
    found = []
    for pid in _pids():
        try:
            if os.stat(f"/proc/{pid}/root").st_dev == device:
                found.append(pid)
        except OSError:
            continue
    return found


def kill_processes_inside(path: Path, timeout: float = 10.0) -> list[int]:
    """SIGKILL every process chrooted into the subvolume at path and wait until they are gone;
    returns the ones still there after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = processes_inside(path)
        if not remaining or time.monotonic() > deadline:
            return remaining
        for pid in remaining:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)

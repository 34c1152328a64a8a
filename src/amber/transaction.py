"""Transactions: open → enter → change → close, or abort; the lock; recovery after a crash.

Setting the default subvolume is the single step that commits a transaction. Until then the
new snapshot is only a candidate: any failure, exception or signal deletes it, and a SIGKILL or
power cut leaves at worst an unfinished snapshot that the next amber command removes (the lock
file records which one was in progress).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from amber import btrfs, log
from amber.log import AmberError, ExitCode, die
from amber.snapshots import (
    IN_PROGRESS_KEY,
    SYNCPOINT_NAME,
    Snapshot,
    Store,
    clean_text,
    now_utc,
)

LOCK_NAME = ".amber.lock"
STATE_NAME = ".amber-state.json"


class Options(NamedTuple):
    root: Path
    base: str | None = None  # None: the booted snapshot; "default"; or a number
    description: str | None = None
    drop_if_no_change: bool = False
    wait: bool = False


class Result(NamedTuple):
    number: int | None  # None when the snapshot was dropped
    base: int
    description: str
    dropped: bool = False

    def as_json(self) -> dict[str, Any]:
        return {"snapshot": self.number, "base": self.base, "description": self.description,
                "dropped": self.dropped, "default": self.number if not self.dropped else None}

    def summary(self) -> str:
        if self.dropped:
            return f"nothing changed: the new snapshot was dropped (base {self.base})"
        return (f"snapshot {self.number} is the default for the next boot "
                f"(based on {self.base}); reboot to use it, 'amber rollback' to undo")


# ---- the lock --------------------------------------------------------------------------------

class Lock:
    """An flock on <root>/.snapshots/.amber.lock; the file records the snapshot in progress, so
    that a crashed transaction can be recognized (lock free, record present)."""

    def __init__(self, store: Store, fd: int):
        self.store = store
        self.fd = fd

    def record(self) -> dict[str, Any]:
        os.lseek(self.fd, 0, os.SEEK_SET)
        data = os.read(self.fd, 4096)
        try:
            value = json.loads(data) if data.strip() else {}
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def write(self, **record: Any) -> None:
        data = json.dumps(record).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)
        os.fsync(self.fd)

    def clear(self) -> None:
        os.ftruncate(self.fd, 0)
        os.fsync(self.fd)


def lock_path(store: Store) -> Path:
    return store.dir / LOCK_NAME


def read_lock_record(store: Store) -> tuple[bool, dict[str, Any]]:
    """(held by a live process, record) without taking the lock."""
    try:
        fd = os.open(lock_path(store), os.O_RDONLY)
    except FileNotFoundError:
        return False, {}
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            held = False
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            held = True
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    try:
        record = json.loads(data) if data.strip() else {}
    except ValueError:
        record = {}
    return held, record if isinstance(record, dict) else {}


@contextmanager
def locked(store: Store, wait: bool = False) -> Iterator[Lock]:
    try:
        fd = os.open(lock_path(store), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        die(f"cannot open the lock {lock_path(store)}: {e.strerror}",
            hint="run amber as root on a writable /.snapshots", code=ExitCode.ENVIRONMENT)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock = Lock(store, fd)
            owner = lock.record()
            who = f"pid {owner.get('pid')}" if owner.get("pid") else "another process"
            what = f", snapshot {owner['snapshot']}" if owner.get("snapshot") else ""
            if not wait:
                die(f"another amber transaction ({who}{what}) is running on {store.root}",
                    hint="wait for it to finish, or pass --wait", code=ExitCode.LOCKED)
            log.info(f"waiting for another amber transaction ({who}{what}) to finish…")
            fcntl.flock(fd, fcntl.LOCK_EX)
        lock = Lock(store, fd)
        recover(lock)
        yield lock
    finally:
        os.close(fd)


def recover(lock: Lock) -> None:
    """Remove what a crashed transaction left: its snapshot unless it became the default."""
    record = lock.record()
    number = record.get("snapshot")
    if not isinstance(number, int):
        return
    store = lock.store
    if store.default() == number:
        lock.clear()  # it committed; only the bookkeeping after set-default was lost
        return
    log.warn(f"removing snapshot {number}, left unfinished by an interrupted transaction "
             f"(pid {record.get('pid')})")
    store.delete(number)
    lock.clear()


# ---- state kept next to the snapshots ----------------------------------------------------------

def read_state(store: Store) -> dict[str, Any]:
    try:
        value = json.loads((store.dir / STATE_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def write_state(store: Store, **changes: Any) -> None:
    state = read_state(store)
    state.update(changes)
    path = store.dir / STATE_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def set_default(store: Store, number: int) -> None:
    """Make `number` the next boot's default, remembering the previous one for 'rollback last'."""
    previous = store.default()
    if previous is not None and previous != number:
        write_state(store, previous_default=previous)
    btrfs.sync(store.dir)
    store.set_default(number)
    btrfs.sync(store.dir)


def checkpoint(name: str) -> None:
    """Crash tests stop amber here with SIGKILL, as a power cut would (AMBER_TEST_CRASH_AT)."""
    if os.environ.get("AMBER_TEST_CRASH_AT") == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


# ---- a transaction -----------------------------------------------------------------------------

class Chroot:
    """What the steps of a transaction work with."""

    def __init__(self, store: Store, number: int, base: int):
        self.store = store
        self.number = number
        self.base = base
        self.binds: tuple[tuple[Path, str], ...] = ()

    @property
    def path(self) -> Path:
        return self.store.path(self.number)

    @property
    def root(self) -> Path:
        return self.store.root

    def run(self, argv: Sequence[str], *, step: str, interactive: bool = False,
            env: dict[str, str] | None = None, check: bool = True,
            success: Collection[int] = (0,)) -> int:
        from amber import mounts

        status = mounts.run_in_chroot(self.path, self.root, argv, env=env,
                                      interactive=interactive, binds=self.binds)
        if status not in success and check:
            import shlex

            raise AmberError(
                f"{step} failed: '{shlex.join(argv)}' exited with status {status} "
                f"in snapshot {self.number}",
                hint=f"the snapshot was discarded; the default is unchanged. To look around, "
                     f"'amber shell' opens a new snapshot of {self.base}",
                code=ExitCode.STEP_FAILED)
        return status

    def run_package_manager(self, action: str, arguments: Sequence[str], *, step: str,
                            announce: str | None = None) -> None:
        """The snapshot's package manager carries out action (install, remove, update, up);
        its informational exit statuses (zypper's "reboot needed", ...) succeed with a
        warning. announce: printed before each command, if given."""
        from amber import packages

        notes = packages.success_notes(self.path)
        for argv in packages.commands(self.path, action, arguments):
            if announce:
                log.step(f"{announce}: {' '.join(argv)}")
            status = self.run(argv, step=step, success={0, *notes})
            if status in notes:
                log.warn(notes[status])

    @contextmanager
    def host_files(self, files: Sequence[Path]) -> Iterator[list[str]]:
        """Make host files visible, read-only, at /run/amber/files in the chroot (a tmpfs
        there), without writing them into the snapshot; yields their paths inside."""
        import shutil
        import tempfile

        staging = Path(tempfile.mkdtemp(prefix="amber-files-"))
        try:
            for f in files:
                shutil.copy2(f, staging / f.name)
            self.binds = ((staging, "run/amber/files"),)
            yield [f"/run/amber/files/{f.name}" for f in files]
        finally:
            self.binds = ()
            shutil.rmtree(staging, ignore_errors=True)


def resolve_base(store: Store, base: str | None, booted: int | None,
                 default: int | None) -> int:
    if base is None:
        if booted is None:
            die(f"the system root {store.root} is not mounted from a snapshot",
                hint="pass --continue to start from the default snapshot",
                code=ExitCode.ENVIRONMENT)
        return booted
    if base == "default":
        if default is None:
            die("the default subvolume is not a snapshot", hint="pass --continue N",
                code=ExitCode.ENVIRONMENT)
        return default
    if not base.isdigit():
        die(f"--continue takes a snapshot number, not {base!r}", code=ExitCode.USAGE)
    number = int(base)
    store.require(number)
    return number


def _warn_pending(base: int, booted: int | None, default: int | None, explicit: bool) -> None:
    if explicit or default is None or booted is None or default == booted or default < base:
        return
    log.warn(f"snapshot {default} is the next boot's default and is newer than the booted "
             f"snapshot {booted}; this transaction starts from {booted}, so {default}'s "
             "changes will not be in it",
             hint="to build on top of them, run the same command with --continue")


def _generation(path: Path) -> int:
    btrfs.sync(path)
    return btrfs.generation(path)


def _generations(store: Store, number: int) -> tuple[int, ...]:
    """The snapshot's generation and its /etc subvolume's: a change to either counts."""
    found = [_generation(store.path(number))]
    if store.has_etc_subvolume(number):
        found.append(btrfs.generation(store.etc_path(number)))
    return tuple(found)


def record_fork_point(store: Store, number: int, base: int, booted: int | None) -> None:
    """Keep /etc as it is at the fork, the base of the merge at the first boot of `number`.

    Forked from the running system: a read-only snapshot of the new /etc (a snapshot of the
    running one an instant ago) as etc/etc.syncpoint, holding transactional-update.comparewith
    with the base's number, as transactional-update >= 5 does. Forked from a snapshot that was
    not booted yet (--continue): that snapshot's own sync point, when it has one."""
    from amber.etc.syncpoint import COMPAREWITH

    if not store.has_etc_subvolume(number):
        return
    syncpoint = store.etc_path(number) / SYNCPOINT_NAME
    if base == booted:
        btrfs.create_snapshot(store.etc_path(number), syncpoint)
        marker = syncpoint / COMPAREWITH.decode()
        # durable with the rest: close() syncs the filesystem before it sets the default
        with open(marker, "x", encoding="ascii") as f:
            f.write(f"{base}\n")
        btrfs.set_read_only(syncpoint, True)
        return
    inherited = store.etc_path(base) / SYNCPOINT_NAME
    if inherited.is_dir() and not inherited.is_symlink() and btrfs.is_subvolume(inherited):
        btrfs.create_snapshot(inherited, syncpoint, read_only=True)


Steps = Callable[[Chroot], None]


def execute(options: Options, steps: Steps, description: str) -> Result:
    store = Store(options.root)
    store.check()
    with locked(store, options.wait) as lock:
        booted, default = store.booted(), store.default()
        base = resolve_base(store, options.base, booted, default)
        _warn_pending(base, booted, default, explicit=options.base is not None)
        number = store.allocate()
        lock.write(pid=os.getpid(), snapshot=number, base=base, started=time.time())
        checkpoint("allocated")
        text = clean_text(options.description or description)  # as info.xml will carry it
        log.step(f"snapshot {base} → {number}: {text}")
        try:
            store.create(number, base, Snapshot(
                number=number, date=now_utc(), description=text, cleanup="number",
                userdata={IN_PROGRESS_KEY: "yes", "base": str(base)},
            ), read_only=False)
            record_fork_point(store, number, base, booted)
            chroot = Chroot(store, number, base)
            checkpoint("created")
            before = _generations(store, number) if options.drop_if_no_change else ()
            steps(chroot)
            if options.drop_if_no_change and _generations(store, number) == before:
                log.step(f"nothing changed: dropping snapshot {number}")
                store.delete(number)
                lock.clear()
                return Result(None, base, text, dropped=True)
            checkpoint("changed")
            close(store, number)
        except BaseException as e:
            reason = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            log.step(f"transaction {reason}: deleting snapshot {number}; the default is unchanged")
            abort(store, number)
            lock.clear()
            raise
        lock.clear()
        return Result(number, base, text)


def close(store: Store, number: int) -> None:
    log.step(f"closing snapshot {number}: read-only, default for the next boot")
    store.update(number, {IN_PROGRESS_KEY: None})
    checkpoint("finished")
    store.record_etc_origin(number)
    store.set_read_only(number, True)
    checkpoint("read-only")
    set_default(store, number)
    checkpoint("default")


def abort(store: Store, number: int) -> None:
    try:
        store.delete(number)
    except AmberError as e:
        log.warn(f"could not delete snapshot {number}: {e.message}",
                 hint="'amber cleanup' removes it later")


# ---- the changes a transaction can make ---------------------------------------------------------

def run_command(options: Options, command: Sequence[str]) -> Result:
    from shlex import join as command_line

    def steps(chroot: Chroot) -> None:
        log.step(f"running {command_line(command)}")
        chroot.run(command, step="the command")

    return execute(options, steps, f"amber run {command_line(command)}")


def run_shell(options: Options) -> Result:
    def steps(chroot: Chroot) -> None:
        log.info(f"Shell in snapshot {chroot.number}. Exit with status 0 to keep the changes, "
                 "with any other status ('exit 1') to discard them.")
        shell = "/bin/bash" if (chroot.path / "bin/bash").exists() else "/bin/sh"
        chroot.run([shell], step="the shell", interactive=True,
                   env={"PS1": f"amber:{chroot.number} \\w# "})

    return execute(options, steps, "amber shell")


def run_packages(options: Options, action: str, names: Sequence[str]) -> Result:
    from amber import packages

    files = [Path(n) for n in names if packages.is_package_file(n)]
    for f in files:
        if not f.is_file():
            die(f"package file {f} does not exist", code=ExitCode.NOT_FOUND)

    def steps(chroot: Chroot) -> None:
        with chroot.host_files(files) as inside:
            mapping = dict(zip([str(f) for f in files], inside, strict=True))
            arguments = [mapping.get(n, n) for n in names]
            chroot.run_package_manager(action, arguments, step=f"package {action}",
                                       announce=action)

    label = "amber up" if action == "up" else f"amber pkg {action} {' '.join(names)}"
    return execute(options, steps, label)


def run_initrd(options: Options) -> Result:
    from amber.boot import initrd

    def steps(chroot: Chroot) -> None:
        for argv in initrd.commands(chroot.path):
            log.step(f"regenerating the initrd: {' '.join(argv)}")
            chroot.run(argv, step="initrd regeneration")

    return execute(options, steps, "amber initrd")

"""The lock of a system root, and recovery after a crashed transaction.

One transaction at a time per system root: an flock on <root>/.snapshots/.amber.lock. While a
transaction runs, the file records it: its process (pid, start time, boot) and the snapshot
number it reserved. A record that outlives its process tells the next command that takes the
lock what a crash left behind.

Recovery deletes the recorded snapshot only when it is provably unfinished: its owner is dead,
it is writable and marked in progress in its info.xml (or has no info.xml, or no subvolume yet),
and it is neither booted, nor the default, nor pinned. Anything else it keeps, clearing the
stale record with a warning. Read-only commands never recover: they report what the next
write command will clean (`assess`).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from amber import log
from amber.log import AmberError, ExitCode, die
from amber.signals import critical
from amber.snapshots import Snapshot, Store, parse_info

LOCK_NAME = ".amber.lock"
RECORD_LIMIT = 4096
INFO_LIMIT = 1 << 20
NO_SPACE_HINT = "free space with 'amber cleanup' or 'amber delete N', then try again"


def lock_path(store: Store) -> Path:
    return store.dir / LOCK_NAME


class Lock:
    """The held lock: an open file descriptor with an flock on it, carrying the record."""

    def __init__(self, store: Store, fd: int):
        self.store = store
        self.fd = fd
        self.recovered: list[int] = []  # snapshots the recovery on taking it removed

    def record(self) -> dict[str, Any]:
        return _parse_record(os.pread(self.fd, RECORD_LIMIT, 0))

    def write(self, **record: Any) -> None:
        """Record the transaction in progress (with the process that runs it)."""
        import json  # not at import time: start-up of read-only verbs

        from amber import chroot

        pid = os.getpid()
        data = json.dumps({"pid": pid, "start": chroot.start_time(pid),
                           "boot": chroot.boot_id(), **record}).encode()
        try:
            os.pwrite(self.fd, data, 0)
            os.ftruncate(self.fd, len(data))
            os.fsync(self.fd)
        except OSError as e:
            self._failed("record the transaction in", e)

    def clear(self) -> None:
        try:
            os.ftruncate(self.fd, 0)
            os.fsync(self.fd)
        except OSError as e:
            self._failed("clear", e)

    def _failed(self, what: str, e: OSError) -> None:
        path = lock_path(self.store)
        if e.errno == errno.ENOSPC:
            die(f"cannot {what} {path}: no space left on the filesystem", hint=NO_SPACE_HINT,
                code=ExitCode.NO_SPACE)
        die(f"cannot {what} {path}: {e.strerror}", hint="check the filesystem of /.snapshots",
            code=ExitCode.ENVIRONMENT)


def _parse_record(data: bytes) -> dict[str, Any]:
    import json  # not at import time: start-up of read-only verbs
    try:
        value = json.loads(data) if data.strip() else {}
    except ValueError:
        return {"unreadable": True}
    return value if isinstance(value, dict) else {"unreadable": True}


def _refuse_odd_file(path: Path, mode: int) -> None:
    kind = ("a symbolic link" if stat.S_ISLNK(mode) else "a directory" if stat.S_ISDIR(mode)
            else "not a regular file")
    die(f"the lock {path} is {kind}; amber refuses to use it",
        hint=f"remove {path} (amber creates it again as a plain file)", code=ExitCode.ENVIRONMENT)


def _open(store: Store, *, create: bool) -> int | None:
    """The lock file, opened without following a link (None: it does not exist and create
    is false). A link, a directory or a device there is refused, never written through."""
    path = lock_path(store)
    try:  # a device or a socket is refused before it is opened (opening may do something)
        mode = os.lstat(path).st_mode
        if not stat.S_ISREG(mode):
            _refuse_odd_file(path, mode)
    except FileNotFoundError:
        pass
    except OSError as e:
        die(f"cannot read {path}: {e.strerror}", hint="run amber as root",
            code=ExitCode.ENVIRONMENT)
    flags = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    flags |= os.O_RDWR | os.O_CREAT if create else os.O_RDONLY
    try:
        fd = os.open(path, flags, 0o600)
    except FileNotFoundError:
        if create:
            raise
        return None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            _refuse_odd_file(path, os.lstat(path).st_mode)
        if e.errno == errno.ENOSPC:
            die(f"cannot create the lock {path}: no space left on the filesystem",
                hint=NO_SPACE_HINT, code=ExitCode.NO_SPACE)
        die(f"cannot open the lock {path}: {e.strerror}",
            hint="run amber as root on a writable /.snapshots", code=ExitCode.ENVIRONMENT)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        _refuse_odd_file(path, mode)
    return fd


def read_lock_record(store: Store) -> tuple[bool, dict[str, Any]]:
    """(held by a live process, record) without taking the lock."""
    fd = _open(store, create=False)
    if fd is None:
        return False, {}
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            held = False
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            held = True
        return held, _parse_record(os.pread(fd, RECORD_LIMIT, 0))
    finally:
        os.close(fd)


def _require_store_subvolume(store: Store) -> None:
    from amber import btrfs

    if not btrfs.is_subvolume(store.dir):
        die(f"{store.dir} is a plain directory, not the snapshot store: @/.snapshots is not "
            "mounted there", hint=f"mount the @/.snapshots subvolume at {store.dir}",
            code=ExitCode.ENVIRONMENT)


def _try_lock(fd: int) -> bool:
    """The exclusive lock if it is free, or becomes free within a moment: `amber status` takes
    a shared one for an instant to see whether a transaction runs."""
    for _ in range(10):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            time.sleep(0.02)
    return False


@contextmanager
def locked(store: Store, wait: bool = False) -> Iterator[Lock]:
    """Hold the lock of the store's root (waiting for it, or failing at once with exit 4);
    what a crashed transaction left is recovered first."""
    _require_store_subvolume(store)
    fd = _open(store, create=True)
    assert fd is not None
    try:
        lock = Lock(store, fd)
        if not _try_lock(fd):
            owner = lock.record()
            who = f"pid {owner.get('pid')}" if owner.get("pid") else "another process"
            what = f", snapshot {owner['snapshot']}" if owner.get("snapshot") else ""
            if not wait:
                die(f"another amber transaction ({who}{what}) is running on {store.root}",
                    hint="wait for it to finish, or pass --wait", code=ExitCode.LOCKED)
            log.info(f"waiting for another amber transaction ({who}{what}) to finish…")
            fcntl.flock(fd, fcntl.LOCK_EX)
        recover(lock)
        from amber.boot import menu

        menu.repair(store)
        yield lock
    finally:
        os.close(fd)


# ---- recovery ----------------------------------------------------------------------------------

class Verdict(NamedTuple):
    """What a lock record left by a dead transaction means."""

    number: int | None  # the snapshot it names (None: the record names none)
    unfinished: bool  # provably unfinished: recovery deletes it
    why: str  # why it is kept ("" when there is nothing to say)


def owner_alive(record: dict[str, Any]) -> bool:
    """Whether the process that wrote the record still runs (same pid, start time and boot)."""
    from amber import chroot

    pid = record.get("pid")
    if type(pid) is not int or pid <= 0:
        return False
    boot = record.get("boot")
    if isinstance(boot, str) and boot and boot != chroot.boot_id():
        return False
    started = chroot.start_time(pid)
    if started is None:
        return False
    recorded = record.get("start")
    return not (type(recorded) is int and recorded != started)


def _read_info(path: Path) -> Snapshot | None:
    """info.xml read for a verdict: None when it is not a small regular file that parses."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, INFO_LIMIT + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(data) > INFO_LIMIT:
        return None
    try:
        return parse_info(data.decode("utf-8", errors="replace"), str(path))
    except (AmberError, ValueError):
        return None


def assess(store: Store, record: dict[str, Any], booted: int | None,
           default: int | None) -> Verdict:
    """The verdict on a record whose lock is free. Reads only: it changes nothing."""
    from amber import btrfs
    from amber.snapshots import IN_PROGRESS_KEY

    number = record.get("snapshot")
    if type(number) is not int or number < 1:
        why = "the lock record is unreadable" if record.get("unreadable") else ""
        return Verdict(None, False, why)
    if owner_alive(record):
        return Verdict(number, False, f"pid {record['pid']}, which recorded it, still runs")
    if number == default:
        return Verdict(number, False, "")  # it committed; only the bookkeeping was cut short
    if number == booted:
        return Verdict(number, False, "it is the booted snapshot")
    directory = store.dir / str(number)
    try:
        directory_mode = os.lstat(directory).st_mode
    except FileNotFoundError:
        return Verdict(number, False, "")  # reserved in the record only
    if not stat.S_ISDIR(directory_mode):
        return Verdict(number, False, f"{directory} is not a directory")
    info_path = directory / "info.xml"
    info = _read_info(info_path)
    has_info = os.path.lexists(info_path)
    if has_info and info is None:
        return Verdict(number, False, "its info.xml cannot be read")
    if info is not None and info.pinned:
        return Verdict(number, False, "it is pinned")
    marked = info is None or info.userdata.get(IN_PROGRESS_KEY) == "yes"
    subvolume = directory / "snapshot"
    if not os.path.lexists(subvolume):
        # Reserved, not yet created: the directory holds at most amber's own info.xml.
        if set(os.listdir(directory)) - {"info.xml", "info.xml.tmp"}:
            return Verdict(number, False, f"{directory} holds files amber did not put there")
        return Verdict(number, marked, "" if marked else "its info.xml is not marked in progress")
    if os.path.islink(subvolume) or not btrfs.is_subvolume(subvolume):
        return Verdict(number, False, f"{subvolume} is not a subvolume")
    if btrfs.is_read_only(subvolume):
        return Verdict(number, False, "it is read-only: complete, though it did not become the "
                                      f"default ('amber rollback {number}' makes it so)")
    if not marked:
        return Verdict(number, False, "its info.xml is not marked in progress")
    return Verdict(number, True, "")


def recover(lock: Lock) -> None:
    """Clean up after a crashed transaction: delete its snapshot if provably unfinished, and
    clear the record in any case. Runs with the lock held."""
    record = lock.record()
    if not record:
        return
    store = lock.store
    with critical():
        verdict = assess(store, record, store.booted(), store.default())
        if verdict.unfinished and verdict.number is not None:
            _remove_unfinished(lock, verdict.number, record)
        elif verdict.number is None and verdict.why:
            log.warn(f"{verdict.why} ({lock_path(store)}); cleared it")
        elif verdict.why:
            log.warn(f"the lock record of an interrupted transaction (pid {record.get('pid')}) "
                     f"names snapshot {verdict.number}; kept the snapshot: {verdict.why}",
                     hint="the record is cleared; nothing was deleted")
        lock.clear()


def _remove_unfinished(lock: Lock, number: int, record: dict[str, Any]) -> None:
    from amber import chroot

    store = lock.store
    left = chroot.kill_processes_inside(store.path(number))
    if left:
        die(f"processes of an interrupted transaction still run in snapshot {number}: "
            f"{', '.join(map(str, left))}", hint="stop them, then run the command again",
            code=ExitCode.LOCKED)
    log.warn(f"removing snapshot {number}, left unfinished by an interrupted transaction "
             f"(pid {record.get('pid')})")
    store.delete(number)
    lock.recovered.append(number)

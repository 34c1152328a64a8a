"""Transactions: open → enter → change → close, or abort; the lock; recovery after a crash.

Setting the default subvolume is the single step that commits a transaction. Until then the
new snapshot is only a candidate: any failure, exception or signal deletes it, and a SIGKILL or
power cut leaves at worst an unfinished snapshot that the next amber write command removes (the
lock file records which one was in progress; see lock.py). The steps that must not be cut in half
(reserving the number, committing, aborting) hold SIGINT and SIGTERM until they are done.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from amber import btrfs, log
from amber.lock import NO_SPACE_HINT, Lock
from amber.lock import locked as locked  # the lock of a root, for the other write commands
from amber.log import AmberError, ExitCode, die
from amber.signals import critical
from amber.snapshots import (
    IN_PROGRESS_KEY,
    SYNCPOINT_NAME,
    Snapshot,
    Store,
    clean_text,
    now_utc,
)

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


# ---- state kept next to the snapshots ----------------------------------------------------------

def read_state(store: Store) -> dict[str, Any]:
    import json  # not at import time: start-up of read-only verbs
    try:
        text = (store.dir / STATE_NAME).read_text()
    except (OSError, ValueError):
        return {}

    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def write_state(store: Store, **changes: Any) -> None:
    import json  # not at import time: start-up of read-only verbs

    from amber.state import atomic_write

    state = read_state(store)
    state.update(changes)
    atomic_write(store.dir / STATE_NAME, json.dumps(state))


def set_default(store: Store, number: int) -> None:
    """Make `number` the next boot's default, remembering the previous one for 'rollback last'.
    Once begun, a signal cannot stop it half-way."""
    from amber.boot import menu

    menu.require_bootable(store, number, ExitCode.REFUSED)
    previous = store.default()
    if previous is not None and previous != number:
        write_state(store, previous_default=previous)
    with critical():
        btrfs.sync(store.dir)
        # The menu naming `number` and the default itself land in one btrfs commit (the sync
        # below): GRUB, which reads only committed trees, sees both or neither.
        menu.refresh(store, default=number, commit=False)
        store.set_default(number)
        btrfs.sync(store.dir)


# ---- a transaction -----------------------------------------------------------------------------

class WorkingSnapshot:
    """The new snapshot while its transaction runs: what the steps work with (commands in its
    chroot, the package manager, host files made visible inside)."""

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
        from amber import chroot

        status = chroot.run_in_chroot(self.path, self.root, argv, env=env,
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
    with the base's number, as transactional-update >= 5 does. The marker is written into the
    new /etc first and removed after, so that the sync point is made read-only with it in one
    btrfs commit rather than two; it is durable with the rest (close() syncs before the
    default). Forked from a snapshot that was not booted yet (--continue): that snapshot's own
    sync point, when it has one."""
    from amber.etc.syncpoint import COMPAREWITH

    if not store.has_etc_subvolume(number):
        return
    etc = store.etc_path(number)
    syncpoint = etc / SYNCPOINT_NAME
    if base == booted:
        marker = etc / COMPAREWITH.decode()
        try:
            with open(marker, "x", encoding="ascii") as f:
                f.write(f"{base}\n")
        except OSError as e:
            raise AmberError(f"cannot write {marker}: {e.strerror}",
                             hint=f"remove {marker}: transactional-update keeps that file in "
                                  "the sync point, never in /etc itself") from e
        try:
            btrfs.create_snapshot(etc, syncpoint, read_only=True)
        finally:
            marker.unlink()
        return
    inherited = store.etc_path(base) / SYNCPOINT_NAME
    if inherited.is_dir() and not inherited.is_symlink() and btrfs.is_subvolume(inherited):
        btrfs.create_snapshot(inherited, syncpoint, read_only=True)


def record_etc_at_close(store: Store, number: int) -> None:
    """`amber etc diff`'s reference, /etc as the transaction leaves it. A snapshot that waits
    for a first-boot merge gets it from that merge, which replaces exactly this /etc and keeps
    it (etc.pending): that spares the transaction a btrfs commit. Any other snapshot gets a
    read-only snapshot of its /etc now."""
    if not store.awaits_etc_merge(number):
        store.record_etc_origin(number)


Steps = Callable[[WorkingSnapshot], None]


def execute(options: Options, steps: Steps, description: str) -> Result:
    store = Store(options.root)
    store.check()
    with locked(store, options.wait) as lock:
        booted, default = store.booted(), store.default()
        base = resolve_base(store, options.base, booted, default)
        _warn_pending(base, booted, default, explicit=options.base is not None)
        text = clean_text(options.description or description)  # as info.xml will carry it
        number: int | None = None
        try:
            with critical() as signals:
                number = reserve(store, lock, base)
            if signals:
                raise KeyboardInterrupt
            log.step(f"snapshot {base} → {number}: {text}")
            store.create(number, base, Snapshot(
                number=number, date=now_utc(), description=text, cleanup="number",
                userdata={IN_PROGRESS_KEY: "yes", "base": str(base)},
            ), read_only=False)
            record_fork_point(store, number, base, booted)
            chroot = WorkingSnapshot(store, number, base)
            before = _generations(store, number) if options.drop_if_no_change else ()
            steps(chroot)
            if options.drop_if_no_change and _generations(store, number) == before:
                log.step(f"nothing changed: dropping snapshot {number}")
                with critical():
                    store.delete(number)
                    lock.clear()
                return Result(None, base, text, dropped=True)
            with critical() as signals:
                close(store, number)
                lock.clear()
            if signals:
                log.warn(f"interrupted while committing snapshot {number}; the commit was "
                         "already under way and completed")
        except BaseException as e:
            with critical():
                if number is not None:
                    reason = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
                    log.step(f"transaction {reason}: deleting snapshot {number}; the default "
                             "is unchanged")
                    abort(store, number)
                _clear_quietly(lock)
            raise
        return Result(number, base, text)


def reserve(store: Store, lock: Lock, base: int) -> int:
    """The next snapshot number: recorded in the lock first, then its directory created, so
    that a crash at any point leaves nothing the record does not name."""
    number = max(store.numbers(), default=0) + 1
    while True:
        lock.write(snapshot=number, base=base, started=time.time())
        try:
            (store.dir / str(number)).mkdir()
            return number
        except FileExistsError:
            number += 1
        except OSError as e:
            if e.errno == errno.ENOSPC:
                die("cannot create a snapshot: no space left on the filesystem",
                    hint=NO_SPACE_HINT, code=ExitCode.NO_SPACE)
            die(f"cannot create {store.dir / str(number)}: {e.strerror}",
                hint="check the filesystem of /.snapshots", code=ExitCode.ENVIRONMENT)


def _clear_quietly(lock: Lock) -> None:
    """Clear the record on the way out of a failure, which it must not hide."""
    try:
        lock.clear()
    except AmberError as e:
        log.warn(e.message, hint="the next amber command clears it")


def close(store: Store, number: int) -> None:
    """Read-only first, then the mark off, then the default: a crash before the default leaves
    either an unfinished snapshot (writable, marked) that recovery removes, or a complete one."""
    from amber.boot import menu

    # Before anything is final: a snapshot the boot menu could not boot never becomes the default.
    menu.require_bootable(store, number, ExitCode.STEP_FAILED, closing=True)
    log.step(f"closing snapshot {number}: read-only, default for the next boot")
    # While the root is still writable and marked unfinished: a crash here leaves a snapshot
    # that recovery removes.
    record_etc_at_close(store, number)
    store.set_read_only(number, True)
    store.update(number, {IN_PROGRESS_KEY: None})
    if menu.managed(store):
        from amber import config
        from amber.health import trial

        trial.begin(store, number, config.load(store.root))  # its first boot is a trial
    set_default(store, number)


def abort(store: Store, number: int) -> None:
    from amber import chroot

    try:
        if store.default() == number:  # the commit got through before the failure
            log.warn(f"snapshot {number} is the default already: it was committed, so it stays")
            return
        # Nothing may go on running in it (should the command's supervisor have been killed).
        left = chroot.kill_processes_inside(store.path(number))
        if left:
            log.warn(f"processes {', '.join(map(str, left))} still run in snapshot {number}")
        store.delete(number)
    except AmberError as e:
        log.warn(f"could not delete snapshot {number}: {e.message}",
                 hint="'amber cleanup' removes it later")


def withdraw(store: Store, number: int, default_before: int | None,
             previous_default: int | None) -> None:
    """Undo a commit (a live patch that would not load): default_before is the default again,
    with the same sync order as a commit, and snapshot `number` is deleted."""
    with locked(store, wait=True), critical():
        if default_before is not None and store.exists(default_before):
            set_default(store, default_before)
        write_state(store, previous_default=previous_default)
        abort(store, number)


# ---- the changes a transaction can make ---------------------------------------------------------

# ---- live patch packages (issue 13): a transaction that installs one loads it, as apply does --

def execute_loading_livepatches(options: Options, steps: Steps, description: str,
                                **kernel: Any) -> Result:
    """execute(), and the live patches for the running kernel that the steps install are
    checked, put into the initrd and loaded (amber.livepatch.packaged). kernel: paths=,
    syscalls= of the kernel side (the running kernel by default)."""
    from amber.livepatch import packaged

    return packaged.execute(options, steps, description, **kernel)

# ---- end of live patch packages -------------------------------------------------------------


def run_command(options: Options, command: Sequence[str], **kernel: Any) -> Result:
    from shlex import join as command_line

    def steps(chroot: WorkingSnapshot) -> None:
        log.step(f"running {command_line(command)}")
        chroot.run(command, step="the command")

    return execute_loading_livepatches(options, steps, f"amber run {command_line(command)}",
                                       **kernel)


def run_shell(options: Options) -> Result:
    def steps(chroot: WorkingSnapshot) -> None:
        log.info(f"Shell in snapshot {chroot.number}. Exit with status 0 to keep the changes, "
                 "with any other status ('exit 1') to discard them.")
        shell = "/bin/bash" if (chroot.path / "bin/bash").exists() else "/bin/sh"
        chroot.run([shell], step="the shell", interactive=True,
                   env={"PS1": f"amber:{chroot.number} \\w# "})

    return execute(options, steps, "amber shell")


def run_packages(options: Options, action: str, names: Sequence[str], **kernel: Any) -> Result:
    from amber import packages

    files = [Path(n) for n in names if packages.is_package_file(n)]
    for f in files:
        if not f.is_file():
            die(f"package file {f} does not exist", code=ExitCode.NOT_FOUND)

    def steps(chroot: WorkingSnapshot) -> None:
        with chroot.host_files(files) as inside:
            mapping = dict(zip([str(f) for f in files], inside, strict=True))
            arguments = [mapping.get(n, n) for n in names]
            chroot.run_package_manager(action, arguments, step=f"package {action}",
                                       announce=action)

    label = "amber up" if action == "up" else f"amber pkg {action} {' '.join(names)}"
    return execute_loading_livepatches(options, steps, label, **kernel)


def run_initrd(options: Options) -> Result:
    from amber.boot import initrd

    def steps(chroot: WorkingSnapshot) -> None:
        for argv in initrd.commands(chroot.path):
            log.step(f"regenerating the initrd: {' '.join(argv)}")
            chroot.run(argv, step="initrd regeneration")

    return execute(options, steps, "amber initrd")

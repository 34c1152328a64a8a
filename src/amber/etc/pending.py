"""The merge a new snapshot waits for at its first boot, and what `amber etc` reports.

`merge_pending` runs from the initrd (data/dracut/90amber-etc: the snapshot's own amber in
`chroot /sysroot`, with /.snapshots and /var mounted read-write) before anything reads /etc:

1. the snapshot's /etc holds a sync point (syncpoint.py; amber's and transactional-update's):
   B = the sync point, O = the parent's /etc (`.snapshots/<parent>/snapshot/etc`), T = the
   snapshot's /etc;
2. T is snapshotted to a sibling R (the snapshot's root is made writable for that moment, as
   transactional-update's 50-etc plugin does), merged there (`merge.merge_into`: conflicts are
   stored under /var/lib/amber/etc-merge/<N>/, everything is flushed);
3. R and T are exchanged in one rename; R, now the old T with the real sync point nested in
   it, is deleted, and so is the empty directory the sync point left in the merged /etc, which
   is the marker: a merge that is done never runs again, one that was interrupted before the
   exchange runs again from the start (R is rebuilt), and t-u's own unit does not run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from amber import btrfs, log
from amber.etc.syncpoint import SYNCPOINT, pending_sync
from amber.snapshots import ETC, ETC_ORIGIN, Store

if TYPE_CHECKING:
    from amber.etc.diff import PathChange
    from amber.etc.merge import Conflict, MergeReport

T = TypeVar("T")
CONFLICTS_DIR = "var/lib/amber/etc-merge"  # below the system root; <N>/ per snapshot
WORK_NAME = ".etc.amber-merge"  # R, next to the snapshot's /etc


def conflicts_dir(root: Path, number: int) -> Path:
    return root / CONFLICTS_DIR / str(number)


def _leftover_marker(etc: Path) -> bool:
    """The empty directory a sync point leaves in the merged /etc after the exchange."""
    syncpoint = etc / SYNCPOINT.decode()
    if syncpoint.is_symlink() or not syncpoint.is_dir() or btrfs.is_subvolume(syncpoint):
        return False
    if any(syncpoint.iterdir()):
        return False
    syncpoint.rmdir()
    return True


def _discard(path: Path) -> None:
    if path.is_dir() and not path.is_symlink() and btrfs.is_subvolume(path):
        btrfs.delete_subvolume(path)


def merge_pending(store: Store, number: int) -> MergeReport | None:
    """Merge the admin's edits into snapshot `number`'s /etc if a merge is pending; None when
    there was none."""
    from amber.etc import writer
    from amber.etc.merge import merge_into

    etc = store.etc_path(number)
    if not store.has_etc_subvolume(number):
        return None
    work = store.path(number) / WORK_NAME
    if _leftover_marker(etc):
        _with_writable(store, number, lambda: _discard(work))
        return None
    sync = pending_sync(etc)
    if sync is None:
        return None
    old = store.etc_path(sync.parent)
    if not old.is_dir():
        log.warn(f"snapshot {number}'s /etc was not merged: the /etc of its parent snapshot "
                 f"{sync.parent} is gone", hint=f"the admin's edits since the fork are not in "
                 f"it; compare with 'amber etc diff {number}'")
        _with_writable(store, number, lambda: _drop_syncpoint(etc))
        return None
    log.step(f"merging the /etc of snapshot {sync.parent} into snapshot {number}")

    def run() -> MergeReport:
        _discard(work)
        btrfs.create_snapshot(etc, work)
        try:
            report = merge_into(sync.syncpoint, old, etc, work,
                                conflicts_dir=conflicts_dir(store.root, number))
            writer.exchange(etc, work)
        except BaseException:
            _discard(work)
            raise
        # work is now the /etc as the transaction left it, with the real sync point in it
        _discard(work)
        _leftover_marker(etc)
        btrfs.sync(store.dir)
        return report

    return _with_writable(store, number, run)


def _drop_syncpoint(etc: Path) -> None:
    _discard(etc / SYNCPOINT.decode())


def _with_writable(store: Store, number: int, action: Callable[[], T]) -> T:
    root = store.path(number)
    read_only = btrfs.is_read_only(root)
    if read_only:
        btrfs.set_read_only(root, False)
    try:
        return action()
    finally:
        if read_only:
            btrfs.set_read_only(root, True)


def stored_conflicts(root: Path, number: int) -> tuple[Conflict, ...]:
    from amber.etc.conflicts import load

    return load(conflicts_dir(root, number))


def admin_diff(store: Store, number: int) -> tuple[PathChange, ...]:
    """What changed in snapshot `number`'s /etc since the transaction closed it."""
    from amber.etc.diff import diff

    reference = store.path(number) / ETC_ORIGIN
    if not reference.is_dir():
        log.die(f"snapshot {number} has no record of its /etc at its creation",
                hint="snapshots made before amber kept /etc apart have none; the next "
                     "transaction makes one", code=log.ExitCode.NOT_FOUND)
    return diff(reference, store.path(number) / ETC)

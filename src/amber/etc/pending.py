"""The merge a new snapshot waits for at its first boot, and what `amber etc` reports.

`merge_pending` runs from the initrd (data/dracut/90amber-etc: the snapshot's own amber in
`chroot /sysroot`, with /.snapshots and /var mounted read-write) before anything reads /etc:

1. the snapshot's /etc holds a sync point (syncpoint.py; amber's and transactional-update's):
   B = the sync point, O = the parent's /etc (`.snapshots/<parent>/snapshot/etc`), T = the
   snapshot's /etc;
2. T is snapshotted to a sibling R (the snapshot's root is made writable for that moment, as
   transactional-update's 50-etc plugin does), merged there (`merge.merge_into`: conflicts are
   stored under /var/lib/amber/etc-merge/<N>/, everything is flushed);
3. R and T are exchanged in one rename; R, now the old T, loses the real sync point nested in
   it and becomes the snapshot's reference for `amber etc diff` (usr/lib/amber/etc-origin,
   read-only: /etc as the transaction left it), the root is read-only again, and last the
   empty directory the sync point left in the merged /etc, which is the marker, is removed: a
   merge that is done never runs again, one that was interrupted before the exchange runs
   again from the start (R is rebuilt), one interrupted after it is finished, and t-u's own
   unit does not run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from amber import btrfs, log
from amber.etc.syncpoint import SYNCPOINT, pending_sync
from amber.snapshots import ETC, ETC_ORIGIN, Store

if TYPE_CHECKING:
    from amber.etc.diff import PathChange
    from amber.etc.merge import Conflict, MergeReport

CONFLICTS_DIR = "var/lib/amber/etc-merge"  # below the system root; <N>/ per snapshot
WORK_NAME = ".etc.amber-merge"  # R, next to the snapshot's /etc


def conflicts_dir(root: Path, number: int) -> Path:
    return root / CONFLICTS_DIR / str(number)


def _leftover_marker(etc: Path) -> Path | None:
    """The empty directory a sync point leaves in the merged /etc after the exchange."""
    syncpoint = etc / SYNCPOINT.decode()
    if syncpoint.is_symlink() or not syncpoint.is_dir() or btrfs.is_subvolume(syncpoint):
        return None
    if any(syncpoint.iterdir()):
        return None
    return syncpoint


def _discard(path: Path) -> None:
    if _is_subvolume(path):
        btrfs.delete_subvolume(path)


def merge_pending(store: Store, number: int) -> MergeReport | None:
    """Merge the admin's edits into snapshot `number`'s /etc if a merge is pending; None when
    there was none (or when only the end of an interrupted one was left to do)."""
    etc = store.etc_path(number)
    if not store.has_etc_subvolume(number):
        return None
    work = store.path(number) / WORK_NAME
    marker = _leftover_marker(etc)
    if marker is not None:  # merged, and the power went before the end
        _finish(store, number, work, marker)
        return None
    sync = pending_sync(etc)
    if sync is None:
        return None
    old = store.etc_path(sync.parent)
    if not old.is_dir():
        log.warn(f"snapshot {number}'s /etc was not merged: the /etc of its parent snapshot "
                 f"{sync.parent} is gone", hint=f"the admin's edits since the fork are not in "
                 f"it; compare with 'amber etc diff {number}'")
        _discard(etc / SYNCPOINT.decode())  # /etc is writable: the root need not be
        _writable(store, number)
        try:
            store.record_etc_origin(number)  # etc diff's reference, as no merge makes one
        finally:
            store.set_read_only(number, True)
        return None
    if _mounted(etc):
        log.die(f"snapshot {number}'s /etc is mounted, in use by the running system: its merge "
                "runs in the initrd, before anything reads /etc",
                hint=f"the edits that were not merged are in snapshot {sync.parent}'s /etc "
                     f"({old}); copy what is needed by hand", code=log.ExitCode.REFUSED)
    log.step(f"merging the /etc of snapshot {sync.parent} into snapshot {number}")
    return _merge(store, number, sync.syncpoint, old, work)


def _mounted(etc: Path) -> bool:
    """Whether the subvolume at etc is mounted somewhere (the running system's /etc): the
    rename that swaps the merged copy in would fail (EBUSY) after all the work. A subvolume is
    not a mount point by itself (os.path.ismount says it is: its st_dev differs), so the mount
    table is read: a btrfs mount of the same subvolume path from the same device."""
    wanted = "/" + btrfs.subvolume_path(etc)
    where = os.path.realpath(etc)
    mounts = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                if "-" not in fields[6:]:
                    continue
                tail = fields.index("-", 6)
                mounts.append((_unescape(fields[3]), _unescape(fields[4]),
                               fields[tail + 1], fields[tail + 2]))
    except OSError:
        return False
    holding = [m for m in mounts if where == m[1] or where.startswith(m[1].rstrip("/") + "/")]
    if not holding:
        return False
    device = max(holding, key=lambda m: len(m[1]))[3]
    return any(root == wanted and kind == "btrfs" and source == device
               for root, _, kind, source in mounts)


def _unescape(field: str) -> str:
    """A path as mountinfo writes it (space, tab, newline and backslash as octal escapes)."""
    if "\\" not in field:
        return field
    import re

    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def _merge(store: Store, number: int, base: Path, old: Path, work: Path) -> MergeReport:
    from amber.etc import writer
    from amber.etc.merge import merge_into

    etc = store.etc_path(number)
    _writable(store, number)
    try:
        _discard(work)  # left by a merge interrupted before the exchange
        btrfs.create_snapshot(etc, work)
        report = merge_into(base, old, etc, work, conflicts_dir=conflicts_dir(store.root, number))
        writer.exchange(etc, work)
    except BaseException:
        try:
            _discard(work)
        finally:
            store.set_read_only(number, True)
        raise
    # work is now the /etc as the transaction left it, with the real sync point in it
    _finish(store, number, work, _leftover_marker(etc))
    return report


def _writable(store: Store, number: int) -> None:
    """The snapshot's root writable for a moment, to add or remove a subvolume next to its
    /etc, as transactional-update's 50-etc plugin does."""
    if store.is_read_only(number):
        store.set_read_only(number, False)


def _finish(store: Store, number: int, work: Path, marker: Path | None) -> None:
    """The end of a merge, in an order that a power cut at any point leaves to the next boot:
    the old /etc kept as `amber etc diff`'s reference, the root read-only again, and only then
    the marker removed. A snapshot that waits for its merge was closed read-only by its
    transaction (amber's or transactional-update's): it is made read-only whatever a cut merge
    left it."""
    _keep_as_reference(store, number, work)
    if not store.is_read_only(number):
        store.set_read_only(number, True)
    if marker is not None:
        marker.rmdir()
    btrfs.sync(store.dir)


def _keep_as_reference(store: Store, number: int, work: Path) -> None:
    """The /etc the merge replaced is the snapshot's /etc as its transaction left it: moved to
    ETC_ORIGIN (a rename, no copy) without its sync point, and made read-only. The transaction
    made no reference of its own for a snapshot that waits for this merge."""
    origin = store.path(number) / ETC_ORIGIN
    if _is_subvolume(work):
        _discard(work / SYNCPOINT.decode())  # the real one: work is writable
        _writable(store, number)
        if _is_subvolume(origin):
            _discard(work)  # one is there already (made at close)
        else:
            if origin.is_dir() and not origin.is_symlink():
                origin.rmdir()  # the base's reference, shown in the root as an empty directory
            origin.parent.mkdir(parents=True, exist_ok=True)
            work.rename(origin)  # read-only after: a read-only one cannot change its parent
    if _is_subvolume(origin) and not btrfs.is_read_only(origin):
        btrfs.set_read_only(origin, True)


def _is_subvolume(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and btrfs.is_subvolume(path)


def stored_conflicts(root: Path, number: int) -> tuple[Conflict, ...]:
    from amber.etc.conflicts import load

    return load(conflicts_dir(root, number))


def admin_diff(store: Store, number: int) -> tuple[PathChange, ...]:
    """What changed in snapshot `number`'s /etc since its transaction closed it."""
    from amber.etc.diff import diff

    reference = store.path(number) / ETC_ORIGIN
    if not _is_subvolume(reference):
        if store.awaits_etc_merge(number) and number == store.booted():
            log.die(f"snapshot {number}'s first-boot merge did not run (see 'amber status' and "
                    "the boot log): that merge keeps its /etc as the transaction left it, the "
                    "reference of this diff", hint="'amber etc diff' of its parent snapshot "
                    "shows the edits that were not carried over", code=log.ExitCode.NOT_FOUND)
        if store.awaits_etc_merge(number):
            log.die(f"snapshot {number} has not been booted yet: the merge at its first boot "
                    "keeps its /etc as the transaction left it, the reference of this diff",
                    hint="'amber etc diff' of the booted snapshot shows the edits that merge "
                         "carries over", code=log.ExitCode.NOT_FOUND)
        log.die(f"snapshot {number} has no record of its /etc at its creation",
                hint="snapshots made before amber kept /etc apart have none; the next "
                     "transaction makes one", code=log.ExitCode.NOT_FOUND)
    return diff(reference, store.path(number) / ETC)

"""The on-disk layout of an amber system, and how to create and mount it.

btrfs top level (id 5)
└── @                      never mounted itself
    ├── .snapshots         mounted at /.snapshots; <N>/snapshot and <N>/info.xml
    └── var, home, root, opt, srv, usr/local   writable, shared by every snapshot

Each snapshot's /etc is its own writable subvolume nested in the snapshot (<N>/snapshot/etc),
as transactional-update >= 5 lays it out: the rest of the snapshot is read-only, /etc can be
edited on the booted system and rolls back with its snapshot. A transaction snapshots the base's
/etc into the new snapshot's (snapshots.carry_etc); the booted system mounts it read-write from
the initrd (data/dracut/90amber-etc), which also merges the admin's edits into a new snapshot at
its first boot (amber.etc).

Package databases live inside the snapshot (/usr/lib/sysimage/<db>), so that a rollback rolls
them back too; /var/lib/dpkg and /var/lib/rpm are symbolic links to them, as SUSE does for rpm.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from amber import btrfs
from amber.run import run
from amber.snapshots import ETC, Snapshot, Store, make_etc_subvolume, now_utc
from amber.snapshots import SHARED_SUBVOLUMES as SHARED_SUBVOLUMES  # re-exported

CONTAINER = "@"
# (path inside the root, where it lives inside the snapshot)
PACKAGE_DATABASES = (
    ("var/lib/dpkg", "usr/lib/sysimage/dpkg"),
    ("var/lib/rpm", "usr/lib/sysimage/rpm"),
)


def first_snapshot_path(top: Path) -> Path:
    return top / CONTAINER / ".snapshots" / "1" / "snapshot"


def create_skeleton(top: Path) -> Path:
    """On an empty filesystem mounted at its top level, create @, @/.snapshots and snapshot 1.

    Returns the (still writable, empty) root of snapshot 1 for the caller to fill.
    """
    container = top / CONTAINER
    btrfs.create_subvolume(container)
    btrfs.create_subvolume(container / ".snapshots")
    (container / ".snapshots" / "1").mkdir()
    snapshot = first_snapshot_path(top)
    btrfs.create_subvolume(snapshot)
    return snapshot


def _move_tree_contents(source: Path, dest: Path) -> None:
    """Move what is inside source into dest, across subvolumes (a rename cannot)."""
    entries = list(source.iterdir())
    if not entries:
        return
    run(["cp", "-a", "--reflink=auto", *[str(e) for e in entries], str(dest) + "/"])
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def relocate_package_databases(rootfs: Path) -> None:
    """Move package databases from /var into the snapshot and leave links behind."""
    for in_var, in_snapshot in PACKAGE_DATABASES:
        old = rootfs / in_var
        new = rootfs / in_snapshot
        if old.is_symlink() or not old.is_dir():
            continue
        new.parent.mkdir(parents=True, exist_ok=True)
        os.rename(old, new)
        link = os.path.relpath(new, old.parent)
        old.symlink_to(link)


def finish(top: Path, description: str = "first root filesystem",
           skip: tuple[str, ...] = ()) -> None:
    """Split the shared subvolumes off snapshot 1 (but `skip`, which stay mounts of their own),
    close it and make it the default."""
    container = top / CONTAINER
    snapshot = first_snapshot_path(top)
    relocate_package_databases(snapshot)
    for name in SHARED_SUBVOLUMES:
        if name in skip:
            (snapshot / name).mkdir(parents=True, exist_ok=True)
            continue
        shared = container / name
        shared.parent.mkdir(parents=True, exist_ok=True)
        btrfs.create_subvolume(shared)
        inside = snapshot / name
        if inside.is_dir() and not inside.is_symlink():
            _move_tree_contents(inside, shared)
        else:
            inside.mkdir(parents=True, exist_ok=True)
    # The snapshot keeps the links to its package databases too, for readers without /var.
    for in_var, in_snapshot in PACKAGE_DATABASES:
        if (snapshot / in_snapshot).is_dir():
            link = snapshot / in_var
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(os.path.relpath(snapshot / in_snapshot, link.parent))
    _point_rpm_at_its_database(snapshot)
    (snapshot / ".snapshots").mkdir(exist_ok=True)
    (snapshot / ETC).mkdir(exist_ok=True)
    make_etc_subvolume(snapshot / ETC)
    store = Store(container)
    store.write_info(Snapshot(number=1, date=now_utc(), description=description,
                              userdata={"important": "yes"}))
    store.record_etc_origin(1)
    btrfs.set_read_only(snapshot, True)
    btrfs.set_default_subvolume(top, btrfs.subvolume_id(snapshot))
    btrfs.sync(top)


def _point_rpm_at_its_database(snapshot: Path) -> None:
    """Debian's rpm keeps its database in ~/.rpmdb unless told otherwise; on an amber system
    it belongs in the snapshot, like dpkg's."""
    if not (snapshot / "usr/lib/sysimage/rpm").is_dir():
        return
    macros = snapshot / "etc/rpm/macros"
    if macros.exists() and "_dbpath" in macros.read_text():
        return
    macros.parent.mkdir(parents=True, exist_ok=True)
    with open(macros, "a") as f:
        f.write("%_dbpath /usr/lib/sysimage/rpm\n")

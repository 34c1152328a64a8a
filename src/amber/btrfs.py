"""btrfs through libbtrfsutil: the only module that touches btrfs ioctls.

Every function takes paths and ids and translates btrfsutil's errors into amber's.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from amber.log import AmberError, ExitCode

TOP_LEVEL_ID = 5
T = TypeVar("T")


def _btrfsutil() -> Any:
    try:
        import btrfsutil
    except ImportError as e:
        raise AmberError(
            "the Python bindings of libbtrfsutil are not installed",
            hint="install python3-btrfsutil (Debian) or 'pip install btrfsutil==6.10'",
            code=ExitCode.ENVIRONMENT,
        ) from e
    return btrfsutil


@contextmanager
def _translated(what: str, path: Path | str) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        code = e.errno
        if code == errno.ENOSPC:
            raise AmberError(
                f"{what} failed: no space left on the filesystem of {path}",
                hint="free space with 'amber cleanup' or 'amber delete N', then try again",
                code=ExitCode.NO_SPACE,
            ) from e
        if code in (errno.ENOTTY, errno.EINVAL, errno.ENOTSUP) and "not a btrfs" in str(e).lower():
            raise AmberError(
                f"{path} is not on btrfs", hint="amber manages btrfs roots only",
                code=ExitCode.ENVIRONMENT,
            ) from e
        if code == errno.EPERM or code == errno.EACCES:
            raise AmberError(
                f"{what} failed: permission denied on {path}", hint="run amber as root",
                code=ExitCode.ENVIRONMENT,
            ) from e
        if code == errno.EROFS:
            raise AmberError(
                f"{what} failed: {path} is on a read-only filesystem",
                hint="remount the filesystem read-write", code=ExitCode.ENVIRONMENT,
            ) from e
        raise AmberError(f"{what} failed on {path}: {os.strerror(code or 0)}") from e


def _call(what: str, path: Path | str, fn: Callable[[], T]) -> T:
    with _translated(what, path):
        return fn()


def is_btrfs(path: Path) -> bool:
    # statfs's f_type is not in os.statvfs; ask libbtrfsutil instead, which fails off btrfs.
    try:
        _btrfsutil().subvolume_id(str(path))
    except Exception:
        return False
    return True


def is_subvolume(path: Path) -> bool:
    try:
        return bool(_btrfsutil().is_subvolume(str(path)))
    except Exception:
        return False


def subvolume_id(path: Path) -> int:
    bu = _btrfsutil()
    return int(_call("reading the subvolume id", path, lambda: bu.subvolume_id(str(path))))


def subvolume_path(fs_path: Path, subvol_id: int = 0) -> str:
    """The path of a subvolume relative to the top level (id 5), e.g. '@/.snapshots/3/snapshot'.

    With subvol_id 0, the subvolume that contains fs_path."""
    bu = _btrfsutil()
    what = "reading a subvolume path"
    return str(_call(what, fs_path, lambda: bu.subvolume_path(str(fs_path), subvol_id)))


def create_subvolume(path: Path) -> None:
    bu = _btrfsutil()
    _call("creating a subvolume", path, lambda: bu.create_subvolume(str(path)))


def create_snapshot(source: Path, dest: Path, *, read_only: bool = False) -> None:
    bu = _btrfsutil()
    what = "creating a snapshot"
    _call(what, dest, lambda: bu.create_snapshot(str(source), str(dest), read_only=read_only))


def delete_subvolume(path: Path) -> None:
    bu = _btrfsutil()
    # recursive: package scripts may have created subvolumes inside a snapshot.
    _call("deleting a subvolume", path, lambda: bu.delete_subvolume(str(path), recursive=True))


def is_read_only(path: Path) -> bool:
    bu = _btrfsutil()
    what = "reading a subvolume flag"
    return bool(_call(what, path, lambda: bu.get_subvolume_read_only(str(path))))


def set_read_only(path: Path, read_only: bool) -> None:
    bu = _btrfsutil()
    what = "setting the read-only flag"
    _call(what, path, lambda: bu.set_subvolume_read_only(str(path), read_only))


def default_subvolume(fs_path: Path) -> int:
    bu = _btrfsutil()
    what = "reading the default subvolume"
    return int(_call(what, fs_path, lambda: bu.get_default_subvolume(str(fs_path))))


def set_default_subvolume(fs_path: Path, subvol_id: int) -> None:
    bu = _btrfsutil()
    what = "setting the default subvolume"
    _call(what, fs_path, lambda: bu.set_default_subvolume(str(fs_path), subvol_id))


def sync(fs_path: Path) -> None:
    bu = _btrfsutil()
    _call("syncing the filesystem", fs_path, lambda: bu.sync(str(fs_path)))


def generation(path: Path) -> int:
    """The transaction id of the subvolume's last change (call sync first to see recent ones)."""
    bu = _btrfsutil()
    info = _call("reading subvolume info", path, lambda: bu.subvolume_info(str(path)))
    return int(info.generation)


def created_generation(path: Path) -> int:
    """The transaction id in which the subvolume was created (its otransid)."""
    bu = _btrfsutil()
    info = _call("reading subvolume info", path, lambda: bu.subvolume_info(str(path)))
    return int(info.otransid)


def subvolumes_below(path: Path) -> dict[str, bool]:
    """Every subvolume below path (relative path → read-only), from one search of the tree
    instead of a call per subvolume."""
    bu = _btrfsutil()

    def collect() -> dict[str, bool]:
        with bu.SubvolumeIterator(str(path), info=True) as subvolumes:
            return {name: bool(info.flags & 1) for name, info in subvolumes}

    return _call("listing subvolumes", path, collect)


def has_nested_subvolumes(path: Path) -> bool:
    """Whether any subvolume lies below the subvolume at path."""
    bu = _btrfsutil()

    def search() -> bool:
        with bu.SubvolumeIterator(str(path)) as subvolumes:
            return any(True for _ in subvolumes)

    return _call("listing subvolumes", path, search)

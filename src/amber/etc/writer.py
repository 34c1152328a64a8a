"""Writing entries into a tree with the same care as reading them (tree.py): every operation is
relative to a directory fd reached with O_NOFOLLOW, so nothing is written through a symlink.

Attributes are set in the order that keeps them: owner first (chown clears setuid, setgid and
security.capability), then the extended attributes (an access ACL also sets the group bits of
the mode), then the mode. A directory's attributes are set after its contents were written
(`Deferred`), so a read-only directory can still be filled.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from amber.etc.tree import (
    DIR_FLAGS,
    FORMAT,
    SPECIAL,
    Entry,
    Kind,
    Parents,
    Tree,
    TreeError,
    decode,
    inside,
    kind_of,
    open_dir,
    opened_root,
    parent_of,
    read_file,
    split,
    subtree,
    xattrs_of,
)

_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Deferred:
    """Directories whose attributes are set last, deepest first."""

    def __init__(self, root_fd: int):
        self.root_fd = root_fd
        self.dirs: list[tuple[bytes, Entry]] = []

    def add(self, path: bytes, entry: Entry) -> None:
        self.dirs.append((path, entry))

    def finish(self) -> None:
        for path, entry in sorted(self.dirs, key=lambda item: -item[0].count(b"/")):
            with parent_of(self.root_fd, path) as (dir_fd, name):
                set_attributes(dir_fd, name, entry)
        self.dirs.clear()


def lstat_kind(dir_fd: int, name: bytes) -> Kind | None:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return kind_of(st.st_mode)


def remove(dir_fd: int, name: bytes) -> None:
    """Remove name and, for a directory, everything below it (no recursion: deep trees work)."""
    kind = lstat_kind(dir_fd, name)
    if kind is None:
        return
    if kind is not Kind.DIR:
        os.unlink(name, dir_fd=dir_fd)
        return
    stack: list[tuple[int, bytes, int]] = [(os.dup(dir_fd), name, open_dir(dir_fd, name))]
    try:
        while stack:
            parent, current, fd = stack[-1]
            child_dir = None
            with os.scandir(fd) as entries:
                for entry in entries:
                    child = os.fsencode(entry.name)
                    if entry.is_dir(follow_symlinks=False):
                        child_dir = child
                        break
                    os.unlink(child, dir_fd=fd)
            if child_dir is not None:
                stack.append((os.dup(fd), child_dir, open_dir(fd, child_dir)))
                continue
            os.close(fd)
            os.rmdir(current, dir_fd=parent)
            os.close(parent)
            stack.pop()
    finally:
        for parent, _, fd in stack:
            os.close(fd)
            os.close(parent)


def set_xattrs(target: int | bytes, wanted: tuple[tuple[str, bytes], ...]) -> None:
    """Make the extended attributes of an fd (or of a bare name in the working directory)
    exactly `wanted`."""
    follow = isinstance(target, int)
    current = dict(xattrs_of(target))
    goal = dict(wanted)
    for name in current:
        if name not in goal:
            os.removexattr(target, name, follow_symlinks=follow)
    for name, value in wanted:
        if current.get(name) != value:
            os.setxattr(target, name, value, follow_symlinks=follow)


def _set_fd_attributes(fd: int, entry: Entry) -> None:
    st = os.fstat(fd)
    if (st.st_uid, st.st_gid) != (entry.uid, entry.gid):
        os.fchown(fd, entry.uid, entry.gid)
    set_xattrs(fd, entry.xattrs)
    os.fchmod(fd, entry.mode)


def set_attributes(dir_fd: int, name: bytes, entry: Entry) -> None:
    """Owner, extended attributes and mode of an existing entry of entry's kind."""
    if entry.kind in (Kind.FILE, Kind.DIR):
        flags = DIR_FLAGS if entry.kind is Kind.DIR else os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
        fd = os.open(name, flags | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            _set_fd_attributes(fd, entry)
        finally:
            os.close(fd)
        return
    os.chown(name, entry.uid, entry.gid, dir_fd=dir_fd, follow_symlinks=False)
    with inside(dir_fd):
        set_xattrs(name, entry.xattrs)
    if entry.kind is not Kind.SYMLINK:  # a symlink's mode is always 0777 on Linux
        if lstat_kind(dir_fd, name) is not entry.kind:
            raise TreeError(f"{decode(name)} changed while it was written")
        os.chmod(name, entry.mode, dir_fd=dir_fd)


def write_file(dir_fd: int, name: bytes, content: bytes, entry: Entry) -> None:
    """A regular file with content and entry's attributes, replacing whatever name was."""
    temporary = b".#amber-" + os.urandom(8).hex().encode()
    _new_file(dir_fd, temporary, content, entry)
    if lstat_kind(dir_fd, name) is Kind.DIR:
        remove(dir_fd, name)
    os.rename(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def _new_file(dir_fd: int, name: bytes, content: bytes, entry: Entry) -> None:
    fd = os.open(name, _WRITE_FLAGS, 0o600, dir_fd=dir_fd)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view):]
        _set_fd_attributes(fd, entry)
    except BaseException:
        os.close(fd)
        os.unlink(name, dir_fd=dir_fd)
        raise
    os.close(fd)


def create(dir_fd: int, name: bytes, entry: Entry, content: bytes | None,
           deferred: Deferred, path: bytes) -> None:
    """A new entry where nothing is (a directory gets its attributes through `deferred`)."""
    if entry.kind is Kind.DIR:
        os.mkdir(name, 0o700, dir_fd=dir_fd)
        deferred.add(path, entry)
    elif entry.kind is Kind.FILE:
        assert content is not None
        _new_file(dir_fd, name, content, entry)
    elif entry.kind is Kind.SYMLINK:
        assert entry.target is not None
        os.symlink(entry.target, name, dir_fd=dir_fd)
        set_attributes(dir_fd, name, entry)
    else:
        assert entry.kind in SPECIAL
        os.mknod(name, FORMAT[entry.kind] | 0o600, entry.rdev, dir_fd=dir_fd)
        set_attributes(dir_fd, name, entry)


def copy_entries(source_fd: int, source: Tree, path: bytes, target_fd: int,
                 deferred: Deferred) -> None:
    """Copy path and everything below it from the source tree to the same place under
    target_fd, whose parent directory must exist."""
    copy_all(source_fd, subtree(source, path), target_fd, deferred)


def copy_all(source_fd: int, entries: Iterable[tuple[bytes, Entry]], target_fd: int,
             deferred: Deferred) -> None:
    """Create the given entries (parents before children) under target_fd with the contents
    read from source_fd, checked against the scanned digests."""
    with Parents(target_fd) as parents:
        for path, entry in entries:
            content = None
            if entry.kind is Kind.FILE:
                content = read_file(source_fd, path, entry.digest)
            dir_fd, name = parents.of(path)
            create(dir_fd, name, entry, content, deferred, path)


def make_parents(root_fd: int, path: bytes) -> None:
    """The missing directories above path, as private (0700) containers."""
    fd = os.dup(root_fd)
    try:
        for component in path.split(b"/")[:-1]:
            try:
                child = os.open(component, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                os.mkdir(component, 0o700, dir_fd=fd)
                child = os.open(component, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)


def copy_tree(source: Path, source_tree: Tree, target: Path) -> None:
    """A full copy of a scanned tree into a new directory target (its parent must exist)."""
    os.mkdir(target, 0o700)
    with opened_root(source) as source_fd, opened_root(target) as target_fd:
        deferred = Deferred(target_fd)
        ordered = ((path, source_tree[path]) for path in sorted(source_tree, key=split))
        copy_all(source_fd, ordered, target_fd, deferred)
        deferred.finish()
        root = os.fstat(source_fd)
        root_entry = Entry(Kind.DIR, stat.S_IMODE(root.st_mode), root.st_uid, root.st_gid,
                           xattrs_of(source_fd))
        _set_fd_attributes(target_fd, root_entry)


def syncfs(fd: int) -> None:
    """Flush the filesystem holding fd (one call instead of an fsync per file written)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syncfs(fd) != 0:
        error = ctypes.get_errno()
        raise TreeError(f"syncfs failed: {os.strerror(error)}")


def exchange(a: Path, b: Path) -> None:
    """Swap two paths atomically (renameat2 RENAME_EXCHANGE): at every instant each name holds
    one complete tree. Both must be on one filesystem."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    rename_exchange = 2
    at_fdcwd = -100
    try:
        renameat2 = libc.renameat2
    except AttributeError as e:
        raise TreeError("this C library has no renameat2",
                        hint="the merge needs glibc 2.28 or later") from e
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) != 0:
        error = ctypes.get_errno()
        raise TreeError(f"cannot exchange {a} and {b}: {os.strerror(error)}",
                        hint="both must exist on one filesystem")

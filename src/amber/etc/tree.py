"""A snapshot of a directory tree as lstat sees it, read without ever following a symlink.

Every directory is opened relative to its parent's file descriptor with O_NOFOLLOW, so a symlink
inside the tree is read as a symlink and never traversed, however the tree changes meanwhile;
paths longer than PATH_MAX work. Files are opened with O_NOFOLLOW | O_NONBLOCK (a fifo swapped in
cannot block) and checked to be the inode lstat saw. Files and directories are opened with
O_NOATIME where allowed, so reading /etc does not change their access times (readlink(2) has no
such flag: a symlink's access time may change).

An Entry holds what the merge compares: type, permission bits, owner, group, every extended
attribute (security.selinux, the POSIX ACLs system.posix_acl_access/default, user.*, ...), the
SHA-256 of a file's contents, a symlink's target, a device's number. mtime, atime, ctime, size
and inode numbers are not part of it. Paths are bytes relative to the tree's root, components
joined by b"/"; the root itself is not an entry.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from amber.log import AmberError, ExitCode

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NOATIME = getattr(os, "O_NOATIME", 0)
_CHUNK = 1 << 20


class Kind(enum.StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    FIFO = "fifo"
    SOCKET = "socket"
    CHAR = "char-device"
    BLOCK = "block-device"


SPECIAL = frozenset({Kind.FIFO, Kind.SOCKET, Kind.CHAR, Kind.BLOCK})
_KINDS = {stat.S_IFREG: Kind.FILE, stat.S_IFDIR: Kind.DIR, stat.S_IFLNK: Kind.SYMLINK,
          stat.S_IFIFO: Kind.FIFO, stat.S_IFSOCK: Kind.SOCKET, stat.S_IFCHR: Kind.CHAR,
          stat.S_IFBLK: Kind.BLOCK}
FORMAT = {kind: fmt for fmt, kind in _KINDS.items()}


class TreeError(AmberError):
    """A tree could not be read or written as planned (it changed, or the filesystem refused)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message, hint=hint, code=ExitCode.ERROR)


class Entry(NamedTuple):
    """One path's type and attributes (a NamedTuple: thousands are made per merge)."""

    kind: Kind
    mode: int  # permission bits with setuid, setgid and sticky
    uid: int
    gid: int
    xattrs: tuple[tuple[str, bytes], ...] = ()  # sorted by name
    digest: bytes | None = None  # SHA-256 of the contents (files)
    target: bytes | None = None  # symlinks
    rdev: int = 0  # character and block devices

    def attributes(self) -> dict[str, object]:
        """Every attribute the merge treats on its own, by name (absent ones are missing)."""
        found: dict[str, object] = {"mode": self.mode, "uid": self.uid, "gid": self.gid}
        found.update((f"xattr:{name}", value) for name, value in self.xattrs)
        if self.kind is Kind.FILE:
            found["content"] = self.digest
        elif self.kind is Kind.SYMLINK:
            found["target"] = self.target
        elif self.kind in (Kind.CHAR, Kind.BLOCK):
            found["rdev"] = self.rdev
        return found


Tree = dict[bytes, Entry]


def differences(a: Entry, b: Entry) -> tuple[str, ...]:
    """The names of what differs between two entries ("type" when the kinds differ)."""
    if a.kind is not b.kind:
        return ("type",)
    mine, theirs = a.attributes(), b.attributes()
    names = sorted(set(mine) | set(theirs), key=_attribute_order)
    return tuple(name for name in names if mine.get(name) != theirs.get(name))


def _attribute_order(name: str) -> tuple[int, str]:
    fixed = ("content", "target", "rdev", "mode", "uid", "gid")
    return (fixed.index(name), "") if name in fixed else (len(fixed), name)


def kind_of(mode: int) -> Kind:
    return _KINDS[stat.S_IFMT(mode)]


def decode(path: bytes) -> str:
    """A path for messages and JSON (undecodable bytes as surrogates: os.fsencode inverts it)."""
    return os.fsdecode(path) if path else "."


# ---- reading -------------------------------------------------------------------------------


def open_root(root: Path) -> int:
    try:
        return os.open(root, DIR_FLAGS)
    except OSError as e:
        raise TreeError(f"cannot open {root} as a directory: {e.strerror}",
                        hint="every tree of the merge must be a directory, not a symlink") from e


@contextlib.contextmanager
def opened_root(root: Path) -> Iterator[int]:
    fd = open_root(root)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def parent_of(root_fd: int, path: bytes) -> Iterator[tuple[int, bytes]]:
    """(fd of the directory holding path, its last component), walked with O_NOFOLLOW."""
    *dirs, name = path.split(b"/")
    fd = os.dup(root_fd)
    try:
        for component in dirs:
            child = os.open(component, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        yield fd, name
    finally:
        os.close(fd)


class Parents:
    """Like parent_of for many paths in parent-first order: the directory last reached stays
    open, so the next path in it or below it costs no walk from the root."""

    def __init__(self, root_fd: int):
        self.root_fd = root_fd
        self.path: bytes | None = None
        self.fd = -1

    def __enter__(self) -> Parents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.path is not None:
            os.close(self.fd)
            self.path = None

    def of(self, path: bytes) -> tuple[int, bytes]:
        """(fd of the directory holding path, its last component)."""
        parent, _, name = path.rpartition(b"/")
        if parent == self.path:
            return self.fd, name
        if self.path is not None and (parent.startswith(self.path + b"/") or not self.path):
            start, rest = self.fd, parent[len(self.path):].lstrip(b"/")
        else:
            start, rest = self.root_fd, parent
        fd = os.dup(start)
        try:
            for component in rest.split(b"/") if rest else ():
                child = os.open(component, DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        self.close()
        self.fd, self.path = fd, parent
        return fd, name


def open_file(dir_fd: int, name: bytes) -> int:
    """A regular file for reading, checked to be one (never a symlink, a fifo or a device)."""
    try:
        fd = os.open(name, FILE_FLAGS | _NOATIME, dir_fd=dir_fd)
    except PermissionError:
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)  # O_NOATIME needs the file's owner
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise TreeError(f"{decode(name)} is no longer a regular file",
                        hint="something changed the tree during the merge; run it again")
    return fd


def open_dir(dir_fd: int, name: bytes) -> int:
    try:
        return os.open(name, DIR_FLAGS | _NOATIME, dir_fd=dir_fd)
    except PermissionError:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)


def read_fd(fd: int, size: int = -1) -> bytes:
    """All of an open file; with its size from fstat, in one read as a rule."""
    first = os.read(fd, size + 1 if 0 <= size < _CHUNK else _CHUNK)
    if 0 <= size < _CHUNK and len(first) <= size:
        return first
    chunks = [first]
    while chunk := os.read(fd, _CHUNK):
        chunks.append(chunk)
    return b"".join(chunks)


def read_file(root_fd: int, path: bytes, digest: bytes | None = None) -> bytes:
    """The contents of a regular file in the tree; with digest, checked to be what was planned."""
    with parent_of(root_fd, path) as (dir_fd, name):
        fd = open_file(dir_fd, name)
        try:
            data = read_fd(fd)
        finally:
            os.close(fd)
    if digest is not None and hashlib.sha256(data).digest() != digest:
        raise TreeError(f"{decode(path)} changed during the merge",
                        hint="nothing was merged; run the merge again")
    return data


@contextlib.contextmanager
def inside(dir_fd: int) -> Iterator[None]:
    """The working directory set to dir_fd for a while: the only way to reach a symlink's
    extended attributes by a bare name (l*xattr take no directory fd), without a path that
    could traverse anything."""
    saved = os.open(".", os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fchdir(dir_fd)
        yield
    finally:
        os.fchdir(saved)
        os.close(saved)


def xattrs_of(target: int | bytes) -> tuple[tuple[str, bytes], ...]:
    """All extended attributes of an open fd, or of a bare name in the working directory."""
    follow = isinstance(target, int)  # an fd is the file itself; a name must not be followed
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return ()
        raise
    found = []
    for name in sorted(names):
        try:
            found.append((name, os.getxattr(target, name, follow_symlinks=follow)))
        except OSError as e:
            if e.errno != errno.ENODATA:  # removed between the listing and the read
                raise
    return tuple(found)


def _entry(st: os.stat_result, xattrs: tuple[tuple[str, bytes], ...], *,
           digest: bytes | None = None, target: bytes | None = None, rdev: int = 0) -> Entry:
    return Entry(kind_of(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                 xattrs, digest, target, rdev)


def _same_inode(a: os.stat_result, b: os.stat_result, name: bytes) -> None:
    if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
        raise TreeError(f"{decode(name)} was replaced while it was read",
                        hint="something changed the tree during the merge; run it again")


def read_entry(dir_fd: int, name: bytes, hint: Kind | None = None) -> tuple[Entry, int | None]:
    """The entry called name in dir_fd, and for a directory an open fd of it (the caller closes
    it); regular files are hashed. `hint` is the type readdir reported: a file or directory is
    then opened (O_NOFOLLOW) and fstat'ed without an lstat first."""
    if hint is Kind.FILE or hint is Kind.DIR:
        found = _open_as(dir_fd, name, hint)
        if found is not None:
            return found
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    kind = kind_of(st.st_mode)
    if kind is Kind.FILE or kind is Kind.DIR:
        found = _open_as(dir_fd, name, kind, st)
        if found is None:
            raise TreeError(f"{decode(name)} was replaced while it was read",
                            hint="something changed the tree during the merge; run it again")
        return found
    with inside(dir_fd):
        xattrs = xattrs_of(name)
    if kind is Kind.SYMLINK:
        return _entry(st, xattrs, target=os.readlink(name, dir_fd=dir_fd)), None
    rdev = st.st_rdev if kind in (Kind.CHAR, Kind.BLOCK) else 0
    return _entry(st, xattrs, rdev=rdev), None


def _open_as(dir_fd: int, name: bytes, kind: Kind,
             st: os.stat_result | None = None) -> tuple[Entry, int | None] | None:
    """A file or directory read through an fd, or None when name is not that (any more)."""
    flags = FILE_FLAGS if kind is Kind.FILE else DIR_FLAGS
    try:
        try:
            fd = os.open(name, flags | _NOATIME, dir_fd=dir_fd)
        except PermissionError:
            fd = os.open(name, flags, dir_fd=dir_fd)  # O_NOATIME needs the file's owner
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO, errno.ENOENT):
            return None
        raise
    keep = False
    try:
        fst = os.fstat(fd)
        if kind_of(fst.st_mode) is not kind:
            return None
        if st is not None:
            _same_inode(st, fst, name)
        if kind is Kind.DIR:
            keep = True
            return _entry(fst, xattrs_of(fd)), fd
        digest = hashlib.sha256(read_fd(fd, fst.st_size)).digest()
        return _entry(fst, xattrs_of(fd), digest=digest), None
    finally:
        if not keep:
            os.close(fd)


def scan(root: Path, *, ignore: frozenset[bytes] = frozenset()) -> Tree:
    """Every entry below root; names in `ignore` are skipped at the top level only."""
    tree: Tree = {}
    try:
        with opened_root(root) as root_fd:
            _walk(os.dup(root_fd), b"", tree, ignore)
    except TreeError:
        raise
    except OSError as e:
        where = f" ({os.fsdecode(e.filename)})" if e.filename is not None else ""
        raise TreeError(f"cannot read {root}: {e.strerror}{where}",
                        hint="the merge reads its trees as root; is the filesystem healthy?"
                        ) from e
    return tree


def _walk(top_fd: int, top: bytes, tree: Tree, ignore: frozenset[bytes]) -> None:
    """Depth first with one open fd per level (not per directory seen), so a wide tree costs
    no more descriptors than a narrow one. Regular files, most of a tree, take the short way:
    open, fstat, read, flistxattr, close."""
    stack: list[tuple[int, bytes, Iterator[tuple[bytes, Kind | None]]]] = [
        (top_fd, top, _names(top_fd))]
    flags = FILE_FLAGS | _NOATIME
    try:
        while stack:
            fd, prefix, names = stack[-1]
            item = next(names, None)
            if item is None:
                os.close(fd)
                stack.pop()
                continue
            name, hint = item
            if not prefix and name in ignore:
                continue
            if hint is Kind.FILE:
                try:
                    tree[prefix + name] = _read_regular(fd, name, flags)
                    continue
                except PermissionError:
                    flags = FILE_FLAGS  # O_NOATIME needs the file's owner
                except _NotRegular:
                    pass
            entry, child = read_entry(fd, name, hint)
            path = prefix + name
            tree[path] = entry
            if child is not None:
                stack.append((child, path + b"/", _names(child)))
    finally:
        for fd, _, _ in stack:
            os.close(fd)


class _NotRegular(Exception):
    pass


def _read_regular(dir_fd: int, name: bytes, flags: int) -> Entry:
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENXIO, errno.ENOENT):
            raise _NotRegular from e
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _NotRegular
        data = read_fd(fd, st.st_size)
        names = os.listxattr(fd)
        xattrs = xattrs_of(fd) if names else ()
        return Entry(Kind.FILE, st.st_mode & 0o7777, st.st_uid, st.st_gid, xattrs,
                     hashlib.sha256(data).digest())
    finally:
        os.close(fd)


def _names(fd: int) -> Iterator[tuple[bytes, Kind | None]]:
    """The names in a directory, sorted, with the type readdir reports where it is a file or a
    directory (no system call when the filesystem fills in d_type)."""
    found = []
    with os.scandir(fd) as entries:
        for entry in entries:
            hint = (Kind.DIR if entry.is_dir(follow_symlinks=False)
                    else Kind.FILE if entry.is_file(follow_symlinks=False) else None)
            found.append((os.fsencode(entry.name), hint))
    found.sort()
    return iter(found)


class LazyTree:
    """The entries of a tree read on demand, path by path (the same way as scan). The merge
    needs the new tree only where the running system changed something, so it reads a few
    dozen of its entries instead of all of them."""

    def __init__(self, root: Path, *, ignore: frozenset[bytes] = frozenset()):
        self.root = root
        self.ignore = ignore
        self._entries: dict[bytes, Entry | None] = {}

    def get(self, path: bytes) -> Entry | None:
        if path not in self._entries:
            self._entries[path] = self._read(path)
        return self._entries[path]

    def _read(self, path: bytes) -> Entry | None:
        if path.partition(b"/")[0] in self.ignore:
            return None
        try:
            with opened_root(self.root) as root_fd, parent_of(root_fd, path) as (dir_fd, name):
                entry, child = read_entry(dir_fd, name)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return None  # not there, or below something that is not a directory
            raise TreeError(f"cannot read {self.root / os.fsdecode(path)}: {e.strerror}",
                            hint="the merge reads its trees as root; is the filesystem "
                                 "healthy?") from e
        if child is not None:
            os.close(child)
        return entry

    def subtree(self, path: bytes) -> Tree:
        """path and everything below it."""
        entry = self.get(path)
        if entry is None:
            return {}
        found = {path: entry}
        if entry.kind is Kind.DIR:
            try:
                with opened_root(self.root) as root_fd, \
                        parent_of(root_fd, path) as (dir_fd, name):
                    _walk(open_dir(dir_fd, name), path + b"/", found, frozenset())
            except OSError as e:
                raise TreeError(f"cannot read {self.root / os.fsdecode(path)}: {e.strerror}",
                                hint="something changed the tree during the merge; run it "
                                     "again") from e
        return found


def subtree(tree: Tree, path: bytes) -> Iterator[tuple[bytes, Entry]]:
    """path and everything below it, in the order a copy creates them (parents first)."""
    if path in tree:
        yield path, tree[path]
    prefix = path + b"/"
    for key in sorted((k for k in tree if k.startswith(prefix)), key=split):
        yield key, tree[key]


def split(path: bytes) -> list[bytes]:
    """The sort key that puts a directory right before its contents."""
    return path.split(b"/")


def ancestors(path: bytes) -> Iterator[bytes]:
    """The proper ancestors of a path, nearest first."""
    while b"/" in path:
        path = path.rpartition(b"/")[0]
        yield path

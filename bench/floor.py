"""The floors that bench/core.py measures amber against: the least a Python process has to do.

    python3 bench/floor.py noop ROOT BASE NEW    the bare no-op transaction
    python3 bench/floor.py delete ROOT FIRST LAST    delete snapshots FIRST..LAST

`noop`: snapshot BASE into .snapshots/NEW/snapshot, enter it the way a transaction does (a forked
child in a private mount namespace mounts /dev, /proc, /sys, /tmp, /run and the root's shared
subvolumes, chroots and runs `true`), set it read-only, make it the default, then put the old
default back and delete it again so that the next run starts from the same state.

Written for the benchmark only, on purpose without amber's code: nothing but os, ctypes and
btrfsutil, so that the process costs what the interpreter and the syscalls cost.
"""

from __future__ import annotations

import ctypes
import os
import sys

# bench/core.py starts this with -I -S, which ignores PYTHONPATH: it passes sys.path here.
sys.path[:0] = [p for p in os.environ.get("AMBER_BENCH_PATH", "").split(os.pathsep) if p]

import btrfsutil  # noqa: E402

CLONE_NEWNS = 0x00020000
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
SHARED = ("var", "home", "root", "opt", "srv", "usr/local")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _mount(libc: ctypes.CDLL, source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    result = libc.mount(source.encode() if source else None, target.encode(),
                        fstype.encode() if fstype else None, flags,
                        data.encode() if data else None)
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} {target}: {os.strerror(err)}")


def _enter_and_run(libc: ctypes.CDLL, root: str, chroot: str) -> None:
    """In the forked child: a private mount namespace with the chroot's mounts, then `true`."""
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare")
    _mount(libc, "none", "/", None, MS_REC | MS_PRIVATE)
    _mount(libc, "/dev", chroot + "/dev", None, MS_BIND | MS_REC)
    _mount(libc, "proc", chroot + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _mount(libc, "/sys", chroot + "/sys", None, MS_BIND | MS_REC)
    _mount(libc, "tmpfs", chroot + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    _mount(libc, "tmpfs", chroot + "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    for name in SHARED:
        shared = f"{root}/{name}"
        if os.path.ismount(shared):
            _mount(libc, shared, f"{chroot}/{name}", None, MS_BIND | MS_REC)
    # Found before the chroot: os.execvpe imports a module on the way, and the interpreter's
    # library is not inside the chroot.
    program = next(f"{d}/true" for d in PATH.split(":") if os.access(f"{chroot}{d}/true", os.X_OK))
    os.chroot(chroot)
    os.chdir("/")
    os.execve(program, ["true"], {"PATH": PATH})


def noop(root: str, base: int, new: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    store = f"{root}/.snapshots"  # writable, unlike the root of a booted system
    old_default = btrfsutil.get_default_subvolume(store)
    source = f"{root}/.snapshots/{base}/snapshot"
    directory = f"{root}/.snapshots/{new}"
    snapshot = directory + "/snapshot"
    os.mkdir(directory)
    btrfsutil.create_snapshot(source, snapshot)
    pid = os.fork()
    if pid == 0:
        try:
            _enter_and_run(libc, root, snapshot)
        except BaseException as e:
            print(f"floor: {e}", file=sys.stderr)
        os._exit(126)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise SystemExit(f"floor: the command in the chroot failed ({status:#x})")
    btrfsutil.set_subvolume_read_only(snapshot, True)
    btrfsutil.set_default_subvolume(store, btrfsutil.subvolume_id(snapshot))
    btrfsutil.set_default_subvolume(store, old_default)
    btrfsutil.delete_subvolume(snapshot)
    os.rmdir(directory)


def delete(root: str, first: int, last: int) -> None:
    for n in range(first, last + 1):
        directory = f"{root}/.snapshots/{n}"
        btrfsutil.delete_subvolume(directory + "/snapshot")
        os.unlink(directory + "/info.xml")
        os.rmdir(directory)


def main(argv: list[str]) -> None:
    if len(argv) == 4 and argv[0] == "noop":
        noop(argv[1], int(argv[2]), int(argv[3]))
    elif len(argv) == 4 and argv[0] == "delete":
        delete(argv[1], int(argv[2]), int(argv[3]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])

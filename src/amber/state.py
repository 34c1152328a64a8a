"""Persistent state, written one way: atomic_write (a temporary file beside the target,
written and fsynced, renamed over it, and the directory fsynced), so that a power cut leaves
either the old or the new content, never a torn file.

amber's stores:
    <root>/.snapshots/<N>/info.xml        a snapshot's metadata (snapshots.py)
    <root>/.snapshots/.amber-state.json   the store's state: the previous default (transaction.py)
    <root>/.snapshots/.amber.lock         the lock and the record of the transaction in progress
    <root>/var/lib/amber/state.toml       the admin's run-time switches (config.py)
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Mapping
from pathlib import Path

from amber.errors import AmberError, EnvironmentProblem, NoSpace


def atomic_write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Replace path's content with data, atomically and durably."""
    content = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode)
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        sync_directory(path.parent)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise write_error(path, e) from None


def sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_error(path: Path, error: OSError) -> AmberError:
    """The user's error for a failed write: a full disk is exit 7, anything else names why."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"cannot write {path}: no space left on the filesystem",
                       hint="free space with 'amber cleanup' or 'amber delete N'")
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return EnvironmentProblem(f"cannot write {path}: {error.strerror}",
                                  hint="run amber as root, with /.snapshots and /var writable")
    return AmberError(f"cannot write {path}: {error.strerror}")


# ---- flat TOML (the admin's switches) ------------------------------------------------------

def render_flat_toml(values: Mapping[str, bool | int | float | str]) -> str:
    """key = value lines; strings are TOML basic strings, escaped (a JSON string is one)."""
    lines = []
    for key, value in sorted(values.items()):
        if not key.replace("_", "").replace("-", "").isalnum() or not key.isascii():
            raise ValueError(f"not a bare TOML key: {key!r}")
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int | float):
            lines.append(f"{key} = {value!r}")
        else:
            # JSON escapes the control characters TOML forbids, except DEL.
            text = json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
            lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"

"""transactional-update's marker of a pending /etc merge, which amber reads and honours.

transactional-update ≥ 5 keeps each snapshot's /etc as a nested subvolume. When a snapshot is
made from the running system, its snapper plugin (50-etc) also snapshots the new /etc into
`etc/etc.syncpoint` (the base of the merge) and writes the parent snapshot's number into
`etc/etc.syncpoint/transactional-update.comparewith`. At the first boot, t-u's initrd unit
(`ConditionPathExists=/sysroot/etc/etc.syncpoint`) syncs the parent's /etc into the new one and
deletes the syncpoint.

amber merges such a snapshot the same way as its own: base = the syncpoint, old = the parent's
/etc, new = the snapshot's /etc. Neither name is part of the merge; once the merged /etc is in
place, the caller deletes the syncpoint subvolume, so that t-u's unit does not run again.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from amber.log import AmberError, ExitCode

SYNCPOINT = b"etc.syncpoint"
COMPAREWITH = b"transactional-update.comparewith"
IGNORED = frozenset({SYNCPOINT, COMPAREWITH})  # left out of the merge at the top of each tree


class PendingSync(NamedTuple):
    syncpoint: Path  # the base of the merge: /etc as it was at the fork
    parent: int  # the number of the snapshot whose /etc holds the admin's edits


def pending_sync(etc: Path) -> PendingSync | None:
    """The merge transactional-update left pending in this /etc, if any."""
    syncpoint = etc / SYNCPOINT.decode()
    marker = syncpoint / COMPAREWITH.decode()
    if not syncpoint.is_dir() or syncpoint.is_symlink():
        return None
    try:
        text = marker.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise AmberError(f"{syncpoint} has no {COMPAREWITH.decode()}",
                         hint="the syncpoint does not say which snapshot's /etc to merge; "
                              "delete it or write the parent snapshot's number into that file",
                         code=ExitCode.NOT_FOUND) from None
    except (OSError, UnicodeDecodeError) as e:
        raise AmberError(f"cannot read {marker}: {e}",
                         hint="it should hold the number of the parent snapshot",
                         code=ExitCode.ERROR) from e
    if not text.isdigit():
        raise AmberError(f"{marker} holds {text[:40]!r}, not a snapshot number",
                         hint="it should hold the number of the parent snapshot",
                         code=ExitCode.ERROR)
    return PendingSync(syncpoint, int(text))

"""Where a merge keeps what it could not merge, so that every conflict can be resolved by hand.

    <conflicts dir>/            mode 0700 (the copies include shadow files)
        conflicts.json          the manifest: path, reason, detail, and the three copies' paths
        base/<path>             the version at the fork
        old/<path>              the running system's version (the one left in place)
        new/<path>              the new snapshot's version

Each copy has the original's type, contents, mode, owner and extended attributes; for a delete or
type conflict it holds the whole tree below the path. A version that does not exist (deleted on
that side) has no copy and null in the manifest. The directories above a copy are plain 0700
containers. The whole directory is written aside and renamed into place; a directory already
there (an earlier attempt) is kept as `<name>.previous-<k>`: nothing stored is ever deleted.
The caller passes /var/lib/amber/etc-merge/<N>, outside /etc, where no drop-in reader looks.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from amber.etc.merge import Conflict, MergePlan, PlannedConflict, Reason
from amber.etc.tree import Tree, TreeError, decode, opened_root, split, subtree
from amber.etc.writer import Deferred, copy_all, make_parents, remove, syncfs

MANIFEST = "conflicts.json"
SIDES = ("base", "old", "new")


def store(plan: MergePlan, conflicts_dir: Path, *, sync: bool = True) -> tuple[Conflict, ...]:
    """Copy the three versions of every conflict of the plan into conflicts_dir (made here;
    nothing is written when there is no conflict). With sync, the copies are flushed to disk
    (syncfs) before the directory is renamed into place; a caller that flushes the filesystem
    anyway before its swap passes sync=False."""
    if not plan.conflicts:
        return ()
    staging = conflicts_dir.parent / f".{conflicts_dir.name}.tmp-{os.urandom(4).hex()}"
    try:
        conflicts_dir.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(staging, 0o700)
    except OSError as e:
        raise _cannot_store(conflicts_dir, e) from e
    try:
        _fill(plan, staging)
        if sync:
            with opened_root(staging) as fd:
                syncfs(fd)
        if os.path.lexists(conflicts_dir):
            os.rename(conflicts_dir, _previous(conflicts_dir))
        os.rename(staging, conflicts_dir)
    except BaseException as e:
        with contextlib.suppress(OSError), opened_root(staging.parent) as fd:
            remove(fd, os.fsencode(staging.name))
        if isinstance(e, OSError):
            raise _cannot_store(conflicts_dir, e) from e
        raise
    return load(conflicts_dir)


def _cannot_store(conflicts_dir: Path, error: OSError) -> TreeError:
    where = f" ({os.fsdecode(error.filename)})" if error.filename is not None else ""
    return TreeError(f"cannot store the merge's conflicts in {conflicts_dir}: "
                     f"{error.strerror}{where}",
                     hint="the merged /etc was not swapped in; fix that directory (or make "
                          "room) and merge again")


def _version(plan: MergePlan, side: str, conflict: PlannedConflict) -> Tree:
    """The entries of one side's version of a conflict (the whole tree below it, if so)."""
    path = conflict.path
    if side == "new":
        if conflict.whole_tree:
            return plan.new_tree.subtree(path)
        entry = plan.new_tree.get(path)
        return {} if entry is None else {path: entry}
    tree = plan.base_tree if side == "base" else plan.old_tree
    if path not in tree:
        return {}
    return dict(subtree(tree, path)) if conflict.whole_tree else {path: tree[path]}


def _fill(plan: MergePlan, staging: Path) -> None:
    roots = {"base": plan.base, "old": plan.old, "new": plan.new}
    present: dict[tuple[bytes, str], bool] = {}
    for side in SIDES:
        os.mkdir(staging / side, 0o700)
        with opened_root(roots[side]) as source_fd, opened_root(staging / side) as target_fd:
            deferred = Deferred(target_fd)
            for conflict in plan.conflicts:
                version = _version(plan, side, conflict)
                present[conflict.path, side] = bool(version)
                if not version:
                    continue
                make_parents(target_fd, conflict.path)
                copy_all(source_fd, ((p, version[p]) for p in sorted(version, key=split)),
                         target_fd, deferred)
            deferred.finish()
    manifest = {"version": 1,
                "conflicts": [_manifest_entry(c, present) for c in plan.conflicts]}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="ascii")


def _manifest_entry(conflict: PlannedConflict,
                    present: dict[tuple[bytes, str], bool]) -> dict[str, object]:
    entry: dict[str, object] = {"path": decode(conflict.path), "reason": conflict.reason.value,
                                "detail": conflict.detail, "whole_tree": conflict.whole_tree}
    for side in SIDES:
        entry[side] = f"{side}/{decode(conflict.path)}" if present[conflict.path, side] else None
    return entry


def _previous(conflicts_dir: Path) -> Path:
    k = 1
    while os.path.lexists(conflicts_dir.with_name(f"{conflicts_dir.name}.previous-{k}")):
        k += 1
    return conflicts_dir.with_name(f"{conflicts_dir.name}.previous-{k}")


def load(conflicts_dir: Path) -> tuple[Conflict, ...]:
    """The conflicts stored in conflicts_dir (none when it does not exist)."""
    try:
        manifest = json.loads((conflicts_dir / MANIFEST).read_text(encoding="ascii"))
    except FileNotFoundError:
        return ()
    except (OSError, ValueError) as e:
        raise TreeError(f"cannot read {conflicts_dir / MANIFEST}: {e}",
                        hint="the copies next to it are still there to inspect by hand") from e
    found = []
    for item in manifest["conflicts"]:
        copies = [None if item[side] is None else conflicts_dir / item[side] for side in SIDES]
        found.append(Conflict(os.fsencode(item["path"]), Reason(item["reason"]), item["detail"],
                              *copies))
    return tuple(found)

"""The three-way merge of /etc: the admin's edits since the fork meet the transaction's changes.

B (base) is /etc at the fork, O (old) the running system's /etc with the admin's edits since,
T (new) the new snapshot's /etc as the transaction left it. Per path, by lstat (a symlink is a
path like any other and never followed), comparing type, content (SHA-256), symlink target,
device number, mode, owner, group and each extended attribute on its own; mtime and atime do
not count:

- changed in O only → O; changed in T only → T; changed the same way in both → T;
- changed differently in both → merged attribute by attribute (an attribute changed on one side
  takes that side), contents record by record for passwd, group, shadow, gshadow, subuid and
  subgid (records.py) and line by line for other text (lines.py); anything else that differs
  on both sides is a conflict;
- deleted on one side and changed on the other (for a directory: anything below it added or
  changed; deleting below agrees with deleting the directory), a type changed on one side and
  anything changed on the other, and special files (devices, fifos, sockets) changed on both
  sides are conflicts.

Wherever O equals B the result is T's, so T is read only where O changed: the merge costs two
tree reads, not three.

A conflict keeps O (the admin's last working version) in the result and stores the B, O and T
versions in a conflicts directory (conflicts.py). Names in `ignore` (transactional-update's
etc.syncpoint and its marker, syncpoint.py) are not merged: the result keeps T's. The attributes
of the tree's root directory are T's. A file taken from O is a new inode in the result, so hard
links between such files are not kept.

The contract, so that a failure leaves T untouched or fully merged:

1. `plan_merge(B, O, T)` only reads. It returns the operations that turn T into the result,
   with the merged contents.
2. `apply_plan(plan, R)` performs them in R, which must start as a copy of T (on btrfs: a
   snapshot of T's subvolume; `merge()` makes a plain copy). It checks that R holds T's type at
   every path it changes and that every file it copies from O is still what was planned, and
   raises TreeError otherwise. On any error R is half-merged: discard it; T was never written.
3. `conflicts.store(plan, C)` writes the conflict copies and their manifest into C (written
   aside and renamed into place; an earlier C is kept as C.previous-<k>).
4. The caller flushes R and C (`writer.syncfs`; one call per filesystem) and swaps R for T in
   one step (`writer.exchange(T, R)`: renameat2 RENAME_EXCHANGE, which needs both in one
   writable directory), then deletes R, which now holds the old T. Until the swap T is
   untouched; after it, T is the complete result.

`merge_into(B, O, T, R, conflicts_dir=C)` does 1–3 and the flush; `merge(B, O, T,
conflicts_dir=C)` does everything on plain directories (the copy of T is a plain copy: the
layout's path is a btrfs snapshot, which costs nothing).
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from amber.etc import lines, records, writer
from amber.etc.syncpoint import IGNORED
from amber.etc.tree import (
    SPECIAL,
    Entry,
    Kind,
    LazyTree,
    Tree,
    TreeError,
    ancestors,
    decode,
    opened_root,
    parent_of,
    read_file,
    scan,
    split,
)
from amber.log import warn

Progress = Callable[[bytes], None]


class Outcome(enum.StrEnum):
    NEW = "new"  # the new snapshot's version stays
    OLD = "old"  # the running system's version is taken
    MERGED = "merged"  # both sides changed; merged attribute by attribute and by content
    CONFLICT = "conflict"  # the running system's version stays; all three are stored


class Origin(enum.StrEnum):
    """Where one attribute of a merged path came from."""

    OLD = "old"
    NEW = "new"
    BOTH = "both"  # the same change on both sides
    RECORDS = "records"  # contents merged record by record
    LINES = "lines"  # contents merged line by line


class Reason(enum.StrEnum):
    DELETE_MODIFY = "delete-modify"
    TYPE_CHANGE = "type-change"
    SPECIAL_FILE = "special-file"
    CONTENT = "content"
    ATTRIBUTE = "attribute"


class Action(enum.StrEnum):
    TREE = "tree"  # the result at this path and below becomes O's (absent if O has none)
    ENTRY = "entry"  # the entry at this path becomes `entry` (children are separate paths)


class PathResult(NamedTuple):
    """What happened to one path the running system changed (or a directory above such paths
    that became a conflict). Paths changed in the new snapshot only are not visited, since the
    result keeps them as they are, and not listed (`diff.diff(B, T)` lists them). For a path
    decided as a whole tree (added, deleted or retyped with everything below) the paths below
    are not listed."""

    path: bytes
    outcome: Outcome
    detail: str
    taken: tuple[tuple[str, Origin], ...] = ()
    reason: Reason | None = None

    def to_json(self) -> dict[str, object]:
        found: dict[str, object] = {"path": decode(self.path), "outcome": self.outcome.value,
                                    "detail": self.detail}
        if self.taken:
            found["taken"] = {name: origin.value for name, origin in self.taken}
        if self.reason is not None:
            found["reason"] = self.reason.value
        return found


class Operation(NamedTuple):
    path: bytes
    action: Action
    expected: Entry | None  # T's entry: what the result directory holds before
    entry: Entry | None = None  # ENTRY: the entry afterwards
    content: bytes | None = None  # ENTRY of a file: merged contents (None: O's, or T's kept)


class PlannedConflict(NamedTuple):
    path: bytes
    reason: Reason
    detail: str
    whole_tree: bool  # the copies hold everything below path, not only the entry


class Conflict(NamedTuple):
    """A conflict as stored: the copies of the three versions (None where one has no entry)."""

    path: bytes
    reason: Reason
    detail: str
    base: Path | None
    old: Path | None
    new: Path | None

    def to_json(self) -> dict[str, object]:
        return {"path": decode(self.path), "reason": self.reason.value, "detail": self.detail,
                "base": _str(self.base), "old": _str(self.old), "new": _str(self.new)}


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


class MergePlan(NamedTuple):
    base: Path
    old: Path
    new: Path
    base_tree: Tree
    old_tree: Tree
    new_tree: LazyTree  # read where needed: the result is T's wherever O equals B
    operations: tuple[Operation, ...]
    results: tuple[PathResult, ...]
    conflicts: tuple[PlannedConflict, ...]


class MergeReport(NamedTuple):
    results: tuple[PathResult, ...]
    conflicts: tuple[Conflict, ...]

    def paths(self, outcome: Outcome) -> list[bytes]:
        return [r.path for r in self.results if r.outcome is outcome]

    def to_json(self) -> dict[str, object]:
        return {"results": [r.to_json() for r in self.results],
                "conflicts": [c.to_json() for c in self.conflicts]}


class MergeError(TreeError):
    pass


# ---- planning ------------------------------------------------------------------------------


def plan_merge(base: Path, old: Path, new: Path, *,
               ignore: frozenset[bytes] = IGNORED) -> MergePlan:
    """Decide every path; reads the trees and nothing else: all of base and old, and new where
    old changed. Names in `ignore` (by default transactional-update's syncpoint and its marker)
    are left out at the top level."""
    return _plan(base, old, new, scan(base, ignore=ignore), scan(old, ignore=ignore),
                 LazyTree(new, ignore=ignore))


def _plan(base: Path, old: Path, new: Path, base_tree: Tree, old_tree: Tree,
          new_tree: LazyTree) -> MergePlan:
    with opened_root(base) as b_fd, opened_root(old) as o_fd, opened_root(new) as t_fd:
        planner = _Planner(base_tree, old_tree, new_tree, fds=(b_fd, o_fd, t_fd))
        planner.run()
    return MergePlan(base, old, new, base_tree, old_tree, new_tree,
                     tuple(planner.operations), tuple(planner.results),
                     tuple(planner.conflicts))


def _changed(a: Tree, b: Tree) -> set[bytes]:
    return {path for path in a.keys() | b.keys() if a.get(path) != b.get(path)}


def _with_changes_below(changed: set[bytes]) -> set[bytes]:
    return {parent for path in changed for parent in ancestors(path)}


def _discards(base: Entry | None, side: Entry | None) -> bool:
    """Whether a side removed or replaced a directory of the base (and so all below it)."""
    return (base is not None and base.kind is Kind.DIR
            and (side is None or side.kind is not Kind.DIR))


class _Planner:
    """Visits the paths the running system changed (and the directories above them): wherever
    O equals B the result is T's, whatever T is, so T is read only where O changed."""

    def __init__(self, base: Tree, old: Tree, new: LazyTree, *, fds: tuple[int, int, int]):
        self.b, self.o, self.t = base, old, new
        self.fds = fds
        self.changed_o = _changed(base, old)
        self.below_o = _with_changes_below(self.changed_o)
        # Directories with something below them that O added or changed (not only deleted).
        self.below_o_kept = _with_changes_below({p for p in self.changed_o if p in old})
        self.operations: list[Operation] = []
        self.results: list[PathResult] = []
        self.conflicts: list[PlannedConflict] = []

    def run(self) -> None:
        skip: bytes | None = None
        for path in sorted(self.changed_o | self.below_o, key=split):
            if skip is not None and path.startswith(skip):
                continue
            skip = None if self.decide(path) else path + b"/"

    def kept_below_in_new(self, path: bytes) -> bool:
        """Whether T added or changed anything below path (deletions do not count: they agree
        with O's removal of path)."""
        below = self.t.subtree(path)
        return any(entry != self.b.get(p) for p, entry in below.items() if p != path)

    def decide(self, path: bytes) -> bool:
        """Decide one path; True when the paths below it are to be decided one by one."""
        b, o, t = self.b.get(path), self.o.get(path), self.t.get(path)
        both_dirs = _is_dir(o) and _is_dir(t)
        if o == b:  # a directory above the running system's changes
            if _discards(b, t) and path in self.below_o_kept:
                return self.tree_conflict(path, b, o, t)
            if _discards(b, t):
                self.result(path, Outcome.NEW, "removed or replaced in the new snapshot; the "
                            "running system had only deleted things below it")
            return both_dirs
        if t == b:
            if _discards(b, o) and self.kept_below_in_new(path):
                return self.tree_conflict(path, b, o, t)
            if o is not None and t is not None and o.kind is t.kind:
                self.operations.append(Operation(path, Action.ENTRY, t, o))
            else:
                self.operations.append(Operation(path, Action.TREE, t))
            self.result(path, Outcome.OLD, "changed in the running system only")
            return both_dirs
        if o == t:
            self.result(path, Outcome.NEW, "the same change on both sides")
            return both_dirs
        if o is None or t is None or o.kind is not t.kind:
            return self.tree_conflict(path, b, o, t)
        assert b is None or b != o
        if o.kind in SPECIAL:
            return self.entry_conflict(path, o, t, Reason.SPECIAL_FILE,
                                       f"a {o.kind.value} changed on both sides")
        return self.merge_entries(path, b, o, t)

    def result(self, path: bytes, outcome: Outcome, detail: str,
               taken: tuple[tuple[str, Origin], ...] = (), reason: Reason | None = None) -> None:
        self.results.append(PathResult(path, outcome, detail, taken, reason))

    def tree_conflict(self, path: bytes, b: Entry | None, o: Entry | None,
                      t: Entry | None) -> bool:
        """Keep O's whole tree at path: a delete or a type change against any other change."""
        reason, detail = _tree_conflict(b, o, t)
        self.operations.append(Operation(path, Action.TREE, t))
        self.conflicts.append(PlannedConflict(path, reason, detail, whole_tree=True))
        self.result(path, Outcome.CONFLICT, detail, reason=reason)
        return False

    def entry_conflict(self, path: bytes, o: Entry, t: Entry, reason: Reason,
                       detail: str) -> bool:
        self.operations.append(Operation(path, Action.ENTRY, t, o))
        self.conflicts.append(PlannedConflict(path, reason, detail, whole_tree=False))
        self.result(path, Outcome.CONFLICT, detail, reason=reason)
        return o.kind is Kind.DIR

    def merge_entries(self, path: bytes, b: Entry | None, o: Entry, t: Entry) -> bool:
        """Both sides changed an entry of the same kind differently."""
        base = b.attributes() if b is not None else {}
        mine, theirs = o.attributes(), t.attributes()
        values: dict[str, object] = {}
        taken: list[tuple[str, Origin]] = []
        clashes: list[str] = []
        for name in sorted((mine.keys() | theirs.keys()) - {"content"}):
            merged = _merge_value(base.get(name), mine.get(name), theirs.get(name))
            if merged is None:
                clashes.append(name)
                continue
            values[name], origin = merged
            if origin is not None:
                taken.append((name, origin))
        if clashes:
            reason = Reason.CONTENT if "target" in clashes else Reason.ATTRIBUTE
            return self.entry_conflict(path, o, t, reason,
                                       f"both sides changed {', '.join(clashes)} differently")
        content: bytes | None = None
        if o.kind is Kind.FILE:
            contents = self.merge_content(path, b, o, t)
            if isinstance(contents, str):
                return self.entry_conflict(path, o, t, Reason.CONTENT, contents)
            values["content"], content, origin = contents
            if origin is not None:
                taken.append(("content", origin))
        entry = _rebuild(o.kind, values)
        self.operations.append(Operation(path, Action.ENTRY, t, entry, content))
        self.result(path, Outcome.MERGED, "changed on both sides, merged", tuple(taken))
        return o.kind is Kind.DIR

    def merge_content(self, path: bytes, b: Entry | None, o: Entry,
                      t: Entry) -> tuple[bytes | None, bytes | None, Origin | None] | str:
        """(digest, merged bytes or None when one side's contents stand, origin or None when
        unchanged), or why the contents conflict."""
        base_digest = b.digest if b is not None and b.kind is Kind.FILE else None
        one_side = _merge_value(base_digest, o.digest, t.digest)
        if one_side is not None:
            digest, origin = one_side
            assert digest is None or isinstance(digest, bytes)
            return digest, None, origin
        b_fd, o_fd, t_fd = self.fds
        base_text = read_file(b_fd, path, base_digest) if base_digest is not None else b""
        old_text = read_file(o_fd, path, o.digest)
        new_text = read_file(t_fd, path, t.digest)
        if path in records.RECORD_FILES:
            merged = records.merge_records(path, base_text, old_text, new_text)
            content, reason = merged.content, merged.reason
            how = Origin.RECORDS if merged.method == "records" else Origin.LINES
        elif lines.is_text(base_text, old_text, new_text):
            line_merge = lines.merge_lines(base_text, old_text, new_text)
            content, reason, how = line_merge.content, line_merge.reason, Origin.LINES
        else:
            return "binary contents changed on both sides"
        if content is None:
            return f"contents: {reason}"
        return hashlib.sha256(content).digest(), content, how


def _tree_conflict(b: Entry | None, o: Entry | None, t: Entry | None) -> tuple[Reason, str]:
    def change(side: Entry | None, where: str) -> str:
        if side == b:
            return f"{where} changed what is below it"
        if side is None:
            return f"{where} deleted it"
        if b is None:
            return f"{where} added a {side.kind.value}"
        if side.kind is not b.kind:
            return f"{where} made it a {side.kind.value}"
        return f"{where} changed it"

    reason = Reason.DELETE_MODIFY if o is None or t is None else Reason.TYPE_CHANGE
    was = f"a {b.kind.value}" if b is not None else "new"
    return reason, (f"{was}: {change(o, 'the running system')}, "
                    f"{change(t, 'the new snapshot')}")


def _is_dir(entry: Entry | None) -> bool:
    return entry is not None and entry.kind is Kind.DIR


def _kind(entry: Entry | None) -> str:
    return "nothing" if entry is None else entry.kind.value


def _merge_value(base: object, old: object,
                 new: object) -> tuple[object, Origin | None] | None:
    """(value, where it came from: None when neither side changed it), or None when both sides
    changed it differently."""
    if old == base and new == base:
        return new, None
    if old == new:
        return new, Origin.BOTH
    if old == base:
        return new, Origin.NEW
    if new == base:
        return old, Origin.OLD
    return None


def _rebuild(kind: Kind, values: dict[str, object]) -> Entry:
    xattrs = tuple(sorted((name.removeprefix("xattr:"), value) for name, value in values.items()
                          if name.startswith("xattr:") and isinstance(value, bytes)))
    mode, uid, gid = values["mode"], values["uid"], values["gid"]
    assert isinstance(mode, int) and isinstance(uid, int) and isinstance(gid, int)
    digest, target, rdev = values.get("content"), values.get("target"), values.get("rdev", 0)
    assert digest is None or isinstance(digest, bytes)
    assert target is None or isinstance(target, bytes)
    assert isinstance(rdev, int)
    return Entry(kind, mode, uid, gid, xattrs, digest, target, rdev)


# ---- applying ------------------------------------------------------------------------------


def apply_plan(plan: MergePlan, result: Path, *, progress: Progress | None = None) -> None:
    """Turn result, a copy of the plan's new tree, into the merged tree. On an error result is
    half-merged and must be discarded; the plan's three trees are never written."""
    try:
        with opened_root(result) as r_fd, opened_root(plan.old) as o_fd:
            deferred = writer.Deferred(r_fd)
            for operation in plan.operations:
                if progress is not None:
                    progress(operation.path)
                _apply(operation, plan.old_tree, o_fd, r_fd, deferred)
            deferred.finish()
    except TreeError:
        raise
    except OSError as e:
        where = f" ({os.fsdecode(e.filename)})" if e.filename is not None else ""
        raise MergeError(f"the merge into {result} failed: {e.strerror}{where}",
                         hint="nothing was swapped in; the new /etc is as the transaction "
                              "left it") from e


def _apply(op: Operation, old_tree: Tree, o_fd: int, r_fd: int,
           deferred: writer.Deferred) -> None:
    with contextlib.ExitStack() as stack:
        try:
            dir_fd, name = stack.enter_context(parent_of(r_fd, op.path))
        except OSError as e:
            raise MergeError(f"the directory of {decode(op.path)} in the result directory is "
                             f"not the new /etc's: {e.strerror}",
                             hint="the result directory must start as a copy of the new /etc"
                             ) from e
        found = writer.lstat_kind(dir_fd, name)
        expected = None if op.expected is None else op.expected.kind
        if found is not expected:
            raise MergeError(f"{decode(op.path)} in the result directory is a "
                             f"{found or 'nothing'}, the new /etc has a {expected or 'nothing'}",
                             hint="the result directory must start as a copy of the new /etc")
        if op.action is Action.TREE:
            writer.remove(dir_fd, name)
            if op.path in old_tree:
                writer.copy_entries(o_fd, old_tree, op.path, r_fd, deferred)
            return
        assert op.entry is not None and op.expected is not None
        _set_entry(op, op.entry, op.expected, o_fd, dir_fd, name, deferred)


def _set_entry(op: Operation, entry: Entry, expected: Entry, o_fd: int, dir_fd: int,
               name: bytes, deferred: writer.Deferred) -> None:
    if entry.kind is Kind.DIR:
        deferred.add(op.path, entry)
    elif entry.kind is Kind.FILE and entry.digest != expected.digest:
        content = op.content if op.content is not None else read_file(o_fd, op.path,
                                                                     entry.digest)
        writer.write_file(dir_fd, name, content, entry)
    elif (entry.kind is Kind.SYMLINK and entry.target != expected.target) or (
            entry.kind in SPECIAL and entry.rdev != expected.rdev):
        writer.remove(dir_fd, name)
        writer.create(dir_fd, name, entry, None, deferred, op.path)
    else:
        writer.set_attributes(dir_fd, name, entry)


# ---- the whole merge -----------------------------------------------------------------------


def merge_into(base: Path, old: Path, new: Path, result: Path, *, conflicts_dir: Path,
               progress: Progress | None = None, ignore: frozenset[bytes] = IGNORED,
               sync: bool = True) -> MergeReport:
    """Plan, apply into result (a copy of new) and store the conflicts; with sync, flush both
    to disk. The caller then swaps result for new (see the module's docstring). new itself is
    never written."""
    from amber.etc import conflicts

    plan = plan_merge(base, old, new, ignore=ignore)
    apply_plan(plan, result, progress=progress)
    stored = conflicts.store(plan, conflicts_dir, sync=sync)
    if sync:
        with opened_root(result) as fd:
            writer.syncfs(fd)
    return MergeReport(plan.results, stored)


def merge(base: Path, old: Path, new: Path, *, conflicts_dir: Path,
          progress: Progress | None = None, ignore: frozenset[bytes] = IGNORED,
          sync: bool = True) -> MergeReport:
    """The whole merge for plain directories: new is copied to a sibling, merged there, flushed
    and swapped in atomically; on any error new stays as it was."""
    from amber.etc import conflicts

    plan = plan_merge(base, old, new, ignore=ignore)
    if not plan.operations:
        return MergeReport(plan.results, ())
    work = new.parent / f".{new.name}.merge-{os.urandom(4).hex()}"
    try:
        writer.copy_tree(new, scan(new), work)
        apply_plan(plan, work, progress=progress)
        stored = conflicts.store(plan, conflicts_dir, sync=False)
        if sync:  # the copies of the conflicts, then the merged tree, durable before the swap
            for flushed in ((conflicts_dir,) if stored else ()) + (work,):
                with opened_root(flushed) as fd:
                    writer.syncfs(fd)
        writer.exchange(new, work)
    except BaseException as e:
        _discard(work)
        if isinstance(e, OSError):
            where = f" ({os.fsdecode(e.filename)})" if e.filename is not None else ""
            raise MergeError(f"cannot copy {new} aside for the merge: {e.strerror}{where}",
                             hint="nothing was merged; the new /etc is as it was") from e
        raise
    try:
        _discard(work)  # which now holds the new tree as it was before the merge
    except OSError as e:
        warn(f"the merge is complete, but its leftover {work} could not be removed: {e}",
             hint="remove it by hand")
    return MergeReport(plan.results, stored)


def _discard(path: Path) -> None:
    if not os.path.lexists(path):
        return
    with opened_root(path.parent) as fd:
        writer.remove(fd, os.fsencode(path.name))

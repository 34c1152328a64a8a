"""What changed in one /etc against a reference (`amber etc diff`): added, removed and modified
paths, with the attributes that differ, compared as the merge compares them (tree.py)."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import NamedTuple

from amber.etc.syncpoint import IGNORED
from amber.etc.tree import Tree, decode, differences, scan, split


class Change(enum.StrEnum):
    ADDED = "added"
    REMOVED = "removed"
    MODIFIED = "modified"


class PathChange(NamedTuple):
    path: bytes
    change: Change
    kind: str  # the current entry's type (the reference's for a removed path)
    attributes: tuple[str, ...] = ()  # modified: "type", "content", "target", "mode", ...

    def to_json(self) -> dict[str, object]:
        found: dict[str, object] = {"path": decode(self.path), "change": self.change.value,
                                    "type": self.kind}
        if self.change is Change.MODIFIED:
            found["attributes"] = list(self.attributes)
        return found


def diff_trees(reference: Tree, current: Tree) -> tuple[PathChange, ...]:
    changes = []
    for path in sorted(reference.keys() | current.keys(), key=split):
        before, after = reference.get(path), current.get(path)
        if before == after:
            continue
        if before is None:
            assert after is not None
            changes.append(PathChange(path, Change.ADDED, after.kind.value))
        elif after is None:
            changes.append(PathChange(path, Change.REMOVED, before.kind.value))
        else:
            changes.append(PathChange(path, Change.MODIFIED, after.kind.value,
                                      differences(before, after)))
    return tuple(changes)


def diff(reference: Path, current: Path, *,
         ignore: frozenset[bytes] = IGNORED) -> tuple[PathChange, ...]:
    """Every path that differs between the two trees, parents before their contents."""
    return diff_trees(scan(reference, ignore=ignore), scan(current, ignore=ignore))


def to_json(changes: tuple[PathChange, ...]) -> list[dict[str, object]]:
    return [change.to_json() for change in changes]

"""A three-way merge of the account databases, record by record.

passwd, group, shadow, gshadow, subuid and subgid are lists of colon-separated records keyed by
their first field. Each key merges on its own: a record changed (added, edited, deleted) on one
side takes that side, the same change on both sides is taken once, and a record changed
differently on both sides is a conflict. So a package that adds a user and an admin who changes
the root password both survive.

Order: the running system's order (the admin's file), with records only the new snapshot has
inserted after the record that precedes them there; `useradd` appends, and lines such as NIS's
`+::::::` that must stay last do.

Two things make a merge unsafe although every key merges: ids and subordinate id ranges that the
two sides handed out independently. A uid (passwd) or gid (group) that two records share in the
result but in neither input, or subuid/subgid ranges that overlap in the result but in neither
input, are conflicts (useradd on both sides picks the same next free number).

A file that is not a plain list of unique keys (comments, blank lines, a key twice, as subuid
allows for a second range) is merged line by line instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from amber.etc.lines import merge_lines

RECORD_FILES = frozenset({b"passwd", b"group", b"shadow", b"gshadow", b"subuid", b"subgid"})
_ID_FIELD = {b"passwd": 2, b"group": 2}
_RANGE_FILES = frozenset({b"subuid", b"subgid"})


class RecordMerge(NamedTuple):
    """The merged file, or None with why; `method` says which merge ran ("records", "lines")."""

    content: bytes | None
    method: str
    reason: str = ""


class NotRecords(Exception):
    pass


def parse(data: bytes) -> dict[bytes, bytes]:
    """Key → record (without its newline), in file order; NotRecords if not unique records.

    Blank lines and comments carry layout that a record merge would drop, so they too make a
    file "not records"."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    records: dict[bytes, bytes] = {}
    for line in lines:
        key, colon, _ = line.partition(b":")
        if not colon or line.startswith(b"#") or not key.strip() or key in records:
            raise NotRecords
        records[key] = line
    return records


def merge_records(name: bytes, base: bytes, old: bytes, new: bytes) -> RecordMerge:
    try:
        b, o, t = parse(base), parse(old), parse(new)
    except NotRecords:
        lines = merge_lines(base, old, new)
        return RecordMerge(lines.content, "lines", lines.reason)
    merged: dict[bytes, bytes] = {}
    clashes: list[bytes] = []
    for key in _keys(o, t, b):
        value, clash = _merge_key(b.get(key), o.get(key), t.get(key))
        if clash:
            clashes.append(key)
        elif value is not None:
            merged[key] = value
    if clashes:
        return RecordMerge(None, "records",
                           "both sides changed the record(s) " + _names(clashes))
    ordered = _order(merged, list(o), list(t))
    collisions = _new_collisions(name, ordered, o, t)
    if collisions:
        return RecordMerge(None, "records", collisions)
    return RecordMerge(b"".join(record + b"\n" for record in ordered.values()), "records")


def _keys(*sides: dict[bytes, bytes]) -> list[bytes]:
    seen: dict[bytes, None] = {}
    for side in sides:
        seen.update(dict.fromkeys(side))
    return list(seen)


def _merge_key(base: bytes | None, old: bytes | None,
               new: bytes | None) -> tuple[bytes | None, bool]:
    """(merged record or None for deleted, whether it is a conflict)."""
    if old in (new, base):
        return new, False
    if new == base:
        return old, False
    return None, True


def _order(merged: dict[bytes, bytes], old_order: list[bytes],
           new_order: list[bytes]) -> dict[bytes, bytes]:
    order = [key for key in old_order if key in merged]
    placed = set(order)
    for index, key in enumerate(new_order):
        if key not in merged or key in placed:
            continue
        position = 0
        for before in reversed(new_order[:index]):
            if before in placed:
                position = order.index(before) + 1
                break
        order.insert(position, key)
        placed.add(key)
    return {key: merged[key] for key in order}


def _new_collisions(name: bytes, merged: dict[bytes, bytes], old: dict[bytes, bytes],
                    new: dict[bytes, bytes]) -> str:
    if name in _ID_FIELD:
        found = _id_clashes(merged, _ID_FIELD[name])
        found -= _id_clashes(old, _ID_FIELD[name]) | _id_clashes(new, _ID_FIELD[name])
        what = "uid" if name == b"passwd" else "gid"
    elif name in _RANGE_FILES:
        found = _range_clashes(merged)
        found -= _range_clashes(old) | _range_clashes(new)
        what = "subordinate id range"
    else:
        return ""
    if not found:
        return ""
    pairs = ", ".join(f"{_names(pair)}" for pair in sorted(tuple(sorted(p)) for p in found))
    return f"the two sides gave the same {what} to different records: {pairs}"


def _id_clashes(records: dict[bytes, bytes], field: int) -> set[frozenset[bytes]]:
    by_id: dict[bytes, list[bytes]] = {}
    for key, record in records.items():
        fields = record.split(b":")
        if len(fields) > field and fields[field]:
            by_id.setdefault(fields[field], []).append(key)
    return {frozenset((a, b)) for keys in by_id.values() for a in keys for b in keys if a < b}


def _range_clashes(records: dict[bytes, bytes]) -> set[frozenset[bytes]]:
    ranges: list[tuple[int, int, bytes]] = []
    for key, record in records.items():
        fields = record.split(b":")
        if len(fields) >= 3 and fields[1].isdigit() and fields[2].isdigit():
            start = int(fields[1])
            ranges.append((start, start + int(fields[2]), key))
    ranges.sort()
    clashes: set[frozenset[bytes]] = set()
    for i, (_, end, key) in enumerate(ranges):
        for other_start, _, other in ranges[i + 1:]:
            if other_start >= end:
                break
            clashes.add(frozenset((key, other)))
    return clashes


def _names(keys: Iterable[bytes]) -> str:
    return ", ".join(key.decode("utf-8", "backslashreplace") for key in keys)

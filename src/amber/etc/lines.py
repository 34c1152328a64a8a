"""A three-way merge of text, line by line, with diff3's semantics.

The base is matched against each side by a longest common subsequence of lines (Myers' greedy
O(ND) algorithm). A base line matched on both sides is stable; between two stable lines lies a
chunk. A chunk changed on one side only takes that side, a chunk changed the same way on both
sides takes it once, and a chunk changed differently on both sides is a conflict. As in GNU diff3
and git, changes on both sides that touch adjacent lines fall into one chunk and conflict.

Everything is bytes: lines end with b"\\n" (the last one may not), nothing is decoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

# Beyond this many inserted and deleted lines between two versions the merge gives up (a
# conflict): the search costs O(D²) (0.3 s at 1,000 in Python), and files this different are
# not edits to merge.
MAX_DIFFERENCES = 1000


class TooDifferent(Exception):
    """Two versions differ by more than MAX_DIFFERENCES lines."""


class LineMerge(NamedTuple):
    """The merged text, or None with the base line ranges (1-based, inclusive) that conflict."""

    content: bytes | None
    conflicts: tuple[tuple[int, int], ...] = ()
    reason: str = ""


def split_lines(data: bytes) -> list[bytes]:
    """Lines with their b"\\n"; a last line without one is kept as it is."""
    lines = data.split(b"\n")
    last = lines.pop()
    result = [line + b"\n" for line in lines]
    if last:
        result.append(last)
    return result


def is_text(*contents: bytes) -> bool:
    return all(b"\0" not in content for content in contents)


def matching(a: Sequence[bytes], b: Sequence[bytes]) -> list[tuple[int, int]]:
    """Index pairs (i, j) with a[i] == b[j] forming a longest common subsequence, in order."""
    prefix = 0
    while prefix < len(a) and prefix < len(b) and a[prefix] == b[prefix]:
        prefix += 1
    suffix = 0
    while (suffix < len(a) - prefix and suffix < len(b) - prefix
           and a[len(a) - 1 - suffix] == b[len(b) - 1 - suffix]):
        suffix += 1
    middle = _myers(a[prefix:len(a) - suffix], b[prefix:len(b) - suffix])
    pairs = [(i, i) for i in range(prefix)]
    pairs += [(i + prefix, j + prefix) for i, j in middle]
    pairs += [(len(a) - suffix + k, len(b) - suffix + k) for k in range(suffix)]
    return pairs


def _myers(a: Sequence[bytes], b: Sequence[bytes]) -> list[tuple[int, int]]:
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        return []
    offset = n + m + 1
    frontier = [0] * (2 * offset + 1)  # frontier[k + offset]: furthest x on diagonal k = x - y
    history: list[list[int]] = []
    for d in range(min(n + m, MAX_DIFFERENCES) + 1):
        history.append(frontier[offset - d - 1:offset + d + 2])
        for k in range(-d, d + 1, 2):
            if k == -d or (k != d and frontier[offset + k - 1] < frontier[offset + k + 1]):
                x = frontier[offset + k + 1]
            else:
                x = frontier[offset + k - 1] + 1
            y = x - k
            while x < n and y < m and a[x] == b[y]:
                x += 1
                y += 1
            frontier[offset + k] = x
            if x >= n and y >= m:
                return _backtrack(history, n, m)
    raise TooDifferent(f"more than {MAX_DIFFERENCES} lines differ")


def _backtrack(history: list[list[int]], n: int, m: int) -> list[tuple[int, int]]:
    """Walk the recorded frontiers back from (n, m), collecting the diagonal moves (matches)."""
    pairs: list[tuple[int, int]] = []
    x, y = n, m
    for d in range(len(history) - 1, -1, -1):
        row = history[d]  # row[i] is the frontier of diagonal i - d - 1 before step d

        def at(k: int, row: list[int] = row, d: int = d) -> int:
            return row[k + d + 1]

        k = x - y
        went_down = k == -d or (k != d and at(k - 1) < at(k + 1))
        previous_k = k + 1 if went_down else k - 1
        previous_x = at(previous_k)
        previous_y = previous_x - previous_k
        while x > previous_x and y > previous_y and x > 0 and y > 0:
            x -= 1
            y -= 1
            pairs.append((x, y))
        x, y = previous_x, previous_y
    pairs.reverse()
    return pairs


def merge_lines(base: bytes, old: bytes, new: bytes) -> LineMerge:
    """diff3 -m of old and new against base; content is None when a chunk conflicts.

    Repeated lines can make the place of a change ambiguous, and diff3 then guesses. A merge is
    accepted only when its result already holds each side's change unambiguously (merging
    either side into it again changes nothing); otherwise it is a conflict, never a guess."""
    merged = _diff3(base, old, new)
    if merged.content is None:
        return merged
    for side in (old, new):
        again = _diff3(base, side, merged.content)
        if again.content != merged.content:
            return LineMerge(None, reason="the two sides' changes cannot be placed "
                                          "unambiguously (repeated lines)")
    return merged


def _diff3(base: bytes, old: bytes, new: bytes) -> LineMerge:
    b, o, t = split_lines(base), split_lines(old), split_lines(new)
    try:
        to_old = dict(matching(b, o))
        to_new = dict(matching(b, t))
    except TooDifferent as e:
        return LineMerge(None, reason=str(e))
    out: list[bytes] = []
    conflicts: list[tuple[int, int]] = []
    ib = io = it = 0
    while True:
        stable = ib
        while stable < len(b) and not (stable in to_old and stable in to_new):
            stable += 1
        if stable == len(b):
            _resolve(b[ib:], o[io:], t[it:], ib, out, conflicts)
            break
        jo, jt = to_old[stable], to_new[stable]
        if (stable, jo, jt) != (ib, io, it):
            _resolve(b[ib:stable], o[io:jo], t[it:jt], ib, out, conflicts)
        out.append(b[stable])
        ib, io, it = stable + 1, jo + 1, jt + 1
    if conflicts:
        ranges = ", ".join(f"{first}-{last}" if first != last else f"{first}"
                           for first, last in conflicts)
        return LineMerge(None, tuple(conflicts), f"both sides changed line(s) {ranges}")
    return LineMerge(_join(out))


def _resolve(base: list[bytes], old: list[bytes], new: list[bytes], first: int,
             out: list[bytes], conflicts: list[tuple[int, int]]) -> None:
    if old in (base, new):
        out.extend(new)
    elif new == base:
        out.extend(old)
    else:
        # A pure insertion at the same place has no base lines: name the line it follows.
        conflicts.append((first + 1, first + max(len(base), 1)))


def _join(lines: list[bytes]) -> bytes:
    """Lines back into text; a line without b"\\n" that is no longer last gets one."""
    return b"".join(line if line.endswith(b"\n") or i == len(lines) - 1 else line + b"\n"
                    for i, line in enumerate(lines))

"""The line merge of /etc text files: a longest common subsequence, and diff3's rules on top."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amber.etc import lines
from amber.etc.lines import matching, merge_lines, split_lines

BASE = b"# foo.conf\nalpha = 1\nbeta = 2\ngamma = 3\ndelta = 4\nepsilon = 5\n"


def lcs_length(a: list[bytes], b: list[bytes]) -> int:
    """The textbook dynamic programme, to check the Myers search against."""
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) - 1, -1, -1):
        for j in range(len(b) - 1, -1, -1):
            table[i][j] = (table[i + 1][j + 1] + 1 if a[i] == b[j]
                           else max(table[i + 1][j], table[i][j + 1]))
    return table[0][0]


line_lists = st.lists(st.sampled_from([b"a\n", b"b\n", b"c\n", b"d\n"]), max_size=14)


@given(line_lists, line_lists)
@settings(max_examples=400)
def test_matching_is_a_longest_common_subsequence(a: list[bytes], b: list[bytes]) -> None:
    pairs = matching(a, b)
    assert all(a[i] == b[j] for i, j in pairs)
    assert all(p[0] < q[0] and p[1] < q[1] for p, q in itertools.pairwise(pairs))
    assert len(pairs) == lcs_length(a, b)


def test_split_lines_keeps_every_byte() -> None:
    assert split_lines(b"") == []
    assert split_lines(b"a\nb") == [b"a\n", b"b"]
    assert split_lines(b"a\n\n") == [b"a\n", b"\n"]
    assert b"".join(split_lines(b"x\r\ny\n\xff\n")) == b"x\r\ny\n\xff\n"


CASES = [
    ("non-overlapping edits merge",
     BASE.replace(b"alpha = 1", b"alpha = 10"), BASE.replace(b"delta = 4", b"delta = 40"),
     BASE.replace(b"alpha = 1", b"alpha = 10").replace(b"delta = 4", b"delta = 40")),
    ("an insertion and a deletion elsewhere",
     BASE + b"zeta = 6\n", BASE.replace(b"beta = 2\n", b""),
     BASE.replace(b"beta = 2\n", b"") + b"zeta = 6\n"),
    ("the same edit on both sides is taken once",
     BASE.replace(b"gamma = 3", b"gamma = 9"), BASE.replace(b"gamma = 3", b"gamma = 9"),
     BASE.replace(b"gamma = 3", b"gamma = 9")),
    ("one side unchanged takes the other", BASE, BASE + b"zeta = 6\n", BASE + b"zeta = 6\n"),
    ("both sides delete the same line and edit others",
     BASE.replace(b"beta = 2\n", b"").replace(b"# foo.conf", b"# mine"),
     BASE.replace(b"beta = 2\n", b"").replace(b"epsilon = 5", b"epsilon = 50"),
     BASE.replace(b"beta = 2\n", b"").replace(b"# foo.conf", b"# mine")
     .replace(b"epsilon = 5", b"epsilon = 50")),
    ("non-UTF-8 bytes and CRLF pass through",
     b"a\r\n\xff\nb\r\nc\n".replace(b"a\r", b"A\r"), b"a\r\n\xff\nb\r\nc\n".replace(b"c\n", b"C\n"),
     b"A\r\n\xff\nb\r\nC\n"),
]


@pytest.mark.parametrize(("name", "old", "new", "expected"), CASES, ids=[c[0] for c in CASES])
def test_clean_merges(name: str, old: bytes, new: bytes, expected: bytes) -> None:
    base = b"a\r\n\xff\nb\r\nc\n" if b"\xff" in old else BASE
    result = merge_lines(base, old, new)
    assert result.content == expected
    assert not result.conflicts


def test_overlapping_edits_conflict_with_the_line_named() -> None:
    result = merge_lines(BASE, BASE.replace(b"beta = 2", b"beta = 20"),
                         BASE.replace(b"beta = 2", b"beta = 21"))
    assert result.content is None
    assert result.conflicts == ((3, 3),)
    assert "line(s) 3" in result.reason


def test_adjacent_edits_conflict_as_in_diff3() -> None:
    result = merge_lines(BASE, BASE.replace(b"beta = 2", b"beta = 20"),
                         BASE.replace(b"gamma = 3", b"gamma = 30"))
    assert result.content is None


def test_different_insertions_at_the_same_place_conflict() -> None:
    result = merge_lines(BASE, BASE + b"mine\n", BASE + b"theirs\n")
    assert result.content is None
    assert result.conflicts == ((7, 7),)


def test_a_last_line_without_newline_is_not_glued_to_the_next() -> None:
    base = b"a\nb\nc"
    result = merge_lines(base, b"A\nb\nc", b"a\nb\nc\nd\n")
    assert result.content == b"A\nb\nc\nd\n"


def test_an_ambiguous_place_is_a_conflict_not_a_guess() -> None:
    """Found by the idempotence property: the admin added a repeated line, the package changed
    the first one; where the added "x" goes is a guess, and merging the guess again grew it."""
    result = merge_lines(b"x\nx\n", b"x\nx\nx\n", b"y\nx\n")
    assert result.content is None and "unambiguously" in result.reason


def test_files_too_different_are_a_conflict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lines, "MAX_DIFFERENCES", 5)
    base = b"".join(b"%d\n" % i for i in range(20))
    result = merge_lines(base, base.replace(b"1", b"x"), base.replace(b"2", b"y"))
    assert result.content is None
    assert "more than 5 lines differ" in result.reason


edits = st.lists(st.tuples(st.integers(0, 11), st.sampled_from([b"X\n", b"Y\n", None])),
                 max_size=4)


def apply_edits(base: list[bytes], changes: list[tuple[int, bytes | None]]) -> list[bytes]:
    result = list(base)
    for index, line in changes:
        if index < len(result):
            if line is None:
                del result[index]
            else:
                result[index] = line
    return result


@given(edits, edits)
@settings(max_examples=300)
def test_merge_properties(old_edits: list[tuple[int, bytes | None]],
                          new_edits: list[tuple[int, bytes | None]]) -> None:
    base = [b"%d\n" % i for i in range(12)]
    old, new = apply_edits(base, old_edits), apply_edits(base, new_edits)
    b, o, t = b"".join(base), b"".join(old), b"".join(new)
    assert merge_lines(b, b, t).content == t
    assert merge_lines(b, o, b).content == o
    assert merge_lines(b, o, o).content == o
    merged = merge_lines(b, o, t).content
    if merged is not None:
        assert merge_lines(b, o, merged).content == merged  # merging again changes nothing
        touched_by_new = set(new) ^ set(base)
        for line in set(old) ^ set(base):  # every line the admin added or removed, as such
            assert (line in split_lines(merged)) == (line in old) or line in touched_by_new

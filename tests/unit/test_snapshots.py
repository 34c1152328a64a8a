"""info.xml as snapper writes and reads it; snapshot numbers from subvolume paths; cleanup."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amber.log import AmberError
from amber.snapshots import Snapshot, parse_info, render_info, snapshot_number_of
from amber.system import cleanup_candidates

# As snapper 0.10 writes it (the shape of a SLE Micro snapshot made by transactional-update).
SNAPPER_INFO = """<?xml version="1.0"?>
<snapshot>
  <type>single</type>
  <num>42</num>
  <date>2024-03-01 08:15:02</date>
  <description>Snapshot Update of #41</description>
  <cleanup>number</cleanup>
  <userdata>
    <key>transactional-update-in-progress</key>
    <value>yes</value>
  </userdata>
  <userdata>
    <key>important</key>
    <value>yes</value>
  </userdata>
</snapshot>
"""


def test_parse_snapper_info() -> None:
    snap = parse_info(SNAPPER_INFO)
    assert snap.number == 42
    assert snap.date == "2024-03-01 08:15:02"
    assert snap.description == "Snapshot Update of #41"
    assert snap.cleanup == "number"
    assert snap.in_progress and snap.important and not snap.pinned


def test_kiwi_first_snapshot_without_optional_fields() -> None:
    snap = parse_info("<?xml version=\"1.0\"?><snapshot><type>single</type><num>1</num>"
                      "<date>2024-01-01 00:00:00</date><description>first root filesystem"
                      "</description></snapshot>")
    assert snap.number == 1 and snap.userdata == {} and snap.cleanup == ""


@pytest.mark.parametrize("text", ["", "<snapshot>", "<snapshot><num>x</num></snapshot>",
                                  "<snapshot></snapshot>"])
def test_bad_info_is_an_amber_error(text: str) -> None:
    with pytest.raises(AmberError):
        parse_info(text)


text_st = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=40)


@given(number=st.integers(min_value=1, max_value=10**6), description=text_st,
       userdata=st.dictionaries(st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True),
                                text_st, max_size=4),
       pre=st.one_of(st.none(), st.integers(min_value=1, max_value=999)))
def test_render_parse_round_trip(number: int, description: str, userdata: dict[str, str],
                                 pre: int | None) -> None:
    snap = Snapshot(number=number, date="2025-05-05 05:05:05", description=description.strip(),
                    cleanup="number", userdata={k: v.strip() for k, v in userdata.items()},
                    pre_num=pre)
    assert parse_info(render_info(snap)) == snap


@pytest.mark.parametrize(("path", "number"), [
    ("@/.snapshots/3/snapshot", 3), (".snapshots/12/snapshot", 12),
    ("@", None), ("@/var", None), ("@/.snapshots/x/snapshot", None),
])
def test_snapshot_number_of(path: str, number: int | None) -> None:
    assert snapshot_number_of(path) == number


def _snap(n: int, **userdata: str) -> Snapshot:
    return Snapshot(number=n, date="", userdata=userdata)


def test_cleanup_keeps_newest_pinned_and_protected() -> None:
    snaps = [_snap(n) for n in range(1, 11)]
    snaps[2] = _snap(3, pinned="yes")
    snaps.append(Snapshot(11, "", userdata={"transactional-update-in-progress": "yes"}))
    assert cleanup_candidates(snaps, keep=3, protected={1, 5}) == [2, 4, 6, 7, 11]


def test_cleanup_never_removes_protected_in_progress() -> None:
    snaps = [Snapshot(1, "", userdata={"transactional-update-in-progress": "yes"})]
    assert cleanup_candidates(snaps, keep=1, protected={1}) == []

"""info.xml as snapper writes and reads it; snapshot numbers from subvolume paths; cleanup."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amber.log import AmberError, ExitCode
from amber.snapshots import (
    Ref,
    Snapshot,
    Store,
    clean_text,
    parse_info,
    render_info,
    shown,
    snapshot_number_of,
)
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


# ---- issue 8: metadata that is hostile, broken or not what it claims ---------------------------

def _info(number: int | str, description: str = "", extra: str = "") -> str:
    return (f'<?xml version="1.0"?>\n<snapshot>\n  <type>single</type>\n  <num>{number}</num>\n'
            f"  <date>2024-01-01 00:00:00</date>\n  <description>{description}</description>\n"
            f"{extra}</snapshot>\n")


def _store(tmp_path: Path, infos: dict[str, str | bytes | None]) -> Store:
    """A snapshot store of plain directories: Store reads info.xml without btrfs."""
    for name, info in infos.items():
        directory = tmp_path / ".snapshots" / name
        (directory / "snapshot").mkdir(parents=True)
        if isinstance(info, str):
            (directory / "info.xml").write_text(info)
        elif isinstance(info, bytes):
            (directory / "info.xml").write_bytes(info)
    return Store(tmp_path)


def test_the_directory_is_the_identity(tmp_path: Path) -> None:
    """Finding 2: snapshot 3's info.xml says <num>2</num>; pinned 2 must survive cleanup and
    an update of 3 must never write 2's info.xml."""
    pinned = _info(2, extra="  <userdata>\n    <key>pinned</key>\n    <value>yes</value>\n"
                            "  </userdata>\n")
    store = _store(tmp_path, {"1": _info(1), "2": pinned, "3": _info(2, "liar"), "4": _info(4)})
    liar = store.get(3)
    assert liar.number == 3 and "<num>2</num>" in liar.broken
    snapshots = store.list()
    assert [s.number for s in snapshots] == [1, 2, 3, 4]
    assert cleanup_candidates(snapshots, keep=1, protected={1}) == []
    with pytest.raises(AmberError) as refused:
        store.update(3, {"pinned": "yes"})
    assert refused.value.code == ExitCode.REFUSED
    assert (tmp_path / ".snapshots/2/info.xml").read_text() == pinned
    assert (tmp_path / ".snapshots/3/info.xml").read_text() == _info(2, "liar")


@pytest.mark.parametrize("name", ["²", "٣", "007", "0", "x1", "1x", " 1", "99999999999999999999"])
def test_only_canonical_ascii_numbers_name_snapshots(tmp_path: Path, name: str) -> None:
    """Findings 6 and 9: '²' passes str.isdigit() but not int(); '007' is not snapshot 7."""
    store = _store(tmp_path, {"1": _info(1), name: _info(7)})
    assert store.numbers() == [1]
    assert [s.number for s in store.list()] == [1]
    assert snapshot_number_of(f"@/.snapshots/{name}/snapshot") is None


@pytest.mark.parametrize("text", ["²", "٣", "007", "0", "", "-1", "+1", " 3", "3 ", "3\n", "1_0",
                                  "0x3", "3.0", "last", "99999999999999999999", "booted\udcff"])
def test_ref_parse_rejects_what_is_not_a_number(text: str) -> None:
    with pytest.raises(AmberError) as malformed:
        Ref.parse(text)
    assert malformed.value.code == ExitCode.USAGE and malformed.value.hint


def test_ref_parse_numbers_and_names() -> None:
    assert Ref.parse("3") == Ref("3", 3)
    assert Ref.parse("1234567890") == Ref("1234567890", 1234567890)
    assert Ref.parse("booted") == Ref("booted", None)
    assert Ref.parse("last", names=("last",)) == Ref("last", None)
    with pytest.raises(AmberError):
        Ref.parse("default", names=())


def test_ref_resolve_missing_number_is_not_found(tmp_path: Path) -> None:
    store = _store(tmp_path, {"1": _info(1)})
    assert store.resolve(Ref.parse("1")) == 1
    with pytest.raises(AmberError) as missing:
        store.resolve(Ref.parse("5"))
    assert missing.value.code == ExitCode.NOT_FOUND


BILLION_LAUGHS = ('<?xml version="1.0"?>\n<!DOCTYPE snapshot [<!ENTITY a "aaaaaaaaaa">'
                  + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">'
                            for i in range(8))
                  + ']>\n<snapshot><type>single</type><num>2</num><date>d</date>'
                    "<description>&i;</description></snapshot>\n")


@pytest.mark.parametrize(("info", "reason"), [
    ("", "not valid"),
    ("garbage \x00\x01 garbage", "not valid"),
    ("<snapshot><num>2</num>", "not valid"),
    ("<snapshot><num>x</num></snapshot>", "<num>"),
    ("<snapshot><num>²</num></snapshot>", "<num>"),
    ("<snapshot><num>٣</num></snapshot>", "<num>"),
    (_info(2, "bell \x07 inside"), "not valid"),
    (_info(2, "&bogus;"), "not valid"),
    (_info(2, "&#1;"), "not valid"),
    (_info(2, extra="  <pre_num>²</pre_num>\n"), ""),
    (BILLION_LAUGHS, "document type"),
    ('<?xml version="1.0"?><!DOCTYPE s [<!ENTITY e "x">]><snapshot><num>2</num></snapshot>',
     "document type"),
    ("<other><num>2</num></other>", "not snapper"),
])
def test_broken_info_is_listed_as_broken(tmp_path: Path, info: str, reason: str) -> None:
    """Finding 8: one bad info.xml is listed as broken, the others as they are."""
    store = _store(tmp_path, {"1": _info(1), "2": info, "3": _info(3)})
    snapshots = store.list()
    assert [s.number for s in snapshots] == [1, 2, 3]
    assert snapshots[0].broken == "" and snapshots[2].broken == ""
    if reason:
        assert reason in snapshots[1].broken
        assert cleanup_candidates(snapshots, keep=1, protected={3}) == [1]
    else:  # a bad optional field is dropped, the snapshot is fine
        assert snapshots[1].broken == "" and snapshots[1].pre_num is None


def test_info_that_is_not_a_small_regular_file(tmp_path: Path) -> None:
    """Finding 6: info.xml a directory, a symbolic link to /dev/zero, a FIFO, a huge file."""
    store = _store(tmp_path, {"1": _info(1), "2": None, "3": None, "4": None, "5": None,
                              "6": None})
    (tmp_path / ".snapshots/2/info.xml").mkdir()
    (tmp_path / ".snapshots/3/info.xml").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / ".snapshots/4/info.xml")
    (tmp_path / ".snapshots/5/info.xml").write_text(_info(5, "x" * (2 << 20)))
    broken = {s.number: s.broken for s in store.list()}
    assert broken[1] == ""
    assert "not a regular file" in broken[2]
    assert "symbolic link" in broken[3]
    assert "not a regular file" in broken[4]
    assert "larger than" in broken[5]
    assert "no info.xml" in broken[6]


def test_pin_keeps_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    """Finding 9: rewriting an info.xml keeps its non-UTF-8 bytes instead of writing U+FFFD."""
    raw = _info(2, "caf\xe9 M\xfcller").encode("latin-1")
    store = _store(tmp_path, {"2": raw})
    assert store.get(2).broken == ""
    assert shown(store.get(2).description) == "caf\ufffd M\ufffdller"
    store.update(2, {"pinned": "yes"})
    after = (tmp_path / ".snapshots/2/info.xml").read_bytes()
    assert b"<description>caf\xe9 M\xfcller</description>" in after
    assert store.get(2).pinned and store.get(2).description == "caf\udce9 M\udcfcller"


def test_descriptions_keep_their_whitespace() -> None:
    """Finding 9: surrounding whitespace is kept (written as character references, because a
    pretty-printed file's indentation around a value is not part of it)."""
    for text in ("  indented", "trailing  ", "\ttab\t", "\nnewline\n", "cr\r\nlf", " "):
        snap = Snapshot(number=4, date="2024-01-01 00:00:00", description=text,
                        userdata={"note": text})
        assert parse_info(render_info(snap)) == snap


def test_pretty_printed_info_is_read_without_its_indentation() -> None:
    """kiwi on older Pythons wrote every value on its own indented line."""
    snap = parse_info('<?xml version="1.0" ?>\n<snapshot>\n    <type>\n        single\n'
                      "    </type>\n    <num>\n        1\n    </num>\n    <description>\n"
                      "        first root filesystem\n    </description>\n</snapshot>\n")
    assert (snap.number, snap.type, snap.description) == (1, "single", "first root filesystem")


def test_control_characters_make_well_formed_info(tmp_path: Path) -> None:
    """Finding 7: control characters in a description (or in the command line that becomes the
    description) are written so that the file stays well-formed, and read back."""
    import xml.etree.ElementTree as ET

    store = _store(tmp_path, {"1": _info(1)})
    (tmp_path / ".snapshots/2").mkdir()
    text = "amber run printf '\x1b[31m\x00\x07\x08\x0c\udcff\ufffe'"
    store.write_info(Snapshot(number=2, date="2024-01-01 00:00:00", description=clean_text(text),
                              userdata={"base": "1", "k": clean_text("\x01")}))
    data = (tmp_path / ".snapshots/2/info.xml").read_bytes()
    doc = ET.fromstring(data)
    assert doc.findtext("description") == "amber run printf '␛[31m␀␇␈␌\ufffd\ufffd'"
    assert store.get(2).description == doc.findtext("description")
    assert store.get(2).userdata == {"base": "1", "k": "␁"}


def test_write_info_reads_back_what_it_wrote(tmp_path: Path) -> None:
    """A snapshot whose text info.xml cannot carry is refused before the old file is touched."""
    store = _store(tmp_path, {"2": _info(2, "old")})
    with pytest.raises(AmberError):
        store.write_info(Snapshot(number=2, date="d", description="bell \x07"))
    assert store.get(2).description == "old"
    assert sorted(os.listdir(tmp_path / ".snapshots/2")) == ["info.xml", "snapshot"]


# Every code point, surrogates and control characters included, and pieces of markup.
MARKUP = ["<", ">", "&", "&amp;", "&lt;", "&#13;", "&#1;", "&bogus;", "]]>", "</description>",
          "<userdata>", "<![CDATA[", "<!DOCTYPE x>", "<?xml?>", "\r\n", "\r", " ", "\t", "\n",
          "\udcff", "\ud800", "\x1b", "\x00", "\ufffe", "\ufeff"]
any_text = st.lists(st.one_of(st.text(alphabet=st.characters(exclude_categories=()), max_size=8),
                              st.sampled_from(MARKUP)), max_size=8).map("".join)
key_text = st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True)


@given(description=any_text, value=any_text, key=key_text)
def test_any_text_round_trips_through_info_xml(description: str, value: str, key: str) -> None:
    """What clean_text leaves is XML 1.0 that a real parser reads back exactly; rendering keeps
    the bytes of a file read with surrogateescape; nothing else gets lost or changed."""
    import xml.etree.ElementTree as ET

    clean = Snapshot(number=7, date="2025-05-05 05:05:05", description=clean_text(description),
                     cleanup="number", userdata={key: clean_text(value)})
    rendered = render_info(clean)
    doc = ET.fromstring(rendered.encode("utf-8"))  # strict: no surrogate gets through
    assert (doc.findtext("description") or "") == clean.description
    assert parse_info(rendered) == clean
    assert clean_text(clean.description) == clean.description

    # Bytes read from a file that was not UTF-8 (surrogate escapes) are written back as read.
    raw = description.encode("utf-8", "surrogatepass").decode("utf-8", "surrogateescape")
    as_read = Snapshot(number=7, date="d", description=clean_text(raw, keep_bytes=True))
    data = render_info(as_read).encode("utf-8", "surrogateescape")
    assert parse_info(data.decode("utf-8", "surrogateescape")) == as_read


@given(description=any_text)
def test_parsing_what_was_rendered_is_stable(description: str) -> None:
    snap = parse_info(render_info(Snapshot(number=1, date="", description=description)))
    assert parse_info(render_info(snap)) == snap


def test_listing_shows_hostile_text_harmlessly() -> None:
    """A description read from disk may hold a terminal escape or bytes that are not UTF-8:
    the table shows them visibly, the JSON as Unicode, and a broken snapshot says why."""
    import json

    from amber.system import Row, render_snapshot_table

    hostile = Snapshot(number=2, date="2024-01-01 00:00:00", description="\x1b[2J\x9b1m caf\udce9",
                       userdata={"k\udcff": "v\udcfe"})
    broken = Snapshot.unreadable(3, "info.xml is not valid XML: syntax error")
    rows = [Row(hostile, True, False, False), Row(broken, True, False, False)]
    table = render_snapshot_table(rows)
    assert "␛[2J\ufffd1m caf\ufffd" in table and "\x1b" not in table and "\x9b" not in table
    table.encode()  # printable on a UTF-8 terminal
    assert "!" in table.splitlines()[2] and "(info.xml is not valid XML" in table
    listed = [row.as_json() for row in rows]
    json.dumps(listed, ensure_ascii=False).encode()
    assert listed[0]["description"] == "\x1b[2J\x9b1m caf\ufffd"
    assert listed[0]["userdata"] == {"k\ufffd": "v\ufffd"}
    assert listed[0]["broken"] is None and listed[1]["broken"].startswith("info.xml is not")

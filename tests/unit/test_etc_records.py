"""The record merge of passwd, group, shadow, gshadow, subuid and subgid."""

from __future__ import annotations

import pytest

from amber.etc.records import RECORD_FILES, NotRecords, merge_records, parse

PASSWD = (b"root:x:0:0:root:/root:/bin/bash\n"
          b"daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
          b"admin:x:1000:1000:Admin:/home/admin:/bin/bash\n")
SHADOW = b"root:!:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\nadmin:$6$a:19000::::::\n"


def test_the_account_files() -> None:
    assert {b"passwd", b"group", b"shadow", b"gshadow", b"subuid", b"subgid"} == RECORD_FILES


def test_a_package_adds_a_user_while_the_admin_changes_the_root_password() -> None:
    old = SHADOW.replace(b"root:!:19000", b"root:$6$secret:19500")
    new = SHADOW + b"_chrony:!:19600::::::\n"
    result = merge_records(b"shadow", SHADOW, old, new)
    assert result.method == "records"
    assert result.content == old + b"_chrony:!:19600::::::\n"


def test_both_sides_add_users_in_their_order() -> None:
    old = PASSWD + b"alice:x:1001:1001::/home/alice:/bin/bash\n"
    new = PASSWD + b"_chrony:x:998:998::/var/lib/chrony:/usr/sbin/nologin\n"
    result = merge_records(b"passwd", PASSWD, old, new)
    assert result.content == (PASSWD + b"_chrony:x:998:998::/var/lib/chrony:/usr/sbin/nologin\n"
                              b"alice:x:1001:1001::/home/alice:/bin/bash\n")
    again = merge_records(b"passwd", PASSWD, old, result.content or b"")
    assert again.content == result.content  # merging twice changes nothing


def test_a_record_the_new_snapshot_inserts_goes_after_its_predecessor() -> None:
    new = PASSWD.replace(b"admin:x:", b"messagebus:x:100:101::/nonexistent:/usr/sbin/nologin\n"
                                      b"admin:x:")
    old = PASSWD + b"+::::::\n"  # NIS compat: must stay last
    result = merge_records(b"passwd", PASSWD, old, new)
    assert result.content is not None
    assert result.content.splitlines()[2].startswith(b"messagebus:")
    assert result.content.endswith(b"+::::::\n")


def test_deletions_and_edits_of_different_records_merge() -> None:
    old = PASSWD.replace(b"daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n", b"")
    new = PASSWD.replace(b"/home/admin:/bin/bash", b"/home/admin:/bin/zsh")
    expected = old.replace(b"/home/admin:/bin/bash", b"/home/admin:/bin/zsh")
    assert merge_records(b"passwd", PASSWD, old, new).content == expected


@pytest.mark.parametrize(("old", "new"), [
    (SHADOW.replace(b"root:!", b"root:$6$mine"), SHADOW.replace(b"root:!", b"root:$6$theirs")),
    (SHADOW.replace(b"root:!:19000:0:99999:7:::\n", b""), SHADOW.replace(b"root:!", b"root:*")),
    (SHADOW + b"bob:!:1::::::\n", SHADOW + b"bob:*:2::::::\n"),
], ids=["edited differently", "deleted against edited", "added differently"])
def test_the_same_record_changed_differently_is_a_conflict(old: bytes, new: bytes) -> None:
    result = merge_records(b"shadow", SHADOW, old, new)
    assert result.content is None
    assert result.method == "records"
    assert "root" in result.reason or "bob" in result.reason


def test_the_same_record_changed_the_same_way_is_fine() -> None:
    both = SHADOW.replace(b"root:!", b"root:$6$same")
    assert merge_records(b"shadow", SHADOW, both, both + b"x:!:1::::::\n").content == (
        both + b"x:!:1::::::\n")


def test_a_uid_given_out_on_both_sides_is_a_conflict() -> None:
    old = PASSWD + b"alice:x:1001:1001::/home/alice:/bin/bash\n"
    new = PASSWD + b"bob:x:1001:1001::/home/bob:/bin/bash\n"
    result = merge_records(b"passwd", PASSWD, old, new)
    assert result.content is None
    assert "same uid" in result.reason and "alice, bob" in result.reason


def test_a_shared_uid_that_was_there_before_is_no_conflict() -> None:
    base = PASSWD + b"toor:x:0:0::/root:/bin/sh\n"
    result = merge_records(b"passwd", base, base.replace(b"/bin/sh", b"/bin/bash"),
                           base + b"x:x:5:5::/:/bin/sh\n")
    assert result.content is not None


def test_a_gid_given_out_on_both_sides_is_a_conflict() -> None:
    group = b"root:x:0:\nusers:x:100:\n"
    result = merge_records(b"group", group, group + b"admins:x:1001:alice\n",
                           group + b"docker:x:1001:\n")
    assert result.content is None and "same gid" in result.reason


def test_overlapping_subordinate_ranges_are_a_conflict() -> None:
    base = b"admin:100000:65536\n"
    old = base + b"alice:165536:65536\n"
    new = base + b"_builder:165536:65536\n"
    result = merge_records(b"subuid", base, old, new)
    assert result.content is None and "subordinate id range" in result.reason
    fine = merge_records(b"subuid", base, old, base + b"_builder:231072:65536\n")
    assert fine.content == base + b"_builder:231072:65536\nalice:165536:65536\n"


def test_a_file_with_comments_or_repeated_keys_is_merged_line_by_line() -> None:
    base = b"# ranges\nadmin:100000:65536\nadmin:300000:65536\n"
    result = merge_records(b"subuid", base, base.replace(b"# ranges", b"# mine"),
                           base + b"bob:400000:65536\n")
    assert result.method == "lines"
    assert result.content == b"# mine\nadmin:100000:65536\nadmin:300000:65536\nbob:400000:65536\n"


def test_parse() -> None:
    assert list(parse(PASSWD)) == [b"root", b"daemon", b"admin"]
    assert parse(b"") == {}
    assert parse(b"a:1") == {b"a": b"a:1"}  # a last record without newline
    for bad in (b"a:1\n\nb:2\n", b"#c\na:1\n", b"a:1\na:2\n", b"novalue\n"):
        with pytest.raises(NotRecords):
            parse(bad)


def test_a_record_without_newline_at_the_end_gets_one() -> None:
    base = b"root:x:0:\nusers:x:100:"
    result = merge_records(b"group", base, base.replace(b"users:x:100:", b"users:x:100:alice"),
                           base + b"\nstaff:x:50:")
    assert result.content == b"root:x:0:\nusers:x:100:alice\nstaff:x:50:\n"


def test_non_utf8_names_pass_through() -> None:
    base = b"root:x:0:\n"
    result = merge_records(b"group", base, base + b"gr\xfcne:x:2000:\n", base + b"x:x:2001:\n")
    assert result.content == base + b"x:x:2001:\ngr\xfcne:x:2000:\n"

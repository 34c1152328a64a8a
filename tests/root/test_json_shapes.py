"""The JSON that amber prints is an interface: its keys and their types are pinned here, on a real
system root, and every pinned key is named in the README, where they are documented.

A key that appears, disappears or changes type fails this test; so does one the README does not
name. Change both together."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from testing.packages import build_deb
from tests.root.conftest import System
from tests.root.helpers import amber, amber_json

pytestmark = pytest.mark.root

README = Path(__file__).resolve().parents[2] / "README.md"
NUMBER = int
MAYBE_NUMBER = (int, type(None))
MAYBE_TEXT = (str, type(None))

STATUS = {"root": str, "booted": MAYBE_NUMBER, "default": MAYBE_NUMBER, "in_progress": list,
          "interrupted": list, "reboot_needed": bool,
          "reboot_avoided_by_livepatch": MAYBE_TEXT, "warnings": list, "reboot": dict,
          "boot_menu": bool, "next_boot_once": MAYBE_NUMBER, "health": MAYBE_TEXT,
          "last_rollback": (dict, type(None)), "etc_conflicts": list}
SNAPSHOT_ROW = {"number": NUMBER, "date": str, "description": str, "read_only": bool,
                "default": bool, "booted": bool, "pinned": bool, "in_progress": bool,
                "cleanup": str, "type": str, "userdata": dict, "broken": MAYBE_TEXT,
                "health": str}
TRANSACTION = {"snapshot": MAYBE_NUMBER, "base": NUMBER, "description": str, "dropped": bool,
               "default": MAYBE_NUMBER, "changed": bool}
DIFF = {"added": list, "removed": list, "changed": list}
DIFF_ADDED = {"name": str, "version": str}
DIFF_CHANGED = {"name": str, "old": str, "new": str}
CLEANUP = {"removed": list}
LIVEPATCH_VIEW = {"booted": MAYBE_NUMBER, "default": MAYBE_NUMBER, "patches": list,
                  "drift": list}
ROLLBACK = {"default": NUMBER, "previous_default": MAYBE_NUMBER, "booted": MAYBE_NUMBER,
            "reverted_livepatches": list}
ETC_DIFF = {"snapshot": NUMBER, "changes": list}
ETC_CHANGE = {"path": str, "change": str, "type": str}
ETC_MODIFIED = {**ETC_CHANGE, "attributes": list}
ETC_CONFLICTS = {"snapshot": NUMBER, "directory": str, "conflicts": list}
ETC_CONFLICT = {"path": str, "reason": str, "detail": str, "base": MAYBE_TEXT, "old": MAYBE_TEXT,
                "new": MAYBE_TEXT}


def check(value: Any, shape: dict[str, Any], what: str) -> None:
    assert isinstance(value, dict), f"{what}: not an object: {value!r}"
    assert set(value) == set(shape), f"{what}: keys {sorted(value)} != {sorted(shape)}"
    for key, kind in shape.items():
        assert isinstance(value[key], kind), f"{what}.{key}: {value[key]!r} is not {kind}"


def documented_keys() -> set[str]:
    """Every name in a code span of the README (`key`, `{name, old, new}`)."""
    spans = re.findall(r"`([^`\n]+)`", README.read_text())
    return {word for span in spans for word in re.findall(r"[a-z_]+", span)}


@pytest.mark.parametrize("shape", [STATUS, SNAPSHOT_ROW, TRANSACTION, DIFF, DIFF_ADDED,
                                   DIFF_CHANGED, CLEANUP, ROLLBACK, LIVEPATCH_VIEW, ETC_DIFF,
                                   ETC_MODIFIED, ETC_CONFLICTS, ETC_CONFLICT])
def test_every_pinned_key_is_documented(shape: dict[str, Any]) -> None:
    assert set(shape) <= documented_keys(), set(shape) - documented_keys()


def test_json_shapes(system: System, tmp_path: Path) -> None:
    root = system.root
    check(amber_json(root, "status"), STATUS, "status")
    deb = build_deb(tmp_path, "amber-shape", "1.0", {"/usr/share/amber-shape/a": "a\n"})
    check(amber_json(root, "pkg", "install", str(deb)), TRANSACTION, "pkg install")
    dropped = json.loads(amber(root, "run", "--json", "--continue", "--drop-if-no-change", "--",
                               "true").stdout)
    check(dropped, TRANSACTION, "run (dropped)")
    assert dropped["dropped"] is True and dropped["snapshot"] is None
    newer = build_deb(tmp_path, "amber-shape", "2.0", {"/usr/share/amber-shape/a": "b\n"})
    check(amber_json(root, "pkg", "--continue", "install", str(newer)), TRANSACTION, "continue")

    rows = amber_json(root, "snapshots")
    assert isinstance(rows, list) and [r["number"] for r in rows] == [1, 2, 3]
    for row in rows:
        check(row, SNAPSHOT_ROW, f"snapshots[{row['number']}]")

    changes = amber_json(root, "diff", "1", "3")
    check(changes, DIFF, "diff")
    assert [c["name"] for c in changes["added"]] == ["amber-shape"]
    for item in changes["added"] + changes["removed"]:
        check(item, DIFF_ADDED, "diff item")
    changes = amber_json(root, "diff", "2", "3")
    assert changes["changed"], changes
    for item in changes["changed"]:
        check(item, DIFF_CHANGED, "diff changed")

    check(amber_json(root, "rollback", "2"), ROLLBACK, "rollback")
    check(amber_json(root, "cleanup", "--keep", "1"), CLEANUP, "cleanup")
    check(amber_json(root, "status"), STATUS, "status after")



def test_etc_json_shapes(system: System) -> None:
    """`amber etc diff` and `amber etc conflicts`, with a real conflict from the first-boot
    merge (run here as the initrd runs it)."""
    root, etc = system.root, system.root / "etc"
    (etc / "shape.conf").write_text("a = 1\n")
    amber(root, "run", "--", "sed", "-i", "s/^a = 1/a = update/", "/etc/shape.conf")
    (etc / "shape.conf").write_text("a = admin\n")
    (etc / "added.conf").write_text("new\n")
    changes = amber_json(root, "etc", "diff")
    check(changes, ETC_DIFF, "etc diff")
    kinds = {c["path"]: c["change"] for c in changes["changes"]}
    assert kinds["shape.conf"] == "added" and kinds["added.conf"] == "added", kinds
    (etc / "added.conf").unlink()
    (etc / "passwd").write_text((etc / "passwd").read_text() + "shape:x:3000:3000::/:/bin/sh\n")
    modified = [c for c in amber_json(root, "etc", "diff")["changes"] if c["path"] == "passwd"]
    assert modified, "the admin's edit of passwd is not listed"
    check(modified[0], ETC_MODIFIED, "etc diff (modified)")
    for change in changes["changes"]:
        check(change, ETC_MODIFIED if change["change"] == "modified" else ETC_CHANGE,
              "etc diff change")

    amber(root, "etc", "merge-pending", "2")
    found = amber_json(root, "etc", "conflicts", "2")
    check(found, ETC_CONFLICTS, "etc conflicts")
    assert [c["path"] for c in found["conflicts"]] == ["shape.conf"], found
    check(found["conflicts"][0], ETC_CONFLICT, "etc conflicts item")
    status = amber_json(root, "status")
    check(status, STATUS, "status")
    assert status["etc_conflicts"] == []  # the booted snapshot (1) had no merge


def test_status_with_live_patching_carries_data_only(system: System, tmp_path: Path) -> None:
    """Where the kernel supports live patching, status has a `livepatch` object: data (no
    rendered lines), its drift listed once."""
    (tmp_path / "sys/kernel/livepatch").mkdir(parents=True)
    status = json.loads(amber(system.root, "status", "--json",
                              env={"AMBER_SYSFS": str(tmp_path / "sys")}).stdout)
    check(status, {**STATUS, "livepatch": dict}, "status")
    check(status["livepatch"], LIVEPATCH_VIEW, "status.livepatch")

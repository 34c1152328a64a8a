"""Bad on-disk state and bad arguments on roots made without amber (issue 8, findings 2, 6, 7,
8, 9): a small btrfs laid out with btrfs-progs as snapper's layout, snapshots whose info.xml is
written by hand, a root filesystem of nothing but a shell and `true`. Every bad input must give
one line and a hint with its own exit code, and nothing finished may be touched."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from amber.log import ExitCode
from tests.conftest import require
from tests.root.helpers import AMBER, amber, amber_json

pytestmark = pytest.mark.root

# The keys README documents for every row of `amber snapshots --json`.
ROW_KEYS = {"number", "date", "description", "read_only", "default", "booted", "pinned",
            "in_progress", "cleanup", "type", "userdata", "broken", "health"}


def info_xml(number: int | str, description: str = "", userdata: dict[str, str] | None = None,
             ) -> str:
    pairs = "".join(f"  <userdata>\n    <key>{k}</key>\n    <value>{v}</value>\n  </userdata>\n"
                    for k, v in (userdata or {}).items())
    return (f'<?xml version="1.0"?>\n<snapshot>\n  <type>single</type>\n  <num>{number}</num>\n'
            f"  <date>2024-01-01 00:00:00</date>\n  <description>{description}</description>\n"
            f"  <cleanup>number</cleanup>\n{pairs}</snapshot>\n")


@dataclass
class Root:
    """A booted-like root: snapshot 1 mounted read-only at `path`, .snapshots writable."""

    path: Path
    device: str

    @property
    def store(self) -> Path:
        return self.path / ".snapshots"

    def btrfs(self, *args: str) -> str:
        return subprocess.run(["btrfs", *args], check=True, capture_output=True,
                              text=True).stdout

    def add(self, name: str, info: str | bytes | None, *, read_only: bool = True) -> Path:
        """Snapshot 1 as .snapshots/<name>/snapshot, with the info.xml given (or none)."""
        directory = self.store / name
        directory.mkdir()
        if isinstance(info, str):
            (directory / "info.xml").write_text(info)
        elif isinstance(info, bytes):
            (directory / "info.xml").write_bytes(info)
        self.btrfs("subvolume", "snapshot", *(["-r"] if read_only else []),
                   str(self.store / "1/snapshot"), str(directory / "snapshot"))
        return directory

    def set_default(self, name: str) -> None:
        self.btrfs("subvolume", "set-default", str(self.store / name / "snapshot"))

    def default(self) -> str:
        return self.btrfs("subvolume", "get-default", str(self.path)).strip()

    def names(self) -> list[str]:
        """The entries of .snapshots but amber's lock and state files."""
        return sorted(n for n in os.listdir(self.store) if not n.startswith("."))


def _minimal_rootfs(target: Path) -> None:
    """/bin/sh and /bin/true with the libraries they load: enough for `amber run`."""
    for directory in ("bin", "etc", "dev", "proc", "sys", "tmp", "run", ".snapshots"):
        (target / directory).mkdir()
    for program, name in (("/bin/dash", "sh"), ("/bin/true", "true")):
        shutil.copy2(program, target / "bin" / name)
        out = subprocess.run(["ldd", program], check=True, capture_output=True, text=True).stdout
        for library in re.findall(r"(/\S+\.so[.\d]*)", out):
            destination = target / library.lstrip("/")
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(library, destination)


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Root]:
    require(os.geteuid() == 0, "root tests need root")
    require(shutil.which("mkfs.btrfs") is not None, "root tests need btrfs-progs")
    require(shutil.which("ldd") is not None, "needs ldd to copy a shell")
    image = tmp_path / "bare.img"
    subprocess.run(["truncate", "-s", "320M", str(image)], check=True)
    subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True)
    device = subprocess.run(["losetup", "--find", "--show", str(image)], check=True,
                            capture_output=True, text=True).stdout.strip()
    top, path = tmp_path / "top", tmp_path / "root"
    top.mkdir()
    path.mkdir()
    mounted: list[Path] = []
    try:
        subprocess.run(["mount", device, str(top)], check=True)
        mounted.append(top)
        for sub in ("@", "@/.snapshots", "@/.snapshots/1/snapshot"):
            (top / sub).parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["btrfs", "-q", "subvolume", "create", str(top / sub)], check=True)
        first = top / "@/.snapshots/1/snapshot"
        _minimal_rootfs(first)
        (top / "@/.snapshots/1/info.xml").write_text(info_xml(1, "first root filesystem"))
        subprocess.run(["btrfs", "property", "set", str(first), "ro", "true"], check=True)
        subprocess.run(["btrfs", "subvolume", "set-default", str(first)], check=True)
        subprocess.run(["umount", str(top)], check=True)
        mounted.remove(top)
        subprocess.run(["mount", "-o", "ro", device, str(path)], check=True)
        mounted.append(path)
        subprocess.run(["mount", "-o", "subvol=@/.snapshots", device, str(path / ".snapshots")],
                       check=True)
        mounted.append(path / ".snapshots")
        yield Root(path, device)
    finally:
        for where in reversed(mounted):
            subprocess.run(["umount", str(where)], check=False)
        subprocess.run(["losetup", "-d", device], check=False)


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert len(errors) == 1 and lines[errors[0] + 1].startswith("  hint: "), result.stderr


def run(root: Root, *args: str) -> Any:
    """`amber run --json ARGS` (--json before the command's `--`)."""
    return json.loads(amber(root.path, "run", "--json", *args).stdout)


def rows(root: Root) -> dict[int, dict[str, Any]]:
    listing = amber(root.path, "snapshots", "--json", timeout=60)
    return {row["number"]: row for row in json.loads(listing.stdout)}


# ---- finding 2: the directory is the identity --------------------------------------------------

def test_info_xml_naming_another_number_is_left_alone(root: Root) -> None:
    pinned = info_xml(2, "pinned two", {"pinned": "yes"})
    root.add("2", pinned)
    root.add("3", info_xml(2, "a copy of two's info.xml"))
    root.add("4", info_xml(4))
    root.add("5", info_xml(5))
    listed = rows(root)
    assert sorted(listed) == [1, 2, 3, 4, 5]
    assert listed[2]["pinned"] and listed[2]["broken"] is None
    assert "<num>2</num>" in listed[3]["broken"] and not listed[3]["pinned"]

    for verb in (["pin", "3"], ["unpin", "3"], ["delete", "3"]):
        one_line_error(amber(root.path, *verb, check=False), ExitCode.REFUSED)
    assert (root.store / "2/info.xml").read_text() == pinned
    assert (root.store / "3/info.xml").read_text() == info_xml(2, "a copy of two's info.xml")

    cleaned = amber(root.path, "cleanup", "--keep", "1", "--json")
    assert json.loads(cleaned.stdout) == {"removed": [4]}
    assert "snapshot 3" in cleaned.stderr  # reported, and left alone
    assert root.names()[:3] == ["1", "2", "3"] and "5" in root.names()
    assert (root.store / "2/info.xml").read_text() == pinned


def test_pin_writes_only_its_own_info_xml(root: Root) -> None:
    two = info_xml(2, "two")
    root.add("2", two)
    root.add("3", info_xml(3, "three"))
    amber(root.path, "pin", "3")
    assert (root.store / "2/info.xml").read_text() == two
    assert rows(root)[3]["pinned"] and not rows(root)[2]["pinned"]


def test_cleanup_follows_no_symbolic_link_and_keeps_what_is_not_its_own(root: Root) -> None:
    """A snapshot directory whose `snapshot` is a link to pinned 2 is not a snapshot: deleting
    "it" would delete 2. A directory without a snapshot but with other files is not a leftover."""
    root.add("2", info_xml(2, "pinned", {"pinned": "yes"}))
    root.add("3", info_xml(3))
    (root.store / "4").mkdir()
    (root.store / "4/info.xml").write_text(info_xml(4))
    (root.store / "4/snapshot").symlink_to("../2/snapshot")
    root.add("5", info_xml(5))
    (root.store / "6").mkdir()
    (root.store / "6/notes.txt").write_text("the admin's\n")
    (root.store / "7").symlink_to("2")
    assert sorted(rows(root)) == [1, 2, 3, 5]
    assert amber_json(root.path, "cleanup", "--keep", "1") == {"removed": [3]}
    assert root.names() == ["1", "2", "4", "5", "6", "7"]
    assert (root.store / "2/snapshot/bin/sh").exists()
    assert (root.store / "6/notes.txt").exists()
    for number in ("4", "7"):
        one_line_error(amber(root.path, "delete", number, check=False), ExitCode.NOT_FOUND)
    assert (root.store / "2/snapshot/bin/sh").exists()


# ---- findings 6 and 9: names and references that are not snapshot numbers ---------------------

@pytest.mark.parametrize("name", ["²", "٣", "007", "0"])
def test_directories_that_are_not_snapshot_numbers(root: Root, name: str) -> None:
    root.add("2", info_xml(2))
    root.add("3", info_xml(3))
    root.add(name, info_xml(7))
    assert sorted(rows(root)) == [1, 2, 3]
    assert amber_json(root.path, "status")["booted"] == 1
    assert amber(root.path, "snapshots").returncode == 0
    assert amber_json(root.path, "cleanup", "--keep", "1") == {"removed": [2]}
    assert name in root.names()  # not a snapshot amber knows, so not amber's to remove
    outcome = run(root, "--", "true")
    assert outcome["snapshot"] == 4 and (root.store / name / "snapshot").is_dir()


@pytest.mark.parametrize("argv", [["rollback", "²"], ["rollback", "٣"], ["rollback", "007"],
                                  ["diff", "²", "1"], ["diff", "1", "٣"], ["pin", "٣"],
                                  ["delete", "²"], ["run", "--continue", "²", "--", "true"],
                                  ["run", "--continue", "٣", "--", "true"]])
def test_references_that_are_not_numbers(root: Root, argv: list[str]) -> None:
    root.add("3", info_xml(3, "three"))
    default = root.default()
    one_line_error(amber(root.path, *argv, check=False), ExitCode.USAGE)
    assert root.default() == default and root.names() == ["1", "3"]
    assert not rows(root)[3]["pinned"]


@pytest.mark.parametrize("argv", [["rollback", "42"], ["diff", "42", "1"], ["pin", "42"],
                                  ["unpin", "42"], ["delete", "42"],
                                  ["run", "--continue", "42", "--", "true"]])
def test_references_to_missing_snapshots(root: Root, argv: list[str]) -> None:
    one_line_error(amber(root.path, *argv, check=False), ExitCode.NOT_FOUND)
    assert root.names() == ["1"]


# ---- finding 8: one bad info.xml blocks nothing ------------------------------------------------

BILLION_LAUGHS = ('<?xml version="1.0"?>\n<!DOCTYPE snapshot [<!ENTITY a "aaaaaaaaaa">'
                  + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">'
                            for i in range(8))
                  + "]>\n<snapshot><type>single</type><num>3</num><date>d</date>"
                    "<description>&i;</description></snapshot>\n")


def _break(directory: Path, kind: str) -> None:
    info = directory / "info.xml"
    if kind == "directory":
        info.mkdir()
    elif kind == "dev-zero":
        info.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(info)
    else:
        info.write_bytes({"garbage": b"\x00\xff garbage <<<", "empty": b"",
                          "entities": BILLION_LAUGHS.encode(),
                          "huge": info_xml(3, "x" * (3 << 20)).encode(),
                          "no-number": info_xml("three").encode(),
                          "superscript-number": info_xml("³").encode()}[kind])


BROKEN_KINDS = ["garbage", "empty", "entities", "directory", "dev-zero", "fifo", "huge",
                "no-number", "superscript-number"]


@pytest.mark.parametrize("kind", BROKEN_KINDS)
def test_one_broken_info_xml_blocks_nothing(root: Root, kind: str) -> None:
    root.add("2", info_xml(2, "two"))
    _break(root.add("3", None), kind)
    root.add("4", info_xml(4, "four"))
    root.add("5", info_xml(5, "five"))
    listed = rows(root)
    assert sorted(listed) == [1, 2, 3, 4, 5]
    for row in listed.values():
        assert set(row) == ROW_KEYS
    assert listed[3]["broken"] and [n for n, r in listed.items() if r["broken"]] == [3]
    assert listed[4]["description"] == "four"
    text = amber(root.path, "snapshots", timeout=60)
    assert "(info.xml" in text.stdout and "snapshot 3" in text.stderr

    amber(root.path, "pin", "4", timeout=60)
    one_line_error(amber(root.path, "pin", "3", check=False, timeout=60), ExitCode.REFUSED)
    one_line_error(amber(root.path, "delete", "3", check=False, timeout=60), ExitCode.REFUSED)
    cleaned = amber(root.path, "cleanup", "--keep", "1", "--json", timeout=60)
    assert json.loads(cleaned.stdout) == {"removed": [2]}  # 3 is broken, 4 pinned, 5 newest
    assert root.names() == ["1", "3", "4", "5"]
    assert amber_json(root.path, "status")["default"] == 1


@pytest.mark.parametrize("which", ["booted", "default", "both"])
def test_broken_booted_or_default_metadata_does_not_stop_status(root: Root, which: str) -> None:
    root.add("2", info_xml(2, "two"))
    root.set_default("2")
    if which in ("booted", "both"):
        (root.store / "1/info.xml").write_text("garbage")
    if which in ("default", "both"):
        (root.store / "2/info.xml").write_text(BILLION_LAUGHS)
    status = amber_json(root.path, "status")
    assert (status["booted"], status["default"], status["reboot_needed"]) == (1, 2, True)
    assert amber(root.path, "status").returncode == 0
    assert sorted(rows(root)) == [1, 2]


# ---- findings 6, 7 and 9: text in info.xml ----------------------------------------------------

def _parsed_description(root: Root, number: int) -> str:
    """What a strict XML parser (snapper's is libxml2) reads from the file amber wrote."""
    doc = ET.fromstring((root.store / str(number) / "info.xml").read_bytes())
    return doc.findtext("description") or ""


def test_control_characters_in_a_description(root: Root) -> None:
    given = "bell\x07 escape\x1b[31m nul-free \x01\x08\x0b\x0c\x1f end"
    outcome = run(root, "-m", given, "--", "true")
    assert _parsed_description(root, 2) == outcome["description"] == rows(root)[2]["description"]
    assert outcome["description"] == "bell␇ escape␛[31m nul-free ␁␈␋␌␟ end"


def test_control_characters_in_the_command_line(root: Root) -> None:
    outcome = run(root, "--", "sh", "-c", "true '\x1b[1m\x07'")
    assert _parsed_description(root, 2) == outcome["description"]
    assert "␛[1m␇" in outcome["description"]


def test_bytes_that_are_not_utf8_in_the_command_line(root: Root) -> None:
    argv = [os.fsencode(a) for a in (*AMBER, "--root", str(root.path), "run", "--json", "--",
                                     "true")] + [b"caf\xe9", b"\xff\xfe"]
    result = subprocess.run(argv, capture_output=True, timeout=120)
    assert result.returncode == 0 and b"Traceback" not in result.stderr, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["description"] == "amber run true 'caf\ufffd' '\ufffd\ufffd'"
    assert _parsed_description(root, 2) == outcome["description"]


def test_descriptions_keep_surrounding_whitespace(root: Root) -> None:
    amber(root.path, "run", "-m", "  two spaces in front, a tab behind\t", "--", "true")
    expected = "  two spaces in front, a tab behind\t"
    assert rows(root)[2]["description"] == expected == _parsed_description(root, 2)
    amber(root.path, "pin", "2")
    assert rows(root)[2]["description"] == expected


def test_pin_keeps_bytes_that_are_not_utf8(root: Root) -> None:
    latin1 = info_xml(2, "Gr\xfc\xdfe aus M\xfcnchen").encode("latin-1")
    root.add("2", latin1)
    assert rows(root)[2]["description"] == "Gr\ufffd\ufffde aus M\ufffdnchen"
    assert amber(root.path, "snapshots").returncode == 0
    amber(root.path, "pin", "2")
    after = (root.store / "2/info.xml").read_bytes()
    assert b"<description>Gr\xfc\xdfe aus M\xfcnchen</description>" in after
    assert b"<key>pinned</key>" in after and rows(root)[2]["pinned"]
    amber(root.path, "unpin", "2")
    assert b"Gr\xfc\xdfe aus M\xfcnchen" in (root.store / "2/info.xml").read_bytes()

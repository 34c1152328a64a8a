"""The snapper-compatible snapshot store of a system root.

Layout (snapper's and SUSE's): <root>/.snapshots/<N>/snapshot is a subvolume holding a root
filesystem, <root>/.snapshots/<N>/info.xml its metadata. Snapshots made by snapper or kiwi are
read as they are, and the ones amber writes are listed by snapper.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from amber import btrfs
from amber.log import AmberError, ExitCode, die

# Writable subvolumes under @ shared by every snapshot (the layout is described in layout.py).
SHARED_SUBVOLUMES = ("var", "home", "root", "opt", "srv", "usr/local")
IN_PROGRESS_KEY = "transactional-update-in-progress"
PINNED_KEY = "pinned"
IMPORTANT_KEY = "important"
_SNAPSHOT_PATH = re.compile(r"(?:^|/)\.snapshots/(\d+)/snapshot$")


_NO_USERDATA: Mapping[str, str] = {}


class Snapshot(NamedTuple):
    """A snapshot's metadata (immutable; a NamedTuple because it is cheap to import)."""

    number: int
    date: str  # UTC, "YYYY-MM-DD HH:MM:SS" as snapper writes it
    description: str = ""
    type: str = "single"
    cleanup: str = ""
    userdata: Mapping[str, str] = _NO_USERDATA
    pre_num: int | None = None
    uid: int | None = None

    @property
    def pinned(self) -> bool:
        return self.userdata.get(PINNED_KEY) == "yes"

    @property
    def important(self) -> bool:
        return self.userdata.get(IMPORTANT_KEY) == "yes"

    @property
    def in_progress(self) -> bool:
        return self.userdata.get(IN_PROGRESS_KEY) == "yes"

    def with_userdata(self, changes: Mapping[str, str | None]) -> Snapshot:
        """A copy with userdata keys set, or removed where the value is None."""
        data = dict(self.userdata)
        for key, value in changes.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        return self._replace(userdata=data)


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def now_utc() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())


def render_info(snapshot: Snapshot) -> str:
    lines = ['<?xml version="1.0"?>', "<snapshot>", f"  <type>{escape(snapshot.type)}</type>",
             f"  <num>{snapshot.number}</num>"]
    if snapshot.pre_num is not None:
        lines.append(f"  <pre_num>{snapshot.pre_num}</pre_num>")
    lines.append(f"  <date>{escape(snapshot.date)}</date>")
    if snapshot.uid is not None:
        lines.append(f"  <uid>{snapshot.uid}</uid>")
    if snapshot.description:
        lines.append(f"  <description>{escape(snapshot.description)}</description>")
    if snapshot.cleanup:
        lines.append(f"  <cleanup>{escape(snapshot.cleanup)}</cleanup>")
    for key, value in sorted(snapshot.userdata.items()):
        lines += ["  <userdata>", f"    <key>{escape(key)}</key>",
                  f"    <value>{escape(value)}</value>", "  </userdata>"]
    lines.append("</snapshot>")
    return "\n".join(lines) + "\n"


# snapper's info.xml is flat: <tag>text</tag> lines and <userdata> pairs. Files of that shape
# (all of snapper's, kiwi's and amber's) are read with a regex; anything else goes to a real
# XML parser.
_SIMPLE_INFO = re.compile(
    r"\s*(?:<\?xml[^>]*\?>\s*)?<snapshot>((?:\s*<(\w+)>[^<]*</\2>"
    r"|\s*<userdata>\s*<key>[^<]*</key>\s*<value>[^<]*</value>\s*</userdata>)*)"
    r"\s*</snapshot>\s*")
_SIMPLE_FIELD = re.compile(r"<(\w+)>([^<]*)</\1>|<userdata>\s*<key>([^<]*)</key>\s*"
                           r"<value>([^<]*)</value>\s*</userdata>")
_ENTITIES = {"&lt;": "<", "&gt;": ">", "&amp;": "&", "&quot;": '"', "&apos;": "'"}


def _unescape(text: str) -> str:
    if "&" not in text:
        return text
    return re.sub(r"&(?:lt|gt|amp|quot|apos);", lambda m: _ENTITIES[m.group(0)], text)


def _from_fields(fields: Mapping[str, str], userdata: dict[str, str], where: str) -> Snapshot:
    try:
        number = int(fields.get("num", ""))
    except ValueError:
        die(f"{where} has no valid <num>", hint="fix or remove the file")
    pre = fields.get("pre_num", "")
    uid = fields.get("uid", "")
    return Snapshot(
        number=number,
        date=fields.get("date", ""),
        description=fields.get("description", ""),
        type=fields.get("type") or "single",
        cleanup=fields.get("cleanup", ""),
        userdata=userdata,
        pre_num=int(pre) if pre.isdigit() else None,
        uid=int(uid) if uid.isdigit() else None,
    )


def parse_info(text: str, where: str = "info.xml") -> Snapshot:
    simple = _SIMPLE_INFO.fullmatch(text)
    if simple and "&#" not in text:
        fields: dict[str, str] = {}
        userdata: dict[str, str] = {}
        for tag, value, key, user_value in _SIMPLE_FIELD.findall(simple.group(1)):
            if tag:
                fields[tag] = _unescape(value.strip())
            elif key.strip():
                userdata[_unescape(key.strip())] = _unescape(user_value.strip())
        return _from_fields(fields, userdata, where)
    return _parse_info_xml(text, where)


def _parse_info_xml(text: str, where: str) -> Snapshot:
    import xml.etree.ElementTree as ET

    try:
        doc = ET.fromstring(text)
    except ET.ParseError as e:
        die(f"{where} is not valid XML: {e}", hint="fix or remove the file", code=ExitCode.ERROR)
    fields = {child.tag: (child.text or "").strip() for child in doc if child.tag != "userdata"}
    userdata: dict[str, str] = {}
    for item in doc.findall("userdata"):
        key = item.findtext("key")
        if key and key.strip():
            userdata[key.strip()] = (item.findtext("value") or "").strip()
    return _from_fields(fields, userdata, where)


def _read_small_file(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = [os.read(fd, 65536)]
        while len(chunks[-1]) == 65536:
            chunks.append(os.read(fd, 65536))
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", errors="replace")


def snapshot_number_of(subvolume_path: str) -> int | None:
    match = _SNAPSHOT_PATH.search(subvolume_path)
    return int(match.group(1)) if match else None


class Store:
    """The snapshots of one system root."""

    def __init__(self, root: Path):
        self.root = root
        self.dir = root / ".snapshots"

    # ---- checks -------------------------------------------------------------------------

    def check(self) -> None:
        if not self.root.is_dir():
            die(f"system root {self.root} does not exist or is not a directory",
                hint="pass the directory where the system's default subvolume is mounted",
                code=ExitCode.ENVIRONMENT)
        if not btrfs.is_btrfs(self.root):
            die(f"{self.root} is not on btrfs (or amber cannot read it)",
                hint="amber manages btrfs roots laid out as snapper does; run as root",
                code=ExitCode.ENVIRONMENT)
        if not self.dir.is_dir():
            die(f"{self.dir} does not exist: this root has no snapshot store",
                hint="mount the @/.snapshots subvolume at /.snapshots (see 'amber image build')",
                code=ExitCode.ENVIRONMENT)

    # ---- reading ------------------------------------------------------------------------

    def numbers(self) -> list[int]:
        try:
            names = os.listdir(self.dir)
        except OSError as e:
            die(f"cannot read {self.dir}: {e.strerror}", code=ExitCode.ENVIRONMENT)
        return sorted(int(n) for n in names if n.isdigit())

    def path(self, number: int) -> Path:
        return self.dir / str(number) / "snapshot"

    def info_path(self, number: int) -> Path:
        return self.dir / str(number) / "info.xml"

    def exists(self, number: int) -> bool:
        return self.path(number).exists()

    def get(self, number: int) -> Snapshot:
        # String paths and raw reads: listing 1,000 snapshots spends most of its time here.
        path = f"{self.dir}/{number}/info.xml"
        try:
            text = _read_small_file(path)
        except FileNotFoundError:
            if self.exists(number):
                # A snapshot without metadata (a crash between subvolume and info.xml).
                return Snapshot(number=number, date="", description="(no info.xml)")
            die(f"snapshot {number} does not exist", hint="see 'amber snapshots'",
                code=ExitCode.NOT_FOUND)
        return parse_info(text, path)

    def list(self) -> list[Snapshot]:
        return [self.get(n) for n in self.numbers() if self.exists(n)]

    def read_only_flags(self) -> dict[int, bool]:
        """Snapshot number → read-only, for every snapshot subvolume in the store."""
        flags = {}
        for name, read_only in btrfs.subvolumes_below(self.dir).items():
            number, _, rest = name.partition("/")
            if rest == "snapshot" and number.isdigit():
                flags[int(number)] = read_only
        return flags

    def booted(self) -> int | None:
        """The snapshot the system root is mounted from."""
        return snapshot_number_of(btrfs.subvolume_path(self.root))

    def default(self) -> int | None:
        """The snapshot that boots next."""
        subvol = btrfs.default_subvolume(self.root)
        if subvol == btrfs.TOP_LEVEL_ID:
            return None
        return snapshot_number_of(btrfs.subvolume_path(self.root, subvol))

    def is_read_only(self, number: int) -> bool:
        return btrfs.is_read_only(self.path(number))

    def require(self, number: int) -> Snapshot:
        if not self.exists(number):
            die(f"snapshot {number} does not exist", hint="see 'amber snapshots'",
                code=ExitCode.NOT_FOUND)
        return self.get(number)

    # ---- writing ------------------------------------------------------------------------

    def write_info(self, snapshot: Snapshot) -> None:
        path = self.info_path(snapshot.number)
        tmp = path.with_name("info.xml.tmp")
        try:
            with open(tmp, "w") as f:
                f.write(render_info(snapshot))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if e.errno == 28:
                die(f"cannot write {path}: no space left on the filesystem",
                    hint="free space with 'amber cleanup' or 'amber delete N'",
                    code=ExitCode.NO_SPACE)
            raise AmberError(f"cannot write {path}: {e.strerror}") from e

    def allocate(self) -> int:
        """Reserve the next number by creating its directory (callers hold the lock)."""
        number = (max(self.numbers(), default=0)) + 1
        while True:
            try:
                (self.dir / str(number)).mkdir()
                return number
            except FileExistsError:
                number += 1
            except OSError as e:
                if e.errno == 28:
                    die("cannot create a snapshot: no space left on the filesystem",
                        hint="free space with 'amber cleanup' or 'amber delete N'",
                        code=ExitCode.NO_SPACE)
                raise

    def create(self, number: int, base: int, snapshot: Snapshot, *, read_only: bool) -> None:
        """Snapshot `base` into the reserved `number`; info.xml is written first."""
        self.write_info(snapshot)
        btrfs.create_snapshot(self.path(base), self.path(number), read_only=read_only)

    def delete(self, number: int) -> None:
        path = self.path(number)
        if path.exists() and btrfs.is_subvolume(path):
            btrfs.delete_subvolume(path)
        import shutil

        shutil.rmtree(self.dir / str(number), ignore_errors=True)

    def set_read_only(self, number: int, read_only: bool) -> None:
        btrfs.set_read_only(self.path(number), read_only)

    def set_default(self, number: int) -> None:
        # On a booted system / is read-only; /.snapshots is a writable mount of the same
        # filesystem, and the ioctl needs a writable one.
        btrfs.set_default_subvolume(self.dir, btrfs.subvolume_id(self.path(number)))

    def update(self, number: int, userdata: Mapping[str, str | None]) -> Snapshot:
        snapshot = self.get(number).with_userdata(userdata)
        self.write_info(snapshot)
        return snapshot

"""The snapper-compatible snapshot store of a system root.

Layout (snapper's and SUSE's): <root>/.snapshots/<N>/snapshot is a subvolume holding a root
filesystem, <root>/.snapshots/<N>/info.xml its metadata. Snapshots made by snapper or kiwi are
read as they are, and the ones amber writes are listed by snapper.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from amber import btrfs
from amber.log import AmberError, ExitCode, die

if TYPE_CHECKING:
    import re

ETC = "etc"  # each snapshot's /etc: a writable subvolume nested in the snapshot
SYNCPOINT_NAME = "etc.syncpoint"  # /etc at the fork, nested in /etc (transactional-update's)
# /etc as the transaction left it, kept read-only in the snapshot: `amber etc diff`'s reference
# (as OSTree's /usr/etc). A nested subvolume: the /etc the first-boot merge replaced, or a
# snapshot made at close for a snapshot that waits for no merge.
ETC_ORIGIN = "usr/lib/amber/etc-origin"
# Writable subvolumes under @ shared by every snapshot (the layout is described in layout.py).
SHARED_SUBVOLUMES = ("var", "home", "root", "opt", "srv", "usr/local")
IN_PROGRESS_KEY = "transactional-update-in-progress"
PINNED_KEY = "pinned"
IMPORTANT_KEY = "important"
_SNAPSHOT_PATH = r"(?:^|/)\.snapshots/([1-9][0-9]{0,17})/snapshot$"
INFO_LIMIT = 1 << 20  # bytes of info.xml read at most (snapper's are a few hundred)


def _re(pattern: str) -> re.Pattern[str]:
    """The pattern compiled on first use (re keeps it cached) rather than at import, so that
    a verb that never needs it does not pay for it: start-up time."""
    import re

    return re.compile(pattern)


def is_number(text: str) -> bool:
    """A snapshot number, as a directory name and on the command line: ASCII digits without a
    leading zero, at most 18 of them (str.isdigit() and int() alone also take '²', '٣' or
    '007')."""
    return (0 < len(text) <= 18 and text.isascii() and text.isdigit() and text[0] != "0")


def number_of_name(name: str) -> int | None:
    """The snapshot number a directory name spells, or None."""
    return int(name) if is_number(name) else None


_NO_USERDATA: Mapping[str, str] = {}


class Snapshot(NamedTuple):
    """A snapshot's metadata (immutable; a NamedTuple because it is cheap to import)."""

    number: int  # always the number of its directory
    date: str  # UTC, "YYYY-MM-DD HH:MM:SS" as snapper writes it
    description: str = ""
    type: str = "single"
    cleanup: str = ""
    userdata: Mapping[str, str] = _NO_USERDATA
    pre_num: int | None = None
    uid: int | None = None
    # Why its info.xml cannot be trusted ("" when it can); then the fields above are empty,
    # and amber neither rewrites nor deletes the snapshot on its own.
    broken: str = ""

    @classmethod
    def unreadable(cls, number: int, reason: str) -> Snapshot:
        return cls(number=number, date="", type="", broken=reason)

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

    def cleaned(self) -> Snapshot:
        """A copy whose text info.xml can carry (for metadata that is new, see clean_text)."""
        return self._replace(
            date=clean_text(self.date), description=clean_text(self.description),
            type=clean_text(self.type), cleanup=clean_text(self.cleanup),
            userdata={clean_text(k): clean_text(v) for k, v in self.userdata.items()})


class Ref(NamedTuple):
    """A snapshot as a command line names it: a number, or a name (booted, default, last)."""

    text: str
    number: int | None  # None for a name

    @classmethod
    def parse(cls, text: str, names: Collection[str] = ("booted", "default"),
              what: str = "a snapshot") -> Ref:
        """The one parser of snapshot references: ASCII digits without a leading zero, or
        one of `names`; anything else is a usage error (exit 2). Whether the snapshot exists
        is Store.resolve's question (exit 5)."""
        if is_number(text):
            return cls(text, int(text))
        if text in names:
            return cls(text, None)
        spelled = ", ".join(f"'{n}'" for n in names)
        die(f"not {what}: {text!r}",
            hint="a snapshot number as 'amber snapshots' lists it (1, 2, …)"
                 + (f", or {spelled}" if names else ""), code=ExitCode.USAGE)


# ---- text that info.xml can carry --------------------------------------------------------------

# XML 1.0 carries neither C0 controls but tab, newline and carriage return, nor U+FFFE, U+FFFF
# or surrogates. A surrogate escape U+DC80..U+DCFF stands for a byte that was not UTF-8 in a file
# read with surrogateescape; keep_bytes keeps those, so that a rewrite writes the same bytes.
_UNCARRIED = ("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_UNCARRIED_BUT_BYTES = ("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udc7f\udd00-\udfff"
                                  "\ufffe\uffff]")
_STRAY_SURROGATE = ("[\ud800-\udc7f\udd00-\udfff]")
_XML_SPACE = " \t\n\r"


def _visible(match: re.Match[str]) -> str:
    char = match.group()
    return chr(0x2400 + ord(char)) if char < " " else "\ufffd"


def clean_text(text: str, keep_bytes: bool = False) -> str:
    """Text fit for info.xml: a control character becomes its visible symbol (ESC → ␛), a
    surrogate or non-character U+FFFD; what XML carries is kept exactly."""
    pattern = _re(_UNCARRIED_BUT_BYTES if keep_bytes else _UNCARRIED)
    return pattern.sub(_visible, text) if pattern.search(text) else text


_UNSHOWN = ("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _shown_char(match: re.Match[str]) -> str:
    char = match.group()
    if char < " ":
        return chr(0x2400 + ord(char))
    return "\u2421" if char == "\x7f" else "\ufffd"


def shown(text: str) -> str:
    """Text for a terminal: control characters visible, undecodable bytes as U+FFFD."""
    return _re(_UNSHOWN).sub(_shown_char, text) if _re(_UNSHOWN).search(text) else text


def unicode_text(text: str) -> str:
    """Text for JSON: undecodable bytes (surrogate escapes) as U+FFFD."""
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return _re(_STRAY_SURROGATE).sub("\ufffd", text).encode(
            "utf-8", "surrogateescape").decode("utf-8", "replace")
    return text


# ---- info.xml ----------------------------------------------------------------------------------

def _references(text: str) -> str:
    return "".join(f"&#{ord(c)};" for c in text)


def escape(text: str) -> str:
    """Text as info.xml carries it (see render_info)."""
    text = clean_text(text, keep_bytes=True)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if "\r" in text:  # a parser reads a literal one as a newline
        text = text.replace("\r", "&#13;")
    # The reader strips the literal whitespace around a value (a pretty-printer's indentation);
    # whitespace that belongs to the value is written as character references.
    if text and (text[0] in _XML_SPACE or text[-1] in _XML_SPACE):
        start = len(text) - len(text.lstrip(_XML_SPACE))
        end = max(start, len(text.rstrip(_XML_SPACE)))
        text = _references(text[:start]) + text[start:end] + _references(text[end:])
    return text


def now_utc() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())


def render_info(snapshot: Snapshot) -> str:
    """info.xml as snapper writes it. Text it cannot carry is written as clean_text makes it,
    except surrogate escapes, which Store.write_info writes as the bytes they stand for."""
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


class InfoError(AmberError):
    """An info.xml that cannot be trusted; `reason` says why, without the path."""

    def __init__(self, reason: str, where: str = "info.xml"):
        super().__init__(f"{where} {reason}", hint="fix or remove the file")
        self.reason = reason


# snapper's info.xml is flat: <tag>text</tag> lines and <userdata> pairs. Well-formed files of
# that shape (all of snapper's, kiwi's and amber's) are read with a regex; anything else goes to
# a real XML parser, which rejects what is not well-formed.
_S = "[ \t\r\n]*"
# Text: no markup, and no character XML does not carry.
_T = "[^<\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]*"
_SIMPLE_INFO = (
    f"\ufeff?{_S}(?:<\\?xml{_T}\\?>{_S})?<snapshot>((?:{_S}<(\\w+)>{_T}</\\2>"
    f"|{_S}<userdata>{_S}<key>{_T}</key>{_S}<value>{_T}</value>{_S}</userdata>)*)"
    f"{_S}</snapshot>{_S}")
_SIMPLE_FIELD = (f"<(\\w+)>({_T})</\\1>|<userdata>{_S}<key>({_T})</key>{_S}"
                           f"<value>({_T})</value>{_S}</userdata>")
_REFERENCE = "&(lt|gt|amp|quot|apos|#[0-9]{1,7}|#x[0-9a-fA-F]{1,6});"
_BAD_AMPERSAND = (f"&(?!{_REFERENCE[1:]})")
_ENTITY = (_REFERENCE)
_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"', "apos": "'"}


def _character(match: re.Match[str]) -> str:
    name = match.group(1)
    if name[0] != "#":
        return _ENTITIES[name]
    code = int(name[2:], 16) if name[1] == "x" else int(name[1:])
    if not (code in (0x9, 0xA, 0xD) or 0x20 <= code <= 0xD7FF or 0xE000 <= code <= 0xFFFD
            or 0x10000 <= code <= 0x10FFFF):
        raise InfoError(f"is not valid XML: character reference {match.group()}")
    return chr(code)


def _text(raw: str) -> str:
    """A value: without the literal whitespace around it, line ends and references decoded."""
    raw = raw.strip(_XML_SPACE)
    if "&" not in raw and "\r" not in raw:
        return raw
    raw = raw.replace("\r\n", "\n").replace("\r", "\n")  # XML's end-of-line handling
    if "&" not in raw:
        return raw
    if _re(_BAD_AMPERSAND).search(raw):
        raise InfoError("is not valid XML: an & that starts no reference")
    return _re(_ENTITY).sub(_character, raw)


def _number(text: str) -> int | None:
    # ASCII digits only: int() also takes '²', '٣', ' 7' and '1_0'.
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


def _from_fields(fields: Mapping[str, str], userdata: dict[str, str]) -> Snapshot:
    number = _number(fields.get("num", ""))
    if number is None:
        raise InfoError("has no valid <num>")
    return Snapshot(
        number=number,
        date=fields.get("date", ""),
        description=fields.get("description", ""),
        type=fields.get("type") or "single",
        cleanup=fields.get("cleanup", ""),
        userdata=userdata,
        pre_num=_number(fields.get("pre_num", "")),
        uid=_number(fields.get("uid", "")),
    )


def parse_info(text: str, where: str = "info.xml") -> Snapshot:
    """The snapshot an info.xml describes; InfoError (an AmberError) if it cannot be trusted."""
    try:
        simple = _re(_SIMPLE_INFO).fullmatch(text)
        if not simple:
            return _parse_info_xml(text)
        fields: dict[str, str] = {}
        userdata: dict[str, str] = {}
        for tag, value, key, user_value in _re(_SIMPLE_FIELD).findall(simple.group(1)):
            if tag:
                fields[tag] = _text(value)
            else:
                key = _text(key)
                if key:
                    userdata[key] = _text(user_value)
        return _from_fields(fields, userdata)
    except InfoError as e:
        raise InfoError(e.reason, where) from None


def _parse_info_xml(text: str) -> Snapshot:
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise InfoError("has a document type declaration, which snapper's info.xml never has")
    import xml.etree.ElementTree as ET

    try:
        doc = ET.fromstring(text)
    except (ET.ParseError, UnicodeError, ValueError) as e:
        raise InfoError(f"is not valid XML: {e}") from None
    if doc.tag != "snapshot":
        raise InfoError(f"is not snapper's info.xml (its root element is <{doc.tag}>)")
    fields = {child.tag: (child.text or "").strip(_XML_SPACE)
              for child in doc if child.tag != "userdata"}
    userdata: dict[str, str] = {}
    for item in doc.findall("userdata"):
        key = (item.findtext("key") or "").strip(_XML_SPACE)
        if key:
            userdata[key] = (item.findtext("value") or "").strip(_XML_SPACE)
    return _from_fields(fields, userdata)


def _read_info_file(path: str) -> str:
    """A small regular file, never through a symbolic link; bytes that are not UTF-8 are
    kept as surrogate escapes. FileNotFoundError if it is missing, else InfoError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InfoError("is a symbolic link (amber does not follow it)") from None
        raise InfoError(f"cannot be opened: {e.strerror}") from None
    try:
        chunks = [os.read(fd, 65536)]
        size = len(chunks[0])
        # Only what is not a small regular file reads as nothing or as a full buffer; a FIFO
        # or a device must not be read on (the fstat is spared for the 1,000 that are fine).
        if (size == 0 or size == 65536) and not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InfoError("is not a regular file")
        while len(chunks[-1]) == 65536 and size <= INFO_LIMIT:
            chunks.append(os.read(fd, 65536))
            size += len(chunks[-1])
    except OSError as e:
        if e.errno == errno.EISDIR:
            raise InfoError("is not a regular file (a directory)") from None
        raise InfoError(f"cannot be read: {e.strerror}") from None
    finally:
        os.close(fd)
    if size > INFO_LIMIT:
        raise InfoError(f"is larger than {INFO_LIMIT >> 20} MiB")
    data = b"".join(chunks)
    try:
        return data.decode()
    except UnicodeDecodeError:
        return data.decode("utf-8", "surrogateescape")


def snapshot_number_of(subvolume_path: str) -> int | None:
    match = _re(_SNAPSHOT_PATH).search(subvolume_path)
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
        """The numbers of the directories in the store; other names are not snapshots."""
        try:
            names = os.listdir(self.dir)
        except OSError as e:
            die(f"cannot read {self.dir}: {e.strerror}", code=ExitCode.ENVIRONMENT)
        return sorted(int(n) for n in names if is_number(n))

    def path(self, number: int) -> Path:
        return self.dir / str(number) / "snapshot"

    def info_path(self, number: int) -> Path:
        return self.dir / str(number) / "info.xml"

    def exists(self, number: int) -> bool:
        """Whether <number>/snapshot is a directory, reached through no symbolic link."""
        try:
            return (stat.S_ISDIR(os.lstat(f"{self.dir}/{number}").st_mode)
                    and stat.S_ISDIR(os.lstat(f"{self.dir}/{number}/snapshot").st_mode))
        except OSError:
            return False

    def get(self, number: int) -> Snapshot:
        """The metadata of snapshot `number`, or, if its info.xml cannot be trusted, a
        Snapshot that says why (`broken`)."""
        # String paths and raw reads: listing 1,000 snapshots spends most of its time here.
        path = f"{self.dir}/{number}/info.xml"
        try:
            snapshot = parse_info(_read_info_file(path), path)
        except FileNotFoundError:
            if self.exists(number):
                return Snapshot.unreadable(number, "no info.xml")
            die(f"snapshot {number} does not exist", hint="see 'amber snapshots'",
                code=ExitCode.NOT_FOUND)
        except InfoError as e:
            return Snapshot.unreadable(number, f"info.xml {e.reason}")
        if snapshot.number != number:
            # The directory is the identity: such a file may be a copy of another snapshot's.
            return Snapshot.unreadable(
                number, f"info.xml says <num>{snapshot.number}</num> in directory {number}")
        return snapshot

    def list(self) -> list[Snapshot]:
        return [self.get(n) for n in self.numbers() if self.exists(n)]

    def read_only_flags(self) -> dict[int, bool]:
        """Snapshot number → read-only, for every snapshot subvolume in the store."""
        flags = {}
        for name, read_only in btrfs.subvolumes_below(self.dir).items():
            number, _, rest = name.partition("/")
            if rest == "snapshot" and is_number(number):
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

    def resolve(self, ref: Ref) -> int:
        """The existing snapshot a number, 'booted' or 'default' names."""
        if ref.number is not None:
            number: int | None = ref.number
        elif ref.text == "booted":
            number = self.booted()
        elif ref.text == "default":
            number = self.default()
        else:
            raise ValueError(f"Store.resolve does not know {ref.text!r}")
        if number is None:
            die(f"there is no {ref.text} snapshot on this root", hint="see 'amber status'",
                code=ExitCode.NOT_FOUND)
        self.require(number)
        return number

    # ---- writing ------------------------------------------------------------------------

    def write_info(self, snapshot: Snapshot) -> None:
        """Write info.xml through a temporary file that is read back and compared first, so
        that what is written is what the next reader gets, or the old file stays."""
        path = self.info_path(snapshot.number)
        tmp = f"{path}.tmp"
        # surrogateescape: bytes that were not UTF-8 in the file read go back as they were.
        data = render_info(snapshot).encode("utf-8", "surrogateescape")
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            if parse_info(_read_info_file(tmp), str(path)) != snapshot:
                raise InfoError("would not read back as written")
            os.replace(tmp, path)
        except InfoError as e:
            _remove(tmp)
            raise AmberError(f"cannot write {path}: {e.reason}",
                             hint="this is a bug in amber; the file is unchanged") from None
        except OSError as e:
            _remove(tmp)
            if e.errno == errno.ENOSPC:
                die(f"cannot write {path}: no space left on the filesystem",
                    hint="free space with 'amber cleanup' or 'amber delete N'",
                    code=ExitCode.NO_SPACE)
            raise AmberError(f"cannot write {path}: {e.strerror}") from e

    def etc_path(self, number: int) -> Path:
        return self.path(number) / ETC

    def has_etc_subvolume(self, number: int) -> bool:
        """Whether the snapshot's /etc is its own (nested, writable) subvolume."""
        return _is_real_subvolume(self.etc_path(number))

    def awaits_etc_merge(self, number: int) -> bool:
        """Whether the snapshot's /etc holds a sync point: a merge at its first boot."""
        return os.path.lexists(self.etc_path(number) / SYNCPOINT_NAME)

    def record_etc_origin(self, number: int) -> None:
        """Keep a read-only snapshot of the (still writable) snapshot's /etc as it is now."""
        if not self.has_etc_subvolume(number):
            return
        origin = self.path(number) / ETC_ORIGIN
        if origin.is_dir() and btrfs.is_subvolume(origin):
            btrfs.delete_subvolume(origin)
        origin.parent.mkdir(parents=True, exist_ok=True)
        # The nested sync point shows there as an empty directory: `amber etc diff` ignores it.
        btrfs.create_snapshot(self.etc_path(number), origin, read_only=True)

    def create(self, number: int, base: int, snapshot: Snapshot, *, read_only: bool) -> None:
        """Snapshot `base` into the reserved `number`, with its /etc subvolume (made one if
        `base` still has /etc inside its root); info.xml is written first."""
        self.write_info(snapshot.cleaned())
        new = self.path(number)
        btrfs.create_snapshot(self.path(base), new, read_only=False)
        carry_etc(self.etc_path(base), new / ETC)
        origin = new / ETC_ORIGIN
        if origin.is_dir() and not origin.is_symlink() and not btrfs.is_subvolume(origin):
            origin.rmdir()  # the base's reference, shown as an empty directory
        if read_only:
            btrfs.set_read_only(new, True)

    def delete(self, number: int) -> None:
        directory = self.dir / str(number)
        if directory.is_symlink():
            return  # not a snapshot; what it points at is not amber's to delete
        path = directory / "snapshot"
        if not path.is_symlink() and path.is_dir() and btrfs.is_subvolume(path):
            if btrfs.is_read_only(path) and btrfs.has_nested_subvolumes(path):
                # A nested subvolume (/etc) is unlinked from its parent: that needs the
                # parent writable for a moment, as transactional-update's 50-etc does.
                btrfs.set_read_only(path, False)
            btrfs.delete_subvolume(path)
        import shutil

        shutil.rmtree(directory, ignore_errors=True)

    def set_read_only(self, number: int, read_only: bool) -> None:
        btrfs.set_read_only(self.path(number), read_only)

    def set_default(self, number: int) -> None:
        # On a booted system / is read-only; /.snapshots is a writable mount of the same
        # filesystem, and the ioctl needs a writable one.
        btrfs.set_default_subvolume(self.dir, btrfs.subvolume_id(self.path(number)))

    def update(self, number: int, userdata: Mapping[str, str | None]) -> Snapshot:
        """Set (or with None remove) userdata keys; refused for a snapshot whose info.xml
        cannot be trusted, which is never rewritten."""
        current = self.get(number)
        if current.broken:
            die(f"snapshot {number} is left alone: {current.broken}",
                hint=f"repair or remove {self.info_path(number)} first", code=ExitCode.REFUSED)
        snapshot = current.with_userdata({clean_text(k): None if v is None else clean_text(v)
                                          for k, v in userdata.items()})
        self.write_info(snapshot)
        return snapshot


def _is_real_subvolume(path: Path) -> bool:
    return not path.is_symlink() and path.is_dir() and btrfs.is_subvolume(path)


def carry_etc(base_etc: Path, new_etc: Path) -> None:
    """Give a new (still writable) snapshot its own /etc subvolume.

    A btrfs snapshot shows a nested subvolume as an empty directory: that is replaced by a
    writable snapshot of the base's /etc subvolume. A base whose /etc is a plain directory
    (made before amber kept /etc apart) is converted: the new /etc becomes a subvolume holding
    a reflink copy. Subvolumes nested in the new /etc (a sync point) come out as empty
    directories and are removed: the caller makes the sync point it needs.
    """
    if new_etc.is_symlink() or not new_etc.is_dir():
        return  # no /etc at all (a bare test root) or a link: nothing to keep apart
    if _is_real_subvolume(base_etc):
        new_etc.rmdir()
        btrfs.create_snapshot(base_etc, new_etc, read_only=False)
    else:
        make_etc_subvolume(new_etc)
    inside = new_etc / SYNCPOINT_NAME
    if inside.is_dir() and not inside.is_symlink():
        if btrfs.is_subvolume(inside):
            btrfs.delete_subvolume(inside)
        else:
            inside.rmdir()


def make_etc_subvolume(etc: Path) -> None:
    """Turn the plain directory etc (in a writable snapshot) into a subvolume with the same
    contents, owner and mode (a reflink copy: the data is shared, not written again)."""
    if _is_real_subvolume(etc):
        return
    import shutil

    from amber.run import run

    staging = etc.with_name(f".{etc.name}.amber-new")
    if staging.is_dir() and btrfs.is_subvolume(staging):
        btrfs.delete_subvolume(staging)  # left by an interrupted conversion
    btrfs.create_subvolume(staging)
    entries = [str(e) for e in etc.iterdir()]
    if entries:
        run(["cp", "-a", "--reflink=auto", "--", *entries, f"{staging}/"])
    st = os.lstat(etc)
    os.chown(staging, st.st_uid, st.st_gid)
    shutil.copystat(etc, staging)
    shutil.rmtree(etc)
    os.rename(staging, etc)


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)

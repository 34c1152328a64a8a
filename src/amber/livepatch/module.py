"""Reading a kernel module file without loading it: ELF sections, .modinfo and the signature.

A module file is, after decompression (.ko.xz, .ko.zst, .ko.gz):

    ELF64 relocatable object | PKCS#7 DER signature | struct module_signature | marker

where the 12-byte struct is `u8 algo, hash, id_type, signer_len, key_id_len; u8 pad[3];
__be32 sig_len` and the marker is "~Module signature appended~\\n". The signature covers
everything before it. For PKCS#7 (id_type 2) every other field of the struct is zero, and the
signer and key are named inside the PKCS#7 SignerInfo, read here with a minimal DER reader.

Every problem with the file is an AmberError with ExitCode.BAD_MODULE naming the file; no other
exception leaves parse() or read(). Neither the file nor what it decompresses to may be larger
than a limit ([livepatch] max_module_size): decompression happens in memory, in steps, and
stops as soon as the output passes it, so a decompression bomb costs no more than the limit.
"""

from __future__ import annotations

import lzma
import os
import stat
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from amber.config import DEFAULT_MAX_MODULE_SIZE
from amber.log import AmberError, ExitCode

SIGNATURE_MARKER = b"~Module signature appended~\n"
SIGNATURE_STRUCT = struct.Struct(">5B3xI")
PKEY_ID_PKCS7 = 2
CHUNK = 1 << 20  # decompressed bytes per step: a bomb is stopped within one step of the limit
XZ_MEMORY_ALLOWANCE = 16 << 20

XZ_MAGIC = b"\xfd7zXZ\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"

ELF_HEADER = struct.Struct("16sHHIQQQIHHHHHH")
SECTION_HEADER = struct.Struct("IIQQQQIIQQ")
ET_REL = 1
SHT_NOBITS = 8

OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
OID_COMMON_NAME = "2.5.4.3"
OID_ORGANIZATION = "2.5.4.10"
HASH_ALGORITHMS = {
    "1.3.14.3.2.26": "sha1",
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
    "2.16.840.1.101.3.4.2.4": "sha224",
    "2.16.840.1.101.3.4.2.8": "sha3-256",
    "2.16.840.1.101.3.4.2.9": "sha3-384",
    "2.16.840.1.101.3.4.2.10": "sha3-512",
    "1.2.156.10197.1.401": "sm3",
}
KNOWN_MODINFO_KEYS = frozenset(
    {"name", "vermagic", "livepatch", "srcversion", "license", "description", "depends"})


class ModuleError(Exception):
    """A malformed file; parse() turns it into AmberError with the file's name."""

    hint: str | None = None


# ---- DER ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Der:
    """One DER element: its identifier octet, its contents, and the whole encoding."""

    tag: int
    value: bytes
    raw: bytes

    @property
    def constructed(self) -> bool:
        return bool(self.tag & 0x20)

    def children(self) -> list[Der]:
        if not self.constructed:
            raise ModuleError(f"DER element 0x{self.tag:02x} is not constructed")
        return der_sequence(self.value)


def der_read(data: bytes, offset: int = 0) -> tuple[Der, int]:
    """The element at offset, and the offset after it."""
    if offset + 2 > len(data):
        raise ModuleError("DER element truncated")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise ModuleError("DER high tag numbers are not used in signatures")
    length = data[offset + 1]
    start = offset + 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4:
            raise ModuleError("DER length form not allowed")
        if start + count > len(data):
            raise ModuleError("DER length truncated")
        length = int.from_bytes(data[start:start + count], "big")
        start += count
    end = start + length
    if end > len(data):
        raise ModuleError("DER element longer than its container")
    return Der(tag, data[start:end], data[offset:end]), end


def der_sequence(data: bytes) -> list[Der]:
    items = []
    offset = 0
    while offset < len(data):
        item, offset = der_read(data, offset)
        items.append(item)
    return items


def der_expect(item: Der, tag: int, what: str) -> Der:
    if item.tag != tag:
        raise ModuleError(f"{what}: expected DER tag 0x{tag:02x}, found 0x{item.tag:02x}")
    return item


def der_oid(item: Der) -> str:
    der_expect(item, 0x06, "object identifier")
    if not item.value:
        raise ModuleError("empty object identifier")
    numbers: list[int] = []
    value = 0
    for byte in item.value:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            numbers.append(value)
            value = 0
    if item.value[-1] & 0x80:
        raise ModuleError("object identifier truncated")
    first = min(numbers[0] // 40, 2)
    return ".".join(str(n) for n in [first, numbers[0] - 40 * first, *numbers[1:]])


def der_string(item: Der) -> str:
    if item.tag == 0x1E:  # BMPString
        return item.value.decode("utf-16-be", errors="replace")
    return item.value.decode("utf-8", errors="replace")


def name_attribute(name: Der, oid: str) -> str | None:
    """The first value of attribute oid in an X.501 Name (SEQUENCE OF SET OF {oid, value})."""
    for rdn in der_expect(name, 0x30, "name").children():
        for attribute in rdn.children():
            parts = attribute.children()
            if len(parts) == 2 and der_oid(parts[0]) == oid:
                return der_string(parts[1])
    return None


def name_text(name: Der) -> str:
    return (name_attribute(name, OID_COMMON_NAME) or name_attribute(name, OID_ORGANIZATION)
            or "")


def hex_id(data: bytes) -> str:
    return ":".join(f"{b:02X}" for b in data)


# ---- signature ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Signature:
    """The PKCS#7 signature appended to a module, as named by its SignerInfo."""

    signer: str  # the issuer's common name (what modinfo calls signer)
    key_id: str  # the serial number, or the subject key identifier, in colon hex
    hash: str  # the digest algorithm, e.g. sha256
    issuer: bytes  # the issuer Name, DER, for matching certificates ("" with a key identifier)
    serial: bytes  # the serial number's contents (b"" with a key identifier)
    subject_key_id: bytes  # b"" with issuer and serial
    pkcs7: bytes  # the whole DER blob


def parse_pkcs7(blob: bytes) -> Signature:
    top, end = der_read(blob)
    if end != len(blob):
        raise ModuleError("bytes after the PKCS#7 structure")
    content_info = der_expect(top, 0x30, "PKCS#7 ContentInfo").children()
    if len(content_info) != 2 or der_oid(content_info[0]) != OID_SIGNED_DATA:
        raise ModuleError("PKCS#7 is not SignedData")
    wrapper = der_expect(content_info[1], 0xA0, "PKCS#7 content").children()
    if len(wrapper) != 1:
        raise ModuleError("PKCS#7 content is not one SignedData")
    signed_data = der_expect(wrapper[0], 0x30, "SignedData").children()
    if len(signed_data) < 4:
        raise ModuleError("SignedData is incomplete")
    signer_infos = der_expect(signed_data[-1], 0x31, "SignerInfos").children()
    if not signer_infos:
        raise ModuleError("PKCS#7 has no signer")
    info = der_expect(signer_infos[0], 0x30, "SignerInfo").children()
    if len(info) < 5:
        raise ModuleError("SignerInfo is incomplete")
    sid, digest = info[1], der_expect(info[2], 0x30, "digest algorithm").children()
    if not digest:
        raise ModuleError("empty digest algorithm")
    oid = der_oid(digest[0])
    hash_name = HASH_ALGORITHMS.get(oid, oid)
    if sid.tag == 0x30:
        issuer_and_serial = sid.children()
        if len(issuer_and_serial) != 2:
            raise ModuleError("IssuerAndSerialNumber is malformed")
        issuer = issuer_and_serial[0]
        serial = der_expect(issuer_and_serial[1], 0x02, "serial number").value
        return Signature(signer=name_text(issuer), key_id=hex_id(serial), hash=hash_name,
                         issuer=issuer.raw, serial=serial, subject_key_id=b"", pkcs7=blob)
    if sid.tag == 0x80:
        return Signature(signer="", key_id=hex_id(sid.value), hash=hash_name, issuer=b"",
                         serial=b"", subject_key_id=sid.value, pkcs7=blob)
    raise ModuleError(f"unknown signer identifier 0x{sid.tag:02x}")


def split_signature(image: bytes) -> tuple[int, Signature | None]:
    """The length of the signed part, and the signature if one is appended."""
    if not image.endswith(SIGNATURE_MARKER):
        return len(image), None
    struct_end = len(image) - len(SIGNATURE_MARKER)
    if struct_end < SIGNATURE_STRUCT.size:
        raise ModuleError("signature marker without signature")
    fields = SIGNATURE_STRUCT.unpack(image[struct_end - SIGNATURE_STRUCT.size:struct_end])
    algo, hash_, id_type, signer_len, key_id_len, sig_len = fields
    if id_type != PKEY_ID_PKCS7:
        raise ModuleError(f"signature type {id_type} is not PKCS#7")
    if algo or hash_ or signer_len or key_id_len:
        raise ModuleError("signature header has non-zero fields that PKCS#7 does not use")
    signed_end = struct_end - SIGNATURE_STRUCT.size - sig_len
    if sig_len == 0 or signed_end < ELF_HEADER.size:
        raise ModuleError(f"signature length {sig_len} does not fit in the file")
    return signed_end, parse_pkcs7(image[signed_end:signed_end + sig_len])


# ---- ELF and .modinfo ---------------------------------------------------------------------

def find_section(elf: bytes, wanted: str) -> bytes | None:
    if len(elf) < ELF_HEADER.size:
        raise ModuleError("truncated ELF header")
    if elf[:4] != b"\x7fELF":
        raise ModuleError("not an ELF file")
    if elf[4] != 2:
        raise ModuleError("not a 64-bit ELF file")
    if elf[5] not in (1, 2):
        raise ModuleError("unknown ELF byte order")
    order = "<" if elf[5] == 1 else ">"
    header = struct.unpack(order + ELF_HEADER.format, elf[:ELF_HEADER.size])
    e_type, shoff, shentsize, shnum, shstrndx = (
        header[1], header[6], header[11], header[12], header[13])
    if e_type != ET_REL:
        raise ModuleError(f"ELF type {e_type} is not a relocatable object (a module)")
    if shentsize != SECTION_HEADER.size or shnum == 0:
        raise ModuleError("ELF section table missing or malformed")
    if shoff + shnum * shentsize > len(elf):
        raise ModuleError("ELF section table beyond the end of the file (truncated?)")
    if shstrndx >= shnum:
        raise ModuleError("ELF section name table index out of range")
    section_format = order + SECTION_HEADER.format
    sections = [struct.unpack_from(section_format, elf, shoff + i * shentsize)
                for i in range(shnum)]

    def contents(section: tuple[int, ...]) -> bytes:
        sh_type, offset, size = section[1], section[4], section[5]
        if sh_type == SHT_NOBITS:
            return b""
        if offset + size > len(elf):
            raise ModuleError("ELF section beyond the end of the file (truncated?)")
        return elf[offset:offset + size]

    names = contents(sections[shstrndx])
    for section in sections:
        start = section[0]
        end = names.find(b"\0", start)
        if start >= len(names) or end < 0:
            raise ModuleError("ELF section name out of range")
        if names[start:end] == wanted.encode():
            return contents(section)
    return None


def parse_modinfo(section: bytes) -> tuple[tuple[str, str], ...]:
    entries = []
    for raw in section.split(b"\0"):
        if not raw:
            continue
        key, sep, value = raw.decode("utf-8", errors="replace").partition("=")
        if not sep or not key:
            raise ModuleError(f".modinfo entry without key=value: {raw[:40]!r}")
        entries.append((key, value))
    return tuple(entries)


# ---- the module ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ModuleInfo:
    path: Path
    name: str
    vermagic: str
    kernel_release: str  # the first word of vermagic
    livepatch: bool
    srcversion: str
    license: str
    description: str
    depends: tuple[str, ...]
    modinfo: tuple[tuple[str, str], ...]  # every entry, in file order, keys may repeat
    compression: str  # "", "xz", "zst" or "gz"
    signed_length: int  # bytes of the decompressed image that the signature covers
    signature: Signature | None
    limit: int  # the max_module_size it was read under; read_image() again keeps to it

    def values(self, key: str) -> list[str]:
        return [v for k, v in self.modinfo if k == key]

    def extra(self) -> dict[str, list[str]]:
        """Keys other than the ones with their own field (alias, retpoline, version, ...)."""
        result: dict[str, list[str]] = {}
        for key, value in self.modinfo:
            if key not in KNOWN_MODINFO_KEYS:
                result.setdefault(key, []).append(value)
        return result


def module_name_from_path(path: Path) -> str:
    name = path.name
    for suffix in (".xz", ".zst", ".gz"):
        name = name.removesuffix(suffix)
    return name.removesuffix(".ko").replace("-", "_")


def format_size(size: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor:
            return f"{size / factor:.1f}".removesuffix(".0") + f" {unit}"
    return f"{size} bytes"


class TooLarge(ModuleError):
    """More bytes than the limit: a decompression bomb, or not a module at all."""

    hint = ("if this really is a module that large, raise max_module_size in [livepatch] of "
            "/etc/amber/amber.conf")

    def __init__(self, limit: int, compressed: bool):
        what = "decompresses to more than" if compressed else "is larger than"
        super().__init__(f"{what} {format_size(limit)}; the largest real module is a few MiB")


class Inflated:
    """Decompressed output collected in pieces, refused as soon as it passes the limit."""

    def __init__(self, limit: int):
        self.limit = limit
        self.size = 0
        self.pieces: list[bytes] = []

    def add(self, piece: bytes) -> None:
        self.size += len(piece)
        if self.size > self.limit:
            self.pieces.clear()
            raise TooLarge(self.limit, compressed=True)
        self.pieces.append(piece)

    def join(self) -> bytes:
        return b"".join(self.pieces)


def _gunzip(data: bytes, limit: int) -> bytes:
    """Every gzip member in turn (as kmod reads them), each byte counted against limit."""
    output = Inflated(limit)
    rest = data
    while True:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip header and trailer
        pending = rest
        while not inflater.eof:
            piece = inflater.decompress(pending, CHUNK)
            pending = inflater.unconsumed_tail
            if not piece and not pending and not inflater.eof:
                raise ModuleError("gz data truncated")
            output.add(piece)
        rest = inflater.unused_data
        if not rest:
            return output.join()
        if not rest.startswith(GZIP_MAGIC):
            raise ModuleError("bytes after the end of the gz data")


def _unxz(data: bytes, limit: int) -> bytes:
    """Every xz stream in turn (as kmod reads them), each byte counted against limit.

    The decoder may use the limit plus a little: a dictionary larger than the whole output
    is never needed, and real modules are compressed with a 1 MiB one."""
    output = Inflated(limit)
    rest = data
    while True:
        decoder = lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=limit + XZ_MEMORY_ALLOWANCE)
        output.add(decoder.decompress(rest, CHUNK))
        while not decoder.eof:
            if decoder.needs_input:
                raise ModuleError("xz data truncated")
            output.add(decoder.decompress(b"", CHUNK))
        rest = decoder.unused_data
        padding = len(rest) - len(rest.lstrip(b"\0"))  # allowed between streams, by fours
        rest = rest[padding:]
        if padding % 4:
            raise ModuleError("xz stream padding is not a multiple of four bytes")
        if not rest:
            return output.join()
        if not rest.startswith(XZ_MAGIC):
            raise ModuleError("bytes after the end of the xz data")


def _unzstd(data: bytes, limit: int) -> bytes:
    """The zstd program reads the data from memory and its output is read up to limit; a bomb
    is killed there. Nothing touches the disk."""
    from amber.run import read_output

    source = os.memfd_create("amber-module.zst", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(source, view):]
        os.lseek(source, 0, os.SEEK_SET)
        result = read_output(["zstd", "-d", "-c", "-q"], stdin=source, limit=limit)
    finally:
        os.close(source)
    if result.stdout is None:
        raise TooLarge(limit, compressed=True)
    if result.returncode != 0:
        import re

        lines = result.stderr.strip().splitlines() or ["zstd failed"]
        detail = re.sub(r"^(zstd: )?/\*stdin\*\\\s*:\s*", "", lines[-1].strip())
        raise ModuleError(f"bad zstd data: {detail}")
    return result.stdout


def decompress(data: bytes, path: Path, limit: int = DEFAULT_MAX_MODULE_SIZE
               ) -> tuple[str, bytes]:
    """(compression, image): detected by magic, checked against the file name; an image of
    more than limit bytes raises TooLarge, found out while decompressing."""
    suffix = path.suffix
    try:
        if data.startswith(XZ_MAGIC):
            return "xz", _unxz(data, limit)
        if data.startswith(ZSTD_MAGIC):
            return "zst", _unzstd(data, limit)
        if data.startswith(GZIP_MAGIC):
            return "gz", _gunzip(data, limit)
    except lzma.LZMAError as e:
        if "memory usage limit" in str(e).lower():
            raise ModuleError(f"xz data needs more memory to decompress than "
                              f"{format_size(limit + XZ_MEMORY_ALLOWANCE)} (a dictionary "
                              "larger than max_module_size)") from None
        raise ModuleError(f"bad xz data: {e}") from None
    except zlib.error as e:
        raise ModuleError(f"bad gz data: {e}") from None
    if suffix in (".xz", ".zst", ".gz"):
        raise ModuleError(f"not {suffix.lstrip('.')}-compressed as its name says")
    if len(data) > limit:
        raise TooLarge(limit, compressed=False)
    return "", data


def parse_image(data: bytes, path: Path, limit: int = DEFAULT_MAX_MODULE_SIZE) -> ModuleInfo:
    """Parse the bytes of a module file (possibly compressed); raises ModuleError."""
    compression, image = decompress(data, path, limit)
    signed_length, signature = split_signature(image)
    section = find_section(image[:signed_length], ".modinfo")
    if section is None:
        raise ModuleError("no .modinfo section (not a kernel module)")
    entries = parse_modinfo(section)
    info = dict(entries)  # the last value of each key; repeated keys are in modinfo
    vermagic = info.get("vermagic", "")
    depends = tuple(d for v in (v for k, v in entries if k == "depends") for d in v.split(",")
                    if d)
    return ModuleInfo(
        path=path,
        name=info.get("name") or module_name_from_path(path),
        vermagic=vermagic,
        kernel_release=vermagic.split()[0] if vermagic.split() else "",
        livepatch=info.get("livepatch", "") == "Y",
        srcversion=info.get("srcversion", ""),
        license=info.get("license", ""),
        description=info.get("description", ""),
        depends=depends,
        modinfo=entries,
        compression=compression,
        signed_length=signed_length,
        signature=signature,
        limit=limit,
    )


def _bad(path: Path, problem: str, hint: str | None = None) -> AmberError:
    return AmberError(f"{path}: {problem}",
                      hint=hint or "check that this is a kernel module (.ko, .ko.xz or .ko.zst) "
                                   "and that it was copied completely",
                      code=ExitCode.BAD_MODULE)


def _bad_module(path: Path, error: ModuleError) -> AmberError:
    return _bad(path, str(error), error.hint)


def parse(data: bytes, path: Path, limit: int = DEFAULT_MAX_MODULE_SIZE) -> ModuleInfo:
    """parse_image() with every failure as AmberError(BAD_MODULE) naming path."""
    try:
        return parse_image(data, path, limit)
    except ModuleError as e:
        raise _bad_module(path, e) from None
    except (ValueError, IndexError, struct.error, MemoryError, RecursionError) as e:
        raise _bad(path, f"malformed ({type(e).__name__}: {e})") from None


def read_image(path: Path, limit: int = DEFAULT_MAX_MODULE_SIZE) -> bytes:
    """The decompressed bytes of a module file (what the kernel checks the signature on)."""
    try:
        return decompress(_read_file(path, limit), path, limit)[1]
    except ModuleError as e:
        raise _bad_module(path, e) from None


FILE_KINDS = {stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
              stat.S_IFIFO: "a pipe", stat.S_IFSOCK: "a socket"}


def _read_file(path: Path, limit: int) -> bytes:
    """At most limit bytes of a regular file: a link to /dev/zero or a pipe is refused before
    reading, a huge file after reading that much."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a pipe must not block
    except FileNotFoundError:
        raise AmberError(f"{path}: no such file", hint="check the path",
                         code=ExitCode.NOT_FOUND) from None
    except OSError as e:
        raise AmberError(f"{path}: cannot read: {e.strerror}", code=ExitCode.NOT_FOUND) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise _bad(path, "is a directory")
        kind = FILE_KINDS.get(stat.S_IFMT(mode), "something else")
        raise _bad(path, f"is not a regular file but {kind}", hint="pass the module file itself")
    pieces: list[bytes] = []
    size = 0
    with open(fd, "rb") as file:
        try:
            while size <= limit and (piece := file.read(CHUNK)):
                pieces.append(piece)
                size += len(piece)
        except OSError as e:
            raise AmberError(f"{path}: cannot read: {e.strerror}",
                             code=ExitCode.NOT_FOUND) from None
    if size > limit:
        raise _bad_module(path, TooLarge(limit, compressed=False))
    return b"".join(pieces)


def read(path: Path, limit: int = DEFAULT_MAX_MODULE_SIZE) -> ModuleInfo:
    """Parse the module file at path; neither the file nor its decompressed image may be
    larger than limit bytes ([livepatch] max_module_size)."""
    return parse(_read_file(path, limit), path, limit)


def incompatibility(info: ModuleInfo, kernel_release: str) -> str | None:
    """Why the module cannot be loaded into kernel_release, or None if its vermagic fits.

    The kernel itself skips the release part of vermagic when modversions are on, so this check
    is amber's own.
    """
    if not info.vermagic:
        return f"{info.name} has no vermagic"
    if info.kernel_release != kernel_release:
        return (f"{info.name} is built for kernel {info.kernel_release}, "
                f"not for {kernel_release}")
    return None

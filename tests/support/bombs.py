"""Decompression bombs for the module reader, made at test time from a real module.

Each bomb is a valid compressed file: the module followed by `pieces` times 4 MiB of zeros,
so without a limit it decompresses to a module that parses (the tests check that with one
piece). Two shapes per format: one stream (one gzip member, one xz stream of many blocks, one
zstd frame of RLE blocks) and many streams (kmod reads concatenated members, streams and frames,
and so does amber).
"""

from __future__ import annotations

import functools
import gzip
import io
import lzma
import struct
import subprocess
import tarfile
import zlib

PIECE = 4 << 20
GIB = (1 << 30) // PIECE  # pieces for a GiB of zeros
ZEROS = bytes(PIECE)
# What xz -0 does, with long matches: fast on zeros. The 1 MiB dictionary is kbuild's.
FAST_XZ = [{"id": lzma.FILTER_LZMA2, "preset": 0, "mf": lzma.MF_HC3, "nice_len": 273,
            "mode": lzma.MODE_FAST, "dict_size": 1 << 20}]
ZSTD_BLOCK = 128 << 10


def size(module: bytes, pieces: int) -> int:
    """What a bomb decompresses to."""
    return len(module) + pieces * PIECE


# ---- gzip -------------------------------------------------------------------------------------

def gz_one_member(module: bytes, pieces: int) -> bytes:
    """A full flush resets deflate's history, so 4 MiB of zeros compress to the same bytes each
    time: the member is the module's deflate blocks, those bytes repeated, and the trailer."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = deflate.compress(module) + deflate.flush(zlib.Z_FULL_FLUSH)
    zeros = deflate.compress(ZEROS) + deflate.flush(zlib.Z_FULL_FLUSH)
    assert deflate.compress(ZEROS) + deflate.flush(zlib.Z_FULL_FLUSH) == zeros
    end = deflate.flush()
    crc = zlib.crc32(module)
    for _ in range(pieces):
        crc = zlib.crc32(ZEROS, crc)
    header = b"\x1f\x8b\x08\x00" + bytes(4) + b"\x00\x03"  # deflate, no flags, no time, Unix
    trailer = struct.pack("<II", crc, size(module, pieces) & 0xFFFFFFFF)
    return header + head + zeros * pieces + end + trailer


@functools.cache
def _gz_zeros() -> bytes:
    return gzip.compress(ZEROS)


def gz_many_members(module: bytes, pieces: int) -> bytes:
    return gzip.compress(module) + _gz_zeros() * pieces


# ---- xz ---------------------------------------------------------------------------------------

def _varint(number: int) -> bytes:
    out = bytearray()
    while number >= 0x80:
        out.append(number & 0x7F | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def _varint_end(data: bytes, offset: int) -> int:
    while data[offset] & 0x80:
        offset += 1
    return offset + 1


def _xz_block(stream: bytes) -> tuple[bytes, bytes]:
    """The one block of a one-block xz stream (with its padding and check), and its index
    record (unpadded size, uncompressed size)."""
    backward_size = (struct.unpack("<I", stream[-8:-4])[0] + 1) * 4
    index = stream[-12 - backward_size:-12]
    assert index[:2] == b"\x00\x01", "one index record"
    return stream[12:-12 - backward_size], index[2:_varint_end(index, _varint_end(index, 2))]


@functools.cache
def _xz_zeros() -> bytes:
    return lzma.compress(ZEROS, check=lzma.CHECK_CRC32, filters=FAST_XZ)


def xz_one_stream(module: bytes, pieces: int) -> bytes:
    """One stream whose blocks are the module's block, then the same zeros block again and
    again; blocks are independent, so only the index and the footer are new."""
    first = lzma.compress(module, check=lzma.CHECK_CRC32)
    block, record = _xz_block(first)
    zeros_block, zeros_record = _xz_block(_xz_zeros())
    index = b"\x00" + _varint(1 + pieces) + record + zeros_record * pieces
    index += bytes(-len(index) % 4)
    index += struct.pack("<I", zlib.crc32(index))
    fields = struct.pack("<I", len(index) // 4 - 1) + first[6:8]  # the stream flags
    footer = struct.pack("<I", zlib.crc32(fields)) + fields + b"YZ"
    return first[:12] + block + zeros_block * pieces + index + footer


def xz_many_streams(module: bytes, pieces: int) -> bytes:
    return lzma.compress(module, check=lzma.CHECK_CRC32) + _xz_zeros() * pieces


# ---- zstd -------------------------------------------------------------------------------------

def _zstd_block(kind: int, size_: int, last: bool) -> bytes:
    return (size_ << 3 | kind << 1 | last).to_bytes(3, "little")


def zst_one_frame(module: bytes, pieces: int) -> bytes:
    """One frame: raw blocks with the module, then RLE blocks (one byte stands for 128 KiB)."""
    frame = bytearray(b"\x28\xb5\x2f\xfd\x00\x38")  # no size, no checksum; 128 KiB window
    for start in range(0, len(module), ZSTD_BLOCK):
        piece = module[start:start + ZSTD_BLOCK]
        frame += _zstd_block(0, len(piece), False) + piece
    count = pieces * PIECE // ZSTD_BLOCK
    for i in range(count):
        frame += _zstd_block(1, ZSTD_BLOCK, i == count - 1) + b"\0"
    return bytes(frame)


def zstd(data: bytes) -> bytes:
    return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True,
                          check=True).stdout


@functools.cache
def _zst_zeros() -> bytes:
    return zstd(ZEROS)


def zst_many_frames(module: bytes, pieces: int) -> bytes:
    """Frames made by the zstd program."""
    return zstd(module) + _zst_zeros() * pieces


BOMBS = {
    "gz-one-member": ("gz", gz_one_member),
    "gz-many-members": ("gz", gz_many_members),
    "xz-one-stream": ("xz", xz_one_stream),
    "xz-many-streams": ("xz", xz_many_streams),
    "zst-one-frame": ("zst", zst_one_frame),
    "zst-many-frames": ("zst", zst_many_frames),
}
TESTERS = {"gz": ["gzip", "-t"], "xz": ["xz", "-t"], "zst": ["zstd", "-t", "-q"]}


# ---- a .deb ----------------------------------------------------------------------------------

def _tar_header(name: str, size_: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode = size_, 0o644
    return info.tobuf(tarfile.GNU_FORMAT)


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    archive = b"!<arch>\n"
    for name, data in members:
        archive += f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
        archive += data + b"\n" * (len(data) % 2)
    return archive


def deb_one_frame(module: bytes, module_path: str, pieces: int) -> bytes:
    """A .deb holding the module and a file of zeros: its data.tar.zst is one zstd frame, the
    tar headers and the module in raw blocks, the zeros (and the end of the tar) in RLE blocks."""
    tar = _tar_header(f"./{module_path}", len(module)) + module + bytes(-len(module) % 512)
    tar += _tar_header("./usr/share/amber-bomb/zeros", pieces * PIECE - 1024)
    control = io.BytesIO()
    with tarfile.open(fileobj=control, mode="w:gz") as archive:
        text = (b"Package: amber-bomb\nVersion: 1\nArchitecture: all\n"
                b"Maintainer: amber tests <tests@amber.invalid>\nDescription: a bomb\n")
        info = tarfile.TarInfo("./control")
        info.size = len(text)
        archive.addfile(info, io.BytesIO(text))
    return _ar([("debian-binary", b"2.0\n"), ("control.tar.gz", control.getvalue()),
                ("data.tar.zst", zst_one_frame(tar, pieces))])

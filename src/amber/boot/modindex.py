"""kmod's binary module index (modules.dep.bin), read and written, so that a live patch can be
added to an initrd's module index without running depmod over the initrd's hundreds of modules.

The file (kmod's index format 2.1, all integers big-endian): a header (magic, version, the root
node's offset), then a trie of nodes, each child written before its parent. A node's offset
carries flags in its top bits; at the node, in this order, what the flags say it has:

    PREFIX  the characters every key below shares, NUL-terminated
    CHILDS  the first and the last character with a child, then one offset per character in
            that range (0: no child)
    VALUES  a count, then per value its priority and its text, NUL-terminated

The trie is a radix tree: a node's prefix runs to the next branch or value, the root's is
empty. That shape is the same whatever the order keys were added in, so a file read and written
again is the same file, byte for byte (the tests hold depmod's own files to that).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

MAGIC = 0xB007F457
VERSION = 0x00020001
PREFIX = 0x80000000
VALUES = 0x40000000
CHILDS = 0x20000000
OFFSET_MASK = 0x0FFFFFFF

Values = Sequence[tuple[int, str]]  # (priority, text), in the file's order


class BadIndex(Exception):
    """The file is not a kmod index amber can read."""


def read_index(data: bytes | memoryview) -> dict[str, list[tuple[int, str]]]:
    """Every key of the index with its values."""
    data = bytes(data)
    if len(data) < 12:
        raise BadIndex("shorter than its header")
    magic, version, root = struct.unpack_from(">III", data, 0)
    if magic != MAGIC or version >> 16 != VERSION >> 16:
        raise BadIndex(f"not a kmod index of version 2 (magic {magic:#x}, "
                          f"version {version:#x})")
    found: dict[str, list[tuple[int, str]]] = {}
    pending = [(root, "")]
    visits = 0
    try:
        while pending:
            visits += 1
            if visits > len(data):  # more nodes than bytes: offsets that loop
                raise BadIndex("its nodes loop")
            offset, key = pending.pop()
            pos = offset & OFFSET_MASK
            if offset & PREFIX:
                end = data.index(b"\0", pos)
                key += data[pos:end].decode("latin-1")
                pos = end + 1
            if offset & CHILDS:
                first, last = data[pos], data[pos + 1]
                count = last - first + 1
                children = struct.unpack_from(f">{count}I", data, pos + 2)
                pos += 2 + 4 * count
                pending += [(child, key + chr(first + i))
                            for i, child in enumerate(children) if child]
            if offset & VALUES:
                (count,) = struct.unpack_from(">I", data, pos)
                pos += 4
                values = []
                for _ in range(count):
                    (priority,) = struct.unpack_from(">I", data, pos)
                    end = data.index(b"\0", pos + 4)
                    values.append((priority, data[pos + 4:end].decode("latin-1")))
                    pos = end + 1
                found[key] = values
    except (ValueError, struct.error, IndexError) as e:
        raise BadIndex(f"a node is cut short or out of place ({e})") from None
    return found


def write_index(entries: Mapping[str, Values]) -> bytes:
    """The index file of `entries` (keys without NUL, values in the order to keep)."""
    out = bytearray(struct.pack(">III", MAGIC, VERSION, 0))
    root = _write_node(out, sorted(entries), 0, entries, is_root=True)
    struct.pack_into(">I", out, 8, root)
    return bytes(out)


def _write_node(out: bytearray, keys: list[str], depth: int, entries: Mapping[str, Values],
                is_root: bool = False) -> int:
    """Write the node of `keys` (sorted, sharing their first `depth` characters) and what is
    below it; its offset with its flags."""
    if not keys:  # the root of an empty index: a node with nothing
        return len(out)
    prefix = "" if is_root else _common_prefix(keys, depth)
    depth += len(prefix)
    here = keys[0] if keys[0] == keys[0][:depth] and len(keys[0]) == depth else None
    below = keys[1:] if here is not None else keys
    children: dict[int, int] = {}
    start = 0
    while start < len(below):
        char = below[start][depth]
        end = start
        while end < len(below) and below[end][depth] == char:
            end += 1
        children[ord(char)] = _write_node(out, below[start:end], depth + 1, entries)
        start = end
    offset = len(out)
    if prefix:
        out += prefix.encode("latin-1") + b"\0"
        offset |= PREFIX
    if children:
        first, last = min(children), max(children)
        out += bytes((first, last))
        out += struct.pack(f">{last - first + 1}I",
                           *(children.get(c, 0) for c in range(first, last + 1)))
        offset |= CHILDS
    if here is not None:
        values = entries[here]
        out += struct.pack(">I", len(values))
        for priority, text in values:
            out += struct.pack(">I", priority) + text.encode("latin-1") + b"\0"
        offset |= VALUES
    return offset


def _common_prefix(keys: list[str], depth: int) -> str:
    """What the sorted `keys` share after their first `depth` characters (the first and the
    last differ first)."""
    first, last = keys[0][depth:], keys[-1][depth:]
    length = 0
    while length < min(len(first), len(last)) and first[length] == last[length]:
        length += 1
    return first[:length]

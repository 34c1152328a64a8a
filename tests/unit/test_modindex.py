"""kmod's binary module index as amber writes it (the root test of live patches holds it to
depmod's own files, byte for byte and entry for entry)."""

from __future__ import annotations

import contextlib
import random
import struct

import pytest

from amber.boot.modindex import BadIndex, read_index, write_index

ENTRIES = {"a": [(0, "A")], "ab": [(1, "B")], "ac": [(2, "C")]}


def test_the_layout_of_a_small_index() -> None:
    """Children before their parent; offsets carry the node's flags in their top bits."""
    b = struct.pack(">II", 1, 1) + b"B\0"                      # at 12: values
    c = struct.pack(">II", 1, 2) + b"C\0"                      # at 22
    a = b"bc" + struct.pack(">II", 0x4000000C, 0x40000016) + struct.pack(">II", 1, 0) + b"A\0"
    root = b"aa" + struct.pack(">I", 0x60000020)               # a at 32: children and values
    expected = struct.pack(">III", 0xB007F457, 0x00020001, 0x20000034) + b + c + a + root
    assert write_index(ENTRIES) == expected
    assert read_index(expected) == ENTRIES


def test_an_empty_index_is_a_root_with_nothing() -> None:
    empty = struct.pack(">III", 0xB007F457, 0x00020001, 12)
    assert write_index({}) == empty and read_index(empty) == {}


def test_shared_prefixes_and_many_values_read_back() -> None:
    entries = {"snd_hda_codec": [(3, "kernel/sound/a.ko: x.ko")],
               "snd_hda_codec_generic": [(4, "kernel/sound/b.ko:")],
               "snd_hda_core": [(5, "kernel/sound/c.ko:")],
               "pci:v00008086d*": [(0, "e1000e"), (0, "igb"), (7, "ixgbe")],
               "zz": [(9, "")]}
    assert read_index(write_index(entries)) == entries


def test_random_indexes_read_back_the_same() -> None:
    rng = random.Random(7)
    for _ in range(200):
        keys = {"".join(rng.choice("ab_-:*") for _ in range(rng.randint(1, 8)))
                for _ in range(rng.randint(1, 40))}
        entries = {k: [(rng.randint(0, 9), rng.choice(["", "x", "kernel/y.ko: z.ko"]))]
                   for k in keys}
        data = write_index(entries)
        assert read_index(data) == entries
        assert write_index(read_index(data)) == data


def test_damaged_files_are_refused_not_crashed_on() -> None:
    data = write_index({"amber_lp_v1": [(1, "livepatch/amber_lp_v1.ko:")], "ext4": [(0, "e:")]})
    with pytest.raises(BadIndex):
        read_index(b"\x00" * 12)
    for cut in range(len(data)):
        with contextlib.suppress(BadIndex):
            read_index(data[:cut])
    rng = random.Random(3)
    for _ in range(2000):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(12, len(damaged))] = rng.randrange(256)
        with contextlib.suppress(BadIndex):
            read_index(bytes(damaged))


def test_offsets_that_loop_are_refused() -> None:
    # The root's only child is the root itself.
    looped = struct.pack(">III", 0xB007F457, 0x00020001, 0x2000000C) + b"aa" + struct.pack(
        ">I", 0x2000000C)
    with pytest.raises(BadIndex, match="loop"):
        read_index(looped)

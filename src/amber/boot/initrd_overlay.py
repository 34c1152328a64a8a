"""A live patch added to an initrd without regenerating it.

The kernel unpacks an initrd made of several concatenated cpio archives, each compressed or
not, a later file overriding an earlier one of the same name (early microcode uses this). So
instead of regenerating the whole initrd (about a minute under emulation) to add one module,
`amber livepatch apply` appends one small uncompressed archive, the overlay:

    .amber-initrd-overlay      first: says where the initrd before the overlay ends (base=N)
    <modules>/livepatch/X.ko   the live patch module
    <modules>/modules.*        the module index of the initrd's own modules plus X: for a
                               patch only modules.dep names (no dependencies, aliases or
                               exports, as live patches are), its modules.dep and .bin are
                               written directly (amber.boot.modindex); else depmod runs over
                               the initrd's modules
    etc/cmdline.d/20-force_drivers.conf   dracut: rd.driver.pre=X (the file dracut writes for
                               force_drivers, the previous live patch's line replaced)
    conf/modules               initramfs-tools: the modules its init loads, the same way

A cumulative replacement replaces the overlay (the initrd is cut back to base=N first): there is
at most one. The generator's configuration (amber.livepatch.early) still names the patch, so a
later full regeneration includes it, without an overlay. An initrd whose format amber cannot
read entirely (an unknown compression, a missing decompressor, a cut-short archive, no modules
of the kernel) raises CannotAppend: the caller regenerates it in full and says why.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from amber.run import run

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
MARKER = ".amber-initrd-overlay"
# The overlay's last member before the trailer, of a fixed size, says where the overlay starts:
# found from the end of the file, without reading the initrd before it.
END_MARKER = ".amber-initrd-overlay-end"
DRACUT_DRIVERS = "etc/cmdline.d/20-force_drivers.conf"
INITRAMFS_MODULES = "conf/modules"
INDEX_PREFIX = "modules."


class CannotAppend(Exception):
    """Why the initrd cannot take an overlay safely (then it is regenerated in full)."""


@dataclass(frozen=True)
class Member:
    name: str
    mode: int
    data: bytes | memoryview = b""  # a view into the initrd read: no copy of its 100 MB

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)


# ---- the newc format -----------------------------------------------------------------------

def _align(n: int) -> int:
    return (n + 3) & ~3


def read_archive(data: bytes | memoryview, offset: int) -> tuple[list[Member], int]:
    """The members of the newc archive at offset, and where it ends (after its trailer)."""
    data = memoryview(data)
    members: list[Member] = []
    while True:
        header = bytes(data[offset:offset + 110])
        if header[:6] != MAGIC:
            raise CannotAppend(f"a cpio archive is cut short or damaged at byte {offset}")
        try:
            mode = int(header[14:22], 16)
            size = int(header[54:62], 16)
            name_size = int(header[94:102], 16)
        except ValueError:
            raise CannotAppend(f"a cpio header at byte {offset} is damaged") from None
        name_end = offset + 110 + name_size - 1
        name = bytes(data[offset + 110:name_end]).decode(errors="surrogateescape")
        start = _align(offset + 110 + name_size)
        offset = _align(start + size)
        if offset > _align(len(data)):
            raise CannotAppend(f"the cpio member {name} runs past the end of the initrd")
        if name == TRAILER:
            return members, offset
        members.append(Member(name.removeprefix("./").lstrip("/"), mode, data[start:start + size]))


def _skip_zeros(data: bytes | memoryview, offset: int) -> int:
    while offset < len(data) and data[offset] == 0:
        offset += 1
    return offset


def write_archive(members: Iterable[Member]) -> bytes:
    out = bytearray()
    for ino, member in enumerate([*members, Member(TRAILER, 0)], start=0x616D6200):
        name = member.name.encode(errors="surrogateescape") + b"\0"
        nlink = 2 if member.is_dir else 1
        fields = (ino, member.mode, 0, 0, nlink, 0, len(member.data), 0, 0, 0, 0, len(name), 0)
        out += MAGIC + b"".join(b"%08X" % f for f in fields) + name
        out += bytes(_align(len(out)) - len(out)) + member.data
        out += bytes(_align(len(out)) - len(out))
    return bytes(out)


# ---- reading an initrd ---------------------------------------------------------------------

def _end_member(start: int) -> Member:
    return Member(END_MARKER, stat.S_IFREG | 0o644, b"start=%020d\n" % start)


def _number(member: Member, key: str) -> int:
    fields = dict(line.partition("=")[::2] for line in
                  bytes(member.data).decode(errors="replace").splitlines())
    value = fields.get(key, "")
    return int(value) if value.isdigit() else -1


def split_overlay(data: bytes | memoryview) -> tuple[int, list[Member] | None]:
    """Where the initrd before amber's overlay ends, and the overlay's members (None: none)."""
    size = len(data)
    tail = len(write_archive([_end_member(0)]))  # the end member and the trailer
    if size < tail:
        return size, None
    try:
        last, end = read_archive(data, size - tail)
        start = _number(last[0], "start") if [m.name for m in last] == [END_MARKER] else -1
        if end != size or not 0 <= start < size - tail:
            return size, None
        members, end = read_archive(data, start)
    except CannotAppend:
        return size, None
    if end != size or not members or members[0].name != MARKER:
        return size, None
    base = _number(members[0], "base")
    if not 0 <= base <= start or any(bytes(data[base:start])):
        return size, None
    return base, members[:-1]


def _decompressed(image: Path, start: int, end: int, data: bytes | memoryview) -> bytes:
    """The compressed archive at data[start:end], decompressed (with the chain in it)."""
    from amber.boot.initrd import DECOMPRESSORS

    command = next((c for magic, c in DECOMPRESSORS.items()
                    if data[start:start + len(magic)] == magic and c != "cat"), None)
    if command is None:
        raise CannotAppend(f"its archive at byte {start} is in a format amber does not know "
                           f"(it starts {data[start:start + 4].hex()})")
    tool = command.split()[0]
    if shutil.which(tool) is None:
        raise CannotAppend(f"its main archive is {tool}-compressed and {tool} is not installed")
    with tempfile.TemporaryDirectory(prefix="amber-initrd-") as tmp:
        out = Path(tmp) / "main.cpio"
        result = run(["sh", "-c", f'tail -c +{start + 1} "$1" | head -c {end - start} | '
                      f'{command} > "$2"', "sh", str(image), str(out)],
                     capture=True, check=False)
        if result.returncode != 0:
            raise CannotAppend(f"its {tool}-compressed archive does not decompress: "
                               f"{result.stderr.strip()[-200:]}")
        return out.read_bytes()


def _chain(data: bytes | memoryview, end: int) -> tuple[list[Member], int]:
    """The members of the uncompressed archives at the start of data[:end], and where the
    first thing that is not one begins (end: nothing else)."""
    head = memoryview(data)[:end]
    members: list[Member] = []
    offset = _skip_zeros(head, 0)
    while offset < end and head[offset:offset + 6] == MAGIC:
        more, offset = read_archive(head, offset)
        members += more
        offset = _skip_zeros(head, offset)
    return members, offset


def read_members(image: Path, data: bytes | memoryview, end: int) -> list[Member]:
    """Every member of the initrd's first `end` bytes (the initrd without amber's overlay), in
    the order the kernel unpacks them: uncompressed archives, then the compressed one."""
    members, offset = _chain(data, end)
    if offset < end:
        inner = _decompressed(image, offset, end, data)
        members += _chain(inner, len(inner))[0]
    return members


def all_members(image: Path) -> list[Member]:
    """Every member of the initrd, amber's overlay included (last: it overrides)."""
    data = image.read_bytes()
    base, overlay = split_overlay(data)
    return read_members(image, data, base) + (overlay or [])[1:]


# ---- making the overlay --------------------------------------------------------------------

def modules_prefix(members: Sequence[Member], release: str) -> str:
    """The folder of the kernel's modules in the initrd, e.g. usr/lib/modules/<release>/."""
    suffix = f"modules/{release}/modules.dep"
    for member in members:
        if member.name.endswith(suffix) and member.is_file:
            return member.name[:-len("modules.dep")]
    raise CannotAppend(f"it holds no module index of kernel {release} (modules.dep)")


def _scratch() -> str | None:
    """A tmpfs for depmod's tree: /tmp may be on disk, where its hundreds of files cost."""
    return "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


def indexes(members: Sequence[Member], prefix: str, module: Path, module_name: str,
            dropped: set[str], system_modules: Path | None = None) -> dict[str, bytes]:
    """depmod's indexes for the initrd's modules (but `dropped`: earlier live patches) plus
    `module`, as the generator's own depmod makes them: {file name: content}. A module that
    the system has at the same place with the same size is linked, not written out."""
    release = prefix.rstrip("/").rsplit("/", 1)[-1]
    with tempfile.TemporaryDirectory(prefix="amber-depmod-", dir=_scratch()) as tmp:
        tree = Path(tmp) / "lib/modules" / release
        tree.mkdir(parents=True)
        for member in members:
            if not member.name.startswith(prefix) or not member.is_file:
                continue
            relative = member.name[len(prefix):]
            if relative.startswith("livepatch/") and _stem(relative) in dropped:
                continue
            target = tree / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            same = system_modules / relative if system_modules else None
            if same is not None and same.is_file() and same.stat().st_size == len(member.data):
                target.symlink_to(same)
            else:
                target.write_bytes(member.data)
        inside = tree / "livepatch" / module.name
        inside.parent.mkdir(parents=True, exist_ok=True)
        inside.unlink(missing_ok=True)  # the base may have a module of that name, linked
        shutil.copyfile(module, inside)
        result = run(["depmod", "-b", tmp, release], capture=True, check=False)
        if result.returncode != 0:
            raise CannotAppend(f"depmod cannot index its modules with {module_name}: "
                               f"{result.stderr.strip()[-200:]}")
        before = {m.name[len(prefix):]: m.data for m in members if m.name.startswith(prefix)}
        made = {p.name: p.read_bytes() for p in sorted(tree.iterdir())
                if p.name.startswith(INDEX_PREFIX) and p.is_file() and not p.is_symlink()}
        return {name: data for name, data in made.items() if before.get(name) != data}


def added_to_index(members: Sequence[Member], prefix: str, module: Path, module_name: str,
                   dropped: set[str]) -> dict[str, bytes] | None:
    """modules.dep and modules.dep.bin with `module` in place of the `dropped` ones (and of an
    earlier module of its name), written directly (amber.boot.modindex) instead of by depmod,
    where they are all depmod would change: neither the module nor the ones it replaces has
    dependencies, aliases, soft dependencies or exported symbols. None otherwise (then depmod
    runs over the initrd's modules)."""
    from amber.boot import modindex

    if not _plain_module(module.read_bytes(), module):
        return None
    text = _member_data(members, prefix + "modules.dep")
    binary = _member_data(members, prefix + "modules.dep.bin")
    if text is None or binary is None:
        return None
    try:
        index = modindex.read_index(binary)
    except modindex.BadIndex:
        return None
    replaced = {n: index.pop(n) for n in {*dropped, module_name} if n in index}
    paths = {values[0][1].partition(":")[0] for values in replaced.values() if values}
    for path in paths:
        data = _member_data(members, prefix + path)
        if data is None or not _plain_module(data, Path(path)):
            return None
    priority = 1 + max((p for values in index.values() for p, _ in values), default=-1)
    line = f"livepatch/{module.name}:"
    index[module_name] = [(priority, line)]
    kept = [entry for entry in text.decode("latin-1").splitlines()
            if entry.partition(":")[0] not in paths]
    return {"modules.dep": "".join(f"{entry}\n" for entry in [*kept, line]).encode("latin-1"),
            "modules.dep.bin": modindex.write_index(index)}


def _plain_module(data: bytes, path: Path) -> bool:
    """A module only modules.dep names: no dependencies, aliases, soft dependencies or
    exported symbols (what depmod puts in its other indexes)."""
    from amber.livepatch.module import ModuleError, decompress, parse_image

    try:
        compression, image = decompress(data, path)
        info = parse_image(image, path.with_suffix("") if compression else path)
    except ModuleError:
        return False
    keys = {key for key, _ in info.modinfo}
    return not (info.depends or keys & {"alias", "softdep", "weakdep"} or b"__ksymtab" in image)


def _member_data(members: Sequence[Member], name: str) -> bytes | None:
    """The content of the last file of that name (the one the kernel keeps)."""
    found = next((m for m in reversed(members) if m.name == name and m.is_file), None)
    return bytes(found.data) if found is not None else None


def _stem(relative: str) -> str:
    name = relative.rsplit("/", 1)[-1]
    return name.split(".ko", 1)[0].replace("-", "_")


def load_config(members: Sequence[Member], generator: str, name: str,
                dropped: set[str]) -> Member:
    """The generator's file that loads modules early in the initrd, with `name` in place of
    the earlier live patches."""
    path = DRACUT_DRIVERS if generator == "dracut" else INITRAMFS_MODULES
    current = _member_data(members, path)
    lines = current.decode(errors="replace").splitlines() if current is not None else []
    if generator == "dracut":
        gone = {f"rd.driver.pre={n}" for n in {*dropped, name}}
        kept = [line for line in lines if line.strip() not in gone]
        kept.append(f"rd.driver.pre={name}")
    else:
        kept = [line for line in lines if line.strip() not in {*dropped, name}]
        kept.append(name)
    return Member(path, stat.S_IFREG | 0o644, ("\n".join(kept) + "\n").encode())


def _folders(members: Sequence[Member], files: Iterable[str]) -> list[Member]:
    """Directory members for the folders of `files` the initrd lacks (a folder it has, or has
    as a symbolic link, is left alone: the kernel would replace a link by a folder)."""
    present = {m.name for m in members}
    wanted: list[str] = []
    for name in files:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            folder = "/".join(parts[:i])
            if folder not in present and folder not in wanted:
                wanted.append(folder)
    return [Member(f, stat.S_IFDIR | 0o755) for f in wanted]


def make_overlay(members: Sequence[Member], base: int, generator: str, release: str,
                 module: Path, name: str, dropped: Sequence[str],
                 system_modules: Path | None = None) -> bytes:
    prefix = modules_prefix(members, release)
    old = {n.replace("-", "_") for n in dropped} - {name}
    files = {f"{prefix}livepatch/{module.name}": module.read_bytes()}
    made = (added_to_index(members, prefix, module, name, old)
            or indexes(members, prefix, module, name, old, system_modules))
    files |= {prefix + k: v for k, v in made.items()}
    config = load_config(members, generator, name, old)
    files[config.name] = bytes(config.data)
    return overlay_archive(base, [*_folders(members, files),
                                  *(Member(n, stat.S_IFREG | 0o644, d) for n, d in files.items())],
                           f"livepatch={name}\nrelease={release}\n")


def overlay_archive(base: int, members: Sequence[Member], note: str = "") -> bytes:
    """The overlay archive for an initrd whose first `base` bytes stay: the start marker (where
    the base ends), the members, the end marker (where the overlay starts, 4-byte aligned)."""
    marker = Member(MARKER, stat.S_IFREG | 0o644, f"base={base}\n{note}".encode())
    return write_archive([marker, *members, _end_member(_align(base))])


def add_livepatch(image: Path, generator: str, release: str, module: Path, name: str,
                  dropped: Sequence[str], system_modules: Path | None = None) -> int:
    """Append (or replace) the overlay that loads live patch `name` early; returns its size.

    `system_modules`: the snapshot's own modules of `release`, which depmod reads where the
    initrd has the same files. The initrd is mapped, not read: only its archive headers and
    the files the overlay needs are. Changed in place, once the overlay is made (a refusal
    changes nothing): the initrd is the new snapshot's, which is deleted unless its
    transaction completes, and rewriting it whole would write its 100 MB again (the snapshot
    shares them with its parent until then)."""
    import mmap

    try:
        with open(image, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise CannotAppend("it is empty")
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            try:
                base, overlay = _made(image, memoryview(mapped), generator, release, module,
                                      name, dropped, system_modules)
            finally:
                # Views into it that an error's traceback keeps: unmapped when they go.
                with contextlib.suppress(BufferError):
                    mapped.close()
    except OSError as e:
        raise CannotAppend(f"it cannot be read ({e.strerror})") from None
    try:
        with open(image, "r+b") as f:
            f.truncate(base)
            f.seek(base)
            f.write(bytes(_align(base) - base) + overlay)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        # The snapshot is unfinished: its transaction fails and deletes it.
        from amber.errors import AmberError, ExitCode
        from amber.lock import NO_SPACE_HINT

        full = e.errno == errno.ENOSPC
        raise AmberError(f"cannot write the overlay to {image}: {e.strerror}",
                         hint=NO_SPACE_HINT if full else "check the filesystem of /.snapshots",
                         code=ExitCode.NO_SPACE if full else ExitCode.ENVIRONMENT) from e
    return len(overlay)


def _made(image: Path, data: memoryview, generator: str, release: str, module: Path,
          name: str, dropped: Sequence[str], system_modules: Path | None) -> tuple[int, bytes]:
    """Where the base ends, and the new overlay (bytes of its own: the map is closed next)."""
    base, _ = split_overlay(data)
    members = read_members(image, data, base)
    return base, make_overlay(members, base, generator, release, module, name, dropped,
                              system_modules)

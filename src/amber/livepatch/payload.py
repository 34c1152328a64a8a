"""The kernel modules of a package file, taken out in memory and within a size limit.

A live patch package is one module and a little metadata, so its whole unpacked payload may
not be larger than `[livepatch] max_module_size` either: dpkg-deb or rpm2cpio decompress it
into a pipe, amber reads at most that much (a bomb is killed there), and only the module files
under (usr/)lib/modules/ are written out. Nothing else of the package reaches the disk.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from amber.livepatch.module import TooLarge, format_size
from amber.log import AmberError, ExitCode
from amber.run import read_output

MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
MODULE_FOLDERS = (("lib", "modules"), ("usr", "lib", "modules"))
CPIO_MAGICS = (b"070701", b"070702")  # newc, and newc with checksums
CPIO_HEADER = 110
S_IFMT, S_IFREG = 0o170000, 0o100000


class BadPayload(Exception):
    pass


def _bad(file: Path, problem: str, hint: str | None = None) -> AmberError:
    return AmberError(f"{file}: {problem}",
                      hint=hint or "check that this is a live patch package and that it was "
                                   "copied completely",
                      code=ExitCode.BAD_MODULE)


def payload(file: Path, kind: str, limit: int) -> bytes:
    """The package's payload archive, uncompressed: a tar (deb) or a newc cpio (rpm)."""
    argv = (["dpkg-deb", "--fsys-tarfile", str(file)] if kind == "deb"
            else ["rpm2cpio", str(file)])
    result = read_output(argv, stdin=subprocess.DEVNULL, limit=limit)
    if result.stdout is None:
        raise _bad(file, f"unpacks to more than {format_size(limit)}; a live patch package "
                         "holds one module of a few MiB", TooLarge.hint)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"exit code {result.returncode}"]
        raise _bad(file, f"cannot be unpacked: {lines[-1].strip()}")
    return result.stdout


def tar_files(archive: bytes) -> Iterator[tuple[str, bytes]]:
    import io
    import tarfile

    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
            for member in tar:
                if member.isreg():
                    contents = tar.extractfile(member)
                    if contents is not None:
                        yield member.name, contents.read()
    except tarfile.TarError as e:
        raise BadPayload(f"bad tar archive: {e}") from None


def cpio_files(archive: bytes) -> Iterator[tuple[str, bytes]]:
    offset = 0
    while True:
        header = archive[offset:offset + CPIO_HEADER]
        if len(header) < CPIO_HEADER or header[:6] not in CPIO_MAGICS:
            raise BadPayload("bad cpio archive (truncated, or not newc)")
        try:
            fields = [int(header[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        except ValueError:
            raise BadPayload("bad cpio header") from None
        mode, size, name_size = fields[1], fields[6], fields[11]
        name_start = offset + CPIO_HEADER
        data_start = (name_start + name_size + 3) // 4 * 4
        name = archive[name_start:name_start + name_size].rstrip(b"\0")
        if name == b"TRAILER!!!":
            return
        if data_start + size > len(archive):
            raise BadPayload("cpio archive truncated")
        if mode & S_IFMT == S_IFREG:
            yield name.decode(errors="surrogateescape"), archive[data_start:data_start + size]
        offset = (data_start + size + 3) // 4 * 4


def module_path(name: str) -> PurePosixPath | None:
    """The archive member's path, if it is a module under (usr/)lib/modules/ and safe."""
    parts = tuple(p for p in PurePosixPath(name).parts if p not in ("/", "."))
    if ".." in parts or not parts[-1:] or not parts[-1].endswith(MODULE_SUFFIXES):
        return None
    if not any(parts[:len(folder)] == folder and len(parts) > len(folder) + 1
               for folder in MODULE_FOLDERS):
        return None
    return PurePosixPath(*parts)


def extract_modules(file: Path, kind: str, dest: Path, limit: int) -> list[Path]:
    """Write the package's module files below dest; their paths, sorted."""
    archive = payload(file, kind, limit)
    members = tar_files(archive) if kind == "deb" else cpio_files(archive)
    written = []
    try:
        for name, contents in members:
            relative = module_path(name)
            if relative is None:
                continue
            target = dest / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(contents)
            written.append(target)
    except BadPayload as e:
        raise _bad(file, str(e)) from None
    except OSError as e:
        raise _bad(file, f"cannot write its module: {e.strerror}") from None
    return sorted(set(written))

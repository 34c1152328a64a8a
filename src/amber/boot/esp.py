"""An EFI system partition to read and write files on: mounted (a directory), or a FAT
filesystem on a device or at an offset of a disk, written with mtools (a kernel without vfat,
as on the machines that build amber's disks and in a rescue system without the module)."""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from amber.errors import ExitCode, die
from amber.run import run


def _mtools_env() -> dict[str, str]:
    return {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


@dataclass(frozen=True)
class MountedEsp:
    path: Path

    def __str__(self) -> str:
        return str(self.path)

    def read(self, name: str) -> bytes | None:
        try:
            return (self.path / name).read_bytes()
        except FileNotFoundError:
            return None

    def is_dir(self, name: str) -> bool:
        return (self.path / name).is_dir()

    def make_dir(self, name: str) -> None:
        (self.path / name).mkdir()

    def write(self, name: str, content: bytes) -> None:
        target = self.path / name
        tmp = target.with_name(f".{target.name}.amber.tmp")
        with open(tmp, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)

    def delete(self, name: str) -> None:
        (self.path / name).unlink(missing_ok=True)

    def remove_dir(self, name: str) -> None:
        (self.path / name).rmdir()

    def free(self) -> int:
        stat = os.statvfs(self.path)
        return stat.f_bavail * stat.f_frsize

    def volume_id(self) -> str | None:
        result = run(["findmnt", "--noheadings", "--output", "UUID", "--mountpoint",
                      str(self.path)], capture=True, check=False)
        return result.stdout.strip().upper() or None

    def sync(self) -> None:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass(frozen=True)
class FatEsp:
    device: Path
    offset: int = 0  # bytes: the ESP inside a whole disk

    def __str__(self) -> str:
        return f"{self.device} at byte {self.offset}" if self.offset else str(self.device)

    @property
    def target(self) -> str:
        return f"{self.device}@@{self.offset}" if self.offset else str(self.device)

    def _mtools(self, *argv: str, check: bool = True) -> str:
        result = run([argv[0], "-i", self.target, *argv[1:]], capture=True, check=False,
                     env=_mtools_env())
        if check and result.returncode != 0:
            message = result.stderr.strip().splitlines()[-1:] or ["failed"]
            full = "full" in result.stderr.lower()
            die(f"{argv[0]} on the EFI system partition {self}: {message[0]}",
                hint="is it a FAT filesystem? (amber init --esp names the ESP's device)"
                     if not full else "free some space on the ESP",
                code=ExitCode.NO_SPACE if full else ExitCode.ENVIRONMENT)
        return result.stdout if result.returncode == 0 else ""

    def _exists(self, name: str) -> bool:
        return run(["mdir", "-i", self.target, "-b", "-a", f"::/{name}"], capture=True,
                   check=False, env=_mtools_env()).returncode == 0

    def read(self, name: str) -> bytes | None:
        if not self._exists(name) or self.is_dir(name):
            return None
        with tempfile.TemporaryDirectory(prefix="amber-esp-") as tmp:
            local = Path(tmp) / "file"
            self._mtools("mcopy", "-n", f"::/{name}", str(local))
            return local.read_bytes()

    def is_dir(self, name: str) -> bool:
        # mdir -b of a folder lists its entries as ::/name/...; of a file, the file itself.
        out = run(["mdir", "-i", self.target, "-b", "-a", f"::/{name}"], capture=True,
                  check=False, env=_mtools_env())
        if out.returncode != 0:
            return False
        lines = out.stdout.split()
        return not (len(lines) == 1 and lines[0].rstrip("/").lower() ==
                    f"::/{name}".lower())

    def make_dir(self, name: str) -> None:
        self._mtools("mmd", f"::/{name}")

    def write(self, name: str, content: bytes) -> None:
        with tempfile.TemporaryDirectory(prefix="amber-esp-") as tmp:
            local = Path(tmp) / "file"
            local.write_bytes(content)
            self._mtools("mcopy", "-o", "-n", str(local), f"::/{name}")

    def delete(self, name: str) -> None:
        if self._exists(name):
            self._mtools("mdel", f"::/{name}")

    def remove_dir(self, name: str) -> None:
        self._mtools("mrd", f"::/{name}")

    def free(self) -> int:
        match = re.search(r"([\d ]+) bytes free", self._mtools("mdir", "::/"))
        return int(match[1].replace(" ", "")) if match else 0

    def volume_id(self) -> str | None:
        match = re.search(r"serial number: ([0-9A-Fa-f]{8})", self._mtools("minfo", "::"))
        return f"{match[1][:4]}-{match[1][4:]}".upper() if match else None

    def sync(self) -> None:
        pass  # mtools closes (and so flushes) the device after every command


Esp = MountedEsp | FatEsp

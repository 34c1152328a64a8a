"""Bad states for amber to find. Roots made without amber: a small btrfs with snapper's layout
built by btrfs-progs and hand-written info.xml files, mounted as a booted system sees it, which
tests bend into the states a crash, an admin or another tool can leave. And what a run may leave
behind: processes chrooted into a snapshot, supervisors, mounts."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import require
from tests.root.conftest import attach

IN_PROGRESS = {"transactional-update-in-progress": "yes"}


def info_xml(number: int, description: str = "", userdata: Mapping[str, str] = {}) -> str:
    lines = ['<?xml version="1.0"?>', "<snapshot>", "  <type>single</type>",
             f"  <num>{number}</num>", "  <date>2024-05-01 10:00:00</date>"]
    if description:
        lines.append(f"  <description>{description}</description>")
    for key, value in userdata.items():
        lines += ["  <userdata>", f"    <key>{key}</key>", f"    <value>{value}</value>",
                  "  </userdata>"]
    return "\n".join([*lines, "</snapshot>", ""])


def btrfs(*args: str) -> None:
    subprocess.run(["btrfs", "-q", *args], check=True, capture_output=True)


@dataclass
class Handmade:
    root: Path
    image: Path
    device: Path
    mounts: list[Path] = field(default_factory=list)

    @property
    def store(self) -> Path:
        return self.root / ".snapshots"

    @property
    def lock(self) -> Path:
        return self.store / ".amber.lock"

    def snapshot(self, number: int) -> Path:
        return self.store / str(number) / "snapshot"

    def make(self, number: int, *, read_only: bool = True, info: str | None = None,
             userdata: Mapping[str, str] = {}) -> Path:
        """Snapshot N of snapshot 1, with info.xml (`info`: its text; "" for none)."""
        (self.store / str(number)).mkdir()
        flags = ["-r"] if read_only else []
        btrfs("subvolume", "snapshot", *flags, str(self.snapshot(1)), str(self.snapshot(number)))
        text = info_xml(number, f"made by hand {number}", userdata) if info is None else info
        if text:
            (self.store / str(number) / "info.xml").write_text(text)
        return self.snapshot(number)

    def set_default(self, number: int) -> None:
        btrfs("subvolume", "set-default", str(self.snapshot(number)))

    def default_path(self) -> str:
        out = subprocess.run(["btrfs", "subvolume", "get-default", str(self.store)], check=True,
                             capture_output=True, text=True).stdout
        return out.split(" path ", 1)[1].strip()

    def write_record(self, **record: object) -> None:
        self.lock.write_text(json.dumps(record))

    def record(self) -> str:
        return self.lock.read_text() if self.lock.exists() else ""


def make_handmade(tmp_path: Path, size: str = "256M", mixed: bool = False) -> Iterator[Handmade]:
    """snapshot 1 (read-only, the default) holding a few directories, booted; @/.snapshots
    and @/var mounted at their places."""
    require(Path("/dev/loop-control").exists(), "root tests need loop devices")
    image = tmp_path / "handmade.img"
    subprocess.run(["truncate", "-s", size, str(image)], check=True)
    subprocess.run(["mkfs.btrfs", "-q", *(["-M"] if mixed else []), str(image)], check=True,
                   capture_output=True)
    device = attach(image)
    top, root = tmp_path / "top", tmp_path / "root"
    top.mkdir()
    root.mkdir()
    made = Handmade(root, image, device)
    try:
        subprocess.run(["mount", str(device), str(top)], check=True)
        try:
            for sub in ("@", "@/.snapshots", "@/var"):
                btrfs("subvolume", "create", str(top / sub))
            (top / "@/.snapshots/1").mkdir()
            first = top / "@/.snapshots/1/snapshot"
            btrfs("subvolume", "create", str(first))
            for directory in ("etc", "var", ".snapshots", "usr/bin"):
                (first / directory).mkdir(parents=True)
            (first / "etc/os-release").write_text("ID=handmade\n")
            (top / "@/.snapshots/1/info.xml").write_text(info_xml(1, "first root filesystem"))
            btrfs("property", "set", str(first), "ro", "true")
            btrfs("subvolume", "set-default", str(first))
        finally:
            subprocess.run(["umount", str(top)], check=True)
        subprocess.run(["mount", "-o", "ro", str(device), str(root)], check=True)
        made.mounts.append(root)
        for sub in (".snapshots", "var"):
            subprocess.run(["mount", "-o", f"subvol=@/{sub}", str(device), str(root / sub)],
                           check=True)
            made.mounts.append(root / sub)
        yield made
    finally:
        for where in reversed(made.mounts):
            subprocess.run(["umount", str(where)], check=False)
        subprocess.run(["losetup", "-d", str(device)], check=False)


def processes_inside(snapshot: Path) -> list[int]:
    """Processes whose root directory is on the subvolume `snapshot` (chrooted into it)."""
    try:
        device = os.stat(snapshot).st_dev
    except OSError:
        return []
    found = []
    for name in os.listdir("/proc"):
        try:
            if name.isdigit() and os.stat(f"/proc/{name}/root").st_dev == device:
                found.append(int(name))
        except OSError:
            continue
    return found


def processes_mentioning(text: str) -> list[int]:
    """Processes with `text` on their command line (amber and its supervisors: --root DIR)."""
    found = []
    for name in os.listdir("/proc"):
        try:
            if name.isdigit() and name != str(os.getpid()) and text.encode() in \
                    Path(f"/proc/{name}/cmdline").read_bytes():
                found.append(int(name))
        except OSError:
            continue
    return found


def children(parent: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        try:
            if name.isdigit():
                stat = Path(f"/proc/{name}/stat").read_bytes().rpartition(b")")[2].split()
                if int(stat[1]) == parent:
                    found.append(int(name))
        except (OSError, IndexError):
            continue
    return found


def wait_for(condition: object, timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what}: not reached in {timeout} s")


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")

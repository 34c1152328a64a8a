"""apt/dpkg (Debian, Ubuntu). Local .rpm files, and packages only rpm knows, go to plain rpm."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from amber.log import ExitCode, die
from amber.packages import Action, has_program

# apt's state (its lists, extended_states) under a system root: in the shared /var, not in a
# snapshot
APT_STATE = Path("var/lib/apt")
APT = ["apt-get", "-q", "-y", "-o", "Dpkg::Options::=--force-confdef",
       "-o", "Dpkg::Options::=--force-confold"]


class Apt:
    name = "apt"
    success_notes: Mapping[int, str] = {}

    def __init__(self, snapshot: Path):
        self.snapshot = snapshot

    def commands(self, action: Action, packages: Sequence[str]) -> list[list[str]]:
        from amber.packages import database
        from amber.packages.rpm import Rpm

        rpms = [p for p in packages if p.endswith(".rpm")]
        if action in (Action.REMOVE, Action.UPDATE) and database.rpm_database(self.snapshot):
            debs, rpm_known = database.read_dpkg(self.snapshot), database.read_rpm(self.snapshot)
            rpms += [p for p in packages if p not in debs and f"rpm:{p}" in rpm_known]
        others = [p for p in packages if p not in rpms]
        result: list[list[str]] = []
        if rpms:
            if not has_program(self.snapshot, "/usr/bin/rpm", "/bin/rpm"):
                die("cannot install .rpm files: rpm is not installed in the snapshot",
                    hint="amber pkg install rpm", code=ExitCode.ENVIRONMENT)
            result += Rpm(self.snapshot).commands(action, rpms)
        if others or action == Action.UP:
            result += apt_commands(action, others)
        return result

    def download(self, name: str, dest: Path) -> list[str]:
        return ["apt-get", "download", name]


def apt_commands(action: Action, packages: Sequence[str]) -> list[list[str]]:
    if action == Action.INSTALL:
        return [[*APT, "install", *packages]]
    if action == Action.REMOVE:
        return [[*APT, "remove", *packages]]
    if action == Action.UPDATE:
        local = [p for p in packages if p.endswith(".deb")]
        names = [p for p in packages if not p.endswith(".deb")]
        argv = [*APT, "install", *local]
        if names:
            argv += ["--only-upgrade", *names]
        return [argv]
    return [["apt-get", "update"], [*APT, "full-upgrade"]]

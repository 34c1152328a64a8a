"""Package managers, detected once per snapshot: apt/dpkg, zypper, dnf, and plain rpm for local
.rpm files; and the package databases of snapshots (database.py), read for `amber diff`.

Everything amber knows about one package manager is in its module here: how to install,
remove, update and upgrade, how to fetch a package without installing it, and which of its exit
statuses still mean success. Adding a package manager means adding one module and one line to
`detect`."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from amber.log import ExitCode, die

if TYPE_CHECKING:
    from amber.packages.database import Changes

PACKAGE_SUFFIXES = (".deb", ".rpm")


class Action(enum.StrEnum):
    INSTALL = "install"
    REMOVE = "remove"
    UPDATE = "update"
    UP = "up"  # the whole system


class PackageManager(Protocol):
    name: str
    # Exit statuses other than 0 that still mean success, with a note for the admin.
    success_notes: Mapping[int, str]

    def commands(self, action: Action, packages: Sequence[str]) -> list[list[str]]:
        """The commands that carry out action in the snapshot, in order."""
        ...

    def download(self, name: str, dest: Path) -> list[str]:
        """The host command that fetches package `name` into dest without installing it."""
        ...


def is_package_file(name: str) -> bool:
    return name.endswith(PACKAGE_SUFFIXES) and ("/" in name or Path(name).is_file())


def has_program(snapshot: Path, *candidates: str) -> str | None:
    """The name of the first candidate program (absolute paths) present in the snapshot."""
    for c in candidates:
        if (snapshot / c.lstrip("/")).exists():
            return Path(c).name
    return None


def detect(snapshot: Path) -> PackageManager:
    """The snapshot's package manager."""
    if has_program(snapshot, "/usr/bin/zypper"):
        from amber.packages.zypper import Zypper

        return Zypper()
    if dnf := has_program(snapshot, "/usr/bin/dnf5", "/usr/bin/dnf"):
        from amber.packages.dnf import Dnf

        return Dnf(dnf)
    if has_program(snapshot, "/usr/bin/apt-get"):
        from amber.packages.apt import Apt

        return Apt(snapshot)
    if has_program(snapshot, "/usr/bin/rpm", "/bin/rpm"):
        from amber.packages.rpm import Rpm

        return Rpm(snapshot)
    die(f"no known package manager in {snapshot}",
        hint="amber knows apt, zypper, dnf and rpm; use 'amber run -- ...' for others",
        code=ExitCode.ENVIRONMENT)


# Shortcuts for the callers that need one answer from the snapshot's manager.

def commands(snapshot: Path, action: str, packages: Sequence[str]) -> list[list[str]]:
    return detect(snapshot).commands(Action(action), packages)


def success_notes(snapshot: Path) -> dict[int, str]:
    return dict(detect(snapshot).success_notes)


def diff(a: Path, b: Path) -> Changes:
    from amber.packages import database

    return database.diff(a, b)

"""dnf (Fedora, RHEL)."""

from __future__ import annotations

from collections.abc import Sequence


def commands(action: str, packages: Sequence[str], dnf: str = "dnf") -> list[list[str]]:
    if action == "install":
        return [[dnf, "-y", "install", *packages]]
    if action == "remove":
        return [[dnf, "-y", "remove", *packages]]
    if action == "update":
        return [[dnf, "-y", "upgrade", *packages]]
    if action == "up":
        return [[dnf, "-y", "upgrade", "--refresh"]]
    raise ValueError(action)

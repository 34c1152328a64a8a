"""apt/dpkg (Debian, Ubuntu)."""

from __future__ import annotations

from collections.abc import Sequence

APT = ["apt-get", "-q", "-y", "-o", "Dpkg::Options::=--force-confdef",
       "-o", "Dpkg::Options::=--force-confold"]


def commands(action: str, packages: Sequence[str]) -> list[list[str]]:
    if action == "install":
        return [[*APT, "install", *packages]]
    if action == "remove":
        return [[*APT, "remove", *packages]]
    if action == "update":
        local = [p for p in packages if p.endswith(".deb")]
        names = [p for p in packages if not p.endswith(".deb")]
        argv = [*APT, "install", *local]
        if names:
            argv += ["--only-upgrade", *names]
        return [argv]
    if action == "up":
        return [["apt-get", "update"], [*APT, "full-upgrade"]]
    raise ValueError(action)

"""zypper (SUSE)."""

from __future__ import annotations

from collections.abc import Sequence

ZYPPER = ["zypper", "--non-interactive"]


def _local_files(packages: Sequence[str]) -> list[str]:
    # A local .rpm named on the command line is the admin's own choice, as a local .deb is to
    # apt: zypper would refuse an unsigned one. Repository packages stay verified.
    return ["--allow-unsigned-rpm"] if any(p.endswith(".rpm") for p in packages) else []


def commands(action: str, packages: Sequence[str]) -> list[list[str]]:
    if action == "install":
        return [[*ZYPPER, "install", "--auto-agree-with-licenses", *_local_files(packages),
                 *packages]]
    if action == "remove":
        return [[*ZYPPER, "remove", *packages]]
    if action == "update":
        return [[*ZYPPER, "update", "--auto-agree-with-licenses", *_local_files(packages),
                 *packages]]
    if action == "up":
        return [[*ZYPPER, "update", "--auto-agree-with-licenses"]]
    raise ValueError(action)

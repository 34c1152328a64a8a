"""Plain rpm, for local .rpm files on systems whose package manager is not rpm-based."""

from __future__ import annotations

from collections.abc import Sequence

from amber.log import ExitCode, die


def commands(action: str, packages: Sequence[str], dbpath: str | None = None) -> list[list[str]]:
    """dbpath: the database inside the snapshot, given explicitly because some rpm builds
    default elsewhere (Debian's rpm uses ~/.rpmdb)."""
    rpm = ["rpm", "--dbpath", dbpath] if dbpath else ["rpm"]
    if action in ("install", "update"):
        names = [p for p in packages if not p.endswith(".rpm")]
        if names:
            die(f"plain rpm installs only local .rpm files, not {', '.join(names)}",
                hint="pass the path of a .rpm file", code=ExitCode.USAGE)
        return [[*rpm, "-U", "--replacepkgs", *packages]]
    if action == "remove":
        return [[*rpm, "-e", *packages]]
    die("plain rpm cannot update the whole system", hint="use the system's package manager",
        code=ExitCode.USAGE)

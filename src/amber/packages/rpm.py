"""Plain rpm, for local .rpm files on systems whose package manager is not rpm-based."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from amber.log import ExitCode, die
from amber.packages import Action


class Rpm:
    name = "rpm"
    success_notes: Mapping[int, str] = {}

    def __init__(self, snapshot: Path):
        self.snapshot = snapshot

    def commands(self, action: Action, packages: Sequence[str]) -> list[list[str]]:
        from amber.packages.database import RPM_DATABASE

        # The database inside the snapshot, given explicitly: some rpm builds default
        # elsewhere (Debian's rpm uses ~/.rpmdb).
        inside = (self.snapshot / RPM_DATABASE).is_dir()
        rpm = ["rpm", "--dbpath", f"/{RPM_DATABASE}"] if inside else ["rpm"]
        if action in (Action.INSTALL, Action.UPDATE):
            names = [p for p in packages if not p.endswith(".rpm")]
            if names:
                die(f"plain rpm installs only local .rpm files, not {', '.join(names)}",
                    hint="pass the path of a .rpm file", code=ExitCode.USAGE)
            return [[*rpm, "-U", "--replacepkgs", *packages]]
        if action == Action.REMOVE:
            return [[*rpm, "-e", *packages]]
        die("plain rpm cannot update the whole system", hint="use the system's package manager",
            code=ExitCode.USAGE)

    def download(self, name: str, dest: Path) -> list[str]:
        die(f"cannot fetch package {name}: plain rpm has no repositories",
            hint="pass the .rpm file instead", code=ExitCode.ENVIRONMENT)

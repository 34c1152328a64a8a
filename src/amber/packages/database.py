"""The package databases inside a snapshot (dpkg's and rpm's), read without running the package
manager where possible: what is installed, what changed between two snapshots, who owns a file.

amber keeps both databases in the snapshot (usr/lib/sysimage/), so that a rollback rolls back
what the package manager believes is installed; var/lib/dpkg and var/lib/rpm are read too, for
systems laid out before that."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amber.run import run

DPKG_DATABASE = "usr/lib/sysimage/dpkg"
RPM_DATABASE = "usr/lib/sysimage/rpm"
_DPKG_DATABASES = (DPKG_DATABASE, "var/lib/dpkg")
_RPM_DATABASES = (RPM_DATABASE, "var/lib/rpm")


def dpkg_database(snapshot: Path) -> Path | None:
    for candidate in _DPKG_DATABASES:
        if (snapshot / candidate / "status").is_file():
            return snapshot / candidate
    return None


def rpm_database(snapshot: Path) -> Path | None:
    """The snapshot's rpm database, if it has one with content."""
    for candidate in _RPM_DATABASES:
        path = snapshot / candidate
        if path.is_dir() and any(path.iterdir()):
            return path
    return None


def read_dpkg(snapshot: Path) -> dict[str, str]:
    database = dpkg_database(snapshot)
    if database is None:
        return {}
    installed: dict[str, str] = {}
    for stanza in (database / "status").read_text(errors="replace").split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            name = fields["Package"]
            arch = fields.get("Architecture", "")
            key = name if arch in ("", "all", _native_arch()) else f"{name}:{arch}"
            installed[key] = fields.get("Version", "")
    return installed


def _native_arch() -> str:
    import platform

    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def read_rpm(snapshot: Path) -> dict[str, str]:
    """{"rpm:NAME": "VERSION-RELEASE"} (with EPOCH: when it is not 0)."""
    database = rpm_database(snapshot)
    if database is None or not shutil.which("rpm"):
        return {}
    result = run(["rpm", "--dbpath", str(database), "-qa", "--qf",
                  "%{NAME} %{EPOCHNUM}:%{VERSION}-%{RELEASE}\n"], capture=True, check=False)
    installed = {}
    for line in result.stdout.splitlines():
        name, _, version = line.partition(" ")
        installed[f"rpm:{name}"] = version.removeprefix("0:")
    return installed


def installed(snapshot: Path) -> dict[str, str]:
    return {**read_dpkg(snapshot), **read_rpm(snapshot)}


def owners(snapshot: Path, files: Sequence[Path]) -> set[str]:
    """The packages (dpkg or rpm) that installed these files of the snapshot."""
    wanted: set[str] = set()
    for f in files:
        relative = "/" + str(f.relative_to(snapshot))
        wanted |= {relative, relative.removeprefix("/usr")}
    names: set[str] = set()
    database = dpkg_database(snapshot)
    if database is not None:
        for listing in sorted((database / "info").glob("*.list")):
            if wanted & set(listing.read_text(errors="replace").splitlines()):
                names.add(listing.name.removesuffix(".list").partition(":")[0])
    rpm = rpm_database(snapshot)
    if rpm is not None and shutil.which("rpm"):
        for path in sorted(wanted):
            result = run(["rpm", "--dbpath", rpm, "-qf", "--qf", "%{NAME}\n", path],
                         capture=True, check=False)
            if result.returncode == 0:
                names |= set(result.stdout.split())
    return names


@dataclass(frozen=True)
class Changes:
    added: dict[str, str]
    removed: dict[str, str]
    changed: dict[str, tuple[str, str]]

    def as_json(self) -> dict[str, Any]:
        return {
            "added": [{"name": n, "version": v} for n, v in sorted(self.added.items())],
            "removed": [{"name": n, "version": v} for n, v in sorted(self.removed.items())],
            "changed": [{"name": n, "old": o, "new": w}
                        for n, (o, w) in sorted(self.changed.items())],
        }

    def render(self, a: int, b: int) -> str:
        lines = []
        lines += [f"+ {n} {v}" for n, v in sorted(self.added.items())]
        lines += [f"- {n} {v}" for n, v in sorted(self.removed.items())]
        lines += [f"~ {n} {o} → {w}" for n, (o, w) in sorted(self.changed.items())]
        if not lines:
            return f"no package changes between {a} and {b}"
        return "\n".join(lines)


def diff(a: Path, b: Path) -> Changes:
    old, new = installed(a), installed(b)
    return Changes(
        added={n: v for n, v in new.items() if n not in old},
        removed={n: v for n, v in old.items() if n not in new},
        changed={n: (old[n], v) for n, v in new.items() if n in old and old[n] != v},
    )

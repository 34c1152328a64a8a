"""Package managers, detected from the snapshot: apt/dpkg, zypper, dnf, and plain rpm for local
.rpm files; and the package databases of snapshots, read for `amber diff`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amber.log import ExitCode, die

PACKAGE_SUFFIXES = (".deb", ".rpm")


def is_package_file(name: str) -> bool:
    return name.endswith(PACKAGE_SUFFIXES) and ("/" in name or Path(name).is_file())


def _has(snapshot: Path, *candidates: str) -> str | None:
    for c in candidates:
        if (snapshot / c.lstrip("/")).exists():
            return Path(c).name
    return None


def detect(snapshot: Path) -> str:
    """The snapshot's package manager: 'zypper', 'dnf', 'apt' or 'rpm'."""
    if _has(snapshot, "/usr/bin/zypper"):
        return "zypper"
    if _has(snapshot, "/usr/bin/dnf5", "/usr/bin/dnf"):
        return "dnf"
    if _has(snapshot, "/usr/bin/apt-get"):
        return "apt"
    if _has(snapshot, "/usr/bin/rpm", "/bin/rpm"):
        return "rpm"
    die(f"no known package manager in {snapshot}",
        hint="amber knows apt, zypper, dnf and rpm; use 'amber run -- ...' for others",
        code=ExitCode.ENVIRONMENT)


def success_notes(snapshot: Path) -> dict[int, str]:
    """Exit statuses other than 0 that still mean success, with a note for the admin."""
    if detect(snapshot) == "zypper":
        from amber.packages import zypper

        return dict(zypper.SUCCESS_NOTES)
    return {}


def commands(snapshot: Path, action: str, packages: Sequence[str]) -> list[list[str]]:
    """The commands that carry out `action` (install, remove, update, up) in the snapshot."""
    from amber.packages import apt, dnf, rpm, zypper

    manager = detect(snapshot)
    if manager == "zypper":
        return zypper.commands(action, packages)
    if manager == "dnf":
        return dnf.commands(action, packages, _has(snapshot, "/usr/bin/dnf5", "/usr/bin/dnf")
                            or "dnf")
    dbpath = "/usr/lib/sysimage/rpm" if (snapshot / "usr/lib/sysimage/rpm").is_dir() else None
    if manager == "rpm":
        return rpm.commands(action, packages, dbpath)
    # apt: local .rpm files, and packages that only rpm knows, go to plain rpm.
    rpms = [p for p in packages if p.endswith(".rpm")]
    if action in ("remove", "update") and (snapshot / "usr/lib/sysimage/rpm").is_dir():
        debs, rpm_known = read_dpkg(snapshot), read_rpm(snapshot)
        rpms += [p for p in packages if p not in debs and f"rpm:{p}" in rpm_known]
    others = [p for p in packages if p not in rpms]
    result: list[list[str]] = []
    if rpms:
        if not _has(snapshot, "/usr/bin/rpm", "/bin/rpm"):
            die("cannot install .rpm files: rpm is not installed in the snapshot",
                hint="amber pkg install rpm", code=ExitCode.ENVIRONMENT)
        result += rpm.commands(action, rpms, dbpath)
    if others or action == "up":
        result += apt.commands(action, others)
    return result


# ---- package databases ---------------------------------------------------------------------

def _dpkg_status(snapshot: Path) -> Path | None:
    for candidate in ("usr/lib/sysimage/dpkg/status", "var/lib/dpkg/status"):
        path = snapshot / candidate
        if path.is_file():
            return path
    return None


def read_dpkg(snapshot: Path) -> dict[str, str]:
    path = _dpkg_status(snapshot)
    if path is None:
        return {}
    installed: dict[str, str] = {}
    for stanza in path.read_text(errors="replace").split("\n\n"):
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


def _rpm_dbpath(snapshot: Path) -> Path | None:
    for candidate in ("usr/lib/sysimage/rpm", "var/lib/rpm"):
        path = snapshot / candidate
        if path.is_dir() and any(path.iterdir()):
            return path
    return None


def read_rpm(snapshot: Path) -> dict[str, str]:
    import shutil

    from amber.run import run

    dbpath = _rpm_dbpath(snapshot)
    if dbpath is None or not shutil.which("rpm"):
        return {}
    result = run(["rpm", "--dbpath", str(dbpath), "-qa", "--qf",
                  "%{NAME} %{EPOCHNUM}:%{VERSION}-%{RELEASE}\n"], capture=True, check=False)
    installed = {}
    for line in result.stdout.splitlines():
        name, _, version = line.partition(" ")
        installed[f"rpm:{name}"] = version.removeprefix("0:")
    return installed


def installed(snapshot: Path) -> dict[str, str]:
    return {**read_dpkg(snapshot), **read_rpm(snapshot)}


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

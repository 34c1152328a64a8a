"""`--dry-run` of the transaction verbs: what a transaction would change, resolved without a
snapshot, a lock or a chroot.

Package requests are decided from the base snapshot's package database (database.py): a package
that is installed at the same or a newer version satisfies `install`, an absent one satisfies
`remove`; local .deb/.rpm files are read with dpkg-deb / rpm. What only the repositories know
(`amber up`, `pkg update`, names that are not installed) is asked of apt's own simulation
(`apt-get -s`), pointed at the base snapshot's files from the host: it reads them and writes
nothing (the snapshot is read-only, apt's caches are turned off)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amber.log import ExitCode, die
from amber.run import run


@dataclass(frozen=True)
class Plan:
    """What a transaction would change; the resolvers below fill its lists while they decide."""

    base: int
    added: dict[str, str] = field(default_factory=dict)
    removed: dict[str, str] = field(default_factory=dict)
    changed: dict[str, tuple[str, str]] = field(default_factory=dict)
    commands: tuple[tuple[str, ...], ...] = ()  # commands whose effect cannot be known ahead

    @property
    def would_change(self) -> bool:
        return bool(self.added or self.removed or self.changed or self.commands)

    def as_json(self) -> dict[str, Any]:
        would: dict[str, Any] = {
            "added": [{"name": n, "version": v} for n, v in sorted(self.added.items())],
            "removed": [{"name": n, "version": v} for n, v in sorted(self.removed.items())],
            "changed": [{"name": n, "old": o, "new": w}
                        for n, (o, w) in sorted(self.changed.items())],
        }
        if self.commands:
            would["run"] = [list(c) for c in self.commands]
        return {"dry_run": True, "changed": self.would_change, "base": self.base, "would": would}

    def summary(self) -> str:
        lines = [f"+ {n} {v}".rstrip() for n, v in sorted(self.added.items())]
        lines += [f"- {n} {v}" for n, v in sorted(self.removed.items())]
        lines += [f"~ {n} {o} → {w}" for n, (o, w) in sorted(self.changed.items())]
        lines += [f"$ {' '.join(c)}" for c in self.commands]
        if not lines:
            return f"dry run: nothing would change (base {self.base})"
        return f"dry run: a transaction on snapshot {self.base} would change:\n" + "\n".join(lines)


def base_snapshot(root: Path, base: str | None) -> tuple[int, Path]:
    """The snapshot a transaction with these options would start from, and its path."""
    from amber.snapshots import Store
    from amber.transaction import resolve_base

    store = Store(root)
    store.check()
    number = resolve_base(store, base, store.booted(), store.default())
    return number, store.path(number)


def plan_command(root: Path, base: str | None, command: Sequence[str]) -> Plan:
    number, _ = base_snapshot(root, base)
    return Plan(number, commands=(tuple(command),))


def plan_packages(root: Path, base: str | None, action: str, names: Sequence[str]) -> Plan:
    from amber import packages
    from amber.packages import database

    number, snapshot = base_snapshot(root, base)
    installed = database.installed(snapshot)
    files = [n for n in names if packages.is_package_file(n)]
    for f in files:
        if not Path(f).is_file():
            die(f"package file {f} does not exist", code=ExitCode.NOT_FOUND)
    plan = Plan(number)
    repository: list[str] = []
    for name in names:
        if name in files:
            _plan_file(plan, installed, Path(name), action)
        elif action == "remove":
            key = _installed_key(installed, name)
            if key is not None:
                plan.removed[key] = installed[key]
        elif action == "install" and _installed_key(installed, name) is not None:
            continue
        else:
            repository.append(name)
    if repository or action == "up":
        _simulate(plan, root, snapshot, installed, action, repository)
    return plan


def _installed_key(installed: dict[str, str], name: str) -> str | None:
    for key in (name, f"rpm:{name}"):
        if key in installed:
            return key
    return None


def _plan_file(plan: Plan, installed: dict[str, str], path: Path, action: str) -> None:
    name, version = package_file_identity(path)
    key = name if path.suffix == ".deb" else f"rpm:{name}"
    if action == "remove":
        if key in installed:
            plan.removed[key] = installed[key]
        return
    old = installed.get(key)
    if old is None:
        plan.added[key] = version
    elif newer(version, old, rpm=path.suffix == ".rpm"):
        plan.changed[key] = (old, version)


def package_file_identity(path: Path) -> tuple[str, str]:
    """(name, version) of a local .deb or .rpm file, from its own metadata."""
    if path.suffix == ".deb":
        out = run(["dpkg-deb", "-f", str(path), "Package", "Version"], capture=True,
                  code=ExitCode.USAGE).stdout
        fields = dict(line.partition(": ")[::2] for line in out.splitlines() if ": " in line)
        return fields.get("Package", path.stem), fields.get("Version", "")
    out = run(["rpm", "-qp", "--nosignature", "--qf", "%{NAME} %{EPOCHNUM}:%{VERSION}-%{RELEASE}",
               str(path)], capture=True, code=ExitCode.USAGE).stdout
    name, _, version = out.strip().partition(" ")
    return name, version.removeprefix("0:")


def newer(candidate: str, installed: str, *, rpm: bool) -> bool:
    """Whether candidate is a newer version than installed (dpkg's order, or rpm's own)."""
    if candidate == installed:
        return False
    if rpm:
        compare = f"%{{lua: print(rpm.vercmp('{candidate}', '{installed}'))}}"
        result = run(["rpm", "--eval", compare], capture=True, check=False)
        return result.stdout.strip() == "1" if result.returncode == 0 else True
    result = run(["dpkg", "--compare-versions", candidate, "gt", installed], check=False)
    return result.returncode == 0


def _simulate(plan: Plan, root: Path, snapshot: Path, installed: dict[str, str], action: str,
              names: Sequence[str]) -> None:
    from amber import packages
    from amber.packages.apt import APT_STATE

    if not packages.has_program(snapshot, "/usr/bin/apt-get"):
        die(f"--dry-run of '{action}' with packages from repositories needs apt in the snapshot",
            hint="name installed packages or local package files, or run without --dry-run",
            code=ExitCode.USAGE)
    from amber.packages import database

    dpkg = database.dpkg_database(snapshot)
    argv = ["apt-get", "-s", "-q", "-o", f"Dir={snapshot}",
            "-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache=",
            "-o", "Debug::NoLocking=true",
            # apt's lists and its auto-installed marks live in the shared /var, which the
            # snapshot's own var/ does not hold: the running system's, as apt-get update left them
            "-o", f"Dir::State::Lists={root / APT_STATE / 'lists'}",
            "-o", f"Dir::State::extended_states={root / APT_STATE / 'extended_states'}"]
    if dpkg is not None:
        argv += ["-o", f"Dir::State::status={dpkg / 'status'}"]
    if action == "up":
        argv += ["full-upgrade"]
    elif action == "update":
        argv += ["install", "--only-upgrade", *names]
    else:
        argv += [action, *names]
    out = run(argv, capture=True, code=ExitCode.STEP_FAILED).stdout
    for line in out.splitlines():
        word, _, rest = line.partition(" ")
        if word not in ("Inst", "Remv"):
            continue
        name = rest.split(" ", 1)[0]
        version = _simulated_version(rest)
        if word == "Remv":
            plan.removed[name] = installed.get(name, "")
        elif name in installed:
            plan.changed[name] = (installed[name], version)
        else:
            plan.added[name] = version


def _simulated_version(rest: str) -> str:
    """The new version in apt-get -s's 'Inst NAME [OLD] (NEW ARCHIVE [ARCH])'."""
    _, paren, tail = rest.partition("(")
    return tail.split(" ", 1)[0] if paren else ""

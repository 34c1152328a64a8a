"""`amber livepatch update`: install the newest live patch package for the running kernel from
the configured repositories, in a transaction that loads it (amber.livepatch.packaged).

Which package is the live patch of a kernel, by the distributions' naming:
    rpm (zypper, dnf)  SUSE's kernel-livepatch-<version, '.' as '_'>-<flavor>, e.g.
                       kernel-livepatch-6_4_0-150600_21-default for 6.4.0-150600.21-default
    apt                a package whose name contains "livepatch" and the kernel release (as
                       is, or with '.' as '_'), e.g. amber-livepatch-6.1.0-28-amd64: Debian's
                       tools cannot ask which package ships /lib/modules/<release>/livepatch/
                       without apt-file, so the name stands for the contents. When several
                       names match, the one with the highest version wins.
With nothing newer than what is installed, the transaction changes nothing and is dropped:
"already current".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from amber import config, log, transaction

if TYPE_CHECKING:
    from amber.livepatch import kernel


class Update(NamedTuple):
    package: str | None  # None: no live patch package for the running kernel
    result: transaction.Result | None

    @property
    def current(self) -> bool:
        return self.result is None or self.result.dropped

    def as_json(self) -> dict[str, Any]:
        return {"package": self.package, "already_current": self.current,
                **(self.result.as_json() if self.result else {"snapshot": None})}


def rpm_name(release: str) -> str:
    """kernel 6.4.0-150600.21-default → kernel-livepatch-6_4_0-150600_21-default."""
    version, _, flavor = release.rpartition("-")
    return f"kernel-livepatch-{version.replace('.', '_')}-{flavor}"


def is_deb_livepatch_name(name: str, release: str) -> bool:
    return "livepatch" in name and (release in name or release.replace(".", "_") in name)


def apt_candidates(root: Path, release: str) -> dict[str, list[str]]:
    """{package name: versions} of the live patch packages for `release` in the apt indexes
    (the lists in the shared /var, as `apt-get update` left them)."""
    from amber.packages.apt import APT_STATE

    found: dict[str, list[str]] = {}
    lists = root / APT_STATE / "lists"
    for index in sorted(lists.glob("*_Packages")) if lists.is_dir() else []:
        for stanza in read_in_root(root, index).split("\n\n"):
            name = re.search(r"^Package: *(\S+)", stanza, re.M)
            version = re.search(r"^Version: *(\S+)", stanza, re.M)
            if name and version and is_deb_livepatch_name(name[1], release):
                found.setdefault(name[1], []).append(version[1])
    return found


def read_in_root(root: Path, path: Path) -> str:
    """A file of the system, following symbolic links as the system sees them (apt links the
    index of a local file: repository to the repository's own Packages file)."""
    import os

    for _ in range(8):
        if not path.is_symlink():
            break
        target = os.readlink(path)
        path = root / target.lstrip("/") if target.startswith("/") else path.parent / target
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def newest(chroot: transaction.WorkingSnapshot, candidates: dict[str, list[str]]) -> str:
    """The name whose highest version is highest (dpkg's own version order, in the snapshot)."""
    def greater(a: str, b: str) -> bool:
        return chroot.run(["dpkg", "--compare-versions", a, "gt", b], step="version compare",
                          success={0, 1}) == 0

    best_name, best_version = "", ""
    for name, versions in sorted(candidates.items()):
        for version in versions:
            if not best_name or greater(version, best_version):
                best_name, best_version = name, version
    return best_name


def update(root: Path, *, wait: bool = False, paths: kernel.KernelPaths | None = None,
           syscalls: kernel.Syscalls | None = None) -> Update:
    from amber import packages
    from amber.boot.kernels import running_release
    from amber.livepatch import policy
    from amber.snapshots import Store

    policy.require_enabled(config.load(root).livepatch)
    release = running_release()
    store = Store(root)
    store.check()
    chosen: list[str] = []

    def steps(chroot: transaction.WorkingSnapshot) -> None:
        if packages.detect(chroot.path).name != "apt":
            chosen.append(rpm_name(release))
        else:
            log.step("refreshing the package indexes: apt-get update")
            chroot.run(["apt-get", "update"], step="apt-get update")
            candidates = apt_candidates(root, release)
            if not candidates:
                return
            chosen.append(newest(chroot, candidates))
        chroot.run_package_manager("install", chosen, announce="installing",
                                   step="installing the live patch package")

    base = "default" if store.default() is not None else None
    options = transaction.Options(root=root, base=base, drop_if_no_change=True, wait=wait)
    result = transaction.execute_loading_livepatches(
        options, steps, f"amber livepatch update ({release})", paths=paths, syscalls=syscalls)
    if not chosen:
        log.info(f"already current: the repositories have no live patch package for the "
                 f"running kernel {release}")
        return Update(None, result)
    if result.dropped:
        log.info(f"already current: {chosen[0]} is the newest live patch for {release}")
    return Update(chosen[0], result)


"""Where a live patch comes from: a package file (.rpm, .deb), a package name from the system's
repositories (downloaded, not installed), or a bare module file. The module is taken out of the
package on the host, so that it can be checked before any snapshot exists."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from amber import config, packages
from amber.livepatch import payload
from amber.log import ExitCode, die
from amber.run import run


@dataclass(frozen=True)
class Source:
    argument: str  # as the admin gave it
    file: Path  # the package or module file on the host
    kind: str  # "deb", "rpm" or "module"
    package: str | None  # the package's name
    modules: tuple[Path, ...]  # module files extracted on the host


def is_module_file(name: str) -> bool:
    return name.endswith(payload.MODULE_SUFFIXES)


def package_name(file: Path, kind: str) -> str:
    if kind == "deb":
        return run(["dpkg-deb", "-f", file, "Package"], capture=True,
                   code=ExitCode.BAD_MODULE).stdout.strip()
    return run(["rpm", "-qp", "--qf", "%{NAME}", file], capture=True,
               code=ExitCode.BAD_MODULE).stdout.strip()






def download(root: Path, name: str, dest: Path) -> Path:
    """A package from the system's repositories, fetched (not installed) for the preflight."""
    dest.mkdir(parents=True)
    argv = packages.detect(root).download(name, dest)
    run(argv, cwd=dest, capture=True, where=f"while downloading {name}",
        code=ExitCode.NOT_FOUND)
    files = sorted(p for p in dest.rglob("*") if p.name.endswith(packages.PACKAGE_SUFFIXES))
    if not files:
        die(f"the package manager fetched no package file for {name}",
            hint="check the name with your package manager", code=ExitCode.NOT_FOUND)
    return files[0]


def resolve(root: Path, argument: str, work: Path,
            limit: int = config.DEFAULT_MAX_MODULE_SIZE) -> Source:
    """The module files of a package file, package name or module file; a package's payload
    is unpacked in memory, at most limit bytes of it ([livepatch] max_module_size)."""
    path = Path(argument)
    if is_module_file(argument):
        if not path.is_file():
            die(f"module file {argument} does not exist", hint="check the path",
                code=ExitCode.NOT_FOUND)
        return Source(argument, path, "module", None, (path,))
    if argument.endswith(packages.PACKAGE_SUFFIXES):
        if not path.is_file():
            die(f"package file {argument} does not exist",
                hint="check the path; a package name has no .rpm or .deb ending",
                code=ExitCode.NOT_FOUND)
        file = path
    elif "/" in argument:
        die(f"{argument} is neither a package (.rpm, .deb) nor a module (.ko, .ko.xz, .ko.zst)",
            hint="pass a live patch package, a package name or a module file",
            code=ExitCode.USAGE)
    else:
        file = download(root, argument, work / "download")
    kind = "deb" if file.name.endswith(".deb") else "rpm"
    found = payload.extract_modules(file, kind, work / f"unpacked-{file.name}", limit)
    if not found:
        die(f"{argument} contains no kernel module under /lib/modules/<release>/",
            hint="a live patch package carries its module in /lib/modules/<release>/livepatch/",
            code=ExitCode.INCOMPATIBLE)
    return Source(argument, file, kind, package_name(file, kind), tuple(found))

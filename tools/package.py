"""Build dist/amber_<version>_all.deb from this checkout: `tools/package [--output DIR]`.

A staged tree packed by `dpkg-deb --root-owner-group --build`, not dpkg-buildpackage: amber is
pure Python with nothing to compile, so a debian/ source directory with debhelper would only add
build dependencies and a second description of the same files. Debian's conventions are kept by
hand and checked by lintian in the tests: control, md5sums, copyright in the machine-readable
format, changelog.gz, the man page gzipped at maximum compression, .py files only (postinst
byte-compiles them with py3compile, as dh_python3 packages do). The build is reproducible:
every time stamp is the date of the newest packaging/debian/changelog entry.
"""

from __future__ import annotations

import argparse
import email.utils
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from tools import completion, config_doc, manpage
from tools.cli_model import REPO, amber_parser, model

PACKAGING = REPO / "packaging" / "debian"
SOURCE = REPO / "src" / "amber"
DIST_PACKAGES = "usr/lib/python3/dist-packages"
LAUNCHER = '''\
#!/usr/bin/python3 -I
"""amber: an immutable btrfs root. See amber(8)."""
from amber.cli import entry

entry()
'''


class PackageError(Exception):
    pass


@dataclass(frozen=True)
class Changelog:
    version: str
    maintainer: str
    epoch: int  # the date of the newest entry, for every time stamp in the package


def read_changelog(path: Path = PACKAGING / "changelog") -> Changelog:
    text = path.read_text()
    head = re.match(r"amber \(([^)]+)\) ", text)
    trailer = re.search(r"^ -- (.+?)  (.+)$", text, re.M)
    if head is None or trailer is None:
        raise PackageError(f"{path}: not a Debian changelog")
    date = email.utils.parsedate_to_datetime(trailer.group(2))
    return Changelog(head.group(1), trailer.group(1), int(date.timestamp()))


def checkout_version() -> str:
    """The version in pyproject.toml, which amber.__version__ must repeat."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    version = str(pyproject["project"]["version"])
    amber_parser()
    import amber

    if amber.__version__ != version:
        raise PackageError(f"pyproject.toml says {version}, amber.__version__ says "
                           f"{amber.__version__}: make them agree")
    return version


def gzipped(data: bytes) -> bytes:
    """gzip -9n: maximum compression, no name or time stamp (reproducible)."""
    return gzip.compress(data, compresslevel=9, mtime=0)


def write(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)


def python_files() -> list[Path]:
    return sorted(path for path in SOURCE.rglob("*")
                  if path.is_file() and path.suffix in (".py", ".typed")
                  and "__pycache__" not in path.parts)


def stage(root: Path, changelog: Changelog) -> None:
    """The installed files of the package under root (without DEBIAN/)."""
    for path in python_files():
        write(root / DIST_PACKAGES / "amber" / path.relative_to(SOURCE), path.read_bytes())
    write(root / "usr/bin/amber", LAUNCHER, 0o755)
    # amber's dracut modules (the /etc merge and mount at boot: amber.etc.pending)
    for module in sorted((SOURCE / "data/dracut").iterdir()):
        for path in sorted(module.iterdir()):
            write(root / "usr/lib/dracut/modules.d" / module.name / path.name,
                  path.read_bytes(), 0o755)
    # and the same for initramfs-tools: a hook that puts dracut's script into the initrd, and
    # the local-bottom script that runs it
    initramfs_tools = SOURCE / "data/initramfs-tools"
    for path in sorted(p for p in initramfs_tools.rglob("*") if p.is_file()):
        write(root / "usr/share/initramfs-tools" / path.relative_to(initramfs_tools),
              path.read_bytes(), 0o755)
    date = _date(changelog.epoch)
    write(root / "usr/share/man/man8/amber.8.gz",
          gzipped(manpage.render(changelog.version, date).encode()))
    command_line = model()
    write(root / "usr/share/bash-completion/completions/amber", completion.bash(command_line))
    write(root / "usr/share/zsh/vendor-completions/_amber", completion.zsh(command_line))
    doc = root / "usr/share/doc/amber"
    write(doc / "copyright", (PACKAGING / "copyright").read_bytes())
    write(doc / "changelog.gz", gzipped((PACKAGING / "changelog").read_bytes()))
    write(doc / "examples/amber.conf", config_doc.example_conf())
    write(root / "usr/share/lintian/overrides/amber",
          (PACKAGING / "lintian-overrides").read_bytes())
    # ---- systemd units (issue 13): the update timer and the FleetLock release ----
    for unit in sorted((SOURCE / "data/systemd").iterdir()):
        if unit.suffix in (".timer", ".service"):
            write(root / "usr/lib/systemd/system" / unit.name, unit.read_bytes())
    # ---- end of systemd units ----


def _date(epoch: int) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%d")


def installed_size(root: Path) -> int:
    """In KiB, as dpkg-gencontrol counts: each file rounded up, one per directory."""
    total = 0
    for path in root.rglob("*"):
        total += 1 if path.is_dir() else -(-path.stat().st_size // 1024)
    return total


def control_files(root: Path, changelog: Changelog) -> None:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    sums = "".join(f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.relative_to(root)}\n"
                   for p in files)
    control = (PACKAGING / "control").read_text()
    for key, value in (("VERSION", changelog.version), ("MAINTAINER", changelog.maintainer),
                       ("INSTALLED_SIZE", str(installed_size(root)))):
        control = control.replace(f"@{key}@", value)
    debian = root / "DEBIAN"
    write(debian / "control", control)
    write(debian / "md5sums", sums)
    for script in ("postinst", "prerm"):
        write(debian / script, (PACKAGING / script).read_bytes(), 0o755)
    write(debian / "triggers", (PACKAGING / "triggers").read_bytes())


def clamp_times(root: Path, epoch: int) -> None:
    for path in [root, *root.rglob("*")]:
        os.utime(path, (epoch, epoch), follow_symlinks=False)


def build(output: Path) -> Path:
    """Build the package into the folder output; returns its path."""
    changelog = read_changelog()
    version = checkout_version()
    if changelog.version != version:
        raise PackageError(f"packaging/debian/changelog's newest entry is {changelog.version}, "
                           f"the checkout is {version}: add a changelog entry for {version}")
    if shutil.which("dpkg-deb") is None:
        raise PackageError("dpkg-deb is missing: install dpkg")
    output.mkdir(parents=True, exist_ok=True)
    deb = output / f"amber_{version}_all.deb"
    with tempfile.TemporaryDirectory(prefix="amber-package-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir(mode=0o755)
        root.chmod(0o755)
        stage(root, changelog)
        control_files(root, changelog)
        clamp_times(root, changelog.epoch)
        partial = output / f".{deb.name}.{os.getpid()}.partial"
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(changelog.epoch)}
        result = subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root),
                                 str(partial)], env=env, capture_output=True, text=True)
        if result.returncode != 0:
            partial.unlink(missing_ok=True)
            raise PackageError(f"dpkg-deb failed: {result.stderr.strip()}")
        partial.rename(deb)
    return deb


def main() -> int:
    parser = argparse.ArgumentParser(prog="tools/package", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=REPO / "dist",
                        help="folder for the .deb (default: dist/ of the checkout)")
    args = parser.parse_args()
    os.umask(0o022)
    try:
        deb = build(args.output)
    except PackageError as e:
        print(f"tools/package: error: {e}", file=sys.stderr)
        return 1
    print(deb)
    return 0


if __name__ == "__main__":
    sys.exit(main())

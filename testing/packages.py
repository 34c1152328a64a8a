"""Build small real .deb and .rpm packages for tests, with dpkg-deb and rpmbuild (no network)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import textwrap
from pathlib import Path


def build_deb(out_dir: Path, name: str, version: str, files: dict[str, str],
              postinst: str | None = None, depends: str | None = None) -> Path:
    """A .deb that installs `files` (absolute path → content); postinst is a shell script body."""
    tree = out_dir / f"{name}_{version}.tree"
    debian = tree / "DEBIAN"
    debian.mkdir(parents=True, exist_ok=True)
    for path, content in files.items():
        target = tree / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    control = textwrap.dedent(f"""\
        Package: {name}
        Version: {version}
        Architecture: all
        Maintainer: amber tests <tests@amber.invalid>
        Description: {name}, a package built by amber's tests
        """)
    if depends:
        control += f"Depends: {depends}\n"
    (debian / "control").write_text(control)
    if postinst is not None:
        script = debian / "postinst"
        script.write_text("#!/bin/sh\nset -e\n" + postinst + "\n")
        script.chmod(0o755)
    deb = out_dir / f"{name}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(deb)],
                   check=True, capture_output=True)
    return deb


def build_rpm(out_dir: Path, name: str, version: str, files: dict[str, str],
              post: str | None = None, release: str = "1") -> Path:
    """A noarch .rpm without automatic dependencies that installs `files`."""
    top = out_dir / f"rpmbuild-{name}-{version}"
    for sub in ("SPECS", "SOURCES", "BUILD", "RPMS", "SRPMS", "BUILDROOT"):
        (top / sub).mkdir(parents=True, exist_ok=True)
    payload = top / "SOURCES" / "payload"
    install_lines = []
    file_lines = []
    for index, (path, content) in enumerate(files.items()):
        source = payload / str(index)
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(content)
        install_lines.append(f"install -D -m 0644 {source} %{{buildroot}}{path}")
        file_lines.append(path)
    spec = "\n".join([
        f"Name: {name}",
        f"Version: {version}",
        f"Release: {release}",
        "Summary: a package built by amber's tests",
        "License: GPL-2.0-or-later",
        "BuildArch: noarch",
        "AutoReqProv: no",
        "%description",
        f"{name}, a package built by amber's tests.",
        "%install",
        *install_lines,
        *(["%post", post] if post else []),
        "%files",
        *file_lines,
        "",
    ])
    spec_path = top / "SPECS" / f"{name}.spec"
    spec_path.write_text(spec)
    env = dict(os.environ, HOME=str(top))
    subprocess.run(["rpmbuild", "-bb", "--define", f"_topdir {top}",
                    "--define", "_build_id_links none", str(spec_path)],
                   check=True, capture_output=True, env=env)
    rpms = list((top / "RPMS").rglob("*.rpm"))
    assert len(rpms) == 1, rpms
    return rpms[0]


def write_apt_index(repository: Path) -> Path:
    """A flat apt repository in `repository` (`deb [trusted=yes] file:/... ./`): its Packages
    index lists every .deb in it, with the fields apt needs to fetch and verify them."""
    entries = []
    for deb in sorted(repository.glob("*.deb")):
        control = subprocess.run(["dpkg-deb", "--field", str(deb)], check=True,
                                 capture_output=True, text=True).stdout.rstrip("\n")
        data = deb.read_bytes()
        entries.append(f"{control}\nFilename: ./{deb.name}\nSize: {len(data)}\n"
                       f"SHA256: {hashlib.sha256(data).hexdigest()}\n")
    index = repository / "Packages"
    before = index.stat().st_mtime if index.exists() else 0.0
    index.write_text("\n".join(entries))
    # apt's file: method takes an index with an unchanged time stamp (to the second) for the
    # copy it has: a new index must be at least a second newer.
    if index.stat().st_mtime < before + 1:
        os.utime(index, (before + 1, before + 1))
    return index

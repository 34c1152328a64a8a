"""Live patch packages for tests, laid out as the distributions ship them: the module under
/lib/modules/<release>/livepatch/. The .rpm is named as SUSE names its live patches,
kernel-livepatch-<release with '.' as '_'>-<flavor>; the .deb amber-livepatch-<release>.
Built with rpmbuild and dpkg-deb from module files (binary, so not through tests/packages.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def rpm_name(release: str) -> str:
    """SUSE's naming: kernel 6.4.0-150600.21-default → kernel-livepatch-6_4_0-150600_21-default."""
    version, _, flavor = release.rpartition("-")
    return f"kernel-livepatch-{version.replace('.', '_')}-{flavor}"


def deb_name(release: str) -> str:
    return f"amber-livepatch-{release}"


def build_livepatch_rpm(out_dir: Path, release: str, module: Path, version: str,
                        name: str | None = None) -> Path:
    name = name or rpm_name(release)
    top = out_dir / f"rpmbuild-{name}-{version}"
    shutil.rmtree(top, ignore_errors=True)
    for sub in ("SPECS", "SOURCES", "BUILD", "RPMS", "SRPMS", "BUILDROOT"):
        (top / sub).mkdir(parents=True)
    shutil.copy2(module, top / "SOURCES" / module.name)
    target = f"/lib/modules/{release}/livepatch/{module.name}"
    spec = "\n".join([
        f"Name: {name}",
        f"Version: {version}",
        "Release: 1",
        f"Summary: amber's test live patch {module.stem} for {release}",
        "License: GPL-2.0-or-later",
        "BuildArch: noarch",
        "AutoReqProv: no",
        "%description",
        f"amber's test live patch for kernel {release}.",
        "%install",
        f"install -D -m 0644 {top / 'SOURCES' / module.name} %{{buildroot}}{target}",
        "%files",
        target,
        "",
    ])
    spec_path = top / "SPECS" / f"{name}.spec"
    spec_path.write_text(spec)
    # No strip, no debuginfo: either would drop the module's signature.
    subprocess.run(["rpmbuild", "-bb", "--define", f"_topdir {top}",
                    "--define", "_build_id_links none", "--define", "__os_install_post %{nil}",
                    "--define", "debug_package %{nil}", str(spec_path)],
                   check=True, capture_output=True, env=dict(os.environ, HOME=str(top)))
    rpms = list((top / "RPMS").rglob("*.rpm"))
    assert len(rpms) == 1, rpms
    return rpms[0]


def build_livepatch_deb(out_dir: Path, release: str, module: Path, version: str,
                        name: str | None = None) -> Path:
    name = name or deb_name(release)
    tree = out_dir / f"{name}_{version}.tree"
    shutil.rmtree(tree, ignore_errors=True)
    target = tree / "lib/modules" / release / "livepatch" / module.name
    target.parent.mkdir(parents=True)
    shutil.copy2(module, target)
    (tree / "DEBIAN").mkdir()
    (tree / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: amber tests <tests@amber.invalid>\n"
        f"Description: amber's test live patch {module.stem} for {release}\n")
    deb = out_dir / f"{name}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(deb)],
                   check=True, capture_output=True)
    return deb

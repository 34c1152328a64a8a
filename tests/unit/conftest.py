"""Fixtures for the live patch unit tests: amber's test modules built once per session, a signing
key made at test time, and Debian's own kernel modules (downloaded, never installed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from testing.modules import build
from tests.conftest import require
from tests.support.modules import Modules, SigningKey, kernel_release_for_tests

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache"


@pytest.fixture(scope="session")
def modules() -> Modules:
    release = kernel_release_for_tests()
    require(release is not None, "no linux-headers package installed")
    require(shutil.which("make") is not None and shutil.which("gcc") is not None,
            "make and gcc are needed to build modules")
    assert release is not None
    built = build.build_modules(release, CACHE / "modules")
    return Modules(release, built["amber_lp_v1"], built["amber_lp_v2"], built["amber_plain"])


def _signing_key(folder: Path, name: str) -> SigningKey:
    key, cert = build.make_signing_key(folder, name)
    trusted = folder / "trusted"
    trusted.mkdir()
    shutil.copy2(cert, trusted / "signing.pem")
    return SigningKey(key, cert, trusted)


@pytest.fixture(scope="session")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return _signing_key(tmp_path_factory.mktemp("key"), "amber test signing key")


@pytest.fixture(scope="session")
def other_key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return _signing_key(tmp_path_factory.mktemp("other-key"), "another key")


@pytest.fixture(scope="session")
def debian_modules(modules: Modules) -> Path:
    """/lib/modules/<release> of Debian's kernel image package, unpacked into the cache."""
    target = CACHE / "debian-kernel" / modules.release
    tree = target / "lib" / "modules" / modules.release
    if tree.is_dir():
        return tree
    require(shutil.which("apt-get") is not None, "apt-get is needed to download Debian's kernel")
    download = CACHE / "debian-kernel" / "download"
    download.mkdir(parents=True, exist_ok=True)
    package = f"linux-image-{modules.release}"
    debs = list(download.glob(f"{package}_*.deb"))
    if not debs:
        subprocess.run(["apt-get", "download", package], cwd=download, check=True,
                       capture_output=True)
        debs = list(download.glob(f"{package}_*.deb"))
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(staging)], check=True)
    staging.rename(target)
    return tree

"""Kernels: version order (checked against dpkg itself), the kernel a snapshot boots."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amber.boot import kernels

# dpkg splits a version at its last hyphen (the Debian revision); a kernel release is compared
# as one string, so the comparison is checked on hyphen-free strings, which dpkg compares whole.
VERSIONS = st.from_regex(r"\A[0-9]{1,2}([.+~][0-9a-z]{1,3}){0,4}\Z")


def dpkg_says(a: str, relation: str, b: str) -> bool:
    return subprocess.run(["dpkg", "--compare-versions", a, relation, b]).returncode == 0


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs dpkg")
@settings(max_examples=150, deadline=None)
@given(VERSIONS, VERSIONS)
def test_version_order_is_dpkgs(a: str, b: str) -> None:
    result = kernels.compare_versions(a, b)
    relation = {-1: "lt", 0: "eq", 1: "gt"}[result]
    assert dpkg_says(a, relation, b), (a, relation, b)


@pytest.mark.parametrize(("older", "newer"), [
    ("6.1.0-9-amd64", "6.1.0-10-amd64"),
    ("6.1~rc1", "6.1"),
    ("6.1", "6.1+1"),
    ("5.10.0-28-amd64", "6.1.0-9-amd64"),
])
def test_version_order_examples(older: str, newer: str) -> None:
    assert kernels.compare_versions(older, newer) == -1
    assert sorted([newer, older], key=kernels.version_key) == [older, newer]


def _kernel(snapshot: Path, release: str) -> None:
    (snapshot / "usr/lib/modules" / release).mkdir(parents=True)
    (snapshot / "boot").mkdir(exist_ok=True)
    (snapshot / "boot" / f"vmlinuz-{release}").write_bytes(b"")


def test_boot_kernel_follows_the_vmlinuz_link_else_the_newest(tmp_path: Path) -> None:
    for release in ("6.1.0-9-amd64", "6.1.0-10-amd64"):
        _kernel(tmp_path, release)
    (tmp_path / "usr/lib/modules/6.1.0-11-amd64").mkdir()  # modules only: not a kernel
    assert kernels.installed(tmp_path) == ["6.1.0-9-amd64", "6.1.0-10-amd64"]
    assert kernels.boot_kernel(tmp_path) == "6.1.0-10-amd64"
    (tmp_path / "vmlinuz").symlink_to("boot/vmlinuz-6.1.0-9-amd64")
    assert kernels.boot_kernel(tmp_path) == "6.1.0-9-amd64"
    assert kernels.boot_kernel(tmp_path / "nothing") is None


def test_running_release_can_be_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMBER_KERNEL_RELEASE", "9.9.9-test")
    assert kernels.running_release() == "9.9.9-test"

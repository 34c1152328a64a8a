"""The test image carries amber as its Debian package: dpkg owns /usr/bin/amber, postinst
compiled the modules while / was writable, the VM harness is not among the packaged modules, and
the agent is the test image's own addition. Read from the built image, no boot needed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from amber.image import attached_root, mounted
from testing.vm import VM, default_state
from tests.vm.conftest import vm_prerequisites
from tools import package

pytestmark = pytest.mark.vm


def dpkg_query(root: Path, *args: str) -> str:
    return subprocess.run(["dpkg-query", f"--admindir={root}/usr/lib/sysimage/dpkg", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def test_image_has_amber_from_its_package(tmp_path: Path) -> None:
    vm_prerequisites()
    image = VM(state=tmp_path / "vm", cache=default_state() / "cache").build()
    with attached_root(image, read_only=True) as device, mounted(device, "ro") as root:
        assert dpkg_query(root, "--search", "/usr/bin/amber") == "amber: /usr/bin/amber"
        assert dpkg_query(root, "--show", "--showformat=${Version} ${Status}", "amber") == \
            f"{package.checkout_version()} install ok installed"
        modules = root / "usr/lib/python3/dist-packages/amber"
        assert list((modules / "cli/__pycache__").glob("__init__.cpython-*.pyc"))
        assert not (modules / "vm.py").exists()
        agent = "/usr/lib/amber-test/agent.py"
        assert (root / agent.lstrip("/")).is_file()
        owner = subprocess.run(["dpkg-query", f"--admindir={root}/usr/lib/sysimage/dpkg",
                                "--search", agent], capture_output=True, text=True)
        assert owner.returncode != 0, "the test agent must not be part of any package"


def test_a_user_image_has_no_test_agent(tmp_path: Path) -> None:
    """What `amber image build` makes for a user carries amber's package and nothing of the
    test harness: no agent, no agent unit, no harness module."""
    vm_prerequisites()
    from amber import image
    from testing.vm import IMAGE_SIZE

    vm = VM(state=tmp_path / "vm", cache=default_state() / "cache")
    built = image.build(tmp_path / "user.img", image.ImageSpec(size=IMAGE_SIZE),
                        cache_dir=vm.cache, amber_deb=vm.amber_package())
    with attached_root(built.path, read_only=True) as device, mounted(device, "ro") as root:
        assert dpkg_query(root, "--search", "/usr/bin/amber") == "amber: /usr/bin/amber"
        assert not (root / "usr/lib/amber-test").exists()
        assert not list(root.glob("etc/systemd/system/**/amber-test*"))
        packaged = root / "usr/lib/python3/dist-packages/amber"
        assert not any(b"AMBER-AGENT" in p.read_bytes() for p in packaged.rglob("*.py"))

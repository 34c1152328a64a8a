"""amber's .deb on a fresh minimal Debian 12: apt installs it (its Depends must be real package
names, enough to run every module), then amber, its man page and its completion work, dpkg knows
its files, postinst compiled the modules, and a purge leaves nothing behind."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.images import debian_tarball
from tests.conftest import require
from tools import package

pytestmark = pytest.mark.root

PACKAGE_DIR = "/usr/lib/python3/dist-packages/amber"


def depends(deb: Path) -> list[str]:
    """The names in the package's Depends, the first of each alternative, without versions."""
    text = subprocess.run(["dpkg-deb", "--field", str(deb), "Depends"], check=True,
                          capture_output=True, text=True).stdout
    return [re.split(r"[\s(]", alternatives.split("|")[0].strip())[0]
            for alternatives in text.split(",")]




def in_tree(tree: Path, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """argv chrooted into tree, with /proc, in a mount namespace that takes its mounts along."""
    script = 'mount -t proc proc "$1/proc" && tree=$1 && shift && exec chroot "$tree" "$@"'
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                             script, "sh", str(tree), *argv], capture_output=True, text=True,
                            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8",
                                 "DEBIAN_FRONTEND": "noninteractive"})
    if check:
        assert result.returncode == 0, f"{argv}: {result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh Debian tree with amber installed by apt from the package built from here."""
    for tool in ("mmdebstrap", "dpkg-deb", "unshare", "chroot"):
        require(shutil.which(tool) is not None, f"{tool} is missing")
    work = tmp_path_factory.mktemp("package")
    deb = package.build(work / "dist")
    tree = work / "tree"
    tree.mkdir()
    subprocess.run(["tar", "--extract", "--file", str(debian_tarball((*depends(deb), "man-db"))),
                    "--directory", str(tree)], check=True)
    shutil.copy(deb, tree / "tmp" / deb.name)
    in_tree(tree, "apt-get", "install", "--yes", "--quiet", f"/tmp/{deb.name}")
    yield tree
    shutil.rmtree(tree)


def test_amber_runs_from_the_package(tree: Path) -> None:
    assert in_tree(tree, "amber", "--version").stdout.strip() == \
        f"amber {package.checkout_version()}"
    assert "rollback" in in_tree(tree, "amber", "--help").stdout
    # The whole product imports with the package's dependencies alone.
    in_tree(tree, "python3", "-I", "-c",
            "import amber, importlib, pkgutil\n"
            "for m in pkgutil.walk_packages(amber.__path__, 'amber.'):\n"
            "    importlib.import_module(m.name)")
    # A real verb that needs python3-btrfsutil: this tree is not an amber system, and amber
    # says so in one line with its exit code, no traceback.
    status = in_tree(tree, "amber", "status", check=False)
    assert status.returncode == 8 and "Traceback" not in status.stderr, status.stderr


def test_man_page_and_completion_are_installed(tree: Path) -> None:
    assert in_tree(tree, "man", "-w", "amber").stdout.strip() == \
        "/usr/share/man/man8/amber.8.gz"
    page = in_tree(tree, "man", "amber").stdout
    assert "EXIT STATUS" in page and "amber rollback" in page
    completion = in_tree(tree, "bash", "-c", "source /usr/share/bash-completion/completions/amber"
                                             " && complete -p amber").stdout
    assert completion.strip() == "complete -F _amber amber"


def test_dpkg_owns_the_files_and_postinst_compiled_them(tree: Path) -> None:
    assert in_tree(tree, "dpkg", "-S", "/usr/bin/amber").stdout.strip() == \
        "amber: /usr/bin/amber"
    assert (tree / PACKAGE_DIR.lstrip("/") / "__pycache__").is_dir()
    assert list((tree / PACKAGE_DIR.lstrip("/") / "livepatch/__pycache__").glob("*.pyc"))
    assert not (tree / PACKAGE_DIR.lstrip("/") / "vm.py").exists()


def test_purge_leaves_nothing(tree: Path) -> None:
    in_tree(tree, "apt-get", "purge", "--yes", "--quiet", "amber")
    assert not (tree / PACKAGE_DIR.lstrip("/")).exists()
    assert not (tree / "usr/bin/amber").exists()
    assert not (tree / "usr/share/doc/amber").exists()

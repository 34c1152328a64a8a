# ruff: noqa: F811  (the fixtures kit and kernel are imported from test_livepatch_apply)
"""Live patch packages through ordinary transactions and `amber livepatch update` (issue 13):
real apt against a local flat repository in the shared /srv, real dpkg and depmod in the
snapshots; the kernel is tests.support's FakeKernel and dracut the stand-in of
test_livepatch_apply (the host cannot load modules, the image has no kernel)."""

from __future__ import annotations

from pathlib import Path

import pytest

from amber import transaction
from amber.livepatch import apply, early, packaged, update
from amber.log import AmberError, ExitCode
from amber.snapshots import Store
from testing import rootfs
from testing.livepatch_packages import build_livepatch_deb, deb_name
from testing.packages import write_apt_index
from tests.root.conftest import System
from tests.root.helpers import (
    USE_LOCAL_APT_REPOSITORY,
    amber,
    dpkg_installed,
    numbers,
    status,
)
from tests.root.test_livepatch_apply import Kit, active, kernel, kit, prepare  # noqa: F401
from tests.support.fake_kernel import FakeKernel

pytestmark = pytest.mark.root


def with_repository(system: System, kit: Kit) -> Path:
    """The prepared system (kernel, dracut, live patching enabled), its apt pointed at a local
    repository, then 'rebooted' into that snapshot (3), so that the next transaction changes
    only what it installs."""
    prepare(system, kit)
    repository = system.root / "srv/repository"
    repository.mkdir()
    write_apt_index(repository)
    amber(system.root, "run", "--", "sh", "-c",
          f"{USE_LOCAL_APT_REPOSITORY}; mkdir -p /etc/amber; "
          "printf '[livepatch]\\ntransition_timeout = 1.0\\n' "
          "> /etc/amber/amber.conf")
    rootfs.unmount_all(system.mounts)
    system.mounts = rootfs.mount_root(system.device, system.root)
    assert Store(system.root).booted() == 3
    return repository


def publish(repository: Path, kit: Kit, module: Path, version: str) -> str:
    build_livepatch_deb(repository, kit.release, module, version)
    write_apt_index(repository)
    return deb_name(kit.release)


def options(system: System) -> transaction.Options:
    return transaction.Options(root=system.root, base="default")


def test_install_and_up_load_the_live_patch(system: System, kit: Kit, kernel: FakeKernel) -> None:
    repository = with_repository(system, kit)
    name = publish(repository, kit, kit.v1, "1")
    transaction.run_packages(options(system), "install", [name], paths=kernel.paths,
                             syscalls=kernel)
    snapshot = system.snapshot(4)
    assert dpkg_installed(snapshot, name)
    assert active(kernel) == ["amber_lp_v1"]
    assert early.initrd_patches(snapshot) == ["amber_lp_v1"]
    initrd = (snapshot / "boot" / f"initrd.img-{kit.release}").read_text()
    assert 'force_drivers+=" amber_lp_v1 "' in initrd
    userdata = Store(system.root).get(4).userdata
    assert userdata[apply.LIVEPATCH_KEY] == "amber_lp_v1"
    assert userdata[apply.LIVEPATCH_ONLY_KEY] == "yes"  # the package was the only change
    st = status(system.root)
    assert (st["booted"], st["default"], st["reboot_needed"]) == (3, 4, False)

    # A new version of the package ships the next cumulative patch: `amber up` loads it and
    # the kernel drops the old one (atomic replace).
    publish(repository, kit, kit.v2, "2")
    result = transaction.run_packages(options(system), "up", [], paths=kernel.paths,
                                      syscalls=kernel)
    assert result.number == 5
    assert active(kernel) == ["amber_lp_v2"] and "amber_lp_v1" not in kernel.loaded
    assert early.initrd_patches(system.snapshot(5)) == ["amber_lp_v2"]
    assert status(system.root)["reboot_needed"] is False

    # Nothing newer in the repository: livepatch update changes nothing.
    outcome = update.update(system.root, paths=kernel.paths, syscalls=kernel)
    assert outcome.package == name and outcome.current
    assert numbers(system.root) == [1, 2, 3, 4, 5]


def test_livepatch_update_picks_the_newest_then_is_a_no_op(system: System, kit: Kit,
                                                           kernel: FakeKernel) -> None:
    repository = with_repository(system, kit)
    publish(repository, kit, kit.v1, "1")
    name = publish(repository, kit, kit.v2, "2")  # the index lists both versions
    outcome = update.update(system.root, paths=kernel.paths, syscalls=kernel)
    assert outcome.package == name and not outcome.current
    assert outcome.result is not None and outcome.result.number == 4
    assert active(kernel) == ["amber_lp_v2"]
    assert early.initrd_patches(system.snapshot(4)) == ["amber_lp_v2"]

    again = amber(system.root, "livepatch", "update", "--json", check=False)
    assert again.returncode == 0, again.stderr
    assert '"already_current": true' in again.stdout and "already current" in again.stderr
    assert numbers(system.root) == [1, 2, 3, 4]


def test_no_live_patch_package_is_already_current(system: System, kit: Kit,
                                                 kernel: FakeKernel) -> None:
    with_repository(system, kit)
    outcome = update.update(system.root, paths=kernel.paths, syscalls=kernel)
    assert outcome.package is None and outcome.current
    assert numbers(system.root) == [1, 2, 3] and active(kernel) == []


def test_disabled_live_patching_installs_but_does_not_load(system: System, kit: Kit,
                                                          kernel: FakeKernel) -> None:
    repository = with_repository(system, kit)
    amber(system.root, "livepatch", "disable")
    name = publish(repository, kit, kit.v1, "1")
    result = transaction.run_packages(options(system), "install", [name], paths=kernel.paths,
                                      syscalls=kernel)
    assert result.number == 4 and dpkg_installed(system.snapshot(4), name)
    assert active(kernel) == [] and kernel.loaded == []
    assert early.initrd_patches(system.snapshot(4)) == []
    note = Store(system.root).get(4).userdata[packaged.INACTIVE_KEY]
    assert note.startswith("amber_lp_v1: live patching is disabled")
    st = status(system.root)
    assert st["reboot_needed"] is True and st["reboot"]["livepatch_inactive"] == note
    text = amber(system.root, "status").stdout
    assert "live patch not active: amber_lp_v1: live patching is disabled" in text


def test_a_failed_load_withdraws_the_transaction(system: System, kit: Kit,
                                                 kernel: FakeKernel) -> None:
    repository = with_repository(system, kit)
    assert "transition_timeout = 1.0" in (system.root / "etc/amber/amber.conf").read_text()
    name = publish(repository, kit, kit.v1, "1")
    kernel.stall = True
    with pytest.raises(AmberError) as failure:
        transaction.run_packages(options(system), "install", [name], paths=kernel.paths,
                                 syscalls=kernel)
    assert failure.value.code == ExitCode.TRANSITION_TIMEOUT
    assert "snapshot 4 was withdrawn, the default is 3 again" in (failure.value.hint or "")
    assert numbers(system.root) == [1, 2, 3] and Store(system.root).default() == 3
    assert active(kernel) == [] and kernel.loaded == []


def test_a_live_patch_for_another_kernel_is_installed_not_loaded(system: System, kit: Kit,
                                                                 kernel: FakeKernel) -> None:
    from testing.modules import build

    repository = with_repository(system, kit)
    other = build.other_release(kit.release)
    build_livepatch_deb(repository, other, kit.v1, "1")
    write_apt_index(repository)
    name = deb_name(other)
    result = transaction.run_packages(options(system), "install", [name], paths=kernel.paths,
                                      syscalls=kernel)
    assert result.number == 4 and dpkg_installed(system.snapshot(4), name)
    assert active(kernel) == [] and early.initrd_patches(system.snapshot(4)) == []
    note = status(system.root)["reboot"]["livepatch_inactive"]
    assert note == f"amber_lp_v1: it is for kernel {other}, not the running kernel {kit.release}"

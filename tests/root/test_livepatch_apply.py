"""`amber livepatch apply` on a real btrfs root with a real Debian: real packages (.rpm, .deb),
real rpm/apt/dpkg and depmod inside the snapshot, real snapshots and default switching.

Two parts stand in for what this host lacks, and the VM tests (tests/vm/test_livepatch_apply.py)
prove the real thing: the kernel (the host cannot load modules; tests.unit's FakeKernel acts on
fake sysfs/procfs trees as the kernel does), and dracut (the root image has no kernel, and a real
initrd build needs one): a stand-in `dracut` package records the command line and the
configuration dracut would read into the "initrd" file, so the tests see what amber asked for.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from amber import btrfs
from amber.boot import initrd_overlay
from amber.livepatch import apply, early, view
from amber.livepatch import kernel as kernel_side
from amber.log import AmberError, ExitCode
from amber.snapshots import Store
from testing import rootfs
from testing.images import CACHE
from testing.livepatch_packages import build_livepatch_deb, build_livepatch_rpm, rpm_name
from testing.modules import build
from testing.packages import build_deb
from tests.conftest import require
from tests.root.conftest import System
from tests.root.helpers import amber, numbers, rpm_installed, status
from tests.support.fake_kernel import FakeKernel
from tests.support.modules import kernel_release_for_tests

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
DRACUT_STANDIN = """#!/bin/sh
# amber's root tests: a stand-in for dracut (no kernel in this image to build a real initrd).
# Writes its arguments and the configuration dracut would read to the initrd path.
out=""
for arg; do case "$arg" in -*) ;; *) [ -z "$out" ] && out="$arg" ;; esac; done
{ echo "dracut $*"; cat /etc/dracut.conf.d/*.conf; } > "$out"
"""


@dataclass(frozen=True)
class Kit:
    release: str
    v1: Path
    v2: Path
    plain: Path
    packages: Path  # folder of .deb files: kmod, a stand-in kernel and dracut


@pytest.fixture(scope="session")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    release = kernel_release_for_tests()
    require(release is not None, "no linux-headers package installed")
    assert release is not None
    built = build.build_modules(release, REPO / ".cache" / "modules")
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    if not list(debs.glob("kmod_*.deb")) or not list(debs.glob("libkmod2_*.deb")):
        subprocess.run(["apt-get", "download", "kmod", "libkmod2"], cwd=debs, check=True,
                       capture_output=True)
    folder = tmp_path_factory.mktemp("kit")
    for deb in debs.glob("*.deb"):
        (folder / deb.name).symlink_to(deb)
    build_deb(folder, "amber-test-kernel", "1.0", {
        f"/boot/vmlinuz-{release}": "not a kernel: amber's root tests\n",
        f"/boot/config-{release}": "CONFIG_RD_GZIP=y\nCONFIG_RD_ZSTD=y\n",  # for initramfs-tools
        f"/lib/modules/{release}/modules.order": "",
        f"/lib/modules/{release}/modules.builtin": "",
    })
    build_deb(folder, "amber-test-dracut", "1.0", {"/usr/bin/dracut": DRACUT_STANDIN},
              postinst="chmod 755 /usr/bin/dracut")
    return Kit(release, built["amber_lp_v1"], built["amber_lp_v2"], built["amber_plain"],
               folder)


def prepare(system: System, kit: Kit, dracut: bool = True) -> None:
    """Install kmod, the stand-in kernel (and dracut), then 'reboot': mount the new default
    as the root, so that it is the booted snapshot (2)."""
    debs = [str(p) for p in sorted(kit.packages.glob("*.deb"))
            if dracut or "amber-test-dracut" not in p.name]
    amber(system.root, "pkg", "install", *debs)
    rootfs.unmount_all(system.mounts)
    system.mounts = rootfs.mount_root(system.device, system.root)
    assert Store(system.root).booted() == 2
    amber(system.root, "livepatch", "enable")


@pytest.fixture
def kernel(tmp_path: Path, kit: Kit, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKernel]:
    fake = FakeKernel(tmp_path / "kernel")
    write_enabled = kernel_side.write_enabled

    def kernel_starts_transition(paths: kernel_side.KernelPaths, name: str, value: bool) -> None:
        # As in tests.unit: the kernel starts the transition within the write itself.
        with fake._lock:
            write_enabled(paths, name, value)
            (paths.patch(name) / "transition").write_text("1\n")

    monkeypatch.setattr(kernel_side, "write_enabled", kernel_starts_transition)
    monkeypatch.setenv("AMBER_KERNEL_RELEASE", kit.release)
    monkeypatch.setenv("AMBER_SYSFS", str(fake.paths.sys))
    monkeypatch.setenv("AMBER_PROCFS", str(fake.paths.proc))
    with fake:
        yield fake


def active(kernel: FakeKernel) -> list[str]:
    return sorted(p.name for p in kernel.paths.livepatch.iterdir())


def livepatch_dir(system: System, number: int, release: str) -> Path:
    return system.snapshot(number) / "usr/lib/modules" / release / "livepatch"


def test_rpm_then_deb_cumulative_replace(system: System, kit: Kit, kernel: FakeKernel,
                                         tmp_path: Path) -> None:
    prepare(system, kit)
    rpm = build_livepatch_rpm(tmp_path, kit.release, kit.v1, "1")
    outcome = apply.apply(system.root, [str(rpm)], paths=kernel.paths, syscalls=kernel)
    assert (outcome.snapshot, outcome.base, outcome.loaded) == (3, 2, True)
    snapshot = system.snapshot(3)
    assert sorted(p.name for p in livepatch_dir(system, 3, kit.release).iterdir()) == [
        "amber_lp_v1.ko"]
    assert rpm_installed(snapshot, rpm_name(kit.release))
    depmod = (snapshot / "usr/lib/modules" / kit.release / "modules.dep").read_text()
    assert "livepatch/amber_lp_v1.ko:" in depmod
    conf = (snapshot / early.DRACUT_CONF).read_text()
    assert 'force_drivers+=" amber_lp_v1 "' in conf
    initrd = (snapshot / "boot" / f"initrd.img-{kit.release}").read_text()
    assert initrd.startswith(f"dracut --quiet --force /boot/initrd.img-{kit.release} "
                             f"{kit.release}")
    assert 'force_drivers+=" amber_lp_v1 "' in initrd
    assert btrfs.is_read_only(snapshot)
    info = Store(system.root).get(3).userdata
    assert info[apply.LIVEPATCH_KEY] == "amber_lp_v1" and info[apply.LIVEPATCH_ONLY_KEY] == "yes"
    assert active(kernel) == ["amber_lp_v1"]
    st = status(system.root)
    assert (st["booted"], st["default"], st["reboot_needed"]) == (2, 3, False)
    assert st["reboot_avoided_by_livepatch"] == "amber_lp_v1"
    assert st["livepatch"]["patches"][0]["next_boot"] is True
    assert not livepatch_dir(system, 2, kit.release).exists()  # the booted one is untouched

    # v2 as a .deb of another name: v1's rpm leaves the new snapshot, v1 leaves the kernel.
    deb = build_livepatch_deb(tmp_path, kit.release, kit.v2, "2")
    outcome = apply.apply(system.root, [str(deb)], paths=kernel.paths, syscalls=kernel)
    assert outcome.snapshot == 4 and outcome.replaced == ("amber_lp_v1",)
    assert sorted(p.name for p in livepatch_dir(system, 4, kit.release).iterdir()) == [
        "amber_lp_v2.ko"]
    assert not rpm_installed(system.snapshot(4), rpm_name(kit.release))
    assert rpm_installed(system.snapshot(3), rpm_name(kit.release))
    conf = (system.snapshot(4) / early.DRACUT_CONF).read_text()
    assert "amber_lp_v2" in conf and "amber_lp_v1" not in conf
    assert active(kernel) == ["amber_lp_v2"] and "amber_lp_v1" not in kernel.loaded
    st = status(system.root)
    assert (st["default"], st["reboot_needed"]) == (4, False)

    # Rollback to snapshot 3 made real in the running kernel (--revert-livepatches): its v1
    # replaces v2, and v2 is unloaded.
    amber(system.root, "rollback", "3")
    assert apply.revert_for_rollback(system.root, 3, True, kernel.paths,
                                     kernel) == ["amber_lp_v2"]
    assert active(kernel) == ["amber_lp_v1"] and kernel.loaded == ["amber_lp_v1"]
    assert status(system.root)["livepatch"]["drift"] == []

    # Rollback to the booted snapshot: the running kernel stays patched; amber says so.
    result = amber(system.root, "rollback", "2")
    assert "stays patched with amber_lp_v1 until the next reboot" in result.stderr
    assert "amber livepatch revert amber_lp_v1" in result.stderr
    listing = amber(system.root, "livepatch", "list", "--json").stdout
    assert '"next_boot": false' in listing and "is active now, but the next boot" in listing
    # The revert path, without a reboot.
    assert apply.revert(system.root, "amber_lp_v1", paths=kernel.paths,
                        syscalls=kernel) == ["amber_lp_v1"]
    assert active(kernel) == [] and kernel.loaded == []
    assert status(system.root)["livepatch"]["drift"] == []


def test_failed_load_withdraws_the_snapshot(system: System, kit: Kit, kernel: FakeKernel,
                                            tmp_path: Path) -> None:
    prepare(system, kit)
    kernel.stall = True
    with pytest.raises(AmberError) as failure:
        apply.apply(system.root, [str(kit.v1)], timeout=0.5, paths=kernel.paths,
                    syscalls=kernel)
    assert failure.value.code == ExitCode.TRANSITION_TIMEOUT
    assert "snapshot 3 was withdrawn, the default is 2 again" in (failure.value.hint or "")
    assert numbers(system.root) == [1, 2]
    assert Store(system.root).default() == 2
    assert active(kernel) == [] and kernel.loaded == []
    # --keep: the snapshot stays the default for the next boot, the kernel stays unpatched.
    with pytest.raises(AmberError):
        apply.apply(system.root, [str(kit.v1)], timeout=0.5, keep=True, paths=kernel.paths,
                    syscalls=kernel)
    assert Store(system.root).default() == 3
    assert (livepatch_dir(system, 3, kit.release) / "amber_lp_v1.ko").read_bytes() == \
        kit.v1.read_bytes()
    assert status(system.root)["reboot_needed"] is True
    assert active(kernel) == []


def test_refusals_leave_everything_as_it_was(system: System, kit: Kit, kernel: FakeKernel,
                                             tmp_path: Path) -> None:
    prepare(system, kit)
    env = {"AMBER_SYSFS": str(kernel.paths.sys), "AMBER_PROCFS": str(kernel.paths.proc),
           "AMBER_KERNEL_RELEASE": kit.release}

    def refused(*args: str, code: ExitCode, sentence: str,
                extra_env: dict[str, str] | None = None) -> None:
        result = amber(system.root, "livepatch", "apply", *args, check=False,
                       env={**env, **(extra_env or {})})
        assert result.returncode == code, result.stderr
        assert sentence in result.stderr and "hint:" in result.stderr
        assert numbers(system.root) == [1, 2] and Store(system.root).default() == 2
        assert active(kernel) == [] and kernel.loaded == []

    refused(str(kit.plain), code=ExitCode.INCOMPATIBLE, sentence="is not a live patch")
    other = build.other_release(kit.release)
    refused(str(kit.v1), code=ExitCode.INCOMPATIBLE, sentence=f"not for {other}",
            extra_env={"AMBER_KERNEL_RELEASE": other})
    elsewhere = build.with_vermagic_release(kit.v1, tmp_path / "amber_lp_v1.ko", kit.release,
                                            other)
    refused(str(build_livepatch_rpm(tmp_path, kit.release, elsewhere, "1")),
            code=ExitCode.INCOMPATIBLE, sentence=f"built for kernel {other}")
    refused(str(tmp_path / "missing.rpm"), code=ExitCode.NOT_FOUND, sentence="does not exist")
    amber(system.root, "livepatch", "disable")
    refused(str(kit.v1), code=ExitCode.LIVEPATCH_DISABLED,
            sentence="live patching is disabled")
    amber(system.root, "livepatch", "enable")

    # A pending kernel update in the next boot's snapshot makes the patch useless after a
    # reboot: refused, with --live-only offered.
    amber(system.root, "run", "--", "sh", "-c",
          f"mv /boot/vmlinuz-{kit.release} /boot/vmlinuz-{other} && "
          f"mv /lib/modules/{kit.release} /lib/modules/{other}")
    result = amber(system.root, "livepatch", "apply", str(kit.v1), check=False, env=env)
    assert result.returncode == ExitCode.INCOMPATIBLE
    assert f"snapshot 3, which boots next, has kernel {other}" in result.stderr
    assert "--live-only" in result.stderr
    assert numbers(system.root) == [1, 2, 3] and Store(system.root).default() == 3


def test_no_initrd_generator_changes_nothing(system: System, kit: Kit,
                                             kernel: FakeKernel) -> None:
    prepare(system, kit, dracut=False)
    with pytest.raises(AmberError) as failure:
        apply.apply(system.root, [str(kit.v1)], paths=kernel.paths, syscalls=kernel)
    assert failure.value.code == ExitCode.ENVIRONMENT
    assert "no initrd generator" in failure.value.message
    assert numbers(system.root) == [1, 2] and Store(system.root).default() == 2
    assert active(kernel) == []


def test_live_only_and_next_boot(system: System, kit: Kit, kernel: FakeKernel) -> None:
    prepare(system, kit)
    outcome = apply.apply(system.root, [str(kit.v1)], mode=apply.Mode.LIVE_ONLY, paths=kernel.paths,
                          syscalls=kernel)
    assert outcome.snapshot is None and active(kernel) == ["amber_lp_v1"]
    assert numbers(system.root) == [1, 2]
    drift = status(system.root)["livepatch"]["drift"]
    assert [d["resolve"] for d in drift] == [
        "amber livepatch revert amber_lp_v1 (unload it now), or apply it again to keep it"]
    apply.revert(system.root, "amber_lp_v1", paths=kernel.paths, syscalls=kernel)

    outcome = apply.apply(system.root, [str(kit.v2)], mode=apply.Mode.NEXT_BOOT, paths=kernel.paths,
                          syscalls=kernel)
    assert (outcome.snapshot, outcome.loaded) == (3, False)
    assert active(kernel) == []
    st = status(system.root)
    assert st["reboot_needed"] is True
    assert "loads live patch amber_lp_v2, but the running kernel does not have it" in \
        st["livepatch"]["drift"][0]["warning"]
    assert os.path.exists(system.snapshot(3) / "usr/lib/modules" / kit.release /
                          "livepatch/amber_lp_v2.ko")


def test_initramfs_tools_loads_the_patch_from_its_initrd(initramfs_tools_system: System, kit: Kit,
                                                         kernel: FakeKernel,
                                                         tmp_path: Path) -> None:
    """Debian's default generator, for real: update-initramfs builds the snapshot's initrd with
    the live patch in it and in conf/modules (loaded before the root is mounted)."""
    system = initramfs_tools_system
    prepare(system, kit, dracut=False)
    deb = build_livepatch_deb(tmp_path, kit.release, kit.v1, "1")
    assert not (system.snapshot(2) / "boot" / f"initrd.img-{kit.release}").exists()
    outcome = apply.apply(system.root, [str(deb)], paths=kernel.paths, syscalls=kernel)
    # No initrd yet to append to: update-initramfs makes one, with the patch.
    assert (outcome.snapshot, outcome.loaded, outcome.initrd) == (3, True, "regenerated")
    snapshot = system.snapshot(3)
    assert early.initrd_patches(snapshot) == ["amber_lp_v1"]
    base_initrd = (snapshot / "boot" / f"initrd.img-{kit.release}").read_bytes()
    assert initrd_overlay.MARKER.encode() not in base_initrd
    assert "livepatch/amber_lp_v1.ko" in modprobe_in_initrd(snapshot, kit.release,
                                                              "amber_lp_v1", tmp_path)
    assert initramfs_files(snapshot, kit.release)["conf/modules"].count("amber_lp_v1") == 1
    assert any(p.endswith("livepatch/amber_lp_v1.ko") for p in initramfs_files(
        snapshot, kit.release))
    seen = view.view(system.root, kernel.paths).patches
    assert [(p.name, p.next_boot, p.in_initrd) for p in seen] == [("amber_lp_v1", True, True)]

    outcome = apply.apply(system.root, [str(kit.v2)], paths=kernel.paths, syscalls=kernel)
    assert (outcome.snapshot, outcome.replaced, outcome.initrd) == (4, ("amber_lp_v1",),
                                                                    "appended")
    # Appended: the initrd before, then the overlay; modprobe with the initrd's own indexes
    # finds the patch, and its init loads it (conf/modules).
    image = (system.snapshot(4) / "boot" / f"initrd.img-{kit.release}").read_bytes()
    assert image.startswith(base_initrd) and len(image) - len(base_initrd) < 1 << 20
    assert "livepatch/amber_lp_v2.ko" in modprobe_in_initrd(system.snapshot(4), kit.release,
                                                              "amber_lp_v2", tmp_path)
    files = initramfs_files(system.snapshot(4), kit.release)
    assert "amber_lp_v2" in files["conf/modules"] and "amber_lp_v1" not in files["conf/modules"]
    # v1's module is still in the base archive, but nothing loads it and no index names it.
    assert "amber_lp_v1" not in modprobe_in_initrd(system.snapshot(4), kit.release,
                                                   "amber_lp_v2", tmp_path)
    assert f"usr/lib/modules/{kit.release}/livepatch/amber_lp_v2.ko" in files
    modules_dep = files[f"usr/lib/modules/{kit.release}/modules.dep"]
    assert "livepatch/amber_lp_v2.ko:" in modules_dep and "amber_lp_v1" not in modules_dep
    # The index was written directly (amber.boot.modindex), not by depmod: the same entries as
    # depmod makes over the initrd's modules with v2 in place of v1.
    assert_index_as_depmod_makes_it(snapshot, kit.release, kit.v2)

    # A cumulative replacement replaces the overlay: still one, on the same base.
    outcome = apply.apply(system.root, [str(kit.v1)], paths=kernel.paths, syscalls=kernel)
    assert (outcome.snapshot, outcome.initrd) == (5, "appended")
    image = (system.snapshot(5) / "boot" / f"initrd.img-{kit.release}").read_bytes()
    assert image.startswith(base_initrd)
    assert image.count(initrd_overlay.MARKER.encode() + b"\0") == 1
    assert "amber_lp_v1" in initramfs_files(system.snapshot(5), kit.release)["conf/modules"]
    # The older snapshot's initrd is untouched: rollback boots v1 again.
    assert "amber_lp_v1" in initramfs_files(snapshot, kit.release)["conf/modules"]


def assert_index_as_depmod_makes_it(snapshot: Path, release: str, module: Path) -> None:
    from amber.boot import modindex

    members = initrd_overlay.all_members(snapshot / "boot" / f"initrd.img-{release}")
    prefix = initrd_overlay.modules_prefix(members, release)
    name, dropped = module.name.removesuffix(".ko"), {"amber_lp_v1"}
    direct = initrd_overlay.added_to_index(members, prefix, module, name, dropped)
    made = initrd_overlay.indexes(members, prefix, module, name, dropped)
    assert direct is not None and set(made) == {"modules.dep", "modules.dep.bin"}

    def entries(index: bytes) -> dict[str, list[str]]:
        return {k: [text for _, text in v] for k, v in modindex.read_index(index).items()}

    assert entries(direct["modules.dep.bin"]) == entries(made["modules.dep.bin"])
    assert sorted(direct["modules.dep"].splitlines()) == sorted(made["modules.dep"].splitlines())
    # depmod's own files, read and written again: the same bytes (it leaves an index with
    # nothing to say empty, without even a header).
    made_by_depmod = [bytes(m.data) for m in members if m.name.startswith(prefix + "modules.")
                      and m.name.endswith(".bin") and m.data] + [made["modules.dep.bin"]]
    assert len(made_by_depmod) >= 4
    for data in made_by_depmod:
        assert modindex.write_index(modindex.read_index(data)) == data


def initramfs_files(snapshot: Path, release: str) -> dict[str, str]:
    """The initrd's files as the kernel leaves them unpacked, amber's overlay included (path →
    text of the small files, "" for the rest)."""
    members = initrd_overlay.all_members(snapshot / "boot" / f"initrd.img-{release}")
    files = {m.name: bytes(m.data).decode(errors="replace") if len(m.data) < 65536 else ""
             for m in members if m.is_file}
    return files


def modprobe_in_initrd(snapshot: Path, release: str, name: str, tmp_path: Path) -> str:
    """What modprobe inside the unpacked initrd would load for `name` (its own indexes)."""
    import stat as st

    root = tmp_path / f"initrd-{snapshot.parent.name}"
    for member in initrd_overlay.all_members(snapshot / "boot" / f"initrd.img-{release}"):
        path = root / member.name
        path.parent.mkdir(parents=True, exist_ok=True)
        if st.S_ISLNK(member.mode):
            path.unlink(missing_ok=True)
            path.symlink_to(bytes(member.data).decode())
        elif member.is_file:
            path.unlink(missing_ok=True)
            path.write_bytes(member.data)
        else:
            path.mkdir(exist_ok=True)
    return subprocess.run(["modprobe", "--dry-run", "--verbose", "-d", str(root), "-S", release,
                           name], check=True, capture_output=True, text=True).stdout


HEALTH_CHECK = ("mkdir -p /etc/amber/health.d && printf '#!/bin/sh\\n"
                "test ! -e /var/tmp/amber-unhealthy || { echo service down; exit 1; }\\n' "
                "> /etc/amber/health.d/50-service && chmod +x /etc/amber/health.d/50-service")


def test_a_failing_health_check_reverts_the_patch(system: System, kit: Kit, kernel: FakeKernel,
                                                  tmp_path: Path) -> None:
    prepare(system, kit)
    amber(system.root, "run", "--", "sh", "-c", HEALTH_CHECK)
    rootfs.unmount_all(system.mounts)  # boot the snapshot with the health check (3)
    system.mounts = rootfs.mount_root(system.device, system.root)
    outcome = apply.apply(system.root, [str(kit.v1)], paths=kernel.paths, syscalls=kernel)
    assert outcome.snapshot == 4 and active(kernel) == ["amber_lp_v1"]

    (system.root / "var/tmp/amber-unhealthy").touch()
    deb = build_livepatch_deb(tmp_path, kit.release, kit.v2, "2")
    with pytest.raises(AmberError) as failure:
        apply.apply(system.root, [str(deb)], paths=kernel.paths, syscalls=kernel)
    assert failure.value.code == ExitCode.STEP_FAILED
    assert "50-service: service down" in failure.value.message
    # All or nothing: v1 (from snapshot 4, which v2 replaced) is back, v2 and snapshot 5 gone.
    assert active(kernel) == ["amber_lp_v1"] and kernel.loaded == ["amber_lp_v1"]
    assert numbers(system.root) == [1, 2, 3, 4] and Store(system.root).default() == 4

    outcome = apply.apply(system.root, [str(deb)], health=False, paths=kernel.paths,
                          syscalls=kernel)
    assert outcome.snapshot == 5 and active(kernel) == ["amber_lp_v2"]

"""`amber livepatch apply` on the real Debian kernel in the test VM: patched now, patched after a
reboot (loaded from the initrd before the real root's userspace), gone after a rollback, v1 → v2
replace, refusals that change nothing, and a power cut in the middle of an apply.

Boots are shared (each costs 25–60 s under TCG) and so is every initrd regeneration (dracut takes
minutes under TCG): one boot carries the whole story in order, a second one the kernel that
enforces module signatures."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from amber.log import ExitCode
from testing.livepatch_packages import build_livepatch_deb, build_livepatch_rpm
from testing.modules import build
from testing.vm import VM
from tests.vm.conftest import amber_status, boot_with_kernel_args, booted_vm

REPO = Path(__file__).resolve().parents[2]
MARKER = "amber-livepatch-"
APPLY_TIMEOUT = 900  # dracut under TCG

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def story_vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VM]:
    yield from booted_vm(tmp_path_factory)


@pytest.fixture(scope="module")
def files(story_vm: VM, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Live patch packages and modules for the VM's kernel, copied into the guest."""
    release = story_vm.kernel_release()
    built = build.build_modules(release, REPO / ".cache" / "modules")
    local = tmp_path_factory.mktemp("livepatch-files")
    other = build.other_release(release)
    elsewhere = build.with_vermagic_release(built["amber_lp_v1"], local / "amber_lp_v1.ko",
                                            release, other)
    made = {
        "v1.rpm": build_livepatch_rpm(local, release, built["amber_lp_v1"], "1"),
        "v2.deb": build_livepatch_deb(local, release, built["amber_lp_v2"], "2"),
        "v3.rpm": build_livepatch_rpm(local, release, built["amber_lp_v1"], "3"),
        "plain.ko": built["amber_plain"],
        "v1.ko": built["amber_lp_v1"],
        "elsewhere.rpm": build_livepatch_rpm(local / "elsewhere", release, elsewhere, "1"),
    }
    remote = {}
    for key, path in made.items():
        remote[key] = f"/root/{key}"
        story_vm.put(path, remote[key])
    return remote


def cmdline(vm: VM) -> str:
    return vm.exec(["cat", "/proc/cmdline"]).out.strip()


def patched_with(vm: VM) -> str | None:
    """The marker the test live patches append to /proc/cmdline, or None when unpatched. The
    rest of the line names the booted snapshot (GRUB boots it), so it changes with each reboot."""
    last = cmdline(vm).rsplit(" ", 1)[-1]
    return last.removeprefix(MARKER) if last.startswith(MARKER) else None


def snapshots(vm: VM) -> list[int]:
    return [row["number"] for row in json.loads(vm.exec(["amber", "snapshots", "--json"]).out)]


def livepatch_view(vm: VM) -> dict[str, Any]:
    return dict(json.loads(vm.exec(["amber", "livepatch", "status", "--json"]).out))


def apply(vm: VM, *args: str) -> dict[str, Any]:
    result = vm.exec(["amber", "livepatch", "apply", *args, "--json"], timeout=APPLY_TIMEOUT)
    return dict(json.loads(result.out))


def loaded(vm: VM, module: str) -> bool:
    return vm.exec(["test", "-d", f"/sys/module/{module}"], check=False).code == 0


def initrd_force_drivers(vm: VM, snapshot: int, release: str) -> str:
    """The kernel command line files dracut wrote into the snapshot's initrd (force_drivers
    becomes rd.driver.pre there), read on the host past dracut's early cpio, compressed or
    not."""
    from amber.boot import initrd

    image = f"/.snapshots/{snapshot}/snapshot/boot/initrd.img-{release}"
    with tempfile.TemporaryDirectory(prefix="amber-initrd-") as tmp:
        local = Path(tmp) / "initrd.img"
        vm.get(image, local)
        data = local.read_bytes()
        offset = initrd.main_archive_offset(data)
        command = next(c for magic, c in initrd.DECOMPRESSORS.items()
                       if data[offset:offset + len(magic)] == magic)
        script = f'tail -c +{offset + 1} "$1" | {command} | cpio -i --quiet --to-stdout ' \
                 "'etc/cmdline.d/*'"
        return subprocess.run(["sh", "-c", script, "sh", str(local)], capture_output=True,
                              text=True, check=True).stdout


def assert_refused(vm: VM, argv: list[str], code: ExitCode, sentence: str) -> None:
    before = (snapshots(vm), amber_status(vm)["default"], cmdline(vm))
    result = vm.exec(argv, check=False, timeout=APPLY_TIMEOUT)
    assert result.code == code, result.err
    assert sentence in result.err and "hint:" in result.err, result.err
    assert (snapshots(vm), amber_status(vm)["default"], cmdline(vm)) == before


def test_refusals_change_nothing(story_vm: VM, files: dict[str, str]) -> None:
    vm = story_vm
    assert_refused(vm, ["amber", "livepatch", "apply", files["v1.rpm"]],
                   ExitCode.LIVEPATCH_DISABLED, "live patching is disabled")
    vm.exec(["amber", "livepatch", "enable"])
    assert_refused(vm, ["amber", "livepatch", "apply", files["elsewhere.rpm"]],
                   ExitCode.INCOMPATIBLE, "is built for kernel")
    assert_refused(vm, ["amber", "livepatch", "apply", files["plain.ko"]],
                   ExitCode.INCOMPATIBLE, "is not a live patch")
    assert not loaded(vm, "amber_plain") and not loaded(vm, "amber_lp_v1")


def test_apply_reboot_replace_rollback(story_vm: VM, files: dict[str, str]) -> None:
    vm = story_vm
    release = vm.kernel_release()
    vm.exec(["amber", "livepatch", "enable"])
    original = cmdline(vm)
    assert patched_with(vm) is None and amber_status(vm)["booted"] == 1

    # Apply the .rpm: changed behaviour at once, no reboot needed.
    outcome = apply(vm, files["v1.rpm"])
    # The patch is appended to the initrd (amber.boot.initrd_overlay), not regenerated.
    assert (outcome["snapshot"], outcome["active"], outcome["initrd"]) == (2, True, "appended")
    assert cmdline(vm) == f"{original} {MARKER}v1"  # same boot: the whole line is comparable
    status = amber_status(vm)
    assert (status["booted"], status["default"], status["reboot_needed"]) == (1, 2, False)
    assert status["reboot_avoided_by_livepatch"] == "amber_lp_v1"
    view = livepatch_view(vm)["view"]["patches"]
    assert [(p["name"], p["active"], p["next_boot"], p["in_initrd"]) for p in view] == [
        ("amber_lp_v1", True, True, True)]
    assert "rd.driver.pre=amber_lp_v1" in initrd_force_drivers(vm, 2, release)

    # Reboot: still patched, loaded from the appended part inside the initrd, before the real
    # root's systemd.
    vm.reboot()
    assert patched_with(vm) == "v1"
    assert amber_status(vm)["booted"] == 2
    kernel_log = vm.exec(["dmesg"]).out.splitlines()
    in_initrd = next(i for i, line in enumerate(kernel_log) if "Running in initrd" in line)
    enabled = next(i for i, line in enumerate(kernel_log)
                   if "livepatch: enabling patch 'amber_lp_v1'" in line)
    real_root = [i for i, line in enumerate(kernel_log) if "running in system mode" in line][-1]
    assert in_initrd < enabled < real_root, "\n".join(kernel_log[in_initrd:real_root + 1])
    assert livepatch_view(vm)["drift"] == []

    # v2 as a .deb: v1 replaced in the kernel and unloaded; the new initrd loads only v2.
    outcome = apply(vm, files["v2.deb"])
    assert outcome["snapshot"] == 3 and outcome["replaced"] == ["amber_lp_v1"]
    assert outcome["initrd"] == "appended"  # in place of v1's overlay, not on top of it
    assert patched_with(vm) == "v2"
    assert not loaded(vm, "amber_lp_v1")
    listing = json.loads(vm.exec(["amber", "livepatch", "list", "--json"]).out)
    assert [p["name"] for p in listing["patches"]] == ["amber_lp_v2"]
    assert listing["replaced"] == []
    force = initrd_force_drivers(vm, 3, release)
    assert "rd.driver.pre=amber_lp_v2" in force and "amber_lp_v1" not in force
    assert amber_status(vm)["reboot_needed"] is False

    # Roll back to snapshot 2 and make the running kernel match it now: v1 replaces v2.
    result = json.loads(vm.exec(["amber", "rollback", "2", "--revert-livepatches",
                                 "--json"]).out)
    assert (result["default"], result["reverted_livepatches"]) == (2, ["amber_lp_v2"])
    assert patched_with(vm) == "v1" and not loaded(vm, "amber_lp_v2")
    assert livepatch_view(vm)["drift"] == []

    # Roll back to the first snapshot: the running kernel stays patched until revert.
    result = vm.exec(["amber", "rollback", "1"])
    assert "stays patched with amber_lp_v1 until the next reboot" in result.err
    assert "amber livepatch revert amber_lp_v1" in result.err
    drift = livepatch_view(vm)["drift"]
    assert [d["resolve"].split()[:4] for d in drift] == [
        ["amber", "livepatch", "revert", "amber_lp_v1"]]
    result = json.loads(vm.exec(["amber", "rollback", "1", "--revert-livepatches",
                                 "--json"]).out)
    assert result["reverted_livepatches"] == ["amber_lp_v1"]
    assert patched_with(vm) is None and not loaded(vm, "amber_lp_v1")
    assert livepatch_view(vm)["drift"] == []

    vm.reboot()
    assert cmdline(vm) == original  # snapshot 1 again: the very line of the first boot
    status = amber_status(vm)
    assert (status["booted"], status["default"]) == (1, 1)
    assert not loaded(vm, "amber_lp_v1") and not loaded(vm, "amber_lp_v2")
    assert "livepatch" not in vm.exec(["dmesg"]).out


def test_power_cut_during_apply(story_vm: VM, files: dict[str, str]) -> None:
    """Cut the power while the transaction runs (with --rebuild-initrd: dracut takes minutes
    here): the next boot is the old system, whole; the unfinished snapshot is removed by the
    next amber command."""
    vm = story_vm
    before = snapshots(vm)
    default = amber_status(vm)["default"]
    patched = patched_with(vm)  # None after the story above; what the default's initrd loads
    vm.exec(["sh", "-c", f"amber livepatch apply --rebuild-initrd {files['v3.rpm']} "
                     ">/var/log/apply.log 2>&1 &"])
    deadline = time.monotonic() + 300
    while "regenerating the initrd" not in vm.exec(["cat", "/var/log/apply.log"]).out:
        assert time.monotonic() < deadline, vm.exec(["cat", "/var/log/apply.log"]).out
        time.sleep(2)
    vm.powercut()
    status = amber_status(vm)  # reports the interrupted transaction, deletes nothing
    assert (status["booted"], status["default"]) == (default, default)
    assert status["interrupted"] == [max(before) + 1]
    removed = json.loads(vm.exec(["amber", "cleanup", "--keep", "1000", "--json"]).out)
    assert removed == {"removed": status["interrupted"]}
    assert patched_with(vm) == patched
    assert patched == "v1" or not loaded(vm, "amber_lp_v1")  # v3 carries amber_lp_v1
    assert snapshots(vm) == before
    assert livepatch_view(vm).get("drift") == []


@pytest.fixture(scope="module")
def enforcing_vm(story_vm: VM, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VM]:
    story_vm.stop()  # one VM at a time: memory and the two host cores
    for vm in booted_vm(tmp_path_factory):
        boot_with_kernel_args(vm, "module.sig_enforce=1")
        yield vm


def test_unsigned_refused_when_the_kernel_enforces_signatures(enforcing_vm: VM) -> None:
    vm = enforcing_vm
    release = vm.kernel_release()
    built = build.build_modules(release, REPO / ".cache" / "modules")
    local = vm.state / "unsigned"
    local.mkdir(exist_ok=True)
    vm.put(build_livepatch_rpm(local, release, built["amber_lp_v1"], "1"), "/root/v1.rpm")
    vm.exec(["amber", "livepatch", "enable"])
    before = snapshots(vm)  # 1, and 2 with module.sig_enforce=1
    assert_refused(vm, ["amber", "livepatch", "apply", "/root/v1.rpm"], ExitCode.SIGNATURE,
                   "signature rejected")
    assert snapshots(vm) == before == [1, 2]

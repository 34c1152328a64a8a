"""The live patch engine on the real Debian kernel in the test VM: load, replace, unload, and the
refusals that must happen before anything reaches the kernel."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from amber.log import ExitCode
from testing.modules import build
from testing.vm import VM
from tests.vm.conftest import boot_with_kernel_args, booted_vm

REPO = Path(__file__).resolve().parents[2]
MARKER = "amber-livepatch-"

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def guest_modules(vm: VM, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """amber's test modules built for the VM's kernel, copied into the guest."""
    release = vm.kernel_release()
    built = build.build_modules(release, REPO / ".cache" / "modules")
    local = tmp_path_factory.mktemp("guest-modules")
    files = {
        "v1": built["amber_lp_v1"],
        "v2": built["amber_lp_v2"],
        "plain": built["amber_plain"],
        "stall": built["amber_lp_stall"],
        "v1.xz": build.compress_xz(built["amber_lp_v1"], local / "amber_lp_v1.ko.xz"),
        "elsewhere": build.with_vermagic_release(
            built["amber_lp_v1"], local / "elsewhere.ko", release, build.other_release(release)),
    }
    remote = {}
    for key, path in files.items():
        target = f"/root/{path.name}"
        vm.put(path, target)
        remote[key] = target
    vm.exec(["amber", "livepatch", "enable"])
    return remote


def cmdline(vm: VM) -> str:
    return str(vm.exec(["cat", "/proc/cmdline"]).out.strip())


def livepatch_json(vm: VM, *args: str) -> Any:
    return json.loads(vm.exec(["amber", "livepatch", *args, "--json"]).out)


def module_loaded(vm: VM, name: str) -> bool:
    return bool(vm.exec(["test", "-d", f"/sys/module/{name}"], check=False).code == 0)


def test_load_replace_unload(vm: VM, guest_modules: dict[str, str]) -> None:
    original = cmdline(vm)
    assert MARKER not in original

    vm.exec(["amber", "livepatch", "load", guest_modules["v1"]])
    assert cmdline(vm) == f"{original} {MARKER}v1"
    listing = livepatch_json(vm, "list")
    assert [(p["name"], p["enabled"], p["transition"]) for p in listing["patches"]] == [
        ("amber_lp_v1", True, False)]
    status = livepatch_json(vm, "status")
    assert status["state"] == "ready"
    assert "K" in [flag["letter"] for flag in status["taint_flags"]]

    vm.exec(["amber", "livepatch", "load", guest_modules["v2"]])
    assert cmdline(vm) == f"{original} {MARKER}v2"
    listing = livepatch_json(vm, "list")
    assert [p["name"] for p in listing["patches"]] == ["amber_lp_v2"]
    assert listing["replaced"] == []
    assert not module_loaded(vm, "amber_lp_v1")

    vm.exec(["amber", "livepatch", "unload", "amber_lp_v2"])
    assert cmdline(vm) == original
    assert not module_loaded(vm, "amber_lp_v2")
    assert livepatch_json(vm, "list") == {"patches": [], "replaced": []}


def test_stalled_transition_is_reversed(vm: VM, guest_modules: dict[str, str]) -> None:
    """A task asleep in pause() holds up a patch of pause(2): a real stalled transition. amber
    gives up after --timeout, reverses it, unloads the module and names the task."""
    pid = vm.exec(["sh", "-c", "python3 -c 'import signal; signal.pause()' >/dev/null 2>&1 & "
                   "echo $!"]).out.strip()
    try:
        result = vm.exec(["amber", "livepatch", "load", guest_modules["stall"], "--timeout",
                          "4"], check=False)
        assert result.code == ExitCode.TRANSITION_TIMEOUT, result.err
        assert "did not finish in 4 s and was reversed" in result.err
        assert f"python3 (pid {pid})" in result.err
        assert not module_loaded(vm, "amber_lp_stall")
        assert livepatch_json(vm, "list") == {"patches": [], "replaced": []}
        assert "unpatching complete" in vm.exec(["dmesg"]).out
    finally:
        vm.exec(["sh", "-c", f"kill {pid}"], check=False)
    # Nothing is left behind: with the sleeper gone the same module loads and unloads.
    vm.exec(["amber", "livepatch", "load", guest_modules["stall"], "--timeout", "30"])
    assert livepatch_json(vm, "status")["state"] == "ready"
    vm.exec(["amber", "livepatch", "unload", "amber_lp_stall"])
    assert not module_loaded(vm, "amber_lp_stall")


def test_compressed_module_loads(vm: VM, guest_modules: dict[str, str]) -> None:
    vm.exec(["amber", "livepatch", "load", guest_modules["v1.xz"]])
    assert cmdline(vm).endswith(f"{MARKER}v1")
    vm.exec(["amber", "livepatch", "unload", "amber_lp_v1"])
    assert MARKER not in cmdline(vm)


def test_refused_before_loading(vm: VM, guest_modules: dict[str, str]) -> None:
    result = vm.exec(["amber", "livepatch", "load", guest_modules["elsewhere"]], check=False)
    assert result.code == ExitCode.INCOMPATIBLE
    assert "built for kernel" in result.err
    result = vm.exec(["amber", "livepatch", "load", guest_modules["plain"]], check=False)
    assert result.code == ExitCode.INCOMPATIBLE
    assert "not a live patch" in result.err
    assert not module_loaded(vm, "amber_lp_v1")
    assert not module_loaded(vm, "amber_plain")


def test_disabled_refuses(vm: VM, guest_modules: dict[str, str]) -> None:
    vm.exec(["amber", "livepatch", "disable"])
    try:
        result = vm.exec(["amber", "livepatch", "load", guest_modules["v1"]], check=False)
        assert result.code == ExitCode.LIVEPATCH_DISABLED
        assert "amber livepatch enable" in result.err
    finally:
        vm.exec(["amber", "livepatch", "enable"])


def test_signature_enforced_by_the_kernel(tmp_path_factory: pytest.TempPathFactory,
                                          vm: VM) -> None:
    """A second boot with module.sig_enforce=1 (the first VM stops to free memory)."""
    release = vm.kernel_release()
    vm.stop()
    built = build.build_modules(release, REPO / ".cache" / "modules")
    keys = tmp_path_factory.mktemp("vm-key")
    key, cert = build.make_signing_key(keys, "amber key the kernel does not know")
    signed = build.sign(built["amber_lp_v1"], key, cert, keys / "amber_lp_v1.ko")
    for enforcing in booted_vm(tmp_path_factory):
        boot_with_kernel_args(enforcing, "module.sig_enforce=1")
        enforcing.put(built["amber_lp_v1"], "/root/unsigned.ko")
        enforcing.put(signed, "/root/signed.ko")
        enforcing.exec(["amber", "livepatch", "enable"])
        status = json.loads(enforcing.exec(["amber", "livepatch", "status", "--json"]).out)
        assert status["sig_enforce"] is True
        # Unsigned: amber's preflight knows the kernel would refuse.
        result = enforcing.exec(["amber", "livepatch", "load", "/root/unsigned.ko"], check=False)
        assert result.code == ExitCode.SIGNATURE
        assert "signature rejected" in result.err
        # Signed by a key outside the kernel's keyring: the kernel itself refuses.
        result = enforcing.exec(["amber", "livepatch", "load", "/root/signed.ko"], check=False)
        assert result.code == ExitCode.KERNEL_REFUSED
        assert "signature rejected" in result.err
        assert MARKER not in str(enforcing.exec(["cat", "/proc/cmdline"]).out)

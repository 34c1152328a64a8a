"""Boot health on a real VM booted through UEFI firmware and GRUB (images amber builds have
[health] enabled): a good trial ends good, a power cut in a trial boot costs one attempt, and
every way a trial boot can fail — a failing check, a kernel that panics before userspace, a boot
that never completes (the deadline) — brings the last good snapshot back as the default, says
why, and never loops: when the fallback is not healthy either, the machine stops.

One VM for the module, the tests in order (each starts from the previous one's end). The first
transaction sets [health] tries = 1 for the snapshots after it, so each failure costs one
attempt."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from amber.errors import AmberError, ExitCode
from testing.modules import build
from testing.vm import VM
from tests.vm.conftest import amber_status

pytestmark = pytest.mark.vm
REPO = Path(__file__).resolve().parents[2]

CHECK = r"""#!/bin/sh
# amber's VM tests: fail where /var/lib/amber-test/fail says (a snapshot number, or "all").
want=$(cat /var/lib/amber-test/fail 2>/dev/null) || exit 0
[ "$want" = all ] && { echo "made to fail everywhere"; exit 1; }
options=$(findmnt -no OPTIONS /)
me=$(echo "$options" | tr , '\n' | sed -n 's|^subvol=/*@/.snapshots/\([0-9]*\)/snapshot$|\1|p')
[ "$me" != "$want" ] || { echo "snapshot $me is made to fail"; exit 1; }
"""
CONFIG = "[health]\nenabled = true\ntries = 1\n"
BLOCKER = """[Unit]
Description=A check that never finishes (amber VM tests; no quote: sh -c quotes it)
Before=boot-complete.target
[Service]
Type=oneshot
ExecStart=/bin/sleep infinity
[Install]
RequiredBy=boot-complete.target
"""


def settle(vm: VM) -> None:
    vm.exec(["systemctl", "is-system-running", "--wait"], check=False, timeout=600)


def eventually(vm: VM, what: str, predicate: Callable[[dict[str, Any]], bool],
               timeout: float = 900) -> dict[str, Any]:
    """amber status of the VM once predicate holds, across the reboots the guest makes by
    itself (the agent is away while it reboots)."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(AmberError, OSError, ConnectionError, ValueError):
            # A bounded call: while the guest reboots, qemu accepts for the agent regardless.
            last = json.loads(vm.exec(["amber", "status", "--json"], timeout=60).out)
            if predicate(last):
                return last
        time.sleep(3)
    raise AssertionError(f"the VM never got to: {what}; last status: {json.dumps(last)}")


def transaction(vm: VM, script: str) -> int:
    vm.exec(["amber", "run", "--", "sh", "-c", script], timeout=900)
    return int(amber_status(vm)["default"])


def trigger_reboot(vm: VM) -> None:
    with contextlib.suppress(AmberError, OSError, ConnectionError):
        vm.exec(["systemctl", "reboot"], check=False, timeout=30)


def test_a_good_trial_survives_a_power_cut(vm: VM) -> None:
    settle(vm)
    script = ("mkdir -p /etc/amber/health.d /var/lib/amber-test && "
              f"printf '%s' '{CONFIG}' > /etc/amber/amber.conf && "
              f"cat > /etc/amber/health.d/50-test <<'EOF'\n{CHECK}EOF\n"
              "chmod +x /etc/amber/health.d/50-test")
    number = transaction(vm, script)  # on trial with the running system's tries: 2
    assert amber_status(vm)["reboot"]["needed"]
    mark = vm.console_size()
    trigger_reboot(vm)
    vm.wait_console(f"amber: trial boot of snapshot {number}, 1 more after this", timeout=600,
                    since=mark)
    mark = vm.console_size()
    vm.powercut()  # the attempt is spent: GRUB saved it before the kernel got control
    assert f"amber: trial boot of snapshot {number}, 0 more after this" in vm.console_text(mark)
    st = eventually(vm, f"snapshot {number} booted and good",
                    lambda s: s["booted"] == number and s["health"] == "good")
    assert st["last_rollback"] is None and st["default"] == number
    rows = json.loads(vm.exec(["amber", "snapshots", "--json"]).out)
    assert {r["number"]: r["health"] for r in rows}[number] == "good"
    assert "amber_trial" not in vm.exec(["cat", "/.snapshots/.amber/menu.cfg"]).out


def test_a_failing_check_rolls_back(vm: VM) -> None:
    good = amber_status(vm)["booted"]
    bad = transaction(vm, "true")
    vm.exec(["sh", "-c", f"echo {bad} > /var/lib/amber-test/fail"])
    trigger_reboot(vm)
    st = eventually(vm, f"snapshot {bad} rolled back to {good}",
                    lambda s: (s["last_rollback"] or {}).get("from") == bad
                    and s["booted"] == good)
    assert st["default"] == good and st["last_rollback"]["reason"] == "health-check"
    assert st["last_rollback"]["detail"] == f"50-test: snapshot {bad} is made to fail"
    log = vm.exec(["cat", st["last_rollback"]["log"]]).out
    assert f"snapshot {bad} is made to fail" in log
    settle(vm)
    assert "failed its trial boot" in vm.exec(["cat", "/run/motd.d/amber"]).out
    assert "last automatic rollback" in vm.exec(["amber", "status"]).out
    assert vm.exec(["amber", "rollback", str(bad)], check=False).code == 6
    vm.exec(["rm", "/var/lib/amber-test/fail"])


def test_a_kernel_that_panics_falls_back(vm: VM) -> None:
    """An initrd that is garbage: the kernel cannot find its root and panics (panic=5 reboots);
    GRUB counted the attempt before, so the next boot is the last good snapshot's."""
    good = amber_status(vm)["booted"]
    bad = transaction(vm, "head -c 65536 /dev/urandom > /boot/initrd.img-$(uname -r)")
    mark = vm.console_size()
    trigger_reboot(vm)
    # The fallback boot moves the default back a moment after the agent answers: wait for both.
    st = eventually(vm, f"GRUB fell back from {bad} to {good}",
                    lambda s: (s["last_rollback"] or {}).get("from") == bad
                    and s["booted"] == good and s["default"] == good, timeout=1200)
    assert st["last_rollback"]["reason"] == "boot-failed"
    console = vm.console_text(mark)
    assert "Kernel panic" in console
    assert f"amber: trial boot of snapshot {bad}" in console
    assert f"used up its trial boots: booting snapshot {good}" in console
    rows = json.loads(vm.exec(["amber", "snapshots", "--json"]).out)
    assert {r["number"]: r["health"] for r in rows}[bad] == "bad"


def test_a_boot_that_never_completes_times_out(vm: VM) -> None:
    good = amber_status(vm)["booted"]
    unit = "/etc/systemd/system/amber-test-block.service"
    # This snapshot's own amber.conf gives its boot 40 s (a healthy boot here takes longer).
    config = "[health]\\nenabled = true\\ntries = 1\\ntimeout = 40\\n"
    requires = "/etc/systemd/system/boot-complete.target.requires"
    bad = transaction(vm, f"printf '{config}' > /etc/amber/amber.conf && "
                          f"printf '%s' '{BLOCKER}' > {unit} && mkdir -p {requires} && "
                          f"ln -s {unit} {requires}/")
    trigger_reboot(vm)
    st = eventually(vm, f"snapshot {bad} timed out", lambda s: (s["last_rollback"] or {}).get(
        "from") == bad and s["booted"] == good and s["default"] == good, timeout=1200)
    assert st["last_rollback"]["reason"] == "timeout"


def test_a_live_patch_whose_checks_fail_is_withdrawn(vm: VM) -> None:
    """apply runs the checks with the patch active: one fails, so the patch leaves the running
    kernel and its snapshot is withdrawn."""
    release = vm.kernel_release()
    built = build.build_modules(release, REPO / ".cache" / "modules")
    vm.put(built["amber_lp_v1"], "/root/amber_lp_v1.ko")
    vm.exec(["amber", "livepatch", "enable"])
    before = (amber_status(vm)["default"], vm.exec(["amber", "snapshots", "--json"]).out)
    vm.exec(["sh", "-c", "printf '#!/bin/sh\\necho the service is down\\nexit 1\\n' > "
                         "/etc/amber/health.d/60-down && chmod +x /etc/amber/health.d/60-down"])
    result = vm.exec(["amber", "livepatch", "apply", "/root/amber_lp_v1.ko"], check=False,
                     timeout=1800)
    vm.exec(["rm", "/etc/amber/health.d/60-down"])
    assert result.code == ExitCode.STEP_FAILED, result.err
    assert "60-down: the service is down" in result.err and "was reverted" in result.err
    assert vm.exec(["test", "-d", "/sys/module/amber_lp_v1"], check=False).code != 0
    assert "amber-livepatch-" not in vm.exec(["cat", "/proc/cmdline"]).out
    assert (amber_status(vm)["default"], vm.exec(["amber", "snapshots", "--json"]).out) == before


def test_when_the_fallback_is_bad_too_it_stops(vm: VM) -> None:
    good = amber_status(vm)["booted"]
    bad = transaction(vm, "true")
    vm.exec(["sh", "-c", "echo all > /var/lib/amber-test/fail"])
    mark = vm.console_size()
    trigger_reboot(vm)
    vm.wait_console(r"is not healthy either", timeout=900, since=mark)
    stopped = vm.console_size()
    time.sleep(20)  # no further boot: no GRUB menu, no kernel after the stop
    after = vm.console_text(stopped)
    assert "amber: booting snapshot" not in after and "Linux version" not in after
    assert f"snapshot {good}, the fallback after snapshot {bad}" in vm.console_text(mark)

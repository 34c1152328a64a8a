#!/usr/bin/env python3
"""How long `amber livepatch apply` takes from start to an active patch, split into preflight,
transaction, initrd and load: with the patch appended to the initrd (the default) and with the
initrd regenerated in full (--rebuild-initrd), side by side with a bare `insmod` of the same
module, in one run in the test VM.

    bench/livepatch_apply.py [--state DIR]

Boots a fresh test VM (the harness in testing/vm.py), builds amber's test live patch for its
kernel, packages it as an .rpm, and measures inside the guest: insmod (then unloaded), apply
(appended), rollback to snapshot 1 with the patch reverted, apply --rebuild-initrd."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]

from testing.livepatch_packages import build_livepatch_rpm  # noqa: E402
from testing.modules import build  # noqa: E402
from testing.vm import VM, default_state  # noqa: E402


def guest_seconds(vm: VM, argv: list[str], timeout: float = 1800) -> tuple[float, str]:
    """Wall time of argv in the guest, measured by the guest's own clock."""
    script = ('start=$(date +%s.%N); "$@" >/tmp/bench.out 2>/tmp/bench.err; code=$?; '
              'end=$(date +%s.%N); echo "$start $end $code"')
    result = vm.exec(["sh", "-c", script, "sh", *argv], timeout=timeout)
    start, end, code = result.out.split()
    if code != "0":
        err = vm.exec(["cat", "/tmp/bench.err"]).out
        raise SystemExit(f"{' '.join(argv)} failed in the VM ({code}):\n{err}")
    return float(end) - float(start), vm.exec(["cat", "/tmp/bench.out"]).out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=Path, default=Path(tempfile.mkdtemp(prefix="amber-bench-")))
    args = parser.parse_args()
    vm = VM(state=args.state, cache=default_state() / "cache")
    release = vm.kernel_release()
    built = build.build_modules(release, REPO / ".cache" / "modules")
    rpm = build_livepatch_rpm(args.state, release, built["amber_lp_v1"], "1")
    vm.start()
    try:
        vm.put(built["amber_lp_v1"], "/root/amber_lp_v1.ko")
        vm.put(rpm, "/root/livepatch.rpm")
        vm.exec(["amber", "livepatch", "enable"])

        insmod, _ = guest_seconds(vm, ["insmod", "/root/amber_lp_v1.ko"])
        # Wait for the transition as apply does, then remove it again.
        began = time.monotonic()
        while vm.exec(["cat", "/sys/kernel/livepatch/amber_lp_v1/transition"]).out.strip() != "0":
            time.sleep(0.2)
        settle = time.monotonic() - began
        vm.exec(["amber", "livepatch", "unload", "amber_lp_v1"])

        runs = {}
        for label, extra in (("appended", []), ("regenerated", ["--rebuild-initrd"])):
            total, out = guest_seconds(vm, ["amber", "livepatch", "apply", *extra,
                                            "/root/livepatch.rpm", "--json"])
            outcome = json.loads(out)
            assert outcome["initrd"] == label, outcome
            runs[label] = (total, outcome["timings"])
            vm.exec(["amber", "rollback", "1", "--revert-livepatches"])
    finally:
        vm.stop()
    print(f"kernel {release}, VM under TCG (qemu -accel tcg), one run each")
    print(f"{'':<48} {'appended':>10} {'regenerated':>12}")
    (fast, fast_t), (full, full_t) = runs["appended"], runs["regenerated"]
    print(f"{'amber livepatch apply (start to active patch)':<48} {fast:9.2f}s {full:11.2f}s")
    for part in ("preflight", "transaction", "initrd", "load", "health"):
        print(f"  {part:<46} {fast_t.get(part, 0.0):9.2f}s {full_t.get(part, 0.0):11.2f}s")
    for label, (total, timings) in runs.items():
        runs[label] = (total - sum(timings.values()), timings)
    print(f"  {'(python start, snapshot close, other)':<46} {runs['appended'][0]:9.2f}s "
          f"{runs['regenerated'][0]:11.2f}s")
    print(f"{'bare insmod of the same module':<48} {insmod:9.2f}s")
    print(f"  {'+ transition settled (seen from the host)':<46} {settle:9.2f}s")
    floor = fast - fast_t["initrd"]  # the same apply with nothing done to the initrd
    print(f"apply (appended) / the same without the initrd step: {fast / floor:.2f}x "
          "(target <= 1.2x)")
    print(f"initrd step, appended / regenerated: {fast_t['initrd']:.2f} s / "
          f"{full_t['initrd']:.2f} s (target <= 2 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Boot to a ready test agent through firmware (UEFI with OVMF, BIOS with SeaBIOS) and GRUB,
side by side with a direct kernel boot (qemu -kernel, the same kernel, initrd and command line
as the menu's default entry), in one run on the same machine state.

    bench/boot.py [--runs N] [--state DIR]

Each run boots a fresh copy of the test image once per mode, then reboots it once from inside
(`systemctl reboot`); the median of each column is printed with its ratio to direct."""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]

from testing.vm import VM, Firmware, default_state  # noqa: E402

MODES = (Firmware.DIRECT, Firmware.UEFI, Firmware.BIOS)


def measure(vm: VM, firmware: Firmware) -> tuple[float, float]:
    """Seconds to the agent from power-on, and from a guest's own reboot."""
    try:
        cold = vm.start(firmware)
        warm = vm.reboot()
    finally:
        vm.stop()
    return cold, warm


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--state", type=Path,
                        default=Path(tempfile.mkdtemp(prefix="amber-bench-boot-")))
    args = parser.parse_args()
    vm = VM(state=args.state, cache=default_state() / "cache")
    vm.build()
    results: dict[Firmware, list[tuple[float, float]]] = {mode: [] for mode in MODES}
    for _ in range(args.runs):
        for mode in MODES:  # interleaved: a change in the machine's load hits every mode
            results[mode].append(measure(vm, mode))
    base_cold = statistics.median(c for c, _ in results[Firmware.DIRECT])
    base_warm = statistics.median(w for _, w in results[Firmware.DIRECT])
    print(f"{'boot to ready agent':<22}{'power-on':>10}{'ratio':>8}{'reboot':>10}{'ratio':>8}")
    for mode in MODES:
        cold = statistics.median(c for c, _ in results[mode])
        warm = statistics.median(w for _, w in results[mode])
        print(f"{mode!s:<22}{cold:>9.1f}s{cold / base_cold:>7.2f}x"
              f"{warm:>9.1f}s{warm / base_warm:>7.2f}x")
    print(f"({args.runs} run(s), median; qemu TCG, {vm.state})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

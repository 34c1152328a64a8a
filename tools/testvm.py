#!/usr/bin/env python3
"""The test VM from the command line: build, start, exec, put, get, reboot, powercut, stop.

State lives in $AMBER_TESTVM_STATE (default /var/tmp/amber-testvm)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]

from amber import log  # noqa: E402
from amber.log import AmberError  # noqa: E402
from testing.vm import VM, Firmware, default_state  # noqa: E402

# Single bytes: GRUB reads a split escape sequence (an arrow key) as a lone ESC.
KEYS = {"down": b"\x0e", "up": b"\x10", "enter": b"\r"}


def main() -> int:
    parser = argparse.ArgumentParser(prog="tools/testvm", description=__doc__)
    parser.add_argument("--state", type=Path, default=default_state(),
                        help="state folder (default: $AMBER_TESTVM_STATE or "
                             "/var/tmp/amber-testvm)")
    sub = parser.add_subparsers(dest="verb", required=True)
    sub.add_parser("build", help="build or reuse the test image; print its path")
    p = sub.add_parser("start", help="boot a fresh copy of the test image through firmware")
    p.add_argument("--firmware", choices=[str(f) for f in Firmware], default=str(Firmware.UEFI),
                   help="uefi (OVMF), bios (SeaBIOS), or direct (qemu loads the default "
                        "entry's kernel: no firmware, no GRUB; for benchmarks) (default: uefi)")
    p = sub.add_parser("exec", help="run a command in the VM as root")
    p.add_argument("--timeout", type=float, default=None)
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARG...]")
    p = sub.add_parser("put", help="copy a file into the VM")
    p.add_argument("local", type=Path)
    p.add_argument("remote")
    p = sub.add_parser("get", help="copy a file out of the VM")
    p.add_argument("remote")
    p.add_argument("local", type=Path)
    sub.add_parser("reboot", help="systemctl reboot in the guest; wait for the new boot")
    sub.add_parser("powercut", help="kill the VM like a power failure, then power it on again")
    p = sub.add_parser("keys", help="type on the serial console (GRUB's menu), key by key")
    p.add_argument("keys", nargs="+", help="down, up, enter, or text")
    p.add_argument("--pause", type=float, default=1.0, help="seconds after each key")
    sub.add_parser("console", help="print the console log of every boot since start")
    sub.add_parser("stop", help="stop the VM")
    sub.add_parser("kernel-release", help="print the test image's kernel release")
    args = parser.parse_args()
    vm = VM(args.state)
    try:
        if args.verb == "build":
            print(vm.build())
        elif args.verb == "start":
            vm.start(Firmware(args.firmware))
        elif args.verb == "exec":
            command = args.command[1:] if args.command[:1] == ["--"] else args.command
            if not command:
                parser.error("exec needs a command: exec -- CMD [ARG...]")
            sys.stdout.flush()
            return vm.exec(command, check=False, timeout=args.timeout, relay=True).code
        elif args.verb == "put":
            vm.put(args.local, args.remote)
        elif args.verb == "get":
            vm.get(args.remote, args.local)
        elif args.verb == "reboot":
            vm.reboot()
        elif args.verb == "powercut":
            vm.powercut()
        elif args.verb == "keys":
            vm.send_keys([KEYS.get(key, key) for key in args.keys], pause=args.pause)
        elif args.verb == "console":
            sys.stdout.write(vm.console_text())
        elif args.verb == "stop":
            vm.stop()
        elif args.verb == "kernel-release":
            print(vm.kernel_release())
    except AmberError as e:
        log.error(e)
        return int(e.code)
    return 0


if __name__ == "__main__":
    sys.exit(main())

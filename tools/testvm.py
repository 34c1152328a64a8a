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
from testing.vm import VM, default_state  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(prog="tools/testvm", description=__doc__)
    parser.add_argument("--state", type=Path, default=default_state(),
                        help="state folder (default: $AMBER_TESTVM_STATE or "
                             "/var/tmp/amber-testvm)")
    sub = parser.add_subparsers(dest="verb", required=True)
    sub.add_parser("build", help="build or reuse the test image; print its path")
    p = sub.add_parser("start", help="boot a fresh copy of the test image")
    p.add_argument("--append", default="", help="extra kernel command-line arguments")
    p = sub.add_parser("exec", help="run a command in the VM as root")
    p.add_argument("--timeout", type=float, default=None)
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARG...]")
    p = sub.add_parser("put", help="copy a file into the VM")
    p.add_argument("local", type=Path)
    p.add_argument("remote")
    p = sub.add_parser("get", help="copy a file out of the VM")
    p.add_argument("remote")
    p.add_argument("local", type=Path)
    sub.add_parser("reboot", help="power off cleanly and boot the default snapshot")
    sub.add_parser("powercut", help="kill the VM like a power failure, then boot again")
    sub.add_parser("stop", help="stop the VM")
    sub.add_parser("kernel-release", help="print the test image's kernel release")
    args = parser.parse_args()
    vm = VM(args.state)
    try:
        if args.verb == "build":
            print(vm.build())
        elif args.verb == "start":
            vm.start(args.append)
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

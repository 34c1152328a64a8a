"""A VM harness for tests, the demo and people: boot an amber image in qemu and talk to it.

The harness is the bootloader, as SUSE's GRUB is: before each boot it reads the kernel, the
initrd and /etc/kernel/cmdline of the *default* snapshot from the stopped disk, and boots them
with no subvol= on the command line, so the kernel mounts the default subvolume.

The host talks to a small agent in the guest (testing/agent.py, copied into test images only,
never into a user image) over qemu's user network, forwarded from 127.0.0.1 only. One TCP
connection runs one command; frames carry stdin, stdout, stderr and the exit code, binary-safe.

Everything lives in a state folder: the cached images, the running disk (a sparse copy of the
image: the host filesystem may have no reflinks, and the harness must read the disk between
boots), the boot files, the console log of the current boot and vm.json (qemu's pid, the port).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from amber.log import AmberError, ExitCode, die, step
from testing.agent import AGENT_PORT, MAGIC, recv_frame

AGENT_UNIT = "amber-test-agent.service"
AGENT_PATH = "/usr/lib/amber-test/agent.py"
BOOT_TIMEOUT = float(os.environ.get("AMBER_TESTVM_BOOT_TIMEOUT", "300"))
MEMORY = os.environ.get("AMBER_TESTVM_MEMORY", "1024")
CPUS = os.environ.get("AMBER_TESTVM_CPUS", "2")
IMAGE_SIZE = 4 << 30


def default_state() -> Path:
    return Path(os.environ.get("AMBER_TESTVM_STATE", "/var/tmp/amber-testvm"))


# ---- the test image ------------------------------------------------------------------------

def test_image_files() -> tuple[Any, ...]:
    """What only the test image has: the agent's service and a static address for it."""
    from amber.image import ExtraFile

    unit = f"""\
[Unit]
Description=amber test agent (test images only)
After=local-fs.target

[Service]
ExecStart=/usr/bin/python3 {AGENT_PATH}
Restart=always

[Install]
WantedBy=multi-user.target
"""
    network = """\
[Match]
Type=ether

[Network]
Address=10.0.2.15/24
Gateway=10.0.2.2
LinkLocalAddressing=no
"""
    # Under TCG every module load costs (each is signature-checked): skip what a VM never uses.
    blacklist = "".join(f"blacklist {name}\n" for name in (
        "floppy", "kvm", "kvm_amd", "kvm_intel", "cfg80211", "psmouse", "pcspkr", "serio_raw",
        "ccp", "i2c_piix4"))
    wants = "/etc/systemd/system/multi-user.target.wants"
    return (
        # amber's package leaves this module out: the agent is added to test images only.
        ExtraFile("/etc/modprobe.d/amber-test-vm.conf", blacklist),
        ExtraFile(AGENT_PATH, (Path(__file__).parent / "agent.py").read_text(), mode=0o755),
        ExtraFile(f"/etc/systemd/system/{AGENT_UNIT}", unit),
        ExtraFile(f"{wants}/{AGENT_UNIT}", link_to=f"/etc/systemd/system/{AGENT_UNIT}"),
        ExtraFile("/etc/systemd/network/10-amber-test.network", network),
        ExtraFile(f"{wants}/systemd-networkd.service",
                  link_to="/lib/systemd/system/systemd-networkd.service"),
    )


# ---- the host side -------------------------------------------------------------------------

@dataclass(frozen=True)
class ExecResult:
    argv: tuple[str, ...]
    code: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False

    @property
    def out(self) -> str:
        return self.stdout.decode(errors="replace")

    @property
    def err(self) -> str:
        return self.stderr.decode(errors="replace")


class GuestCommandFailed(AmberError):
    def __init__(self, result: ExecResult):
        self.result = result
        what = "timed out" if result.timed_out else f"failed with exit code {result.code}"
        tail = result.err.strip().splitlines()[-3:]
        super().__init__(f"in the VM, {' '.join(result.argv)} {what}"
                         + (": " + " | ".join(tail) if tail else ""),
                         code=ExitCode.STEP_FAILED)


@dataclass(frozen=True)
class BootFiles:
    kernel: Path
    initrd: Path
    cmdline: str
    default: str  # the default subvolume's path, e.g. @/.snapshots/1/snapshot


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _resolve_in(root: Path, link: Path) -> Path:
    """Follow a symbolic link inside root as if root were /."""
    path = link
    for _ in range(10):
        if not path.is_symlink():
            return path
        target = Path(os.readlink(path))
        path = root / target.relative_to("/") if target.is_absolute() else path.parent / target
    die(f"too many symbolic links at {link}")


def read_boot_files(disk: Path, dest: Path) -> BootFiles:
    """Copy the default snapshot's kernel and initrd out of a stopped disk, as GRUB reads them."""
    from amber import btrfs
    from amber.image import IMAGE_INFO_PATH, attached, mounted

    dest.mkdir(parents=True, exist_ok=True)
    # nologreplay: a disk after a power cut is read as it is, without changing it.
    with attached(disk, read_only=True) as device, mounted(device, "ro,rescue=nologreplay") as root:
        kernel = _resolve_in(root, root / "vmlinuz")
        initrd = _resolve_in(root, root / "initrd.img")
        if not kernel.is_file() or not initrd.is_file():
            die(f"the default snapshot of {disk} has no /vmlinuz or /initrd.img",
                hint="the default snapshot is not bootable; rebuild the image",
                code=ExitCode.NOT_FOUND)
        cmdline_file = root / "etc/kernel/cmdline"
        if cmdline_file.is_file():
            cmdline = cmdline_file.read_text().strip()
        else:
            cmdline = json.loads((root / IMAGE_INFO_PATH).read_text())["cmdline"]
        default = btrfs.subvolume_path(root)
        shutil.copyfile(kernel, dest / "vmlinuz")
        shutil.copyfile(initrd, dest / "initrd.img")
    return BootFiles(dest / "vmlinuz", dest / "initrd.img", cmdline, default)


def console_tail(log: Path, lines: int = 25) -> str:
    try:
        text = log.read_bytes().decode(errors="replace")
    except OSError:
        return "(no console log)"
    return "\n".join(text.replace("\r", "").splitlines()[-lines:])


class VM:
    def __init__(self, state: Path | None = None, cache: Path | None = None):
        self.state = (state or default_state()).absolute()
        self.cache = (cache or self.state / "cache").absolute()
        self.disk = self.state / "disk.raw"
        self.console = self.state / "console.log"
        self.state_file = self.state / "vm.json"

    # -- image --

    def image_spec(self) -> Any:
        from amber.image import ImageSpec

        return ImageSpec(size=IMAGE_SIZE, extra_files=test_image_files())

    def build(self) -> Path:
        """The test image, built or reused from the cache keyed by its inputs."""
        from amber import image

        spec = self.image_spec()
        deb = self.amber_package()
        key = image.image_key(spec, image.apt_sources_text(), deb)
        path = self.cache / f"test-{key}.raw"
        if path.exists() and image.info_path(path).exists():
            return path
        for old in self.cache.glob("test-*.raw*"):
            old.unlink()
        image.build(path, spec, cache_dir=self.cache, amber_deb=deb)
        return path

    def amber_package(self) -> Path:
        """amber's .deb, built from this checkout by tools/package (reproducible: the same
        sources give the same file, and so the same image key)."""
        self.cache.mkdir(parents=True, exist_ok=True)
        repo = Path(__file__).resolve().parents[1]
        # In this VM's own state folder: the cache is shared with other checkouts.
        result = subprocess.run([str(repo / "tools/package"), "--output", str(self.state / "dist")],
                                capture_output=True, text=True)
        if result.returncode != 0:
            die(f"tools/package failed: {result.stderr.strip()}", code=ExitCode.ENVIRONMENT)
        return Path(result.stdout.strip())

    def kernel_release(self) -> str:
        from amber import image

        return image.read_info(self.build()).kernel_release

    # -- state --

    def _load(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.state_file.read_text()))
        except (OSError, ValueError):
            return {}

    def _save(self, data: dict[str, Any]) -> None:
        self.state_file.write_text(json.dumps(data, indent=2) + "\n")

    def _pid(self) -> int | None:
        pid = self._load().get("pid")
        if not isinstance(pid, int):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return pid if str(self.disk).encode() in cmdline else None

    def running(self) -> bool:
        return self._pid() is not None

    def _port(self) -> int:
        port = self._load().get("port")
        if not isinstance(port, int) or not self.running():
            die("the test VM is not running", hint="start it with 'tools/testvm start'",
                code=ExitCode.NOT_FOUND)
        return port

    # -- lifecycle --

    def start(self, append: str = "") -> float:
        """Boot a fresh copy of the test image; returns the seconds until the agent answered."""
        image = self.build()
        self.kill()
        self.state.mkdir(parents=True, exist_ok=True)
        step("Copying the test image")
        self.disk.unlink(missing_ok=True)
        subprocess.run(["cp", "--sparse=always", str(image), str(self.disk)], check=True)
        self._save({"append": append})
        return self._boot()

    def _boot(self) -> float:
        data = self._load()
        boot = read_boot_files(self.disk, self.state / "boot")
        cmdline = f"{boot.cmdline} {data.get('append', '')}".strip()
        port = free_port()
        argv = ["qemu-system-x86_64", "-accel", "tcg", "-machine", "q35", "-m", MEMORY,
                "-smp", CPUS,
                "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                "-kernel", str(boot.kernel), "-initrd", str(boot.initrd), "-append", cmdline,
                "-drive", f"file={self.disk},format=raw,if=virtio,cache=unsafe",
                "-netdev", f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:{AGENT_PORT}",
                "-device", "virtio-net-pci,netdev=net0",
                "-serial", f"file:{self.console}"]
        step(f"Booting {boot.default} (kernel command line: {cmdline})")
        with open(self.state / "qemu.log", "wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    start_new_session=True)
        began = time.monotonic()
        data.update(pid=proc.pid, port=port, booted=boot.default, cmdline=cmdline)
        self._save(data)
        self._wait_ready(proc, port)
        seconds = time.monotonic() - began
        step(f"The VM is ready after {seconds:.1f} s")
        return seconds

    def _wait_ready(self, proc: subprocess.Popen[bytes], port: int) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                qemu = (self.state / "qemu.log").read_text(errors="replace").strip()
                die(f"the VM stopped while booting (qemu exit code {proc.returncode}"
                    + (f": {qemu}" if qemu else "") + "); console:\n"
                    + console_tail(self.console), hint=f"full console log: {self.console}",
                    code=ExitCode.ENVIRONMENT)
            with contextlib.suppress(OSError, ConnectionError, ValueError):
                if self._call(port, ["true"], None, b"", None, 5.0).code == 0:
                    return
            time.sleep(1)
        self.kill()
        die(f"the VM did not become ready within {BOOT_TIMEOUT:.0f} s; console:\n"
            + console_tail(self.console), hint=f"full console log: {self.console}",
            code=ExitCode.ENVIRONMENT)

    def kill(self) -> None:
        pid = self._pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        self._wait_exit(pid, 30)

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if not Path(f"/proc/{pid}").exists():
                return True
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        """Stop the VM and drop its disk (every start boots a fresh copy of the image)."""
        self.kill()
        self.disk.unlink(missing_ok=True)

    def reboot(self) -> float:
        """Power the guest off cleanly, then boot the (possibly new) default snapshot."""
        pid = self._pid()
        if pid is None:
            die("the test VM is not running", hint="start it with 'tools/testvm start'",
                code=ExitCode.NOT_FOUND)
        step("Powering the VM off")
        with contextlib.suppress(AmberError, OSError, ConnectionError):
            self.exec(["systemctl", "poweroff"], check=False, timeout=30)
        if not self._wait_exit(pid, 120):
            self.kill()
            die("the VM did not power off within 120 s; it was killed", hint=(
                f"see the console log {self.console}"), code=ExitCode.ENVIRONMENT)
        return self._boot()

    def powercut(self) -> float:
        """Kill qemu as a power failure would, then boot again."""
        if self._pid() is None:
            die("the test VM is not running", hint="start it with 'tools/testvm start'",
                code=ExitCode.NOT_FOUND)
        step("Cutting the power")
        self.kill()
        return self._boot()

    # -- commands --

    def exec(self, argv: Sequence[str], check: bool = True, timeout: float | None = None,
             input: bytes | str | None = None, relay: bool = False) -> ExecResult:
        """Run argv as root in the guest. With relay, its output also goes to ours as it comes."""
        data = input.encode() if isinstance(input, str) else (input or b"")
        sinks = (sys.stdout.buffer, sys.stderr.buffer) if relay else None
        try:
            result = self._call(self._port(), list(argv), timeout, data, sinks, None)
        except (OSError, ConnectionError) as e:
            raise AmberError(f"lost the connection to the VM while running {' '.join(argv)}: "
                             f"{e}", hint=f"see the console log {self.console}",
                             code=ExitCode.ENVIRONMENT) from e
        if check and result.code != 0:
            raise GuestCommandFailed(result)
        return result

    def _call(self, port: int, argv: list[str], timeout: float | None, stdin: bytes,
              sinks: tuple[BinaryIO, BinaryIO] | None, connect_timeout: float | None
              ) -> ExecResult:
        with socket.create_connection(("127.0.0.1", port), timeout=connect_timeout) as sock:
            sock.settimeout(connect_timeout if connect_timeout else
                            (timeout + 60 if timeout else None))
            header = json.dumps({"argv": argv, "timeout": timeout, "stdin": len(stdin)})
            sock.sendall(MAGIC + header.encode() + b"\n" + stdin)
            out, err = bytearray(), bytearray()
            while True:
                kind, payload = recv_frame(sock)
                if kind == b"x":
                    end = json.loads(payload)
                    return ExecResult(tuple(argv), int(end["code"]), bytes(out), bytes(err),
                                      bool(end["timed_out"]))
                (out if kind == b"o" else err).extend(payload)
                if sinks:
                    sink = sinks[0] if kind == b"o" else sinks[1]
                    sink.write(payload)
                    sink.flush()

    def put(self, local: Path, remote: str) -> None:
        mode = local.stat().st_mode & 0o7777
        self.exec(["sh", "-c", 'cat > "$1" && chmod "$2" "$1"', "sh", remote, f"{mode:o}"],
                  input=local.read_bytes())

    def get(self, remote: str, local: Path) -> None:
        local.write_bytes(self.exec(["cat", remote]).stdout)

"""A VM harness for tests, the demo and people: boot an amber image in qemu and talk to it.

The VM boots like a machine: through firmware (OVMF for UEFI, qemu's SeaBIOS for BIOS) and the
image's own GRUB, which boots the snapshot amber's menu names; a reboot the guest starts itself
(`systemctl reboot`, a panic with panic=) goes through firmware and GRUB again, with no help
from the harness. The serial console is a unix socket with a log file: the harness records every
boot's console and can send keys to GRUB's menu. Only the boot benchmark boots "direct": qemu
loads the kernel and initrd of the menu's default entry itself (read off the stopped disk with
grub-fstest, as GRUB would read them), to measure what firmware and GRUB cost.

The host talks to a small agent in the guest (testing/agent.py, copied into test images only,
never into a user image) over qemu's user network, forwarded from 127.0.0.1 only. One TCP
connection runs one command; frames carry stdin, stdout, stderr and the exit code, binary-safe.

Everything lives in a state folder: the cached images, the running disk (a sparse copy of the
image), the firmware's variables (UEFI), the console log of every boot since the start, the
serial socket and vm.json (qemu's pid, the port, the firmware, the boots so far).
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from amber.log import AmberError, ExitCode, die, step
from testing.agent import AGENT_PORT, MAGIC, recv_frame
from testing.filelock import locked

AGENT_UNIT = "amber-test-agent.service"
AGENT_PATH = "/usr/lib/amber-test/agent.py"
BOOT_TIMEOUT = float(os.environ.get("AMBER_TESTVM_BOOT_TIMEOUT", "300"))
# Under TCG, a few boots in a hundred stop dead between the restart and the kernel, in OVMF or
# GRUB (no console output); the same disk boots after a power cycle. A boot silent that long
# before its kernel is power-cycled.
FIRMWARE_STALL = float(os.environ.get("AMBER_TESTVM_FIRMWARE_STALL", "120"))
STALL_RESETS = 3
# The console lines after which a boot is in firmware or GRUB until its kernel prints: the
# kernel's last line of a reboot (a stall can come before the firmware prints anything), the
# firmware's and GRUB's first lines.
FIRMWARE_MARKERS = ("reboot: machine restart", "BdsDxe: starting", "Welcome to GRUB!")
KERNEL_MARKER = "Linux version"
MEMORY = os.environ.get("AMBER_TESTVM_MEMORY", "1024")
CPUS = os.environ.get("AMBER_TESTVM_CPUS", "2")
IMAGE_SIZE = 4 << 30
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS.fd")
MENU = "(loop0,gpt3)/@/.snapshots/.amber/menu.cfg"  # grub-fstest's name of the root partition
DEFAULT_ENTRY = "amber-default"
# GRUB takes a key as soon as it comes; these pauses leave its menu time to redraw.
KEY_PAUSE = 1.0


class Firmware(enum.StrEnum):
    UEFI = "uefi"
    BIOS = "bios"
    DIRECT = "direct"  # no firmware boot: the baseline of the boot benchmark only


@dataclass(frozen=True)
class Boot:
    """One boot to a ready agent: the guest's boot id, seconds from power-on or reboot."""

    boot_id: str
    seconds: float


def default_state() -> Path:
    return Path(os.environ.get("AMBER_TESTVM_STATE", "/var/tmp/amber-testvm"))


# ---- the test image ------------------------------------------------------------------------

@dataclass(frozen=True)
class SshKeys:
    """The test image's SSH keys, made once per cache (the image's cache key holds them): host
    keys, so that no test VM spends its first boot making its own, and a client key for root."""

    folder: Path

    @property
    def client(self) -> Path:
        return self.folder / "id_ed25519"

    @property
    def host_keys(self) -> list[Path]:
        return sorted((self.folder / "etc/ssh").glob("ssh_host_*"))

    @classmethod
    def in_cache(cls, cache: Path) -> SshKeys:
        keys = cls(cache / "ssh")
        with locked(cache / ".ssh.lock"):
            if not keys.client.exists():
                partial = cache / f".ssh.{os.getpid()}"
                shutil.rmtree(partial, ignore_errors=True)
                (partial / "etc/ssh").mkdir(parents=True)
                subprocess.run(["ssh-keygen", "-A", "-f", str(partial)], check=True,
                               capture_output=True)
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                                "amber-tests", "-f", str(partial / "id_ed25519")], check=True)
                shutil.rmtree(keys.folder, ignore_errors=True)
                partial.rename(keys.folder)
        return keys

    def image_files(self) -> tuple[Any, ...]:
        from amber.image import ExtraFile

        return tuple(ExtraFile(f"/etc/ssh/{key.name}", key.read_text(),
                               mode=0o644 if key.suffix == ".pub" else 0o600)
                     for key in self.host_keys)


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


def _read_until_prompt(sock: socket.socket) -> str:
    data = b""
    while not data.endswith(b"(qemu) "):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").removesuffix("(qemu) ")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def default_entry(menu: str) -> tuple[str, str, str]:
    """The kernel, initrd and command line of the menu's default entry (amber writes literal
    values into each entry)."""
    block = re.search(r"--id\s+" + DEFAULT_ENTRY + r"\s*\{(.*?)\n\s*\}", menu, re.S)
    linux = re.search(r"^\s*linux\s+(\S+)\s*(.*)$", block.group(1), re.M) if block else None
    initrd = re.search(r"^\s*initrd\s+(\S+)", block.group(1), re.M) if block else None
    if linux is None or initrd is None:
        die(f"the boot menu has no entry {DEFAULT_ENTRY} with linux and initrd",
            hint="the image's boot menu is missing or not amber's", code=ExitCode.NOT_FOUND)
    return linux.group(1), initrd.group(1), linux.group(2).strip()


def read_default_boot(disk: Path, dest: Path) -> tuple[Path, Path, str]:
    """Copy the kernel and initrd of the menu's default entry out of a stopped disk, with
    GRUB's own reader (it sees the disk as GRUB does: the committed btrfs tree)."""
    def fstest(*args: str) -> str:
        result = subprocess.run(["grub-fstest", str(disk), *args], capture_output=True,
                                text=True)
        if result.returncode != 0:
            die(f"grub-fstest {' '.join(args)} failed: {result.stderr.strip()}",
                hint="is grub-common installed, is the disk amber's?",
                code=ExitCode.ENVIRONMENT)
        return result.stdout

    kernel, initrd, cmdline = default_entry(fstest("cat", MENU))
    dest.mkdir(parents=True, exist_ok=True)
    fstest("cp", f"(loop0,gpt3){kernel}", str(dest / "vmlinuz"))
    fstest("cp", f"(loop0,gpt3){initrd}", str(dest / "initrd.img"))
    return dest / "vmlinuz", dest / "initrd.img", cmdline


def check_firmware() -> None:
    for path in (OVMF_CODE, OVMF_VARS):
        if not path.is_file():
            die(f"{path} is missing: no UEFI firmware for the VM",
                hint="install ovmf (apt-get install --no-install-recommends ovmf), or boot "
                     "with --firmware bios", code=ExitCode.ENVIRONMENT)


def before_kernel(console: str) -> bool:
    """Whether the console's last boot is still in firmware or GRUB (no kernel line after the
    last restart, firmware or GRUB line)."""
    firmware = max(console.rfind(marker) for marker in FIRMWARE_MARKERS)
    return firmware >= 0 and console.rfind(KERNEL_MARKER) < firmware


def console_tail(log: Path, lines: int = 25) -> str:
    try:
        text = log.read_bytes().decode(errors="replace")
    except OSError:
        return "(no console log)"
    return "\n".join(text.replace("\r", "").splitlines()[-lines:])


class StallWatch:
    """Resets a boot that stalls in firmware or GRUB (vm.firmware_stall seconds without console
    output, no kernel yet), at most STALL_RESETS times per wait. `powered_on`: the wait starts
    at power-on, so the boot is before its kernel until one prints."""

    def __init__(self, vm: VM, powered_on: bool = False):
        self.vm = vm
        self.began = self.size = vm.console_size()
        self.grew = time.monotonic()
        self.resets = 0
        self.powered_on = powered_on

    def reset_if_stalled(self) -> bool:
        size = self.vm.console_size()
        if size != self.size:
            self.size, self.grew = size, time.monotonic()
            return False
        if time.monotonic() - self.grew < self.vm.firmware_stall or self.resets >= STALL_RESETS:
            return False
        console = self.vm.console_text()
        since_power_on = self.vm.console_text(self.began) if self.powered_on else None
        if not (before_kernel(console)
                or (since_power_on is not None and KERNEL_MARKER not in since_power_on)):
            return False
        self.resets += 1
        self.vm.reset_stalled_firmware()
        self.size, self.grew = self.vm.console_size(), time.monotonic()
        return True


class VM:
    def __init__(self, state: Path | None = None, cache: Path | None = None):
        self.state = (state or default_state()).absolute()
        self.cache = (cache or self.state / "cache").absolute()
        self.disk = self.state / "disk.raw"
        self.console = self.state / "console.log"
        self.state_file = self.state / "vm.json"
        self.vars = self.state / "OVMF_VARS.fd"
        self.firmware_stall = FIRMWARE_STALL

    @property
    def serial_socket(self) -> Path:
        """The serial console's socket (a unix socket path has at most 107 bytes)."""
        path = self.state / "serial.sock"
        if len(str(path)) < 100:
            return path
        digest = hashlib.sha256(str(self.state).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"amber-testvm-{digest}.sock"

    @property
    def monitor_socket(self) -> Path:
        """qemu's human monitor (to reset a stalled boot and keep its registers)."""
        return self.serial_socket.with_name(self.serial_socket.stem + "-monitor.sock")

    # -- image --

    def image_spec(self) -> Any:
        from amber.image import ImageSpec

        ssh = self.ssh_keys()
        return ImageSpec(size=IMAGE_SIZE, extra_files=test_image_files() + ssh.image_files(),
                         authorized_keys=ssh.client.with_suffix(".pub").read_text())

    def ssh_keys(self) -> SshKeys:
        self.cache.mkdir(parents=True, exist_ok=True)
        return SshKeys.in_cache(self.cache)

    def build(self) -> Path:
        """The test image, built or reused from the cache keyed by its inputs."""
        from amber import image

        spec = self.image_spec()
        deb = self.amber_package()
        key = image.image_key(spec, image.apt_sources_text(), deb)
        path = self.cache / f"test-{key}.raw"
        with locked(self.cache / ".build.lock"):
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

    def _update(self, **values: Any) -> None:
        self._save({**self._load(), **values})

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

    def ssh_port(self) -> int:
        """The host port forwarded to the guest's sshd (127.0.0.1 only)."""
        self._port()
        return int(self._load()["ssh_port"])

    def _port(self) -> int:
        port = self._load().get("port")
        if not isinstance(port, int) or not self.running():
            die("the test VM is not running", hint="start it with 'tools/testvm start'",
                code=ExitCode.NOT_FOUND)
        return port

    # -- lifecycle --

    @property
    def firmware(self) -> Firmware:
        return Firmware(self._load().get("firmware", Firmware.UEFI))

    @property
    def stalls(self) -> list[dict[str, Any]]:
        """The boots reset because they stalled in firmware or GRUB."""
        return list(self._load().get("stalls", []))

    @property
    def boots(self) -> list[Boot]:
        """Every boot since start, oldest first."""
        return [Boot(b["boot_id"], b["seconds"]) for b in self._load().get("boots", [])]

    def start(self, firmware: Firmware = Firmware.UEFI, image: Path | None = None) -> float:
        """Boot a fresh copy of the test image, or of `image` (a disk made from it, such as
        testing/installer_vm.py's); returns the seconds until the agent answered."""
        image = image if image is not None else self.build()
        self.kill()
        self.state.mkdir(parents=True, exist_ok=True)
        step("Copying the test image")
        self.disk.unlink(missing_ok=True)
        subprocess.run(["cp", "--sparse=always", str(image), str(self.disk)], check=True)
        self.console.unlink(missing_ok=True)
        if firmware is Firmware.UEFI:
            check_firmware()
            shutil.copyfile(OVMF_VARS, self.vars)  # the VM's own, writable NVRAM
        self._save({"firmware": str(firmware), "boots": []})
        return self._power_on()

    def qemu_argv(self, port: int, ssh_port: int) -> list[str]:
        firmware = self.firmware
        forwards = (f"hostfwd=tcp:127.0.0.1:{port}-:{AGENT_PORT},"
                    f"hostfwd=tcp:127.0.0.1:{ssh_port}-:22")
        argv = ["qemu-system-x86_64", "-accel", "tcg", "-machine", "q35", "-m", MEMORY,
                "-smp", CPUS, "-nodefaults", "-no-user-config", "-display", "none",
                "-drive", f"file={self.disk},format=raw,if=virtio,cache=unsafe",
                "-netdev", f"user,id=net0,restrict=on,{forwards}",
                "-device", "virtio-net-pci,netdev=net0",
                # A hardware watchdog, as servers have: amber's health units arm it (a hang
                # becomes a reset, which GRUB counts as a failed trial boot).
                "-device", "i6300esb", "-action", "watchdog=reset",
                # The log keeps every boot's console, across power cuts too (logappend).
                "-chardev", f"socket,id=ser0,path={self.serial_socket},server=on,wait=off,"
                            f"logfile={self.console},logappend=on",
                "-serial", "chardev:ser0",
                "-monitor", f"unix:{self.monitor_socket},server=on,wait=off"]
        if firmware is Firmware.UEFI:
            argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                     "-drive", f"if=pflash,format=raw,unit=1,file={self.vars}"]
        elif firmware is Firmware.DIRECT:
            kernel, initrd, cmdline = read_default_boot(self.disk, self.state / "boot")
            argv += ["-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline]
        return argv

    def _power_on(self) -> float:
        """Start qemu on the disk and wait for the agent."""
        port, ssh_port = free_port(), free_port()
        while ssh_port == port:
            ssh_port = free_port()
        step(f"Booting the VM ({self.firmware})")
        proc = self._spawn_qemu(port, ssh_port)
        began = time.monotonic()
        self._update(port=port, ssh_port=ssh_port)
        return self._wait_booted(began, previous=None, proc=proc)

    def _spawn_qemu(self, port: int, ssh_port: int) -> subprocess.Popen[bytes]:
        """Start qemu on the disk (its sockets made anew); its pid goes to vm.json."""
        self.serial_socket.unlink(missing_ok=True)
        self.monitor_socket.unlink(missing_ok=True)
        with open(self.state / "qemu.log", "wb") as out:
            proc = subprocess.Popen(self.qemu_argv(port, ssh_port), stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=out, start_new_session=True)
        self._update(pid=proc.pid)
        return proc

    def _wait_booted(self, began: float, previous: str | None,
                     proc: subprocess.Popen[bytes] | None = None) -> float:
        """Wait until the agent answers from a boot other than `previous`; record that boot."""
        boot_id = self._wait_ready(previous, proc)
        seconds = time.monotonic() - began
        data = self._load()
        data.setdefault("boots", []).append({"boot_id": boot_id, "seconds": round(seconds, 2)})
        self._save(data)
        step(f"The VM is ready after {seconds:.1f} s")
        return seconds

    def _wait_ready(self, previous: str | None, proc: subprocess.Popen[bytes] | None) -> str:
        port = self._load().get("port")
        assert isinstance(port, int)
        deadline = time.monotonic() + BOOT_TIMEOUT
        watch = StallWatch(self, powered_on=proc is not None)
        while time.monotonic() < deadline:
            # After a power cycle the qemu is another process (its pid is in vm.json).
            stopped = (proc.poll() is not None if proc and not watch.resets
                       else self._pid() is None)
            if stopped:
                code = f"qemu exit code {proc.returncode}" if proc else "qemu is gone"
                qemu = (self.state / "qemu.log").read_text(errors="replace").strip()
                die(f"the VM stopped while booting ({code}" + (f": {qemu}" if qemu else "") + ")"
                    + "; console:\n" + console_tail(self.console),
                    hint=f"full console log: {self.console}", code=ExitCode.ENVIRONMENT)
            with contextlib.suppress(OSError, ConnectionError, ValueError):
                result = self._call(port, ["cat", "/proc/sys/kernel/random/boot_id"], None, b"",
                                    None, 5.0)
                boot_id = result.out.strip()
                if result.code == 0 and boot_id and boot_id != previous:
                    return boot_id
            if watch.reset_if_stalled():
                deadline = max(deadline, time.monotonic() + BOOT_TIMEOUT / 2)
            time.sleep(1)
        self.kill()
        die(f"the VM did not become ready within {BOOT_TIMEOUT:.0f} s; console:\n"
            + console_tail(self.console), hint=f"full console log: {self.console}",
            code=ExitCode.ENVIRONMENT)

    def reset_stalled_firmware(self) -> None:
        """Keep the stalled CPUs' registers (stall-N.txt), then reset the VM as its reset
        button would; the reset is recorded in vm.json."""
        data = self._load()
        stalls = data.setdefault("stalls", [])
        name = f"stall-{len(stalls) + 1}.txt"
        with contextlib.suppress(OSError):
            (self.state / name).write_text(self.monitor("info registers -a"))
        # A power cycle, not the monitor's system_reset: after a system_reset the firmware
        # often stalled again, three times in a row in one run.
        stalls.append({"boot": len(data.get("boots", [])) + 1, "registers": name})
        self._save(data)
        self._power_cycle()  # after the save: it records the new qemu's pid
        step(f"The boot made no progress in firmware or GRUB for {self.firmware_stall:.0f} s (a TCG"
             f" stall); the VM was power-cycled, registers in {self.state / name}")

    def _power_cycle(self) -> None:
        """Kill qemu and start it again on the same disk, ports and console log."""
        data = self._load()
        self.kill()
        self._spawn_qemu(data["port"], data["ssh_port"])

    def monitor(self, command: str, timeout: float = 10) -> str:
        """One command on qemu's human monitor; its output."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.monitor_socket))
            _read_until_prompt(sock)
            sock.sendall(command.encode() + b"\n")
            return _read_until_prompt(sock).partition("\n")[2]  # after the echo of the line

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
        self.serial_socket.unlink(missing_ok=True)
        self.monitor_socket.unlink(missing_ok=True)

    def boot_id(self) -> str:
        return self.exec(["cat", "/proc/sys/kernel/random/boot_id"]).out.strip()

    def reboot(self) -> float:
        """`systemctl reboot` in the guest, which goes through firmware and GRUB by itself;
        returns the seconds until the agent answered from the new boot."""
        self._port()
        previous = self.boot_id()
        step("Rebooting the VM (systemctl reboot in the guest)")
        began = time.monotonic()
        # The agent may die with the guest before it answers.
        with contextlib.suppress(AmberError, OSError, ConnectionError):
            self.exec(["systemctl", "reboot"], check=False, timeout=30)
        return self._wait_booted(began, previous)

    def wait_reboot(self, previous: str) -> float:
        """Wait for a reboot the guest makes by itself (a panic, a watchdog), after `previous`."""
        began = time.monotonic()
        return self._wait_booted(began, previous)

    def powercut(self) -> float:
        """Kill qemu as a power failure would, then power on again on the same disk."""
        self._port()
        step("Cutting the power")
        self.kill()
        return self._power_on()

    # -- the serial console --

    def console_text(self, since: int = 0) -> str:
        """The console log from byte `since` on (GRUB's and the kernel's output, every boot)."""
        try:
            with open(self.console, "rb") as f:
                f.seek(since)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def console_size(self) -> int:
        try:
            return self.console.stat().st_size
        except OSError:
            return 0

    def wait_console(self, pattern: str, timeout: float = 120, since: int = 0) -> re.Match[str]:
        """Wait until the console log (from byte `since`) matches the regex `pattern`."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        watch = StallWatch(self)
        while True:
            match = compiled.search(self.console_text(since))
            if match:
                return match
            if time.monotonic() > deadline:
                raise AmberError(f"the console did not show {pattern!r} within {timeout:.0f} s;"
                                 f" last lines:\n{console_tail(self.console)}",
                                 hint=f"full console log: {self.console}",
                                 code=ExitCode.ENVIRONMENT)
            if self._pid() is None:
                die(f"the VM stopped while waiting for {pattern!r} on its console",
                    hint=f"full console log: {self.console}", code=ExitCode.ENVIRONMENT)
            watch.reset_if_stalled()
            time.sleep(0.2)

    def send_keys(self, keys: Iterable[bytes | str], pause: float = KEY_PAUSE) -> None:
        """Type on the serial console, one key (or string) at a time with a pause after each.
        For GRUB use single bytes: Ctrl-N (0x0e) down, Ctrl-P (0x10) up, CR (0x0d) enter
        (an escape sequence can be split and read as a lone ESC)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(self.serial_socket))
            sock.settimeout(0.05)
            for key in keys:
                sock.sendall(key.encode() if isinstance(key, str) else key)
                # Read what the guest writes meanwhile (the log has it too): a full socket
                # buffer would stall the guest's serial port.
                until = time.monotonic() + pause
                while time.monotonic() < until:
                    with contextlib.suppress(TimeoutError, BlockingIOError):
                        if not sock.recv(65536):
                            break

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

"""Kernels: the running one, the ones installed in a snapshot, the one a snapshot boots, and the
order of kernel releases. Every part of amber asks here, so that the preflight of a live patch
and the boot menu agree on which kernel a snapshot boots."""

from __future__ import annotations

import functools
import os
from pathlib import Path


def running_release() -> str:
    """The running kernel's release; AMBER_KERNEL_RELEASE overrides it (for tests)."""
    return os.environ.get("AMBER_KERNEL_RELEASE") or os.uname().release


def sysfs() -> Path:
    """The kernel's sysfs; AMBER_SYSFS points amber at another tree (for tests)."""
    return Path(os.environ.get("AMBER_SYSFS", "/sys"))


def procfs() -> Path:
    """The kernel's procfs; AMBER_PROCFS points amber at another tree (for tests)."""
    return Path(os.environ.get("AMBER_PROCFS", "/proc"))


def livepatch_sysfs() -> Path:
    return sysfs() / "kernel/livepatch"


def modules_dir(snapshot: Path) -> Path:
    """Where the snapshot keeps kernel modules: /usr/lib/modules on a merged-/usr system."""
    merged = snapshot / "usr/lib/modules"
    return merged if merged.is_dir() else snapshot / "lib/modules"


def installed(snapshot: Path) -> list[str]:
    """Kernel releases with both modules and a kernel image in the snapshot, oldest first."""
    modules = modules_dir(snapshot)
    if not modules.is_dir():
        return []
    boot = snapshot / "boot"
    releases = [entry.name for entry in modules.iterdir()
                if (boot / f"vmlinuz-{entry.name}").exists() or (entry / "vmlinuz").exists()]
    return sorted(releases, key=version_key)


def boot_kernel(snapshot: Path) -> str | None:
    """The kernel release a snapshot boots: the one its /vmlinuz link names (Debian's kernel
    packages point it at the newest kernel installed; an admin may point it elsewhere), else
    the newest installed kernel by version order."""
    for link in ("vmlinuz", "boot/vmlinuz"):
        path = snapshot / link
        if path.is_symlink():
            name = Path(os.readlink(path)).name
            if name.startswith("vmlinuz-"):
                return name.removeprefix("vmlinuz-")
    releases = installed(snapshot)
    return releases[-1] if releases else None


def _order(char: str) -> int:
    # dpkg's order of the characters of a non-digit part: '~' before everything, even the end
    # of the part; letters before other characters.
    if char == "~":
        return -1
    if char.isalpha():
        return ord(char)
    return ord(char) + 256


def _compare_text(a: str, b: str) -> int:
    for i in range(max(len(a), len(b))):
        x = _order(a[i]) if i < len(a) else 0
        y = _order(b[i]) if i < len(b) else 0
        if x != y:
            return -1 if x < y else 1
    return 0


def compare_versions(a: str, b: str) -> int:
    """dpkg's comparison of version strings (kernel releases are compared the same way):
    digits numerically, other characters with '~' lowest, so 6.1.0-9 < 6.1.0-10 and
    6.1~rc1 < 6.1 < 6.1+1."""
    while a or b:
        a_text, a = _leading(a, digits=False)
        b_text, b = _leading(b, digits=False)
        if result := _compare_text(a_text, b_text):
            return result
        a_number, a = _leading(a, digits=True)
        b_number, b = _leading(b, digits=True)
        if int(a_number or 0) != int(b_number or 0):
            return -1 if int(a_number or 0) < int(b_number or 0) else 1
    return 0


def _leading(text: str, *, digits: bool) -> tuple[str, str]:
    end = 0
    while end < len(text) and text[end].isdigit() == digits:
        end += 1
    return text[:end], text[end:]


version_key = functools.cmp_to_key(compare_versions)

"""What live patch tests share: the kernel release to build test modules for, the built
modules, and signing keys made at test time."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def kernel_release_for_tests() -> str | None:
    """AMBER_TEST_KERNEL_RELEASE, else the first installed linux-headers-*-<arch> package."""
    if os.environ.get("AMBER_TEST_KERNEL_RELEASE"):
        return os.environ["AMBER_TEST_KERNEL_RELEASE"]
    for headers in sorted(Path("/usr/src").glob("linux-headers-*")):
        if (headers / ".config").exists():
            return headers.name.removeprefix("linux-headers-")
    return None


@dataclass(frozen=True)
class Modules:
    release: str
    v1: Path
    v2: Path
    plain: Path


@dataclass(frozen=True)
class SigningKey:
    key: Path
    cert: Path
    trusted: Path  # a folder holding only the certificate

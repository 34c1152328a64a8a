"""The id a FleetLock server knows this machine by: amber's app-specific machine id.

It is made as sd_id128_get_machine_app_specific(3) makes one, so `systemd-id128 machine-id
--app-specific=<APP_ID>` prints the same: HMAC-SHA256 keyed with the 16 bytes of /etc/machine-id
over the 16 bytes of the app id, the first 16 bytes of the digest, with the version and variant
bits of a random (version 4) UUID set, as 32 lower-case hex digits. It is stable for the machine,
different for every app, and does not give away the machine id itself, which machine-id(5) asks
not to expose on the network.
"""

from __future__ import annotations

import re
from pathlib import Path

from amber.log import AmberError, ExitCode

# amber's own app id (made once with `systemd-id128 new`); never change it: every node of a fleet
# would get a new FleetLock id and lose the slot it holds.
APP_ID = "f03b597662c6445ea644c32d1cfb1814"
MACHINE_ID_PATH = "etc/machine-id"

_ID128 = re.compile(r"[0-9a-fA-F]{32}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def parse_id128(text: str) -> bytes:
    """The 16 bytes of a 128-bit id written as 32 hex digits or as a UUID (as systemd reads
    them); ValueError for anything else, or for the all-zero id."""
    text = text.strip()
    if _UUID.fullmatch(text):
        text = text.replace("-", "")
    if not _ID128.fullmatch(text):
        shown = text if len(text) <= 40 else text[:40] + "…"
        raise ValueError(f"'{shown}' is not a 128-bit id (32 hex digits)")
    raw = bytes.fromhex(text)
    if raw == bytes(16):
        raise ValueError("the id is all zeros")
    return raw


def app_specific(machine_id: str, app_id: str = APP_ID) -> str:
    """The app-specific id of `app_id` on the machine `machine_id` (both 128-bit ids)."""
    import hashlib
    import hmac

    digest = bytearray(hmac.digest(parse_id128(machine_id), parse_id128(app_id), hashlib.sha256))
    digest[6] = (digest[6] & 0x0F) | 0x40  # version 4
    digest[8] = (digest[8] & 0x3F) | 0x80  # the RFC 4122 variant
    return bytes(digest[:16]).hex()


def node_id(root: Path = Path("/"), app_id: str = APP_ID) -> str:
    """This machine's FleetLock id, from the machine id of the system root."""
    path = root / MACHINE_ID_PATH
    hint = "give the machine an id: systemd-machine-id-setup (or systemd-firstboot)"
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        raise AmberError(f"{path} does not exist, so this machine has no FleetLock id",
                         hint=hint, code=ExitCode.ENVIRONMENT) from None
    except OSError as e:
        raise AmberError(f"cannot read {path}: {e.strerror}", code=ExitCode.ENVIRONMENT) from None
    if text.strip() in ("", "uninitialized"):
        raise AmberError(f"{path} is not initialized, so this machine has no FleetLock id",
                         hint=hint, code=ExitCode.ENVIRONMENT)
    try:
        return app_specific(text, app_id)
    except ValueError as e:
        raise AmberError(f"{path} is not a machine id: {e}", hint=hint,
                         code=ExitCode.ENVIRONMENT) from None

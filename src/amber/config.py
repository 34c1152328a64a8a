"""Configuration: /etc/amber/amber.conf (TOML) of the system root, as frozen dataclasses.

/etc is part of the read-only snapshot, so amber.conf changes through a transaction and rolls
back with the system. Switches that an admin flips at run time (`amber livepatch enable`) are
kept on /var, in /var/lib/amber/state.toml, which overrides amber.conf and survives rollbacks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from amber.log import ExitCode, die

CONFIG_PATH = "etc/amber/amber.conf"
STATE_PATH = "var/lib/amber/state.toml"
SIGNATURE_POLICIES = ("off", "warn", "enforce")
MiB = 1 << 20
DEFAULT_MAX_MODULE_SIZE = 64 * MiB  # the largest module Debian ships is a few MiB
MODULE_SIZE_RANGE = (1 * MiB, 4096 * MiB)
SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": MiB, "mib": MiB,
              "g": 1 << 30, "gib": 1 << 30}
SIZE_KEYS = frozenset({"max_module_size"})  # bytes, or a string such as "64M" or "64 MiB"


@dataclass(frozen=True)
class SnapshotsConfig:
    keep: int = 10  # `amber cleanup` keeps the newest N snapshots (plus pinned, booted, default)


@dataclass(frozen=True)
class LivepatchConfig:
    enabled: bool = False  # live patching is off until the admin enables it
    signature_policy: str = "warn"  # off | warn | enforce
    trusted_keys: str = "/etc/amber/keys"  # PEM or DER certificates trusted for module signatures
    transition_timeout: float = 60.0  # seconds to wait for a patch transition before reversing it
    max_module_size: int = DEFAULT_MAX_MODULE_SIZE  # bytes or "64M": larger modules are refused


class RebootMethod(StrEnum):
    SYSTEMD = "systemd"
    KEXEC = "kexec"
    NOTIFY = "notify"
    NONE = "none"


class RebootStrategy(StrEnum):
    NONE = "none"
    FLEETLOCK = "fleetlock"


@dataclass(frozen=True)
class UpdateConfig:
    enabled: bool = False  # amber image build enables amber-update.timer (amber up, then reboot)
    schedule: str = "daily"  # when the timer runs: a systemd calendar expression (OnCalendar=)


@dataclass(frozen=True)
class RebootConfig:
    method: str = "systemd"  # systemd | kexec | notify (/run/reboot-required) | none
    window: str = ""  # when amber reboot may reboot, e.g. "Sat,Sun 02:00-04:00"; empty: any time
    strategy: str = "none"  # none | fleetlock: take a fleet-wide reboot slot first
    fleetlock_url: str = ""  # the FleetLock server's base URL, e.g. "http://fleetlock:3333"
    group: str = "default"  # the FleetLock group this machine reboots with


@dataclass(frozen=True)
class BootConfig:
    menu_entries: int = 10  # the boot menu lists this many newest snapshots (plus pinned ones)
    timeout: int = 3  # seconds GRUB shows the menu before it boots the default snapshot
    esp: str = "/boot/efi"  # where the EFI system partition (GRUB's grubenv) is mounted


@dataclass(frozen=True)
class HealthConfig:
    enabled: bool = False  # trial boots: a new default that does not come up healthy gives way
    tries: int = 2  # boot attempts of a snapshot on trial before the last good one boots
    timeout: int = 300  # seconds a trial boot has to reach a verdict, else it failed


@dataclass(frozen=True)
class Config:
    snapshots: SnapshotsConfig = field(default_factory=SnapshotsConfig)
    livepatch: LivepatchConfig = field(default_factory=LivepatchConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)
    reboot: RebootConfig = field(default_factory=RebootConfig)
    boot: BootConfig = field(default_factory=BootConfig)
    health: HealthConfig = field(default_factory=HealthConfig)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as e:
        die(f"cannot read {path}: {e.strerror}", code=ExitCode.CONFIG)
    import tomllib

    try:
        return tomllib.loads(data.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        die(f"{path} is not valid TOML: {e}", hint="fix the file; see the README's Configuration",
            code=ExitCode.CONFIG)


def parse_size(text: str) -> int | None:
    """Bytes from "67108864", "64M", "64 MiB" or "0.5G" (binary units); None if not a size."""
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match[2].lower() not in SIZE_UNITS:
        return None
    return int(float(match[1]) * SIZE_UNITS[match[2].lower()])


def _size(value: Any, key: str, name: str, path: Path) -> Any:
    """A size key's string form as bytes; other types are left to the type check."""
    if not isinstance(value, str):
        return value
    size = parse_size(value)
    if size is None:
        die(f"{path}: '{key}' in [{name}] is not a size: {value!r}",
            hint='write bytes or a number with K, M or G (binary units), e.g. "64M"',
            code=ExitCode.CONFIG)
    return size


def _section(cls: Any, data: Any, name: str, path: Path) -> Any:
    if not isinstance(data, dict):
        die(f"{path}: [{name}] must be a table", code=ExitCode.CONFIG)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        key_name = key.replace("-", "_")
        if key_name not in fields:
            die(f"{path}: unknown key '{key}' in [{name}]",
                hint=f"known keys: {', '.join(sorted(fields))}", code=ExitCode.CONFIG)
        if key_name in SIZE_KEYS:
            value = _size(value, key, name, path)
        default = fields[key_name].default
        expected = type(default)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            die(f"{path}: '{key}' in [{name}] must be {expected.__name__}, not {value!r}",
                code=ExitCode.CONFIG)
        values[key_name] = value
    return cls(**values)


def parse(data: dict[str, Any], path: Path) -> Config:
    known = {"snapshots": SnapshotsConfig, "livepatch": LivepatchConfig,
             "update": UpdateConfig, "reboot": RebootConfig, "boot": BootConfig,
             "health": HealthConfig}
    sections: dict[str, Any] = {}
    for name, value in data.items():
        if name not in known:
            die(f"{path}: unknown section [{name}]", hint=f"known: {', '.join(known)}",
                code=ExitCode.CONFIG)
        sections[name] = _section(known[name], value, name, path)
    config = Config(**sections)
    if config.livepatch.signature_policy not in SIGNATURE_POLICIES:
        die(f"{path}: signature_policy must be one of {', '.join(SIGNATURE_POLICIES)}",
            code=ExitCode.CONFIG)
    if config.snapshots.keep < 1:
        die(f"{path}: keep must be at least 1", code=ExitCode.CONFIG)
    if config.boot.menu_entries < 1 or not 0 <= config.boot.timeout <= 3600:
        die(f"{path}: [boot] needs menu_entries of at least 1 and a timeout of 0 to 3600 s",
            code=ExitCode.CONFIG)
    if not 1 <= config.health.tries <= 9 or not 30 <= config.health.timeout <= 86400:
        die(f"{path}: [health] needs tries from 1 to 9 and a timeout from 30 to 86400 s",
            code=ExitCode.CONFIG)
    if not config.boot.esp.startswith("/"):
        die(f"{path}: esp in [boot] must be an absolute path, not {config.boot.esp!r}",
            code=ExitCode.CONFIG)
    low, high = MODULE_SIZE_RANGE
    if not low <= config.livepatch.max_module_size <= high:
        die(f"{path}: max_module_size in [livepatch] must be between {low // MiB} MiB and "
            f"{high // MiB} MiB, not {config.livepatch.max_module_size} bytes",
            hint='the default is "64M"; the largest real module is a few MiB',
            code=ExitCode.CONFIG)
    _check_update_and_reboot(config, path)
    return config


def _check_update_and_reboot(config: Config, path: Path) -> None:
    update, reboot = config.update, config.reboot
    if not update.schedule.strip() or "\n" in update.schedule:
        die(f"{path}: schedule in [update] must be a systemd calendar expression, not "
            f"{update.schedule!r}", hint='e.g. "daily" or "Mon..Fri 03:00"', code=ExitCode.CONFIG)
    for key, value, choices in (("method", reboot.method, RebootMethod),
                                ("strategy", reboot.strategy, RebootStrategy)):
        if value not in set(choices):
            die(f"{path}: {key} in [reboot] must be one of {' | '.join(choices)}, not {value!r}",
                code=ExitCode.CONFIG)
    if reboot.window:
        from datetime import UTC

        from amber.fleet import window

        try:
            window.parse(reboot.window, UTC)
        except window.WindowError as e:
            die(f"{path}: window in [reboot] is malformed: {e}",
                hint='e.g. "Sat,Sun 02:00-04:00" (see the README\'s Maintenance windows)',
                code=ExitCode.CONFIG)
    if reboot.strategy == RebootStrategy.FLEETLOCK or reboot.fleetlock_url:
        from amber.fleet import fleetlock

        for key, check, value in (("fleetlock_url", fleetlock.check_url, reboot.fleetlock_url),
                                  ("group", fleetlock.check_group, reboot.group)):
            try:
                check(value)
            except fleetlock.FleetLockConfigError as e:
                die(f"{path}: {key} in [reboot] is malformed: {e}",
                    hint='e.g. fleetlock_url = "http://fleetlock.example:3333"',
                    code=ExitCode.CONFIG)


def load(root: Path) -> Config:
    path = root / CONFIG_PATH
    config = parse(_read_toml(path), path)
    state_path = root / STATE_PATH
    state = _read_toml(state_path)
    enabled = state.get("livepatch_enabled")
    if isinstance(enabled, bool):
        config = dataclasses.replace(
            config, livepatch=dataclasses.replace(config.livepatch, enabled=enabled))
    return config


def save_state(root: Path, key: str, value: bool | str | int) -> None:
    """Store a run-time switch in /var/lib/amber/state.toml (atomically)."""
    path = root / STATE_PATH
    state = _read_toml(path)
    state[key] = value
    from amber import state as stores

    path.parent.mkdir(parents=True, exist_ok=True)
    stores.atomic_write(path, stores.render_flat_toml(state))

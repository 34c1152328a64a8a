"""amber.conf parsing: defaults, types, unknown keys, and the run-time state overlay."""

from __future__ import annotations

from pathlib import Path

import pytest

from amber import config
from amber.log import AmberError, ExitCode


def write(root: Path, text: str) -> None:
    path = root / config.CONFIG_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_defaults_without_file(tmp_path: Path) -> None:
    c = config.load(tmp_path)
    assert c.snapshots.keep == 10
    assert c.livepatch.enabled is False
    assert c.livepatch.signature_policy == "warn"
    assert c.livepatch.max_module_size == 64 << 20


def test_values(tmp_path: Path) -> None:
    write(tmp_path, "[snapshots]\nkeep = 3\n[livepatch]\nsignature_policy = 'enforce'\n"
                    "transition-timeout = 5\n")
    c = config.load(tmp_path)
    assert c.snapshots.keep == 3
    assert c.livepatch.signature_policy == "enforce"
    assert c.livepatch.transition_timeout == 5.0


@pytest.mark.parametrize(("value", "size"), [
    ("67108864", 64 << 20), ("'64M'", 64 << 20), ("'64 MiB'", 64 << 20), ("'0.5g'", 512 << 20),
    ("'2048k'", 2 << 20), ("' 1 MiB '", 1 << 20), ("'4G'", 4 << 30),
])
def test_max_module_size(tmp_path: Path, value: str, size: int) -> None:
    write(tmp_path, f"[livepatch]\nmax-module-size = {value}\n")
    assert config.load(tmp_path).livepatch.max_module_size == size


@pytest.mark.parametrize(("text", "message"), [
    ("[snapshots]\nkeep = 'many'\n", "must be int"),
    ("[snapshots]\nkeep = true\n", "must be int"),
    ("[snapshots]\nkeep = 0\n", "at least 1"),
    ("[snapshots]\nkeeep = 3\n", "unknown key 'keeep'"),
    ("[snapshot]\n", "unknown section [snapshot]"),
    ("[livepatch]\nsignature_policy = 'maybe'\n", "signature_policy must be one of"),
    ("not toml at all", "is not valid TOML"),
    ("[livepatch]\nmax_module_size = 'lots'\n", "'max_module_size' in [livepatch] is not a size"),
    ("[livepatch]\nmax_module_size = '64 MB'\n", "is not a size: '64 MB'"),
    ("[livepatch]\nmax_module_size = true\n", "'max_module_size' in [livepatch] must be int"),
    ("[livepatch]\nmax_module_size = 64.5\n", "'max_module_size' in [livepatch] must be int"),
    ("[livepatch]\nmax_module_size = -1\n", "max_module_size in [livepatch] must be between"),
    ("[livepatch]\nmax_module_size = '3 KiB'\n", "must be between 1 MiB and 4096 MiB"),
    ("[livepatch]\nmax_module_size = '5G'\n", "max_module_size in [livepatch] must be between"),
])
def test_errors(tmp_path: Path, text: str, message: str) -> None:
    write(tmp_path, text)
    with pytest.raises(AmberError) as e:
        config.load(tmp_path)
    assert message in e.value.message
    assert e.value.code == ExitCode.CONFIG


def test_state_overrides_config(tmp_path: Path) -> None:
    write(tmp_path, "[livepatch]\nenabled = false\n")
    config.save_state(tmp_path, "livepatch_enabled", True)
    assert config.load(tmp_path).livepatch.enabled is True
    config.save_state(tmp_path, "livepatch_enabled", False)
    assert config.load(tmp_path).livepatch.enabled is False


# ---- [update] and [reboot] (issue 13) ----------------------------------------------------------

def test_update_and_reboot_sections_parse() -> None:
    from amber import config as cfg

    parsed = cfg.parse({"update": {"enabled": True, "schedule": "Mon..Fri 03:00"},
                        "reboot": {"method": "notify", "window": "Sat,Sun 02:00-04:00",
                                   "strategy": "fleetlock", "group": "web",
                                   "fleetlock_url": "http://fleetlock.example:3333/"}},
                       Path("amber.conf"))
    assert parsed.update == cfg.UpdateConfig(enabled=True, schedule="Mon..Fri 03:00")
    assert parsed.reboot.method == cfg.RebootMethod.NOTIFY
    assert parsed.reboot.window == "Sat,Sun 02:00-04:00" and parsed.reboot.group == "web"


@pytest.mark.parametrize(("section", "key", "value", "named"), [
    ("reboot", "window", "Sat,Sun 25:00-04:00", "window in [reboot]"),
    ("reboot", "window", "Someday 02:00-04:00", "window in [reboot]"),
    ("reboot", "fleetlock_url", "ftp://fleetlock", "fleetlock_url in [reboot]"),
    ("reboot", "fleetlock_url", "http://user:pw@fleetlock", "fleetlock_url in [reboot]"),
    ("reboot", "method", "halt", "method in [reboot]"),
    ("reboot", "strategy", "random", "strategy in [reboot]"),
    ("reboot", "group", "a b", "group in [reboot]"),
    ("update", "schedule", "", "schedule in [update]"),
])
def test_malformed_reboot_keys_exit_9_naming_the_key(section: str, key: str, value: str,
                                                     named: str) -> None:
    from amber import config as cfg
    from amber.errors import ExitCode

    data: dict[str, dict[str, object]] = {section: {key: value}}
    if key == "group":
        data[section]["strategy"] = "fleetlock"
        data[section]["fleetlock_url"] = "http://fleetlock:3333"
    with pytest.raises(AmberError) as failure:
        cfg.parse(data, Path("amber.conf"))
    assert failure.value.code == ExitCode.CONFIG and int(failure.value.code) == 9
    assert named in failure.value.message


def test_fleetlock_strategy_needs_a_url() -> None:
    from amber import config as cfg

    with pytest.raises(AmberError) as failure:
        cfg.parse({"reboot": {"strategy": "fleetlock"}}, Path("amber.conf"))
    assert "fleetlock_url in [reboot]" in failure.value.message

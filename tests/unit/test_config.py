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


def test_values(tmp_path: Path) -> None:
    write(tmp_path, "[snapshots]\nkeep = 3\n[livepatch]\nsignature_policy = 'enforce'\n"
                    "transition-timeout = 5\n")
    c = config.load(tmp_path)
    assert c.snapshots.keep == 3
    assert c.livepatch.signature_policy == "enforce"
    assert c.livepatch.transition_timeout == 5.0


@pytest.mark.parametrize(("text", "message"), [
    ("[snapshots]\nkeep = 'many'\n", "must be int"),
    ("[snapshots]\nkeep = true\n", "must be int"),
    ("[snapshots]\nkeep = 0\n", "at least 1"),
    ("[snapshots]\nkeeep = 3\n", "unknown key 'keeep'"),
    ("[snapshot]\n", "unknown section [snapshot]"),
    ("[livepatch]\nsignature_policy = 'maybe'\n", "signature_policy must be one of"),
    ("not toml at all", "is not valid TOML"),
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

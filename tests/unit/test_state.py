"""Persistent state: atomic writes, errors by cause, escaped TOML."""

from __future__ import annotations

import errno
import os
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amber import state
from amber.errors import ExitCode


def test_atomic_write_replaces_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    state.atomic_write(target, "new", mode=0o600)
    assert target.read_text() == "new"
    assert os.listdir(tmp_path) == ["state.json"]


def test_atomic_write_never_follows_a_planted_temporary_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (tmp_path / f".state.{os.getpid()}.tmp").symlink_to(victim)
    with pytest.raises(Exception) as caught:
        state.atomic_write(tmp_path / "state", "x")
    assert victim.read_text() == "keep me"
    assert getattr(caught.value, "code", None) == ExitCode.ERROR


@pytest.mark.parametrize(("number", "code"), [
    (errno.ENOSPC, ExitCode.NO_SPACE), (errno.EROFS, ExitCode.ENVIRONMENT),
    (errno.EIO, ExitCode.ERROR)])
def test_write_errors_by_cause(number: int, code: ExitCode) -> None:
    error = state.write_error(Path("/x"), OSError(number, os.strerror(number)))
    assert error.code == code and "/x" in error.message


KEYS = st.from_regex(r"\A[a-z][a-z0-9_]{0,15}\Z")
VALUES = st.one_of(st.booleans(), st.integers(-2**63, 2**63 - 1),
                   st.text(), st.sampled_from(["\x7f", "a\x00b", '"quoted" \\ back']))


@given(st.dictionaries(KEYS, VALUES, max_size=5))
def test_flat_toml_round_trips(values: dict[str, bool | int | str]) -> None:
    text = state.render_flat_toml(values)
    assert tomllib.loads(text) == values
